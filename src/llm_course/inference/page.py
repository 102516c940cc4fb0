"""Driving the Gradio page of ``llm-course serve`` in a real browser: the browser test and the screenshot use it.

``python -m llm_course.inference.page --url http://127.0.0.1:8000 --output notes/figures/module7_gradio.png``
asks one prompt in compare mode and saves the screenshot; ``--notes_question`` records the notes tab as a GIF and
``--desk_message`` screenshots the support desk tab instead.
"""

import argparse
import re
from typing import Any

from llm_course.browser import chromium, text_of, wait_for

PENDING = re.compile(r"^\s*(\d+(\.\d+)?s|processing|queue)", re.I)  # Gradio's timer over a component being updated


def settled(driver: Any, css: str) -> str:
    """The text of ``css`` once Gradio is done updating it: '' while it shows its pending timer ("0.4s")."""
    text = text_of(driver, css)
    return "" if PENDING.match(text) else text


def open_page(driver: Any, url: str, timeout_s: float = 60) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#chat-input textarea"), timeout_s, f"the chat box at {url}")


def _type(driver: Any, css: str, text: str, timeout_s: float) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, css), timeout_s, css)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)  # unlike clear(), fires the input event the page's state follows ("" is sent as "")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def _stats(driver: Any, css: str, timeout_s: float, before: str = "") -> str:
    """Wait for a new timings line in ``css`` (not ``before``, the line of the previous reply)."""

    def fresh() -> str:
        text = settled(driver, css)
        return text if "tokens/s" in text and text != before else ""

    return wait_for(fresh, timeout_s, f"the timings line in {css}")


def chat(driver: Any, message: str, timeout_s: float = 120) -> tuple[str, str]:
    """Send ``message`` in the Chat tab; wait for the reply and its timings line. Returns (reply, timings)."""
    from selenium.webdriver.common.by import By

    before = text_of(driver, "#chat-stats")
    _type(driver, "#chat-input textarea", message, timeout_s)
    stats = _stats(driver, "#chat-stats", timeout_s, before)
    replies = driver.find_elements(By.CSS_SELECTOR, "#chatbot .bot")
    return (replies[-1].text if replies else ""), stats


def compare(driver: Any, prompt: str, timeout_s: float = 300) -> dict[str, tuple[str, str]]:
    """Ask ``prompt`` in the Compare tab; wait for both replies and timings: ``{"a": (reply, timings), "b": ...}``."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Compare')]").click()
    wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#compare-input textarea").is_displayed(), 30, "compare tab")
    box = driver.find_element(By.CSS_SELECTOR, "#compare-input textarea")
    box.clear()
    box.send_keys(prompt)
    before = {side: text_of(driver, f"#compare-stats-{side}") for side in ("a", "b")}
    driver.find_element(By.CSS_SELECTOR, "#compare-send").click()
    out = {}
    for side in ("a", "b"):
        stats = _stats(driver, f"#compare-stats-{side}", timeout_s, before[side])
        out[side] = (text_of(driver, f"#compare-reply-{side}"), stats)
    return out


def ask_notes(driver: Any, question: str, timeout_s: float = 300, frames: list[bytes] | None = None,
              every_s: float = 0.5) -> tuple[str, str, str]:  # fmt: skip
    """Ask ``question`` in the "Ask the course notes" tab; wait for the answer's final line (answered, with the
    timings when the model generated, or the abstention). With ``frames``, a screenshot is appended every
    ``every_s`` seconds meanwhile (for a GIF). Returns (answer, stats line, sources text)."""
    import time

    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Ask the course notes')]").click()
    wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#notes-input textarea").is_displayed(), 30, "notes tab")
    before = text_of(driver, "#notes-stats")
    _type(driver, "#notes-input textarea", question, timeout_s)

    def done() -> str:
        if frames is not None:
            frames.append(driver.get_screenshot_as_png())
        text = settled(driver, "#notes-stats")
        finished = "generating" not in text and ("answered" in text or "abstained" in text)
        return text if text != before and finished else ""

    stats = wait_for(done, timeout_s, "the answer's timings", poll_s=every_s)
    time.sleep(every_s)  # let the last update render
    if frames is not None:
        frames.append(driver.get_screenshot_as_png())
    return text_of(driver, "#notes-answer"), stats, text_of(driver, "#notes-sources")


def support_desk(driver: Any, message: str, timeout_s: float = 300) -> dict[str, str]:
    """Send ``message`` in the "Support desk" tab; wait for the desk's verdict (or its error). Returns the shown
    text: ``{"verdict": sentiment and hand-over lines, "reply": reply, citations and summary, "trace": the table}``."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Support desk')]").click()
    wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#desk-input textarea").is_displayed(), 30, "desk tab")
    before = text_of(driver, "#desk-verdict")
    _type(driver, "#desk-input textarea", message, timeout_s)

    def done() -> str:
        text = settled(driver, "#desk-verdict")
        return text if text != before and ("hand-over" in text or "error:" in text) else ""

    verdict = wait_for(done, timeout_s, "the desk's verdict")
    return {"verdict": verdict, "reply": text_of(driver, "#desk-reply"), "trace": text_of(driver, "#desk-trace")}


def save_gif(frames: list[bytes], path: str, frame_ms: int = 500, hold_last_ms: int = 4000, width: int = 960) -> None:
    """An animated GIF of PNG screenshots (scaled to ``width``), the last frame held longer."""
    import io

    from PIL import Image

    images = [Image.open(io.BytesIO(f)).convert("RGB") for f in frames]
    images = [im.resize((width, round(im.height * width / im.width))) for im in images]
    durations = [frame_ms] * (len(images) - 1) + [hold_last_ms]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshot the serve page in compare mode (a real headless Chromium)")
    parser.add_argument("--url", default="http://127.0.0.1:8000/")
    parser.add_argument("--prompt", default="In two sentences, why does a quantized model use less memory?")
    parser.add_argument("--output", default="notes/figures/module7_gradio.png")
    parser.add_argument("--height", type=int, default=1100)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--notes_question", help="instead: ask this in the notes tab and save a GIF to --output")
    parser.add_argument("--desk_message", help="instead: send this to the support desk tab (serve --support_desk)")
    args = parser.parse_args()
    with chromium(args.width, args.height) as driver:
        open_page(driver, args.url)
        if args.desk_message:
            shown = support_desk(driver, args.desk_message)
            print("\n".join(shown.values()))
            driver.save_screenshot(args.output)
        elif args.notes_question:
            frames: list[bytes] = []
            answer, stats, sources = ask_notes(driver, args.notes_question, frames=frames)
            print(f"{stats}\n{answer}\n{sources}")
            save_gif(frames, args.output)
        else:
            for side, (reply, stats) in compare(driver, args.prompt).items():
                print(f"{side}: {stats}\n   {reply[:200]}")
            driver.save_screenshot(args.output)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
