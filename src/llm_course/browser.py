"""A real headless Chromium (Debian's ``chromium`` + ``chromedriver``, driven by Selenium) for the browser tests and
the screenshots of the notes (the Gradio page, TensorBoard).

Selenium's own driver download needs the network, so this uses the system's browser and driver, found on the
``PATH`` or through ``$CHROMIUM`` and ``$CHROMEDRIVER``.
"""

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from llm_course.errors import AssetError

INSTALL_HINT = (
    "run bash scripts/setup.sh (it installs them where apt-get can run), or sudo apt-get install chromium "
    "chromium-driver (Debian/Ubuntu) and pip install selenium, or set $CHROMIUM and $CHROMEDRIVER to them"
)
BROWSER = ("CHROMIUM", "chromium", "chromium-browser", "google-chrome")
DRIVER = ("CHROMEDRIVER", "chromedriver")


def _find(env: str, *names: str) -> str:
    given = os.environ.get(env)
    if given and not shutil.which(given):
        raise AssetError(f"${env}={given} is not an executable: {INSTALL_HINT}")
    found = shutil.which(given) if given else next((p for n in names if (p := shutil.which(n))), None)
    if not found:
        raise AssetError(f"no {names[0]} found (looked on PATH for {', '.join(names)} and in ${env}): {INSTALL_HINT}")
    return found


def missing() -> str | None:
    """Why :func:`chromium` cannot start here (the browser, its driver or Selenium missing, and the fix), else None."""
    try:
        import selenium  # noqa: F401

        _find(*BROWSER)
        _find(*DRIVER)
    except ImportError:
        return f"selenium is not installed: {INSTALL_HINT}"
    except AssetError as err:
        return str(err)
    return None


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium WebDriver, closed on exit."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        raise AssetError(f"selenium is not installed: {INSTALL_HINT}") from err
    options = webdriver.ChromeOptions()
    options.binary_location = _find(*BROWSER)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(_find(*DRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; ``TimeoutError`` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
        except Exception:  # an element not there yet, or replaced while Gradio re-renders it
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(poll_s)


def text_of(driver: Any, css: str) -> str:
    """The visible text of the first element matching ``css`` ('' when there is none)."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""
