#!/usr/bin/env python3
"""Run an image once from its docker-archive, the way a kubelet would, and check it works.

    smoke.py IMAGE ARCHIVE --ref REF [--repo DIR] [--work DIR] [--report FILE]

IMAGE is one of pause, debian-python, tritonserver-cpu, turnpike. The archive is
unpacked as containerd would import it (layer digests checked, whiteouts applied)
and run with runc: the image's own user, every capability dropped, no new privileges, in
the host's network namespace (servers bind 127.0.0.1 only), and for the operator
a read-only root filesystem. The Triton image's multi-node launch (smoke_mpi.py) runs
in two containers with network namespaces of their own, joined to each other only.
build.sh runs it before it publishes an image.
Standard library only; needs root, GNU tar, runc, ip and ssh-keygen.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http import server as httpserver
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hack.images import smoke_mpi
from hack.ports import free_ports

LOOPBACK = "127.0.0.1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SmokeError(RuntimeError):
    pass


def http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


class Bundle:
    """An image unpacked from its docker-archive, and the runc containers started from it.

    The archive is read the way ``ctr images import`` reads it: manifest.json's Config
    and Layers, each layer checked against the config's rootfs.diff_ids, layers applied
    in order with their whiteouts (.wh.NAME, .wh..wh..opq).
    """

    def __init__(self, archive: Path, work: Path) -> None:
        self.work = work
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        self.state = work / "runc"
        self.rootfs = work / "rootfs"
        self.rootfs.mkdir()
        self.layers_dir = work / "archive"
        self.layers_dir.mkdir()
        subprocess.run(["tar", "-xf", str(archive), "-C", str(self.layers_dir)], check=True)
        manifest = json.loads((self.layers_dir / "manifest.json").read_text())
        if len(manifest) != 1:
            raise SmokeError(f"{archive}: {len(manifest)} images in manifest.json, want 1")
        image_config = json.loads((self.layers_dir / manifest[0]["Config"]).read_text())
        diff_ids = image_config["rootfs"]["diff_ids"]
        layers = manifest[0]["Layers"]
        if len(diff_ids) != len(layers):
            raise SmokeError(f"{len(layers)} layers but {len(diff_ids)} diff_ids")
        for layer, diff_id in zip(layers, diff_ids, strict=True):
            path = self.layers_dir / layer
            digest = "sha256:" + file_sha256(path)
            if digest != diff_id:
                raise SmokeError(f"layer {layer} has digest {digest}, config says {diff_id}")
            self._apply(path)
            path.unlink()
        self.image_config = image_config.get("config") or {}
        self.base = self._spec(self.image_config)
        self._count = 0

    def _apply(self, layer: Path) -> None:
        names = subprocess.run(
            ["tar", "-tf", str(layer)], check=True, capture_output=True, text=True
        ).stdout.splitlines()
        for name in names:
            name = name.removeprefix("./")
            parent, _, base = name.rstrip("/").rpartition("/")
            if not base.startswith(".wh."):
                continue
            directory = self.rootfs / parent
            if base == ".wh..wh..opq":
                if directory.is_dir() and not directory.is_symlink():
                    for child in directory.iterdir():
                        remove(child)
            else:
                remove(directory / base.removeprefix(".wh."))
        subprocess.run(
            [
                "tar",
                "-xf",
                str(layer),
                "-C",
                str(self.rootfs),
                "--numeric-owner",
                "--preserve-permissions",
                "--xattrs",
                "--exclude=.wh.*",
                "--exclude=*/.wh.*",
            ],
            check=True,
        )

    def _spec(self, image: dict[str, Any]) -> dict[str, Any]:
        """runc's default spec with the image's command, environment, user and cwd."""
        subprocess.run(["runc", "spec", "--bundle", str(self.work)], check=True)
        spec = json.loads((self.work / "config.json").read_text())
        (self.work / "config.json").unlink()
        args = list(image.get("Entrypoint") or []) + list(image.get("Cmd") or [])
        user = image.get("User") or "0:0"
        uid, _, gid = user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise SmokeError(f"image user {user!r} is not numeric (runAsNonRoot cannot check it)")
        spec["process"].update(
            args=args,
            env=list(image.get("Env") or []),
            cwd=image.get("WorkingDir") or "/",
            user={"uid": int(uid), "gid": int(gid or 0)},
        )
        spec["root"] = {"path": str(self.rootfs), "readonly": False}
        return dict(spec)

    @property
    def image_user(self) -> dict[str, Any]:
        return dict(self.base["process"]["user"])

    def start(
        self,
        args: list[str] | None = None,
        *,
        uid: int | None = None,
        gid: int | None = None,
        readonly: bool = False,
        binds: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        netns: Path | None = None,
        hostname: str = "smoke",
    ) -> tuple[str, subprocess.Popen[bytes], Path]:
        """Start a container in the background; (id, runc process, log path).

        In the host's network namespace, or in ``netns`` (a path such as /run/netns/NAME).
        """
        self._count += 1
        cid = f"turnpike-smoke-{os.getpid()}-{self._count}"
        config = json.loads(json.dumps(self.base))
        process = config["process"]
        process["terminal"] = False
        if args is not None:
            process["args"] = args
        user = process["user"]
        if uid is not None:
            user["uid"] = uid
        if gid is not None:
            user["gid"] = gid
            user["additionalGids"] = [gid]  # like a pod's fsGroup
        for name in ("bounding", "effective", "inheritable", "permitted", "ambient"):
            process["capabilities"][name] = []  # securityContext: drop ALL
        process["noNewPrivileges"] = True
        process["env"] = [e for e in process["env"] if not e.startswith("TERM=")]
        process["env"] += [f"{k}={v}" for k, v in (env or {}).items()]
        config["root"]["readonly"] = readonly
        # The host's network namespace, so that servers are reachable on 127.0.0.1.
        config["linux"]["namespaces"] = [
            ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"
        ]
        if netns is not None:
            config["linux"]["namespaces"].append({"type": "network", "path": str(netns)})
        config["hostname"] = hostname
        for source, dest in (binds or {}).items():
            config["mounts"].append(
                {"destination": dest, "type": "bind", "source": source, "options": ["rbind", "ro"]}
            )
        # Each container gets its own bundle directory; all share the unpacked rootfs.
        bundle = self.work / cid
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(config))
        log = self.work / f"{cid}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["runc", "--root", str(self.state), "run", "--bundle", str(bundle), cid],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cid, proc, log

    def run(self, args: list[str], timeout: float = 60, **kwargs: Any) -> tuple[int, str]:
        cid, proc, log = self.start(args, **kwargs)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(cid, proc)
            raise SmokeError(f"{args} did not finish in {timeout} s: {tail(log)}") from None
        self.delete(cid)
        return rc, log.read_text(errors="replace")

    def kill(self, cid: str, proc: subprocess.Popen[bytes], sig: str = "KILL") -> int | None:
        subprocess.run(["runc", "--root", str(self.state), "kill", cid, sig], capture_output=True)
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            subprocess.run(
                ["runc", "--root", str(self.state), "kill", cid, "KILL"], capture_output=True
            )
            rc = None
            proc.wait(timeout=15)
        self.delete(cid)
        return rc

    def delete(self, cid: str) -> None:
        subprocess.run(
            ["runc", "--root", str(self.state), "delete", "--force", cid], capture_output=True
        )

    def cleanup(self) -> None:
        if self.state.exists():
            for entry in self.state.iterdir():
                self.delete(entry.name)
        shutil.rmtree(self.work, ignore_errors=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeError(message)


# --- per image -----------------------------------------------------------------------------


def check_pause(b: Bundle, repo: Path) -> dict[str, Any]:
    expect(b.image_user["uid"] == 65535, f"pause runs as {b.image_user}")
    rc, out = b.run(["/pause", "-v"])
    expect(rc == 0 and "pause.c" in out, f"pause -v: rc {rc}: {out}")
    cid, proc, log = b.start()
    time.sleep(1.0)
    expect(proc.poll() is None, f"pause exited early: {tail(log)}")
    start = time.monotonic()
    rc_term = b.kill(cid, proc, "TERM")
    expect(rc_term == 0, f"pause exited {rc_term} on SIGTERM (want 0): {tail(log)}")
    return {"sigterm_exit": rc_term, "sigterm_s": round(time.monotonic() - start, 2)}


def check_debian_python(b: Bundle, repo: Path) -> dict[str, Any]:
    script = (
        "import sys, ssl, venv, ensurepip, sqlite3, urllib.request, tarfile, zipfile;"
        "import os; assert os.path.exists('/etc/ssl/certs/ca-certificates.crt');"
        "print(sys.version.split()[0])"
    )
    rc, out = b.run(["python", "-c", script], uid=65532, gid=65532)
    expect(rc == 0, f"python in the base image: rc {rc}: {out}")
    version = out.strip().splitlines()[-1]
    expect(version.startswith("3.11."), f"python {version}")
    rc, out = b.run(
        ["sh", "-c", "python3 -m venv /tmp/v && /tmp/v/bin/python -m pip --version"],
        uid=0,
        gid=0,
    )
    expect(rc == 0, f"python3 -m venv: rc {rc}: {out}")
    docs = (
        [p.name for p in (b.rootfs / "usr/share/man").glob("*")]
        if (b.rootfs / "usr/share/man").exists()
        else []
    )
    expect(not docs, f"man pages in the base image: {docs[:5]}")
    return {"python": version}


def check_tritonserver_cpu(b: Bundle, repo: Path) -> dict[str, Any]:
    user = b.image_user
    expect((user["uid"], user["gid"]) == (1000, 1000), f"image user {user}, want 1000:1000")
    passwd = (b.rootfs / "etc/passwd").read_text()
    expect("triton-server:x:1000:1000:" in passwd, "no triton-server user with uid 1000")
    # The operator's model-download init container: python3 -c <script>, standard library only.
    rc, out = b.run(
        [
            "python3",
            "-c",
            "import json, os, shutil, sys, tarfile, tempfile, urllib.parse, "
            "urllib.request, zipfile, numpy; print(os.getuid(), os.environ['HOME'])",
        ],
        uid=1000,
        gid=1000,
    )
    expect(
        rc == 0 and out.split()[-2:] == ["1000", "/home/triton-server"], f"python3 as 1000: {out}"
    )

    models = repo / "hack" / "triton" / "model_repository"
    http_port, grpc_port, metrics_port = free_ports(3)
    # The image's command (tritonserver --model-repository=/models) plus loopback listeners.
    args = [
        *b.base["process"]["args"],
        f"--http-address={LOOPBACK}",
        f"--http-port={http_port}",
        f"--grpc-address={LOOPBACK}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={LOOPBACK}",
        f"--metrics-port={metrics_port}",
    ]
    expect(args[:2] == ["tritonserver", "--model-repository=/models"], f"image command {args[:2]}")
    start = time.monotonic()
    cid, proc, log = b.start(args, uid=1000, gid=1000, binds={str(models): "/models"})
    base = f"http://{LOOPBACK}:{http_port}"
    try:
        deadline = start + 120
        while True:
            if proc.poll() is not None:
                raise SmokeError(f"tritonserver exited {proc.returncode}: {tail(log)}")
            if http("GET", f"{base}/v2/health/ready", timeout=2)[0] == 200:
                break
            if time.monotonic() > deadline:
                raise SmokeError(f"not ready after 120 s: {tail(log)}")
            time.sleep(0.2)
        startup_s = time.monotonic() - start
        data = [1.0, 2.5, -3.0, 4.25]
        t = time.monotonic()
        status, body = http(
            "POST",
            f"{base}/v2/models/sleepy/infer",
            {
                "inputs": [
                    {"name": "INPUT0", "shape": [len(data)], "datatype": "FP32", "data": data}
                ]
            },
            timeout=30,
        )
        infer_ms = (time.monotonic() - t) * 1000
        expect(status == 200, f"infer: HTTP {status}: {body[:500]!r}")
        outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
        expect(outputs["OUTPUT0"]["data"] == data, f"infer returned {outputs}")
        status, metrics = http("GET", f"http://{LOOPBACK}:{metrics_port}/metrics")
        text = metrics.decode(errors="replace")
        expect(
            status == 200 and "nv_inference_pending_request_count" in text,
            f"/metrics: HTTP {status}, no nv_inference_pending_request_count",
        )
        pending = [
            line
            for line in text.splitlines()
            if line.startswith("nv_inference_pending_request_count")
        ]
        success = [
            line for line in text.splitlines() if line.startswith("nv_inference_request_success")
        ]
    finally:
        t = time.monotonic()
        stop_rc = b.kill(cid, proc, "TERM")
        stop_s = time.monotonic() - t
    expect(stop_rc == 0, f"tritonserver exited {stop_rc} on SIGTERM: {tail(log)}")
    return {
        "startup_s": round(startup_s, 2),
        "infer_ms": round(infer_ms, 1),
        "stop_s": round(stop_s, 2),
        "metrics": pending + success,
        "mpi": check_mpi(b),
    }


def check_mpi(b: Bundle) -> dict[str, Any]:
    """The multi-node launch contract (smoke_mpi.py) between two pods of the image.

    A leader and a worker container (uid 1000 with fsGroup 1000, every capability dropped,
    no new privileges), each in its own network namespace, the two joined by a veth pair,
    named like a LeaderWorkerSet's pods (/etc/hosts standing in for the cluster's DNS), the
    key set mounted read-only as a Secret volume. The leader's wait gives up on a worker that
    never comes; then the leader starts first, the worker's sshd a moment later, and mpirun
    runs 2 hosts x 2 slots of mpi-rank-report: ranks 0-1 forked on the leader (it runs no
    sshd), ranks 2-3 on the worker over ssh, a 1 MiB allgather among them.
    """
    stale = smoke_mpi.remove_stale_namespaces()
    secret = b.work / "mpi-secret"
    smoke_mpi.write_key_set(secret)
    slots, check_var, token = 2, "TURNPIKE_MPI_SMOKE", f"token-{os.getpid()}"
    image_path = next(e for e in b.base["process"]["env"] if e.startswith("PATH="))[5:]
    exports = ["PATH", check_var]
    program = ["mpi-rank-report", "--payload", str(1 << 20)]
    program += [arg for name in exports for arg in ("--env", name)]
    # A LeaderWorkerSet "tp-mpi" in namespace "smoke", group 0: pod hostnames tp-mpi-0 and
    # tp-mpi-0-1, subdomain tp-mpi; the leader knows the group by LWS_LEADER_ADDRESS's form
    # <hostname>.<subdomain>.<namespace>, which the cluster's DNS resolves.
    names = ["tp-mpi-0", "tp-mpi-0-1"]
    fqdns = [f"{name}.tp-mpi.smoke" for name in names]
    result: dict[str, Any] = {"stale_namespaces_removed": stale}
    with smoke_mpi.veth_pair() as pair:
        ips = [address for _, address in pair]
        runs: list[dict[str, Any]] = []
        for i, (netns, _) in enumerate(pair):
            # The kubelet's /etc/hosts (its own FQDN and hostname), then what DNS would
            # answer for the group's addresses; never the other pod's bare hostname.
            hosts = b.work / f"mpi-hosts-{i}"
            hosts.write_text(
                f"127.0.0.1\tlocalhost\n{ips[i]}\t{fqdns[i]}.svc.cluster.local\t{names[i]}\n"
                + "".join(f"{ip}\t{fqdn}\n" for ip, fqdn in zip(ips, fqdns, strict=True))
            )
            os.chmod(hosts, 0o644)
            runs.append(
                {
                    "uid": 1000,
                    "gid": 1000,
                    "binds": {str(secret): smoke_mpi.MPI_DIR, str(hosts): "/etc/hosts"},
                    "netns": netns,
                    "hostname": names[i],
                }
            )
        leader = smoke_mpi.leader_argv(fqdns, slots, program, exports, workers=fqdns[1:])
        env = {check_var: token}

        # No worker: the wait gives up after its tries, naming the worker.
        t = time.monotonic()
        rc, out = b.run(leader, timeout=60, env={**env, "TURNPIKE_MPI_WAIT_TRIES": "2"}, **runs[0])
        want = f"turnpike-mpi: worker {fqdns[1]}: no ssh on port {smoke_mpi.SSH_PORT} after 2 tries"
        expect(rc == 1 and want in out, f"the leader without a worker: rc {rc}: {out}")
        result["no_worker"] = {
            "exit": rc,
            "s": round(time.monotonic() - t, 1),
            "message": next(line for line in out.splitlines() if want in line),
        }

        # The leader first, the worker's sshd a moment later.
        t = time.monotonic()
        lcid, lproc, llog = b.start(leader, env=env, **runs[0])
        wcid: str | None = None
        try:
            time.sleep(1.5)
            expect(lproc.poll() is None, f"the leader exited {lproc.returncode}: {tail(llog)}")
            wcid, wproc, wlog = b.start(smoke_mpi.WORKER_ARGV, **runs[1])
            try:
                rc = lproc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                raise SmokeError(
                    f"mpirun did not finish in 120 s: {tail(llog)}\nworker: {tail(wlog)}"
                ) from None
            launch_s = time.monotonic() - t
            expect(
                wproc.poll() is None, f"the worker's sshd exited {wproc.returncode}: {tail(wlog)}"
            )
            expect(rc == 0, f"mpirun exited {rc}: {tail(llog)}\nworker: {tail(wlog)}")
            t = time.monotonic()
            worker_rc = b.kill(wcid, wproc, "TERM")
            worker_stop_s = time.monotonic() - t
            wcid = None
        finally:
            if lproc.poll() is None:
                b.kill(lcid, lproc)
            b.delete(lcid)
            if wcid is not None:
                b.kill(wcid, wproc)
    out = llog.read_text(errors="replace")
    reports = [line for line in out.splitlines() if line.startswith('{"size":')]
    expect(len(reports) == 1, f"want one JSON line from rank 0: {out}")
    report = json.loads(reports[0])
    ranks = report["ranks"]
    expect(report["size"] == 2 * slots and len(ranks) == 2 * slots, f"size: {reports[0]}")
    # Every rank: on its pod, as 1000, with the leader's PATH (the image's: a remote rank
    # otherwise gets sshd's default) and the exported variable.
    want_env = {"PATH": image_path, check_var: token}
    for r in ranks:
        side = r["rank"] // slots
        expected = (names[side], ips[side], 1000, want_env)
        expect(
            (r["host"], r["ip"], r["uid"], r["env"]) == expected,
            f"rank {r['rank']} ran as {r}, want {expected}: {out}",
        )
    sshd = wlog.read_text(errors="replace")
    result.update(
        ranks=ranks,
        payload_bytes=report.get("payload_bytes"),
        launch_s=round(launch_s, 2),
        leader_log=[line for line in out.splitlines() if line not in reports],
        worker_ssh_logins=sshd.count("Accepted publickey"),
        worker_sigterm_exit=worker_rc,
        worker_stop_s=round(worker_stop_s, 2),
    )
    return result


def check_turnpike(b: Bundle, repo: Path) -> dict[str, Any]:
    user = b.image_user
    expect((user["uid"], user["gid"]) == (65532, 65532), f"image user {user}, want 65532:65532")
    expect(
        b.base["process"]["args"][:2] == ["turnpike", "run"],
        f"entrypoint {b.base['process']['args']}",
    )
    leftovers = [p for p in ("etc/pip.conf",) if (b.rootfs / p).exists()]
    expect(not leftovers, f"build-time mounts left behind in the image: {leftovers}")
    rc, out = b.run(["turnpike", "run", "--help"], readonly=True)
    expect(rc == 0 and "usage: turnpike run" in out, f"turnpike run --help: rc {rc}: {out}")
    # Start it for real on a read-only root against a stand-in API server that lists nothing:
    # settings are read, every module imported, the metrics server binds, the cache primes and
    # kopf starts watching; a write anywhere on the root filesystem would fail.
    api = FakeAPIServer()
    metrics_port = free_ports(1)[0]
    kube = b.work / "kube"
    kube.mkdir()
    (kube / "config").write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "smoke",
                "clusters": [{"name": "smoke", "cluster": {"server": api.url}}],
                "users": [{"name": "smoke", "user": {"token": "smoke"}}],
                "contexts": [{"name": "smoke", "context": {"cluster": "smoke", "user": "smoke"}}],
            }
        )
    )
    os.chmod(kube / "config", 0o644)
    cid, proc, log = b.start(
        [
            "turnpike",
            "run",
            "--kubeconfig=/kube/config",
            f"--metrics-bind-address={LOOPBACK}:{metrics_port}",
            "--no-leader-elect",
        ],
        readonly=True,
        binds={str(kube): "/kube"},
    )
    start = time.monotonic()
    try:
        started_s: float | None = None
        deadline = start + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if "operator started" in log.read_text(errors="replace"):
                started_s = time.monotonic() - start
                break
            time.sleep(0.2)
        time.sleep(2)  # a little time for the first watch requests
        status, _ = http("GET", f"http://{LOOPBACK}:{metrics_port}/metrics")
        health = http("GET", f"http://{LOOPBACK}:{metrics_port}/healthz")[0]
        alive = proc.poll() is None
    finally:
        stop_rc = b.kill(cid, proc, "TERM")
        api.close()
    out = log.read_text(errors="replace")
    for sign in ("Read-only file system", "EROFS", "PermissionError"):
        expect(sign not in out, f"the operator wrote somewhere ({sign}): {tail(log)}")
    if started_s is None or not alive:
        raise SmokeError(f"the operator did not start: {tail(log)}")
    expect(status == 200, f"/metrics: HTTP {status}")
    expect(stop_rc == 0, f"the operator exited {stop_rc} on SIGTERM: {tail(log)}")
    return {
        "help": "ok",
        "readonly_start_s": round(started_s, 2),
        "healthz": health,
        "sigterm_exit": stop_rc,
        "api_requests": sorted(set(api.paths))[:20],
    }


# What the stand-in API server's discovery lists: the kinds the operator reads and watches.
FAKE_RESOURCES = [
    # (group/version, kind, plural, namespaced)
    ("turnpike.dev/v1alpha1", "ModelDeployment", "modeldeployments", True),
    ("turnpike.dev/v1alpha1", "CapacityTier", "capacitytiers", False),
    ("apps/v1", "Deployment", "deployments", True),
    ("v1", "Service", "services", True),
    ("v1", "Pod", "pods", True),
    ("v1", "Secret", "secrets", True),
    ("v1", "Event", "events", True),
    ("v1", "Namespace", "namespaces", False),
    ("v1", "Node", "nodes", False),
    ("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", True),
    ("scheduling.k8s.io/v1", "PriorityClass", "priorityclasses", False),
    ("coordination.k8s.io/v1", "Lease", "leases", True),
]


def _discovery(path: str) -> dict[str, Any] | None:
    verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
    group_versions = sorted({gv for gv, *_ in FAKE_RESOURCES})
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        groups = []
        for gv in group_versions:
            if "/" in gv:
                name, version = gv.split("/")
                ref = {"groupVersion": gv, "version": version}
                groups.append({"name": name, "versions": [ref], "preferredVersion": ref})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    gv = path.removeprefix("/api/") if path.startswith("/api/") else path.removeprefix("/apis/")
    if gv in group_versions and path.count("/") in (2, 3):
        resources = []
        for rgv, kind, plural, namespaced in FAKE_RESOURCES:
            if rgv == gv:
                resources.append(
                    {
                        "name": plural,
                        "singularName": kind.lower(),
                        "kind": kind,
                        "namespaced": namespaced,
                        "verbs": verbs,
                    }
                )
                if rgv.startswith("turnpike.dev/"):
                    resources.append(
                        {
                            "name": f"{plural}/status",
                            "singularName": "",
                            "kind": kind,
                            "namespaced": namespaced,
                            "verbs": ["get", "patch", "update"],
                        }
                    )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": resources,
        }
    return None


class FakeAPIServer:
    """Discovery, empty lists and idle watches for the kinds above; 127.0.0.1 only."""

    def __init__(self) -> None:
        paths: list[str] = []
        self.paths = paths
        closing = threading.Event()
        self._closing = closing

        class Handler(httpserver.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                paths.append(path)
                discovery = _discovery(path)
                if discovery is not None:
                    self._send(200, discovery)
                elif "watch=true" in query or "watch=1" in query:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.flush()
                    closing.wait(60)
                    with contextlib.suppress(OSError):
                        self.wfile.write(b"0\r\n\r\n")
                else:
                    self._send(
                        200,
                        {
                            "apiVersion": "v1",
                            "kind": "List",
                            "items": [],
                            "metadata": {"resourceVersion": "1"},
                        },
                    )

            def do_POST(self) -> None:
                paths.append(f"POST {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self._send(
                    403,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": "Forbidden",
                        "code": 403,
                    },
                )

            do_PUT = do_PATCH = do_DELETE = do_POST

        self._server = httpserver.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()


CHECKS = {
    "pause": check_pause,
    "debian-python": check_debian_python,
    "tritonserver-cpu": check_tritonserver_cpu,
    "turnpike": check_turnpike,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", choices=sorted(CHECKS))
    parser.add_argument("archive", type=Path)
    parser.add_argument("--ref", required=True)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--report", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the unpacked bundle")
    args = parser.parse_args()
    manifest = json.loads(
        subprocess.run(
            ["tar", "-xOf", str(args.archive), "manifest.json"], check=True, capture_output=True
        ).stdout
    )
    if manifest[0].get("RepoTags") != [args.ref]:
        print(f"smoke: {args.archive} has RepoTags {manifest[0].get('RepoTags')}", file=sys.stderr)
        return 1
    work = args.work or Path(tempfile.mkdtemp(prefix=f"smoke-{args.image}-"))
    start = time.monotonic()
    bundle = Bundle(args.archive, work)
    unpack_s = time.monotonic() - start
    try:
        result = CHECKS[args.image](bundle, args.repo)
    except SmokeError as exc:
        print(f"smoke: {args.image}: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            bundle.cleanup()
    result = {
        "image": args.image,
        "ref": args.ref,
        "unpack_s": round(unpack_s, 1),
        "total_s": round(time.monotonic() - start, 1),
        **result,
    }
    text = json.dumps(result, indent=2)
    if args.report:
        args.report.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
