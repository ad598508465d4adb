"""Aggregation: manifests and face-count files into one table, and the completeness check."""

import json
import uuid

import pandas as pd
import pytest

import htc_helpers as htc
import tutorial_helpers as tutorial
from tests.helpers.support import new_project, new_task, results


def test_missing_results_names_absent_and_failed_images_in_input_order():
    df = results(("a.jpg", 1, "ok"), ("c.jpg", None, "error"), ("d.jpg", 0, "ok"))
    assert htc.missing_results(["e.jpg", "a.jpg", "c.jpg", "b.jpg", "d.jpg", "e.jpg"], df) == [
        "e.jpg",
        "c.jpg",
        "b.jpg",
    ]
    assert htc.missing_results(["a.jpg", "d.jpg"], df) == []


def test_dat_file_parsing():
    assert htc._dat_faces("a_tagged.dat", "face_cnt\n12\n") == 12
    with pytest.raises(ValueError, match="a_tagged.dat"):
        htc._dat_faces("a_tagged.dat", "12\n")


def put_text(session, project_id, task_id, tmp_path, files: dict[str, str]):
    root = tmp_path / uuid.uuid4().hex
    for key, text in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_text(text)
    htc.upload_files(session, project_id, root, task_id, progress=False)


def manifest(*records):
    base = {"boxes": [], "seconds": 0.1, "error": None, "scale_factor": 1.2, "job": "p:0"}
    return "".join(json.dumps({**base, **r}) + "\n" for r in records)


def test_collect_results_from_manifests_and_dat_files(session, tmp_path):
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    put_text(
        session,
        project_id,
        task_id,
        tmp_path,
        {
            "manifests/chunk-00000.jsonl": manifest(
                {"image": "a.jpg", "faces": 3, "status": "ok"},
                {"image": "b.jpg", "faces": None, "status": "error", "error": "not a readable image"},
            ),
            "manifests/chunk-00001.jsonl": manifest(
                {"image": "c.jpg", "faces": 3, "status": "ok"}, {"image": "d.jpg", "faces": 0, "status": "ok"}
            )
            + "\n",
            "a.jpg_tagged.dat": "face_cnt\n3\n",
            # A job that uploaded its outputs but died before its manifest:
            "e.jpg_tagged.dat": "face_cnt\n2\n",
        },
    )
    # A later single-image run that succeeded for b.jpg wins over the failed record.
    put_text(
        session,
        project_id,
        task_id,
        tmp_path,
        {"manifests/single-b.jpg.jsonl": manifest({"image": "b.jpg", "faces": 1, "status": "ok"})},
    )

    df = htc.collect_results(session, project_id, task_id)
    assert list(df.columns) == htc.RESULT_COLUMNS
    assert df["image"].tolist() == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    assert df["faces"].tolist() == [3, 1, 3, 0, 2]
    assert df.set_index("image")["source"].to_dict() == {
        "a.jpg": "manifests/chunk-00000.jsonl",
        "b.jpg": "manifests/single-b.jpg.jsonl",
        "c.jpg": "manifests/chunk-00001.jsonl",
        "d.jpg": "manifests/chunk-00001.jsonl",
        "e.jpg": "e.jpg_tagged.dat",
    }
    assert tutorial.find_max_faces(df)["image"].tolist() == ["a.jpg", "c.jpg"]
    assert htc.missing_results(["a.jpg", "b.jpg", "f.jpg", "e.jpg"], df) == ["f.jpg"]


def test_collect_results_of_an_empty_task(session):
    project_id = new_project(session)
    df = htc.collect_results(session, project_id, new_task(session, project_id))
    assert df.empty and list(df.columns) == htc.RESULT_COLUMNS
    assert tutorial.find_max_faces(df).empty
    assert htc.missing_results(["a.jpg"], df) == ["a.jpg"]


@pytest.mark.slow
def test_collect_results_rejects_a_corrupt_manifest(session, tmp_path):
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    put_text(
        session,
        project_id,
        task_id,
        tmp_path,
        {"manifests/chunk-00003.jsonl": manifest({"image": "a.jpg", "faces": 1, "status": "ok"}) + "{truncated\n"},
    )
    with pytest.raises(ValueError, match=r"manifests/chunk-00003.jsonl line 2"):
        htc.collect_results(session, project_id, task_id)


def test_collect_results_reads_json_lines_split_at_newlines_only(session, tmp_path):
    """A manifest written without ASCII escapes may hold U+2028 raw inside a string: it is not a line break."""
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    record = {"image": "line\u2028separator.jpg", "faces": 2, "status": "ok", "boxes": [], "seconds": 0.1}
    put_text(
        session, project_id, task_id, tmp_path, {"manifests/raw.jsonl": json.dumps(record, ensure_ascii=False) + "\n"}
    )
    df = htc.collect_results(session, project_id, task_id)
    assert df["image"].tolist() == ["line\u2028separator.jpg"] and df["faces"].tolist() == [2]


def test_collect_results_reads_every_batchs_namespace_and_names_the_batch(session, tmp_path):
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    put_text(
        session,
        project_id,
        task_id,
        tmp_path,
        {
            "runs/run-a/manifests/chunk-00000.jsonl": manifest(
                {"image": "a.jpg", "faces": 1, "status": "ok", "index": 0, "job": "pa:0", "outputs": ["x"]},
                {"image": "b.jpg", "faces": None, "status": "error", "error": "timeout", "index": 0, "job": "pa:0"},
            ),
            # The same array index in another batch of the same task: a key of its own.
            "runs/run-b/manifests/chunk-00000.jsonl": manifest(
                {"image": "b.jpg", "faces": 2, "status": "ok", "index": 0, "job": "pb:0", "attempt": 2}
            ),
            "runs/run-b/c.jpg_tagged.dat": "face_cnt\n4\n",
            "runs/run-b/a.jpg_tagged.dat": "face_cnt\n1\n",  # named by a manifest: not an orphan
        },
    )
    df = htc.collect_results(session, project_id, task_id)
    assert list(df.columns) == htc.RESULT_COLUMNS + ["outputs", "attempt"]  # every field a manifest row has
    rows = df.set_index("image")
    assert rows["run"].to_dict() == {"a.jpg": "run-a", "b.jpg": "run-b", "c.jpg": "run-b"}
    assert rows["faces"].tolist() == [1, 2, 4] and (rows["task"] == task_id).all()
    assert rows.loc["a.jpg", "index"] == 0 and rows.loc["b.jpg", "job"] == "pb:0"
    assert rows.loc["b.jpg", "attempt"] == 2 and rows.loc["a.jpg", "outputs"] == ["x"]
    assert rows.loc["c.jpg", "source"] == "runs/run-b/c.jpg_tagged.dat" and pd.isna(rows.loc["c.jpg", "index"])

    only_a = htc.collect_results(session, project_id, task_id, runs=["run-a"])
    assert only_a["image"].tolist() == ["a.jpg", "b.jpg"] and only_a["status"].tolist() == ["ok", "error"]


def test_collect_results_of_several_tasks(session, tmp_path):
    project_id = new_project(session)
    first, second = new_task(session, project_id), new_task(session, project_id)
    put_text(
        session,
        project_id,
        first,
        tmp_path,
        {"runs/r/manifests/0.jsonl": manifest({"image": "a.jpg", "faces": 1, "status": "ok"})},
    )
    put_text(
        session,
        project_id,
        second,
        tmp_path,
        {"runs/r/manifests/0.jsonl": manifest({"image": "b.jpg", "faces": 0, "status": "ok"})},
    )
    df = htc.collect_results(session, project_id, [first, second])
    assert df.set_index("image")["task"].to_dict() == {"a.jpg": first, "b.jpg": second}


def test_collect_results_of_any_program_keeps_its_fields(session, tmp_path):
    project_id = new_project(session)
    task_id = new_task(session, project_id)
    record = {"item": "data/x.bin", "status": "ok", "error": None, "seconds": 0.01, "index": 3, "stdout": "ab12  x"}
    put_text(session, project_id, task_id, tmp_path, {"runs/r/manifests/chunk-00003.jsonl": json.dumps(record) + "\n"})
    df = htc.collect_results(session, project_id, task_id, columns=htc.ITEM_COLUMNS)
    assert list(df.columns) == htc.ITEM_COLUMNS + ["stdout"]
    assert df.iloc[0]["stdout"] == "ab12  x" and df.iloc[0]["run"] == "r" and df.iloc[0]["index"] == 3
    assert htc.missing_results(["data/x.bin", "data/y.bin"], df) == ["data/y.bin"]
    with pytest.raises(ValueError, match=r"line 1 has no 'image' field: pass the columns of its program"):
        htc.collect_results(session, project_id, task_id)


def test_a_later_gathering_adds_to_an_earlier_one_and_success_wins():
    earlier = results(("a.jpg", 1, "ok"), ("b.jpg", None, "error"), ("c.jpg", 2, "ok"))
    later = results(("b.jpg", 3, "ok"), ("c.jpg", None, "error"), ("d.jpg", 0, "ok"))
    merged = htc._newest_results(earlier, later)
    assert merged["image"].tolist() == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert merged["status"].tolist() == ["ok"] * 4 and merged["faces"].tolist() == [1, 3, 2, 0]
