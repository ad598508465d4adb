"""The COCO download is refused unless its checksum matches (served over real HTTP on loopback)."""

import functools
import hashlib
import http.server
import threading

import pytest

from face_data import coco


@pytest.fixture
def served_file(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "archive.zip").write_bytes(b"not really an archive" * 1000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/archive.zip", (root / "archive.zip").read_bytes()
    server.shutdown()
    server.server_close()


def test_download_keeps_a_file_whose_checksum_matches(served_file, tmp_path):
    url, body = served_file
    dest = tmp_path / "copy.zip"
    coco.download(url, dest, hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body


def test_download_refuses_and_removes_a_file_whose_checksum_differs(served_file, tmp_path):
    url, _ = served_file
    dest = tmp_path / "copy.zip"
    with pytest.raises(ValueError, match="does not match"):
        coco.download(url, dest, coco.SHA256)
    assert not dest.exists()
