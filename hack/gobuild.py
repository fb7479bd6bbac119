"""Go components of the local cluster built from a pinned go.mod, once per machine.

The LeaderWorkerSet controller (``hack/lws/``) and CoreDNS (``hack/coredns/``)
are each a directory with a go.mod (and go.sum) that pins exact versions; their
binary is cached under ``~/.cache/turnpike/<name>-<key>/``, the key being a
digest of the directory's inputs, the Go version and a recipe number (bumped
when the way the binary is made changes), so a fresh clone reuses a build and
a changed pin rebuilds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("TURNPIKE_CACHE", Path.home() / ".cache" / "turnpike"))


@dataclass(frozen=True)
class GoComponent:
    name: str  # cache directory prefix and log tag
    directory: Path  # holds go.mod, go.sum and any sources
    package: str  # what `go build` builds
    binary: str  # the file name of the cached binary
    inputs: tuple[str, ...]  # files of `directory` the key covers
    recipe: int
    cold_build: str  # what a cold build costs, for the progress line

    def log(self, message: str) -> None:
        print(f"[{self.name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def go(self, *args: str, timeout: float = 1800) -> str:
        env = {**os.environ, "GOFLAGS": "-mod=readonly", "CGO_ENABLED": "0"}
        result = subprocess.run(
            ["go", *args],
            cwd=self.directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"go {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout.strip()

    def cache_key(self) -> str:
        """A digest of everything the binary is made from."""
        digest = hashlib.sha256()
        for name in self.inputs:
            digest.update(name.encode() + b"\0" + (self.directory / name).read_bytes())
        digest.update(self.go("version").encode())
        digest.update(f"recipe {self.recipe}".encode())
        return digest.hexdigest()[:16]

    def build(self) -> Path:
        """The binary, built once per machine and set of inputs."""
        out = CACHE / f"{self.name}-{self.cache_key()}" / self.binary
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.log(f"building {self.package} ({self.cold_build} the first time on 2 cores)")
        started = time.monotonic()
        partial = out.with_name(f"{self.binary}.partial-{os.getpid()}")
        try:
            self.go("build", "-trimpath", "-ldflags=-s -w", "-o", str(partial), self.package)
            partial.rename(out)
        finally:
            partial.unlink(missing_ok=True)
        size_mb = out.stat().st_size / 1e6
        self.log(f"built in {time.monotonic() - started:.0f}s ({size_mb:.0f} MB): {out}")
        return out
