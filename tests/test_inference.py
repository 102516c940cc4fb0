"""Module 7: the generation engine, its checks, sampling, stop strings, and the generate and chat commands."""

import io
import json
import time

import pytest
import torch

from conftest import run_cli
from llm_course.inference import GenerationEngine, InvalidRequest, SamplingParams
from llm_course.inference.commands import ChatSession
from llm_course.inference.sampling import StopScanner

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def engine(tiny_llama) -> GenerationEngine:
    return GenerationEngine.load(tiny_llama, device="cpu")


@pytest.fixture(scope="module")
def constant(constant_llama) -> GenerationEngine:
    return GenerationEngine.load(constant_llama, device="cpu")


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        ({"temperature": -0.1}, "temperature", ">= 0"),
        ({"top_k": -1}, "top_k", ">= 0"),
        ({"top_p": 0.0}, "top_p", "(0, 1]"),
        ({"top_p": 1.5}, "top_p", "(0, 1]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty", "> 0"),
        ({"max_new_tokens": 0}, "max_tokens", "1..1024"),
        ({"max_new_tokens": 1025}, "max_tokens", "1..1024"),
        ({"stop": [""]}, "stop", "non-empty"),
    ],
)
def test_sampling_params_name_the_value_and_the_limit(change, param, says):
    with pytest.raises(InvalidRequest) as err:
        SamplingParams(**change).check(prompt_tokens=10, context_length=1024)
    assert err.value.param == param
    assert says in str(err.value) and str(next(iter(change.values()))) in str(err.value)


def test_prompt_over_the_context_is_refused_with_both_numbers(engine):
    long = [{"role": "user", "content": "x" * 1100}]  # byte tokenizer: one token per character
    with pytest.raises(InvalidRequest, match=r"over the model's context length of 1024") as err:
        engine.stream(long, SamplingParams(max_new_tokens=4))
    assert err.value.code == "context_length_exceeded"
    fits = [{"role": "user", "content": "x" * 900}]
    n = len(engine.prompt_ids(fits))
    with pytest.raises(InvalidRequest, match=rf"ask for at most {1024 - n} new tokens"):
        engine.stream(fits, SamplingParams(max_new_tokens=200))


def test_greedy_reply_equals_hf_generate_and_stats_are_measured(engine):
    text, stats = engine.generate(HI, SamplingParams(temperature=0, max_new_tokens=12))
    ids = torch.tensor([engine.prompt_ids(HI)])
    ref = engine.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                                pad_token_id=engine.tokenizer.pad_token_id)  # fmt: skip
    new = ref[0, ids.shape[1] :]
    assert text == engine.tokenizer.decode(new, skip_special_tokens=True)
    assert stats.prompt_tokens == ids.shape[1] and stats.completion_tokens == len(new)
    assert 0 < stats.time_to_first_token_s <= stats.latency_s
    assert stats.decode_tokens_per_s > 0 and stats.rss_mb > 50
    assert stats.finish_reason == ("length" if len(new) == 12 else "stop")


def test_seed_makes_sampling_repeatable_and_temperature_changes_it(engine):
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=24, seed=7)
    first, _ = engine.generate(HI, params)
    again, _ = engine.generate(HI, params)
    other, _ = engine.generate(HI, SamplingParams(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=24, seed=8))
    greedy, _ = engine.generate(HI, SamplingParams(temperature=0, max_new_tokens=24))
    assert first == again
    assert first != other and first != greedy


def test_top_k_1_is_greedy(engine):
    greedy, _ = engine.generate(HI, SamplingParams(temperature=0, max_new_tokens=16))
    top1, _ = engine.generate(HI, SamplingParams(temperature=2.0, top_k=1, max_new_tokens=16, seed=3))
    assert top1 == greedy


def test_stop_strings_end_the_reply_and_are_cut(constant):
    text, stats = constant.generate(HI, SamplingParams(temperature=0, max_new_tokens=40))
    assert text == "ok " * 40 and stats.finish_reason == "length"
    text, stats = constant.generate(HI, SamplingParams(temperature=0, max_new_tokens=40, stop=["ok ok ok"]))
    assert text == "" and stats.finish_reason == "stop" and stats.completion_tokens < 40
    text, stats = constant.generate(HI, SamplingParams(temperature=0, max_new_tokens=40, stop=[" o"]))
    assert text == "ok" and stats.finish_reason == "stop"


@pytest.mark.parametrize(
    ("pieces", "stop", "shown"),
    [
        (["Hel", "lo ", "wor", "ld"], ["lo w"], ["He", "l", "", ""]),
        (["ab", "c"], ["x"], ["ab", "c"]),
        (["a<", "/s", "> tail"], ["</s>"], ["a", "", ""]),
    ],
)
def test_stop_scanner_holds_back_possible_starts(pieces, stop, shown):
    scanner = StopScanner(stop)
    assert [scanner.feed(p) for p in pieces] == shown


def test_stop_scanner_never_shows_the_stop_string():
    scanner = StopScanner(["END"])
    out = "".join(scanner.feed(p) for p in ["The E", "N", "D is near", " more"]) + scanner.flush()
    assert out == "The " and scanner.stopped
    scanner = StopScanner(["END"])
    out = "".join(scanner.feed(p) for p in ["The E", "ND? no: EN"]) + scanner.flush()
    assert out == "The "
    scanner = StopScanner(["END"])
    assert "".join(scanner.feed(p) for p in ["ok E", "x"]) + scanner.flush() == "ok Ex"


@pytest.fixture
def slow(constant, monkeypatch) -> GenerationEngine:
    """The constant model at 5 ms a token, so a reader keeps up with it (as with a real model)."""
    forward = constant.model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(0.005)
        return forward(*args, **kwargs)

    monkeypatch.setattr(constant.model, "forward", slow_forward)
    return constant


def test_cancel_stops_the_reply_at_the_next_token(slow):
    generation = slow.stream(HI, SamplingParams(temperature=0, max_new_tokens=900))
    got = ""
    for piece in generation:
        got += piece
        if len(got) >= 9:
            generation.cancel()
    assert generation.stats.finish_reason == "cancelled"
    assert 3 <= generation.stats.completion_tokens < 900


def test_generate_command_json(constant_llama, capsys):
    run_cli(*["generate", "--prompt", "Hi", "--model", constant_llama, "--device", "cpu", "--temperature", "0",
             "--max_new_tokens", "5", "--json", "true"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["reply"] == "ok " * 5
    assert result["stats"]["completion_tokens"] == 5 and result["stats"]["finish_reason"] == "length"
    assert result["stats"]["time_to_first_token_s"] > 0 and result["params"]["max_new_tokens"] == 5


def test_generate_command_streams_and_reports_bad_values_in_one_line(constant_llama, capsys):
    run_cli(*["generate", "--prompt", "Hi", "--model", constant_llama, "--device", "cpu", "--temperature", "0",
             "--max_new_tokens", "3"])  # fmt: skip
    out = capsys.readouterr()
    assert out.out == "ok ok ok \n" and "tokens/s" in out.err and "first token" in out.err
    with pytest.raises(SystemExit):
        run_cli(*["generate", "--prompt", "Hi", "--model", constant_llama, "--device", "cpu", "--top_p", "0"])
    err = capsys.readouterr().err
    assert "top_p=0.0 must be in (0, 1]" in err and "Traceback" not in err


def test_generate_loads_a_lora_adapter_folder(tmp_path, tiny_llama):
    from llm_course.sft.lora import add_lora, load_causal_lm
    from llm_course.sft.prompts import load_tokenizer

    torch.manual_seed(0)
    net = add_lora(load_causal_lm(tiny_llama), r=4, init_lora_weights=False)
    net.save_pretrained(tmp_path / "adapter")
    load_tokenizer(tiny_llama).save_pretrained(tmp_path / "adapter")
    tuned = GenerationEngine.load(str(tmp_path / "adapter"), device="cpu")
    base = GenerationEngine.load(tiny_llama, device="cpu")
    ids = torch.tensor([base.prompt_ids(HI)])
    with torch.no_grad():
        expected = net.eval()(ids).logits
        assert torch.allclose(tuned.model(ids).logits, expected, atol=1e-5)  # merged = base + adapter
        assert not torch.allclose(base.model(ids).logits, expected, atol=1e-3)
    assert tuned.name.endswith("+adapter")


class Script:
    """Scripted terminal input; an entry that is an exception is raised instead of read."""

    def __init__(self, *lines):
        self.lines = list(lines)

    def __call__(self, prompt):
        item = self.lines.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


def test_chat_keeps_history_resets_and_changes_params(constant):
    session = ChatSession(constant, SamplingParams(temperature=0, max_new_tokens=4))
    out = io.StringIO()
    session.run(Script("Hi", "How are you?", "/params max_new_tokens=2 temperature=0", "Again", "/params top_p=0",
                       "/reset", KeyboardInterrupt(), "/quit", "never read"), out)  # fmt: skip
    text = out.getvalue()
    assert text.count("bot> ok ok ok ok \n") == 2 and "bot> ok ok \n" in text
    assert "max_new_tokens=2" in text and "not changed: top_p=0.0 must be in (0, 1]" in text
    assert "(conversation cleared)" in text and "Ctrl-C: use /quit" in text
    assert session.history == []  # after /reset


def test_chat_history_goes_into_the_prompt(constant):
    session = ChatSession(constant, SamplingParams(temperature=0, max_new_tokens=3))
    session.run(Script("first question", "second", EOFError()), io.StringIO())
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    prompt = constant.tokenizer.decode(constant.prompt_ids(session.messages()))
    assert "first question" in prompt and "second" in prompt and "ok ok ok" in prompt


def test_ctrl_c_stops_one_reply_not_the_session(slow, monkeypatch):
    from llm_course.inference import engine as engine_module

    session = ChatSession(slow, SamplingParams(temperature=0, max_new_tokens=900))
    original = engine_module.Generation.__iter__

    def interrupted(self):  # the user presses Ctrl-C after the fifth piece of the first reply
        for i, piece in enumerate(original(self)):
            if i == 5 and not getattr(self, "_pressed", False) and len(session.history) == 1:
                self._pressed = True
                raise KeyboardInterrupt
            yield piece

    monkeypatch.setattr(engine_module.Generation, "__iter__", interrupted)
    out = io.StringIO()
    session.run(Script("long answer please", "/params max_new_tokens=3", "next", "/quit"), out)
    text = out.getvalue()
    assert "cancelled" in text  # the stats line of the stopped reply
    assert len(session.history) == 4 and session.history[-1]["content"] == "ok " * 3
    assert 5 <= session.history[1]["content"].count("ok") < 900


def test_an_adapter_on_nf4_weights_stays_a_lora_layer_over_the_4bit_base(tmp_path, tiny_llama):
    from peft import PeftModel

    from llm_course.sft.lora import add_lora, load_causal_lm

    torch.manual_seed(0)
    net = add_lora(load_causal_lm(tiny_llama), r=4, init_lora_weights=False)
    net.save_pretrained(tmp_path / "adapter")
    engine = GenerationEngine.load(tiny_llama, adapter=str(tmp_path / "adapter"), weights="nf4", device="cpu")
    assert isinstance(engine.model, PeftModel)
    kinds = {type(m).__name__ for m in engine.model.modules()}
    assert "Linear4bit" in kinds and any("lora" in k.lower() for k in kinds)
    assert engine.weights_mb < GenerationEngine.load(tiny_llama, device="cpu").weights_mb
    text, stats = engine.generate(HI, SamplingParams(temperature=0, max_new_tokens=4))
    assert stats.completion_tokens >= 1 and engine.name.endswith("+adapter")
