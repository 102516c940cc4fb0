"""Module 7: the Gradio page of ``serve`` in a real headless Chromium (Debian's chromium + chromedriver)."""

import pytest

from helpers.serving import running_server
from llm_course.browser import chromium
from llm_course.inference import GenerationEngine, SamplingParams, page
from llm_course.inference.scheduler import Scheduler
from llm_course.inference.serve import build_server


@pytest.fixture(scope="module")
def server(constant_llama, tiny_llama):
    engines = {"constant:fp32": GenerationEngine.load(constant_llama, device="cpu"),
               "tiny:fp32": GenerationEngine.load(tiny_llama, device="cpu")}  # fmt: skip
    app = build_server(engines, Scheduler(), SamplingParams(temperature=0, max_new_tokens=6), ui=True)
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
