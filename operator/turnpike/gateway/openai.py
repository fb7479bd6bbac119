"""OpenAI-compatible completions and chat, translated to Triton's generate extension.

Triton has no OpenAI frontend; its ``/v2/models/{m}/generate`` takes a JSON
object whose keys are the model's input names (``text_input`` by convention)
and answers with its outputs (``text_output``), and ``generate_stream`` sends
one SSE event per response of a decoupled model. Triton refuses inputs a model
does not declare, so sampling options are spelt per backend (``Dialect``).

Pure: ids and timestamps come from the caller.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from turnpike.gateway.config import ChatTemplate, Dialect, OpenAIOptions

MAX_STOP = 4  # OpenAI's own limit
ROLES = ("system", "user", "assistant", "tool", "developer")


class Kind(StrEnum):
    COMPLETION = "completion"
    CHAT = "chat"


class OpenAIError(Exception):
    """A request error in OpenAI's shape; ``status`` is the HTTP status."""

    def __init__(
        self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@dataclass(frozen=True, slots=True)
class GenerateCall:
    """What to send to Triton: the model's name as the client gave it, and the body."""

    kind: Kind
    model: str
    stream: bool
    prompt: str
    sampling: Sampling

    def payload(self, dialect: Dialect) -> dict[str, Any]:
        return generate_payload(self.prompt, self.sampling, self.stream, dialect)


# -- requests ---------------------------------------------------------------


def completion_request(body: Any, options: OpenAIOptions) -> GenerateCall:
    obj = _object(body)
    prompt = obj.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise OpenAIError("prompt must be a string (one prompt per request)", param="prompt")
    if obj.get("echo"):
        raise OpenAIError("echo is not supported", param="echo")
    if obj.get("logprobs") is not None:
        raise OpenAIError("logprobs is not supported", param="logprobs")
    return GenerateCall(
        Kind.COMPLETION, _model(obj), _stream(obj), prompt, _sampling(obj, options, "max_tokens")
    )


def chat_request(body: Any, options: OpenAIOptions) -> GenerateCall:
    obj = _object(body)
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError("messages must be a non-empty list", param="messages")
    turns = [_message(m, i) for i, m in enumerate(messages)]
    sampling = _sampling(obj, options, "max_completion_tokens", "max_tokens")
    prompt = render_chat(turns, options.chat_template)
    return GenerateCall(Kind.CHAT, _model(obj), _stream(obj), prompt, sampling)


def render_chat(turns: Sequence[tuple[str, str]], template: ChatTemplate) -> str:
    """One prompt from the conversation, ending where the assistant speaks next."""
    if template is ChatTemplate.CHATML:
        text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
        return text + "<|im_start|>assistant\n"
    return "".join(f"{role}: {content}\n" for role, content in turns) + "assistant:"


def generate_payload(
    prompt: str, sampling: Sampling, stream: bool, dialect: Dialect
) -> dict[str, Any]:
    """The JSON body of Triton's generate endpoint for ``dialect``."""
    if dialect is Dialect.TRTLLM:
        inputs: dict[str, Any] = {
            "text_input": prompt,
            "max_tokens": sampling.max_tokens,
            "stream": stream,
        }
        optional = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "random_seed": sampling.seed,
            "presence_penalty": sampling.presence_penalty,
            "frequency_penalty": sampling.frequency_penalty,
        }
        inputs.update({k: v for k, v in optional.items() if v is not None})
        if sampling.stop:
            inputs["stop_words"] = list(sampling.stop)
        return inputs
    options: dict[str, Any] = {
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
    }
    present = {k: v for k, v in options.items() if v is not None}
    if dialect is Dialect.VLLM:
        if sampling.stop:
            present["stop"] = list(sampling.stop)
        return {
            "text_input": prompt,
            "stream": stream,
            "exclude_input_in_output": True,
            "sampling_parameters": json.dumps(present, separators=(",", ":")),
        }
    # Request parameters are scalars in Triton's protocol: lists travel as JSON text.
    if sampling.stop:
        present["stop"] = json.dumps(list(sampling.stop))
    # A decoupled model streams several responses; Triton's plain generate accepts
    # exactly one, so the model must be told whether this call streams.
    present["stream"] = stream
    return {"text_input": prompt, "parameters": present}


# -- responses --------------------------------------------------------------


def text_output(triton: Any) -> str:
    """``text_output`` of one Triton generate response (a batch of one may be a list)."""
    if not isinstance(triton, Mapping):
        raise OpenAIError("upstream answered with no JSON object", status=502)
    if "error" in triton:
        raise OpenAIError(f"upstream: {triton['error']}", status=502)
    out = triton.get("text_output")
    if isinstance(out, list) and len(out) == 1:
        out = out[0]
    if not isinstance(out, str):
        raise OpenAIError("upstream response has no text_output", status=502)
    return out


def _finish_reason(triton: Mapping[str, Any]) -> str:
    reason = triton.get("finish_reason")
    if isinstance(reason, list) and len(reason) == 1:
        reason = reason[0]
    return reason if reason in ("stop", "length") else "stop"


def response_body(
    call: GenerateCall, triton: Any, *, response_id: str, created: int
) -> dict[str, Any]:
    text = text_output(triton)
    reason = _finish_reason(triton)
    if call.kind is Kind.CHAT:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": reason,
            "logprobs": None,
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
        kind = "text_completion"
    return {
        "id": response_id,
        "object": kind,
        "created": created,
        "model": call.model,
        "choices": [choice],
    }


def sse(data: Mapping[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return b"".join(b"data: " + line.encode() + b"\n" for line in text.split("\n")) + b"\n"


DONE = sse("[DONE]")


class StreamTranslator:
    """Triton ``generate_stream`` events in, OpenAI ``stream: true`` events out.

    Errors after the first byte cannot change the HTTP status any more, so
    they travel as an ``error`` event, which OpenAI's own clients raise.
    """

    def __init__(
        self, call: GenerateCall, *, response_id: str, created: int, cumulative: bool = False
    ) -> None:
        self._call = call
        self._id = response_id
        self._created = created
        self._cumulative = cumulative
        self._sent = ""
        self._started = False
        self._ended = False

    def _chunk(self, delta: str | None, reason: str | None) -> bytes:
        if self._call.kind is Kind.CHAT:
            content: dict[str, Any] = {} if delta is None else {"content": delta}
            if not self._started:
                content = {"role": "assistant", **content}
            choice: dict[str, Any] = {"index": 0, "delta": content, "finish_reason": reason}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": reason, "logprobs": None}
            kind = "text_completion"
        self._started = True
        return sse(
            {
                "id": self._id,
                "object": kind,
                "created": self._created,
                "model": self._call.model,
                "choices": [choice],
            }
        )

    def event(self, data: str) -> bytes:
        """Frames for one upstream event's data; b"" when it adds nothing."""
        if self._ended:
            return b""
        try:
            triton = json.loads(data)
            text = text_output(triton)
        except (ValueError, OpenAIError) as exc:
            message = exc.message if isinstance(exc, OpenAIError) else "upstream sent bad JSON"
            self._ended = True
            return sse(OpenAIError(message, status=502).body()) + DONE
        if self._cumulative:
            delta = text[len(self._sent) :] if text.startswith(self._sent) else text
            self._sent = text
        else:
            delta = text
        if not delta and self._started:
            return b""
        return self._chunk(delta, None)

    def end(self) -> bytes:
        """The closing frames once the upstream stream has ended cleanly."""
        if self._ended:
            return b""
        self._ended = True
        return self._chunk(None, "stop") + DONE

    def fail(self, message: str) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        return sse(OpenAIError(message, status=502).body()) + DONE


class SSEDecoder:
    """Incremental Server-Sent Events parser: bytes in, each event's ``data`` out.

    Bounded: an event larger than ``max_event_bytes`` is an error, so an
    upstream that never sends a blank line cannot grow the buffer forever.
    """

    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        events: list[str] = []
        while True:
            cut = self._buffer.find(b"\n")
            if cut < 0:
                break
            line = self._buffer[:cut].rstrip(b"\r")
            self._buffer = self._buffer[cut + 1 :]
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if name == b"data":
                self._data.append(value.removeprefix(b" ").decode("utf-8", "replace"))
        if len(self._buffer) + sum(len(d) for d in self._data) > self._max:
            raise ValueError(f"an SSE event exceeds {self._max} bytes")
        return events

    def close(self) -> list[str]:
        """Events left when the stream ends without a final blank line."""
        rest = self.feed(b"\n\n") if self._buffer or self._data else []
        self._buffer = b""
        return rest


# -- request fields ---------------------------------------------------------


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise OpenAIError("the request body must be a JSON object")
    if body.get("n", 1) != 1:
        raise OpenAIError("only n=1 is supported", param="n")
    return body


def _model(obj: Mapping[str, Any]) -> str:
    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError("model is required", param="model")
    return model


def _stream(obj: Mapping[str, Any]) -> bool:
    stream = obj.get("stream", False)
    if not isinstance(stream, bool):
        raise OpenAIError("stream must be a boolean", param="stream")
    return stream


def _number(obj: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OpenAIError(f"{name} must be a number", param=name)
    if not low <= value <= high:
        raise OpenAIError(f"{name} must be between {low:g} and {high:g}", param=name)
    return float(value)


def _integer(obj: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OpenAIError(f"{name} must be an integer in [{low}, {high}]", param=name)
    return value


def _sampling(obj: Mapping[str, Any], options: OpenAIOptions, *max_names: str) -> Sampling:
    max_tokens = None
    for name in max_names:
        max_tokens = _integer(obj, name, 1, 1_000_000)
        if max_tokens is not None:
            break
    stop = obj.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif (
        isinstance(stop, list)
        and len(stop) <= MAX_STOP
        and all(isinstance(s, str) and s for s in stop)
    ):
        stops = tuple(stop)
    else:
        raise OpenAIError(f"stop must be a string or up to {MAX_STOP} strings", param="stop")
    return Sampling(
        max_tokens=max_tokens if max_tokens is not None else options.max_tokens_default,
        temperature=_number(obj, "temperature", 0.0, 2.0),
        top_p=_number(obj, "top_p", 0.0, 1.0),
        stop=stops,
        seed=_integer(obj, "seed", -(2**63), 2**63 - 1),
        presence_penalty=_number(obj, "presence_penalty", -2.0, 2.0),
        frequency_penalty=_number(obj, "frequency_penalty", -2.0, 2.0),
    )


def _message(message: Any, index: int) -> tuple[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, Mapping):
        raise OpenAIError(f"{where} must be an object", param=where)
    role = message.get("role")
    if role not in ROLES:
        raise OpenAIError(f"{where}.role must be one of {', '.join(ROLES)}", param=where)
    content = message.get("content")
    if content is None:
        content = ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise OpenAIError(f"{where}: only text content parts are supported", param=where)
            text = part.get("text")
            if not isinstance(text, str):
                raise OpenAIError(f"{where}: a text part needs text", param=where)
            parts.append(text)
        content = "".join(parts)
    if not isinstance(content, str):
        raise OpenAIError(f"{where}.content must be a string or text parts", param=where)
    return role, content
