"""Each model.uri scheme gives Triton a readable model repository."""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.kubelet_expansion import expand_all
from turnpike.api import Model, ModelDeployment
from turnpike.api.uris import redact_userinfo
from turnpike.render import render_deployment
from turnpike.render.repository import DOWNLOAD_SCRIPT, plan_repository


def make_md(uri: str, credentials: str | None = None, **spec: Any) -> ModelDeployment:
    model: dict[str, Any] = {"uri": uri}
    if credentials:
        model["credentials"] = {"name": credentials}
    return ModelDeployment.from_k8s(
        {"metadata": {"name": "m", "namespace": "ns"}, "spec": {"model": model, **spec}}
    )


def render(uri: str, **kwargs: Any) -> dict[str, Any]:
    spec: dict[str, Any] = render_deployment(make_md(uri, **kwargs), replicas=1)["spec"][
        "template"
    ]["spec"]
    return spec


def triton(spec: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = spec["containers"][0]
    return container


def repository_arg(spec: dict[str, Any]) -> str:
    args: list[str] = triton(spec)["args"]
    (arg,) = [a for a in args if a.startswith("--model-repository=")]
    return arg.split("=", 1)[1]


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = spec["volumes"]
    (found,) = [v for v in volumes if v["name"] == name]
    return found


def mount_at(container: dict[str, Any], path: str) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = container["volumeMounts"]
    (found,) = [m for m in mounts if m["mountPath"] == path]
    return found


# --- object storage: Triton reads it itself --------------------------------------------


@pytest.mark.parametrize(
    "uri", ["s3://bucket/models", "s3://minio.local:9000/bucket/repo", "gs://b/r"]
)
def test_object_storage_is_passed_straight_to_triton(uri: str) -> None:
    spec = render(uri)
    assert repository_arg(spec) == uri
    assert "initContainers" not in spec
    assert [v["name"] for v in spec["volumes"]] == ["dshm"]


def test_s3_credentials_reach_triton_as_environment() -> None:
    spec = render("s3://bucket/models", credentials="aws")
    assert triton(spec)["envFrom"] == [{"secretRef": {"name": "aws"}}]


def test_gcs_credentials_are_a_file_because_triton_reads_a_path() -> None:
    spec = render("gs://bucket/models", credentials="gcp")
    env = {e["name"]: e for e in triton(spec)["env"]}
    path = env["GOOGLE_APPLICATION_CREDENTIALS"]["value"]
    directory, filename = os.path.split(path)
    mount = mount_at(triton(spec), directory)
    assert mount["readOnly"] is True
    secret = volume(spec, mount["name"])["secret"]
    assert secret["secretName"] == "gcp"
    assert secret["items"] == [{"key": "GOOGLE_APPLICATION_CREDENTIALS", "path": filename}]


def test_gcs_without_credentials_uses_ambient_identity() -> None:
    spec = render("gs://bucket/models")
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in json.dumps(spec)


# --- PersistentVolumeClaim ------------------------------------------------------------


def test_pvc_is_mounted_read_only_and_the_path_is_the_repository() -> None:
    spec = render("pvc://model-store/llama/triton")
    assert repository_arg(spec) == "/models/llama/triton"
    mount = mount_at(triton(spec), "/models")
    assert mount["readOnly"] is True
    assert volume(spec, mount["name"])["persistentVolumeClaim"] == {
        "claimName": "model-store",
        "readOnly": True,
    }
    assert "initContainers" not in spec


@pytest.mark.parametrize("uri", ["pvc://model-store", "pvc://model-store/", "pvc://model-store/./"])
def test_pvc_without_path_uses_the_volume_root(uri: str) -> None:
    assert repository_arg(render(uri)) == "/models"


@pytest.mark.parametrize(
    "uri", ["pvc://store/../etc", "pvc://store/a/../../b", "pvc://Store/x", "pvc://-bad/x"]
)
def test_pvc_paths_outside_the_volume_or_bad_claims_are_refused(uri: str) -> None:
    with pytest.raises(ValueError, match=r"model\.uri"):
        render(uri)


# --- downloads --------------------------------------------------------------------------


def test_hf_repository_is_downloaded_by_an_init_container_into_a_shared_volume() -> None:
    spec = render("hf://nvidia/llama-triton", credentials="hf-token")
    (init,) = spec["initContainers"]
    assert init["image"] == triton(spec)["image"]
    assert init["command"][:2] == ["python3", "-c"]
    assert init["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["TURNPIKE_MODEL_SOURCE"] == "hf://nvidia/llama-triton"
    assert env["TURNPIKE_MODEL_DIR"] == "/models"
    # The same volume is written by the download and read by Triton.
    written = mount_at(init, "/models")["name"]
    read = mount_at(triton(spec), "/models")["name"]
    assert written == read
    assert "emptyDir" in volume(spec, read)
    assert repository_arg(spec) == "/models"


def test_hf_subfolder_is_the_repository() -> None:
    spec = render("hf://org/name/triton_repo")
    env = {e["name"]: e.get("value") for e in spec["initContainers"][0]["env"]}
    assert env["TURNPIKE_MODEL_SOURCE"] == "hf://org/name"
    assert env["TURNPIKE_MODEL_SUBPATH"] == "triton_repo"
    assert repository_arg(spec) == "/models/triton_repo"


@pytest.mark.parametrize("uri", ["hf://only-org", "hf://org/na%me", "hf://org/name/../x"])
def test_malformed_hf_uris_are_refused(uri: str) -> None:
    with pytest.raises(ValueError, match=r"model\.uri"):
        render(uri)


@pytest.mark.parametrize("uri", ["https://example.com/repo.tar.gz", "http://10.0.0.1/r.zip?sig=a"])
def test_http_archives_are_downloaded_by_an_init_container(uri: str) -> None:
    spec = render(uri)
    (init,) = spec["initContainers"]
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["TURNPIKE_MODEL_SOURCE"] == uri
    assert repository_arg(spec) == "/models"


def test_download_container_sees_no_gpu_and_the_users_environment() -> None:
    md = make_md(
        "hf://org/name",
        credentials="hf",
        runtime={"env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}]},
        gpu={"tensorParallelism": 2},
    )
    init = render_deployment(md, replicas=1)["spec"]["template"]["spec"]["initContainers"][0]
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    # Triton images set NVIDIA_VISIBLE_DEVICES=all; without this the NVIDIA runtime
    # would expose every GPU of the node, including other pods' GPUs.
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "nvidia.com/gpu" not in json.dumps(init)


def test_user_env_cannot_redirect_the_download() -> None:
    md = make_md(
        "hf://org/name", runtime={"env": [{"name": "TURNPIKE_MODEL_SOURCE", "value": "hf://x/y"}]}
    )
    init = render_deployment(md, replicas=1)["spec"]["template"]["spec"]["initContainers"][0]
    sources = [e["value"] for e in init["env"] if e["name"] == "TURNPIKE_MODEL_SOURCE"]
    assert sources == ["hf://org/name"]


def test_uri_never_becomes_program_text() -> None:
    uri = 'https://example.com/x.tgz?a=""";import+os;os.system("id");"'
    init = render(uri)["initContainers"][0]
    assert init["command"] == ["python3", "-c", DOWNLOAD_SCRIPT]


# --- the download program itself, against a local HTTP server -----------------------------


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    seen_auth: list[str | None]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.seen_auth.append(self.headers.get("Authorization"))
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.seen_auth = {}, []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(httpd: _Server, path: str) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}{path}"


def run_download(dest: Path, source: str, **env: str) -> subprocess.CompletedProcess[str]:
    # -S: no site-packages, so the standard-library path runs even where
    # huggingface_hub happens to be installed.
    return subprocess.run(
        [sys.executable, "-S", "-c", DOWNLOAD_SCRIPT],
        env={
            "PATH": os.environ.get("PATH", ""),
            "NO_PROXY": "*",
            "TURNPIKE_MODEL_SOURCE": source,
            "TURNPIKE_MODEL_DIR": str(dest),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_download_script_extracts_a_tar_archive(tmp_path: Path, server: _Server) -> None:
    server.files["/repo.tar.gz"] = tar_gz({"resnet/config.pbtxt": b"name: 'resnet'"})
    result = run_download(tmp_path, url(server, "/repo.tar.gz"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "resnet/config.pbtxt").read_bytes() == b"name: 'resnet'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet"]


def test_download_script_extracts_a_zip_archive(tmp_path: Path, server: _Server) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("bert/1/model.onnx", b"onnx")
    server.files["/repo.zip"] = buffer.getvalue()
    result = run_download(tmp_path, url(server, "/repo.zip"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "bert/1/model.onnx").read_bytes() == b"onnx"


def test_download_script_refuses_archive_entries_escaping_the_volume(
    tmp_path: Path, server: _Server
) -> None:
    dest = tmp_path / "models"
    dest.mkdir()
    server.files["/evil.tar.gz"] = tar_gz({"../escaped": b"x"})
    result = run_download(dest, url(server, "/evil.tar.gz"))
    assert result.returncode != 0
    assert not (tmp_path / "escaped").exists()


def test_download_script_fails_on_something_that_is_not_an_archive(
    tmp_path: Path, server: _Server
) -> None:
    server.files["/model.onnx"] = b"not an archive"
    result = run_download(tmp_path, url(server, "/model.onnx"))
    assert result.returncode != 0
    assert "not a tar or zip archive" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_download_script_fails_when_the_source_is_missing(tmp_path: Path, server: _Server) -> None:
    result = run_download(tmp_path, url(server, "/missing.tar.gz"))
    assert result.returncode != 0


def test_download_script_fetches_a_hub_repository_with_the_token(
    tmp_path: Path, server: _Server
) -> None:
    server.files["/api/models/org/name"] = json.dumps(
        {"siblings": [{"rfilename": "repo/llm/config.pbtxt"}, {"rfilename": "README.md"}]}
    ).encode()
    server.files["/org/name/resolve/main/repo/llm/config.pbtxt"] = b"backend: 'vllm'"
    server.files["/org/name/resolve/main/README.md"] = b"# readme"
    result = run_download(
        tmp_path, "hf://org/name", HF_ENDPOINT=url(server, ""), HF_TOKEN="hf_secret"
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "repo/llm/config.pbtxt").read_bytes() == b"backend: 'vllm'"
    assert set(server.seen_auth) == {"Bearer hf_secret"}


def test_download_script_fetches_only_the_hub_subfolder(tmp_path: Path, server: _Server) -> None:
    server.files["/api/models/org/name"] = json.dumps(
        {"siblings": [{"rfilename": "repo/m/config.pbtxt"}, {"rfilename": "weights.bin"}]}
    ).encode()
    server.files["/org/name/resolve/main/repo/m/config.pbtxt"] = b"cfg"
    result = run_download(
        tmp_path, "hf://org/name", HF_ENDPOINT=url(server, ""), TURNPIKE_MODEL_SUBPATH="repo"
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "repo/m/config.pbtxt").exists()
    assert not (tmp_path / "weights.bin").exists()
    assert server.seen_auth == [None, None]


# --- Issue 11 ---------------------------------------------------------------------


def test_the_renderers_guard_never_echoes_credentials() -> None:
    # Defect 2: admission refuses these now, but an object stored before must not
    # print its credentials through the renderer's error (it reached the log).
    model = Model.model_construct(uri="s3://KEY:TOPSECRET@bucket/path")
    with pytest.raises(ValueError, match=r"model\.uri") as caught:
        plan_repository(model)
    assert "TOPSECRET" not in str(caught.value)
    assert "***@bucket" in str(caught.value)


def test_the_download_source_reaches_the_script_literally() -> None:
    # Defect 3: the init container's env is expanded by the kubelet too.
    uri = "https://host/$(HF_TOKEN).tar"
    env = {e["name"]: e["value"] for e in render(uri)["initContainers"][0]["env"] if "value" in e}
    assert expand_all(env["TURNPIKE_MODEL_SOURCE"]) == uri


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("s3://K:S@b/p", "s3://***@b/p"),
        ("see https://u:p@h/x and gs://a@b/c", "see https://***@h/x and gs://***@b/c"),
        ("https://h/path@v2", "https://h/path@v2"),
        ("no url", "no url"),
    ],
)
def test_redact_userinfo(text: str, redacted: str) -> None:
    assert redact_userinfo(text) == redacted
