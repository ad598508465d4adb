"""Benchmark: per-image cost of the face_tagger worker against the original tutorial's approach.

Both run in this process over the same images and the same S3 server (moto, on loopback):

* original: the classifier is re-created for every image, and every file costs one
  storage round trip in a fresh process (the original spawned ``htcctl`` per file:
  one download per image, one upload per result file);
* worker:   the classifier is loaded once, and a chunk's downloads and uploads go
  concurrently through one S3 client (``face_tagger.run_htc``).

Usage: .venv/bin/python bench/worker.py [--count 40] [--images data/images]
"""

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
from moto.server import ThreadedMotoServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.results import Figure, OtherWork, ratio, record  # noqa: E402
from face_tagger import face_tagger as ft  # noqa: E402
from face_tagger import htc_worker as hw  # noqa: E402

BUCKET = "bench-storage"
SHARED, TASK = "projects/p/shared/", "projects/p/tasks/t/"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
# One file transfer in a fresh interpreter: the stand-in for one `htcctl download|upload` call.
TRANSFER = (
    "import sys, boto3; op, bucket, key, path = sys.argv[1:]; s3 = boto3.client('s3', region_name='us-east-1');"
    "s3.download_file(bucket, key, path) if op == 'get' else s3.upload_file(path, bucket, key)"
)


def original_chunk(keys: list[str], workdir: Path, env: dict) -> None:
    """The original per-image loop: spawn a download, load the cascade, detect, spawn an upload per result."""
    cascade = os.path.join(cv2.data.haarcascades, ft.DEFAULT_CASCADE)
    for key in keys:
        local = workdir / key
        subprocess.run([sys.executable, "-c", TRANSFER, "get", BUCKET, SHARED + key, str(local)], env=env, check=True)
        classifier = cv2.CascadeClassifier(cascade)
        image = cv2.imread(str(local))
        boxes = classifier.detectMultiScale(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), 1.2, 5, minSize=(30, 30))
        if len(boxes):
            for out in ft.write_outputs(local, image, [list(map(int, b)) for b in boxes]):
                subprocess.run(
                    [sys.executable, "-c", TRANSFER, "put", BUCKET, TASK + out.name, str(out)], env=env, check=True
                )


def per_image_seconds(fn, count: int) -> float:
    """Run ``fn`` once with its printing silenced; seconds per image."""
    start = time.perf_counter()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        fn()
    return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--images", type=Path, default=ROOT / "data" / "images")
    args = parser.parse_args()
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.count]
    if not images:
        sys.exit(f"no images in {args.images}: run `make data` first")
    other_work = OtherWork()
    cv2.setNumThreads(1)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"}
    os.environ.update(settings)
    env = dict(os.environ)
    try:
        s3 = hw.s3_client(CREDENTIALS)
        s3.create_bucket(Bucket=BUCKET)
        for path in images:
            s3.upload_file(str(path), BUCKET, SHARED + path.name)
        keys = [p.name for p in images]
        storage = hw.HtcStorage(hw.Location(s3, BUCKET, SHARED), hw.Location(s3, BUCKET, TASK))
        print(f"{len(keys)} images, one chunk, OpenCV {cv2.__version__}, 1 OpenCV thread")

        with tempfile.TemporaryDirectory() as tmp:
            original = per_image_seconds(lambda: original_chunk(keys, Path(tmp), env), len(keys))
        worker = per_image_seconds(
            lambda: ft.run_htc(ft.FaceDetector.load(), keys, storage, None, "bench.jsonl", {}), len(keys)
        )
        print(f"original (cascade per image, process per file): {original * 1000:8.1f} ms/image")
        print(f"worker (cascade once, concurrent transfers):    {worker * 1000:8.1f} ms/image")
        print(f"speed-up: {original / worker:.1f}x (original / worker, same images, same server)")
    finally:
        server.stop()
    figures = [
        ratio("original / worker, per image", original / worker, better="higher"),
        Figure("worker, per image", worker * 1000, "ms"),
        Figure("original, per image", original * 1000, "ms"),
    ]
    # moto's own server, no emulator: nothing of the emulator's behaviour is measured here.
    record("worker", figures, settings={"images": len(keys), "server": "moto"}, others=other_work)


if __name__ == "__main__":
    main()
