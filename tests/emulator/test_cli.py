"""``python -m htc_emulator``: starts, says how to reach it, serves, stops on a signal."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest
import requests

from htc_emulator.local_images import PROJECT_ROOT


def start(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "htc_emulator", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def stop(process: subprocess.Popen, signum: int) -> tuple[str, str]:
    """Send ``signum`` and collect the output; a process that does not stop is killed, never left behind."""
    process.send_signal(signum)
    try:
        return process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"the emulator did not stop on signal {signum} within 30 s") from None


def read_banner(process: subprocess.Popen, timeout: float = 60) -> str:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Stop with"):
            return "".join(lines)
    process.kill()
    raise AssertionError(f"no banner; stdout={''.join(lines)!r} stderr={process.stderr.read()!r}")


@pytest.mark.slow
def test_cli_serves_until_interrupted(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text('FROM python:3.12-slim\nCMD ["python", "-c", "pass"]\n')
    apiconfig = tmp_path / "config" / "apiconfig"
    key = "cli-test-key-0123456789"
    process = start(
        "--port",
        "0",
        "--concurrency",
        "1",
        "--image",
        f"noop:v1={dockerfile}",
        "--apiconfig",
        str(apiconfig),
        "--profile",
        "emulator",
        env={"HTC_EMULATOR_API_KEY": key},
    )
    try:
        banner = read_banner(process)
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", banner, re.MULTILINE))
        api_url = exports["RESCALE_HTC_API_URL"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/v1", api_url)
        assert exports["RESCALE_API_KEY"] == key and f"API key      : {key}" in banner
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", exports["AWS_ENDPOINT_URL_S3"])
        assert "noop:v1" in banner
        assert stat.S_IMODE(apiconfig.stat().st_mode) == 0o600
        config = apiconfig.read_text()
        assert "[emulator]" in config and f"apikey = {key}" in config and f"htcapibaseurl = {api_url}" in config
        token = requests.get(api_url + "/auth/token", headers={"Authorization": f"Token {key}"}, timeout=30)
        assert token.status_code == 200
        bearer = token.json()["tokenValue"]
        regions = requests.get(api_url + "/htc/regions", headers={"Authorization": f"Bearer {bearer}"}, timeout=30)
        assert regions.status_code == 200
    finally:
        out, err = stop(process, signal.SIGINT)
    assert process.returncode == 0, err
    assert key not in err and bearer not in err + out


@pytest.mark.slow
def test_cli_stops_on_sigterm_and_writes_nothing_secret_to_stderr():
    process = start("--fault-rate", "0.5", "--fault-kinds", "429")
    try:
        read_banner(process)
    finally:
        _, err = stop(process, signal.SIGTERM)
    assert process.returncode == 0 and err == ""


@pytest.mark.slow
def test_cli_stops_on_ctrl_c_when_started_in_the_background():
    """A shell script's background job starts with SIGINT ignored; Ctrl+C (SIGINT) must still stop it."""
    process = start(preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        read_banner(process)
    finally:
        stop(process, signal.SIGINT)
    assert process.returncode == 0


@pytest.mark.slow
def test_cli_refuses_bad_arguments():
    for args in (["--image", "no-equals-sign"], ["--fault-script", "418"], ["--image", "x:v1=/no/such/Dockerfile"]):
        result = subprocess.run(
            [sys.executable, "-m", "htc_emulator", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode in (1, 2) and "error" in result.stderr, (args, result.stderr)
