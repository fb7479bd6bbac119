"""Names shared by the API, the renderer and the controller."""

GROUP = "turnpike.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FIELD_MANAGER = "turnpike"

# The pinned default runtime: Triton with the TensorRT-LLM and Python backends.
DEFAULT_RUNTIME_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-trtllm-python-py3"

# Triton's well-known ports (HTTP, gRPC, Prometheus metrics).
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002

# Labels the LeaderWorkerSet controller (sigs.k8s.io/lws, api/leaderworkerset/v1)
# puts on the pods of a multi-node replica: its group and its place in the group
# (worker index 0 is the leader).
LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
LWS_SET_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
