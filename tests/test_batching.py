"""Module 7: batched decoding. Rows that share forward passes give what each gives alone (greedy, seeded sampling,
repetition penalty), whenever they join; each keeps its own stop strings, length and cancellation; the scheduler
batches the requests that overlap in time, up to ``max_batch_size``."""

import asyncio
import time

import pytest
import torch

from llm_course.inference import GenerationEngine, SamplingParams
from llm_course.inference.batching import DecodeBatch, IncrementalText
from llm_course.inference.request import Generation
from llm_course.inference.scheduler import Scheduler

GREEDY = SamplingParams(temperature=0, max_new_tokens=16)


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_gpt2"])
def engine(request) -> GenerationEngine:
    return GenerationEngine.load(request.getfixturevalue(request.param), device="cpu")


@pytest.fixture(scope="module")
def constant(constant_llama) -> GenerationEngine:
    return GenerationEngine.load(constant_llama, device="cpu")


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def together(engine, requests, join_after=3, first=1):
    """Decode ``requests`` ((messages, params) pairs) in one batch: ``first`` of them start, the others join after
    ``join_after`` steps. Returns the generations, finished."""
    generations = [Generation(engine, engine.check(m, p), p) for m, p in requests]
    batch = DecodeBatch(engine)
    with torch.inference_mode():
        batch.add(generations[:first])
        for _ in range(join_after):
            batch.step()
        batch.add(generations[first:])
        while batch.rows:
            batch.step()
    return generations


def test_rows_joining_mid_flight_reply_as_they_would_alone(engine):
    requests = [
        (ask("Hi"), GREEDY),
        (ask("Tell me a story about a cat and a dog."), SamplingParams(temperature=0, max_new_tokens=9)),
        (ask("x" * 60), SamplingParams(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=20, seed=7)),
        (ask("Why?"), SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=12, seed=3)),
        (ask("Repeat."), SamplingParams(temperature=0, repetition_penalty=1.8, max_new_tokens=14)),
    ]
    alone = [engine.generate(m, p) for m, p in requests]
    batched = together(engine, requests)
    for (text, stats), g in zip(alone, batched, strict=True):
        assert g.wait() == text
        assert g.stats.completion_tokens == stats.completion_tokens and g.stats.finish_reason == stats.finish_reason
        assert g.token_times == sorted(g.token_times) and g.stats.time_to_first_token_s > 0


def test_each_row_keeps_its_stop_strings_length_and_cancellation(constant):
    requests = [(ask("a"), SamplingParams(temperature=0, max_new_tokens=40, stop=["ok ok ok"])),
                (ask("b"), SamplingParams(temperature=0, max_new_tokens=5)),
                (ask("c"), SamplingParams(temperature=0, max_new_tokens=30)),
                (ask("d" * 50), SamplingParams(temperature=0, max_new_tokens=3)),
                (ask("e"), SamplingParams(temperature=0, max_new_tokens=12))]  # fmt: skip
    generations = [Generation(constant, constant.check(m, p), p) for m, p in requests]
    batch = DecodeBatch(constant)
    with torch.inference_mode():
        batch.add(generations)
        widths = [batch.width]  # cache columns after the prefill, then after each step
        while batch.rows:
            if len(widths) == 7:
                generations[2].cancel()
            batch.step()
            widths.append(batch.width)
    stop, length, cancelled, long_prompt, last = generations
    assert (stop.wait(), stop.stats.finish_reason, stop.stats.completion_tokens) == ("", "stop", 3)
    assert (length.wait(), length.stats.finish_reason) == ("ok " * 5, "length")
    assert cancelled.stats.finish_reason == "cancelled" and cancelled.stats.completion_tokens == 7
    assert long_prompt.wait() == "ok " * 3 and last.wait() == "ok " * 12
    short, long = len(stop.prompt_ids), len(long_prompt.prompt_ids)
    assert widths[:4] == [long, long + 1, short + 2, short + 3]  # the long prompt left at step 2: its columns went
    assert len(widths) == 12 and widths[-1] == 0


def test_incremental_text_releases_whole_characters(engine):
    text = "héllo wörld, ünïcode ✓"
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # byte-level: several tokens for one character
    decoder = IncrementalText(engine.tokenizer)
    pieces = [decoder.add(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def slow_and_counted(engine, monkeypatch, sizes):
    forward = engine.model.forward

    def counted(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape)
        time.sleep(0.005)
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", counted)


async def replies(scheduler, engine, prompts, params):
    async def one(text):
        generation = await scheduler.start(engine, ask(text), params)
        return "".join([p async for p in generation]), generation

    return await asyncio.gather(*(one(t) for t in prompts))


@pytest.mark.parametrize("max_batch_size", [1, 2, 8])
def test_the_scheduler_batches_what_overlaps_up_to_max_batch_size(constant, monkeypatch, max_batch_size):
    sizes = []
    slow_and_counted(constant, monkeypatch, sizes)
    scheduler = Scheduler(queue_size=8, max_batch_size=max_batch_size)
    params = SamplingParams(temperature=0, max_new_tokens=25)
    out = asyncio.run(replies(scheduler, constant, [f"q{i}" for i in range(4)], params))
    scheduler.close()
    assert [text for text, _ in out] == ["ok " * 25] * 4
    decode_rows = [shape[0] for shape in sizes if shape[1] == 1]
    assert max(decode_rows) == min(4, max_batch_size)
    if max_batch_size >= 4:  # a few prefills and about 25 steps of the batch, not 4 × 25 one-row steps
        assert len(sizes) <= 4 + 25 + 4
    queue = scheduler.snapshot()["queue"]
    assert queue["waiting"] == queue["running"] == 0 and queue["max_batch_size"] == max_batch_size


def test_scheduled_replies_equal_the_ones_alone(engine):
    prompts = ["Hi", "What is a cat?", "y" * 40, "Tell me more about the weather today."]
    alone = [engine.generate(ask(t), GREEDY)[0] for t in prompts]
    scheduler = Scheduler(queue_size=8, max_batch_size=4)
    out = asyncio.run(replies(scheduler, engine, prompts, GREEDY))
    scheduler.close()
    assert [text for text, _ in out] == alone
    assert scheduler.finished["length"] + scheduler.finished["stop"] == 4 and scheduler.running == 0


def test_compare_mode_reads_both_replies_at_once_and_they_batch(constant, monkeypatch):
    from llm_course.inference.webui import interleave, stream_reply

    sizes = []
    slow_and_counted(constant, monkeypatch, sizes)
    scheduler = Scheduler(queue_size=4, max_batch_size=4)
    params = SamplingParams(temperature=0, max_new_tokens=20)

    async def both():
        last = {}
        streams = [stream_reply(scheduler, constant, ask(text), params) for text in ("a", "b")]
        async for side, shown in interleave(streams):
            last[side] = shown
        return last

    last = asyncio.run(both())
    scheduler.close()
    assert [last[side][0] for side in (0, 1)] == ["ok " * 20] * 2 and all(last[s][1] is not None for s in (0, 1))
    assert max(shape[0] for shape in sizes if shape[1] == 1) == 2  # one decode step served both sides
