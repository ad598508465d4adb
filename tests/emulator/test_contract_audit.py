"""Every exchange the session emulator served, from every test and the notebook, checked against the spec.

The tests' own spec-checking client sees only its own requests; the helper
module, the worker's jobs and the notebook's kernel talk to the emulator
directly. The emulator keeps them all (``htc_emulator.ExchangeRecorder``),
and this audit runs last.
"""

import dataclasses
from collections import Counter

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from tests.support.spec import ContractValidator


def as_requests(exchange) -> requests.Response:
    """The recorded exchange as the ``requests`` objects the validator reads."""
    prepared = requests.Request(
        exchange.method, exchange.url, headers=exchange.request_headers, data=exchange.request_body or None
    ).prepare()
    response = requests.Response()
    response.status_code = exchange.status
    response.headers = CaseInsensitiveDict(exchange.response_headers)
    response._content = exchange.response_body
    response.url = exchange.url
    response.request = prepared
    return response


@pytest.mark.slow
@pytest.mark.session_audit
def test_every_response_of_the_session_follows_the_spec(emulator, openapi_spec, request):
    exchanges = emulator.recorder.exchanges
    if len(request.session.items) == 1:
        pytest.skip("the audit checks what the rest of the session did, and nothing else ran")
    assert exchanges, "the session emulator recorded no exchange"
    # spec.CORRECTIONS make 500 a valid answer everywhere (for injected faults), so the schema
    # check alone would pass a crash. The session emulator injects none: any 5xx is a bug.
    if not emulator.faults.injected:
        crashes = Counter(f"{e.method} {e.url.split('?')[0]} -> {e.status}" for e in exchanges if e.status >= 500)
        assert not crashes, f"the session emulator answered with 5xx without an injected fault: {dict(crashes)}"
    validator = ContractValidator(emulator.api_url, openapi_spec)
    broken, accepted_but_invalid = Counter(), Counter()
    for exchange in exchanges:
        response = as_requests(exchange)
        where = (
            f"{exchange.method} {exchange.url.split('?')[0].split(':', 2)[-1].split('/', 1)[-1]} -> {exchange.status}"
        )
        for problem in validator.response_errors(response) + validator.shape_errors(response):
            broken[f"{where}: {problem}"] += 1
        # A request the spec refuses must not succeed: that would be bad input let through.
        if 200 <= exchange.status < 300:
            for problem in validator.request_errors(response.request):
                accepted_but_invalid[f"{where}: {problem}"] += 1
    # The audit itself can fail: the same exchanges with a list where an object belongs are refused.
    token_exchange = next(e for e in exchanges if e.url.endswith("/auth/token") and e.status == 200)
    assert validator.response_errors(as_requests(dataclasses.replace(token_exchange, response_body=b"[]")))
    assert not broken, f"{sum(broken.values())} of {len(exchanges)} responses break the spec: {dict(broken)}"
    assert not accepted_but_invalid, f"requests the spec refuses were accepted: {dict(accepted_but_invalid)}"
