"""A real container registry behind the emulator's container-registry endpoints.

Distribution's registry (Debian's ``docker-registry``) runs on loopback with
token authentication, and the emulator is its token server, as the
platform's registry relies on the platform for who may push and pull:

- ``GET .../container-registry/token`` gives a project a password
  (:meth:`ContainerRegistry.issue_password`);
- ``docker login -u AWS --password-stdin`` sends it to the token server (a
  small HTTP server on loopback: the registry's ``realm``), which answers
  with a bearer token the registry trusts: signed with a key whose
  certificate is the registry's ``rootcertbundle``, granting pull and push
  only on the repositories that project created (``projects/<id>/<repo>``);
- the emulator lists what is really stored through the registry's HTTP API
  (catalog and tags) with a token it signs for itself.

An unknown password gets 401 from the token server, so ``docker login``
fails; a project's password grants nothing on another project's repositories.

The registry runs under :mod:`htc_emulator.tether`: when the emulator ends, even
killed, the registry stops and its folder (configuration, signing certificate,
the images pushed) is removed.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .child_env import without_api_key

SERVICE = "htc-emulator-registry"
ISSUER = "htc-emulator"
USERNAME = "AWS"
# ECR's registry passwords last 12 hours; registry bearer tokens, minutes.
PASSWORD_LIFETIME = 12 * 3600
BEARER_LIFETIME = 300
REGISTRY_EXECUTABLE = "docker-registry"
TETHER = Path(__file__).with_name("tether.py")
# The manifests a push stores (Docker's and OCI's, one platform or a list of them).
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)


def project_namespace(project_id: str) -> str:
    """Where a project's repositories live in the registry."""
    return f"projects/{project_id}/"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _SigningKey:
    """An EC key and its self-signed certificate: the registry trusts tokens this key signs."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "htc-emulator registry token signer")])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def sign(self, claims: dict) -> str:
        # x5c carries the certificate, which the registry checks against its root bundle.
        chain = [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()]
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"x5c": chain})


class ContainerRegistry:
    """A running ``docker-registry`` on loopback and its token server.

    ``may_use(project_id, repository)`` says whether a project created that
    repository (the emulator's ``POST .../container-registry/repo/{name}``).
    """

    def __init__(self, may_use: Callable[[str, str], bool], executable: str = REGISTRY_EXECUTABLE) -> None:
        self.may_use = may_use
        self.executable = executable
        self._key = _SigningKey()
        self._passwords: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._dir = Path(tempfile.mkdtemp(prefix="htc-registry-"))
        self._process: subprocess.Popen | None = None
        self._token_server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._token_thread = threading.Thread(
            target=self._token_server.serve_forever, name="htc-registry-tokens", daemon=True
        )
        self.host = ""

    @staticmethod
    def available(executable: str = REGISTRY_EXECUTABLE) -> bool:
        return shutil.which(executable) is not None

    # --- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        self._token_thread.start()
        port = _free_port()
        self.host = f"127.0.0.1:{port}"
        (self._dir / "signer.pem").write_bytes(self._key.certificate_pem())
        config = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self._dir / "data")}},
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
            "auth": {
                "token": {
                    "realm": f"http://127.0.0.1:{self._token_server.server_address[1]}/token",
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": str(self._dir / "signer.pem"),
                }
            },
        }
        # JSON is YAML: the registry reads this file as its configuration.
        (self._dir / "config.yml").write_text(json.dumps(config))
        # Its log goes to a file: a pipe nobody reads would fill up and stall the registry. The tether's stdin
        # is a pipe only this process holds: it closes when this process ends, however it ends.
        log = self._dir / "registry.log"
        with log.open("wb") as log_file:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    str(TETHER),
                    str(self._dir),
                    "--",
                    self.executable,
                    "serve",
                    str(self._dir / "config.yml"),
                ],
                stdin=subprocess.PIPE,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=without_api_key(),
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.executable} exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                if requests.get(f"http://{self.host}/v2/", timeout=2).status_code == 401:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.executable} did not answer on {self.host}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stdin.close()  # as if this process had ended: the tether stops the registry
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()  # and the registry with it (its parent-death signal)
                self._process.wait()
        self._token_server.shutdown()
        self._token_server.server_close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # --- passwords and tokens ----------------------------------------------------

    def issue_password(self, project_id: str) -> str:
        """A registry password for one project (``GET .../container-registry/token``)."""
        password = secrets.token_urlsafe(48)
        with self._lock:
            now = time.time()
            self._passwords = {p: v for p, v in self._passwords.items() if v[1] > now}
            self._passwords[password] = (project_id, now + PASSWORD_LIFETIME)
        return password

    def _project_of(self, authorization: str | None) -> str | None:
        """The project whose password the Basic credentials carry, if valid."""
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        with self._lock:
            project_id, expires = self._passwords.get(password, (None, 0.0))
        return project_id if user == USERNAME and expires > time.time() else None

    def _granted(self, project_id: str, scopes: list[str]) -> list[dict]:
        """The requested repository actions this project may have: its own repositories only."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            namespace = project_namespace(project_id)
            if kind != "repository" or not name.startswith(namespace):
                continue
            if not self.may_use(project_id, name[len(namespace) :]):
                continue
            allowed = [a for a in actions.split(",") if a in ("pull", "push")]
            if allowed:
                access.append({"type": "repository", "name": name, "actions": allowed})
        return access

    def _bearer(self, subject: str, access: list[dict]) -> str:
        now = int(time.time())
        return self._key.sign(
            {
                "iss": ISSUER,
                "sub": subject,
                "aud": SERVICE,
                "iat": now,
                "nbf": now - 5,
                "exp": now + BEARER_LIFETIME,
                "jti": str(uuid.uuid4()),
                "access": access,
            }
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        container_registry = self

        class TokenHandler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                project_id = container_registry._project_of(self.headers.get("Authorization"))
                if url.path != "/token" or query.get("service") != [SERVICE]:
                    return self._answer(404, {"errors": [{"code": "NOT_FOUND", "message": "no such token service"}]})
                if project_id is None:
                    return self._answer(
                        401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad registry credentials"}]}
                    )
                token = container_registry._bearer(
                    USERNAME, container_registry._granted(project_id, query.get("scope", []))
                )
                self._answer(200, {"token": token, "access_token": token, "expires_in": BEARER_LIFETIME})

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
                pass  # requests carry credentials; nothing is logged

        return TokenHandler

    # --- what is stored -----------------------------------------------------------

    def _get(self, path: str, access: list[dict]) -> dict:
        response = requests.get(
            f"http://{self.host}/v2/{path}",
            timeout=30,
            headers={"Authorization": f"Bearer {self._bearer(ISSUER, access)}"},
        )
        if response.status_code == 404:
            return {}
        response.raise_for_status()
        return response.json()

    def images(self, project_id: str, repositories: list[str]) -> list[str]:
        """``repository:tag`` of every image pushed to these repositories of the project."""
        names = []
        for repository in repositories:
            path = project_namespace(project_id) + repository
            tags = self._get(f"{path}/tags/list", [{"type": "repository", "name": path, "actions": ["pull"]}])
            names += [f"{repository}:{tag}" for tag in tags.get("tags") or []]
        return sorted(names)

    def digest(self, project_id: str, name: str) -> str | None:
        """The digest of the manifest the project's ``repository:tag`` names now (None if there is none).

        What an engine that pulled it records (``RepoDigests``): the request accepts the formats a push
        stores, so the registry answers with the stored manifest's own digest, not a converted one's.
        """
        repository, _, tag = name.rpartition(":")
        path = project_namespace(project_id) + repository
        bearer = self._bearer(ISSUER, [{"type": "repository", "name": path, "actions": ["pull"]}])
        response = requests.head(
            f"http://{self.host}/v2/{path}/manifests/{tag}",
            timeout=30,
            headers={"Accept": ", ".join(MANIFEST_TYPES), "Authorization": f"Bearer {bearer}"},
        )
        return response.headers.get("Docker-Content-Digest") if response.status_code == 200 else None

    def pull_credentials(self, project_id: str) -> tuple[str, str]:
        """(username, password) with which the scheduler pulls a project's image."""
        return USERNAME, self.issue_password(project_id)
