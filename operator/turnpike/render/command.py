"""The tritonserver command line of the serving container.

Every backend runs one ``tritonserver`` process, except TensorRT-LLM split over
more than one GPU: its engine is one MPI program with one rank per GPU, and the
backend expects every rank to be a Triton process of its own. This module
reimplements the command line that tensorrtllm_backend's
``scripts/launch_triton_server.py`` builds (``get_cmd``), namely::

    mpirun --allow-run-as-root \\
      -n 1 tritonserver --model-repository=R ... \\
           --disable-auto-complete-config \\
           --backend-config=python,shm-region-prefix-name=prefix0_ : \\
      -n 1 tritonserver --model-repository=R --model-control-mode=explicit \\
           --load-model=tensorrt_llm ... \\
           --disable-auto-complete-config \\
           --backend-config=python,shm-region-prefix-name=prefix1_ : ...

- Rank 0 (the TensorRT-LLM "leader") loads the whole repository, or the model
  named in the spec, and serves requests. The other ranks load only the
  ``tensorrt_llm`` model (the launcher's default ``--tensorrt_llm_model_name``):
  pre/post-processing models would only waste memory there.
- Each rank gets its own Python-backend shared-memory prefix because all ranks
  share the pod's /dev/shm, where equal region names would collide.
- Auto-complete is disabled as the launcher does: the TensorRT-LLM backend
  cannot complete its own config.

Deliberate differences from the launcher, all of which come from running in a pod:

- Only rank 0 binds HTTP, gRPC and metrics ports (``--allow-http=false
  --allow-grpc=false --allow-metrics=false`` elsewhere). The launcher gives every
  rank the same ports and relies on worker ranks never finishing their model
  load; here a worker cannot grab the port that the probes and Service target.
- ``--bind-to none``: Open MPI binds ranks by default (to one core each when
  there are two, to a socket when there are more), which would confine rank 0's
  HTTP front end, tokenizers and Python stubs to a fraction of the container's
  CPUs; the kubelet's cgroup already bounds them.
- No trailing ``:`` and no ``&``: mpirun is the container's main process, and
  it forwards the kubelet's SIGTERM to every rank.
"""

from __future__ import annotations

from turnpike.api.constants import GRPC_PORT, HTTP_PORT, METRICS_PORT
from turnpike.api.modeldeployment import Backend, ModelDeployment
from turnpike.render.expansion import literal

TRITONSERVER = "tritonserver"
MPIRUN = "mpirun"
# The model worker ranks load; tensorrtllm_backend's launcher and its
# all_models/inflight_batcher_llm repository both call it this.
TRTLLM_MODEL_NAME = "tensorrt_llm"
# Seconds Triton waits for in-flight requests after SIGTERM before it exits. Kept
# below the pod's terminationGracePeriodSeconds minus the preStop delay so that
# Triton finishes (or gives up) before the kubelet sends SIGKILL.
EXIT_TIMEOUT_SECONDS = 45


def uses_mpi(md: ModelDeployment) -> bool:
    return md.spec.model.backend == Backend.TENSORRTLLM and md.spec.gpu.world_size > 1


def _serving_flags() -> list[str]:
    return [
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=true",
    ]


def _load_flags(model_name: str | None) -> list[str]:
    """Explicit model control loads only the named model (and, for an ensemble, its
    steps); with no name Triton loads everything in the repository."""
    if model_name is None:
        return []
    return ["--model-control-mode=explicit", f"--load-model={literal(model_name)}"]


def triton_command(md: ModelDeployment, repository: str) -> list[str]:
    """The container's full argv. ``runtime.args`` come last in every tritonserver
    invocation so that a user's flag overrides ours (Triton keeps the last value).
    Every user string is escaped (see :mod:`turnpike.render.expansion`)."""
    spec = md.spec
    user_args = [literal(a) for a in spec.runtime.args]
    common = [f"--model-repository={literal(repository)}"]
    trtllm = spec.model.backend == Backend.TENSORRTLLM
    if not uses_mpi(md):
        return [
            TRITONSERVER,
            *common,
            *_serving_flags(),
            *_load_flags(spec.model.name),
            f"--exit-timeout-secs={EXIT_TIMEOUT_SECONDS}",
            *(["--disable-auto-complete-config"] if trtllm else []),
            *user_args,
        ]

    argv = [MPIRUN, "--allow-run-as-root", "--bind-to", "none"]
    for rank in range(spec.gpu.world_size):
        if rank:
            argv.append(":")
            role = [
                "--allow-http=false",
                "--allow-grpc=false",
                "--allow-metrics=false",
                *_load_flags(TRTLLM_MODEL_NAME),
            ]
        else:
            role = [*_serving_flags(), *_load_flags(spec.model.name)]
        argv += [
            "-n",
            "1",
            TRITONSERVER,
            *common,
            *role,
            f"--exit-timeout-secs={EXIT_TIMEOUT_SECONDS}",
            "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name=prefix{rank}_",
            *user_args,
        ]
    return argv


def mpi_ranks(argv: list[str]) -> list[list[str]]:
    """The tritonserver argv of each rank of an mpirun command line (a single one
    for a plain tritonserver), for callers that inspect what each process runs."""
    if not argv or argv[0] != MPIRUN:
        return [argv]
    ranks: list[list[str]] = [[]]
    for arg in argv[argv.index(TRITONSERVER) :]:
        if arg == ":":
            ranks.append([])
        else:
            ranks[-1].append(arg)
    return [r[r.index(TRITONSERVER) :] for r in ranks]
