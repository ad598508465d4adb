"""A thin client for the Rescale HTC REST API: the repetitive parts of a long HTC run.

``HtcSession`` is a ``requests.Session`` that authenticates itself, renews its
bearer token, sets timeouts, retries transient failures and raises typed errors,
so API calls can stay short and visible::

    session = HtcSession(api_url, api_key)
    regions = session.get(f"{api_url}/htc/regions").json()

Everything else is a plain function that takes the session and the ids it needs:
paging, polling, logs, job statistics, storage tokens and transfers, result
aggregation, and batches submitted under run ids (each batch's results in a
namespace of its own; a submit whose answer was lost reconciled, not repeated).
Nothing here keeps state between calls. Every failed request raises an ``HtcError``.

The helpers log what happens out of sight (retries, waits on ``Retry-After``,
token renewals, resubmissions) to the ``htc_helpers`` logger, and print nothing
unless logging is configured: ``logging.basicConfig(level=logging.INFO)`` shows it.

**Copying a function.** Each public function's and class's docstring ends with a
*Needs* line: the other names of this module it uses, directly or through them,
which a copy must bring along with the imports (an ``HtcSession`` aside, which
every call takes). ``Needs: nothing else`` means the function stands alone.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import math
import os
import re
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import boto3
import botocore.session
import pandas as pd
import requests
from botocore.config import Config
from botocore.credentials import CredentialResolver, RefreshableCredentials
from botocore.exceptions import ClientError
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NameResolutionError, NewConnectionError
from urllib3.util.retry import Retry

JOB_STATUSES = (
    "SUBMITTED_TO_RESCALE",
    "SUBMITTED_TO_PROVIDER",
    "RUNNABLE",
    "STARTING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "POD_SUCCEEDED",
    "POD_FAILED",
)
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "POD_SUCCEEDED", "POD_FAILED"})
FAILED_STATUSES = frozenset({"FAILED", "POD_FAILED"})
# The platform refreshes job statuses every 30 s; polling faster only adds load.
STATUS_REFRESH_SECONDS = 30
# A cold platform starts an instance and pulls the image before a job runs (RUNNABLE, then
# STARTING): minutes. A wait for jobs allows this on top of their own run time.
COLD_START_SECONDS = 600
# After a push the platform answers 404 for an image, then PENDING while it replicates it, then
# READY. Rescale's own client (rescalehtc) asks every 10 s and gives up after 5 minutes.
IMAGE_POLL_SECONDS = 10
IMAGE_READY_TIMEOUT_SECONDS = 600
# An emulator of the platform that runs a faster clock says in this header of every answer how many
# real seconds one of the platform's lasts there; the platform sends none (its seconds are real ones).
TIME_SCALE_HEADER = "HTC-Emulator-Time-Scale"
# CloudWatch, where job logs come from, can answer a page with no lines and a `next` all the same;
# this many in a row is a server that never ends.
MAX_EMPTY_PAGES = 100
# Waits give up after a day unless told otherwise (timeout=None waits for ever): a job lost
# on the platform, or an expected_jobs larger than what was submitted, would poll without end.
WAIT_TIMEOUT_SECONDS = 86400
RETRY_STATUSES = (429, 500, 502, 503, 504)
# Storage credentials are renewed this many seconds before they expire, or when this
# share of their lifetime is left if that comes later (short-lived test credentials).
STORAGE_RENEW_BEFORE = 300
STORAGE_RENEW_FRACTION = 0.25
# The face tagger's manifest fields first, then where each row comes from: task, run (the batch's
# namespace), array index, job and the manifest (or face-count file) it was read from.
RESULT_COLUMNS = [
    "image",
    "faces",
    "status",
    "error",
    "seconds",
    "boxes",
    "scale_factor",
    "task",
    "run",
    "index",
    "job",
    "source",
]
# The same for any program on the worker layer (face_tagger/htc_worker.py), whose rows name an "item".
ITEM_COLUMNS = ["item", "status", "error", "seconds", "task", "run", "index", "job", "source"]
# A batch's jobs write under runs/<run id>/ of task storage: the run id comes from this variable, which
# the submitting side sets (the platform promises no variable naming the batch).
RUN_ID_ENV = "HTC_RUN_ID"
RUNS_PREFIX = "runs/"
# A manifest: manifests/<name>.jsonl in a run's namespace, or at the task's root (a worker run outside a batch).
_MANIFEST_KEY = re.compile(rf"(?:{re.escape(RUNS_PREFIX)}(?P<run>[^/]+)/)?manifests/[^/]+\.jsonl")
MAX_JOBS_PER_BATCH = 1000  # the spec's limit on batchSize
MAX_BATCHES_PER_REQUEST = 100  # and on the batches of one jobs/batch request

# The helpers report retries, waits, token renewals and resubmissions here; with no logging configured
# the NullHandler keeps them silent (Python's last-resort handler would print warnings to stderr).
_log = logging.getLogger(__name__)
_log.addHandler(logging.NullHandler())


# --- errors ------------------------------------------------------------------------------


class HtcError(Exception):
    """An HTC API call failed. ``status`` is the HTTP status; ``description`` the server's explanation.

    Needs: nothing else
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str | None = None,
        url: str | None = None,
        description: str | None = None,
    ):
        super().__init__(message)
        self.status, self.method, self.url, self.description = status, method, url, description


class HtcBadRequest(HtcError):
    """400: the request was invalid; ``description`` holds the server's ``errorDescription``.

    Needs: HtcError
    """


class HtcUnauthorized(HtcError):
    """401: the API key is wrong, or the bearer token expired and could not be renewed.

    Needs: HtcError
    """


class HtcForbidden(HtcError):
    """403: valid credentials without access to this resource.

    Needs: HtcError
    """


class HtcNotFound(HtcError):
    """404: no such project, task, job or object.

    Needs: HtcError
    """


class HtcRateLimited(HtcError):
    """429 that persisted through every retry.

    Needs: HtcError
    """


class HtcServerError(HtcError):
    """5xx that persisted through every retry (or a non-idempotent call that was not retried).

    Needs: HtcError
    """


class HtcConnectionError(HtcError, requests.ConnectionError):
    """No connection to the server: nothing listens there, its name does not resolve, or it does not answer.

    The message names the URL and what to check. A ``requests.ConnectionError`` too, for code that catches that.
    A connection that broke after the request went out may have left it carried out: for a POST, find out what it
    created before sending it again (``group_batches`` for a submit; ``submit_batches`` does it itself).

    Needs: HtcError
    """


class HtcNoAnswer(HtcError):
    """The request went out and its answer never came whole: the read timed out, or the answer broke off.

    The server may have carried the request out all the same: for a POST, find out what it created before
    sending it again (``group_batches`` for a submit; ``submit_batches`` does it itself). The ``requests``
    exception is the ``__cause__``.

    Needs: HtcError
    """


class HtcTimeoutError(HtcError, TimeoutError):
    """A wait gave up; ``history`` holds what was observed until then, when there is any.

    Needs: HtcError
    """

    def __init__(self, message: str, history: pd.DataFrame | None = None):
        super().__init__(message)
        self.history = history


_QUERY = re.compile(r"\?[^\s'\")]*")
_SECRET_PARAM = re.compile(r"signature|credential|token|secret|key|password", re.IGNORECASE)
_ERRORS = {400: HtcBadRequest, 401: HtcUnauthorized, 403: HtcForbidden, 404: HtcNotFound, 429: HtcRateLimited}


def _redact(url: str) -> str:
    """The URL with the values of credential-like query parameters (presigned URLs) blanked out."""
    parts = urlsplit(url)
    query = [(k, "REDACTED" if _SECRET_PARAM.search(k) else v) for k, v in parse_qsl(parts.query, True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="/:")))


def _description(response: requests.Response) -> str | None:
    """The server's explanation: ``errorDescription`` (HTCRequestError, OAuth2ErrorResponse) and, when it says
    more, ``message``, which names the value refused ("Invalid value for body: ... at most 100 items")."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or None
    if not isinstance(body, dict):
        return response.text[:500] or None
    described = next((str(body[k]) for k in ("errorDescription", "detail", "error", "message") if body.get(k)), None)
    message = str(body.get("message") or "")
    if described and message and message not in described:
        return f"{described}: {message}"
    return described


def _connection_error(exc: requests.ConnectionError, url: str, api_url: str) -> HtcConnectionError:
    """``exc`` in one line: which server could not be reached, why, and what to check."""
    reason = exc.args[0].reason if exc.args and isinstance(exc.args[0], MaxRetryError) else exc
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    if isinstance(reason, NameResolutionError):
        why = f"the host name {parts.hostname!r} does not resolve"
    elif isinstance(reason, NewConnectionError) and "refused" in str(reason).lower():
        why = f"the connection was refused: nothing listens at {where}"
    elif isinstance(reason, ConnectTimeoutError):
        why = f"{where} did not answer in time"
    else:
        errno = re.search(r"\[Errno -?\d+\][^'\")]*", str(reason))
        why = errno.group(0).strip() if errno else str(reason)[:200]
    if not url.startswith(api_url):
        return HtcConnectionError(f"cannot reach {parts.scheme}://{where}: {why}", url=_redact(url))
    if parts.hostname in ("localhost", "127.0.0.1", "::1"):
        check = (
            "Is the server running? The local emulator starts with `make lab` (with JupyterLab) "
            "or `python -m htc_emulator`; use the URL it prints."
        )
    else:
        check = "Check the URL, your network connection and any proxy (HTTPS_PROXY)."
    return HtcConnectionError(
        f"cannot reach the HTC API at {api_url}: {why}. {check} The URL comes from config.htc_api_url() "
        "($RESCALE_HTC_API_URL, else htcapibaseurl in your apiconfig profile).",
        url=_redact(url),
    )


def _raise_for_status(response: requests.Response, with_body: bool = True) -> None:
    """Raise the typed error for a non-2xx response; ``with_body=False`` keeps the body out of it."""
    if response.ok:
        return
    # Other hosts' bodies stay out: S3 errors for presigned URLs echo StringToSign and AWSAccessKeyId.
    description = _description(response) if with_body else None
    method = response.request.method
    url = _redact(response.url)
    message = f"HTTP {response.status_code} {response.reason} for {method} {url}"
    if description:
        message += f": {description}"
    status = response.status_code
    cls = HtcServerError if status >= 500 else _ERRORS.get(status, HtcError)
    raise cls(message, status=status, method=method, url=url, description=description)


# --- session -----------------------------------------------------------------------------

# The deadline of the one HtcSession.request call in progress in this thread, from its
# ``deadline=`` argument: urllib3 calls _HtcRetry.sleep deep inside requests, with no way
# to hand it a per-call value. Only HtcSession.request sets it, only for its own call.
_REQUEST_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("htc_deadline", default=None)


class _DeadlineReached(Exception):
    """A retry's pause would end past the call's deadline (not an OSError, so requests lets it through)."""


class _HtcRetry(Retry):
    """urllib3's Retry, except that a POST is also retried on 429, and no pause outlasts the call's deadline.

    A 429 means the server turned the request away before doing anything, so even
    a job submission can be sent again. A POST that got a 5xx or a read timeout is
    not retried: ``jobs/batch`` may already have created the jobs, and sending it
    again would run them twice. The deadline is the ``deadline=`` of the
    ``HtcSession.request`` call in progress (``_REQUEST_DEADLINE``).
    """

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if method.upper() == "POST" and status_code == 429:
            return True
        return super().is_retry(method, status_code, has_retry_after)

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        # A refused connection or a name that does not resolve does not mend in a minute: say so at once.
        # (A connect timeout is a NewConnectionError's parent, and is retried: the network may come back.)
        if isinstance(error, NewConnectionError):
            raise MaxRetryError(_pool, url, error) from error
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        cause = f"HTTP {response.status}" if response is not None and response.status else type(error).__name__
        _log.info("%s %s: %s; retry %d", method, _redact(url or ""), cause, len(retry.history))
        return retry

    def sleep(self, response=None) -> None:
        retry_after = self.get_retry_after(response) if self.respect_retry_after_header and response else None
        pause = retry_after or self.get_backoff_time()
        deadline = _REQUEST_DEADLINE.get()
        if deadline is not None and time.monotonic() + pause >= deadline:
            raise _DeadlineReached()
        if pause:
            _log.info("waiting %.1f s before the retry%s", pause, " (Retry-After)" if retry_after else "")
        super().sleep(response)


class HtcSession(requests.Session):
    """A ``requests.Session`` for one HTC API base URL.

    * gets a bearer token from the API key, renews it ``refresh_margin`` seconds
      (at most a tenth of its lifetime) before it expires, and once more after a 401;
    * inside a job, without a key, uses ``$RESCALE_HTC_BEARER_TOKEN`` as it is;
    * takes absolute URLs or paths relative to the base URL;
    * applies ``timeout`` (connect, read) to every request;
    * retries 429, 5xx and what may mend (a connect timeout, a dropped connection) with
      exponential backoff and jitter, honouring ``Retry-After`` (POST only on 429, see
      ``_HtcRetry``); a refused connection or an unknown host is an ``HtcConnectionError`` at once;
    * raises a typed ``HtcError`` for every non-2xx response; a refused API key is an
      ``HtcUnauthorized`` that names ``key_source`` (where the key came from, e.g. ``config.key_source()``);
    * sends a call that carries its own ``Authorization`` header with that header, as a plain
      ``requests.Session`` would: the key exchange written out by hand,
      ``session.get("/auth/token", headers={"Authorization": f"Token {api_key}"})``;
    * with ``deadline=`` (a ``time.monotonic()`` value) on a call, ends that call, its
      retries and their pauses by then, or raises ``HtcTimeoutError``;
    * knows how fast the API's clock runs (``time_scale``): 1.0 on the platform, less on an
      emulator that says so in its answers' ``HTC-Emulator-Time-Scale`` header.

    Example: ``session = HtcSession(config.htc_api_url(), api_key, key_source=config.key_source())``

    Needs: _connection_error, _DeadlineReached, _description, _ERRORS, HtcBadRequest, HtcConnectionError, HtcError,
    HtcForbidden, HtcNoAnswer, HtcNotFound, HtcRateLimited, _HtcRetry, HtcServerError, HtcTimeoutError, HtcUnauthorized,
    _log, _QUERY, _raise_for_status, _redact, _REQUEST_DEADLINE, RETRY_STATUSES, _SECRET_PARAM, TIME_SCALE_HEADER
    """

    def __init__(
        self,
        api_url: str,
        api_key: str | None = None,
        *,
        job_token: str | None = None,
        key_source: str | None = None,
        timeout: tuple[float, float] = (10, 60),
        max_retries: int = 6,
        backoff_factor: float = 1.0,
        backoff_max: float = 60.0,
        refresh_margin: float = 300.0,
    ):
        super().__init__()
        if api_key is not None and job_token is not None:
            raise ValueError("give HtcSession an API key or a job token, not both")
        if api_key is None and job_token is None:
            job_token = os.environ.get("RESCALE_HTC_BEARER_TOKEN")
            if not job_token:
                raise ValueError("HtcSession needs an API key, or RESCALE_HTC_BEARER_TOKEN inside an HTC job")
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.refresh_margin = refresh_margin
        self._api_key = api_key
        self._key_source = key_source or "the api_key given to HtcSession"
        self._token = job_token
        # A job token is used as given: there is no key to renew it with.
        self._renew_at = float("inf") if api_key is None else 0.0
        self._token_lock = threading.Lock()
        self._time_scale: float | None = None
        retry = _HtcRetry(
            total=max_retries,
            # Connect timeouts: a few tries, not a minute of silence before saying the host does not answer.
            connect=min(2, max_retries),
            other=0,
            backoff_factor=backoff_factor,
            backoff_max=backoff_max,
            backoff_jitter=backoff_factor,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=Retry.DEFAULT_ALLOWED_METHODS,
            # urllib3 would otherwise wait up to 6 h when a server asks for it.
            respect_retry_after_header=True,
            retry_after_max=300,
            # Hand the last 429/5xx back instead of raising MaxRetryError, so it becomes a typed error.
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def __repr__(self) -> str:
        return f"<HtcSession {self.api_url} ({'API key' if self._api_key else 'job token'})>"

    @property
    def time_scale(self) -> float:
        """How many real seconds one second of the platform's lasts at this API: 1.0 on the platform.

        An emulator that runs a faster clock says so in every answer; this asks once if no answer came yet.
        Example: ``time.sleep(30 * session.time_scale)``
        """
        if self._time_scale is None:
            self.get("/auth/token/whoami")
        return self._time_scale

    def _note_clock(self, response: requests.Response) -> None:
        try:
            scale = float(response.headers.get(TIME_SCALE_HEADER, 1.0))
        except ValueError:
            scale = 1.0
        self._time_scale = scale if 0 < scale < float("inf") else 1.0

    def bearer_token(self) -> str:
        """The current bearer token, renewed first when it is about to expire.

        Example: ``env["RESCALE_HTC_BEARER_TOKEN"] = session.bearer_token()``
        """
        with self._token_lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._renew_token()
            return self._token

    def _renew_token(self) -> None:
        started = time.monotonic()
        url = f"{self.api_url}/auth/token"
        try:
            response = super().request(
                "GET", url, timeout=self.timeout, headers={"Authorization": f"Token {self._api_key}"}
            )
        except requests.ConnectionError as exc:
            raise _connection_error(exc, url, self.api_url) from None
        if response.status_code == 401:
            raise self._key_refused(response)
        _raise_for_status(response)
        self._note_clock(response)
        body = response.json()
        lifetime = float(body["expiresIn"])
        self._token = body["tokenValue"]
        self._renew_at = started + lifetime - min(self.refresh_margin, lifetime / 10)
        _log.info("bearer token renewed: valid for %.0f s, renewed again in %.0f s", lifetime, self._renew_at - started)

    def _key_refused(self, response: requests.Response) -> HtcUnauthorized:
        """The 401 to a request that carried this session's API key: which key, and what to do."""
        description = _description(response)
        return HtcUnauthorized(
            f"the HTC API at {self.api_url} refused the API key from {self._key_source}"
            f"{f' ({description})' if description else ''}. Check that it is this workspace's key, "
            "not revoked and not a placeholder; a new key is made in the API section of your Rescale profile.",
            status=401,
            method=response.request.method,
            url=_redact(response.url),
            description=description,
        )

    def _is_api_url(self, url: str) -> bool:
        # The bearer token goes only to the API itself, never to another host a URL may point at.
        return url == self.api_url or url.startswith(self.api_url + "/")

    def request(self, method, url, params=None, data=None, headers=None, *, deadline=None, **kwargs):
        """Send a request; relative ``url`` is joined to the base URL. Raises ``HtcError`` on non-2xx.

        With ``deadline`` (a ``time.monotonic()`` value), ``HtcTimeoutError`` once it comes,
        retries or not: ``session.get(url, deadline=time.monotonic() + 30)``.
        """
        if not urlsplit(url).scheme:
            url = f"{self.api_url}/{url.lstrip('/')}"
        kwargs.setdefault("timeout", self.timeout)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HtcTimeoutError(f"deadline reached before {method} {_redact(url)}")
            connect, read = kwargs["timeout"] if isinstance(kwargs["timeout"], tuple) else (kwargs["timeout"],) * 2
            kwargs["timeout"] = (min(connect or left, left), min(read or left, left))
        # A call with an Authorization of its own (the key exchange, by hand) goes out with it, not the token.
        own_credentials = any(name.lower() == "authorization" for name in headers or {})
        call_deadline = _REQUEST_DEADLINE.set(deadline)  # read by _HtcRetry.sleep during this call
        try:
            if own_credentials or not self._is_api_url(url):
                response = super().request(method, url, params, data, headers, **kwargs)
            else:
                response = self._send_with_token(method, url, params, data, headers or {}, kwargs)
        except _DeadlineReached:
            raise HtcTimeoutError(f"deadline reached while retrying {method} {_redact(url)}") from None
        except requests.RequestException as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise HtcTimeoutError(f"deadline reached during {method} {_redact(url)}: {exc}") from None
            if isinstance(exc, requests.ConnectionError) and not isinstance(exc, HtcConnectionError):
                raise _connection_error(exc, url, self.api_url) from None
            if isinstance(exc, (HtcError, ValueError)):  # typed already; or a malformed URL: the caller's mistake
                raise
            # The cause's text may quote the URL with its query (a presigned URL's signature): queries go.
            reason = f"{type(exc).__name__}: {_QUERY.sub('?…', str(exc))}"
            maybe_done = "; the server may have carried it out all the same" if method.upper() == "POST" else ""
            raise HtcNoAnswer(
                f"no answer to {method} {_redact(url)} ({reason}){maybe_done}",
                method=method,
                url=_redact(url),
                description=reason,
            ) from exc
        finally:
            _REQUEST_DEADLINE.reset(call_deadline)
        if self._is_api_url(url):
            self._note_clock(response)
            sent_the_key = self._api_key is not None and (
                response.request.headers.get("Authorization") == f"Token {self._api_key}"
            )
            if response.status_code == 401 and sent_the_key:
                raise self._key_refused(response)
        _raise_for_status(response, with_body=self._is_api_url(url))
        return response

    def _send_with_token(self, method, url, params, data, headers, kwargs):
        token = self.bearer_token()
        response = super().request(method, url, params, data, {**headers, "Authorization": f"Bearer {token}"}, **kwargs)
        if response.status_code == 401 and self._api_key is not None:
            # The token was revoked or the clocks disagree: renew once and try again.
            with self._token_lock:
                if self._token == token:
                    self._renew_token()
                token = self._token
            response = super().request(
                method, url, params, data, {**headers, "Authorization": f"Bearer {token}"}, **kwargs
            )
        return response


# --- paging, polling, logs ---------------------------------------------------------------


def _next_params(params: dict, next_url: str) -> dict | None:
    """The first call's parameters with the ``pageIndex`` of ``next``; None when it names no page.

    Only ``pageIndex`` is taken, and the next call goes to the original URL, as htc-cli does:
    ``next`` may name another host (the spec's example is ``https://page2.com``), and the
    bearer token must not follow it there, nor must a parameter be sent twice.
    """
    page_index = parse_qs(urlsplit(next_url).query).get("pageIndex", [""])[0]
    return {**params, "pageIndex": page_index} if page_index else None


def paginate(
    session: HtcSession,
    url: str,
    params: dict | None = None,
    *,
    max_items: int | None = None,
    deadline: float | None = None,
) -> list:
    """All items of a list endpoint, page after page, to the end or until ``max_items``.

    The end is a page without ``next``; a page with no items but a ``next`` is not the end
    (job logs come from CloudWatch, which answers such pages). A server whose ``next`` names a
    page already fetched, that sends the previous page again, or ``MAX_EMPTY_PAGES`` empty
    pages in a row, would be followed for ever: that is an ``HtcError`` instead. ``deadline`` (a
    ``time.monotonic()`` value) goes to every page's request (see ``HtcSession.request``).
    Example: ``tasks = paginate(session, f"/htc/projects/{project_id}/tasks", {"pageSize": 500})``

    Needs: HtcError, MAX_EMPTY_PAGES, _next_params
    """
    items: list = []
    params = dict(params or {})
    fetched, previous, empty_in_a_row = set(), None, 0
    while max_items is None or len(items) < max_items:
        page_index = params.get("pageIndex")
        if page_index in fetched:
            raise HtcError(
                f"paging of {url} does not end: after {len(fetched)} pages, next names page {page_index!r} again"
            )
        fetched.add(page_index)
        body = session.get(url, params=params, deadline=deadline).json()
        if isinstance(body, list):  # e.g. tasks/{id}/groups answers with a bare list
            items.extend(body)
            break
        page = body.get("items") or []
        if page and page == previous:
            raise HtcError(f"paging of {url} does not end: page {page_index!r} repeats the page before it")
        empty_in_a_row = 0 if page else empty_in_a_row + 1
        if empty_in_a_row > MAX_EMPTY_PAGES:
            raise HtcError(f"paging of {url} does not end: {empty_in_a_row} empty pages in a row")
        items.extend(page)
        previous = page
        params = _next_params(params, body.get("next") or "")
        if params is None:
            break
    return items if max_items is None else items[:max_items]


def get_or_create_task(session: HtcSession, project_id: str, name: str, description: str = "") -> tuple[dict, bool]:
    """The project's newest active task named ``name``, or a new one: ``(task, created)``.

    Task names need not be unique: every ``POST .../tasks`` makes one more. Code that may run
    again (a notebook cell, a script after a crash) finds the task an earlier run made instead.
    Example: ``task, created = get_or_create_task(session, pid, "faces", "one batch of faces")``

    Needs: HtcError, MAX_EMPTY_PAGES, _next_params, paginate
    """
    tasks = paginate(session, f"/htc/projects/{project_id}/tasks")
    active = [t for t in tasks if t["taskName"] == name and t["lifecycleStatus"] == "ACTIVE"]
    if active:
        return max(active, key=lambda t: t["createdAt"]), False
    body = {"taskName": name, "taskDescription": description}
    return session.post(f"/htc/projects/{project_id}/tasks", json=body).json(), True


def platform_seconds(session: HtcSession, seconds: float) -> float:
    """``seconds`` of the platform's time as the session's API runs them: the same on the platform, fewer
    on an emulator whose clock runs faster (it says so: ``HtcSession.time_scale``).

    Example: ``time.sleep(platform_seconds(session, STATUS_REFRESH_SECONDS))``

    Needs: nothing else
    """
    return seconds * session.time_scale


def _timestamp(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _pause(interval: float, deadline: float | None, timeout_error) -> float:
    """How long to sleep before the next poll: ``interval``, cut short by the deadline, which raises once reached."""
    if deadline is None:
        return interval
    left = deadline - time.monotonic()
    if left <= 0:
        raise timeout_error()
    return min(interval, left)


def wait_for_job(
    session: HtcSession,
    project_id: str,
    task_id: str,
    job_id: str,
    *,
    interval: float | None = None,
    timeout: float | None = WAIT_TIMEOUT_SECONDS,
    progress: bool = True,
    page_size: int = 500,
) -> dict:
    """Poll a job instance's events until its latest status is terminal; return that event.

    Polls every ``interval`` seconds: by default the platform's status refresh (30 s), on the API's
    clock (``platform_seconds``). Raises ``HtcTimeoutError`` after ``timeout`` seconds (a day by default).
    With ``progress``, one line shows the job's latest status while it waits. ``page_size``: events a call.
    Example: ``event = wait_for_job(session, project_id, task_id, f"{parent_job_id}:0", timeout=3600)``

    Needs: HtcError, HtcTimeoutError, MAX_EMPTY_PAGES, _next_params, paginate, _pause, platform_seconds,
    STATUS_REFRESH_SECONDS, TERMINAL_STATUSES, _timestamp, WAIT_TIMEOUT_SECONDS
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    interval = platform_seconds(session, STATUS_REFRESH_SECONDS) if interval is None else interval
    url = f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{job_id}/events"
    latest = None

    def timed_out():
        return HtcTimeoutError(
            f"job {job_id} still not finished after {timeout} s "
            f"(status: {latest['status'] if latest else 'no events yet'})"
        )

    # stdout, not stderr: a notebook shows stderr as an error box.
    with tqdm(total=1, desc=f"job {job_id}", unit="job", disable=not progress, file=sys.stdout) as bar:
        while True:
            try:  # a poll's retries end by the deadline too
                events = paginate(session, url, {"pageSize": page_size}, deadline=deadline)
            except HtcTimeoutError:
                raise timed_out() from None
            # Within one timestamp a terminal event is the later one: nothing follows it.
            latest = max(
                events, key=lambda e: (_timestamp(e["dateTime"]), e["status"] in TERMINAL_STATUSES), default=None
            )
            bar.set_postfix_str(latest["status"] if latest else "no events yet")
            if latest is not None and latest["status"] in TERMINAL_STATUSES:
                bar.update(1)
                return latest
            time.sleep(_pause(interval, deadline, timed_out))


def wait_for_image(
    session: HtcSession, project_id: str, image: str, *, interval: float | None = None, timeout: float | None = None
) -> str:
    """Poll an image's status in the project's registry until it is READY; return ``"READY"``.

    A 404 and ``PENDING`` both mean "not yet": after a push the platform knows an image only once it
    starts replicating it, and runs it only once it is READY (a batch naming it before is refused).
    ``interval`` and ``timeout`` default to Rescale's own client's values (10 s, here 10 min) on the
    API's clock (``platform_seconds``). Raises ``HtcTimeoutError`` naming the last status.
    Example: ``wait_for_image(session, pid, "opencv-htc-tutorial:v1")``

    Needs: HtcError, HtcNotFound, HtcTimeoutError, IMAGE_POLL_SECONDS, IMAGE_READY_TIMEOUT_SECONDS, _pause,
    platform_seconds
    """
    interval = platform_seconds(session, IMAGE_POLL_SECONDS) if interval is None else interval
    timeout = platform_seconds(session, IMAGE_READY_TIMEOUT_SECONDS) if timeout is None else timeout
    deadline = time.monotonic() + timeout
    url = f"/htc/projects/{project_id}/container-registry/images/{image}"
    status = "unknown to the platform (404)"

    def timed_out():
        return HtcTimeoutError(f"image {image} not READY in project {project_id} after {timeout:g} s: {status}")

    while True:
        try:
            status = session.get(url, deadline=deadline).json()["status"]
        except HtcNotFound:
            status = "unknown to the platform (404)"
        except HtcTimeoutError:
            raise timed_out() from None
        if status == "READY":
            return status
        time.sleep(_pause(interval, deadline, timed_out))


def get_logs(session: HtcSession, project_id: str, task_id: str, job_id: str, *, page_size: int = 1000) -> list[dict]:
    """Every log line of a job instance, oldest first, as ``{"timestamp", "message"}`` dicts; ``page_size`` a call.

    Example: ``for line in get_logs(session, pid, tid, job_id): print(line["message"])``

    Needs: HtcError, MAX_EMPTY_PAGES, _next_params, paginate
    """
    return paginate(
        session,
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs/{job_id}/logs",
        {"sort": "asc", "pageSize": page_size},
    )


# --- job statistics ----------------------------------------------------------------------


def get_all_jobs(
    session: HtcSession,
    project_id: str,
    task_id: str,
    group: str | None = None,
    status: str | None = None,
    view_type: str = "SIMPLE",
    *,
    page_size: int = 500,
) -> list[dict]:
    """Every job of a task, optionally only one group and/or one status, ``page_size`` jobs a call.

    Example: ``failed = get_all_jobs(session, pid, tid, group, status="FAILED")``

    Needs: HtcError, MAX_EMPTY_PAGES, _next_params, paginate
    """
    params = {"viewType": view_type, "pageSize": page_size}
    if group is not None:
        params["group"] = group
    if status is not None:
        params["status"] = status
    return paginate(session, f"/htc/projects/{project_id}/tasks/{task_id}/jobs", params)


def status_counts(jobs: list[dict]) -> dict[str, int]:
    """Jobs per status: all nine known statuses (zero when absent) plus any new ones the API adds.

    Example: ``status_counts(get_all_jobs(session, pid, tid, group))["SUCCEEDED"]``

    Needs: JOB_STATUSES
    """
    counts = dict.fromkeys(JOB_STATUSES, 0)
    counts.update(Counter(job["status"] for job in jobs))
    return counts


def failure_summary(jobs: list[dict]) -> dict[str, int]:
    """How many failed jobs share each ``"failureCode: statusReason"``, most frequent first.

    Example: ``failure_summary(get_all_jobs(session, pid, tid, group, status="FAILED"))``

    Needs: FAILED_STATUSES
    """
    reasons = Counter(
        f"{job.get('failureCode')}: {job.get('statusReason')}" for job in jobs if job["status"] in FAILED_STATUSES
    )
    return dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))


def group_status_counts(
    session: HtcSession, project_id: str, task_id: str, group: str, *, deadline: float | None = None
) -> dict[str, int]:
    """Jobs per status in one group, from ``group-summary-statistics`` (all zero before it appears).

    ``deadline``: as for ``paginate``.
    Example: ``group_status_counts(session, pid, tid, group)["RUNNING"]``

    Needs: HtcError, JOB_STATUSES, MAX_EMPTY_PAGES, _next_params, paginate
    """
    counts = dict.fromkeys(JOB_STATUSES, 0)
    url = f"/htc/projects/{project_id}/tasks/{task_id}/group-summary-statistics"
    items = paginate(session, url, {"group": group}, deadline=deadline)
    for item in items:
        if item.get("group") == group:
            for status, n in (item.get("jobStatuses") or {}).items():
                counts[status] = counts.get(status, 0) + int(n or 0)
    return counts


def _all_terminal(counts: dict[str, int], expected_jobs: int | None) -> bool:
    total = sum(counts.values())
    done = sum(n for s, n in counts.items() if s in TERMINAL_STATUSES)
    return total > 0 and done == total and total >= (expected_jobs or 0)


def _progress_bar(group: str, expected_jobs: int | None, progress: bool) -> tqdm:
    # stdout, not stderr: a notebook shows stderr as an error box.
    return tqdm(total=expected_jobs, desc=group, unit="job", disable=not progress, file=sys.stdout)


def _watch_group(session, project_id, task_id, group, stop, bar, *, expected_jobs, interval, timeout):
    """Poll group statistics until ``stop(counts)``, showing them on ``bar``; return the history and the last counts."""
    rows: list[tuple] = []
    counts = None
    deadline = None if timeout is None else time.monotonic() + timeout

    def timed_out():
        return HtcTimeoutError(
            f"group {group!r} not finished after {timeout} s: {counts}",
            pd.DataFrame(rows, columns=["time", "status", "count"]),
        )

    while True:
        try:  # a poll's retries end by the deadline too
            counts = group_status_counts(session, project_id, task_id, group, deadline=deadline)
        except HtcTimeoutError:
            raise timed_out() from None
        now = pd.Timestamp.now(tz="UTC")
        rows += [(now, status, n) for status, n in counts.items()]
        bar.total = max(sum(counts.values()), expected_jobs or 0)
        bar.n = sum(n for s, n in counts.items() if s in TERMINAL_STATUSES)
        bar.set_postfix_str(", ".join(f"{s}={n}" for s, n in counts.items() if n))
        if stop(counts):
            return pd.DataFrame(rows, columns=["time", "status", "count"]), counts
        time.sleep(_pause(interval, deadline, timed_out))


def monitor_group(
    session: HtcSession,
    project_id: str,
    task_id: str,
    group: str,
    *,
    expected_jobs: int | None = None,
    interval: float | None = None,
    timeout: float | None = WAIT_TIMEOUT_SECONDS,
    progress: bool = True,
) -> pd.DataFrame:
    """Wait until every job of a group is terminal; return status counts over time.

    The result has columns ``time``, ``status``, ``count`` (one row per status per poll). Polls every
    ``interval`` seconds: by default the platform's status refresh, on the API's clock (``platform_seconds``).
    Raises ``HtcTimeoutError``, with the history so far, after ``timeout`` seconds (a day by default).
    Example: ``history = monitor_group(session, pid, tid, group, expected_jobs=1000, timeout=6 * 3600)``

    Needs: _all_terminal, group_status_counts, HtcError, HtcTimeoutError, JOB_STATUSES, MAX_EMPTY_PAGES, _next_params,
    paginate, _pause, platform_seconds, _progress_bar, STATUS_REFRESH_SECONDS, TERMINAL_STATUSES, WAIT_TIMEOUT_SECONDS,
    _watch_group
    """
    with _progress_bar(group, expected_jobs, progress) as bar:
        history, _ = _watch_group(
            session,
            project_id,
            task_id,
            group,
            lambda counts: _all_terminal(counts, expected_jobs),
            bar,
            expected_jobs=expected_jobs,
            interval=platform_seconds(session, STATUS_REFRESH_SECONDS) if interval is None else interval,
            timeout=timeout,
        )
    return history


def cancel_group(session: HtcSession, project_id: str, task_id: str, group: str) -> None:
    """Ask the platform to cancel every job of one group (best effort).

    Example: ``cancel_group(session, pid, tid, group)``

    Needs: nothing else
    """
    if not group:
        # Without ?group= the endpoint cancels every job in the task.
        raise ValueError("cancel_group needs a group name")
    session.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/cancel", params={"group": group})


def monitor_for_cancellation(
    session: HtcSession,
    project_id: str,
    task_id: str,
    group: str,
    *,
    max_failed_ratio: float = 0.15,
    min_finished: int = 10,
    expected_jobs: int | None = None,
    interval: float | None = None,
    timeout: float | None = WAIT_TIMEOUT_SECONDS,
    progress: bool = True,
) -> tuple[bool, pd.DataFrame]:
    """Watch a group; once more than ``max_failed_ratio`` of its finished jobs failed, cancel it.

    The ratio is judged only once ``min_finished`` jobs have finished: one early failure
    is 100 %, and would cancel a healthy group. A cancel is best effort: the platform applies
    it at its next status refresh, jobs still queued then fail as cancelled, and running ones
    are stopped (SIGTERM) and may still finish, or fail on their own. So after a cancellation
    it waits until every job of the group has ended, however it ended, on the same progress
    bar, which ends where the group does. Returns ``(cancelled, history)``: whether a cancel
    was asked for, and the counts over time, whose last poll says how the group ended.
    ``timeout`` (a day by default) covers the watching and the settling together.
    Example: ``cancelled, history = monitor_for_cancellation(session, pid, tid, group, timeout=6 * 3600)``

    Needs: _all_terminal, cancel_group, FAILED_STATUSES, group_status_counts, HtcError, HtcTimeoutError, JOB_STATUSES,
    MAX_EMPTY_PAGES, _next_params, paginate, _pause, platform_seconds, _progress_bar, STATUS_REFRESH_SECONDS,
    TERMINAL_STATUSES, WAIT_TIMEOUT_SECONDS, _watch_group
    """

    def too_many_failures(counts):
        finished = sum(n for s, n in counts.items() if s in TERMINAL_STATUSES)
        failed = sum(n for s, n in counts.items() if s in FAILED_STATUSES)
        return finished >= max(min_finished, 1) and failed / finished > max_failed_ratio

    started = time.monotonic()
    interval = platform_seconds(session, STATUS_REFRESH_SECONDS) if interval is None else interval
    watch = {"expected_jobs": expected_jobs, "interval": interval}
    with _progress_bar(group, expected_jobs, progress) as bar:
        history, counts = _watch_group(
            session,
            project_id,
            task_id,
            group,
            lambda c: _all_terminal(c, expected_jobs) or too_many_failures(c),
            bar,
            timeout=timeout,
            **watch,
        )
        if _all_terminal(counts, expected_jobs):
            return False, history
        cancel_group(session, project_id, task_id, group)
        bar.set_description(f"{group} (cancelled)")
        remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        try:
            settled, _ = _watch_group(
                session,
                project_id,
                task_id,
                group,
                lambda c: _all_terminal(c, expected_jobs),
                bar,
                timeout=remaining,
                **watch,
            )
        except HtcTimeoutError as exc:
            exc.history = pd.concat([history, exc.history], ignore_index=True)
            raise
    return True, pd.concat([history, settled], ignore_index=True)


# --- storage -----------------------------------------------------------------------------


def project_storage_token(session: HtcSession, project_id: str, region: str | None = None) -> dict:
    """Short-lived credentials for the project's shared storage (secret: don't print them).

    Example: ``token = project_storage_token(session, pid, "AWS_EU_WEST_1")``

    Needs: nothing else
    """
    suffix = f"/{region}" if region else ""
    return session.get(f"/htc/projects/{project_id}/storage/token{suffix}").json()


def task_storage_token(session: HtcSession, project_id: str, task_id: str, region: str | None = None) -> dict:
    """Short-lived credentials for one task's storage (secret: don't print them).

    Example: ``token = task_storage_token(session, pid, tid)``

    Needs: nothing else
    """
    suffix = f"/{region}" if region else ""
    return session.get(f"/htc/projects/{project_id}/tasks/{task_id}/storage/token{suffix}").json()


def _aws_region(rescale_region: str | None) -> str:
    """``AWS_EU_WEST_1`` -> ``eu-west-1``; anything else -> ``us-east-1``, S3's default, not the machine's AWS settings.

    The rule the worker shares (tests/project/test_shared_rules.py).
    """
    name = (rescale_region or "").removeprefix("AWS_")
    if rescale_region and rescale_region.startswith("AWS_") and name:
        return name.lower().replace("_", "-")
    return "us-east-1"


def _credential_metadata(token: dict) -> dict:
    creds = token["credentials"]
    return {
        "access_key": creds["AWS_ACCESS_KEY_ID"],
        "secret_key": creds["AWS_SECRET_ACCESS_KEY"],
        "token": creds.get("AWS_SESSION_TOKEN"),
        "expiry_time": token["expiration"],
    }


def storage_path(session: HtcSession, project_id: str, task_id: str | None, token: dict) -> str:
    """The ``s3://bucket/prefix/`` a storage token opens: shared storage, or the task's folder.

    The spec's token has only ``projectSharedStoragePath``. Task tokens have also carried
    ``storagePath`` (the original tutorial reads it); without it, the task's path is the
    ``taskPath`` that ``regional-storage`` lists for the token's region.
    Example: ``storage_path(session, pid, tid, task_storage_token(session, pid, tid))``

    Needs: HtcError
    """
    shared = token.get("projectSharedStoragePath")
    if task_id is None:
        if not shared:
            raise HtcError(f"the storage token of project {project_id} has no projectSharedStoragePath")
        return shared
    if token.get("storagePath"):
        return token["storagePath"]
    stores = session.get(f"/htc/projects/{project_id}/tasks/{task_id}/storage/regional-storage").json()
    for store in stores.get("regionalStores") or []:
        if store.get("region") == token.get("region") and store.get("taskPath"):
            path = store["taskPath"]
            if path.startswith("s3://"):
                return path
            if not shared:
                raise HtcError(f"task {task_id}: taskPath {path!r} names no bucket, and the token no shared path")
            # A bare key prefix lives in the same bucket as the project's shared storage.
            return f"s3://{shared.removeprefix('s3://').partition('/')[0]}/{path.lstrip('/')}"
    raise HtcError(
        f"no storage path for task {task_id}: its token has no storagePath, and regional-storage "
        f"lists no taskPath for region {token.get('region')}"
    )


def _s3(session: HtcSession, project_id: str, task_id: str | None, region: str | None, workers: int = 8):
    """An S3 client on a storage token's credentials, renewed before they expire; with bucket and key prefix."""

    def fetch():
        if task_id is None:
            return project_storage_token(session, project_id, region)
        return task_storage_token(session, project_id, task_id, region)

    token = fetch()
    if token.get("provider", "AWS") != "AWS":
        raise HtcError(f"these helpers reach AWS S3 storage only; this storage is on {token['provider']}")
    bucket, _, prefix = storage_path(session, project_id, task_id, token).removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""

    lifetime = max(0.0, (_timestamp(token["expiration"]) - dt.datetime.now(dt.UTC)).total_seconds())
    renew_before = min(STORAGE_RENEW_BEFORE, lifetime * STORAGE_RENEW_FRACTION)
    # botocore fetches new credentials through `fetch` once fewer than `renew_before` seconds
    # are left, and makes every transfer wait for them when half of that is left.
    credentials = RefreshableCredentials.create_from_metadata(
        _credential_metadata(token),
        lambda: _credential_metadata(fetch()),
        "htc-storage-token",
        advisory_timeout=renew_before,
        mandatory_timeout=renew_before / 2,
    )
    botocore_session = botocore.session.get_session()
    # A resolver with our single source replaces botocore's default chain (env, ~/.aws, ...).
    botocore_session.register_component(
        "credential_provider",
        CredentialResolver([SimpleNamespace(METHOD="htc-storage-token", load=lambda: credentials)]),
    )
    # The endpoint comes from AWS_ENDPOINT_URL_S3 when that is set (the local emulator sets it).
    client = boto3.session.Session(botocore_session=botocore_session).client(
        "s3",
        region_name=_aws_region(token.get("region")),
        config=Config(retries={"mode": "standard", "max_attempts": 6}, max_pool_connections=max(10, workers)),
    )
    return client, bucket, prefix


def _list(client, bucket: str, prefix: str, under: str = "") -> list[dict]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + under)
    return [
        {"key": obj["Key"][len(prefix) :], "last_modified": obj["LastModified"]}
        for page in pages
        for obj in page.get("Contents", [])
    ]


def list_objects(
    session: HtcSession, project_id: str, task_id: str | None = None, *, prefix: str = "", region: str | None = None
) -> list[str]:
    """Object keys, relative to the storage path, of a task's storage (or shared storage without a task).

    Example: ``[k for k in list_objects(session, pid, tid) if k.endswith(".dat")]``

    Needs: _aws_region, _credential_metadata, HtcError, _list, project_storage_token, _s3, storage_path,
    STORAGE_RENEW_BEFORE, STORAGE_RENEW_FRACTION, task_storage_token, _timestamp
    """
    client, bucket, base = _s3(session, project_id, task_id, region)
    return [obj["key"] for obj in _list(client, bucket, base, prefix)]


def _transfer(fn, items: list, workers: int, progress: bool, desc: str) -> list:
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=len(items), desc=desc, unit="file", disable=not progress, file=sys.stdout) as bar,
    ):
        results = []
        for result in pool.map(fn, items):
            results.append(result)
            bar.update()
    return results


def _safe_key(key: str) -> str:
    """One rule both ways: no key may leave the storage path on upload, or the target directory on download.

    Refused: an empty, ``.`` or ``..`` segment (so also an empty key, a leading or trailing ``/``, ``a//b``),
    a backslash, a NUL. The rule the worker and the emulator share (tests/project/test_shared_rules.py).
    """
    if "\\" in key or "\x00" in key or any(segment in ("", ".", "..") for segment in key.split("/")):
        raise ValueError(f"refusing object key that would leave the target directory or the storage path: {key!r}")
    return key


def upload_files(
    session: HtcSession,
    project_id: str,
    source,
    task_id: str | None = None,
    *,
    prefix: str = "",
    region: str | None = None,
    workers: int = 8,
    progress: bool = True,
) -> list[str]:
    """Upload a directory (keys relative to it) or a list of files (keys are their names); return the keys.

    Without ``task_id`` the files go to project shared storage.
    Example: ``upload_files(session, pid, "data/images")``

    Needs: _aws_region, _credential_metadata, HtcError, project_storage_token, _s3, _safe_key, storage_path,
    STORAGE_RENEW_BEFORE, STORAGE_RENEW_FRACTION, task_storage_token, _timestamp, _transfer
    """
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        root = Path(source)
        pairs = [(p, prefix + p.relative_to(root).as_posix()) for p in sorted(root.rglob("*")) if p.is_file()]
    else:
        pairs = [
            (Path(p), prefix + Path(p).name) for p in ([source] if isinstance(source, (str, os.PathLike)) else source)
        ]
    # The rules download_files applies, checked for every key before anything is stored.
    pairs = [(path, _safe_key(key)) for path, key in pairs]
    client, bucket, base = _s3(session, project_id, task_id, region, workers)

    def put(pair):
        client.upload_file(str(pair[0]), bucket, base + pair[1])
        return pair[1]

    return _transfer(put, pairs, workers, progress, "upload")


def download_files(
    session: HtcSession,
    project_id: str,
    keys: list[str],
    dest,
    task_id: str | None = None,
    *,
    region: str | None = None,
    workers: int = 8,
    progress: bool = True,
) -> list[Path]:
    """Download objects (keys relative to the storage path) into ``dest``; return the local paths.

    Example: ``download_files(session, pid, ["000000367818.jpg_tagged.jpg"], "output", tid)``

    Needs: _aws_region, _credential_metadata, HtcError, HtcNotFound, project_storage_token, _s3, _safe_key,
    storage_path, STORAGE_RENEW_BEFORE, STORAGE_RENEW_FRACTION, task_storage_token, _timestamp, _transfer
    """
    dest = Path(dest)
    keys = [_safe_key(k) for k in keys]
    client, bucket, base = _s3(session, project_id, task_id, region, workers)
    where = f"task {task_id} storage" if task_id else f"project {project_id} shared storage"

    def get(key):
        local = dest / key
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(bucket, base + key, str(local))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise HtcNotFound(f"{key!r} not found in {where}", status=404) from None
            raise HtcError(f"download of {key!r} from {where} failed: {exc}") from None
        return local

    return _transfer(get, keys, workers, progress, "download")


def delete_objects(
    session: HtcSession, project_id: str, keys: list[str], task_id: str | None = None, *, region: str | None = None
) -> int:
    """Delete objects (keys relative to the storage path) from shared storage, or a task's; return how many.

    Projects cannot be deleted through the API, so their shared storage stays until its objects are removed.
    Example: ``delete_objects(session, pid, ["image_list.dat"])``

    Needs: _aws_region, _credential_metadata, HtcError, project_storage_token, _s3, _safe_key, storage_path,
    STORAGE_RENEW_BEFORE, STORAGE_RENEW_FRACTION, task_storage_token, _timestamp
    """
    keys = [_safe_key(k) for k in keys]
    client, bucket, base = _s3(session, project_id, task_id, region)
    for start in range(0, len(keys), 1000):  # S3 takes at most 1,000 keys per request
        client.delete_objects(
            Bucket=bucket,
            Delete={"Objects": [{"Key": base + key} for key in keys[start : start + 1000]], "Quiet": True},
        )
    return len(keys)


# --- results -----------------------------------------------------------------------------


def _parse_image_list(text: str) -> list[str]:
    """One key a line: lines end at ``\\n`` (or ``\\r\\n``) only, since U+2028, ``\\x1c``, ``\\x85``... may be in a
    file name; ASCII blanks around a key go, blank lines are skipped. The worker's rule
    (tests/project/test_shared_rules.py).
    """
    return [key for key in (line.strip(" \t\r\f\v") for line in text.split("\n")) if key]


def read_image_list(
    session: HtcSession, project_id: str, key: str = "image_list.dat", region: str | None = None
) -> list[str]:
    """The image keys listed in a file in project shared storage, one a line, blank lines skipped.

    Example: ``images = read_image_list(session, pid)``

    Needs: _aws_region, _credential_metadata, HtcError, _parse_image_list, project_storage_token, _s3, storage_path,
    STORAGE_RENEW_BEFORE, STORAGE_RENEW_FRACTION, task_storage_token, _timestamp
    """
    client, bucket, base = _s3(session, project_id, None, region)
    return _parse_image_list(client.get_object(Bucket=bucket, Key=base + key)["Body"].read().decode())


def _dat_faces(key: str, text: str) -> int:
    lines = text.split()
    if len(lines) != 2 or lines[0] != "face_cnt" or not lines[1].isdigit():
        raise ValueError(f"{key} is not a face count file ('face_cnt' then a number)")
    return int(lines[1])


def _manifest_run(key: str) -> tuple[bool, str | None]:
    """Whether a task-storage key is a worker's manifest, and the run whose namespace holds it (None: the root)."""
    found = _MANIFEST_KEY.fullmatch(key)
    return (found is not None, found["run"] if found else None)


def _namespace_run(key: str) -> tuple[str | None, str]:
    """The run of a key under ``runs/<run>/`` (None for the task root) and the key relative to that namespace."""
    if key.startswith(RUNS_PREFIX) and "/" in key[len(RUNS_PREFIX) :]:
        run, _, rest = key[len(RUNS_PREFIX) :].partition("/")
        return run, rest
    return None, key


def _task_records(session, project_id, task_id, runs, key_field, with_dat_files, region, workers) -> list[dict]:
    """The manifest records (and face-count files) of one task's namespaces, each with where it came from."""
    client, bucket, base = _s3(session, project_id, task_id, region, workers)
    if runs is None:
        objects = _list(client, bucket, base)
    else:
        objects = [obj for run in runs for obj in _list(client, bucket, base, f"{RUNS_PREFIX}{run}/")]
    manifests = [o for o in objects if _manifest_run(o["key"])[0]]

    def read(obj):
        return client.get_object(Bucket=bucket, Key=base + obj["key"])["Body"].read().decode()

    records = []
    with ThreadPoolExecutor(workers) as pool:
        for obj, text in zip(manifests, pool.map(read, manifests), strict=True):
            run = _manifest_run(obj["key"])[1]
            for n, line in enumerate(text.split("\n"), 1):  # JSON Lines: lines end at \n alone
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise ValueError(f"{obj['key']} line {n} is not JSON") from None
                if key_field not in record:
                    raise ValueError(
                        f"{obj['key']} line {n} has no {key_field!r} field: pass the columns of its program "
                        f"(ITEM_COLUMNS names an 'item', RESULT_COLUMNS an 'image')"
                    )
                records.append(
                    {**record, "task": task_id, "run": run, "source": obj["key"], "_modified": obj["last_modified"]}
                )
        if with_dat_files:
            # A job that died after storing an image's face count but before its manifest named it.
            reported = {r[key_field] for r in records}
            orphans = [
                o
                for o in objects
                if o["key"].endswith("_tagged.dat")
                and _namespace_run(o["key"])[1].removesuffix("_tagged.dat") not in reported
            ]
            for obj, text in zip(orphans, pool.map(read, orphans), strict=True):
                run, name = _namespace_run(obj["key"])
                records.append(
                    {
                        key_field: name.removesuffix("_tagged.dat"),
                        "faces": _dat_faces(obj["key"], text),
                        "status": "ok",
                        "task": task_id,
                        "run": run,
                        "source": obj["key"],
                        "_modified": obj["last_modified"],
                    }
                )
    return records


def collect_results(
    session: HtcSession,
    project_id: str,
    task_id: str | list[str],
    *,
    runs: list[str] | None = None,
    columns: list[str] = RESULT_COLUMNS,
    region: str | None = None,
    workers: int = 8,
) -> pd.DataFrame:
    """Gather the workers' results from task storage into one row per item, naming the batch behind each.

    Reads every manifest of every batch's namespace (``runs/<run>/manifests/*.jsonl``), or only
    those of ``runs``, and those at the task's root (a worker run outside any batch); of one task,
    or of several (a list of task ids). With the face tagger's ``columns``, images that no manifest
    mentions but that have a ``<image>_tagged.dat`` (a worker that died before writing its
    manifest) come from that file. When an item appears more than once, a successful record wins
    over a failed one, then the newest manifest.

    Columns: ``columns`` (``RESULT_COLUMNS``, the face tagger's; ``ITEM_COLUMNS`` for a program on the
    worker layer: the first names the item), then every other field the manifests hold. ``task``,
    ``run``, ``index`` and ``job`` say which batch, array index and job produced a row; ``source``
    which file it was read from.
    Example: ``results = collect_results(session, pid, tid)``

    Needs: _aws_region, _credential_metadata, _dat_faces, HtcError, _list, _MANIFEST_KEY, _manifest_run, _namespace_run,
    project_storage_token, RESULT_COLUMNS, RUNS_PREFIX, _s3, storage_path, STORAGE_RENEW_BEFORE,
    STORAGE_RENEW_FRACTION, _task_records, task_storage_token, _timestamp
    """
    key_field = columns[0]
    records = []
    for task in [task_id] if isinstance(task_id, str) else task_id:
        records += _task_records(session, project_id, task, runs, key_field, "faces" in columns, region, workers)
    extra = [name for name in dict.fromkeys(k for r in records for k in r) if name not in columns and name[0] != "_"]
    df = pd.DataFrame(records, columns=[*columns, *extra, "_modified"])
    df["_ok"] = df["status"] == "ok"
    df = (
        df.sort_values(["_ok", "_modified"], kind="stable")
        .drop_duplicates(key_field, keep="last")
        .drop(columns=["_ok", "_modified"])
        .sort_values(key_field, ignore_index=True)
    )
    for integer in ("faces", "index"):
        if integer in df:
            df[integer] = df[integer].astype("Int64")
    return df


def missing_results(items: list[str], results: pd.DataFrame) -> list[str]:
    """The input items without a successful result, in input order: the completeness check.

    ``results`` is ``collect_results``'s table, whose first column names the items.
    Example: ``assert not missing_results(read_image_list(session, pid), results)``

    Needs: nothing else
    """
    done = set(results.loc[results["status"] == "ok", results.columns[0]])
    return [item for item in dict.fromkeys(items) if item not in done]


# --- batches and work lists --------------------------------------------------------------


def _run_id(envs: list[dict] | None) -> str | None:
    return next((pair["value"] for pair in envs or [] if pair.get("name") == RUN_ID_ENV), None)


def with_run_id(batch: dict, run_id: str | None = None) -> dict:
    """A copy of a batch definition whose jobs get ``HTC_RUN_ID``: ``run_id``, else the one it has, else a new one.

    A worker on the layer in ``face_tagger/htc_worker.py`` writes its results under ``runs/<run id>/`` of
    task storage, where no other batch of the task writes; ``group_batches`` finds the batch by it.
    Example: ``session.post(url, params={"group": group}, json=[with_run_id(batch)])``

    Needs: _run_id, RUN_ID_ENV
    """
    definition = batch["htcJobDefinition"]
    envs = definition.get("envs") or []
    run_id = run_id or _run_id(envs) or str(uuid.uuid4())
    envs = [pair for pair in envs if pair.get("name") != RUN_ID_ENV] + [{"name": RUN_ID_ENV, "value": run_id}]
    return {**batch, "htcJobDefinition": {**definition, "envs": envs}}


def group_batches(
    session: HtcSession, project_id: str, task_id: str, group: str | None, *, page_size: int = 500
) -> list[dict]:
    """The batches a group holds (a task's with ``group=None``), from its jobs: ``{"parentJobId", "run", "jobs"}``.

    What a submit whose answer was lost created: the API has no idempotency key, so the jobs listed
    are the only record. ``run`` is a batch's ``HTC_RUN_ID`` (None for one submitted without it).
    Example: ``landed = {b["run"] for b in group_batches(session, pid, tid, group)}``

    Needs: get_all_jobs, HtcError, MAX_EMPTY_PAGES, _next_params, paginate, _run_id, RUN_ID_ENV
    """
    batches: dict[str, dict] = {}
    for job in get_all_jobs(session, project_id, task_id, group, view_type="FULL", page_size=page_size):
        parent = job["jobUUID"].rpartition(":")[0] or job["jobUUID"]  # a job id is <parentJobId>:<index>
        batch = batches.setdefault(parent, {"parentJobId": parent, "run": _run_id(job.get("envs")), "jobs": 0})
        batch["jobs"] += 1
    return list(batches.values())


def submit_batches(
    session: HtcSession,
    project_id: str,
    task_id: str,
    group: str | None,
    batches: list[dict],
    *,
    settle_seconds: float = 10.0,
    attempts: int = 3,
    page_size: int = 500,
) -> list[dict]:
    """Submit up to 100 batch definitions in one request, each with a run id; after a lost answer, only the missing.

    Each batch gets ``HTC_RUN_ID`` (``with_run_id``). A request that got no answer (``HtcNoAnswer``,
    ``HtcConnectionError``) or a 5xx may still have been carried out: the helper waits
    ``settle_seconds``, lists the group (``group_batches``) and sends again only the batches whose
    run id is not there, in at most ``attempts`` requests; then it raises the last error. Give
    each piece of work a group of its own (``tutorial_helpers.unique_name``): the listing is of the group.
    Returns ``{"parentJobId", "run", "jobs", "group"}`` per batch, in order.
    Example: ``submitted = submit_batches(session, pid, tid, group, [batch_a, batch_b])``

    Needs: get_all_jobs, group_batches, HtcConnectionError, HtcError, HtcNoAnswer, HtcServerError, _log,
    MAX_BATCHES_PER_REQUEST, MAX_EMPTY_PAGES, _next_params, paginate, _run_id, RUN_ID_ENV, with_run_id
    """
    if not 1 <= len(batches) <= MAX_BATCHES_PER_REQUEST:
        raise ValueError(f"a request holds 1 to {MAX_BATCHES_PER_REQUEST} batches, not {len(batches)}")
    batches = [with_run_id(batch) for batch in batches]
    runs = [_run_id(batch["htcJobDefinition"]["envs"]) for batch in batches]
    if len(set(runs)) < len(runs):
        raise ValueError("two batches of the request have the same HTC_RUN_ID: each batch needs its own")
    url = f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch"
    landed: dict[str, dict] = {}
    for attempt in range(1, attempts + 1):
        pending = [(run, batch) for run, batch in zip(runs, batches, strict=True) if run not in landed]
        try:
            answer = session.post(url, params={"group": group} if group else None, json=[b for _, b in pending]).json()
        except (HtcConnectionError, HtcNoAnswer, HtcServerError) as exc:
            if attempt == attempts:
                raise
            _log.warning(
                "submit of %d batches to group %s: %s; listing the group to see what landed", len(pending), group, exc
            )
            time.sleep(settle_seconds)
            found = {b["run"]: b for b in group_batches(session, project_id, task_id, group, page_size=page_size)}
            landed.update({run: found[run] for run, _ in pending if run in found})
            left = sum(run not in landed for run, _ in pending)
            _log.info("%d of the %d batches had landed; %d to submit again", len(pending) - left, len(pending), left)
            if not left:
                break
            continue
        for (run, batch), submitted in zip(pending, answer, strict=True):
            jobs = submitted.get("batchSize") or batch.get("batchSize", 1)
            landed[run] = {"parentJobId": submitted["parentJobId"], "run": run, "jobs": jobs}
        break
    return [{**landed[run], "group": group} for run in runs]


def _check_items(items: list[str]) -> list[str]:
    """The items once each, in order; refused if one would not survive a list file (one item a line, blanks trimmed)."""
    unique = list(dict.fromkeys(items))
    for item in unique:
        if not isinstance(item, str) or not item or item != item.strip(" \t\r\f\v") or "\n" in item:
            raise ValueError(f"a work list item must be a non-empty line without surrounding blanks, not {item!r}")
    return unique


def submit_work_list(
    session: HtcSession,
    project_id: str,
    task_id: str,
    group: str,
    items: list[str],
    job: dict,
    *,
    items_per_job: int = 1,
    jobs_per_batch: int = MAX_JOBS_PER_BATCH,
    job_name: str = "work-list",
    list_env: str = "ITEM_LIST",
    list_prefix: str = "work-lists/",
    retry_strategy: dict | None = None,
    region: str | None = None,
) -> list[dict]:
    """Spread any number of items over batches of at most 1,000 jobs and submit them all to ``group``.

    Each job gets ``items_per_job`` items (its share); each batch its own run id and its own list,
    written to project shared storage as ``<list_prefix><run id>.txt`` (one item a line) and named to
    its jobs in ``list_env``, with ``BATCH_JOB_ARRAY_SIZE``: job *i* takes the *i*-th share of its
    batch's list (``face_tagger/htc_worker.py``). Batches go out 100 to a request (``submit_batches``,
    which reconciles a lost answer). ``job`` is the ``htcJobDefinition``; ``retry_strategy`` (such as
    ``{"maxRetries": 2}``) goes to every batch. Items are taken once each, in order.
    Returns ``submit_batches``'s records, each with its batch's ``list`` key and ``items`` count.
    Example: ``submit_work_list(session, pid, tid, group, keys, definition, items_per_job=50)``

    Needs: _aws_region, _check_items, _credential_metadata, get_all_jobs, group_batches, HtcConnectionError, HtcError,
    HtcNoAnswer, HtcServerError, _log, MAX_BATCHES_PER_REQUEST, MAX_EMPTY_PAGES, MAX_JOBS_PER_BATCH, _next_params,
    paginate, project_storage_token, _run_id, RUN_ID_ENV, _s3, storage_path, STORAGE_RENEW_BEFORE,
    STORAGE_RENEW_FRACTION, submit_batches, task_storage_token, _timestamp, with_run_id
    """
    if items_per_job < 1 or not 1 <= jobs_per_batch <= MAX_JOBS_PER_BATCH:
        raise ValueError(f"items_per_job must be positive and jobs_per_batch within 1..{MAX_JOBS_PER_BATCH}")
    items = _check_items(items)
    per_batch = items_per_job * jobs_per_batch
    client, bucket, base = _s3(session, project_id, None, region)
    batches, lists = [], []
    for start in range(0, len(items), per_batch):
        share = items[start : start + per_batch]
        run = str(uuid.uuid4())
        key = f"{list_prefix}{run}.txt"
        client.put_object(Bucket=bucket, Key=base + key, Body="".join(f"{item}\n" for item in share).encode())
        jobs = math.ceil(len(share) / items_per_job)
        envs = [
            *(pair for pair in job.get("envs") or [] if pair.get("name") not in (list_env, "BATCH_JOB_ARRAY_SIZE")),
            {"name": list_env, "value": key},
            {"name": "BATCH_JOB_ARRAY_SIZE", "value": str(jobs)},
        ]
        batch = {"jobName": job_name, "batchSize": jobs, "htcJobDefinition": {**job, "envs": envs}}
        if retry_strategy:
            batch["retryStrategy"] = retry_strategy
        batches.append(with_run_id(batch, run))
        lists.append({"list": key, "items": len(share)})
    submitted = []
    for start in range(0, len(batches), MAX_BATCHES_PER_REQUEST):
        submitted += submit_batches(
            session, project_id, task_id, group, batches[start : start + MAX_BATCHES_PER_REQUEST]
        )
    _log.info(
        "work list of %d items: %d batches, %d jobs submitted to group %s",
        len(items),
        len(batches),
        sum(b["jobs"] for b in submitted),
        group,
    )
    return [{**record, **listed} for record, listed in zip(submitted, lists, strict=True)]


def _newest_results(earlier: pd.DataFrame, later: pd.DataFrame) -> pd.DataFrame:
    """One row per item from two gatherings: a successful row wins over a failed one, then the later one."""
    key = earlier.columns[0]
    rows = pd.concat([earlier, later], ignore_index=True)
    ok = rows["status"] == "ok"
    return (
        rows.assign(_ok=ok)
        .sort_values("_ok", kind="stable")
        .drop_duplicates(key, keep="last")
        .drop(columns="_ok")
        .sort_values(key, ignore_index=True)
    )


def complete_work_list(
    session: HtcSession,
    project_id: str,
    task_id: str,
    group: str,
    items: list[str],
    job: dict,
    *,
    max_rounds: int = 3,
    columns: list[str] = ITEM_COLUMNS,
    interval: float | None = None,
    timeout: float | None = WAIT_TIMEOUT_SECONDS,
    progress: bool = True,
    **options,
) -> pd.DataFrame:
    """Wait for a work list's group, gather its results, and resubmit exactly the missing items, round after round.

    A round: ``monitor_group`` until every job of the group has ended (``timeout`` a round), then
    ``collect_results`` over the group's batches (``group_batches``: their run ids) not read in an
    earlier round, then ``missing_results``. While items are missing and fewer than ``max_rounds`` resubmissions were
    made, exactly those go to the same group (``submit_work_list``, with ``job`` and ``options``
    as given to it) and another round starts. Returns the last gathering; ``missing_results(items,
    results)`` is empty when the work list is complete.
    Example: ``results = complete_work_list(session, pid, tid, group, keys, definition, items_per_job=50)``

    Needs: _all_terminal, _aws_region, _check_items, collect_results, _credential_metadata, _dat_faces, get_all_jobs,
    group_batches, group_status_counts, HtcConnectionError, HtcError, HtcNoAnswer, HtcServerError, HtcTimeoutError,
    ITEM_COLUMNS, JOB_STATUSES, _list, _log, _MANIFEST_KEY, _manifest_run, MAX_BATCHES_PER_REQUEST, MAX_EMPTY_PAGES,
    MAX_JOBS_PER_BATCH, missing_results, monitor_group, _namespace_run, _newest_results, _next_params, paginate,
    _pause, platform_seconds, _progress_bar, project_storage_token, RESULT_COLUMNS, _run_id, RUN_ID_ENV, RUNS_PREFIX,
    _s3, STATUS_REFRESH_SECONDS, storage_path, STORAGE_RENEW_BEFORE, STORAGE_RENEW_FRACTION, submit_batches,
    submit_work_list, _task_records, task_storage_token, TERMINAL_STATUSES, _timestamp, WAIT_TIMEOUT_SECONDS,
    _watch_group, with_run_id
    """
    results, collected = None, set()
    for round_number in range(max_rounds + 1):
        batches = group_batches(session, project_id, task_id, group)
        monitor_group(
            session,
            project_id,
            task_id,
            group,
            expected_jobs=sum(b["jobs"] for b in batches),
            interval=interval,
            timeout=timeout,
            progress=progress,
        )
        # The batches of earlier rounds have ended for good: only the new ones are read.
        runs = [b["run"] for b in batches if b["run"] and b["run"] not in collected]
        fresh = collect_results(session, project_id, task_id, runs=runs, columns=columns, region=options.get("region"))
        collected.update(runs)
        results = fresh if results is None else _newest_results(results, fresh)
        missing = missing_results(items, results)
        if not missing:
            _log.info("work list of group %s complete after %d resubmissions", group, round_number)
            return results
        if round_number == max_rounds:
            _log.warning(
                "work list of group %s: %d items still missing after %d resubmissions",
                group,
                len(missing),
                round_number,
            )
            return results
        _log.info(
            "work list of group %s: %d of %d items missing; submitting exactly those again",
            group,
            len(missing),
            len(set(items)),
        )
        submit_work_list(session, project_id, task_id, group, missing, job, **options)
