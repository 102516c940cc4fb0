"""OpenAI function calling on the server: ``tools``/``tool_choice`` in, ``tool_calls`` out, whole and streamed, tested
with the official ``openai`` client against a real uvicorn server on tiny models; constrained rows in a shared batch."""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch

from helpers.serving import running_server
from llm_course import tiny
from llm_course.agent.constrained import CallGrammar, call_schema
from llm_course.agent.messages import CALL_OR_TEXT, render_call, result_message, system_prompt
from llm_course.agent.tools import Tool, check_value
from llm_course.inference import GenerationEngine, SamplingParams
from llm_course.inference.api import build_app
from llm_course.inference.batching import DecodeBatch
from llm_course.inference.functions import DEFAULT_INTRO, FOLLOW_UP
from llm_course.inference.request import Generation
from llm_course.inference.scheduler import Scheduler

pytest.importorskip("llguidance")

TINY, OK, BRACE = "tiny", "constant", "brace"  # random weights; always "ok "; always the lowest allowed id, "{"
WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                           "unit": {"type": "string", "enum": ["c", "f"]}},
                          "required": ["city", "unit"], "additionalProperties": False}}  # fmt: skip
ADD = {"name": "add", "description": "Add two numbers.",
       "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                                       "b": {"type": "integer", "minimum": 0, "maximum": 99}},
                      "required": ["a", "b"], "additionalProperties": False}}  # fmt: skip
TOOLS = [{"type": "function", "function": f} for f in (WEATHER, ADD)]
SCHEMAS = {f["name"]: f["parameters"] for f in (WEATHER, ADD)}
HI = [{"role": "user", "content": "What is the weather in Paris?"}]
PROMPTS = ["Hi", "Add 2 and 3", "x" * 40]
CHOICES = ["required", {"type": "function", "function": {"name": "add"}},
           {"type": "function", "function": {"name": "get_weather"}}]  # fmt: skip


@pytest.fixture(scope="module")
def brace_llama(tmp_path_factory) -> str:
    """Like conftest's constant_llama, but token 0 is "{": every logit ties, so a grammar's lowest allowed id wins,
    and under tool_choice="auto" the reply is always a call (unconstrained, always "{")."""
    return tiny.constant_lm(tmp_path_factory.mktemp("brace_llama"), "{")


@pytest.fixture(scope="module")
def engines(tiny_llama, constant_llama, brace_llama):
    return {name: GenerationEngine.load(path, device="cpu")
            for name, path in ((TINY, tiny_llama), (OK, constant_llama), (BRACE, brace_llama))}  # fmt: skip


@pytest.fixture(scope="module")
def client(engines):
    app = build_app(engines, Scheduler(queue_size=64), SamplingParams(temperature=0, max_new_tokens=200))
    with running_server(app) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=60)


def check_call(name: str, arguments: str) -> dict:
    """The arguments of a call, after checking that it names a tool and fits its schema (ranges included)."""
    assert name in SCHEMAS, name
    args = json.loads(arguments)
    assert check_value(args, SCHEMAS[name], "arguments") == [], (name, args)
    assert all(0 <= v <= 99 for k, v in args.items() if k in ("a", "b")), args
    return args


def streamed(client, **kwargs):
    """Stream a reply; the official client's own accumulation gives the final message."""
    with client.chat.completions.stream(**kwargs) as stream:
        try:
            return stream.get_final_completion().choices[0]
        except openai.LengthFinishReasonError as cut:  # the helper refuses to parse a reply cut at max_tokens
            return cut.completion.choices[0]


@pytest.mark.parametrize("model", [TINY, OK])
@pytest.mark.parametrize("choice", CHOICES, ids=["required", "add", "get_weather"])
def test_required_and_named_always_give_a_valid_call_whole_and_streamed(client, model, choice):
    for text in PROMPTS:
        kwargs = {"model": model, "messages": [{"role": "user", "content": text}], "tools": TOOLS,
                  "tool_choice": choice, "temperature": 0}  # fmt: skip
        whole = client.chat.completions.create(**kwargs).choices[0]
        assert whole.finish_reason == "tool_calls" and whole.message.content is None
        [call] = whole.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        args = check_call(call.function.name, call.function.arguments)
        if isinstance(choice, dict):
            assert call.function.name == choice["function"]["name"]
        stream = streamed(client, **kwargs)
        assert stream.finish_reason == "tool_calls" and not stream.message.content
        [same] = stream.message.tool_calls
        assert (same.function.name, json.loads(same.function.arguments)) == (call.function.name, args)
        assert same.id.startswith("call_") and same.type == "function"


def test_streamed_call_deltas_carry_index_id_name_then_argument_pieces(client):
    kwargs = {"model": TINY, "messages": HI, "tools": TOOLS, "tool_choice": "required", "temperature": 0}
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    head, rest = deltas[0], deltas[1:]
    assert head.index == 0 and head.id.startswith("call_") and head.type == "function" and head.function.name
    assert head.function.arguments == "" and len(rest) > 1  # the arguments come in pieces, as they are decoded
    assert all(d.index == 0 and d.id is None and d.function.name is None for d in rest)
    check_call(head.function.name, "".join(d.function.arguments for d in rest))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_answers_in_text_as_without_tools(client):
    plain = client.chat.completions.create(model=TINY, messages=HI, max_tokens=20).choices[0]
    none = client.chat.completions.create(model=TINY, messages=HI, max_tokens=20, tools=TOOLS, tool_choice="none")
    assert none.choices[0].message.content == plain.message.content and none.choices[0].message.tool_calls is None
    assert none.choices[0].finish_reason == plain.finish_reason
    brace = client.chat.completions.create(model=BRACE, messages=HI, max_tokens=5, tools=TOOLS, tool_choice="none")
    assert brace.choices[0].message.content == "{" * 5 and brace.choices[0].finish_reason == "length"


def test_auto_lets_the_model_choose_text_or_a_valid_call(client):
    kwargs = {"messages": HI, "tools": TOOLS, "max_tokens": 200}
    text = client.chat.completions.create(model=OK, **kwargs, max_completion_tokens=6).choices[0]
    assert text.message.content == "ok " * 6 and text.message.tool_calls is None and text.finish_reason == "length"
    call = client.chat.completions.create(model=BRACE, **kwargs).choices[0]  # auto is the default with tools
    assert call.finish_reason == "tool_calls" and call.message.content is None
    check_call(call.message.tool_calls[0].function.name, call.message.tool_calls[0].function.arguments)
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        whole = client.chat.completions.create(model=TINY, **kwargs | {"messages": messages}).choices[0]
        stream = streamed(client, model=TINY, **kwargs | {"messages": messages})
        if whole.message.tool_calls:
            [c] = whole.message.tool_calls
            assert whole.finish_reason == "tool_calls" and whole.message.content is None
            assert json.loads(stream.message.tool_calls[0].function.arguments) == check_call(
                c.function.name, c.function.arguments)  # fmt: skip
        else:
            assert not whole.message.content.startswith("{") and whole.finish_reason in ("stop", "length")
            assert stream.message.content == whole.message.content and not stream.message.tool_calls


def test_a_round_trip_with_the_call_and_its_result_renders_as_the_agent_does(client, engines):
    first = client.chat.completions.create(model=TINY, messages=HI, tools=TOOLS, tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    history = [*HI, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id, "content": "21 °C and sunny"}]  # fmt: skip
    reply = client.chat.completions.create(model=TINY, messages=history, tools=TOOLS, max_tokens=30)
    tools = [Tool(f["name"], f["description"], f["parameters"]) for f in (WEATHER, ADD)]
    arguments = json.loads(call.function.arguments)
    expected = [{"role": "system", "content": system_prompt(DEFAULT_INTRO, tools, CALL_OR_TEXT)}, *HI,
                {"role": "assistant", "content": render_call(call.function.name, arguments)},
                result_message(call.function.name, "21 °C and sunny", FOLLOW_UP)]  # fmt: skip
    assert reply.usage.prompt_tokens == len(engines[TINY].prompt_ids(expected))
    choice = reply.choices[0]
    if choice.message.tool_calls:
        check_call(choice.message.tool_calls[0].function.name, choice.message.tool_calls[0].function.arguments)
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


BAD_NAME = {"type": "function", "function": {**ADD, "name": "add numbers"}}
LONG_NAME = {"type": "function", "function": {**ADD, "name": "a" * 65}}
NOT_COMPILED = {"type": "function", "function": {**ADD, "parameters": {"type": "object", "properties": {
    "a": {"type": "string", "pattern": "("}}}}}  # fmt: skip
BAD_TYPE = {"type": "function", "function": {**ADD, "parameters": {"type": "objekt"}}}
CALL_1 = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
ANSWERED = {"role": "assistant", "content": None, "tool_calls": [CALL_1]}
NOT_JSON = {**ANSWERED, "tool_calls": [{**CALL_1, "function": {"name": "add", "arguments": "{a: 1"}}]}


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
         "names the function 'nope', which is not in tools (get_weather, add)"),
        ({"tool_choice": "required"}, "tool_choice", "tool_choice='required' needs tools"),
        ({"tool_choice": {"type": "function", "function": {"name": "add"}}}, "tool_choice", "the request has no tools"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "is not one of: none, auto, required"),
        ({"tools": [TOOLS[1], TOOLS[1]]}, "tools.1.function.name", "'add' is also the name of tools.0"),
        ({"tools": [BAD_NAME]}, "tools.0.function.name", "must match ^[a-zA-Z0-9_-]{1,64}$"),
        ({"tools": [TOOLS[0], LONG_NAME]}, "tools.1.function.name", "must match"),
        ({"tools": [TOOLS[0], NOT_COMPILED]}, "tools.1.function.parameters", "does not compile: regex parse error"),
        ({"tools": [BAD_TYPE]}, "tools.0.function.parameters", "has type 'objekt'"),
        ({"messages": [*HI, {"role": "tool", "tool_call_id": "call_9", "content": "5"}]}, "messages.1.tool_call_id",
         "answers no earlier tool call (the calls' ids: there is none)"),
        ({"messages": [*HI, ANSWERED, {"role": "tool", "tool_call_id": "call_2", "content": "5"}]},
         "messages.2.tool_call_id", "(the calls' ids: call_1)"),
        ({"messages": [*HI, NOT_JSON]}, "messages.1.tool_calls.0.function.arguments", "is not JSON: Expecting"),
        ({"messages": [*HI, {"role": "tool", "content": "5"}]}, "messages.1", "needs tool_call_id"),
    ],
)  # fmt: skip
def test_bad_tools_get_openai_errors_and_the_server_goes_on(client, change, param, says):
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(**({"model": OK, "messages": HI, "stream": stream} | change))
        error = err.value.body
        assert error["param"] == param and says in error["message"] and error["type"] == "invalid_request_error"
    after = client.chat.completions.create(model=OK, messages=HI, max_tokens=3)
    assert after.choices[0].message.content == "ok ok ok "


def test_concurrent_constrained_and_plain_requests_reply_as_they_would_alone(client):
    plain = [{"messages": [{"role": "user", "content": p}], "max_tokens": 40} for p in [*PROMPTS, "Weather?"]]
    requests = plain + [r | {"tools": TOOLS, "tool_choice": c} for r, c in zip(plain, [*CHOICES, "auto"], strict=True)]

    def ask(kwargs: dict) -> tuple:
        m = client.chat.completions.create(model=TINY, temperature=0, **kwargs).choices[0].message
        return m.content, [(c.function.name, c.function.arguments) for c in m.tool_calls or []]

    alone = [ask(r) for r in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(ask, requests))
    assert together == alone
    assert all(calls for _, calls in alone[len(plain) : -1])  # required and named: a call each


def test_grammar_rows_and_plain_rows_share_one_batch(engines):
    engine = engines[TINY]
    tools = [Tool(f["name"], f["description"], f["parameters"]) for f in (WEATHER, ADD)]
    grammar = CallGrammar(call_schema(tools), engine.tokenizer, engine.model.config.vocab_size)
    either = CallGrammar(call_schema(tools), engine.tokenizer, engine.model.config.vocab_size, or_text=True)
    greedy, sampled = SamplingParams(temperature=0, max_new_tokens=120), SamplingParams(max_new_tokens=120, seed=3)
    specs = [(None, greedy), (grammar, greedy), (None, sampled), (grammar, sampled), (either, greedy)]

    def make() -> list[Generation]:
        return [Generation(engine, engine.check([{"role": "user", "content": f"Ask {i}"}], p), p,
                           g.constraint() if g else None) for i, (g, p) in enumerate(specs)]  # fmt: skip

    alone = []
    for g in make():
        batch = DecodeBatch(engine)
        with torch.inference_mode():
            batch.add([g])
            while batch.rows:
                batch.step()
        alone.append(g.wait())
    together, batch = make(), DecodeBatch(engine)
    with torch.inference_mode():
        batch.add(together[:2])
        batch.step()
        batch.add(together[2:])  # the rest join mid-flight
        assert len(batch.rows) == 5
        while batch.rows:
            batch.step()
    assert [g.wait() for g in together] == alone
    for i in (1, 3):
        call = json.loads(alone[i])
        check_call(call["name"], json.dumps(call["arguments"]))


def test_without_llguidance_a_call_is_a_clear_400_and_none_still_answers(client, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)  # import llguidance now fails, as when it is not installed
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=OK, messages=HI, tools=TOOLS, tool_choice="required")
    error = err.value.body
    assert error["param"] == "tool_choice" and error["code"] == "missing_dependency"
    assert 'needs llguidance on the server (pip install -e ".[agent]" there)' in error["message"]
    reply = client.chat.completions.create(model=OK, messages=HI, tools=TOOLS, tool_choice="none", max_tokens=2)
    assert reply.choices[0].message.content == "ok ok "
