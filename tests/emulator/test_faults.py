"""Injected faults: 429 with Retry-After, 500/503, slow responses, S3 errors; scripted or at a rate."""

from __future__ import annotations

import time

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from htc_emulator import FaultInjector, running
from htc_emulator.__main__ import build_faults, parse_args


@pytest.fixture(scope="module")
def faulty(client_for):
    with running(faults=FaultInjector(retry_after=2, slow_seconds=0.3, seed=7)) as emu:
        yield client_for(emu)


@pytest.fixture(autouse=True)
def no_leftover_faults(request):
    yield
    if "faulty" in request.fixturenames:
        request.getfixturevalue("faulty").emu.faults.clear()


def project_count(client) -> int:
    return len(client.ok("GET", "/htc/projects", params={"pageSize": 10000})["items"])


def test_scripted_api_faults_come_in_order_and_change_nothing(faulty):
    assert faulty.token  # fetch the token before faults start
    before = project_count(faulty)
    faulty.emu.faults.script(["429", "500", "503", "ok", "slow"], path=r"/htc/projects$")
    body = {"projectName": "p", "projectDescription": "d"}
    responses = [faulty.post("/htc/projects", json=body) for _ in range(3)]
    assert [r.status_code for r in responses] == [429, 500, 503]
    assert responses[0].headers["retry-after"] == "2" and responses[2].headers["retry-after"] == "2"
    assert "retry-after" not in responses[1].headers
    assert responses[0].json()["errorType"] == "TOO_MANY_REQUESTS"
    assert project_count(faulty) == before  # "ok" was used up by this GET
    started = time.monotonic()
    assert faulty.post("/htc/projects", json=body).status_code == 200
    assert time.monotonic() - started >= 0.3
    assert faulty.post("/htc/projects", json=body).status_code == 200  # the script is used up
    assert project_count(faulty) == before + 2
    assert faulty.emu.faults.injected[("api", "429")] == 1 and faulty.emu.faults.injected[("api", "slow")] == 1


def test_fault_rate_is_seeded_and_can_be_cleared(faulty):
    assert faulty.token
    faulty.emu.faults.set_rate(0.5, kinds=["503"], path=r"/htc/regions")
    codes = [faulty.get("/htc/regions").status_code for _ in range(40)]
    assert set(codes) == {200, 503} and 8 < codes.count(503) < 32
    assert faulty.emu.faults.injected[("api", "503")] >= codes.count(503)
    assert faulty.get("/htc/storage").status_code == 200  # outside the path filter
    faulty.emu.faults.clear()
    assert all(faulty.get("/htc/regions").status_code == 200 for _ in range(10))


@pytest.mark.slow
def test_storage_faults_hit_s3_clients_but_not_the_api(faulty):
    emu = faulty.emu
    project_id = faulty.new_project()
    emu.faults.script(["503", "500"], target="storage")
    token = faulty.ok("GET", f"/htc/projects/{project_id}/storage/token")  # the emulator's own STS call is spared
    credentials = token["credentials"]

    def client(attempts: int):
        return boto3.session.Session(
            aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=credentials["AWS_SESSION_TOKEN"],
        ).client(
            "s3",
            endpoint_url=emu.s3_endpoint,
            region_name="eu-west-1",
            config=Config(retries={"total_max_attempts": attempts, "mode": "standard"}),
        )

    bucket, _, prefix = token["storagePath"].removeprefix("s3://").partition("/")
    single = client(1)
    codes = []
    for _ in range(2):
        with pytest.raises(ClientError) as error:
            single.put_object(Bucket=bucket, Key=prefix + "x", Body=b"1")
        codes.append(error.value.response["Error"]["Code"])
    assert codes == ["SlowDown", "InternalError"]
    emu.faults.script(["503", "503"], target="storage")
    client(3).put_object(Bucket=bucket, Key=prefix + "x", Body=b"2")  # boto3's retries get through
    assert single.get_object(Bucket=bucket, Key=prefix + "x")["Body"].read() == b"2"
    assert emu.faults.injected[("storage", "503")] == 3


def test_fault_settings_are_checked():
    injector = FaultInjector()
    for bad in (
        lambda: injector.set_rate(1.5),
        lambda: injector.script(["418"]),
        lambda: injector.script(["429"], target="storage"),
        lambda: injector.script([], target="disk"),
        lambda: FaultInjector.from_config({"rate": 0.1, "colour": "red"}),
    ):
        with pytest.raises(ValueError):
            bad()


def test_faults_from_a_mapping_and_from_the_command_line(client_for):
    with running(faults={"script": ["503"], "path": "/htc/storage$"}) as emu:
        client = client_for(emu)
        assert client.get("/htc/storage").status_code == 503
        assert client.get("/htc/storage").status_code == 200
    args = parse_args(["--fault-rate", "1", "--fault-kinds", "429", "--retry-after", "5", "--fault-path", "/jobs"])
    injector = build_faults(args)
    assert injector.retry_after == 5
    assert injector.pick("api", "/api/v1/htc/projects/p/tasks/t/jobs") == "429"
    assert injector.pick("api", "/api/v1/htc/regions") is None
    scripted = build_faults(parse_args(["--fault-target", "storage", "--fault-script", "500,ok,503"]))
    assert [scripted.pick("storage", "/b/k") for _ in range(4)] == ["500", None, "503", None]


def test_a_script_does_not_rescope_the_rate():
    injector = FaultInjector(seed=1)
    injector.set_rate(1.0, kinds=["503"], path=r"/regions$")
    injector.script(["429"], path=r"/tasks$")
    assert injector.pick("api", "/api/v1/htc/regions") == "503"  # the rate keeps its own path
    assert injector.pick("api", "/api/v1/htc/projects/p/tasks") == "429"
    assert injector.pick("api", "/api/v1/htc/projects/p/tasks") is None  # script used up; the rate's path differs
    injector.set_rate(1.0, kinds=["500"])  # and a new rate leaves the script's path alone
    injector.script(["slow"], path=r"/tasks$")
    assert injector.pick("api", "/api/v1/htc/regions") == "500"
    assert injector.pick("api", "/api/v1/htc/projects/p/tasks") == "slow"


def test_a_lost_answer_is_carried_out_and_never_arrives(faulty):
    """'lost': the request is committed, then no answer until the client gives up (here: its read timeout)."""
    before = project_count(faulty)
    faulty.emu.faults.script(["lost"], path=r"/htc/projects$")
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(
            faulty.emu.api_url + "/htc/projects",
            json={"projectName": "lost", "projectDescription": "committed, answer lost"},
            headers={"Authorization": f"Bearer {faulty.token}"},
            timeout=(5, 0.5),
        )
    assert project_count(faulty) == before + 1
    assert faulty.emu.faults.injected[("api", "lost")] == 1


def test_a_lost_answer_becomes_a_504_for_a_client_that_waits(client_for):
    with running(faults={"script": ["lost"], "path": "/htc/projects$", "lost_answer_seconds": 0.3}) as emu:
        client = client_for(emu)
        response = client.post("/htc/projects", json={"projectName": "p", "projectDescription": "d"})
        assert response.status_code == 504 and "injected fault" in response.json()["errorDescription"]
        assert project_count(client) == 1  # carried out all the same
