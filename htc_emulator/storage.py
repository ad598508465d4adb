"""Object storage: one S3 bucket in moto's server, with scoped temporary credentials.

Layout (the same for every region; the emulator has one bucket where the
platform has one per storage region)::

    projects/<projectId>/shared/            project shared storage
    projects/<projectId>/tasks/<taskId>/    a task's folder (taskFolderPath)

Storage tokens carry temporary session credentials limited to key
prefixes, and the server enforces them: :mod:`htc_emulator.s3_gate`
checks every request before moto serves it.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
from collections.abc import Callable
from urllib.parse import quote

import boto3
import waitress
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from waitress import wasyncore
from waitress.channel import HTTPChannel

from .s3_gate import CredentialTable, S3Gate

BOTO_REGION = "us-east-1"
# The emulator's own S3 calls use this key (with a secret made per
# instance, so knowing the key gives nothing); storage faults spare them
# so that an injected S3 error never turns into an API 500.
ADMIN_ACCESS_KEY = "HTCEMULATORADMIN"
# Lifetime of storage-token credentials, as STS gives by default.
CREDENTIAL_LIFETIME = 3600

# A WSGI app wrapper: given moto's app, return the app that serves requests.
WsgiWrapper = Callable[[Callable], Callable]
# Requests served at once: a slow one (an injected delay) must not hold up the others.
SERVER_THREADS = 32
# Kept-alive connections at once: every job keeps a pool of its own.
SERVER_CONNECTIONS = 1024


class InvalidObjectKey(ValueError):
    """A path that would escape its storage prefix."""


def safe_relative_key(path: str) -> str:
    """Check a client-supplied object path relative to a storage prefix.

    Empty paths, absolute paths, empty, ``.`` and ``..`` segments, backslashes and NULs
    are refused: a key must stay inside the prefix it is joined to. The rule the client and
    the worker share (tests/project/test_shared_rules.py).
    """
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise InvalidObjectKey(f"object path must be relative and non-empty, without backslash or NUL: {path!r}")
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        raise InvalidObjectKey(f"object path must not contain empty, '.' or '..' segments: {path!r}")
    return path


def project_shared_prefix(project_id: str) -> str:
    return f"projects/{project_id}/shared/"


def task_prefix(project_id: str, task_id: str) -> str:
    return f"projects/{project_id}/tasks/{task_id}/"


class _S3Dispatcher(DomainDispatcherApplication):
    """moto's dispatcher, fixed to its S3 app.

    The gate in front lets through only requests for the emulator's bucket, so there is
    nothing to dispatch; moto's own search for the service, on every request and under one
    lock (a listing of its package folder and a few hundred URL patterns), was most of the
    time it spent per request.
    """

    def __init__(self) -> None:
        super().__init__(create_backend_app)
        self.s3_app = create_backend_app("s3")

    def get_application(self, environ: dict) -> Callable:
        return self.s3_app


class _Channel(HTTPChannel):
    """waitress's connection, with an empty body that expects ``100 Continue`` served at once.

    waitress 3.0.2 answers ``Expect: 100-continue`` on a request with ``Content-Length: 0`` and then
    waits for a body that never comes (botocore's PUT of an empty file hung there); there is no body
    to ask for, so such a request goes straight to the app, as it would without the header.
    """

    def send_continue(self) -> None:
        if self.request.content_length == 0:
            self.request.expect_continue = False
            return
        super().send_continue()


class _S3Server:
    """moto's S3 app behind waitress, on loopback: connections kept alive, a fixed pool of threads.

    moto's own server (werkzeug's development server) closes every connection after one
    request and starts a thread for the next: a third more CPU per request than this,
    and a new connection per request for every client. Like S3 behind a proxy that
    refuses them, header names with an underscore do not reach moto.
    """

    def __init__(self, app: Callable) -> None:
        self._connections: dict = {}
        self._server = waitress.create_server(
            app,
            host="127.0.0.1",
            port=0,
            threads=SERVER_THREADS,
            connection_limit=SERVER_CONNECTIONS,
            map=self._connections,
        )
        self._server.channel_class = _Channel
        self.endpoint = f"http://127.0.0.1:{self._server.effective_port}"
        self._thread = threading.Thread(target=self._server.run, name="htc-s3-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the requests being served, then close every socket from the server's own loop,
        which ends with nothing left to watch (closed from another thread, its select would fail).

        The loop runs the queued thunks whenever it wakes, and a byte an earlier pull left (a finished
        request's) can wake it between ``pull_trigger``'s queuing of a thunk and its write. This thunk
        closes the trigger too, so it is queued and the byte written under the trigger's lock, which the
        loop takes to run thunks: otherwise the write could find the pipe closed (EBADF), or write into
        whatever file had been given its descriptor's number meanwhile.
        """
        self._server.task_dispatcher.shutdown()
        trigger = self._server.trigger
        with trigger.lock:
            trigger.thunks.append(lambda: wasyncore.close_all(self._connections))
            trigger.pull_trigger()  # without a thunk, pull_trigger only writes (it takes the lock for a thunk)
        self._thread.join(timeout=10)


class Storage:
    """The bucket, its endpoint, and credentials for it."""

    def __init__(self, wrap: WsgiWrapper | None = None) -> None:
        # moto logs every request (presigned URLs included) through werkzeug; waitress warns
        # whenever requests wait for a thread, which a batch of jobs makes them do.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        # Unique per instance: moto keeps its state per process, and tests
        # run several emulators side by side.
        self.bucket = f"htc-emulator-{secrets.token_hex(4)}"
        self.credentials = CredentialTable()
        admin_secret = secrets.token_hex(20)
        self.credentials.add_admin(ADMIN_ACCESS_KEY, admin_secret)
        # The gate comes first: a refused request reaches neither the faults nor moto.
        app = _S3Dispatcher()
        self._server = _S3Server(S3Gate(wrap(app) if wrap else app, self.credentials, self.bucket))
        self.endpoint = self._server.endpoint
        session = boto3.session.Session(
            aws_access_key_id=ADMIN_ACCESS_KEY,
            aws_secret_access_key=admin_secret,
            region_name=BOTO_REGION,
        )
        config = Config(signature_version="s3v4", retries={"max_attempts": 2})
        self._s3 = session.client("s3", endpoint_url=self.endpoint, config=config)
        self._s3.create_bucket(Bucket=self.bucket)

    def temporary_credentials(
        self,
        *,
        read: list[str],
        write: list[str],
        lifetime: float = CREDENTIAL_LIFETIME,
        alive: Callable[[], bool] | None = None,
    ) -> tuple[dict[str, str], dt.datetime]:
        """Session credentials that read under ``read`` and read-write under ``write``, and their expiry.

        They end early once ``alive``, when given, says False.
        """
        return self.credentials.issue(read=read, write=write, lifetime=lifetime, alive=alive)

    def revoke(self, prefix: str) -> int:
        """End now every credential that may write under ``prefix`` (a deleted task's)."""
        return self.credentials.revoke(prefix)

    def presigned_put_url(self, key: str, lifetime: int = 3600) -> tuple[str, dt.datetime]:
        """A URL that PUTs ``key`` for ``lifetime`` seconds, signed with a credential issued for that alone."""
        expiration = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lifetime)
        request = AWSRequest(method="PUT", url=f"{self.endpoint}/{self.bucket}/{quote(key, safe='/~')}")
        signer = S3SigV4QueryAuth(self.credentials.issue_presigned("PUT", key, lifetime), "s3", BOTO_REGION, lifetime)
        signer.add_auth(request)
        return request.url, expiration

    def uri(self, key_prefix: str) -> str:
        return f"s3://{self.bucket}/{key_prefix}"

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many were deleted."""
        deleted = 0
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                deleted += len(keys)
        return deleted

    def stop(self) -> None:
        """Empty and drop the bucket (moto's state outlives the server), then stop."""
        try:
            self.delete_prefix("")
            self._s3.delete_bucket(Bucket=self.bucket)
        finally:
            self._server.stop()
