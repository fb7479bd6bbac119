"""A real Triton Inference Server on the CPU, bound to a loopback address.

The ``nvidia-pytriton`` wheel (a dev dependency) ships a complete
``tritonserver`` with the Python backend and a backend stub per Python
version. This module lays those out as a backend directory once (cached under
``~/.cache/turnpike/triton-<pytriton version>-py<X.Y>``) and runs plain
``tritonserver`` processes on a model repository, by default
``hack/triton/model_repository`` with the ``sleepy`` model: FP32 ``INPUT0``
echoed as ``OUTPUT0`` after a known service time (50 ms; the
``TURNPIKE_SLEEPY_MS`` environment variable overrides it), one instance, no
batching, so concurrent requests queue and ``nv_inference_pending_request_count``
rises.

    from hack import tritonlocal

    with tritonlocal.TritonServer(ip=tritonlocal.pick_loopback_ip()) as triton:
        triton.http_address     # "127.0.0.123:8000", for tritonclient
        triton.metrics_url      # "http://127.0.0.123:8002/metrics"
        triton.startup_s        # seconds from spawn to /v2/health/ready

Every server binds a 127.0.0.0/8 address only (anything else is refused), so
many servers can share the default ports 8000/8001/8002 on distinct IPs.

CLI::

    python hack/tritonlocal.py prepare               # lay out (cached), print paths
    python hack/tritonlocal.py serve --ip 127.0.0.5  # run until Ctrl-C / SIGTERM
    python hack/tritonlocal.py check                 # start, time it, infer once, stop
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO / "hack" / "triton" / "model_repository"
MODEL = "sleepy"
SERVICE_TIME_ENV = "TURNPIKE_SLEEPY_MS"
CACHE_ENV = "TURNPIKE_TRITON_CACHE"

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002

# Where pick_loopback_ip() looks; the local cluster hands out 127.64/10 and
# 127.96/16 to pods and services, so stay out of those.
_PICK_NET = "127.0.0.0/24"
_PICK_FIRST, _PICK_LAST = 100, 250


class TritonError(RuntimeError):
    """Triton could not be laid out, started or stopped."""


@dataclass(frozen=True, slots=True)
class Layout:
    """What :func:`prepare` laid out, and the environment a server needs."""

    root: Path  # the cached directory
    server: Path  # the tritonserver binary (inside the wheel)
    backends: Path  # --backend-directory: python/ with the stub for this Python
    library_path: tuple[Path, ...]  # LD_LIBRARY_PATH entries, in order
    python_bin: Path  # put first on PATH: the stub's embedded Python finds its env here
    pytriton_version: str

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) plus what tritonserver needs."""
        env = dict(os.environ if base is None else base)
        paths = [str(p) for p in self.library_path]
        if env.get("LD_LIBRARY_PATH"):
            paths.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(paths)
        env["PATH"] = f"{self.python_bin}:{env.get('PATH', os.defpath)}"
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


def _wheel_dirs() -> tuple[Path, Path, str]:
    """(pytriton/tritonserver, nvidia_pytriton.libs, version) of the installed wheel."""
    try:
        version = metadata.version("nvidia-pytriton")
        dist = metadata.distribution("nvidia-pytriton")
    except metadata.PackageNotFoundError as exc:
        raise TritonError(
            "nvidia-pytriton is not installed (pip install -e '.[dev]' installs it)"
        ) from exc
    site = Path(str(dist.locate_file("")))
    triton = site / "pytriton" / "tritonserver"
    libs = site / "nvidia_pytriton.libs"
    if not (triton / "bin" / "tritonserver").is_file():
        raise TritonError(f"no tritonserver binary in {triton}/bin")
    return triton, libs, version


def server_binary() -> Path | None:
    """The wheel's tritonserver binary, or None when the wheel is missing."""
    try:
        return _wheel_dirs()[0] / "bin" / "tritonserver"
    except TritonError:
        return None


def _python_library_dir() -> Path | None:
    """The directory with this interpreter's shared libpython, if it has one.

    The stub links ``libpython3.X.so.1.0``; without this on LD_LIBRARY_PATH it
    would load the system's (a different patch release, without our packages).
    """
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).exists():
        return Path(libdir)
    return None


def default_cache_dir(version: str) -> Path:
    base = os.environ.get(CACHE_ENV) or (Path.home() / ".cache" / "turnpike")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return Path(base) / f"triton-{version}-py{py}"


def prepare(workdir: Path | str | None = None) -> Layout:
    """Lay out a backend directory for this Python (once; later calls reuse it).

    ``workdir`` is where the layout lives; by default
    ``~/.cache/turnpike/triton-<pytriton version>-py<X.Y>`` (``$TURNPIKE_TRITON_CACHE``
    replaces ``~/.cache/turnpike``). Safe against concurrent callers: the
    layout is built in a temporary sibling and renamed into place.
    """
    triton, libs, version = _wheel_dirs()
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub_src = triton / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub_src.is_file():
        raise TritonError(f"nvidia-pytriton {version} ships no backend stub for Python {py}")
    root = Path(workdir) if workdir is not None else default_cache_dir(version)
    marker = root / "layout.json"
    fingerprint = {
        "pytriton": version,
        "python": py,
        "wheel": str(triton),
        "stub_size": stub_src.stat().st_size,
        "stub_mtime_ns": stub_src.stat().st_mtime_ns,
    }
    if not _layout_ok(marker, fingerprint):
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        staging.chmod(0o755)
        try:
            python_dir = staging / "backends" / "python"
            shutil.copytree(
                triton / "backends" / "python",
                python_dir,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            shutil.copy2(stub_src, python_dir / "triton_python_backend_stub")
            (staging / "layout.json").write_text(json.dumps(fingerprint, indent=2) + "\n")
            if root.exists():
                # Stale (another wheel or Python): move it aside, then drop it.
                trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
                with contextlib.suppress(OSError):
                    root.rename(trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            try:
                staging.rename(root)
            except OSError:
                # A concurrent prepare() won the race; use its layout if sound.
                if not _layout_ok(marker, fingerprint):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    library_path = [libs]
    python_lib = _python_library_dir()
    if python_lib is not None:
        library_path.insert(0, python_lib)
    return Layout(
        root=root,
        server=triton / "bin" / "tritonserver",
        backends=root / "backends",
        library_path=tuple(library_path),
        python_bin=Path(sys.executable).parent,
        pytriton_version=version,
    )


def _layout_ok(marker: Path, fingerprint: Mapping[str, object]) -> bool:
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    stub = marker.parent / "backends" / "python" / "triton_python_backend_stub"
    lib = marker.parent / "backends" / "python" / "libtriton_python.so"
    return bool(recorded == dict(fingerprint) and stub.is_file() and lib.is_file())


def check_loopback(ip: str) -> str:
    """``ip`` if it is an IPv4 loopback address; raise ValueError otherwise."""
    address = ipaddress.ip_address(ip)
    if address.version != 4 or not address.is_loopback:
        raise ValueError(f"{ip} is not in 127.0.0.0/8: servers here bind loopback only")
    return str(address)


def ports_free(ip: str, ports: Sequence[int]) -> bool:
    """Whether nothing listens on ``ip`` at any of ``ports`` (TIME_WAIT is fine)."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((check_loopback(ip), port))
            except OSError:
                return False
    return True


def pick_loopback_ip(
    ports: Sequence[int] = (HTTP_PORT, GRPC_PORT, METRICS_PORT),
    *,
    avoid: Sequence[str] = (),
    attempts: int = 64,
    rng: random.Random | None = None,
) -> str:
    """A random 127.0.0.x (x in 100..250) where ``ports`` are all free.

    Free now, not reserved: start the server soon after. Raises TritonError
    after ``attempts`` tries.
    """
    rng = rng or random.Random()
    network = ipaddress.ip_network(_PICK_NET)
    for _ in range(attempts):
        ip = str(network[rng.randint(_PICK_FIRST, _PICK_LAST)])
        if ip not in avoid and ports_free(ip, ports):
            return ip
    raise TritonError(f"no 127.0.0.x with ports {list(ports)} free after {attempts} tries")


def _http_get(url: str, timeout_s: float) -> int:
    """Status code of GET ``url`` without any proxy; 0 when nothing answered."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return 0


def _deathsig_preexec() -> Callable[[], None] | None:
    """Ask the kernel to SIGTERM the child if we die (main thread only).

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only
    safe when the server is started from the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parens.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


class TritonServer:
    """One tritonserver process on a loopback IP; a context manager.

    ``start()`` returns once ``/v2/health/ready`` answers 200 (every model
    loaded) and ``/metrics`` answers, or raises :class:`TritonError` with the log's tail when the
    process exits or ``startup_timeout_s`` passes. ``stop()`` sends SIGTERM,
    waits ``stop_timeout_s``, then SIGKILLs the process group (the server
    runs in its own session, with its backend stubs), and checks that no
    member is left.
    """

    def __init__(
        self,
        *,
        ip: str = "127.0.0.1",
        http_port: int = HTTP_PORT,
        grpc_port: int = GRPC_PORT,
        metrics_port: int = METRICS_PORT,
        model_repository: Path | str = MODEL_REPOSITORY,
        service_time_ms: float | None = None,
        env: Mapping[str, str] | None = None,
        layout: Layout | None = None,
        log_path: Path | str | None = None,
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 10.0,
        exit_timeout_s: int = 3,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.ip = check_loopback(ip)
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.model_repository = Path(model_repository).resolve()
        self._extra_env = dict(env or {})
        if service_time_ms is not None:
            self._extra_env[SERVICE_TIME_ENV] = f"{float(service_time_ms):g}"
        self._layout = layout
        self._log_path = Path(log_path) if log_path is not None else None
        self._own_log = log_path is None
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.extra_args = tuple(extra_args)
        self.startup_s: float | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # --- addresses -------------------------------------------------------------

    @property
    def http_address(self) -> str:
        """``ip:port`` of the HTTP endpoint, the form tritonclient wants."""
        return f"{self.ip}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.ip}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.ip}:{self.metrics_port}/metrics"

    @property
    def metrics_address(self) -> str:
        return f"{self.ip}:{self.metrics_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def command(self, layout: Layout) -> list[str]:
        return [
            str(layout.server),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={layout.backends}",
            f"--http-address={self.ip}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.ip}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.ip}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--log-verbose=0",
            *self.extra_args,
        ]

    # --- lifecycle -------------------------------------------------------------

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ready(self, timeout_s: float = 1.0) -> bool:
        return _http_get(f"{self.http_url}/v2/health/ready", timeout_s) == 200

    def start(self) -> TritonServer:
        if self._process is not None:
            raise TritonError("already started")
        layout = self._layout or prepare()
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        if not ports_free(self.ip, ports):
            raise TritonError(f"something already listens on {self.ip} at one of {list(ports)}")
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"triton-{self.ip}-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        env = layout.env()
        env.update(self._extra_env)
        began = time.monotonic()
        with open(self._log_path, "wb") as log:
            self._process = subprocess.Popen(
                self.command(layout),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(layout.root),
                start_new_session=True,
                preexec_fn=_deathsig_preexec(),
            )
        try:
            self._wait_ready(began)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        return self

    def _wait_ready(self, began: float) -> None:
        deadline = began + self.startup_timeout_s
        while True:
            code = self._process.poll() if self._process is not None else -1
            if code is not None:
                raise TritonError(
                    f"tritonserver exited with {code} before it was ready:\n{self.log_tail()}"
                )
            # HTTP readiness comes a moment before the metrics endpoint listens.
            if self.ready(timeout_s=1.0) and _http_get(self.metrics_url, 1.0) == 200:
                return
            if time.monotonic() >= deadline:
                raise TritonError(
                    f"tritonserver not ready within {self.startup_timeout_s:g}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)  # poll interval, bounded by the deadline above

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the server's whole process group (stubs included)."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signum)

    def pause(self) -> None:
        """SIGSTOP the server and its stubs: it keeps its ports but never answers."""
        self.signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_group(signal.SIGCONT)

    def kill(self) -> int | None:
        """SIGKILL the whole group at once (a crash, not a shutdown)."""
        if self._process is None:
            return None
        self.signal_group(signal.SIGKILL)
        code = self._process.wait(timeout=max(self.stop_timeout_s, 5.0))
        self._reap_group()
        return code

    def stop(self) -> int | None:
        """Stop gracefully, then forcefully; returns the exit code (None if never started)."""
        process = self._process
        if process is None:
            return None
        pgid = process.pid
        if process.poll() is None:
            self.signal_group(signal.SIGCONT)  # a paused server cannot handle SIGTERM
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                process.wait(timeout=10)
        self._reap_group(pgid)
        return process.returncode

    def _reap_group(self, pgid: int | None = None) -> None:
        """SIGKILL whatever is left in the group (stubs) and wait until it is gone."""
        if pgid is None:
            if self._process is None:
                return
            pgid = self._process.pid
        deadline = time.monotonic() + 10.0
        while _group_members(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            if time.monotonic() >= deadline:
                raise TritonError(f"processes of group {pgid} survived SIGKILL")
            time.sleep(0.05)  # poll interval, bounded by the deadline above

    def close(self) -> None:
        """Stop, and remove the log if this object created it."""
        self.stop()
        if self._own_log and self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()

    def log_tail(self, limit: int = 4000) -> str:
        if self._log_path is None:
            return ""
        try:
            data = self._log_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace")

    def metrics_text(self, timeout_s: float = 2.0) -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.metrics_url, timeout=timeout_s) as response:
            return str(response.read().decode("utf-8"))

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive() else "stopped"
        return f"<TritonServer {self.http_address} metrics={self.metrics_port} {state}>"


def infer_once(address: str, model: str = MODEL, timeout_s: float = 10.0) -> list[float]:
    """One synchronous request through tritonclient's HTTP client; returns OUTPUT0."""
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(
        url=address, connection_timeout=timeout_s, network_timeout=timeout_s
    )
    try:
        data = np.arange(4, dtype=np.float32)
        tensor = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        result = client.infer(model, inputs=[tensor])
        output = result.as_numpy("OUTPUT0")
        return [float(x) for x in output]
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="lay out the backend directory, print the layout")
    for name, text in (
        ("serve", "run a server until interrupted"),
        ("check", "start, time startup, infer once, stop"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--ip", default=None, help="127.x address (default: a free 127.0.0.x)")
        p.add_argument("--http-port", type=int, default=HTTP_PORT)
        p.add_argument("--grpc-port", type=int, default=GRPC_PORT)
        p.add_argument("--metrics-port", type=int, default=METRICS_PORT)
        p.add_argument("--model-repository", default=str(MODEL_REPOSITORY))
        p.add_argument("--service-time-ms", type=float, default=None)
        p.add_argument("--startup-timeout", type=float, default=60.0)
        p.add_argument("--log", default=None, help="server log file (default: a temp file)")
    args = parser.parse_args(argv)

    if args.command == "prepare":
        layout = prepare()
        print(
            json.dumps(
                {
                    "root": str(layout.root),
                    "server": str(layout.server),
                    "backends": str(layout.backends),
                    "library_path": [str(p) for p in layout.library_path],
                    "python_bin": str(layout.python_bin),
                    "pytriton": layout.pytriton_version,
                },
                indent=2,
            )
        )
        return 0

    ports = (args.http_port, args.grpc_port, args.metrics_port)
    ip = args.ip or pick_loopback_ip(ports)
    server = TritonServer(
        ip=ip,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_repository=args.model_repository,
        service_time_ms=args.service_time_ms,
        log_path=args.log,
        startup_timeout_s=args.startup_timeout,
    )
    if args.command == "check":
        with server:
            output = infer_once(server.http_address)
            print(
                json.dumps(
                    {
                        "http": server.http_address,
                        "metrics": server.metrics_url,
                        "startup_s": round(server.startup_s or 0.0, 3),
                        "output": output,
                    }
                )
            )
        return 0

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with server:
        print(
            f"triton ready in {server.startup_s:.2f}s: http {server.http_url}, "
            f"grpc {server.grpc_address}, metrics {server.metrics_url}, log {server.log_path}",
            flush=True,
        )
        while not stop.wait(0.5) and server.alive():
            pass
        if not server.alive():
            print(f"tritonserver exited:\n{server.log_tail()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
