"""paginate: every page, each parameter once, never off the API's host, and always to an end."""

import json
from urllib.parse import parse_qsl, urlsplit

import pytest

import htc_helpers as htc
from tests.helpers.support import new_project, new_task, record_responses


def test_next_page_keeps_the_parameters_and_takes_only_the_page_index():
    params = htc._next_params(
        {"group": "g", "pageSize": 5, "pageIndex": "old"},
        "http://h/api/v1/htc/projects/p/tasks/t/jobs?group=g&pageIndex=abc&pageSize=7",
    )
    assert params == {"group": "g", "pageSize": 5, "pageIndex": "abc"}  # each parameter once
    assert htc._next_params({"x": "y"}, "?pageIndex=2") == {"x": "y", "pageIndex": "2"}


def test_next_page_on_another_host_only_lends_its_page_index():
    # The spec's own example of `next`; following it would take the request (and token) elsewhere.
    params = htc._next_params({"pageSize": 3}, "https://page2.com/steal?pageIndex=p2&pageSize=1&evil=1")
    assert params == {"pageSize": 3, "pageIndex": "p2"}


@pytest.mark.parametrize("link", ["", "https://page2.com", "http://h/api/v1/htc/projects?pageIndex="])
def test_next_page_without_a_page_index_ends_the_listing(link):
    assert htc._next_params({"pageSize": 3}, link) is None


def test_paginate_follows_next_without_duplicating_parameters(session):
    project_id = new_project(session)
    created = [new_task(session, project_id, f"task-{i}") for i in range(7)]
    seen = record_responses(session)
    url = f"/htc/projects/{project_id}/tasks"
    tasks = htc.paginate(session, url, {"pageSize": 3})
    assert [t["taskId"] for t in tasks] == created
    assert len(seen) == 3
    for response in seen:
        keys = [k for k, _ in parse_qsl(urlsplit(response.url).query)]
        assert sorted(keys) == sorted(set(keys)), response.url
        # Every page from the original URL, with the token, whatever host `next` names.
        assert response.url.split("?")[0] == session.api_url + url
        assert response.request.headers["Authorization"].startswith("Bearer ")
    # Each call's pageIndex is the one the previous page's `next` carried.
    links = [r.json().get("next") for r in seen]
    assert links[-1] is None
    assert [dict(parse_qsl(urlsplit(r.url).query))["pageIndex"] for r in seen[1:]] == [
        dict(parse_qsl(urlsplit(link).query))["pageIndex"] for link in links[:-1]
    ]

    seen.clear()
    assert [t["taskId"] for t in htc.paginate(session, url, {"pageSize": 3}, max_items=4)] == created[:4]
    assert len(seen) == 2  # the cap holds across pages and stops fetching
    seen.clear()
    assert len(htc.paginate(session, url, {"pageSize": 3}, max_items=3)) == 3 and len(seen) == 1


def test_paginate_stays_on_the_api_when_next_names_another_host(session):
    project_id = new_project(session)
    created = [new_task(session, project_id, f"task-{i}") for i in range(5)]
    seen = []

    def elsewhere(response, *args, **kwargs):
        # The spec's example `next` is https://page2.com: point the real links there.
        seen.append(response.url)
        body = response.json()
        if isinstance(body, dict) and body.get("next"):
            body["next"] = "https://page2.com/api/v1/htc?" + urlsplit(body["next"]).query
            response._content = json.dumps(body).encode()

    session.hooks["response"].append(elsewhere)
    try:
        tasks = htc.paginate(session, f"/htc/projects/{project_id}/tasks", {"pageSize": 2})
    finally:
        session.hooks["response"].remove(elsewhere)
    assert [t["taskId"] for t in tasks] == created
    assert len(seen) == 3 and all(url.startswith(session.api_url + "/") for url in seen)


# --- paging always ends


def repeat_pages(session, change_next):
    """Rewrite each page's ``next`` with ``change_next(own page index, next)``; refuse to go on past 50 pages."""
    pages = []

    def hook(response, *args, **kwargs):
        if "/tasks" not in response.url or response.request.method != "GET":
            return
        pages.append(response.url)
        if len(pages) > 50:
            raise AssertionError("paginate kept following pages")
        body = response.json()
        if body.get("next"):
            own = dict(parse_qsl(urlsplit(response.url).query)).get("pageIndex")
            body["next"] = change_next(own, body["next"])
            response._content = json.dumps(body).encode()

    session.hooks["response"].append(hook)
    return pages


@pytest.fixture
def paged(emulator):
    session = htc.HtcSession(emulator.api_url, emulator.api_key)
    project = session.post(
        "/htc/projects", json={"projectName": "paging", "projectDescription": "pytest", "regions": ["AWS_EU_WEST_1"]}
    ).json()
    for n in range(5):
        session.post(f"/htc/projects/{project['projectId']}/tasks", json={"taskName": f"t{n}", "taskDescription": "d"})
    return session, f"/htc/projects/{project['projectId']}/tasks"


def test_paging_stops_when_next_names_a_page_already_fetched(paged):
    session, url = paged
    # The second page's next names the second page again.
    pages = repeat_pages(session, lambda own, link: link if own is None else f"{url}?pageIndex={own}")
    with pytest.raises(htc.HtcError, match=r"does not end: after 2 pages, next names page '2' again"):
        htc.paginate(session, url, {"pageSize": 2})
    assert len(pages) == 2


def test_paging_stops_when_a_page_repeats_the_one_before(paged):
    session, url = paged
    # Every next names offset 0 under a new spelling: the same items again and again.
    pages = repeat_pages(session, lambda own, link: f"{url}?pageIndex=0")
    with pytest.raises(htc.HtcError, match="repeats the page before it"):
        htc.paginate(session, url, {"pageSize": 2})
    assert len(pages) == 2


@pytest.mark.slow
def test_page_sizes_are_parameters(session):
    project_id = new_project(session, repository="opencv-htc-tutorial")
    task_id = new_task(session, project_id)
    session.post(
        f"/htc/projects/{project_id}/tasks/{task_id}/jobs/batch",
        json=[{"batchSize": 5, "htcJobDefinition": {"imageName": "opencv-htc-tutorial:v1", "commands": ["false"]}}],
    )
    seen = record_responses(session)
    assert len(htc.get_all_jobs(session, project_id, task_id, page_size=2)) == 5
    assert [dict(parse_qsl(urlsplit(r.url).query))["pageSize"] for r in seen] == ["2", "2", "2"]
    job_id = htc.get_all_jobs(session, project_id, task_id)[0]["jobUUID"]
    del seen[:]
    htc.get_logs(session, project_id, task_id, job_id, page_size=7)
    htc.wait_for_job(session, project_id, task_id, job_id, interval=0.1, timeout=30, page_size=3)
    assert {dict(parse_qsl(urlsplit(r.url).query))["pageSize"] for r in seen} == {"7", "3"}
