"""Module 7: the OpenAI-compatible API, tested with the official ``openai`` client against a real uvicorn server."""

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from helpers.serving import free_port, running_server
from llm_course.inference import GenerationEngine, SamplingParams
from llm_course.inference.scheduler import Scheduler
from llm_course.inference.serve import build_server

HI = [{"role": "user", "content": "Hi"}]
OK = "constant:fp32"  # always answers "ok ok ok ..." (conftest.constant_llama)


@pytest.fixture(scope="module")
def engines(constant_llama, tiny_llama):
    return {OK: GenerationEngine.load(constant_llama, device="cpu"),
            "tiny:fp32": GenerationEngine.load(tiny_llama, device="cpu")}  # fmt: skip


@pytest.fixture(scope="module")
def server(engines):
    app = build_server(engines, Scheduler(queue_size=64), SamplingParams(temperature=0, max_new_tokens=8), ui=False)
    with running_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="not-needed", max_retries=0, timeout=60)


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list()] == [OK, "tiny:fp32"]
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["queue"]["queue_size"] == 64


def test_non_streaming_answer_with_usage(client, engines):
    reply = client.chat.completions.create(model=OK, messages=HI, max_tokens=5)
    assert reply.choices[0].message.content == "ok " * 5
    assert reply.choices[0].finish_reason == "length"
    prompt_tokens = len(engines[OK].prompt_ids(HI))
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, 5)
    assert reply.usage.total_tokens == prompt_tokens + 5
    timings = reply.model_extra["timings"]
    assert timings["completion_tokens"] == 5 and timings["time_to_first_token_s"] > 0


def test_streaming_answer_equals_the_non_streaming_one(client):
    kwargs = {"model": "tiny:fp32", "messages": HI, "max_tokens": 12, "temperature": 0}
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_usage_chunk_only_when_asked(client):
    chunks = list(client.chat.completions.create(model=OK, messages=HI, max_tokens=2, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stream_is_server_sent_events_ending_in_done(server):
    body = {"model": OK, "messages": HI, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in payloads if p["choices"]) == "ok ok ok "
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == 3


def test_sampling_values_and_seed_reach_the_model(client):
    kwargs = {"model": "tiny:fp32", "messages": HI, "max_tokens": 20, "temperature": 1.5, "top_p": 1.0}
    a = client.chat.completions.create(**kwargs, seed=1).choices[0].message.content
    b = client.chat.completions.create(**kwargs, seed=1).choices[0].message.content
    c = client.chat.completions.create(**kwargs, seed=2).choices[0].message.content
    assert a == b != c
    stopped = client.chat.completions.create(model=OK, messages=HI, max_tokens=20, stop=["ok ok ok"])
    assert stopped.choices[0].message.content == "" and stopped.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("change", "status", "param", "says"),
    [
        ({"model": "gpt-4"}, 404, "model", "model='gpt-4' is not served here; models: constant:fp32"),
        ({"max_tokens": 0}, 400, "max_tokens", "must be in 1..1024"),
        ({"max_tokens": 5000}, 400, "max_tokens", "must be in 1..1024"),
        ({"temperature": -1}, 400, "temperature", "temperature=-1.0 must be >= 0"),
        ({"top_p": 1.5}, 400, "top_p", "top_p=1.5 must be in (0, 1]"),
        ({"messages": [{"role": "user", "content": "x" * 1100}]}, 400, "messages", "over the model's context length"),
        ({"messages": [{"role": "user", "content": "x" * 900}], "max_tokens": 200}, 400, "max_tokens", "at most"),
        ({"messages": []}, 400, "messages", "at least 1"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role", "'system', 'developer'"),
        ({"n": 2}, 400, "n", "one choice per request"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "stop has 5 strings; at most 4"),
    ],
)
def test_bad_requests_get_openai_errors(client, change, status, param, says):
    kwargs = {"model": OK, "messages": HI} | change
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(**kwargs)
    assert err.value.status_code == status
    error = err.value.body  # the client unwraps {"error": {...}}
    assert error["param"] == param and says in error["message"] and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("content", "says"),
    [(b"{not json", "not valid JSON"), (b'{"model": "constant:fp32"}', "messages: Field required")],
)
def test_malformed_bodies_get_400_not_500(server, client, content, says):
    headers = {"content-type": "application/json"}
    response = httpx.post(f"{server}/v1/chat/completions", content=content, headers=headers)
    assert response.status_code == 400 and says in response.json()["error"]["message"]
    assert client.chat.completions.create(model=OK, messages=HI, max_tokens=1).choices[0].message.content == "ok "


def test_32_concurrent_requests_all_complete(client):
    def ask(i):
        stream = i % 2 == 0
        reply = client.chat.completions.create(model=OK, messages=[{"role": "user", "content": f"q{i}"}],
                                               max_tokens=4, stream=stream)  # fmt: skip
        if stream:
            return "".join(c.choices[0].delta.content or "" for c in reply)
        return reply.choices[0].message.content

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, range(32)))
    assert answers == ["ok " * 4] * 32


def wait_until(condition, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        time.sleep(0.05)


@pytest.fixture
def slow_server(engines, monkeypatch):
    """A server whose model takes 10 ms a token, with room for one waiting request."""
    engine = engines[OK]
    forward = engine.model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(0.01)
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", slow_forward)
    scheduler = Scheduler(queue_size=1, max_batch_size=1, retry_after_s=3)
    app = build_server({OK: engine}, scheduler, SamplingParams(temperature=0), ui=False)
    with running_server(app) as url:
        yield url


def test_a_client_that_drops_mid_stream_frees_its_slot(slow_server):
    body = {"model": OK, "messages": HI, "max_tokens": 900, "stream": True}  # 9 s if it ran to the end
    with httpx.stream("POST", f"{slow_server}/v1/chat/completions", json=body) as response:
        for i, _ in enumerate(response.iter_lines()):
            if i == 5:
                break  # the client goes away mid-reply
    started = time.monotonic()
    health = lambda: httpx.get(f"{slow_server}/health").json()  # noqa: E731
    wait_until(lambda: health()["queue"]["running"] == 0, 5, "the dropped reply to free its slot")
    assert time.monotonic() - started < 5 and health()["finished"] == {"cancelled": 1}
    reply = httpx.post(f"{slow_server}/v1/chat/completions", json={"model": OK, "messages": HI, "max_tokens": 2})
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "ok ok "


def test_a_full_queue_answers_429_with_retry_after(slow_server):
    long = {"model": OK, "messages": HI, "max_tokens": 200}  # 2 s each

    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(httpx.post, f"{slow_server}/v1/chat/completions", json=long, timeout=30)
        health = lambda: httpx.get(f"{slow_server}/health").json()["queue"]  # noqa: E731
        wait_until(lambda: health()["running"] == 1, 5, "the first request to run")
        waiting = pool.submit(httpx.post, f"{slow_server}/v1/chat/completions", json=long, timeout=30)
        wait_until(lambda: health()["waiting"] == 1, 5, "the second request to wait")
        refused = httpx.post(f"{slow_server}/v1/chat/completions", json=long)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
        assert refused.json()["error"]["code"] == "queue_full"
        assert running.result().status_code == 200 and waiting.result().status_code == 200


def test_serve_command_binds_loopback(constant_llama):
    port = free_port()
    command = [sys.executable, "-m", "llm_course", "serve", "--model", constant_llama, "--device", "cpu",
               "--port", str(port), "--ui", "false"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/health") or process.poll() is not None, 120, "serve")
        assert process.poll() is None, process.stdout.read()
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]["id"].endswith(":fp32")
        outside = _outside_address()
        if outside is not None:  # bound to 127.0.0.1 only: another local address of this machine is refused
            assert not _answers(f"http://{outside}:{port}/health")
    finally:
        process.terminate()
        process.wait(30)


def _answers(url):
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _outside_address():
    """A non-loopback IPv4 address of this machine, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address
