"""Screenshot TensorBoard's scalars of a run in a real headless Chromium (the figure of the README's TensorBoard tour).

``python -m llm_course.tensorboard_tour --logdir outputs/tensorboard_logs --output FILE.png`` starts
``tensorboard`` on 127.0.0.1, opens its time-series page, waits for the charts and saves the screenshot.
"""

import argparse
import subprocess
import sys
import time
import urllib.request

from llm_course.browser import chromium, wait_for

TAGS = "train/loss|val/acc|lr-|train/grad_norm|train/samples_per_sec|train/peak_mem_mb"


def start_tensorboard(logdir: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tensorboard exited: {process.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise TimeoutError(f"tensorboard did not answer on port {port} within 120 s")


def screenshot(url: str, output: str, tag_filter: str = TAGS, width: int = 1500, height: int = 1400) -> None:
    """Open the time-series page filtered to ``tag_filter`` (a regex), wait until charts are drawn, save a PNG."""
    from selenium.webdriver.common.by import By

    with chromium(width, height) as driver:
        driver.get(f"{url}/#timeseries")
        box = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "input[placeholder*='Filter tags']"), 90,
                       "the tag filter")  # fmt: skip
        box.send_keys(tag_filter)
        for button in driver.find_elements(By.XPATH, "//button[contains(., 'Settings')]"):
            if "active" in (button.get_attribute("class") or "") or button.get_attribute("aria-pressed") == "true":
                button.click()  # close the settings pane: more room for the charts
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "scalar-card-component, .scalar-card")) >= 4, 90,
                 "the scalar charts")  # fmt: skip
        time.sleep(3)  # the charts animate in
        driver.save_screenshot(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="outputs/tensorboard_logs")
    parser.add_argument("--output", default="notes/figures/sample_tensorboard.png")
    parser.add_argument("--port", type=int, default=6016)
    args = parser.parse_args()
    process = start_tensorboard(args.logdir, args.port)
    try:
        screenshot(f"http://127.0.0.1:{args.port}", args.output)
    finally:
        process.terminate()
        process.wait(30)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
