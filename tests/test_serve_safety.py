"""Module 7: the server under misuse, tested over real sockets on 127.0.0.1: the API key and the Host check, the caps
on a request, clients that go away, OpenAI's error object and finish reasons, and a bounded soak."""

import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from conftest import run_cli
from helpers.serving import running_server, serve_command
from llm_course.inference import GenerationEngine, SamplingParams
from llm_course.inference.guard import host_names
from llm_course.inference.scheduler import Limits, Scheduler
from llm_course.inference.serve import build_server, check_host

HI = [{"role": "user", "content": "Hi"}]
OK = "constant:fp32"  # always answers "ok ok ok ..." (conftest.constant_llama)
KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def engine(constant_llama):
    return GenerationEngine.load(constant_llama, device="cpu")


def serve_app(engine, **options):
    scheduler = Scheduler(queue_size=options.pop("queue_size", 64), max_batch_size=options.pop("max_batch_size", 8),
                          limits=options.pop("limits", None))  # fmt: skip
    defaults = SamplingParams(temperature=0, max_new_tokens=4)
    return build_server({OK: engine}, scheduler, defaults, ui=False, allowed_hosts=host_names("127.0.0.1"), **options)


@pytest.fixture(scope="module")
def guarded(engine):
    limits = Limits(max_messages=4, max_prompt_chars=2000, max_prompt_tokens=600)
    with running_server(serve_app(engine, limits=limits, api_key=KEY, max_body_bytes=20_000)) as url:
        yield url


def post(url, body=None, key=KEY, client=httpx, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post(f"{url}/v1/chat/completions", json=body, headers=headers | kwargs.pop("headers", {}), **kwargs)


def test_v1_needs_the_key_health_does_not(guarded):
    for key in ("wrong", KEY + "x", KEY[:-1]):
        client = openai.OpenAI(base_url=f"{guarded}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            client.chat.completions.create(model=OK, messages=HI)
        assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    missing = post(guarded, {"model": OK, "messages": HI}, key=None)
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
    assert httpx.get(f"{guarded}/v1/models").status_code == 401
    client = openai.OpenAI(base_url=f"{guarded}/v1", api_key=KEY, max_retries=0)
    assert client.chat.completions.create(model=OK, messages=HI).choices[0].message.content == "ok " * 4
    assert httpx.get(f"{guarded}/health").json()["status"] == "ok"


def test_a_foreign_host_header_is_refused(guarded):
    port = guarded.rsplit(":", 1)[1]
    refused = httpx.get(f"{guarded}/health", headers={"Host": f"rebound.example:{port}"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_host"
    assert httpx.get(f"{guarded}/health", headers={"Host": f"localhost:{port}"}).status_code == 200
    assert host_names("0.0.0.0") is None and "proxy.lan" in host_names("0.0.0.0", ["proxy.lan"])


def test_oversize_bodies_get_413_before_parsing(guarded):
    declared = post(guarded, content=b"{" + b" " * 30_000, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"
    assert "--max_body_bytes" in declared.json()["error"]["message"]
    chunked = post(guarded, content=iter([b" " * 8_000] * 4), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "content-length" not in chunked.request.headers  # sent in chunks


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        (HI * 5, "messages has 5 entries; this server takes at most 4 (--max_messages)"),
        ([{"role": "user", "content": "x" * 2500}], "2,500 characters; this server takes at most 2,000"),
        ([{"role": "user", "content": "x" * 1500}], "over this server's limit of 600 (--max_prompt_tokens)"),
    ],
)
def test_caps_on_messages_characters_and_tokens(guarded, messages, says):
    refused = post(guarded, {"model": OK, "messages": messages})
    assert refused.status_code == 400 and says in refused.json()["error"]["message"]
    assert refused.json()["error"]["param"] == "messages"


def test_invalid_input_is_not_echoed_back_whole(guarded):
    refused = post(guarded, {"model": OK, "messages": [{"role": "w" * 5000, "content": "hi"}]})
    message = refused.json()["error"]["message"]
    assert refused.status_code == 400 and "5,002 characters" in message and len(message) < 400
    unknown = post(guarded, {"model": "m" * 5000, "messages": HI})
    assert unknown.status_code == 404 and len(unknown.json()["error"]["message"]) < 400


def test_unknown_routes_and_methods_answer_in_openai_shape(guarded):
    headers = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{guarded}/v1/nothing", headers=headers).json()["error"]["message"] == "Not Found"
    wrong = httpx.get(f"{guarded}/v1/chat/completions", headers=headers)
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"


def test_tokenization_runs_once_off_the_event_loop(engine, monkeypatch):
    """A prompt that takes 1.5 s to tokenize: /health keeps answering meanwhile, and it is tokenized once."""
    calls, prompt_ids = [], engine.prompt_ids

    def slow_prompt_ids(messages):
        calls.append(1)
        time.sleep(1.5)
        return prompt_ids(messages)

    monkeypatch.setattr(engine, "prompt_ids", slow_prompt_ids)
    with running_server(serve_app(engine)) as url, ThreadPoolExecutor(1) as pool:
        reply = pool.submit(post, url, {"model": OK, "messages": HI}, timeout=30)
        time.sleep(0.2)
        slowest = 0.0
        while not reply.done():
            start = time.perf_counter()
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200
            slowest = max(slowest, time.perf_counter() - start)
        assert reply.result().status_code == 200 and calls == [1] and slowest < 0.5


@pytest.fixture
def slow_engine(engine, monkeypatch):
    """The constant model at 10 ms a forward pass."""
    forward = engine.model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(0.01)
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", slow_forward)
    return engine


def hang_up_later(url, body, key=None):
    """Send a chat request on a raw socket and return the socket: closing it is the client going away."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    head += f"Authorization: Bearer {key}\r\n" if key else ""
    sock.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def wait_until(condition, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        time.sleep(0.05)


def test_clients_that_leave_free_their_place_waiting_or_running(slow_engine):
    long = {"model": OK, "messages": HI, "max_tokens": 900}  # 9 s if it ran to the end
    with running_server(serve_app(slow_engine, max_batch_size=1, queue_size=4)) as url:
        queue = lambda: httpx.get(f"{url}/health").json()  # noqa: E731
        running = hang_up_later(url, long)
        wait_until(lambda: queue()["queue"]["running"] == 1, 5, "the first request to run")
        waiting = [hang_up_later(url, long), hang_up_later(url, long | {"stream": True})]
        wait_until(lambda: queue()["queue"]["waiting"] == 2, 5, "two requests to wait")
        for sock in waiting:
            sock.close()
        wait_until(lambda: queue()["queue"]["waiting"] == 0, 3, "the waiting clients to leave the queue")
        assert queue()["queue"]["running"] == 1 and queue()["finished"] == {"cancelled": 2}
        started = time.monotonic()
        running.close()  # a non-streaming client gone mid-reply: cancelled at the next token
        wait_until(lambda: queue()["queue"]["running"] == 0, 3, "the running reply to stop")
        assert time.monotonic() - started < 3 and queue()["finished"] == {"cancelled": 3}
        assert post(url, {"model": OK, "messages": HI, "max_tokens": 2}, key=None).json()["choices"][0]["message"][
            "content"] == "ok ok "  # fmt: skip


def test_a_failing_reply_is_an_openai_error_not_plain_text(engine, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom " * 1000)

    with running_server(serve_app(engine)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        monkeypatch.setattr(engine.model, "forward", broken)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model=OK, messages=HI)
        assert err.value.body["type"] == "server_error" and "RuntimeError: 'boom boom" in err.value.body["message"]
        assert len(err.value.body["message"]) < 500
        body = {"model": OK, "messages": HI, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            lines = [line for line in response.iter_lines() if line]
        assert '"server_error"' in lines[-2] and lines[-1] == "data: [DONE]"
        monkeypatch.undo()
        assert client.chat.completions.create(model=OK, messages=HI).choices[0].message.content == "ok " * 4
        assert httpx.get(f"{url}/health").json()["finished"]["error"] == 2


def test_finish_reason_at_the_max_tokens_boundary(engine, monkeypatch):
    with running_server(serve_app(engine)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        stop = client.chat.completions.create(model=OK, messages=HI, max_tokens=3, stop=["ok ok ok"])
        assert stop.choices[0].message.content == "" and stop.choices[0].finish_reason == "stop"
        held = client.chat.completions.create(model=OK, messages=HI, max_tokens=2, stop=["ok ok ok"])
        assert held.choices[0].message.content == "ok ok " and held.choices[0].finish_reason == "length"
        monkeypatch.setattr(engine, "eos_ids", {0})  # "ok " is the end of turn now: the first token ends the reply
        eos = client.chat.completions.create(model=OK, messages=HI, max_tokens=1)
        assert eos.choices[0].message.content == "" and eos.choices[0].finish_reason == "stop"
        assert eos.usage.completion_tokens == 1


def test_serve_refuses_exposed_hosts_without_a_key_and_bad_sizes(capsys, monkeypatch):
    monkeypatch.delenv("LLM_COURSE_API_KEY", raising=False)
    for args, says in [
        (["--host=0.0.0.0"], "--host=0.0.0.0 exposes the server beyond this machine with no API key: set --api_key"),
        (["--queue_size=0"], "--queue_size=0 must be >= 1"),
        (["--max_batch_size=0"], "--max_batch_size=0 must be >= 1"),
        (["--max_body_bytes=-1"], "--max_body_bytes=-1 must be >= 1"),
        (["--support_desk=true", "--ui=false"], "--support_desk=true adds a tab to the page, which --ui=false turns"),
    ]:
        with pytest.raises(SystemExit):
            run_cli("serve", "--model", "never-loaded", *args)
        err = capsys.readouterr().err
        assert says in err.splitlines()[0] and "Traceback" not in err
    check_host("0.0.0.0", allow_unauthenticated=True)
    assert "exposes the server" in capsys.readouterr().err
    for host, key in [("127.0.0.1", None), ("::1", None), ("localhost", None), ("0.0.0.0", KEY)]:
        check_host(host, key)
    assert capsys.readouterr().err == ""


def test_the_page_asks_for_the_key(engine):
    from fastapi.testclient import TestClient

    app = build_server({OK: engine}, Scheduler(), SamplingParams(temperature=0), ui=True, api_key=KEY)
    with TestClient(app) as page:
        assert page.get("/config").status_code == 401
        assert page.post("/login", data={"username": "me", "password": "wrong"}).status_code == 400
        assert page.post("/login", data={"username": "me", "password": KEY}).status_code == 200
        assert page.get("/config").status_code == 200
        assert page.post("/v1/chat/completions", json={"model": OK, "messages": HI}).status_code == 401


def test_soak_mixed_traffic_leaves_no_5xx_and_no_slot_taken(constant_llama):
    """A few hundred requests, 32 at a time: streaming or not, malformed, oversize, bad keys, clients that leave.
    The server is the ``llm-course serve`` command in a process of its own, as in use: in this process, the 33 client
    threads would share its GIL, and /health's latency would be theirs (notes/07)."""
    import psutil

    rng = random.Random(0)
    model = f"{Path(constant_llama).name}:fp32"
    clients, local = [], threading.local()

    def client():
        """This load thread's client, a new connection per request: ``httpx.post`` would build a client, and its TLS
        context (25 ms of CPU), per request, on the two cores the server is measured on."""
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=0))
            clients.append(local.client)
        return local.client

    def one(i):
        kind, own = i % 8, client()
        body = {"model": model, "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": rng.randint(1, 12)}
        json_type = {"content-type": "application/json"}
        if kind == 0:
            return post(url, content=b"{not json", headers=json_type, client=own).status_code
        if kind == 1:
            return post(url, content=b" " * 25_000, headers=json_type, client=own).status_code
        if kind == 2:
            return post(url, body, key="bad", client=own).status_code
        if kind == 3:
            sock = hang_up_later(url, body | {"stream": i % 16 == 3, "max_tokens": 200}, KEY)
            time.sleep(rng.random() * 0.05)
            sock.close()
            return 0
        if kind in (4, 5):
            with own.stream("POST", f"{url}/v1/chat/completions", json=body | {"stream": True},
                            headers={"Authorization": f"Bearer {KEY}"}) as response:  # fmt: skip
                text = "".join(response.iter_lines())
                return response.status_code if text.endswith("data: [DONE]") else 599
        return post(url, body, client=own).status_code

    def round_of(n):
        with ThreadPoolExecutor(32) as pool:
            return list(pool.map(one, range(n)))

    def health_times(stop):
        """/health's latency, 2 ms after the last answer (a probe sent at once would sample the quick moments more
        often than the slow ones), each on a new connection as a load balancer's health check, from one client made
        once: ``httpx.get`` builds a client, and its TLS context (25 ms of CPU), per call, and timed mostly that."""
        times = []
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as prober:
            while not stop.wait(0.002):
                start = time.perf_counter()
                assert prober.get(f"{url}/health").status_code == 200
                times.append(time.perf_counter() - start)
        return times

    def probed_round(n):
        with ThreadPoolExecutor(1) as prober:
            stop = threading.Event()
            probe = prober.submit(health_times, stop)
            statuses = round_of(n)
            stop.set()
            return statuses, sorted(probe.result())

    options = ["--model", constant_llama, "--device", "cpu", "--ui", "false", "--max_body_bytes", "20000",
               "--queue_size", "64", "--max_batch_size", "8", "--temperature", "0"]  # fmt: skip
    with serve_command(*options, env={"LLM_COURSE_API_KEY": KEY}) as (url, pid):
        probed_round(128)  # warm-up: the same mix, so thread pools and allocator arenas reach their size
        health = lambda: httpx.get(f"{url}/health").json()  # noqa: E731
        wait_until(lambda: health()["queue"]["running"] == 0, 10, "the warm-up to finish")
        before = psutil.Process(pid).memory_info().rss
        statuses, health_s = probed_round(512)
        idle = lambda: health()["queue"]["waiting"] == health()["queue"]["running"] == 0  # noqa: E731
        wait_until(idle, 10, "every slot to be free")
        after = psutil.Process(pid).memory_info().rss
    for each in clients:
        each.close()
    assert not [s for s in statuses if s >= 500], statuses
    assert {s for s in statuses if s} <= {200, 400, 401, 413}
    assert statuses.count(200) == 512 // 2  # kinds 4 to 7
    assert after <= 1.1 * before, f"RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB"
    p99 = health_s[int(0.99 * (len(health_s) - 1))]
    print(f"/health while saturated: {len(health_s)} probes, p50 {health_s[len(health_s) // 2] * 1e3:.0f} ms, "
          f"p99 {p99 * 1e3:.0f} ms, max {health_s[-1] * 1e3:.0f} ms")  # fmt: skip
    assert len(health_s) >= 10 and p99 < 0.1, f"/health p99 {p99 * 1e3:.0f} ms while saturated"  # notes/07
