"""The tour's subprocesses: a command run to its end with a timeout, and ``llm-course serve`` for the length of a
``with`` block. Both start in a session of their own, so a timeout ends the command and every process it started
(Lightning's second DDP rank included)."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class StepError(RuntimeError):
    """A step's check or subprocess failed; the message says what, and the step's log has the details."""


def stop(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGINT to the process (uvicorn and Lightning shut down cleanly on it), SIGKILL to its session if it stays."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the children too (a DDP rank the first process launched)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_process(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
    """Run ``argv`` (its output goes where this process's goes: the step's log) and wait at most ``timeout`` s.

    Raises:
        StepError: it ran past ``timeout`` (then it is stopped) or exited with a non-zero code.
    """
    proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop(proc, grace_s=5)
        raise StepError(f"{' '.join(argv[1:4])} ... ran past {timeout:.0f} s and was stopped") from None
    except BaseException:  # Ctrl-C: no process is left behind
        stop(proc, grace_s=5)
        raise
    stop(proc, grace_s=0)  # a rank that outlived its launcher
    if code:
        raise StepError(f"{' '.join(argv[1:4])} ... exited with code {code} (its output is in the step's log)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(args: list[str], timeout: float = 300) -> Iterator[str]:
    """``llm-course ARGS --host 127.0.0.1 --port P`` (P free) in a subprocess; yields its URL once ``/health``
    answers, and stops it on exit.

    Raises:
        StepError: the server exited, or did not answer within ``timeout`` s.
    """
    import httpx

    port = free_port()
    argv = [sys.executable, "-m", "llm_course", *args, "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise StepError(f"llm-course {args[0]} exited with code {proc.returncode} before it answered "
                                "(its output is in the step's log)")  # fmt: skip
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise StepError(f"llm-course {args[0]} did not answer {url}/health within {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)
