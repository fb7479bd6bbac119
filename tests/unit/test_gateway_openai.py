"""OpenAI requests to Triton generate bodies and back, SSE framing both ways."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnpike.gateway.config import ChatTemplate, Dialect, OpenAIOptions
from turnpike.gateway.openai import (
    DONE,
    OpenAIError,
    SSEDecoder,
    StreamTranslator,
    chat_request,
    completion_request,
    response_body,
    sse,
)

OPTIONS = OpenAIOptions()


def _events(frames: bytes) -> list[str]:
    decoder = SSEDecoder()
    return decoder.feed(frames) + decoder.close()


def test_completion_for_each_dialect() -> None:
    call = completion_request(
        {"model": "m", "prompt": "Hi", "max_tokens": 5, "temperature": 0.5, "stop": ["\n"]},
        OPTIONS,
    )
    assert call.payload(Dialect.PLAIN) == {
        "text_input": "Hi",
        "parameters": {"max_tokens": 5, "temperature": 0.5, "stop": '["\\n"]', "stream": False},
    }
    assert call.payload(Dialect.TRTLLM) == {
        "text_input": "Hi",
        "max_tokens": 5,
        "stream": False,
        "temperature": 0.5,
        "stop_words": ["\n"],
    }
    vllm = call.payload(Dialect.VLLM)
    assert vllm["exclude_input_in_output"] is True
    assert json.loads(vllm["sampling_parameters"]) == {
        "max_tokens": 5,
        "temperature": 0.5,
        "stop": ["\n"],
    }


def test_defaults_and_a_single_prompt_list() -> None:
    call = completion_request({"model": "m", "prompt": ["Hi"], "stream": True}, OPTIONS)
    assert call.prompt == "Hi" and call.stream
    assert call.sampling.max_tokens == OPTIONS.max_tokens_default


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "m", "prompt": ["a", "b"]}, "prompt"),
        ({"model": "m", "prompt": [1, 2]}, "prompt"),
        ({"model": "m", "prompt": "x", "n": 2}, "n"),
        ({"model": "m", "prompt": "x", "temperature": 3}, "temperature"),
        ({"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"model": "m", "prompt": "x", "stop": ["a"] * 5}, "stop"),
        ({"model": "m", "prompt": "x", "stream": "yes"}, "stream"),
        ({"model": "m", "prompt": "x", "echo": True}, "echo"),
    ],
)
def test_bad_requests_name_the_parameter(body: dict[str, object], param: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        completion_request(body, OPTIONS)
    assert caught.value.status == 400
    assert caught.value.body()["error"]["param"] == param


def test_chat_templates() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
        "max_completion_tokens": 7,
    }
    chatml = chat_request(body, OPTIONS)
    assert chatml.prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert chatml.sampling.max_tokens == 7
    plain = chat_request(body, OpenAIOptions(chat_template=ChatTemplate.PLAIN))
    assert plain.prompt == "system: Be brief.\nuser: Hi\nassistant:"
    for bad in (
        [],
        [{"role": "wizard", "content": "x"}],
        [{"role": "user", "content": [{"type": "image_url"}]}],
    ):
        with pytest.raises(OpenAIError):
            chat_request({"model": "m", "messages": bad}, OPTIONS)


def test_responses_in_openai_shape() -> None:
    completion = completion_request({"model": "m", "prompt": "Hi"}, OPTIONS)
    body = response_body(completion, {"text_output": "there"}, response_id="c1", created=5)
    assert body["object"] == "text_completion"
    assert body["choices"] == [
        {"index": 0, "text": "there", "finish_reason": "stop", "logprobs": None}
    ]
    chat = chat_request({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, OPTIONS)
    body = response_body(chat, {"text_output": ["yo"]}, response_id="c2", created=5)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "yo"}
    with pytest.raises(OpenAIError) as caught:
        response_body(chat, {"outputs": []}, response_id="c3", created=5)
    assert caught.value.status == 502


def test_chat_stream_starts_with_the_role_and_ends_with_done() -> None:
    call = chat_request(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}, OPTIONS
    )
    out = StreamTranslator(call, response_id="x", created=1)
    frames = out.event('{"text_output": "Hel"}') + out.event('{"text_output": "lo"}') + out.end()
    events = _events(frames)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert chunks[1]["choices"][0]["delta"] == {"content": "lo"}
    assert chunks[2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "x" for c in chunks)


def test_cumulative_streams_become_deltas_and_errors_end_the_stream() -> None:
    call = completion_request({"model": "m", "prompt": "p", "stream": True}, OPTIONS)
    out = StreamTranslator(call, response_id="x", created=1, cumulative=True)
    texts = [
        json.loads(e)["choices"][0]["text"]
        for e in _events(out.event('{"text_output": "ab"}') + out.event('{"text_output": "abc"}'))
    ]
    assert texts == ["ab", "c"]
    failed = _events(out.event('{"error": "boom"}'))
    assert "boom" in json.loads(failed[0])["error"]["message"] and failed[-1] == "[DONE]"
    assert out.end() == b"" and out.event('{"text_output": "late"}') == b""


@given(
    # JSON text, which is what both ends send: no raw line breaks inside an event.
    payloads=st.lists(
        st.text(st.characters(blacklist_characters="\r\n"), max_size=30), min_size=1, max_size=5
    ),
    cuts=st.lists(st.integers(0, 400), max_size=8),
    crlf=st.booleans(),
)
def test_sse_decoding_does_not_depend_on_how_bytes_are_split(
    payloads: list[str], cuts: list[int], crlf: bool
) -> None:
    stream = b"".join(sse(p) for p in payloads) + b": keepalive\n\n"
    if crlf:
        stream = stream.replace(b"\n", b"\r\n")
    decoder = SSEDecoder()
    events: list[str] = []
    start = 0
    for cut in sorted(set(cuts)):
        events += decoder.feed(stream[start:cut])
        start = max(start, cut)
    events += decoder.feed(stream[start:]) + decoder.close()
    assert events == payloads


def test_sse_events_are_bounded() -> None:
    decoder = SSEDecoder(max_event_bytes=10)
    with pytest.raises(ValueError):
        decoder.feed(b"data: " + b"x" * 20)
    assert DONE == b"data: [DONE]\n\n"
