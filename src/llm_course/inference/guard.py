"""What a request must pass before it reaches a route: its ``Host``, its API key, the size of its body.

One ASGI middleware, so each check is cheap and happens before any parsing:

- ``Host`` must name this server (``allowed_hosts``): a web page on another site that rebinds its DNS name to
  127.0.0.1 sends its own name and is refused (DNS rebinding).
- ``/v1/*`` needs ``Authorization: Bearer KEY`` when the server has a key (compared in constant time); the answer
  otherwise is OpenAI's 401.
- a ``/v1/*`` body over ``max_body_bytes`` gets a 413 from its ``Content-Length``, or, for a chunked body, as soon
  as the bytes received pass the cap, without reading the rest.

Refusals use OpenAI's error shape, like every other error of the API.
"""

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_names(host: str, extra: Iterable[str] = ()) -> set[str] | None:
    """The ``Host`` names a server bound to ``host`` answers: loopback names and ``host`` itself, plus ``extra``
    (e.g. the name a proxy forwards). ``None`` (any name) for a wildcard bind (0.0.0.0) without ``extra``: the
    server cannot know the names that reach it, and the API key is what protects it there."""
    extra = {e.lower() for e in extra}
    if host in WILDCARDS and not extra:
        return None
    return {*LOOPBACK_NAMES, host.lower(), *extra} - set(WILDCARDS)


def _hostname(value: str) -> str:
    """``Host`` header → name without the port (``[::1]:8000`` → ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


async def _error(send: Send, status: int, message: str, code: str, kind: str = "invalid_request_error") -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """The ASGI middleware (``app.add_middleware(Guard, ...)``).

    Args:
        app: the ASGI app it wraps.
        api_key: the key ``/v1/*`` needs (``None``: no key).
        max_body_bytes: the largest ``/v1/*`` request body.
        allowed_hosts: the ``Host`` names answered (:func:`host_names`; ``None``: any).
    """

    def __init__(self, app: Any, api_key: str | None = None, max_body_bytes: int = 1_000_000,
                 allowed_hosts: set[str] | None = None) -> None:  # fmt: skip
        self.app, self.max_body_bytes, self.allowed_hosts = app, max_body_bytes, allowed_hosts
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.allowed_hosts is not None and _hostname(headers.get("host", "")) not in self.allowed_hosts:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await _error(send, 400, "the Host header does not name this server (see --allowed_hosts)",
                                "invalid_host")  # fmt: skip
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        if self.api_key is not None and not self._authorized(headers.get("authorization", "")):
            return await _error(send, 401, "a valid API key is needed: send the header 'Authorization: Bearer KEY' "
                                "with the key the server was started with (--api_key)", "invalid_api_key")  # fmt: skip
        length = headers.get("content-length", "0")
        if not length.isdigit():
            return await _error(send, 400, f"Content-Length {length[:40]!r} is not a number", "invalid_length")
        if int(length) > self.max_body_bytes:
            return await _error(send, 413, self._too_large(int(length)), "request_too_large")
        body = await self._read_body(receive)
        if body is None:
            return await _error(send, 413, self._too_large(None), "request_too_large")
        if body is False:
            return None  # the client left before its body was complete: nobody to answer
        replayed = False

        async def replay() -> Message:  # the route reads the buffered body, then the client's later messages
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _authorized(self, header: str) -> bool:
        scheme, _, key = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self.api_key)

    def _too_large(self, size: int | None) -> str:
        got = "more" if size is None else f"{size:,} bytes"
        return f"the request body has {got}; this server takes at most {self.max_body_bytes:,} (--max_body_bytes)"

    async def _read_body(self, receive: Receive) -> bytes | None | bool:
        """The whole body; ``None`` as soon as it passes the cap (the rest is never read); ``False`` if the client
        left first."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
