"""Fixtures for every test: spec-checking clients, and a Docker engine where one answers.

``client_for(emu)`` gives an HTTP client (:class:`tests.support.contract.ContractClient`)
that checks every request body and response against the OpenAPI document
(``tests.support.spec``). The session emulator itself starts in the project's root
``conftest.py``; the emulator's own fixtures are in ``tests/emulator/conftest.py``.
"""

from __future__ import annotations

import os

import pytest

from tests.support.contract import ContractClient
from tests.support.spec import ContractValidator, load_spec


@pytest.fixture(scope="session")
def openapi_spec() -> dict:
    return load_spec()


@pytest.fixture(scope="session")
def client_for(openapi_spec):
    """``client_for(emu)``: a spec-checking client for any running emulator."""
    clients = []

    def make(emu) -> ContractClient:
        client = ContractClient(emu, ContractValidator(emu.api_url, openapi_spec))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture(scope="session")
def api(emulator, client_for) -> ContractClient:
    """A spec-checking client for the session emulator."""
    return client_for(emulator)


# --- a Docker engine, where one answers ---------------------------------------------

# .ci/run sets this: in CI a missing engine fails the container tests instead of skipping them.
REQUIRE_DOCKER = "HTC_REQUIRE_DOCKER"
# A test that asks for one of these fixtures needs a Docker engine, wherever it lives: it is marked `docker`.
DOCKER_FIXTURES = frozenset({"worker_image", "containers_or_skip"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list) -> None:
    """Mark ``docker`` every test that needs a Docker engine, before ``-m`` selects (``make check`` leaves them out)."""
    for item in items:
        if DOCKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


def skip_without_containers(reason: str) -> None:
    """Skip a container test for ``reason``; under HTC_REQUIRE_DOCKER=1 fail instead."""
    if os.environ.get(REQUIRE_DOCKER) == "1":
        pytest.fail(f"{REQUIRE_DOCKER}=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def containers_or_skip():
    """:func:`skip_without_containers`, for test modules."""
    return skip_without_containers


@pytest.fixture(scope="session")
def worker_image() -> str:
    """The tutorial's image, built once from docker/Dockerfile (on a stand-in base where none can be pulled)."""
    from htc_emulator.docker_engine import DockerEngine

    if not DockerEngine().available():
        skip_without_containers("no Docker engine answers `docker info` (start dockerd, or run .ci/run as root)")
    from tools import container_build

    return container_build.ensure_image("opencv-htc-tutorial:v1")
