"""The worker layer for any program: command_worker.py runs a command on each item, without OpenCV.

Run as a job would be (the job's variables, the script as a subprocess) against the session
emulator's storage, then as jobs of a work list on the emulator (process mode). Its container
twin is in tests/test_docker.py.
"""

import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import htc_helpers as htc
import tutorial_helpers as tutorial
from face_tagger import htc_worker as hw

ROOT = Path(__file__).resolve().parents[2]
COMMAND_WORKER = ROOT / "face_tagger" / "command_worker.py"
FILES = {f"data/file-{n}.bin": bytes([n]) * (1000 + n) for n in range(5)}


@pytest.fixture(scope="module")
def shared_files(emulator, tmp_path_factory):
    """A project whose shared storage holds five files and a list of them (and of one file that is not there)."""
    session = htc.HtcSession(emulator.api_url, emulator.api_key)
    project_id = session.post(
        "/htc/projects",
        json={"projectName": "command", "projectDescription": "any command", "regions": ["AWS_EU_WEST_1"]},
    ).json()["projectId"]
    session.post(f"/htc/projects/{project_id}/container-registry/repo/opencv-htc-tutorial")
    folder = tmp_path_factory.mktemp("files")
    for key, body in FILES.items():
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(body)
    (folder / "files.txt").write_text("".join(f"{key}\n" for key in FILES) + "data/absent.bin\n")
    htc.upload_files(session, project_id, folder, progress=False)
    return session, project_id


def job_env(emulator, session, project_id, task_id, **extra):
    return {
        "PATH": "/usr/bin:/bin",
        "RESCALE_HTC_API_URL": emulator.api_url,
        "AWS_ENDPOINT_URL_S3": emulator.s3_endpoint,
        "RESCALE_HTC_PROJECT_ID": project_id,
        "RESCALE_HTC_TASK_ID": task_id,
        "RESCALE_HTC_BEARER_TOKEN": session.bearer_token(),
        "ITEM_LIST": "files.txt",
        "BATCH_JOB_ARRAY_SIZE": "1",
        "HTC_RUN_ID": "by-hand",
        **extra,
    }


def run_worker(env, *command):
    return subprocess.run(
        [sys.executable, str(COMMAND_WORKER), *command], env=env, capture_output=True, text=True, timeout=120
    )


def tutorial_task(session, project_id):
    return session.post(
        f"/htc/projects/{project_id}/tasks", json={"taskName": "command", "taskDescription": "command worker"}
    ).json()["taskId"]


def records(session, project_id, task_id):
    return htc.collect_results(session, project_id, task_id, columns=htc.ITEM_COLUMNS).set_index("item")


def test_the_layer_imports_no_opencv():
    """What a program of your own ships with: the layer and the example need neither OpenCV nor NumPy."""
    for path in (ROOT / "face_tagger" / "htc_worker.py", COMMAND_WORKER):
        imported = {
            (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        }
        allowed = {*sys.stdlib_module_names, "requests", "urllib3", "boto3", "botocore", "htc_worker", "face_tagger"}
        assert imported <= allowed, imported - allowed
    probe = "import sys, command_worker; print(sorted(m for m in ('cv2', 'numpy') if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=COMMAND_WORKER.parent, capture_output=True, text=True, timeout=60
    )
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stderr


def test_a_command_runs_on_each_downloaded_item_and_its_output_is_kept(emulator, shared_files):
    session, project_id = shared_files
    task_id = tutorial_task(session, project_id)
    result = run_worker(job_env(emulator, session, project_id, task_id), "sha256sum", "{}")
    assert result.returncode == 0, result.stderr
    rows = records(session, project_id, task_id)
    for key, body in FILES.items():
        assert rows.loc[key, "status"] == "ok" and rows.loc[key, "exit_code"] == 0
        assert rows.loc[key, "stdout"].split()[0] == hashlib.sha256(body).hexdigest()
    assert rows.loc["data/absent.bin", "status"] == "error"
    assert "download of 'data/absent.bin' failed" in rows.loc["data/absent.bin", "error"]
    assert (rows["run"] == "by-hand").all() and (rows["index"] == 0).all()
    assert htc.missing_results([*FILES, "data/absent.bin"], rows.reset_index()) == ["data/absent.bin"]


def test_a_failing_command_fails_its_item_and_the_share_goes_on(emulator, shared_files):
    session, project_id = shared_files
    task_id = tutorial_task(session, project_id)
    odd = "import sys; print('seen', sys.argv[1]); sys.exit(sys.argv[1].endswith(('1.bin', '3.bin')))"
    result = run_worker(job_env(emulator, session, project_id, task_id), sys.executable, "-c", odd, "{item}")
    assert result.returncode == 0, result.stderr
    rows = records(session, project_id, task_id)
    assert rows["status"].to_dict() == {
        key: "error" if key[-5] in "13" else "ok" for key in [*FILES, "data/absent.bin"]
    }
    assert rows.loc["data/file-1.bin", "error"] == "exit status 1"
    assert rows.loc["data/absent.bin", "stdout"] == "seen data/absent.bin\n"  # {item} alone: nothing downloaded


def test_a_command_that_cannot_run_is_a_clear_error(emulator, shared_files):
    session, project_id = shared_files
    task_id = tutorial_task(session, project_id)
    result = run_worker(job_env(emulator, session, project_id, task_id), "no-such-program-here", "{}")
    assert result.returncode == hw.EXIT_USAGE
    assert "cannot run 'no-such-program-here'" in result.stderr and "Traceback" not in result.stderr


def test_without_a_command_each_item_is_only_accounted_for(emulator, shared_files, tmp_path):
    session, project_id = shared_files
    task_id = tutorial_task(session, project_id)
    env = job_env(emulator, session, project_id, task_id, BATCH_JOB_ARRAY_SIZE="2", AWS_BATCH_JOB_ARRAY_INDEX="1")
    result = run_worker(env)
    assert result.returncode == 0, result.stderr
    assert "array index 1 of 2: items 3..5 of 6" in result.stdout
    key = "runs/by-hand/manifests/chunk-00001.jsonl"
    manifest = htc.download_files(session, project_id, [key], tmp_path, task_id, progress=False)[0]
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["item"] for r in lines] == [*FILES, "data/absent.bin"][3:]
    assert all(r["status"] == "ok" and r["outputs"] == [] for r in lines)


@pytest.mark.slow
def test_a_work_list_of_sha256sum_jobs_runs_to_completion(shared_files):
    """The helpers and the layer together, in process mode: submit_work_list, then complete_work_list."""
    session, project_id = shared_files
    task_id = tutorial_task(session, project_id)
    group = tutorial.unique_name("sha256")
    job = {
        "imageName": "opencv-htc-tutorial:v1",
        "maxVCpus": 1,
        "maxMemory": 256,
        "execTimeoutSeconds": 600,
        "commands": ["python", "/opt/command_worker.py", "sha256sum", "{}"],
    }
    submitted = htc.submit_work_list(session, project_id, task_id, group, list(FILES), job, items_per_job=2)
    assert [(b["jobs"], b["items"]) for b in submitted] == [(3, 5)]
    results = htc.complete_work_list(
        session,
        project_id,
        task_id,
        group,
        list(FILES),
        job,
        items_per_job=2,
        interval=0.2,
        timeout=300,
        progress=False,
    )
    assert htc.missing_results(list(FILES), results) == []
    rows = results.set_index("item")
    assert {key: rows.loc[key, "stdout"].split()[0] for key in FILES} == {
        key: hashlib.sha256(body).hexdigest() for key, body in FILES.items()
    }
    assert (rows["run"] == submitted[0]["run"]).all() and set(rows["index"]) == {0, 1, 2}
