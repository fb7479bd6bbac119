"""``tokens``: a stand-in for a generative model that streams its answer.

The answer is the prompt's words repeated up to ``max_tokens`` (a request
parameter, default 8), one word a "token", each after a short pause so a
stream is visibly a stream. Decoupled: with the request parameter ``stream``
true (the default) every token is its own response, as TensorRT-LLM and vLLM
stream; with ``stream`` false the whole text comes as one response, which is
what Triton's non-streaming generate endpoint requires of a decoupled model.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

MAX_TOKENS = 256
TOKEN_SECONDS = 0.005


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        pass

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._answer(request, sender)
            except Exception as exc:  # the client gets the error, the model lives on
                sender.send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
        return None

    def _answer(self, request: Any, sender: Any) -> None:
        parameters = json.loads(request.parameters() or "{}")
        count = int(parameters.get("max_tokens", 8))
        if not 1 <= count <= MAX_TOKENS:
            raise ValueError(f"max_tokens must be in 1..{MAX_TOKENS}")
        stream = parameters.get("stream", True) is not False
        raw = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().flatten()[0]
        prompt = raw.decode() if isinstance(raw, bytes) else str(raw)
        words = prompt.split() or ["token"]
        tokens = [" " + words[i % len(words)] for i in range(count)]
        if not stream:
            time.sleep(TOKEN_SECONDS * count)
            sender.send(
                _response("".join(tokens)), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            )
            return
        for token in tokens:
            time.sleep(TOKEN_SECONDS)
            sender.send(_response(token))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self) -> None:
        pass


def _response(text: str) -> Any:
    tensor = pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_))
    return pb_utils.InferenceResponse(output_tensors=[tensor])
