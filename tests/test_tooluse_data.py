"""The tool-use training data (``llm-course agent-data``): the exact chat format the policy sends, valid target
calls, the mix, disjointness from the evaluation, correct arithmetic, and the loss on the last reply only."""

import json
import re
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from conftest import CONFIGS, ROOT, byte_tokenizer, run_cli
from llm_course.agent import policy as policy_module
from llm_course.agent.calculate import calculate
from llm_course.agent.constrained import parse_call
from llm_course.agent.messages import FINAL
from llm_course.agent.policy import ModelPolicy, example_turns
from llm_course.agent.scoring import load_jsonl
from llm_course.agent.tooluse_data import MIX, agent_data, build_examples, contexts, counts, too_close
from llm_course.errors import ConfigError, MissingFileError
from llm_course.sft.prompts import IGNORE_INDEX, tokenize_record

NOTES = str(ROOT / "notes")


@pytest.fixture(scope="module")
def rows():
    return build_examples(600, seed=0, notes=NOTES)


def split_record(row):
    """(system prompt, few-shot turns, conversation before the target, target) of a record."""
    _, examples, _ = contexts()[row["context"]]
    shots = example_turns(examples) if row["shots"] else []
    m = row["messages"]
    assert m[1 : 1 + len(shots)] == shots
    return m[0], shots, m[1 + len(shots) : -1], m[-1]


def test_the_same_seed_writes_the_same_files_and_another_seed_others(tmp_path, capsys):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        run_cli("agent-data", "--output_dir", tmp_path / name, "--n", "60", "--seed", str(seed), "--notes", NOTES)
    files = ("train.jsonl", "val.jsonl")
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()
    summary = json.loads((tmp_path / "a" / "tooluse_data.json").read_text())
    assert (summary["train"], summary["val"]) == (54, 6)
    train = [json.loads(x) for x in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (tmp_path / "a" / "val.jsonl").read_text().splitlines()]
    tasks = lambda part: {r["messages"][-2 if r["tool"] != FINAL else -4]["content"] for r in part}  # noqa: E731
    assert len(train) == 54 and len(val) == 6 and not tasks(train) & tasks(val)  # held out: no task in both


def test_records_are_what_the_policy_sends_and_the_targets_valid_calls(rows, monkeypatch):
    """ModelPolicy (its generate replaced by a spy) sends exactly a record's messages before the target, and the
    target parses as a valid call of that context's tools."""
    sent = []

    def spy(engine, messages, max_new_tokens, grammar, max_seconds, cache):
        sent.append(messages)
        return SimpleNamespace(text=reply, seconds=0.0, tokens=0)

    monkeypatch.setattr(policy_module, "generate", spy)
    engine = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(vocab_size=300)), tokenizer=byte_tokenizer())
    for row in rows:
        system, shots, conversation, target = split_record(row)
        intro, examples, tools = contexts()[row["context"]]
        assert system["role"] == "system" and target["role"] == "assistant"
        policy = ModelPolicy(engine, tools, intro, examples if shots else [], constrained=False)
        reply = target["content"]
        decision = policy.decide(conversation)
        assert sent[-1] == row["messages"][:-1]
        parsed = parse_call(reply, tools)
        assert parsed.valid, (reply, parsed.problems)
        assert decision.valid and decision.name == row["tool"] == parsed.name
        if row["kind"].endswith("_answer"):  # the first call and its result, as the agent loop writes them
            first, result = conversation[1], conversation[2]
            assert parse_call(first["content"], tools).valid and first["role"] == "assistant"
            assert result["role"] == "user" and re.match(r"Result of \w+: .*\nCall another tool or final_answer\.$",
                                                          result["content"], re.S)  # fmt: skip


def test_the_mix_follows_its_shares(rows):
    assert Counter(r["kind"] for r in rows) == counts(600)
    for kind, share in MIX.items():
        assert abs(counts(600)[kind] - 600 * share) < 1
    assert sum(counts(97).values()) == 97
    tools = Counter(r["tool"] for r in rows)
    assert tools["calculate"] == 144 and tools["search_notes"] == 120 and tools[FINAL] == 132
    assert {r["context"] for r in rows if r["tool"] == "hand_over"} == {"desk"}
    reasons = Counter(json.loads(r["messages"][-1]["content"])["arguments"]["reason"] for r in rows
                      if r["tool"] == "hand_over")  # fmt: skip
    assert set(reasons) == {"angry", "payment", "not_covered"}
    assert 0.05 < sum(r["shots"] > 0 for r in rows) / len(rows) < 0.15  # mostly 0-shot
    assert sum(r["context"] == "desk" for r in rows) == 108


def jaccard(a: str, b: str) -> float:
    x, y = set(re.findall(r"[a-z0-9]+", a.lower())), set(re.findall(r"[a-z0-9]+", b.lower()))
    return len(x & y) / len(x | y)


def test_no_task_is_an_evaluation_text_or_a_near_copy(rows):
    evaluation = [t["task"] for t in load_jsonl("agent_tasks.jsonl")]
    evaluation += [m["message"] for m in load_jsonl("messages.jsonl", package="llm_course.agent.desk")]
    assert len(evaluation) == 24 + 76
    tasks = [split_record(r)[2][0]["content"] for r in rows]
    assert len({t.lower() for t in tasks}) == len(tasks)  # every task once
    for task in tasks:
        assert all(task.lower() != e.lower() and jaccard(task, e) <= 0.6 for e in evaluation), task
    # the guard itself: a copy, a copy in other case, and a copy with one word changed are refused
    assert too_close("what is 2 to the power of 10?", evaluation) == "What is 2 to the power of 10?"
    assert too_close("What do the notes say about gradient clipping?", evaluation) is not None
    assert too_close("Divide 13908 by 61.", evaluation) is None


def test_arithmetic_targets_evaluate_to_the_stated_value(rows):
    calc = [r for r in rows if r["kind"] == "calculate"]
    for row in calc:
        expression = json.loads(row["messages"][-1]["content"])["arguments"]["expression"]
        assert calculate(expression) == row["value"], expression
    for row in (r for r in rows if r["kind"] == "calculate_answer"):
        _, _, (task, call, result), target = split_record(row)
        expression = json.loads(call["content"])["arguments"]["expression"]
        shown = json.dumps(calculate(expression))
        assert calculate(expression) == row["value"]
        assert result["content"].startswith(f"Result of calculate: {shown}\n")
        assert shown in json.loads(target["content"])["arguments"]["answer"]  # what bench agent scores
    # contrastive: numbers that look like order numbers still go to calculate, never to lookup_order
    contrast = [r for r in calc if any(1001 <= int(n) <= 1100 for n in re.findall(r"\d+", split_record(r)[2][0]
                                                                                   ["content"]))]  # fmt: skip
    assert 0.15 < len(contrast) / len(calc) < 0.4
    assert any("order" in split_record(r)[2][0]["content"].lower() for r in contrast)


def test_arguments_come_from_the_task(rows):
    for row in rows:
        _, _, conversation, target = split_record(row)
        task, arguments = conversation[0]["content"], json.loads(target["content"])["arguments"]
        if row["tool"] == "search_help":
            assert arguments["query"] == task
        elif row["tool"] == "lookup_order":
            assert str(arguments["order_id"]) in task
        elif row["tool"] == "classify_sentiment":
            assert re.search(rf"['\"“‘]{re.escape(arguments['text'])}['\"”’]", task)
        elif row["tool"] == "search_notes":
            assert arguments["query"] in task
        elif row["kind"] == "notes_answer" and 'abstained": false' in conversation[2]["content"]:
            assert re.search(r"\(notes/\d\d_\w+\.md\)$", arguments["answer"])  # quotes the cited file


def test_order_results_are_what_lookup_order_returns(tmp_path):
    from llm_course.agent.desk.orders import Orders
    from llm_course.agent.tooluse_data import order_result

    orders = Orders(tmp_path / "orders.sqlite")
    for number in (1001, 1042, 1100, 2500):
        result, answer = order_result(number)
        assert result == orders.lookup(number) and str(number) in answer


def test_the_loss_is_on_the_last_reply_only():
    tokenizer = byte_tokenizer()
    row = next(r for r in build_examples(60, seed=1, notes=NOTES, few_shot=1.0) if r["kind"] == "calculate_answer")
    last = tokenize_record(tokenizer, row, 100_000, loss_on="last_reply")
    learned = [t for t, lab in zip(last["input_ids"], last["labels"], strict=True) if lab != IGNORE_INDEX]
    assert tokenizer.decode(learned) == row["messages"][-1]["content"] + "<|im_end|>"
    every = tokenize_record(tokenizer, row, 100_000)  # the default: every reply, few-shot examples included
    assert every["input_ids"] == last["input_ids"]
    replies = sum(m["role"] == "assistant" for m in row["messages"])
    assert replies == row["shots"] + 2 and sum(lab != IGNORE_INDEX for lab in every["labels"]) > len(learned)


def test_bad_settings_say_what_to_change(tmp_path):
    with pytest.raises(ConfigError, match="--n=5 is below the 12 kinds"):
        build_examples(5, notes=NOTES)
    with pytest.raises(MissingFileError, match="no numbered notes"):
        build_examples(60, notes=str(tmp_path))
    with pytest.raises(ConfigError, match="--val_share=1"):
        agent_data(str(tmp_path / "out"), n=60, notes=NOTES, val_share=1)


@pytest.mark.slow
def test_the_config_max_length_cuts_no_record_of_the_default_data(rows):
    import yaml

    from llm_course.sft.prompts import load_tokenizer

    config = yaml.safe_load((CONFIGS / "agent_lora.yaml").read_text())
    max_length = config["data"]["init_args"]["max_length"]
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    lengths = [len(tokenize_record(tokenizer, r, 10_000, "last_reply")["input_ids"]) for r in rows]
    assert max(lengths) <= max_length


@pytest.mark.slow
def test_a_two_step_fit_gives_an_adapter_that_bench_agent_loads(tmp_path, tiny_llama):
    """The pipeline end to end on a tiny model: agent-data → fit (configs/agent_lora.yaml) → the run's adapter/,
    loaded as ``bench agent --adapter`` loads it: merged weights that differ from the base's in the projections only.
    (The tiny byte-level model's context is too short for the agent's prompt, so no call is decoded here.)"""
    from conftest import run_dir
    from llm_course.inference import GenerationEngine

    out = tmp_path / "tooluse"
    agent_data(str(out), n=24, seed=0, notes=NOTES, val_share=0.25)
    run_cli("fit", "--config", CONFIGS / "agent_lora.yaml", "--trainer.accelerator=cpu", "--trainer.max_steps=2",
            f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.val_check_interval=2",
            "--trainer.limit_val_batches=1", f"--model.init_args.model_name_or_path={tiny_llama}",
            "--model.init_args.merge_on_fit_end=false", f"--data.init_args.train_file={out / 'train.jsonl'}",
            f"--data.init_args.val_file={out / 'val.jsonl'}", "--data.init_args.max_length=4096",
            "--data.init_args.batch_size=4")  # fmt: skip
    adapter = run_dir(tmp_path / "run") / "adapter"
    tuned = GenerationEngine.load(tiny_llama, str(adapter), "fp32", "cpu")  # as bench agent loads --adapter
    base = GenerationEngine.load(tiny_llama, None, "fp32", "cpu")
    assert tuned.name.endswith("+adapter")
    changed = [n for n, w in base.model.state_dict().items() if not torch.equal(w, tuned.model.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # the merged LoRA moved the projections, nothing else
