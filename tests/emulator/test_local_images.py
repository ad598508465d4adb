"""Dockerfile COPY mapping: which project file runs for a container path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from htc_emulator.local_images import (
    PROJECT_ROOT,
    DockerfileError,
    LocalImages,
    normalize_image_name,
    parse_dockerfile,
)


@pytest.fixture
def context(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('main')\n")
    (tmp_path / "app" / "util.py").write_text("")
    (tmp_path / "tool.py").write_text("")
    (tmp_path / "extra.cfg").write_text("")
    return tmp_path


def write(context: Path, text: str) -> Path:
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(text)
    return dockerfile


def test_copy_lines_map_container_paths_to_project_files(context):
    dockerfile = write(
        context,
        """
# build stage: its files never reach the final image
FROM python:3.12 AS build
COPY extra.cfg /build/extra.cfg

FROM python:3.12-slim
ENV A=1 B="two words"
ENV LEGACY value with spaces
ENV PATH=/custom/bin:$PATH
WORKDIR /srv
COPY --chown=1000:1000 app/ ./app/
COPY tool.py \\
     extra.cfg /opt/
COPY ["tool.py", "/usr/local/bin/tool"]
COPY --from=build /build/extra.cfg /etc/extra.cfg
CMD python /srv/app/main.py
""",
    )
    image = parse_dockerfile("demo:v1", dockerfile, context)
    assert image.host_path("/srv/app/main.py") == str(context / "app" / "main.py")
    assert image.host_path("/srv/app") == str(context / "app")
    assert image.host_path("/opt/tool.py") == str(context / "tool.py")
    assert image.host_path("/opt/extra.cfg") == str(context / "extra.cfg")
    assert image.host_path("/usr/local/bin/tool") == str(context / "tool.py")
    assert image.host_path("/build/extra.cfg") is None and image.host_path("/etc/extra.cfg") is None
    assert image.env == {"A": "1", "B": "two words", "LEGACY": "value with spaces"}
    assert image.default_command == ("/bin/sh", "-c", "python /srv/app/main.py")


def test_commands_run_with_this_interpreter_and_project_files(context):
    image = parse_dockerfile(
        "demo:v1",
        write(context, 'FROM x\nCOPY app/main.py /opt/main.py\nENTRYPOINT ["python3"]\nCMD ["/opt/main.py"]\n'),
        context,
    )
    assert image.local_command(["python", "/opt/main.py", "--flag", "/opt/other"]) == [
        sys.executable,
        str(context / "app" / "main.py"),
        "--flag",
        "/opt/other",
    ]
    assert image.local_command(["/usr/local/bin/python3.12", "-c", "pass"]) == [sys.executable, "-c", "pass"]
    assert image.local_command(["sh", "-c", "python /opt/main.py"]) == ["sh", "-c", "python /opt/main.py"]
    assert image.local_command([]) == [sys.executable, str(context / "app" / "main.py")]
    bare = parse_dockerfile("bare:v1", write(context, "FROM x\n"), context)
    with pytest.raises(DockerfileError):
        bare.local_command([])


@pytest.mark.parametrize(
    "line", ["COPY missing.py /opt/", "COPY ../outside.py /opt/", "COPY /etc/passwd /opt/", "COPY onlyone"]
)
def test_copies_that_cannot_be_mapped_are_errors(context, line):
    with pytest.raises(DockerfileError):
        parse_dockerfile("demo:v1", write(context, f"FROM x\n{line}\n"), context)


def test_local_image_names_and_paths(context):
    local_images = LocalImages(project_root=context)
    local_images.register("demo", write(context, "FROM x\nCOPY tool.py /t.py\n"))
    assert local_images.names() == ["demo:latest"] and local_images.get("demo").name == "demo:latest"
    assert local_images.get("demo:latest").repository == "demo"
    assert normalize_image_name("reg/team/app") == "reg/team/app:latest"
    for bad in ("Upper:v1", "bad name:v1"):
        with pytest.raises(DockerfileError):
            local_images.register(bad, context / "Dockerfile")
    with pytest.raises(DockerfileError):
        local_images.register("ok:v1", "no/such/Dockerfile")


def test_the_tutorial_dockerfile_maps_the_worker():
    image = LocalImages().register("opencv-htc-tutorial:v1", "docker/Dockerfile")
    assert image.host_path("/opt/face_tagger.py") == str(PROJECT_ROOT / "face_tagger" / "face_tagger.py")
    assert image.local_command(["python", "/opt/face_tagger.py"])[1] == str(
        PROJECT_ROOT / "face_tagger" / "face_tagger.py"
    )
