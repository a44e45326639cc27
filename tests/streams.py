"""Many `GET /status/<id>/events` streams at once from one process: asyncio and plain HTTP/1.0, so a
stream costs a socket here, not a thread (the suite and `make bench` open thousands)."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

TERMINAL = ("completed", "failed", "canceled")


@dataclass
class Stream:
    """What one stream saw; times are `time.time()` (comparable with the jobs' `endedAt`)."""

    job_id: str
    token: str
    opened: float = 0.0
    connected: float | None = None  # TCP connect done (the server's kernel accepted it)
    answered: float | None = None  # status line received (the app has taken the request)
    first_event: float | None = None
    ended: float | None = None  # when the terminal event arrived
    events: list = field(default_factory=list)
    http_status: int | None = None
    error: str | None = None

    @property
    def last(self) -> dict | None:
        return self.events[-1] if self.events else None


async def _follow(host: str, port: int, stream: Stream, timeout: float) -> None:
    stream.opened = time.time()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        stream.connected = time.time()
        writer.write((f"GET /status/{stream.job_id}/events HTTP/1.0\r\nHost: {host}:{port}\r\n"
                      f"Authorization: Bearer {stream.token}\r\nAccept: text/event-stream\r\n\r\n").encode())
        deadline = time.monotonic() + timeout
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        stream.answered = time.time()
        stream.http_status = int(status_line.split()[1])
        while (await asyncio.wait_for(reader.readline(), timeout)).strip():
            pass  # headers
        data = []
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(reader.readline(), max(0.01, deadline - time.monotonic()))
            if not line:
                break  # the server ended the stream
            line = line.decode().rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                body = json.loads("\n".join(data))
                data = []
                now = time.time()
                if stream.first_event is None:
                    stream.first_event = now
                stream.events.append(body)
                if body.get("status") in TERMINAL:
                    stream.ended = now
                    return
    except (OSError, asyncio.TimeoutError, ValueError, IndexError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()


async def follow_all(host: str, port: int, streams: list[Stream], timeout: float, opening: float = 0.0) -> None:
    """Follow every stream at once until each has seen a terminal event (or timeout seconds);
    `opening` spreads the connects over that many seconds (0: every connect is started at once)."""
    async def one(i: int, stream: Stream):
        if opening:
            await asyncio.sleep(opening * i / len(streams))
        await _follow(host, port, stream, timeout)
    await asyncio.gather(*(one(i, s) for i, s in enumerate(streams)))


def run(host: str, port: int, streams: list[Stream], timeout: float, opening: float = 0.0) -> None:
    """Blocking `follow_all`, for a thread of its own."""
    asyncio.run(follow_all(host, port, streams, timeout, opening))
