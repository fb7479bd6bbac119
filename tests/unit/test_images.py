"""hack/images: refs, content keys and the pause binary, without building an image.

``build.sh --plan`` computes every ref and key (no root, no buildah, no network);
these tests check that the refs can be pinned by a kubelet (never ``latest``), that
a key changes exactly when an input of that image (or of its base) changes, and
that the pause process behaves like Kubernetes' own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "hack" / "images"
BUILD = IMAGES / "build.sh"
ALL = ["pause", "debian-python", "tritonserver-cpu", "turnpike"]

needs_tools = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("bash", "gcc", "jq", "sha256sum")),
    reason="build.sh --plan needs bash, gcc, jq and sha256sum",
)


def plan(repo: Path, cache: Path) -> dict[str, dict[str, object]]:
    env = {**os.environ, "TURNPIKE_CACHE": str(cache)}
    out = subprocess.run(
        ["bash", str(repo / "hack" / "images" / "build.sh"), "--plan"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    ).stdout
    return {entry["image"]: entry for entry in json.loads(out)}


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The files build.sh reads, copied: inputs can be changed without touching the tree."""
    copy = tmp_path / "repo"
    (copy / "hack").mkdir(parents=True)
    shutil.copytree(IMAGES, copy / "hack" / "images", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        REPO / "operator",
        copy / "operator",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml"):
        shutil.copy2(REPO / name, copy / name)
    return copy


def test_build_script_is_strict_bash() -> None:
    text = BUILD.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    for script in (BUILD, IMAGES / "debian-python" / "rootfs.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert os.access(script, os.X_OK), f"{script} is not executable"


@needs_tools
def test_plan_refs_pin_content(tmp_path: Path) -> None:
    images = plan(REPO, tmp_path / "cache")
    assert sorted(images) == sorted(ALL)
    for name, entry in images.items():
        key = str(entry["key"])
        ref = str(entry["name"])
        assert re.fullmatch(r"[0-9a-f]{64}", key), entry
        repository, tag = ref.rsplit(":", 1)
        assert repository == f"turnpike.local/{name}", ref
        assert tag != "latest" and tag.endswith("-" + key[:12]), ref
        assert entry["archive"] == str(
            tmp_path / "cache" / "images" / f"{name}-{key}" / "image.tar"
        )
        assert entry["cached"] is False
    assert (
        images["pause"]["name"] == f"turnpike.local/pause:3.10-{str(images['pause']['key'])[:12]}"
    )
    assert str(images["tritonserver-cpu"]["name"]).split(":")[1].startswith("2.51-")
    # Same inputs, same keys.
    assert plan(REPO, tmp_path / "cache") == images


@needs_tools
@pytest.mark.parametrize(
    ("path", "changed"),
    [
        ("hack/images/pause/pause.c", {"pause"}),
        (
            "hack/images/debian-python/packages.txt",
            {"debian-python", "tritonserver-cpu", "turnpike"},
        ),
        ("hack/images/debian-python/rootfs.sh", {"debian-python", "tritonserver-cpu", "turnpike"}),
        (
            "hack/images/debian-python/Containerfile",
            {"debian-python", "tritonserver-cpu", "turnpike"},
        ),
        ("hack/images/tritonserver-cpu/Containerfile", {"tritonserver-cpu"}),
        ("hack/images/tritonserver-cpu/mpi-rank-report", {"tritonserver-cpu"}),
        ("Dockerfile", {"turnpike"}),
        (".dockerignore", {"turnpike"}),
        ("operator/turnpike/__init__.py", {"turnpike"}),
        ("hack/images/smoke.py", set()),  # checks the images, is not in them
    ],
)
def test_a_key_changes_with_its_inputs_only(
    repo_copy: Path, tmp_path: Path, path: str, changed: set[str]
) -> None:
    before = plan(repo_copy, tmp_path / "cache")
    with open(repo_copy / path, "a") as f:
        f.write("\n# changed\n")
    after = plan(repo_copy, tmp_path / "cache")
    assert {name for name in ALL if before[name]["key"] != after[name]["key"]} == changed


@needs_tools
def test_pytriton_pin_is_an_input(repo_copy: Path, tmp_path: Path) -> None:
    before = plan(repo_copy, tmp_path / "cache")
    pyproject = repo_copy / "pyproject.toml"
    text = pyproject.read_text()
    assert "nvidia-pytriton==" in text
    pyproject.write_text(re.sub(r"nvidia-pytriton==[^\"]+", "nvidia-pytriton==9.9.9", text))
    after = plan(repo_copy, tmp_path / "cache")
    assert before["tritonserver-cpu"]["key"] != after["tritonserver-cpu"]["key"]
    assert before["pause"]["key"] == after["pause"]["key"]
    assert before["debian-python"]["key"] == after["debian-python"]["key"]


def test_containerfiles() -> None:
    triton = (IMAGES / "tritonserver-cpu" / "Containerfile").read_text()
    assert "USER 1000:1000" in triton
    assert 'CMD ["tritonserver", "--model-repository=/models"]' in triton
    assert "--uid 1000" in triton and "--gid 1000" in triton
    assert "HOME=/home/triton-server" in triton
    pause = (IMAGES / "pause" / "Containerfile").read_text()
    assert "FROM scratch" in pause and 'ENTRYPOINT ["/pause"]' in pause
    for containerfile in IMAGES.glob("*/Containerfile"):
        assert ":latest" not in containerfile.read_text(), containerfile
    packages = (IMAGES / "debian-python" / "packages.txt").read_text().split()
    for needed in ("python3", "python3-venv", "python-is-python3", "ca-certificates"):
        assert needed in packages


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_pause_binary(tmp_path: Path) -> None:
    """Static, prints its version, sleeps, exits 0 on SIGTERM and on SIGINT."""
    binary = tmp_path / "pause"
    subprocess.run(
        [
            "gcc",
            "-static",
            "-Os",
            "-s",
            "-Wall",
            "-Wextra",
            "-Werror",
            '-DVERSION="3.10"',
            "-o",
            str(binary),
            str(IMAGES / "pause" / "pause.c"),
        ],
        check=True,
    )
    assert (
        "statically linked"
        in subprocess.run(["file", str(binary)], capture_output=True, text=True).stdout
        or shutil.which("file") is None
    )
    version = subprocess.run([str(binary), "-v"], capture_output=True, text=True, check=True)
    assert version.stdout == "pause.c 3.10\n"
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen([str(binary)], stderr=subprocess.PIPE)
        time.sleep(0.3)
        assert proc.poll() is None, "pause exited by itself"
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
        assert proc.stderr is not None and b"Shutting down" in proc.stderr.read()
