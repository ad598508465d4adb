"""The face_tagger worker on local files: cascade, detection, outputs, chunking, failure simulation."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from face_tagger import face_tagger as ft

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "face_tagger" / "face_tagger.py"


DATA = ROOT / "data"


@pytest.fixture(scope="module")
def detector():
    return ft.FaceDetector.load()


@pytest.fixture(scope="module")
def truth():
    path = DATA / "ground_truth.json"
    assert path.exists(), "no data set: run `make data` first"
    return json.loads(path.read_text())["images"]


@pytest.fixture(scope="module")
def face_photo(truth):
    """A real photo with several hand-labelled faces."""
    name = max((n for n, t in truth.items() if t["boxes"]), key=lambda n: len(truth[n]["boxes"]))
    return DATA / "images" / name


def run_worker(*args, cwd, env=None):
    return subprocess.run([sys.executable, str(WORKER), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_pinned_opencv_ships_the_cascade():
    assert cv2.__version__.startswith("4.")
    assert hasattr(cv2, "CascadeClassifier")
    assert not cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / ft.DEFAULT_CASCADE)).empty()


def test_missing_or_empty_cascade_is_a_clear_error(tmp_path):
    with pytest.raises(ft.CascadeError, match="not found"):
        ft.FaceDetector.load(str(tmp_path / "absent.xml"))
    empty = tmp_path / "empty.xml"
    empty.write_text("")
    with pytest.raises(ft.CascadeError, match="could not be loaded"):
        ft.FaceDetector.load(str(empty))


def test_scale_factor_must_exceed_one():
    with pytest.raises(ft.UsageError, match="scaleFactor"):
        ft.FaceDetector.load(scale_factor=1.0)


def test_boxes_are_drawn_from_x_y_to_x_plus_w_y_plus_h(tmp_path):
    path = tmp_path / "blank.png"
    image = np.zeros((200, 300, 3), np.uint8)
    ft.write_outputs(path, image, [[20, 30, 150, 60]])
    tagged = cv2.imread(str(tmp_path / "blank.png_tagged.jpg"))
    green = lambda x, y: tagged[y, x, 1] > 150 and tagged[y, x, 2] < 100  # noqa: E731
    assert green(20 + 150, 30 + 30)  # right edge sits at x + w
    assert green(20 + 75, 30 + 60)  # bottom edge sits at y + h
    assert not green(20 + 60, 30 + 30)  # the old (x + h) corner is inside, not an edge
    assert (tmp_path / "blank.png_tagged.dat").read_text() == "face_cnt\n1\n"


def test_bad_images_are_recorded_and_the_rest_go_on(tmp_path, detector):
    good = tmp_path / "noise.jpg"
    cv2.imwrite(str(good), np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    records = [ft.tag_image(detector, p, p.name)[0] for p in (corrupt, tmp_path / "gone.jpg", text, good)]
    assert [r["status"] for r in records] == ["error", "error", "error", "ok"]
    assert "corrupt" in records[0]["error"] and "not found" in records[1]["error"]
    assert records[3]["faces"] == 0 and records[3]["error"] is None


def test_local_mode_writes_outputs_and_prints_a_line(tmp_path, face_photo):
    image = tmp_path / face_photo.name
    image.write_bytes(face_photo.read_bytes())
    result = run_worker(image.name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    count = int((tmp_path / f"{image.name}_tagged.dat").read_text().split()[1])
    assert count >= 1
    assert (tmp_path / f"{image.name}_tagged.jpg").stat().st_size > 0
    assert result.stdout.startswith(f"{image.name}: Found {count} faces in ")
    assert result.stdout.rstrip().endswith(" seconds.")


def test_json_mode_prints_one_object_per_image(tmp_path, face_photo):
    missing = tmp_path / "missing.jpg"
    result = run_worker("--json", "--output-dir", str(tmp_path), str(face_photo), str(missing), cwd=tmp_path)
    assert result.returncode == 1  # one image failed
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(face_photo), str(missing)]
    assert set(lines[0]) >= {"image", "faces", "boxes", "seconds"}
    assert lines[0]["faces"] == len(lines[0]["boxes"]) >= 1
    assert all(len(box) == 4 for box in lines[0]["boxes"])
    assert lines[1]["status"] == "error" and "not found" in lines[1]["error"]


def test_scale_factor_comes_from_flag_or_env(tmp_path, face_photo):
    out = ("--output-dir", str(tmp_path))
    coarse = run_worker("--json", *out, "--scale-factor", "1.5", str(face_photo), cwd=tmp_path)
    default = run_worker("--json", *out, str(face_photo), cwd=tmp_path)
    env_run = run_worker("--json", *out, str(face_photo), cwd=tmp_path,
                         env={"SCALE_FACTOR": "1.5", "PATH": "/usr/bin:/bin"})
    assert json.loads(coarse.stdout)["boxes"] != json.loads(default.stdout)["boxes"]
    assert json.loads(coarse.stdout)["boxes"] == json.loads(env_run.stdout)["boxes"]
    bad = run_worker(str(face_photo), cwd=tmp_path, env={"SCALE_FACTOR": "big", "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "scale-factor" in bad.stderr


def test_batch_mode_names_every_missing_setting(tmp_path):
    result = run_worker(cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == ft.EXIT_USAGE
    assert "IMG_OBJKEY_LIST" in result.stderr and "BATCH_JOB_ARRAY_SIZE" in result.stderr
    assert "Traceback" not in result.stderr


def test_single_mode_true_without_an_argument_says_what_is_missing(tmp_path):
    result = run_worker(cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HTC_INPUT_IMAGE": "true"})
    assert result.returncode == ft.EXIT_USAGE
    assert "needs exactly one argument" in result.stderr


@given(st.integers(0, 3000), st.integers(1, 1000))
def test_chunks_cover_the_list_exactly_once(total, batch_size):
    bounds = [ft.chunk_bounds(total, batch_size, i) for i in range(batch_size)]
    covered = [n for start, end in bounds for n in range(start, end)]
    assert covered == list(range(total))  # contiguous, in order, disjoint, complete
    sizes = {end - start for start, end in bounds}
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("total,batch_size", [(5003, 1000), (1500, 1000), (1999, 1000), (10, 3), (999, 1000)])
def test_the_originals_failing_splits_now_lose_nothing(total, batch_size):
    sizes = [end - start for start, end in (ft.chunk_bounds(total, batch_size, i) for i in range(batch_size))]
    assert sum(sizes) == total and min(sizes) >= total // batch_size


@pytest.mark.parametrize("index,batch_size", [(-1, 10), (10, 10), (0, 0)])
def test_out_of_range_index_is_a_clear_error(index, batch_size):
    with pytest.raises(ft.UsageError, match="AWS_BATCH_JOB_ARRAY_INDEX|BATCH_JOB_ARRAY_SIZE"):
        ft.chunk_bounds(10, batch_size, index)


def test_image_list_ignores_blank_lines():
    assert ft.parse_image_list("a.jpg\n\n  b.jpg  \r\n\n") == ["a.jpg", "b.jpg"]


def test_missing_index_with_a_batch_of_one_is_index_zero(monkeypatch):
    monkeypatch.delenv("AWS_BATCH_JOB_ARRAY_INDEX", raising=False)
    assert ft.array_index(1) == 0
    with pytest.raises(ft.UsageError, match="AWS_BATCH_JOB_ARRAY_INDEX"):
        ft.array_index(2)


@pytest.mark.parametrize("setting,rate", [(None, 0), ("", 0), ("false", 0), ("0", 0), ("FALSE", 0),
                                          ("true", ft.DEFAULT_FAILURE_RATE), ("0.3", 0.3), ("1", 1.0)])
def test_failure_setting_is_parsed(setting, rate):
    assert ft.failure_rate(setting) == pytest.approx(rate)


@pytest.mark.parametrize("setting", ["sometimes", "1.5", "-0.1"])
def test_bad_failure_setting_is_refused(setting):
    with pytest.raises(ft.UsageError, match="SIMULATE_FAILURES"):
        ft.failure_rate(setting)


def test_simulated_failures_are_reproducible_and_near_the_rate():
    first = [ft.simulated_failure(0.3, i) for i in range(2000)]
    assert first == [ft.simulated_failure(0.3, i) for i in range(2000)]
    share = sum(mode is not None for mode in first) / len(first)
    assert 0.25 < share < 0.35
    assert {"raise", "hang"} <= set(first)
    assert first != [ft.simulated_failure(0.3, i, seed="other") for i in range(2000)]
    assert all(ft.simulated_failure(0.0, i) is None for i in range(200))
    assert all(ft.simulated_failure(1.0, i) is not None for i in range(200))


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs.jpg", "a/../../b.jpg", "", "a\\b.jpg"])
def test_unsafe_object_keys_are_refused(key):
    with pytest.raises(ft.ImageError, match="unsafe object key"):
        ft.safe_key(key)


def test_rescale_regions_map_to_boto_regions():
    assert ft.aws_region("AWS_EU_WEST_1") == "eu-west-1"
    assert ft.aws_region("AWS_US_EAST_2") == "us-east-2"
    assert ft.aws_region("GCP_US_CENTRAL_1") == "us-east-1"


def test_detection_recall_on_the_labelled_photos(detector, truth, tmp_path):
    from face_data.ground_truth import match

    labelled = {name: t["boxes"] for name, t in truth.items() if t["boxes"]}
    assert len(labelled) == 9 and sum(map(len, labelled.values())) == 43
    tp = fp = fn = 0
    for name, boxes in labelled.items():
        record, _ = ft.tag_image(detector, DATA / "images" / name, name, out_dir=tmp_path)
        assert record["status"] == "ok", record["error"]
        hits, false_alarms, misses = match(record["boxes"], boxes, threshold=0.5)
        tp, fp, fn = tp + hits, fp + false_alarms, fn + misses
    assert tp / (tp + fn) >= 0.75
    assert tp / (tp + fp) >= 0.9


def test_output_dir_keeps_the_inputs_folder_clean(tmp_path, face_photo):
    out = tmp_path / "out"
    result = run_worker("--output-dir", str(out), str(face_photo), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{face_photo.name}_tagged.dat", f"{face_photo.name}_tagged.jpg"]
    assert not list(face_photo.parent.glob("*_tagged.*"))
