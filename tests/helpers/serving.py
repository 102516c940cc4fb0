"""Real servers on 127.0.0.1 for tests that talk HTTP to the serve app: uvicorn in a background thread, or the
``llm-course serve`` command in a process of its own."""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app: Any, timeout_s: float = 30) -> Iterator[str]:
    """Serve ``app`` on a free port; yields the base URL; stops the server on exit."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


@contextmanager
def serve_command(*args: str, env: dict[str, str] | None = None, timeout_s: float = 120) -> Iterator[tuple[str, int]]:
    """Run ``llm-course serve ARGS`` on a free port in a process of its own; yields its base URL and process id once
    ``/health`` answers; stops it on exit. Its own process, as in use: the clients' threads do not share its GIL."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "llm_course", "serve", "--port", str(port), *args]
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"llm-course serve did not start on port {port}:\n{log.read()[-3000:]}")
                time.sleep(0.2)
            yield url, process.pid
        finally:
            process.terminate()
            process.wait(30)
