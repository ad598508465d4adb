"""htc_helpers.py: pure functions here, then everything else against the running emulator over HTTP."""

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest

import htc_helpers as htc

ROOT = Path(__file__).resolve().parent.parent


# --- pure functions ----------------------------------------------------------------------

def job(status, code=None, reason=None):
    return {"status": status, "failureCode": code, "statusReason": reason}


def test_status_counts_all_nine_statuses_and_unknown_ones():
    counts = htc.status_counts([job("RUNNING"), job("POD_FAILED"), job("POD_SUCCEEDED"),
                                job("POD_FAILED"), job("SOME_FUTURE_STATUS")])
    assert list(counts)[:9] == list(htc.JOB_STATUSES)
    assert counts["POD_FAILED"] == 2 and counts["POD_SUCCEEDED"] == 1 and counts["RUNNING"] == 1
    assert counts["SOME_FUTURE_STATUS"] == 1
    assert counts["SUCCEEDED"] == 0 and sum(counts.values()) == 5


def test_failure_summary_counts_first_occurrence_as_one():
    jobs = [job("FAILED", "ErrorTimeout", "Job timed out"),
            job("FAILED", "ErrorNonZeroContainerExitCode", "Essential container exited"),
            job("FAILED", "ErrorTimeout", "Job timed out"),
            job("POD_FAILED", "ErrorInstanceTermination", "Spot reclaimed"),
            job("SUCCEEDED", None, "Completed")]
    assert htc.failure_summary(jobs) == {
        "ErrorTimeout: Job timed out": 2,
        "ErrorInstanceTermination: Spot reclaimed": 1,
        "ErrorNonZeroContainerExitCode: Essential container exited": 1,
    }
    assert list(htc.failure_summary(jobs))[0] == "ErrorTimeout: Job timed out"
    assert htc.failure_summary([]) == {}


def results(*rows):
    return pd.DataFrame([dict(zip(["image", "faces", "status"], r)) for r in rows],
                        columns=htc.RESULT_COLUMNS).astype({"faces": "Int64"})


def test_find_max_faces_returns_every_tied_image():
    df = results(("b.jpg", 4, "ok"), ("a.jpg", 4, "ok"), ("c.jpg", 1, "ok"), ("d.jpg", None, "error"))
    best = htc.find_max_faces(df)
    assert best["image"].tolist() == ["a.jpg", "b.jpg"]
    assert best["faces"].tolist() == [4, 4]


def test_find_max_faces_single_winner():
    assert htc.find_max_faces(results(("a.jpg", 2, "ok"), ("b.jpg", 7, "ok")))["image"].tolist() == ["b.jpg"]


@pytest.mark.parametrize("df", [results(), results(("a.jpg", None, "error")), results(("a.jpg", 0, "ok"))])
def test_find_max_faces_empty_when_no_face_anywhere(df):
    best = htc.find_max_faces(df)
    assert best.empty and list(best.columns) == htc.RESULT_COLUMNS


def test_missing_results_names_absent_and_failed_images_in_input_order():
    df = results(("a.jpg", 1, "ok"), ("c.jpg", None, "error"), ("d.jpg", 0, "ok"))
    assert htc.missing_results(["e.jpg", "a.jpg", "c.jpg", "b.jpg", "d.jpg", "e.jpg"], df) == \
        ["e.jpg", "c.jpg", "b.jpg"]
    assert htc.missing_results(["a.jpg", "d.jpg"], df) == []


def test_next_page_request_has_each_parameter_once():
    url, params = htc._next_request(
        "http://h/api/v1/htc/projects/p/tasks/t/jobs?group=g",
        "http://h/api/v1/htc/projects/p/tasks/t/jobs?group=g&pageIndex=abc&pageSize=5",
        {"group": "g", "pageSize": 5, "viewType": "SIMPLE"})
    assert url == "http://h/api/v1/htc/projects/p/tasks/t/jobs"
    assert params == {"group": ["g"], "pageSize": ["5"], "pageIndex": ["abc"], "viewType": "SIMPLE"}


def test_next_page_relative_link_resolved_against_current_url():
    url, params = htc._next_request("http://h/api/v1/htc/projects?pageIndex=1", "?pageIndex=2", {"x": "y"})
    assert url == "http://h/api/v1/htc/projects" and params == {"x": "y", "pageIndex": ["2"]}


def test_dat_file_parsing():
    assert htc._dat_faces("a_tagged.dat", "face_cnt\n12\n") == 12
    with pytest.raises(ValueError, match="a_tagged.dat"):
        htc._dat_faces("a_tagged.dat", "12\n")


def test_aws_region_mapping():
    assert htc._aws_region("AWS_EU_WEST_1") == "eu-west-1"
    assert htc._aws_region("AWS_US_EAST_2") == "us-east-2"
    assert htc._aws_region("GCP_US_CENTRAL_1") is None


def test_plot_status_history_drops_always_zero_statuses():
    t0, t1 = pd.Timestamp("2025-01-01T00:00Z"), pd.Timestamp("2025-01-01T00:00:30Z")
    history = pd.DataFrame([(t0, "RUNNING", 2), (t0, "SUCCEEDED", 0), (t0, "FAILED", 0),
                            (t1, "RUNNING", 0), (t1, "SUCCEEDED", 2), (t1, "FAILED", 0)],
                           columns=["time", "status", "count"])
    fig = htc.plot_status_history(history)
    assert isinstance(fig, go.Figure)
    assert [trace.name for trace in fig.data] == ["RUNNING", "SUCCEEDED"]
    assert fig.layout.yaxis.type != "log"


def test_session_needs_key_or_job_token(monkeypatch):
    monkeypatch.delenv("RESCALE_HTC_BEARER_TOKEN", raising=False)
    with pytest.raises(ValueError, match="RESCALE_HTC_BEARER_TOKEN"):
        htc.HtcSession("http://127.0.0.1:9/api/v1")


def test_session_repr_hides_secrets(monkeypatch):
    assert "s3cr3t" not in repr(htc.HtcSession("http://127.0.0.1:9/api/v1", "s3cr3t-key"))
    monkeypatch.setenv("RESCALE_HTC_BEARER_TOKEN", "s3cr3t-jwt")
    assert repr(htc.HtcSession("http://127.0.0.1:9/api/v1")) == "<HtcSession http://127.0.0.1:9/api/v1 (job token)>"


def test_cancel_group_refuses_to_cancel_the_whole_task():
    with pytest.raises(ValueError, match="group"):
        htc.cancel_group(htc.HtcSession("http://127.0.0.1:9/api/v1", "k"), "p", "t", "")


def test_no_host_hard_coded_outside_config():
    assert "htc.rescale.com" not in (ROOT / "htc_helpers.py").read_text()
