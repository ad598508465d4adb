"""Tests for face_data.

The fetched set's key facts, fetch idempotence, box-carrying augmentation, scale-up determinism, scoring.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from face_data import augment, fetch, ground_truth, scale_up
from face_data.ground_truth import iou, match, precision_recall
from face_data.registries import FetchError
from face_data.sources import Photo, Source, all_sources, read_dlib_boxes

DATA = Path(__file__).resolve().parents[2] / "data"
needs_data = pytest.mark.skipif(
    not (DATA / "ground_truth.json").is_file(), reason="data/ not fetched: run `make data` (python -m face_data.fetch)"
)


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


# --- the fetched data set -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fetched() -> dict:
    return ground_truth.load(DATA / "ground_truth.json")["images"]


@needs_data
def test_fetched_set_has_the_43_dlib_boxes_on_9_photos(fetched):
    labelled = {name: e["boxes"] for name, e in fetched.items() if e["boxes"]}
    assert len(labelled) == 9
    assert sum(map(len, labelled.values())) == 43
    assert all(e["source"].startswith("debian:libdlib") for name, e in fetched.items() if name in labelled)
    assert labelled["2007_007763.jpg"][0] == [194, 90, 37, 37]  # XML: top=90 left=194 -> [left, top, w, h]


@needs_data
def test_fetched_counts_agree_with_boxes_and_negatives_are_empty(fetched):
    for name, e in fetched.items():
        assert e["faces"] is None or (isinstance(e["faces"], int) and e["faces"] >= 0), name
        if e["boxes"] is not None:
            assert e["faces"] == len(e["boxes"]), name
            assert all(len(b) == 4 and all(isinstance(v, int) for v in b) and b[2] > 0 and b[3] > 0 for b in e["boxes"])
    frames = [e for name, e in fetched.items() if name.startswith("frame_")]
    assert len(frames) == 151
    assert all(e["faces"] == 0 and e["boxes"] == [] for e in frames)
    assert fetched["dogs.jpg"]["faces"] == 0 and fetched["dogs.jpg"]["boxes"] == []
    assert fetched["bald_guys.jpg"]["faces"] == 24 and fetched["bald_guys.jpg"]["boxes"] is None
    assert sum(name.startswith("johns_") for name in fetched) == 55


@needs_data
def test_every_fetched_file_matches_its_sha256_and_decodes(fetched):
    on_disk = {p.name for p in (DATA / "images").iterdir() if not p.name.endswith(".partial")}
    assert set(fetched) <= on_disk
    for name, e in fetched.items():
        assert ground_truth.sha256_file(DATA / "images" / name) == e["sha256"], name
    assert cv2.imread(str(DATA / "images" / "skimage_astronaut.png")) is not None


@needs_data
def test_second_fetch_only_verifies(tmp_path):
    def no_network(tmp):
        raise AssertionError("an intact data set must not be downloaded again")

    shutil.copytree(DATA, tmp_path / "data")
    manifest = tmp_path / "data" / "ground_truth.json"
    before = (
        manifest.read_bytes(),
        manifest.stat().st_mtime_ns,
        sorted(p.name for p in (tmp_path / "data/images").iterdir()),
    )
    present = {e["source"] for e in ground_truth.load(manifest)["images"].values()}
    sources = [Source(s.key, no_network) for s in all_sources() if any(label.startswith(s.key) for label in present)]
    _, outcome = fetch.update(tmp_path / "data", sources)
    assert outcome == {"verified": [s.key for s in sources], "fetched": [], "skipped": []}
    after = (
        manifest.read_bytes(),
        manifest.stat().st_mtime_ns,
        sorted(p.name for p in (tmp_path / "data/images").iterdir()),
    )
    assert after == before


# --- fetch logic, with stand-in sources (no network) ----------------------------------------------------------------


def test_fetch_refetches_only_damaged_sources_and_skips_failing_ones(tmp_path, capsys):
    calls = {"a": 0, "b": 0}
    pixels = encode(np.full((8, 8, 3), 200, np.uint8))

    def fetch_a(tmp):
        calls["a"] += 1
        return "test:a@1", [Photo("a_one.png", pixels, 1, None), Photo("a_empty.png", pixels, 0, [])]

    def fetch_b(tmp):
        calls["b"] += 1
        return "test:b@1", [Photo("b_one.png", pixels, 2, [[1, 1, 2, 2], [4, 4, 2, 2]])]

    def unavailable(tmp):
        raise FetchError("npm not found")

    sources = [Source("test:a", fetch_a), Source("test:b", fetch_b), Source("test:c", unavailable)]
    images, outcome = fetch.update(tmp_path, sources)
    assert outcome == {"verified": [], "fetched": ["test:a@1", "test:b@1"], "skipped": ["test:c"]}
    assert "skipped test:c: npm not found" in capsys.readouterr().err
    assert images["b_one.png"]["faces"] == 2 and images["a_empty.png"]["boxes"] == []
    assert ground_truth.load(tmp_path / "ground_truth.json")["images"] == images

    mtime = (tmp_path / "ground_truth.json").stat().st_mtime_ns
    _, outcome = fetch.update(tmp_path, sources)
    assert outcome["verified"] == ["test:a", "test:b"] and calls == {"a": 1, "b": 1}
    assert (tmp_path / "ground_truth.json").stat().st_mtime_ns == mtime

    (tmp_path / "images" / "b_one.png").write_bytes(b"damaged")
    _, outcome = fetch.update(tmp_path, sources)
    assert outcome["fetched"] == ["test:b@1"] and calls == {"a": 1, "b": 2}
    assert (tmp_path / "images" / "b_one.png").read_bytes() == pixels


def test_fetch_with_every_source_failing_leaves_no_manifest(tmp_path):
    def unavailable(tmp):
        raise FetchError("offline")

    images, outcome = fetch.update(tmp_path, [Source("test:a", unavailable)])
    assert images == {} and outcome["skipped"] == ["test:a"]
    assert not (tmp_path / "ground_truth.json").exists()


def test_dlib_xml_boxes_become_left_top_width_height_without_ignored_ones(tmp_path):
    xml = tmp_path / "testing.xml"
    xml.write_text(
        "<dataset><images>"
        "<image file='a.jpg'><box top='10' left='20' width='30' height='40'/>"
        "<box top='1' left='2' width='3' height='4' ignore='1'/></image>"
        "<image file='b.jpg'></image>"
        "</images></dataset>"
    )
    assert read_dlib_boxes(xml) == {"a.jpg": [[20, 10, 30, 40]], "b.jpg": []}


# --- augmentation geometry ------------------------------------------------------------------------------------------

BOX = [20, 30, 40, 20]  # x, y, w, h on a 200x100 image


def white_box_image() -> np.ndarray:
    image = np.zeros((100, 200, 3), np.uint8)
    x, y, w, h = BOX
    image[y : y + h, x : x + w] = 255
    return image


def params(crop=None, flip=False, size=(200, 100)) -> augment.Params:
    return augment.Params(crop=crop, flip=flip, size=size, contrast=1.0, brightness=0.0, quality=95)


def white_extent(image: np.ndarray) -> list[int]:
    return list(cv2.boundingRect((image[:, :, 0] > 127).astype(np.uint8)))


@pytest.mark.parametrize(
    "p, expected",
    [
        (params(), [20, 30, 40, 20]),
        (params(flip=True), [140, 30, 40, 20]),  # 200 - (20 + 40)
        (params(crop=(10, 20, 100, 60), size=(100, 60)), [10, 10, 40, 20]),
        (params(crop=(10, 20, 100, 60), flip=True, size=(100, 60)), [50, 10, 40, 20]),  # 100 - (10 + 40)
        (params(crop=(10, 20, 100, 60), flip=True, size=(200, 120)), [100, 20, 80, 40]),  # then x2
        (params(size=(100, 50)), [10, 15, 20, 10]),
    ],
)
def test_boxes_move_exactly_with_the_pixels(p, expected):
    assert augment.apply_boxes([BOX], (200, 100), p) == [expected]
    assert white_extent(augment.apply_image(white_box_image(), p)) == expected


def test_crop_drops_boxes_whose_centre_leaves_or_that_are_mostly_cut_and_clips_the_rest():
    size = (200, 100)
    # Centre (40, 40) is outside a crop starting at x=45.
    assert augment.apply_boxes([BOX], size, params(crop=(45, 0, 100, 100), size=(100, 100))) == []
    # Centre inside, 30 of 40 columns visible (75%): kept and clipped to the crop.
    assert augment.apply_boxes([BOX], size, params(crop=(30, 0, 100, 100), size=(100, 100))) == [[0, 30, 30, 20]]
    # Centre inside, but a 16-px-wide crop shows only 40% of the box: dropped.
    assert augment.apply_boxes([BOX], size, params(crop=(32, 0, 16, 100), size=(16, 100))) == []


def test_counts_follow_boxes_and_become_unknown_only_when_a_crop_may_cut_unlocated_faces():
    size, crop = (200, 100), params(crop=(45, 0, 100, 100), size=(100, 100))
    assert augment.apply_truth(1, [BOX], size, crop) == (0, [])
    assert augment.apply_truth(0, [], size, crop) == (0, [])
    assert augment.apply_truth(3, None, size, crop) == (None, None)
    assert augment.apply_truth(3, None, size, params(flip=True, size=(300, 150))) == (3, None)
    assert augment.apply_truth(None, None, size, params()) == (None, None)


def test_brightness_and_contrast_are_applied_with_saturation():
    p = augment.Params(crop=None, flip=False, size=(200, 100), contrast=1.2, brightness=10.0, quality=90)
    out = augment.apply_image(white_box_image(), p)
    assert out[0, 0, 0] == 10 and out[40, 40, 0] == 255


# --- scale-up -------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_src(tmp_path) -> Path:
    """Three synthetic photos: one with a labelled box, one counted only, one negative."""
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    entries = {}
    for name, faces, boxes in [("labelled.png", 1, [[60, 40, 50, 50]]), ("counted.jpg", 2, None), ("empty.png", 0, [])]:
        data = encode(rng.integers(0, 256, (180, 240, 3), dtype=np.uint8), Path(name).suffix)
        (src / "images" / name).write_bytes(data)
        entries[name] = {
            "source": "test",
            "sha256": ground_truth.sha256_file(src / "images" / name),
            "faces": faces,
            "boxes": boxes,
        }
    ground_truth.save(entries, src / "ground_truth.json")
    return src


def tree_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_scale_up_is_byte_identical_for_the_same_seed(small_src, tmp_path):
    scale_up.derive(small_src, tmp_path / "a", 12, seed=0)
    scale_up.derive(small_src, tmp_path / "b", 12, seed=0)
    scale_up.derive(small_src, tmp_path / "c", 12, seed=1)
    a, b, c = (tree_bytes(tmp_path / d) for d in "abc")
    assert len(a) == 13 and a == b
    assert a != c


def test_scale_up_ground_truth_is_consistent_and_reruns_leave_no_stale_images(small_src, tmp_path):
    dest = tmp_path / "out"
    scale_up.main(["--count", "12", "--src", str(small_src), "--dest", str(dest)])
    derived = ground_truth.load(dest / "ground_truth.json")["images"]
    assert sorted(derived) == sorted(p.name for p in (dest / "images").iterdir())
    assert {e["source"] for e in derived.values()} == {
        "scale_up:counted.jpg",
        "scale_up:empty.png",
        "scale_up:labelled.png",
    }
    for name, e in derived.items():
        assert ground_truth.sha256_file(dest / "images" / name) == e["sha256"]
        h, w = cv2.imread(str(dest / "images" / name)).shape[:2]
        if e["boxes"] is not None:
            assert e["faces"] == len(e["boxes"])
            assert all(0 <= x and 0 <= y and x + bw <= w and y + bh <= h for x, y, bw, bh in e["boxes"])
        if e["source"] == "scale_up:empty.png":
            assert (e["faces"], e["boxes"]) == (0, [])
        if e["source"] == "scale_up:counted.jpg":
            assert e["boxes"] is None and e["faces"] in (2, None)
    scale_up.derive(small_src, dest, 5)
    assert len(list((dest / "images").iterdir())) == 5


def test_scale_up_refuses_to_write_into_its_source(small_src):
    before = tree_bytes(small_src)
    with pytest.raises(ValueError, match="is the source data set"):
        scale_up.derive(small_src, small_src, 5)
    assert tree_bytes(small_src) == before


# --- scoring --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 10, 10], 50 / 150),
        ([0, 0, 10, 10], [0, 0, 20, 20], 100 / 400),
        ([0, 0, 10, 10], [10, 0, 10, 10], 0.0),  # touching edges
        ([0, 0, 10, 10], [30, 30, 5, 5], 0.0),
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),
    ],
)
def test_iou(a, b, expected):
    assert iou(a, b) == pytest.approx(expected)
    assert iou(b, a) == pytest.approx(expected)


def test_match_is_one_to_one_greedy_by_iou_and_threshold_inclusive():
    truth = [[0, 0, 10, 10], [100, 100, 20, 20]]
    assert match([[1, 0, 10, 10], [100, 100, 20, 20]], truth) == (2, 0, 0)
    assert match([[0, 0, 10, 10], [1, 0, 10, 10]], truth) == (1, 1, 1)  # two detections, one face
    assert match([], truth) == (0, 0, 2)
    assert match(np.array([[0, 0, 10, 10]]), []) == (0, 1, 0)
    assert match([[0, 0, 10, 20]], [[0, 0, 10, 10]], threshold=0.5) == (1, 0, 0)  # IoU exactly 0.5
    assert match([[0, 0, 10, 20]], [[0, 0, 10, 10]], threshold=0.51) == (0, 1, 1)
    # Y fits face A at 0.82 and B at 0.67; X fits A at 0.54 (B at 0.25). Best IoU first pairs Y with A, leaving X
    # unmatched, whichever detection is listed first (in-order matching would give X-A, Y-B for [x, y]).
    a, b = [0, 0, 10, 10], [3, 0, 10, 10]
    x, y = [-3, 0, 10, 10], [1, 0, 10, 10]
    assert match([x, y], [a, b]) == match([y, x], [a, b]) == (1, 1, 1)


def test_precision_recall_counts_only_images_with_known_boxes_that_were_detected():
    truth = {
        "two.jpg": {"faces": 2, "boxes": [[0, 0, 10, 10], [50, 50, 10, 10]]},
        "empty.jpg": {"faces": 0, "boxes": []},
        "counted.jpg": {"faces": 3, "boxes": None},
        "not_run.jpg": {"faces": 1, "boxes": [[0, 0, 10, 10]]},
    }
    detections = {"two.jpg": [[0, 0, 10, 10]], "empty.jpg": [[5, 5, 10, 10]], "counted.jpg": [[0, 0, 1, 1]] * 3}
    score = precision_recall(detections, truth)
    assert (score.images, score.tp, score.fp, score.fn) == (2, 1, 1, 1)
    assert (score.precision, score.recall) == (0.5, 0.5)
    assert precision_recall({}, truth) == (0, 0, 0, 0, 1.0, 1.0)


def test_ground_truth_save_load_round_trip_and_version_check(tmp_path):
    images = {
        "b.jpg": {"source": "s", "sha256": "0", "faces": None, "boxes": None},
        "a.jpg": {"source": "s", "sha256": "1", "faces": 1, "boxes": [[1, 2, 3, 4]]},
    }
    ground_truth.save(images, tmp_path / "gt.json")
    assert ground_truth.load(tmp_path / "gt.json") == {"version": 1, "images": images}
    (tmp_path / "bad.json").write_text(json.dumps({"version": 2, "images": {}}))
    with pytest.raises(ValueError):
        ground_truth.load(tmp_path / "bad.json")
