"""Where Triton finds its model repository, per URI scheme.

Triton reads ``s3://`` and ``gs://`` itself, so those URIs pass straight through.
A ``pvc://`` claim is mounted read-only (replicas share it, and a server that
could write to it could corrupt every other replica's models). ``hf://`` and
``http(s)://`` sources are fetched before Triton starts by an init container
that runs the runtime image itself: the image is already on the node for the
server, so the download adds no second image to pull, and it brings python3.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from turnpike.api import uris
from turnpike.api.modeldeployment import Model
from turnpike.render.expansion import literal

MODEL_REPOSITORY_VOLUME = "model-repository"
MODEL_REPOSITORY_PATH = "/models"
DOWNLOAD_CONTAINER = "download-model"

GCS_CREDENTIALS_VOLUME = "gcs-credentials"
GCS_CREDENTIALS_DIR = "/var/run/secrets/turnpike/gcs"
GCS_CREDENTIALS_KEY = "GOOGLE_APPLICATION_CREDENTIALS"
GCS_CREDENTIALS_FILE = "credentials.json"

# Read by DOWNLOAD_SCRIPT. The source travels in the environment, never spliced
# into the program text, so no URI can change what the script does.
ENV_SOURCE = "TURNPIKE_MODEL_SOURCE"
ENV_SUBPATH = "TURNPIKE_MODEL_SUBPATH"
ENV_DIR = "TURNPIKE_MODEL_DIR"

# Runs in the init container with ``python3 -c``. Standard library only, so it
# works in every Triton image; huggingface_hub is used when the image has it (the
# TensorRT-LLM and vLLM images do) because it resumes, retries and handles Xet
# storage. The fallback lists the repository with the Hub API and fetches each
# file; the token is sent as an unredirected header because the Hub redirects
# downloads to a CDN whose signed URLs refuse a second Authorization.
# Archives are extracted with tarfile's "data" filter (no absolute paths, links
# or devices escaping the target) and zipfile's own path sanitising.
DOWNLOAD_SCRIPT = r"""
import json, os, shutil, sys, tarfile, tempfile, urllib.parse, urllib.request, zipfile

source = os.environ["TURNPIKE_MODEL_SOURCE"]
subpath = os.environ.get("TURNPIKE_MODEL_SUBPATH", "")
dest = os.environ["TURNPIKE_MODEL_DIR"]


def fetch(url, path, token=None):
    request = urllib.request.Request(url)
    if token:
        request.add_unredirected_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(request, timeout=300) as response, open(path, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def inside(path):
    path = os.path.realpath(path)
    if os.path.commonpath([path, os.path.realpath(dest)]) != os.path.realpath(dest):
        sys.exit("refusing to write outside " + dest + ": " + path)
    return path


def huggingface(repo_id):
    token = os.environ.get("HF_TOKEN") or None
    patterns = [subpath + "/*"] if subpath else None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        snapshot_download = None
    if snapshot_download is not None:
        snapshot_download(repo_id=repo_id, local_dir=dest, token=token, allow_patterns=patterns)
        shutil.rmtree(os.path.join(dest, ".cache"), ignore_errors=True)
        return
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    request = urllib.request.Request(endpoint + "/api/models/" + repo_id)
    if token:
        request.add_unredirected_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(request, timeout=60) as response:
        names = sorted(s["rfilename"] for s in json.load(response)["siblings"])
    for name in names:
        if subpath and not name.startswith(subpath + "/"):
            continue
        path = inside(os.path.join(dest, name))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        print("downloading", name, flush=True)
        url = endpoint + "/" + repo_id + "/resolve/main/" + urllib.parse.quote(name)
        fetch(url, path, token)


def archive(url):
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".download-")
    os.close(fd)
    try:
        print("downloading", url.split("?")[0], flush=True)
        fetch(url, tmp)
        if tarfile.is_tarfile(tmp):
            with tarfile.open(tmp) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(dest, filter="data")
                else:
                    tar.extractall(dest)
        elif zipfile.is_zipfile(tmp):
            with zipfile.ZipFile(tmp) as zf:
                zf.extractall(dest)
        else:
            sys.exit("not a tar or zip archive: " + url.split("?")[0])
    finally:
        os.remove(tmp)


os.makedirs(dest, exist_ok=True)
if source.startswith("hf://"):
    huggingface(source[len("hf://"):])
else:
    archive(source)
print("model repository ready in", dest, flush=True)
"""


@dataclass(frozen=True)
class Download:
    """A source the init container fetches into the ``model-repository`` emptyDir."""

    source: str
    subpath: str = ""


@dataclass(frozen=True)
class RepositoryPlan:
    """What the pod needs so that ``path`` is a readable Triton model repository."""

    path: str
    volumes: tuple[dict[str, Any], ...] = ()
    mounts: tuple[dict[str, Any], ...] = ()
    download: Download | None = None
    # Environment the Triton container needs on top of runtime.env and credentials.
    env: tuple[dict[str, Any], ...] = ()


def _refused(uri: str, why: str) -> ValueError:
    # Never echo credentials, even of an object admitted before the rule existed.
    return ValueError(f"model.uri {uris.redact_userinfo(uri)!r}: {why}")


def _clean_subpath(path: str, uri: str) -> str:
    """A relative path with no ``..``: a repository path must stay inside its mount."""
    if not path.strip("/"):
        return ""
    normal = posixpath.normpath(path.strip("/"))
    if normal == ".." or normal.startswith("../"):
        raise _refused(uri, "the path must stay inside the repository")
    return "" if normal == "." else normal


def _under_mount(subpath: str) -> str:
    return f"{MODEL_REPOSITORY_PATH}/{subpath}" if subpath else MODEL_REPOSITORY_PATH


def plan_repository(model: Model) -> RepositoryPlan:
    """Volumes, mounts and downloads for ``model.uri``.

    Admission (and the API model's Python twins) refuse every URI this raises on;
    the checks here are the same predicates, kept as a guard.
    """
    uri = model.uri
    if uris.has_userinfo(uri):
        raise _refused(uri, "credentials belong in model.credentials")
    scheme, _, rest = uri.partition("://")
    if scheme == "s3":
        return RepositoryPlan(path=uri)
    if scheme == "gs":
        return _plan_gcs(model)
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        if not uris.is_valid_pvc_uri(uri):
            raise _refused(uri, f"{claim!r} is not a PersistentVolumeClaim name")
        subpath = _clean_subpath(path, uri)
        return RepositoryPlan(
            path=_under_mount(subpath),
            volumes=(
                {
                    "name": MODEL_REPOSITORY_VOLUME,
                    "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
                },
            ),
            mounts=(
                {
                    "name": MODEL_REPOSITORY_VOLUME,
                    "mountPath": MODEL_REPOSITORY_PATH,
                    "readOnly": True,
                },
            ),
        )
    if scheme == "hf":
        parts = rest.split("/", 2)
        if not uris.is_valid_hf_uri(uri):
            raise _refused(uri, "expected hf://ORG/NAME[/PATH]")
        subpath = _clean_subpath(parts[2] if len(parts) == 3 else "", uri)
        return _plan_download(Download(source=f"hf://{parts[0]}/{parts[1]}", subpath=subpath))
    if scheme in ("http", "https"):
        return _plan_download(Download(source=uri))
    raise _refused(uri, f"unsupported scheme {scheme!r}")


def _plan_gcs(model: Model) -> RepositoryPlan:
    """Triton's GCS client reads GOOGLE_APPLICATION_CREDENTIALS as a *file path*, so
    the credentials Secret's key of that name is mounted as a file and the variable
    points at it (an explicit env entry overrides the JSON that envFrom would put
    there). Without credentials Triton falls back to the node's or workload
    identity's default credentials."""
    if model.credentials is None:
        return RepositoryPlan(path=model.uri)
    return RepositoryPlan(
        path=model.uri,
        volumes=(
            {
                "name": GCS_CREDENTIALS_VOLUME,
                "secret": {
                    "secretName": model.credentials.name,
                    "items": [{"key": GCS_CREDENTIALS_KEY, "path": GCS_CREDENTIALS_FILE}],
                },
            },
        ),
        mounts=(
            {"name": GCS_CREDENTIALS_VOLUME, "mountPath": GCS_CREDENTIALS_DIR, "readOnly": True},
        ),
        env=(
            {
                "name": GCS_CREDENTIALS_KEY,
                "value": f"{GCS_CREDENTIALS_DIR}/{GCS_CREDENTIALS_FILE}",
            },
        ),
    )


def _plan_download(download: Download) -> RepositoryPlan:
    # An emptyDir lives as long as the pod: a restarted Triton container finds the
    # files again, a rescheduled pod downloads afresh.
    return RepositoryPlan(
        path=_under_mount(download.subpath),
        volumes=({"name": MODEL_REPOSITORY_VOLUME, "emptyDir": {}},),
        mounts=({"name": MODEL_REPOSITORY_VOLUME, "mountPath": MODEL_REPOSITORY_PATH},),
        download=download,
    )


def download_env(download: Download) -> list[dict[str, Any]]:
    """Environment of the init container that the user cannot override.

    NVIDIA_VISIBLE_DEVICES=void: Triton images set it to ``all``, and the NVIDIA
    container runtime would then hand every GPU of the node to a container that
    requested none, GPUs already allocated to other pods included.
    """
    env = [
        {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"},
        {"name": ENV_DIR, "value": MODEL_REPOSITORY_PATH},
        {"name": ENV_SOURCE, "value": literal(download.source)},
    ]
    if download.subpath:
        env.append({"name": ENV_SUBPATH, "value": literal(download.subpath)})
    return env
