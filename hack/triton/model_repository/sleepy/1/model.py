"""``sleepy``: echoes INPUT0 as OUTPUT0 after a fixed service time.

The service time comes from the ``service_time_ms`` parameter in
config.pbtxt, or from ``TURNPIKE_SLEEPY_MS`` in the server's environment,
which wins; a request's own ``service_time_ms`` parameter wins over both (the
gateway benchmark replays exponential service times). With one model instance
and no batching, Triton hands this model one request at a time, so N
concurrent clients keep about N - 1 requests in Triton's queue.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import triton_python_backend_utils as pb_utils

ENV_VAR = "TURNPIKE_SLEEPY_MS"


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        value = os.environ.get(ENV_VAR) or parameters.get("service_time_ms", {}).get(
            "string_value", "50"
        )
        millis = float(value)
        if not 0 <= millis <= 60_000:
            raise ValueError(f"service time {millis} ms is outside 0..60000")
        self.service_time_s = millis / 1000.0

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            # Sleep per request: the service time is per request even if
            # Triton ever hands over several at once.
            time.sleep(self._service_time_s(request))
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            output = pb_utils.Tensor("OUTPUT0", data.astype("float32", copy=False))
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
        return responses

    def _service_time_s(self, request: Any) -> float:
        try:
            value = json.loads(request.parameters() or "{}").get("service_time_ms")
        except (ValueError, AttributeError):
            return self.service_time_s
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 60_000:
            return float(value) / 1000.0
        return self.service_time_s

    def finalize(self) -> None:
        pass
