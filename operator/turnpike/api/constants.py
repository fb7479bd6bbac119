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
