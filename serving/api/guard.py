"""What reaches a handler is bounded and well formed, and a bad request gets a short 4xx.

- `BodyLimit`: a body over `max_bytes` is a 413 before it is parsed; a declared Content-Length
  over the limit is refused without reading the body at all.
- `invalid_request`: a body that fails validation (a wrong type, a missing field, a non-finite
  number such as NaN, Infinity or 1e400, which Python's JSON reader accepts) is a 422 naming
  each field, its rule and at most a short prefix of the offending value: never the value
  whole (a 64 MB id came back as a 64 MB 422) and never a non-finite number, which JSON cannot
  carry (rendering one raised, and every NaN became a 500 with the connection reset).
"""

from __future__ import annotations

import json
import math

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

MAX_BODY_BYTES = 1 << 20
ECHO_CHARS = 64
"""How much of an offending value a 4xx repeats."""


def echo(value) -> str | None:
    """A short, JSON-safe rendering of an offending value."""
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)[:1000]
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}… ({len(text):,} chars)"


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, made safe: loc, msg and type of each error, the input shortened."""
    detail = [
        {
            "loc": list(e.get("loc", ())),
            "msg": e.get("msg", ""),
            "type": e.get("type", ""),
            "input": echo(e.get("input")),
        }
        for e in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def _too_large(limit: int, got: int | None = None) -> bytes:
    size = f"{got:,} bytes" if got is not None else "more"
    return json.dumps(
        {"detail": f"request body of {size} is over the limit of {limit:,} bytes"}
    ).encode()


class BodyLimit:
    """ASGI middleware: buffers a request body up to `max_bytes` and hands it on, or answers 413."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, int(declared))
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(send)
                return
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _refuse(self, send, got: int | None = None) -> None:
        payload = _too_large(self.max_bytes, got)
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _replay(body: bytes, receive):
    """A receive that gives the buffered body once, then whatever the client sends next (its
    disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
