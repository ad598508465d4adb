"""The worker in its HTC modes, run as a job would be, against the session emulator's API and storage.

The runtime is simulated the way the tutorial does it: the job's variables in the
environment, the worker as a subprocess. Bad inputs must be recorded in the
manifest while the rest of the chunk goes on.
"""

import json
import signal
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import cv2
import pytest
import requests

import htc_helpers as htc
from face_tagger import htc_worker as hw
from htc_emulator import running

# The real worker as HTC jobs, killed, timed out and retried on emulators of their own (about 3 minutes here).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "face_tagger" / "face_tagger.py"
IMAGE = "opencv-htc-tutorial:v1"
FACE_PHOTO = ROOT / "data" / "images" / "2008_004176.jpg"


@pytest.fixture(scope="module")
def job_context(emulator, tmp_path_factory):
    """A project and a task whose shared storage holds one good photo, one corrupt one and a list."""
    session = htc.HtcSession(emulator.api_url, emulator.api_key)
    project = session.post(
        "/htc/projects", json={"projectName": "worker", "projectDescription": "HTC modes", "regions": ["AWS_EU_WEST_1"]}
    ).json()
    task = session.post(
        f"/htc/projects/{project['projectId']}/tasks", json={"taskName": "worker", "taskDescription": "HTC modes"}
    ).json()
    folder = tmp_path_factory.mktemp("shared")
    (folder / "good.jpg").write_bytes(FACE_PHOTO.read_bytes())
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "list.dat").write_text("good.jpg\n\ncorrupt.jpg\n  \nmissing.jpg\n../escape.jpg\n")
    htc.upload_files(session, project["projectId"], folder, progress=False)
    env = {
        "PATH": "/usr/bin:/bin",
        "RESCALE_HTC_API_URL": emulator.api_url,
        "AWS_ENDPOINT_URL_S3": emulator.s3_endpoint,
        "RESCALE_HTC_PROJECT_ID": project["projectId"],
        "RESCALE_HTC_TASK_ID": task["taskId"],
        "RESCALE_HTC_BEARER_TOKEN": session.bearer_token(),
    }
    return session, project["projectId"], task["taskId"], env


def run_job(env, *args, **extra):
    return subprocess.run(
        [sys.executable, str(WORKER), *args], env={**env, **extra}, capture_output=True, text=True, timeout=120
    )


def manifest(session, project_id, task_id, key, folder):
    htc.download_files(session, project_id, [key], folder, task_id, progress=False)
    return [json.loads(line) for line in (folder / key).read_text().splitlines()]


def test_batch_chunks_account_for_every_listed_image_once(job_context, tmp_path):
    session, project_id, task_id, env = job_context
    batch = {"IMG_OBJKEY_LIST": "list.dat", "BATCH_JOB_ARRAY_SIZE": "6"}  # 4 images over 6 jobs
    for index in range(6):
        result = run_job(env, **batch, AWS_BATCH_JOB_ARRAY_INDEX=str(index), AWS_BATCH_JOB_ID=f"p:{index}")
        assert result.returncode == 0, result.stderr
        assert env["RESCALE_HTC_BEARER_TOKEN"] not in result.stdout + result.stderr

    records = [
        r
        for i in range(6)
        for r in manifest(session, project_id, task_id, f"runs/p/manifests/chunk-{i:05d}.jsonl", tmp_path)
    ]
    by_image = {r["image"]: r for r in records}
    assert sorted(r["image"] for r in records) == sorted(["good.jpg", "corrupt.jpg", "missing.jpg", "../escape.jpg"])
    assert by_image["good.jpg"]["status"] == "ok" and by_image["good.jpg"]["faces"] >= 1
    assert by_image["good.jpg"]["faces"] == len(by_image["good.jpg"]["boxes"])
    assert "not a readable image" in by_image["corrupt.jpg"]["error"]
    assert "download of 'missing.jpg' failed" in by_image["missing.jpg"]["error"]
    assert "unsafe object key" in by_image["../escape.jpg"]["error"]
    assert {r["job"] for r in records} <= {f"p:{i}" for i in range(6)}
    assert {r["run"] for r in records} == {"p"} and all(r["job"] == f"p:{r['index']}" for r in records)

    # The batch's namespace: "p", from the job id's batch part (no HTC_RUN_ID here).
    keys = set(htc.list_objects(session, project_id, task_id))
    assert {"runs/p/good.jpg_tagged.jpg", "runs/p/good.jpg_tagged.dat"} <= keys
    assert by_image["good.jpg"]["outputs"] == ["runs/p/good.jpg_tagged.jpg", "runs/p/good.jpg_tagged.dat"]
    assert not any(k.startswith(("corrupt", "missing", "runs/p/corrupt", "runs/p/missing")) for k in keys)


def test_single_image_mode_tags_the_named_object(job_context, tmp_path):
    session, project_id, task_id, env = job_context
    result = run_job(env, HTC_INPUT_IMAGE="good.jpg")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("good.jpg: Found ")
    [record] = manifest(session, project_id, task_id, "manifests/single-good.jpg.jsonl", tmp_path)
    htc.download_files(
        session, project_id, ["good.jpg_tagged.dat", "good.jpg_tagged.jpg"], tmp_path, task_id, progress=False
    )
    assert (tmp_path / "good.jpg_tagged.dat").read_text() == f"face_cnt\n{record['faces']}\n"
    assert cv2.imread(str(tmp_path / "good.jpg_tagged.jpg")) is not None


def test_single_image_mode_fails_the_job_for_a_missing_object(job_context):
    _, _, _, env = job_context
    result = run_job(env, HTC_INPUT_IMAGE="absent.jpg")
    assert result.returncode == 1
    assert "absent.jpg: ERROR download of 'absent.jpg' failed" in result.stdout


def test_index_out_of_range_is_a_clear_error(job_context):
    _, _, _, env = job_context
    result = run_job(env, IMG_OBJKEY_LIST="list.dat", BATCH_JOB_ARRAY_SIZE="6", AWS_BATCH_JOB_ARRAY_INDEX="6")
    assert result.returncode == hw.EXIT_USAGE
    assert "AWS_BATCH_JOB_ARRAY_INDEX 6 is outside 0..5" in result.stderr


def test_a_missing_image_list_is_a_clear_error(job_context):
    _, _, _, env = job_context
    result = run_job(env, IMG_OBJKEY_LIST="nope.dat", BATCH_JOB_ARRAY_SIZE="1")
    assert result.returncode == hw.EXIT_USAGE
    assert "'nope.dat' not found in project shared storage" in result.stderr


def test_simulated_failures_fail_the_same_jobs_every_time(job_context):
    _, _, _, env = job_context
    raising = next(i for i in range(100) if hw.simulated_failure(0.5, i) == "raise")
    passing = next(i for i in range(100) if hw.simulated_failure(0.5, i) is None)
    batch = {"IMG_OBJKEY_LIST": "list.dat", "BATCH_JOB_ARRAY_SIZE": "100", "SIMULATE_FAILURES": "0.5"}
    for _ in range(2):
        failed = run_job(env, **batch, AWS_BATCH_JOB_ARRAY_INDEX=str(raising))
        assert failed.returncode == 1 and f"simulated failure for array index {raising}" in failed.stderr
        assert run_job(env, **batch, AWS_BATCH_JOB_ARRAY_INDEX=str(passing)).returncode == 0
    assert (
        run_job(env, **{**batch, "SIMULATE_FAILURES": "false"}, AWS_BATCH_JOB_ARRAY_INDEX=str(raising)).returncode == 0
    )


def test_task_storage_is_found_without_the_undocumented_storage_path(job_context, tmp_path):
    """The spec's storage token has no ``storagePath``; the worker then asks ``regional-storage``."""
    session, project_id, task_id, env = job_context
    http = requests.Session()

    def drop_storage_path(response, *args, **kwargs):
        if response.url.endswith("/storage/token"):
            body = response.json()
            body.pop("storagePath")
            response._content = json.dumps(body).encode()

    http.hooks["response"].append(drop_storage_path)
    storage = hw.HtcStorage.from_api(
        env["RESCALE_HTC_API_URL"], env["RESCALE_HTC_BEARER_TOKEN"], project_id, task_id, http=http
    )
    expected = htc.task_storage_token(session, project_id, task_id)["storagePath"]
    assert f"s3://{storage.task.bucket}/{storage.task.prefix}" == expected
    assert storage.read_shared_text("list.dat").startswith("good.jpg\n")
    note = tmp_path / "note.txt"
    note.write_text("written without storagePath")
    storage.upload_task([(note, "notes/note.txt")])
    assert "notes/note.txt" in htc.list_objects(session, project_id, task_id)


def test_names_with_unicode_line_breaks_are_tagged_not_split(job_context, tmp_path):
    """An image list ends lines at \\n only: U+2028, U+2029 and \\x85 are legal in a file name (issue 19, item 9).

    (\\x1c, which the shared rules' table covers, stays out of storage here: S3's XML bodies cannot carry
    it, so DeleteObjects, the emulator's clean-up included, fails on such a key.)
    """
    session, project_id, _, env = job_context
    task_id = session.post(
        f"/htc/projects/{project_id}/tasks", json={"taskName": "names", "taskDescription": "line breaks in names"}
    ).json()["taskId"]
    names = ["line\u2028separator.jpg", "paragraph\u2029separator.jpg", "next\x85line.jpg"]
    folder = tmp_path / "unusual"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(FACE_PHOTO.read_bytes())
    (folder / "unusual.dat").write_text("".join(f"{name}\n" for name in names))
    htc.upload_files(session, project_id, folder, progress=False)

    result = run_job(
        env,
        RESCALE_HTC_TASK_ID=task_id,
        IMG_OBJKEY_LIST="unusual.dat",
        BATCH_JOB_ARRAY_SIZE="1",
        AWS_BATCH_JOB_ARRAY_INDEX="0",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    records = manifest(session, project_id, task_id, "manifests/chunk-00000.jsonl", tmp_path)
    assert [r["image"] for r in records] == names
    assert all(r["status"] == "ok" and r["faces"] >= 1 for r in records), records
    assert {f"{name}_tagged.dat" for name in names} <= set(htc.list_objects(session, project_id, task_id))


def test_one_storage_token_and_one_client_reach_both_areas(job_context, tmp_path):
    """The task's token reads the shared files and writes the task's folder: a job needs no second one."""
    session, project_id, task_id, env = job_context
    http = requests.Session()
    asked = []
    http.hooks["response"].append(lambda response, *args, **kwargs: asked.append(response.url))
    storage = hw.HtcStorage.from_api(
        env["RESCALE_HTC_API_URL"], env["RESCALE_HTC_BEARER_TOKEN"], project_id, task_id, http=http
    )
    assert [url.rsplit("/htc/", 1)[1] for url in asked] == [f"projects/{project_id}/tasks/{task_id}/storage/token"]
    assert storage.shared.client is storage.task.client
    assert storage.read_shared_text("list.dat").startswith("good.jpg\n")
    note = tmp_path / "note.txt"
    note.write_text("one token")
    storage.upload_task([(note, "notes/one-token.txt")])
    assert "notes/one-token.txt" in htc.list_objects(session, project_id, task_id)


def test_only_a_retried_attempt_reads_its_manifest(job_context):
    """A batch's namespace is its own: on a first attempt no manifest of the job can be there yet, so none is asked
    for (a request a job); a retried attempt, or a job outside any run, reads it."""
    session, project_id, task_id, env = job_context
    storage = hw.HtcStorage.from_api(env["RESCALE_HTC_API_URL"], env["RESCALE_HTC_BEARER_TOKEN"], project_id, task_id)
    reads = []
    storage.task.client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **kwargs: reads.append(params["url_path"])
    )

    def manifest_reads(run, attempt):
        reads.clear()
        hw.process_items(
            storage,
            ["a"],
            lambda item, local: ({}, []),
            run=run,
            manifest_name="chunk-00000.jsonl",
            labels={"attempt": attempt},
            download=False,
        )
        return [path for path in reads if path.endswith("/manifests/chunk-00000.jsonl")]

    sigterm = signal.getsignal(signal.SIGTERM)  # process_items turns it into JobStopped: not for pytest's process
    try:
        with closing(storage.task.client):
            assert manifest_reads("first-attempt", 1) == []
            assert len(manifest_reads("first-attempt", 2)) == 1
            assert len(manifest_reads(None, 1)) == 1
    finally:
        signal.signal(signal.SIGTERM, sigterm)


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"HTC_INPUT_IMAGE": "../outside.jpg"}, "HTC_INPUT_IMAGE: unsafe object key"),
        ({"HTC_INPUT_IMAGE": "good.jpg", "OPENCV_THREADS": "two"}, "OPENCV_THREADS must be a whole number"),
    ],
)
def test_bad_settings_are_clear_errors_not_tracebacks(job_context, settings, message):
    _, _, _, env = job_context
    result = run_job(env, **settings)
    assert result.returncode == hw.EXIT_USAGE
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_simulated_hang_fails_even_when_it_outlives_its_sleep(job_context):
    _, _, _, env = job_context
    hanging = next(i for i in range(100) if hw.simulated_failure(1.0, i) == "hang")
    result = run_job(
        env,
        IMG_OBJKEY_LIST="list.dat",
        BATCH_JOB_ARRAY_SIZE="100",
        SIMULATE_FAILURES="1",
        SIMULATE_HANG_SECONDS="0.1",
        AWS_BATCH_JOB_ARRAY_INDEX=str(hanging),
    )
    assert result.returncode == 1
    assert f"simulated hang for array index {hanging} outlived the job timeout" in result.stderr


# --- a job stopped mid-chunk keeps what it finished


@pytest.fixture
def long_chunk(job_context, tmp_path_factory):
    """A fresh task and 150 photos listed for one job: long enough to stop it in the middle."""
    session, project_id, _, env = job_context
    task = session.post(
        f"/htc/projects/{project_id}/tasks", json={"taskName": "stopped", "taskDescription": "a job stopped mid-chunk"}
    ).json()
    folder = tmp_path_factory.mktemp("long")
    keys = [f"long/photo-{n:03d}.jpg" for n in range(150)]
    (folder / "long").mkdir()
    for key in keys:
        (folder / key).write_bytes(FACE_PHOTO.read_bytes())
    (folder / "long.dat").write_text("\n".join(keys) + "\n")
    htc.upload_files(session, project_id, folder, progress=False)
    env = {**env, "RESCALE_HTC_TASK_ID": task["taskId"], "IMG_OBJKEY_LIST": "long.dat", "BATCH_JOB_ARRAY_SIZE": "1"}
    return session, project_id, task["taskId"], env, keys


def start_and_stop(env, after_images: int, signum: int):
    """Start a real worker, let it report ``after_images`` images, send it ``signum``; its output and exit code."""
    worker = subprocess.Popen(
        [sys.executable, str(WORKER)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        reported = []
        for line in worker.stdout:
            if ": Found " in line:
                reported.append(line.split(":")[0])
                if len(reported) == after_images:
                    worker.send_signal(signum)
                    break
        out, err = worker.communicate(timeout=60)
    finally:
        worker.kill()
    reported += [line.split(":")[0] for line in out.splitlines() if ": Found " in line]
    return reported, err, worker.returncode


def test_sigterm_mid_chunk_saves_the_finished_images_first(long_chunk, tmp_path):
    session, project_id, task_id, env, keys = long_chunk
    reported, err, code = start_and_stop(env, 30, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM and "stopped by SIGTERM" in err, err

    records = manifest(session, project_id, task_id, "manifests/chunk-00000.jsonl", tmp_path)
    saved = [r["image"] for r in records]
    assert set(reported) <= set(saved) and len(saved) < len(keys)  # everything reported, and stopped mid-chunk
    assert saved == keys[: len(saved)] and all(r["status"] == "ok" for r in records)
    stored = set(htc.list_objects(session, project_id, task_id))
    assert {f"{image}_tagged.dat" for image in saved} <= stored

    results = htc.collect_results(session, project_id, task_id)
    assert htc.missing_results(keys, results) == keys[len(saved) :]


def test_a_killed_job_keeps_what_it_saved_as_it_went(long_chunk, tmp_path):
    """SIGKILL leaves no time to save: what was saved as the job went is what remains.

    Results go out at least every ``FLUSH_EVERY_IMAGES``, so fewer than that are lost.
    """
    session, project_id, task_id, env, keys = long_chunk
    reported, _, code = start_and_stop(env, 2 * hw.FLUSH_EVERY_ITEMS, signal.SIGKILL)
    assert code == -signal.SIGKILL
    saved = [r["image"] for r in manifest(session, project_id, task_id, "manifests/chunk-00000.jsonl", tmp_path)]
    assert len(reported) - hw.FLUSH_EVERY_ITEMS < len(saved) <= len(reported)
    assert saved == reported[: len(saved)] == keys[: len(saved)]
    # Images past the manifest whose face counts were already stored count as done too.
    stored = set(htc.list_objects(session, project_id, task_id))
    done = set(saved) | {key for key in keys if f"{key}_tagged.dat" in stored}
    results = htc.collect_results(session, project_id, task_id)
    assert htc.missing_results(keys, results) == [key for key in keys if key not in done]


@pytest.fixture(scope="module")
def stopping_platform():
    """An emulator whose scaled timeouts and grace period fit this test (60 s become 30 s, the grace 5 s).

    The session's timeout scale (0.1) leaves a stopped job 1 s to save its work, which a busy
    machine may not give it; 5 s is ample for a manifest and the last few outputs. The platform's
    own delays run on the session's fast clock (0.01).
    """
    settings = {"time_scale": 0.01, "timeout_scale": 0.5, "faults": {"slow_seconds": 1.0}}
    with running(images={IMAGE: "docker/Dockerfile"}, **settings) as emu:
        yield emu


def test_a_job_that_times_out_on_the_platform_keeps_what_it_finished(stopping_platform, tmp_path, monkeypatch):
    """End to end: the emulator stops a job past its timeout (SIGTERM, then SIGKILL after the grace period).

    The job cannot finish in time by construction, whatever the machine's speed: every photo
    past the first ten takes a second to download (an injected storage fault on the project's
    shared files only), and the worker downloads at most ``TRANSFER_THREADS`` at once, so its
    390 slow photos take over 48 s against the scaled 60 s timeout (30 s).
    """
    emulator = stopping_platform
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", emulator.s3_endpoint)
    session = htc.HtcSession(emulator.api_url, emulator.api_key)
    project = session.post(
        "/htc/projects",
        json={"projectName": "timeout", "projectDescription": "stopped jobs", "regions": ["AWS_EU_WEST_1"]},
    ).json()
    project_id = project["projectId"]
    session.post(f"/htc/projects/{project_id}/container-registry/repo/opencv-htc-tutorial")
    htc.wait_for_image(session, project_id, IMAGE)
    task_id = session.post(
        f"/htc/projects/{project_id}/tasks", json={"taskName": "timeout", "taskDescription": "stopped jobs"}
    ).json()["taskId"]
    keys = [f"t/photo-{n:03d}.jpg" for n in range(400)]
    (tmp_path / "t").mkdir()
    for key in keys:
        (tmp_path / key).write_bytes(FACE_PHOTO.read_bytes())
    (tmp_path / "list.dat").write_text("\n".join(keys) + "\n")
    htc.upload_files(session, project_id, tmp_path, progress=False)
    payload = [
        {
            "jobName": "times-out",
            "batchSize": 1,
            "htcJobDefinition": {
                "imageName": IMAGE,
                "maxVCpus": 1,
                "maxMemory": 512,
                "execTimeoutSeconds": 60,
                "commands": ["python", "/opt/face_tagger.py"],
                "envs": [
                    {"name": "BATCH_JOB_ARRAY_SIZE", "value": "1"},
                    {"name": "IMG_OBJKEY_LIST", "value": "list.dat"},
                ],
            },
        }
    ]
    assert emulator.faults.slow_seconds >= 1 and hw.TRANSFER_THREADS * 30 < len(keys) - 10
    emulator.faults.set_rate(1.0, ["slow"], target="storage", path=rf"{project_id}/shared/t/photo-(?!00)")
    parent = session.post(f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch", json=payload).json()[0]
    job_id = f"{parent['parentJobId']}:0"
    finished = htc.wait_for_job(session, project_id, task_id, job_id, interval=0.2, timeout=300)
    emulator.faults.clear("storage")
    assert finished["status"] == "FAILED"

    logs = [line["message"] for line in htc.get_logs(session, project_id, task_id, job_id)]
    assert any("stopped by SIGTERM" in line for line in logs), logs[-3:]
    reported = [line.split(":")[0] for line in logs if ": Found " in line]
    saved_key = f"runs/{parent['parentJobId']}/manifests/chunk-00000.jsonl"
    saved = [r["image"] for r in manifest(session, project_id, task_id, saved_key, tmp_path)]
    # Everything reported was saved, the image in progress at most besides; the job stopped mid-chunk.
    assert saved[: len(reported)] == reported and len(saved) - len(reported) <= 1
    assert saved == keys[: len(saved)] and len(saved) < len(keys)
    results = htc.collect_results(session, project_id, task_id)
    assert htc.missing_results(keys, results) == keys[len(saved) :]


def test_a_retried_attempt_skips_the_images_its_manifest_holds(long_chunk, tmp_path):
    """Attempt 1 is stopped mid-chunk; attempt 2 of the same job tags only the rest, into the same manifest."""
    session, project_id, task_id, env, keys = long_chunk
    env = {**env, "HTC_RUN_ID": "retried-run", "AWS_BATCH_JOB_ID": "b:0"}
    reported, _, code = start_and_stop({**env, "AWS_BATCH_JOB_ATTEMPT": "1"}, 30, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    key = "runs/retried-run/manifests/chunk-00000.jsonl"
    first = [r["image"] for r in manifest(session, project_id, task_id, key, tmp_path / "1")]
    assert set(reported) <= set(first) and 0 < len(first) < len(keys)

    second = run_job(env, AWS_BATCH_JOB_ATTEMPT="2")
    assert second.returncode == 0, second.stderr
    assert f"{len(first)} images already done by an earlier attempt" in second.stdout
    retagged = [line.split(":")[0] for line in second.stdout.splitlines() if ": Found " in line]
    assert retagged == keys[len(first) :]  # none of the first attempt's images again

    records = manifest(session, project_id, task_id, key, tmp_path / "2")
    assert [r["image"] for r in records] == keys  # each once, in order
    assert [r["attempt"] for r in records] == [1] * len(first) + [2] * (len(keys) - len(first))
    assert {r["run"] for r in records} == {"retried-run"} and {r["index"] for r in records} == {0}
    results = htc.collect_results(session, project_id, task_id)
    assert htc.missing_results(keys, results) == [] and set(results["run"]) == {"retried-run"}


def test_a_run_id_that_is_not_a_key_segment_is_a_clear_error(job_context):
    _, _, _, env = job_context
    result = run_job(env, IMG_OBJKEY_LIST="list.dat", BATCH_JOB_ARRAY_SIZE="1", HTC_RUN_ID="../other-task")
    assert result.returncode == hw.EXIT_USAGE
    assert "HTC_RUN_ID must be 1 to 128 letters" in result.stderr and "Traceback" not in result.stderr
