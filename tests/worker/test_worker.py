"""The face_tagger worker on local files: cascade, detection, outputs, chunking, failure simulation."""

import json
import resource
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from face_tagger import face_tagger as ft
from face_tagger import htc_worker as hw

ROOT = Path(__file__).resolve().parents[2]
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
    return subprocess.run(
        [sys.executable, str(WORKER), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


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
    with pytest.raises(hw.UsageError, match="scaleFactor"):
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


@pytest.mark.slow
def test_scale_factor_comes_from_flag_or_env(tmp_path, face_photo):
    out = ("--output-dir", str(tmp_path))
    coarse = run_worker("--json", *out, "--scale-factor", "1.5", str(face_photo), cwd=tmp_path)
    default = run_worker("--json", *out, str(face_photo), cwd=tmp_path)
    env_run = run_worker(
        "--json", *out, str(face_photo), cwd=tmp_path, env={"SCALE_FACTOR": "1.5", "PATH": "/usr/bin:/bin"}
    )
    assert json.loads(coarse.stdout)["boxes"] != json.loads(default.stdout)["boxes"]
    assert json.loads(coarse.stdout)["boxes"] == json.loads(env_run.stdout)["boxes"]
    bad = run_worker(str(face_photo), cwd=tmp_path, env={"SCALE_FACTOR": "big", "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "scale-factor" in bad.stderr


def test_batch_mode_names_every_missing_setting(tmp_path):
    result = run_worker(cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == hw.EXIT_USAGE
    assert "IMG_OBJKEY_LIST" in result.stderr and "BATCH_JOB_ARRAY_SIZE" in result.stderr
    assert "Traceback" not in result.stderr


def test_single_mode_true_without_an_argument_says_what_is_missing(tmp_path):
    result = run_worker(cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HTC_INPUT_IMAGE": "true"})
    assert result.returncode == hw.EXIT_USAGE
    assert "needs exactly one argument" in result.stderr


@given(st.integers(0, 3000), st.integers(1, 1000))
def test_chunks_cover_the_list_exactly_once(total, batch_size):
    bounds = [hw.chunk_bounds(total, batch_size, i) for i in range(batch_size)]
    covered = [n for start, end in bounds for n in range(start, end)]
    assert covered == list(range(total))  # contiguous, in order, disjoint, complete
    sizes = {end - start for start, end in bounds}
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("total,batch_size", [(5003, 1000), (1500, 1000), (1999, 1000), (10, 3), (999, 1000)])
def test_the_originals_failing_splits_now_lose_nothing(total, batch_size):
    sizes = [end - start for start, end in (hw.chunk_bounds(total, batch_size, i) for i in range(batch_size))]
    assert sum(sizes) == total and min(sizes) >= total // batch_size


@pytest.mark.parametrize("index,batch_size", [(-1, 10), (10, 10), (0, 0)])
def test_out_of_range_index_is_a_clear_error(index, batch_size):
    with pytest.raises(hw.UsageError, match="AWS_BATCH_JOB_ARRAY_INDEX|BATCH_JOB_ARRAY_SIZE"):
        hw.chunk_bounds(10, batch_size, index)


def test_missing_index_with_a_batch_of_one_is_index_zero(monkeypatch):
    monkeypatch.delenv("AWS_BATCH_JOB_ARRAY_INDEX", raising=False)
    assert hw.array_index(1) == 0
    with pytest.raises(hw.UsageError, match="AWS_BATCH_JOB_ARRAY_INDEX"):
        hw.array_index(2)


@pytest.mark.parametrize(
    "setting,rate",
    [
        (None, 0),
        ("", 0),
        ("false", 0),
        ("0", 0),
        ("FALSE", 0),
        ("true", hw.DEFAULT_FAILURE_RATE),
        ("0.3", 0.3),
        ("1", 1.0),
    ],
)
def test_failure_setting_is_parsed(setting, rate):
    assert hw.failure_rate(setting) == pytest.approx(rate)


@pytest.mark.parametrize("setting", ["sometimes", "1.5", "-0.1"])
def test_bad_failure_setting_is_refused(setting):
    with pytest.raises(hw.UsageError, match="SIMULATE_FAILURES"):
        hw.failure_rate(setting)


def test_simulated_failures_are_reproducible_and_near_the_rate():
    first = [hw.simulated_failure(0.3, i) for i in range(2000)]
    assert first == [hw.simulated_failure(0.3, i) for i in range(2000)]
    share = sum(mode is not None for mode in first) / len(first)
    assert 0.25 < share < 0.35
    assert {"raise", "hang"} <= set(first)
    assert first != [hw.simulated_failure(0.3, i, seed="other") for i in range(2000)]
    assert all(hw.simulated_failure(0.0, i) is None for i in range(200))
    assert all(hw.simulated_failure(1.0, i) is not None for i in range(200))


def test_a_job_stopped_before_its_share_exits_as_sigterm_says_not_by_the_signal(tmp_path):
    # A container's first process ignores SIGTERM it has no handler for, so a job stopped while it hangs on
    # purpose (before it reaches storage) would wait out the grace period for SIGKILL: it must handle SIGTERM.
    hanging = next(i for i in range(100) if hw.simulated_failure(1.0, i) == "hang")
    env = {
        "PATH": "/usr/bin:/bin",
        "IMG_OBJKEY_LIST": "list.dat",
        "BATCH_JOB_ARRAY_SIZE": "100",
        "AWS_BATCH_JOB_ARRAY_INDEX": str(hanging),
        "SIMULATE_FAILURES": "1",
    }
    worker = subprocess.Popen(
        [sys.executable, str(WORKER)], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert "simulated hang" in worker.stdout.readline()
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert worker.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err, (worker.returncode, err)


@pytest.mark.slow
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


# --- images that would exhaust memory, images cut short, settings out of range


def blank_png(path: Path, width: int, height: int) -> Path:
    """A valid black-and-white PNG of any size that stays small on disk (its rows compress to nothing)."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte, then 1 bit a pixel
    packer = zlib.compressobj(9)
    rows = b"".join(packer.compress(row * min(1000, height - n)) for n in range(0, height, 1000)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def capped_memory():
    """Run the worker with 3 GB of address space.

    A decoded 30,000 x 30,000 image then fails instead of taking the machine.
    """
    limit = 3 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.slow
def test_an_image_too_large_for_memory_is_refused_from_its_header(tmp_path, face_photo):
    small = blank_png(tmp_path / "small.png", 300, 200)
    assert cv2.imread(str(small)).shape == (200, 300, 3)  # the generator writes real PNGs
    huge = blank_png(tmp_path / "huge.png", 30000, 30000)
    assert huge.stat().st_size < 200_000
    result = subprocess.run(
        [sys.executable, str(WORKER), "--json", "--output-dir", str(tmp_path / "out"), str(huge), str(face_photo)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=capped_memory,
    )
    assert result.returncode == 1, result.stderr  # one image failed, the other went on
    refused, good = map(json.loads, result.stdout.splitlines())
    assert refused["status"] == "error" and refused["faces"] is None
    assert "image too large: 30000 x 30000 pixels is over the limit of 50,000,000" in refused["error"]
    assert good["status"] == "ok" and good["faces"] >= 1


@pytest.mark.slow
def test_the_pixel_limit_is_a_setting_and_covers_jpeg(tmp_path, face_photo):
    height, width = cv2.imread(str(face_photo)).shape[:2]
    env = {"PATH": "/usr/bin:/bin", "MAX_IMAGE_PIXELS": str(width * height - 1)}
    result = run_worker("--json", "--output-dir", str(tmp_path), str(face_photo), cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert f"image too large: {width} x {height} pixels" in json.loads(result.stdout)["error"]
    env["MAX_IMAGE_PIXELS"] = str(width * height)
    assert run_worker("--output-dir", str(tmp_path), str(face_photo), cwd=tmp_path, env=env).returncode == 0


@pytest.mark.parametrize("fraction,size", [(1 / 3, None), (None, 600), (2 / 3, None)])
def test_a_truncated_jpeg_is_an_error_not_zero_faces(tmp_path, detector, fraction, size):
    data = (DATA / "images" / "2008_004176.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: size or int(len(data) * fraction)])
    assert cv2.imread(str(cut)) is not None  # OpenCV alone decodes it, grey where the data stops
    record, outputs = ft.tag_image(detector, cut, cut.name)
    assert record["status"] == "error" and record["faces"] is None and not outputs
    assert "truncated" in record["error"]


def test_progressive_and_truncated_progressive_jpegs(tmp_path, detector, face_photo):
    progressive = tmp_path / "progressive.jpg"
    cv2.imwrite(str(progressive), cv2.imread(str(face_photo)), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ft.tag_image(detector, progressive, "p")[0]["status"] == "ok"
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(progressive.read_bytes()[: progressive.stat().st_size // 2])
    assert "truncated" in ft.tag_image(detector, cut, "c")[0]["error"]


def test_a_truncated_png_is_an_error(tmp_path, detector, face_photo):
    whole = tmp_path / "whole.png"
    cv2.imwrite(str(whole), cv2.imread(str(face_photo)))
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    record, _ = ft.tag_image(detector, cut, cut.name)
    assert record["status"] == "error" and "truncated" in record["error"]


def test_every_photo_of_the_data_set_passes_the_checks():
    for path in sorted((DATA / "images").iterdir()):
        ft.check_image_file(path, ft.DEFAULT_MAX_IMAGE_PIXELS)


@pytest.mark.parametrize(
    "settings,named",
    [
        ({"SCALE_FACTOR": "inf"}, "SCALE_FACTOR"),
        ({"SCALE_FACTOR": "1e308"}, "SCALE_FACTOR"),
        ({"SCALE_FACTOR": "nan"}, "SCALE_FACTOR"),
        ({"SCALE_FACTOR": "1.0000001"}, "SCALE_FACTOR"),
        ({"SCALE_FACTOR": "-1.2"}, "SCALE_FACTOR"),
        ({"SCALE_FACTOR": "١.٢"}, "SCALE_FACTOR"),
        ({"OPENCV_THREADS": "1e308"}, "OPENCV_THREADS"),
        ({"OPENCV_THREADS": "100000"}, "OPENCV_THREADS"),
        ({"OPENCV_THREADS": "٣"}, "OPENCV_THREADS"),
        ({"MAX_IMAGE_PIXELS": "nan"}, "MAX_IMAGE_PIXELS"),
        ({"MAX_IMAGE_PIXELS": "0"}, "MAX_IMAGE_PIXELS"),
        ({"BATCH_JOB_ARRAY_SIZE": "inf", "IMG_OBJKEY_LIST": "l.dat"}, "BATCH_JOB_ARRAY_SIZE"),
        ({"BATCH_JOB_ARRAY_SIZE": "9" * 5000, "IMG_OBJKEY_LIST": "l.dat"}, "BATCH_JOB_ARRAY_SIZE"),
        (
            {"BATCH_JOB_ARRAY_SIZE": "2", "AWS_BATCH_JOB_ARRAY_INDEX": "nan", "IMG_OBJKEY_LIST": "l.dat"},
            "AWS_BATCH_JOB_ARRAY_INDEX",
        ),
        (
            {"BATCH_JOB_ARRAY_SIZE": "1", "SIMULATE_HANG_SECONDS": "inf", "IMG_OBJKEY_LIST": "l.dat"},
            "SIMULATE_HANG_SECONDS",
        ),
        ({"BATCH_JOB_ARRAY_SIZE": "1", "SIMULATE_FAILURES": "nan", "IMG_OBJKEY_LIST": "l.dat"}, "SIMULATE_FAILURES"),
    ],
)
def test_settings_out_of_range_are_usage_errors_at_start_up(tmp_path, face_photo, settings, named):
    args = [] if "IMG_OBJKEY_LIST" in settings else [str(face_photo)]
    result = subprocess.run(
        [sys.executable, str(WORKER), "--output-dir", str(tmp_path), *args],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", **settings},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == hw.EXIT_USAGE, result.stdout + result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr
    assert not result.stdout and not list(tmp_path.glob("*_tagged.*"))


@pytest.mark.parametrize("value", ["1.01", "1.2", "3", " 1.5 "])
def test_sensible_scale_factors_are_accepted(value):
    assert ft.scale_factor_setting(value) == float(value)
