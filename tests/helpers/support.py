"""Test support for the client's tests: projects and tasks on an emulator, sessions that record or rewrite answers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

import htc_helpers as htc

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"


def new_project(session, repository=None):
    """A project; with ``repository``, that repository too, and every image in it READY (replicated)."""
    project_id = session.post(
        "/htc/projects", json={"projectName": "helpers", "projectDescription": "pytest", "regions": ["AWS_EU_WEST_1"]}
    ).json()["projectId"]
    if repository:
        session.post(f"/htc/projects/{project_id}/container-registry/repo/{repository}")
        listed = session.get(f"/htc/projects/{project_id}/container-registry/images").json()["images"]
        for image in listed:
            if image.rsplit(":", 1)[0] == repository:
                htc.wait_for_image(session, project_id, image)
    return project_id


def new_task(session, project_id, name="t"):
    return session.post(
        f"/htc/projects/{project_id}/tasks", json={"taskName": name, "taskDescription": "pytest"}
    ).json()["taskId"]


def record_responses(session):
    """Every response the session receives (token requests and retried 401s included)."""
    seen = []
    session.hooks["response"].append(lambda response, *args, **kwargs: seen.append(response))
    return seen


def fast_session(emu, **kwargs):
    session = htc.HtcSession(emu.api_url, emu.api_key, backoff_factor=0.01, **kwargs)
    session.bearer_token()  # fetched now, so scripted faults hit the call under test
    return session


def rewrite_json(session, path_pattern, change):
    """Edit the JSON of real responses whose path matches: the server's answers as another platform might give them."""

    def hook(response, *args, **kwargs):
        if response.ok and re.search(path_pattern, urlsplit(response.url).path):
            body = response.json()
            change(body)
            response._content = json.dumps(body).encode()

    session.hooks["response"].append(hook)


def results(*rows):
    return pd.DataFrame(
        [dict(zip(["image", "faces", "status"], r, strict=True)) for r in rows], columns=htc.RESULT_COLUMNS
    ).astype({"faces": "Int64"})
