"""The storage server's door: every S3 request is authenticated and authorised before moto sees it.

moto can check IAM in server mode (``INITIAL_NO_AUTH_ACTION_COUNT``), but
not faithfully enough here: it never expires session credentials, ignores
session policies, cannot limit a listing to a prefix, and the switch is
process-wide (every moto in the process, tests' included). So the
emulator keeps its own table of the credentials it issued, each with its
secret, session token, expiry and key prefixes, and this WSGI wrapper
verifies each request's SigV4 signature with botocore's signer, then
allows it only within the credential's prefixes:

* a bucket other than the emulator's does not exist (``NoSuchBucket``, as S3
  answers before it looks at credentials), so nothing reaches moto's other
  services or its ``/moto-api``;
* unsigned (anonymous) requests are refused; a bucket lists nothing to them;
* unknown access keys, bad signatures and wrong session tokens are refused,
  and so is a body that does not match the SHA-256 its signature covers;
* every ``x-amz-*`` header must be covered by the signature, whoever signed
  (S3's ``AccessDenied``, "headers present in the request which were not
  signed"), so nothing can be added to a signed request;
* the signed streaming scheme (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``, whose
  chunk signatures the gate does not verify) is refused with S3's
  ``NotImplemented``; boto3 signs a plain SHA-256 of the body over HTTP;
* expired or revoked credentials are refused (``ExpiredToken``), and so are
  a job's credentials once its job token is (``Grant.alive``); revoking
  waits for the requests in flight with what it revokes, so that deleting a
  task's objects after it misses no write (:meth:`CredentialTable.revoke`);
* a scoped credential reads and lists under its read prefixes, writes and
  deletes under its write prefixes (which it can read too), and nothing
  else: no bucket listing without a prefix, no bucket settings, no STS;
* a presigned URL is signed with a credential of its own, issued for one
  method on one key until its expiry, and reaches exactly that;
* the emulator's own credential (its internal calls) may do anything, with
  its requests signed in headers only; it is never given to users or jobs
  and never signs a URL.

Keys with empty, ``.`` or ``..`` segments, backslashes or NULs are refused to
scoped credentials: the project's key rule (:func:`htc_emulator.storage.safe_relative_key`)
never makes them, and they must not look like a way out of a prefix.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import io
import re
import secrets
import threading
import time
import uuid
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from urllib.parse import parse_qs, unquote, urlsplit

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

# AWS refuses requests signed more than 15 minutes away from its clock.
MAX_CLOCK_SKEW_SECONDS = 900
# Expired credentials are remembered this long, to be refused as expired rather than unknown.
EXPIRED_MEMORY_SECONDS = 3600
# S3's longest presigned URL: seven days.
MAX_PRESIGNED_SECONDS = 604800
# How long revoking waits for the requests in flight with what it revokes (moto serves each from memory).
REVOKE_SETTLE_SECONDS = 60
_LIST_SUBRESOURCES = frozenset({"uploads", "versions"})
# x-amz-content-sha256 values that declare a payload without a hash of it: S3's unsigned ones, and the
# signed streaming ones, whose chunk signatures the gate would have to verify (it refuses them instead).
_UNSIGNED_PAYLOADS = frozenset({"UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"})
_SIGNED_STREAMING_PAYLOADS = frozenset(
    {
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
    }
)


class S3Denied(Exception):
    """A refused request, as S3 answers it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Grant:
    """One issued credential: its secrets, its expiry and what it reaches."""

    secret_key: str
    session_token: str | None
    expires_at: float | None  # epoch seconds; None never expires
    read: tuple[str, ...] = ()  # key prefixes it may read and list
    write: tuple[str, ...] = ()  # key prefixes it may also write and delete
    admin: bool = False
    presigned: tuple[str, str] | None = None  # (method, key): the one request a presigned URL makes
    alive: Callable[[], bool] | None = None  # False once what obtained it has ended (a job's token)

    def may_read(self, key: str) -> bool:
        return self.admin or key.startswith(self.read + self.write)

    def may_write(self, key: str) -> bool:
        return self.admin or key.startswith(self.write)

    def reaches_under(self, prefix: str) -> bool:
        """Whether it may change anything under ``prefix`` (what deleting that prefix must revoke)."""
        if self.presigned is not None:
            return self.presigned[1].startswith(prefix)
        return any(p.startswith(prefix) for p in self.write)


class CredentialTable:
    """The credentials the storage server accepts."""

    def __init__(self) -> None:
        self._grants: dict[str, Grant] = {}
        self._lock = threading.Lock()
        self._in_flight: Counter[str] = Counter()  # access key -> requests being served with it
        self._settled = threading.Condition(self._lock)

    def add_admin(self, access_key: str, secret_key: str) -> None:
        with self._lock:
            self._grants[access_key] = Grant(secret_key, None, None, admin=True)

    def issue(
        self, *, read: list[str], write: list[str], lifetime: float, alive: Callable[[], bool] | None = None
    ) -> tuple[dict[str, str], dt.datetime]:
        """New session credentials in the platform's ``credentials`` map, and their expiry.

        ``alive``, when given, is asked on every request: the credentials end as soon as it says False.
        """
        access_key = _access_key()
        secret_key = _secret()
        session_token = base64.b64encode(secrets.token_bytes(96)).decode()
        expires_at = time.time() + lifetime
        grant = Grant(secret_key, session_token, expires_at, tuple(read), tuple(write), alive=alive)
        self._add(access_key, grant)
        credentials = {
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_SESSION_TOKEN": session_token,
        }
        return credentials, dt.datetime.fromtimestamp(expires_at, dt.UTC)

    def issue_presigned(self, method: str, key: str, lifetime: int) -> Credentials:
        """A credential for one presigned URL: ``method`` on ``key``, for ``lifetime`` seconds."""
        if not 1 <= lifetime <= MAX_PRESIGNED_SECONDS:
            raise ValueError(f"a presigned URL lasts 1 to {MAX_PRESIGNED_SECONDS} seconds")
        access_key, secret_key = _access_key(), _secret()
        self._add(access_key, Grant(secret_key, None, time.time() + lifetime, presigned=(method, key)))
        return Credentials(access_key, secret_key)

    def revoke(self, prefix: str) -> int:
        """Expire now every credential (presigned URLs included) that may write under ``prefix``; return how many.

        Returns once no request made with one of them is still being served (at most
        ``REVOKE_SETTLE_SECONDS``): whatever such a request wrote is in storage by then.
        """
        with self._lock:
            revoked = [key for key, grant in self._grants.items() if not grant.admin and grant.reaches_under(prefix)]
            for access_key in revoked:
                self._grants[access_key] = replace(self._grants[access_key], expires_at=time.time())
            self._settled.wait_for(lambda: not any(self._in_flight[key] for key in revoked), REVOKE_SETTLE_SECONDS)
        return len(revoked)

    @contextlib.contextmanager
    def serving(self, access_key: str) -> Iterator[None]:
        """Hold a checked credential while its request is served; refused if it was revoked since the check."""
        with self._lock:
            grant = self._grants[access_key]
            if grant.expires_at is not None and time.time() >= grant.expires_at:
                raise S3Denied(400, "ExpiredToken", "The provided token has expired.")
            self._in_flight[access_key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[access_key] -= 1
                if not self._in_flight[access_key]:
                    del self._in_flight[access_key]
                self._settled.notify_all()

    def get(self, access_key: str) -> Grant | None:
        with self._lock:
            return self._grants.get(access_key)

    def _add(self, access_key: str, grant: Grant) -> None:
        with self._lock:
            self._forget_long_expired()
            self._grants[access_key] = grant

    def _forget_long_expired(self) -> None:
        cutoff = time.time() - EXPIRED_MEMORY_SECONDS
        for access_key in [k for k, g in self._grants.items() if g.expires_at is not None and g.expires_at < cutoff]:
            del self._grants[access_key]


def _access_key() -> str:
    return "ASIA" + base64.b32encode(secrets.token_bytes(10)).decode()[:16]


def _secret() -> str:
    return base64.b64encode(secrets.token_bytes(30)).decode()


@dataclass(frozen=True)
class _Request:
    method: str
    raw_path: str  # as sent, percent-encoded
    query: str
    headers: dict[str, str]  # lower-case names

    @classmethod
    def from_environ(cls, environ: dict) -> _Request:
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(name):
                headers[name.replace("_", "-").lower()] = environ[name]
        raw = urlsplit(environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/"))
        return cls(environ["REQUEST_METHOD"].upper(), raw.path or "/", environ.get("QUERY_STRING", ""), headers)


def _signature_parts(request: _Request) -> tuple[str, dict[str, str], bool]:
    """(access key, the signature's fields, signed in the query?); anonymous requests are refused."""
    authorization = request.headers.get("authorization", "")
    if authorization.startswith("AWS4-HMAC-SHA256 "):
        fields = dict(part.strip().split("=", 1) for part in authorization[17:].split(",") if "=" in part)
        fields["date"] = request.headers.get("x-amz-date", "")
        fields["token"] = request.headers.get("x-amz-security-token")
        return fields.get("Credential", "").split("/")[0], fields, False
    query = parse_qs(request.query, keep_blank_values=True)
    if "X-Amz-Signature" in query:
        fields = {name: values[0] for name, values in query.items()}
        fields.update(
            Credential=fields.get("X-Amz-Credential", ""),
            SignedHeaders=fields.get("X-Amz-SignedHeaders", ""),
            Signature=fields["X-Amz-Signature"],
            date=fields.get("X-Amz-Date", ""),
            token=fields.get("X-Amz-Security-Token"),
        )
        return fields["Credential"].split("/")[0], fields, True
    if authorization:
        raise S3Denied(400, "InvalidRequest", "Only AWS4-HMAC-SHA256 signatures are accepted.")
    raise S3Denied(403, "AccessDenied", "Anonymous requests are refused: sign them with storage-token credentials.")


def _verify_signature(request: _Request, grant: Grant, access_key: str, fields: dict[str, str], in_query: bool) -> str:
    """Check the SigV4 signature with botocore's signer; return the signed service."""
    scope = fields.get("Credential", "").split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not fields.get("date", "").startswith(scope[1]):
        raise S3Denied(400, "AuthorizationHeaderMalformed", "The credential scope is malformed.")
    _, _, region, service, _ = scope
    try:
        signed_at = dt.datetime.strptime(fields["date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise S3Denied(403, "AccessDenied", "X-Amz-Date is missing or malformed.") from None
    age = time.time() - signed_at.timestamp()
    if in_query:
        expires = fields.get("X-Amz-Expires", "")
        if not expires.isascii() or not expires.isdigit() or int(expires) > MAX_PRESIGNED_SECONDS:
            raise S3Denied(
                400,
                "AuthorizationQueryParametersError",
                f"X-Amz-Expires must be a number of seconds no greater than {MAX_PRESIGNED_SECONDS}.",
            )
        if age > int(expires):
            raise S3Denied(403, "AccessDenied", "Request has expired")
    elif abs(age) > MAX_CLOCK_SKEW_SECONDS:
        raise S3Denied(
            403, "RequestTimeTooSkewed", "The difference between the request time and the current time is too large."
        )
    if grant.session_token is not None and fields.get("token") != grant.session_token:
        raise S3Denied(400, "InvalidToken", "The provided token is malformed or otherwise invalid.")
    signed_names = [name for name in fields.get("SignedHeaders", "").split(";") if name]
    if "host" not in signed_names:
        raise S3Denied(403, "AccessDenied", "The host header must be signed.")
    unsigned = sorted(name for name in request.headers if name.startswith("x-amz-") and name not in signed_names)
    if unsigned:
        raise S3Denied(
            403,
            "AccessDenied",
            f"There were headers present in the request which were not signed: {', '.join(unsigned)}",
        )
    headers = {name: request.headers.get(name, "") for name in signed_names}
    query = request.query
    if in_query:
        query = "&".join(p for p in query.split("&") if not p.startswith("X-Amz-Signature="))
    elif "x-amz-content-sha256" not in headers:
        raise S3Denied(400, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
    aws_request = AWSRequest(
        method=request.method,
        url=request.raw_path + (f"?{query}" if query else ""),
        headers={("X-Amz-Content-SHA256" if k == "x-amz-content-sha256" else k): v for k, v in headers.items()},
    )
    aws_request.context["timestamp"] = fields["date"]
    credentials = Credentials(access_key, grant.secret_key, grant.session_token)
    signer = (S3SigV4QueryAuth if in_query else S3SigV4Auth)(credentials, service, region)
    expected = signer.signature(signer.string_to_sign(aws_request, signer.canonical_request(aws_request)), aws_request)
    if not secrets.compare_digest(expected.encode(), fields.get("Signature", "").encode("utf-8", "surrogateescape")):
        raise S3Denied(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    return service


def _verify_payload(request: _Request, environ: dict) -> None:
    """A signed payload hash must be the body's; an unsigned payload declares none; signed streaming is refused."""
    declared = request.headers.get("x-amz-content-sha256", "")
    if declared in _UNSIGNED_PAYLOADS:
        return
    if declared in _SIGNED_STREAMING_PAYLOADS:
        raise S3Denied(
            501,
            "NotImplemented",
            f"A header you provided implies functionality that is not implemented: x-amz-content-sha256 {declared}",
        )
    if not re.fullmatch(r"[0-9a-f]{64}", declared):
        raise S3Denied(
            400,
            "InvalidArgument",
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER "
            "or a valid sha256 value.",
        )
    length = environ.get("CONTENT_LENGTH") or "0"
    if not length.isascii() or not length.isdigit():
        raise S3Denied(400, "InvalidRequest", "Content-Length must be a number.")
    body = environ["wsgi.input"].read(int(length))
    environ["wsgi.input"] = io.BytesIO(body)
    if hashlib.sha256(body).hexdigest() != declared:
        raise S3Denied(
            400,
            "XAmzContentSHA256Mismatch",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )


def _key_of(raw: str) -> str:
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise S3Denied(400, "InvalidURI", "Couldn't parse the specified URI.") from None


def _check_key(key: str) -> None:
    """The project's key rule (:func:`htc_emulator.storage.safe_relative_key`) on a whole key: it holds per segment."""
    if "\\" in key or "\x00" in key or any(segment in ("", ".", "..") for segment in key.split("/")):
        raise S3Denied(403, "AccessDenied", "Keys with empty, '.' or '..' segments, backslashes or NULs are refused.")


class S3Gate:
    """WSGI middleware in front of moto's server: the rules in the module docstring."""

    def __init__(self, app, credentials: CredentialTable, bucket: str) -> None:
        self.app = app
        self.credentials = credentials
        self.bucket = bucket

    def __call__(self, environ, start_response):
        request = _Request.from_environ(environ)
        try:
            access_key = self._authorise(request, environ)
            if access_key is None:  # the emulator's own request
                return self.app(environ, start_response)
            with self.credentials.serving(access_key):
                return self.app(environ, start_response)
        except S3Denied as denied:
            return self._refuse(denied, request, start_response)

    def _authorise(self, request: _Request, environ: dict) -> str | None:
        """Refuse the request unless allowed; the access key of the credential it uses, None for the admin's."""
        # As S3 does, a bucket that does not exist is named so before any credential is looked at.
        bucket, _, raw_key = request.raw_path.lstrip("/").partition("/")
        if bucket and _key_of(bucket) != self.bucket:
            raise S3Denied(404, "NoSuchBucket", "The specified bucket does not exist")
        access_key, fields, in_query = _signature_parts(request)
        grant = self.credentials.get(access_key)
        if grant is None:
            raise S3Denied(
                403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."
            )
        service = _verify_signature(request, grant, access_key, fields, in_query)
        if not in_query:
            _verify_payload(request, environ)
        if grant.admin:
            if in_query:
                raise S3Denied(403, "AccessDenied", "The emulator's own credential signs no URL.")
            return None
        if (grant.expires_at is not None and time.time() >= grant.expires_at) or (
            grant.alive is not None and not grant.alive()
        ):
            if in_query:
                raise S3Denied(403, "AccessDenied", "Request has expired")
            raise S3Denied(400, "ExpiredToken", "The provided token has expired.")
        host = request.headers.get("host", "").rsplit(":", 1)[0]
        if service != "s3" or host not in ("127.0.0.1", "localhost"):
            raise S3Denied(403, "AccessDenied", "Storage credentials reach the bucket's objects only.")
        if not bucket:
            raise S3Denied(403, "AccessDenied", "Access Denied")
        if grant.presigned is not None:
            self._authorise_presigned(request, grant, _key_of(raw_key), in_query)
        elif raw_key:
            self._authorise_object(request, grant, _key_of(raw_key))
        else:
            self._authorise_bucket(request, grant, environ)
        return access_key

    def _authorise_object(self, request: _Request, grant: Grant, key: str) -> None:
        _check_key(key)
        allowed = grant.may_read(key) if request.method in ("GET", "HEAD") else grant.may_write(key)
        source = request.headers.get("x-amz-copy-source")
        if source:
            source_bucket, _, source_key = _key_of(source.split("?")[0].lstrip("/")).partition("/")
            _check_key(source_key)
            allowed = allowed and source_bucket == self.bucket and grant.may_read(source_key)
        if not allowed:
            raise S3Denied(403, "AccessDenied", "Access Denied")

    @staticmethod
    def _authorise_presigned(request: _Request, grant: Grant, key: str, in_query: bool) -> None:
        """A presigned URL's credential makes its one request: its method on its key, no subresource, no copy."""
        method, granted_key = grant.presigned
        extra = [p for p in request.query.split("&") if p and not p.startswith("X-Amz-")]
        if (
            not in_query
            or request.method != method
            or key != granted_key
            or extra
            or "x-amz-copy-source" in request.headers
        ):
            raise S3Denied(403, "AccessDenied", "A presigned URL makes the one request it was signed for.")

    def _authorise_bucket(self, request: _Request, grant: Grant, environ: dict) -> None:
        query = parse_qs(request.query, keep_blank_values=True)
        if request.method == "HEAD" and not query:
            return
        if request.method == "GET" and (
            set(query)
            <= {
                "list-type",
                "prefix",
                "delimiter",
                "max-keys",
                "marker",
                "continuation-token",
                "start-after",
                "encoding-type",
                "fetch-owner",
                "key-marker",
                "upload-id-marker",
                "version-id-marker",
                "max-uploads",
            }
            | _LIST_SUBRESOURCES
        ):
            prefix = query.get("prefix", [""])[0]
            if prefix and grant.may_read(prefix):
                return
        elif request.method == "POST" and "delete" in query:
            keys = self._keys_to_delete(environ)
            for key in keys:
                _check_key(key)
            if keys and all(grant.may_write(key) for key in keys):
                return
        raise S3Denied(403, "AccessDenied", "Access Denied")

    @staticmethod
    def _keys_to_delete(environ: dict) -> list[str]:
        """The keys of a DeleteObjects body; the body is put back for moto."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            raise S3Denied(411, "MissingContentLength", "You must provide the Content-Length HTTP header.") from None
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            raise S3Denied(400, "MalformedXML", "The XML you provided was not well-formed.") from None
        return [element.text or "" for element in root.iter() if element.tag.rsplit("}", 1)[-1] == "Key"]

    @staticmethod
    def _refuse(denied: S3Denied, request: _Request, start_response):
        body = (
            b""
            if request.method == "HEAD"
            else (
                '<?xml version="1.0" encoding="UTF-8"?>'
                f"<Error><Code>{denied.code}</Code><Message>{denied.message}</Message>"
                f"<RequestId>{uuid.uuid4().hex}</RequestId></Error>"
            ).encode()
        )
        reason = {
            400: "Bad Request",
            403: "Forbidden",
            404: "Not Found",
            411: "Length Required",
            501: "Not Implemented",
        }[denied.status]
        start_response(
            f"{denied.status} {reason}", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        )
        return [body]
