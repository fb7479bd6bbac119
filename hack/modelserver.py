"""A local model source for real-node pods: an HTTP tarball and a Hugging Face Hub subset.

Pods on the real node can reach the host only at the bridge address
(``netrule.NODE_IP``, a harness address), so the server listens there. It
serves ``hack/triton/model_repository`` (the ``sleepy`` model) the two ways the
operator's download init container fetches a repository:

- ``GET /models/sleepy.tar.gz``: the repository as a tarball (``http(s)://`` URIs);
- a Hub subset (``hf://`` URIs with ``HF_ENDPOINT`` pointing here):
  ``GET /api/models/ORG/NAME`` lists the files, ``GET /ORG/NAME/resolve/main/PATH``
  returns one. With ``token`` set, every Hub request must carry
  ``Authorization: Bearer <token>``, as the Hub does for gated models.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hack import netrule

MODEL_REPOSITORY = Path(__file__).resolve().parent / "triton" / "model_repository"
MODEL = "sleepy"
TARBALL_PATH = "/models/sleepy.tar.gz"


def model_files() -> dict[str, bytes]:
    """{relative path: bytes} of the test model repository."""
    return {
        str(p.relative_to(MODEL_REPOSITORY)): p.read_bytes()
        for p in sorted(MODEL_REPOSITORY.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def model_tarball() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in model_files().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class ModelServer:
    """The server; ``requests`` records (path, Authorization header) of each GET."""

    token: str | None = None
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def tarball_url(self) -> str:
        return self.url + TARBALL_PATH

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{netrule.NODE_IP}:{self._server.server_address[1]}"

    def start(self) -> ModelServer:
        files = model_files()
        tarball = model_tarball()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                owner.requests.append((self.path, auth))
                if self.path == TARBALL_PATH:
                    self._send(200, tarball, "application/gzip")
                    return
                if owner.token is not None and auth != f"Bearer {owner.token}":
                    self._send(401, b'{"error": "Invalid credentials"}', "application/json")
                    return
                if self.path.startswith("/api/models/"):
                    repo_id = self.path[len("/api/models/") :]
                    siblings = [{"rfilename": name} for name in files]
                    body = json.dumps({"id": repo_id, "siblings": siblings}).encode()
                    self._send(200, body, "application/json")
                    return
                _, _, name = self.path.partition("/resolve/main/")
                if name in files:
                    self._send(200, files[name], "application/octet-stream")
                    return
                self._send(404, b"not found", "text/plain")

        self._server = ThreadingHTTPServer((netrule.NODE_IP, 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@contextlib.contextmanager
def model_server(token: str | None = None) -> Iterator[ModelServer]:
    server = ModelServer(token=token).start()
    try:
        yield server
    finally:
        server.stop()
