"""Modules 7 and 8: the Gradio page of ``serve`` (chat, compare, the notes, the support desk) in a real headless
Chromium (Debian's chromium + chromedriver).

Without the browser, its driver or Selenium these tests skip, naming what is missing and the fix (never fail)."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from helpers.serving import running_server
from llm_course.browser import chromium, missing
from llm_course.inference import GenerationEngine, SamplingParams, page
from llm_course.inference.scheduler import Scheduler
from llm_course.inference.serve import build_server

NOTES = """# Kitchen notes

## Boiling pasta

Bring salted water to a rolling boil, add the pasta, cook it for nine minutes and drain it.

## Baking bread

Knead the dough for ten minutes, let it rise for an hour and bake it at 220 degrees.
"""


@pytest.fixture(scope="module")
def needs_chromium():
    """Skip where Chromium cannot start, before the server is built (the server's first fixture)."""
    reason = missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def server(needs_chromium, constant_llama, tiny_llama, tmp_path_factory):
    from llm_course.agent.commands import build_desk
    from llm_course.rag.answer import NotesQA
    from llm_course.rag.index import RagIndex, load_embedder
    from llm_course.rag.retrieve import Retriever

    engines = {"constant:fp32": GenerationEngine.load(constant_llama, device="cpu"),
               "tiny:fp32": GenerationEngine.load(tiny_llama, device="cpu")}  # fmt: skip
    notes = tmp_path_factory.mktemp("notes")
    (notes / "kitchen.md").write_text(NOTES)
    embedder = load_embedder("minilm")
    qa = NotesQA(Retriever(RagIndex.build(str(notes), embedder)[0], embedder), engines["constant:fp32"], top_k=2,
                 params=SamplingParams(temperature=0, max_new_tokens=5), answer="both")  # fmt: skip
    # the keyword rules choose the desk's tool: a tiny random model's choice would make the test a coin toss
    desk = build_desk("keywords", db=str(notes.parent / "orders.sqlite"), help_index=None)
    app = build_server(engines, Scheduler(), SamplingParams(temperature=0, max_new_tokens=6), ui=True, notes_qa=qa,
                       desk=desk)  # fmt: skip
    with running_server(app) as url:
        yield url


def test_chat_and_compare_in_a_real_browser(server, tmp_path):
    with chromium() as driver:
        page.open_page(driver, server)
        reply, stats = page.chat(driver, "Hello there", timeout_s=60)
        assert reply.strip() == "ok ok ok ok ok ok"
        assert "constant:fp32" in stats and "first token" in stats and "tokens/s" in stats and "MiB RSS" in stats
        reply, stats = page.chat(driver, "And again", timeout_s=60)  # a second turn, with the first in its prompt
        assert reply.strip() == "ok ok ok ok ok ok"
        driver.save_screenshot(str(tmp_path / "chat.png"))
        both = page.compare(driver, "Same prompt for both", timeout_s=60)
        driver.save_screenshot(str(tmp_path / "compare.png"))
    assert both["a"][0].strip() == "ok ok ok ok ok ok" and "constant:fp32" in both["a"][1]
    assert "tiny:fp32" in both["b"][1] and "tokens/s" in both["b"][1]  # its reply: random bytes
    for name in ("chat.png", "compare.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ask_the_notes_tab_answers_with_sources_and_abstains(server, tmp_path):
    import httpx

    with chromium() as driver:
        page.open_page(driver, server)
        frames: list[bytes] = []
        answer, stats, sources = page.ask_notes(driver, "How long should pasta boil?", timeout_s=60, frames=frames)
        # the evidence sentence with its marker and source; the model's "ok ok ..." is not in the notes: dropped
        assert "[1] Bring salted water" in answer and "kitchen.md#boiling-pasta (lines 5-5)" in answer
        assert "not in the notes: 1 sentence(s) dropped" in answer and "tokens/s" in stats and "answered" in stats
        assert "[1]" in sources and "kitchen.md#boiling-pasta" in sources
        link = driver.find_element("css selector", "#notes-sources a").get_attribute("href")
        answer, stats, _ = page.ask_notes(driver, "Which reward model does RLHF with PPO train?", timeout_s=60)
        assert "do not cover" in answer and "abstained" in stats
    assert httpx.get(link).text == NOTES  # the citation opens the cited file
    assert httpx.get(f"{server}/source/etc/passwd").status_code == 404  # and nothing else
    page.save_gif(frames, str(tmp_path / "demo.gif"))
    assert (tmp_path / "demo.gif").read_bytes()[:6] == b"GIF89a" and len(frames) >= 2


def test_the_support_desk_tab_shows_sentiment_trace_reply_citations_and_hand_over(server, tmp_path):
    import re

    with chromium() as driver:
        page.open_page(driver, server)
        heading = driver.find_element("css selector", "h2").text
        looked = page.support_desk(driver, "Where is my order 1042?", timeout_s=60)
        paying = page.support_desk(driver, "Please change the card number I pay with", timeout_s=60)
        driver.save_screenshot(str(tmp_path / "desk.png"))
        empty = page.support_desk(driver, "", timeout_s=60)
    assert heading == "llm-course · the LLM pipeline course: chat, compare, ask the notes, support desk"
    mood = r"sentiment: (positive|neutral|negative|angry) \([01]\.\d\d\) · by fallback: logistic regression"
    assert re.search(mood, looked["verdict"]), looked["verdict"]
    assert "hand-over to a person: no" in looked["verdict"] and "policy: keyword rules" in looked["verdict"]
    assert "lookup_order" in looked["trace"] and '{"order_id": 1042}' in looked["trace"]
    assert "classify_sentiment" in looked["trace"] and "chosen by" in looked["trace"]
    assert "Order 1042 (" in looked["reply"] and "[1] order-status.md#" in looked["reply"]
    assert "hand-over to a person: yes" in paying["verdict"] and "rule: payment details" in paying["trace"]
    assert "payments.md#questions-about-charges-and-card-details" in paying["reply"]
    assert "Summary for the person taking over" in paying["reply"] and "reason: payment" in paying["reply"]
    assert empty == {"verdict": "error: --message is empty: write the customer's message", "reply": "", "trace": ""}


def test_without_chromium_the_browser_tests_skip_and_name_the_fix(tmp_path):
    env = {**os.environ, "CHROMIUM": str(tmp_path / "no-chromium"), "CHROMEDRIVER": str(tmp_path / "no-driver")}
    tests = [f"{__file__}::{name}" for name in (
        "test_chat_and_compare_in_a_real_browser", "test_ask_the_notes_tab_answers_with_sources_and_abstains",
        "test_the_support_desk_tab_shows_sentiment_trace_reply_citations_and_hand_over")]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and "3 skipped" in done.stdout, done.stdout[-3000:]
    assert "no-chromium is not an executable" in done.stdout and "bash scripts/setup.sh" in done.stdout
    assert "apt-get install chromium chromium-driver" in done.stdout
