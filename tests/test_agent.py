"""Module 8's agent: tool schemas from typed functions, safe arithmetic, the bounded loop, and constrained tool calls
on tiny models built here (plus one check on the embedded SmolLM2)."""

import json
import threading
import time
from typing import Literal

import pytest

from conftest import run_cli
from llm_course.agent.calculate import CalculationError, calculate
from llm_course.agent.constrained import CallGrammar, call_schema, generate, parse_call
from llm_course.agent.loop import FINAL, run_agent
from llm_course.agent.policy import Decision, ModelPolicy
from llm_course.agent.tools import ToolBox, check_value, parse_docstring, tool
from llm_course.errors import ConfigError


def lookup(order_id: int, fields: list[str] | None = None, verbose: bool = False) -> dict:
    """Look an order up.

    Longer text that is not the summary.

    Args:
        order_id: the order number,
            from 1001 to 1100.
        fields: which fields to return.
        verbose: say more.

    Returns:
        The order.
    """
    return {"order_id": order_id}


def pick(colour: Literal["red", "green"], size: int) -> str:
    """Pick a colour and a size."""
    return f"{colour}-{size}"


# ---- schemas ---------------------------------------------------------------------------------------------------------
def test_the_signature_and_docstring_are_the_schema():
    t = tool(lookup)
    assert t.name == "lookup" and t.description == "Look an order up."
    assert t.parameters == {
        "type": "object",
        "properties": {
            "order_id": {"type": "integer", "description": "the order number, from 1001 to 1100."},
            "fields": {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 20,
                       "description": "which fields to return."},
            "verbose": {"type": "boolean", "description": "say more.", "default": False},
        },
        "required": ["order_id"],
        "additionalProperties": False,
    }  # fmt: skip
    assert t.openai() == {"type": "function", "function": {"name": "lookup", "description": "Look an order up.",
                                                            "parameters": t.parameters}}  # fmt: skip
    assert tool(pick).parameters["properties"]["colour"] == {"type": "string", "enum": ["red", "green"]}
    assert tool(pick).signature() == "pick(colour: 'red' | 'green', size: integer): Pick a colour and a size."
    assert parse_docstring(None) == ("", {})


def test_a_parameter_without_a_type_hint_or_with_an_unsayable_type_is_refused():
    def untyped(x) -> None:  # noqa: ANN001
        """No hint."""

    def odd(x: dict) -> None:
        """A dict."""

    with pytest.raises(ConfigError, match="argument 'x' has no type hint"):
        tool(untyped)
    with pytest.raises(ConfigError, match="tool odd, argument 'x' has the type"):
        tool(odd)


def test_arguments_are_checked_against_the_schema():
    schema = tool(pick).parameters
    assert check_value({"colour": "red", "size": 3}, schema, "arguments") == []
    assert check_value({"colour": "blue", "size": 3}, schema, "arguments") == [
        "colour='blue' is not one of: red, green"
    ]
    assert check_value({"colour": "red", "size": True}, schema, "arguments") == ["size must be an integer, got True"]
    problems = check_value({"size": 3, "extra": 1}, schema, "arguments")
    assert problems == ["arguments lacks 'colour'", "arguments has an unknown key 'extra' (allowed: colour, size)"]


# ---- tools run bounded ---------------------------------------------------------------------------------------------
def test_a_tool_that_raises_times_out_or_gets_bad_arguments_returns_an_error():
    def boom(x: int) -> int:
        """Fail."""
        raise RuntimeError(f"broken on {x}")

    release = threading.Event()

    def slow(x: int) -> int:
        """Hang."""
        release.wait(5)
        return x

    box = ToolBox([tool(boom), tool(slow), tool(pick)], timeout=0.2)
    assert box.call("boom", {"x": 1}).error == "RuntimeError: broken on 1"
    start = time.perf_counter()
    timed = box.call("slow", {"x": 2})
    assert timed.error == "the tool slow did not answer within 0.2 s" and time.perf_counter() - start < 1.5
    release.set()
    assert box.call("pick", {"colour": "pink", "size": 1}).error == (
        "invalid call: colour='pink' is not one of: red, green"
    )
    assert box.call("nope", {}).error.startswith("invalid call: there is no tool 'nope'")
    ok = box.call("pick", {"colour": "red", "size": 2})
    assert ok.ok and ok.value == "red-2" and ok.for_model() == "red-2"


# ---- safe arithmetic -------------------------------------------------------------------------------------------------
CASES = [("17 * 23 + 4", 395), ("(120 - 45) / 3", 25), ("2 ^ 10", 1024), ("sqrt(144)", 12), ("1.5 + 2.25 + 3.75", 7.5),
         ("-3 // 2", -2), ("10 % 3", 1), ("round(pi, 2)", 3.14), ("0.1 + 0.2", 0.3)]  # fmt: skip


@pytest.mark.parametrize(("expression", "value"), CASES)
def test_calculate_computes_arithmetic(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize(("expression", "says"), [
    ("__import__('os').system('ls')", "not allowed"), ("(1).__class__", "not allowed"), ("x + 1", "not allowed"),
    ("'a' * 3", "not allowed"), ("lambda: 1", "not allowed"), ("1 / 0", "division by zero"),
    ("9 ** 9 ** 9", "exponent"), ("10 ** 60 * 10 ** 60", "not a real number"), ("2 +", "not an arithmetic"),
    ("", "empty"), ("1" * 201, "over 200"), ("sqrt(-1)", "math domain"), ("round(x=1)", "keyword"),
])  # fmt: skip
def test_calculate_refuses_what_is_not_plain_arithmetic(expression, says):
    with pytest.raises(CalculationError, match=says):
        calculate(expression)


# ---- the loop --------------------------------------------------------------------------------------------------------
class Scripted:
    """A policy that plays back decisions, recording the conversations it was shown."""

    label = "scripted"

    def __init__(self, calls: list, delay: float = 0.0) -> None:
        self.calls, self.seen, self.delay = list(calls), [], delay

    def decide(self, history, max_seconds=None) -> Decision:
        self.seen.append([dict(m) for m in history])
        time.sleep(self.delay)
        name, arguments = self.calls.pop(0) if self.calls else ("pick", {"colour": "red", "size": 1})
        if name is None:
            return Decision(None, {}, "not json", json_ok=False, problems=["not JSON"])
        return Decision(name, arguments, json.dumps({"name": name, "arguments": arguments}))


def test_the_loop_returns_errors_to_the_model_and_goes_on_to_the_answer():
    def boom(x: int) -> int:
        """Fail."""
        raise ValueError("no")

    policy = Scripted([(None, {}), ("boom", {"x": 1}), ("calculate", {"expression": "2*3"}), (FINAL, {"answer": "6"})])
    box = ToolBox([tool(boom), tool(calculate)])
    printed = []
    run = run_agent("What is 2*3?", policy, box, max_steps=6, on_step=lambda s: printed.append(s.line()))
    assert run.stopped == "answer" and run.answer == "6" and len(run.steps) == 4
    assert [s.error for s in run.steps[:2]] == ["invalid call: not JSON", "ValueError: no"]
    assert run.steps[2].result == 6 and run.steps[2].error is None
    assert 'Result of boom: {"error": "ValueError: no"}' in policy.seen[2][-1]["content"]  # the model read it
    assert printed[2].startswith('[3] calculate {"expression": "2*3"} → 6  (model ')
    assert json.loads(json.dumps(run.as_dict()))["steps"][1]["error"] == "ValueError: no"


def test_the_loop_stops_a_repeated_call_and_at_its_step_and_time_limits():
    box = ToolBox([tool(pick)])
    again = run_agent("t", Scripted([("pick", {"colour": "red", "size": 1})] * 5), box, max_steps=5)
    assert again.stopped == "repeated_call" and len(again.steps) == 2
    assert again.answer == "(no final answer; the last tool result) red-1"
    sizes = [("pick", {"colour": "green", "size": i}) for i in range(9)]
    assert run_agent("t", Scripted(sizes), box, max_steps=3).stopped == "max_steps"
    timed = run_agent("t", Scripted(sizes, delay=0.15), box, max_steps=20, max_seconds=0.4)
    assert timed.stopped == "max_seconds" and 2 <= len(timed.steps) <= 4 and timed.seconds < 1.5


# ---- constrained decoding on tiny models -----------------------------------------------------------------------------
def choose(kind: Literal["a", "b"]) -> str:
    """Choose a kind."""
    return kind


def hand_over(reason: Literal["angry", "payment"]) -> str:
    """Hand over."""
    return reason


TOOLS = [tool(choose), tool(hand_over)]


@pytest.fixture(scope="module")
def tiny_engine(tiny_llama):
    from llm_course.inference import GenerationEngine

    return GenerationEngine.load(tiny_llama, device="cpu")


@pytest.fixture(scope="module")
def constant_engine(constant_llama):
    from llm_course.inference import GenerationEngine

    return GenerationEngine.load(constant_llama, device="cpu")


def test_a_random_model_under_the_grammar_always_writes_a_valid_call(tiny_engine):
    grammar = CallGrammar(call_schema(TOOLS), tiny_engine.tokenizer, tiny_engine.model.config.vocab_size)
    for text in ["Hi", "Choose one", "Hand me over please", "x" * 30]:
        reply = generate(tiny_engine, [{"role": "user", "content": text}], 80, grammar)
        call = parse_call(reply.text, TOOLS)
        assert call.valid, (text, reply.text, call.problems)
        assert reply.tokens <= 80 and reply.mask_s > 0


def test_the_grammar_turns_a_model_that_never_writes_json_into_valid_calls(constant_engine):
    messages = [{"role": "user", "content": "Pick a tool"}]
    free = ModelPolicy(constant_engine, TOOLS, "You call tools.", constrained=False, max_new_tokens=24)
    bound = ModelPolicy(constant_engine, TOOLS, "You call tools.", constrained=True, max_new_tokens=80)
    unconstrained, constrained = free.decide(messages), bound.decide(messages)
    assert unconstrained.raw.startswith("ok ok") and not unconstrained.json_ok and not unconstrained.valid
    assert constrained.valid and constrained.name in ("choose", "hand_over"), constrained.raw
    assert bound.label == "constrained, 0-shot" and "Tools:\n- choose(kind: 'a' | 'b')" in bound.prefix[0]["content"]
    too_long = bound.decide([{"role": "user", "content": "x" * 1100}])  # byte tokenizer: over the 1024 context
    assert not too_long.valid and "over the model's context length" in too_long.problems[0]


def test_the_prefix_cache_changes_the_time_not_the_reply(tiny_engine):
    from llm_course.agent.prefix import PrefixCache

    grammar = CallGrammar(call_schema(TOOLS), tiny_engine.tokenizer, tiny_engine.model.config.vocab_size)
    prefix = [{"role": "system", "content": "You call tools."}, {"role": "user", "content": "Pick"},
              {"role": "assistant", "content": '{"name": "choose", "arguments": {"kind": "a"}}'}]  # fmt: skip
    cache = PrefixCache(tiny_engine, prefix)
    for text in ["Hand over", "Choose b"]:
        messages = [*prefix, {"role": "user", "content": text}]
        assert cache.covers(tiny_engine.prompt_ids(messages))
        plain = generate(tiny_engine, messages, 60, grammar)
        cached = generate(tiny_engine, messages, 60, grammar, prefix=cache)
        free_plain, free_cached = generate(tiny_engine, messages, 12), generate(tiny_engine, messages, 12, prefix=cache)
        assert (cached.text, cached.tokens) == (plain.text, plain.tokens) and free_cached.text == free_plain.text
    widths = []  # what the first forward pass of a cached call reads: the new turn only, not the prefix
    hook = tiny_engine.model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[1]),
                                                       with_kwargs=True)  # fmt: skip
    try:
        generate(tiny_engine, messages, 2, prefix=cache)
    finally:
        hook.remove()
    assert widths[0] == len(tiny_engine.prompt_ids(messages)) - len(cache.ids)
    assert not cache.covers(tiny_engine.prompt_ids([{"role": "user", "content": "other"}]))


def test_quoting_the_message_leaves_the_model_only_the_choice_of_tool(constant_engine):
    from llm_course.agent.desk.desk import desk_tools, quote_message

    tools = desk_tools(None, None)
    narrow = quote_message(tools)
    for_order = narrow([{"role": "user", "content": "Is order 1042 or #1017 on its way?"}])
    schemas = {t.name: t.parameters["properties"] for t in for_order}
    assert schemas["lookup_order"]["order_id"]["enum"] == [1017, 1042]
    assert schemas["search_help"]["query"]["enum"] == ["Is order 1042 or #1017 on its way?"]
    assert [t.name for t in narrow([{"role": "user", "content": "How do returns work?"}])] == [
        "search_help",
        "hand_over",
    ]
    policy = ModelPolicy(constant_engine, tools, "Desk.", constrained=True, max_new_tokens=90, narrow=narrow)
    decision = policy.decide([{"role": "user", "content": "Where is order 1042?"}])
    assert decision.valid and policy.label == "constrained, quoting, 0-shot", decision.raw
    assert decision.arguments in ({"query": "Where is order 1042?"}, {"order_id": 1042}) or decision.name == "hand_over"


def test_parse_call_names_what_is_wrong():
    assert parse_call('{"name": "choose", "arguments": {"kind": "a"}} trailing', TOOLS).valid
    assert parse_call("no json here", TOOLS).problems == ["no JSON object in the reply"]
    assert parse_call('{"name": "choose", "arguments": {"kind": ', TOOLS).problems == [
        "not JSON: Expecting value at character 41"
    ]
    wrong = parse_call('{"name": "fly", "arguments": {}}', TOOLS)
    assert wrong.json_ok and not wrong.valid and wrong.problems[0].startswith("there is no tool 'fly'")


# ---- the CLI and the embedded model ---------------------------------------------------------------------------------
@pytest.fixture
def tiny_notes(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "kitchen.md").write_text("# Kitchen\n\n## Pasta\n\nCook the pasta for nine minutes, then drain it.\n")
    return folder


def test_agent_command_prints_each_step_and_the_answer(tiny_notes, tmp_path, capsys):
    where = ["--index_dir", tmp_path / "index", "--db", tmp_path / "orders.sqlite", "--help_index", tmp_path / "help"]
    run_cli("agent", "--task", "What is 17 * 23 + 4?", "--policy", "keywords", "--notes", tiny_notes, *where)
    out = capsys.readouterr().out
    assert '[1] calculate {"expression": "17 * 23 + 4"} → 395' in out
    assert "[2] final_answer" in out and "answer: 395" in out
    with pytest.raises(SystemExit):
        run_cli("agent", "--task", "  ", "--policy", "keywords", "--notes", tiny_notes, "--index_dir", tmp_path / "i")
    assert "--task is empty" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_under_the_grammar_picks_the_order_lookup():
    from llm_course.agent.desk.desk import EXAMPLES, INTRO, desk_tools
    from llm_course.inference import GenerationEngine

    engine = GenerationEngine.load("smollm2-135m-instruct", device="cpu")
    tools = desk_tools(None, None)  # the schemas only: nothing is called
    policy = ModelPolicy(engine, tools, INTRO, EXAMPLES, constrained=True, max_new_tokens=40)
    decision = policy.decide([{"role": "user", "content": "Where is my order 1042?"}])
    assert decision.valid and decision.name == "lookup_order", decision.raw
    assert decision.arguments["order_id"] == 1042
