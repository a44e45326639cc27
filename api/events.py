"""Server-sent event streams, woken by one Redis pub/sub listener per API process.

A stream parks on an event of its own (a greenlet under the gevent server: no thread per stream).
The process's one listener (`Hub`) subscribes to `tasks.core.changes.CHANNEL` and sets the events of the
streams watching the announced job; the woken streams of a job read it once between them
(`Hub.read`: one `status.read`, one round trip, per process) and each sends the status object if it
changed. A stream also re-reads every `EVENTS_POLL_S`
without an announcement, and sends a comment line then, so a lost announcement (a dropped
listener connection, a writer that died between its write and its publish) only delays an event,
and a client gone away is noticed.

A waiting job's `queuePosition` and `etaS` change with nobody announcing it (another job is taken,
canceled or queued ahead): its stream re-reads once a second (`PLACE_EVERY_S`), and a status object
that differs from the last one sent only in those two fields goes out at most once a second. Every
other change is sent as soon as it is read. For the same reason the status cache keeps a waiting
job's view for at most `PLACE_EVERY_S`.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from functools import partial
from typing import Callable, Iterator

from redis import Redis
from redis.exceptions import RedisError

from tasks.core import deadlines
from tasks.core.changes import CHANNEL

from .status import TERMINAL, WAITING, View, describe, read
from .store import valid_job_id

log = logging.getLogger("inkq.api")

PLACE_EVERY_S = 1.0  # how often a waiting job's place is re-read, and sent at most
PLACE_FIELDS = ("queuePosition", "etaS")


class Hub:
    """The process's watchers by job id, the listener that wakes them, and the status cache.

    The cache holds views read by `GET /status` (api/fastpath.py). An entry is dropped when its job
    is announced, and every entry when the listener connects or loses Redis; none is kept while
    the listener is not subscribed, and none longer than `STATUS_CACHE_S`. A read only enters the
    cache if no announcement at all arrived while it was in flight, so an entry is never older
    than a change that was announced before it was stored. What bypasses announcements (an
    operator's action in rq-dashboard, a job expiring) shows within `STATUS_CACHE_S`.
    """

    CACHE_SIZE = 50_000
    JOIN_WAIT_S = 10.0  # a stream waits this long for a read in flight before reading alone

    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self._watchers: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._pid = None  # the listener belongs to the process that started it (gunicorn forks)
        self.listening = threading.Event()
        self._stopped = False
        self._cache: OrderedDict[str, tuple[float, object]] = OrderedDict()
        self._seq = 0  # announcements (and reconnects) seen so far
        self._flights: dict[str, _Flight] = {}  # reads of a job in flight, for `read`

    def cached(self, job_id: str, max_age_s: float):
        """The cached view of job_id, or None."""
        if max_age_s <= 0:
            return None
        self._ensure_listener()
        if not self.listening.is_set():
            return None
        entry = self._cache.get(job_id)
        if entry is None:
            return None
        if getattr(entry[1], "place", None) is not None and entry[1].place.position is not None:
            max_age_s = min(max_age_s, PLACE_EVERY_S)  # a waiting job's position moves unannounced
        if time.monotonic() - entry[0] > max_age_s:
            with self._lock:
                self._cache.pop(job_id, None)
            return None
        return entry[1]

    def mark(self) -> int | None:
        """Call before a read that may be cached; pass the result to `remember`."""
        return self._seq if self.listening.is_set() else None

    def remember(self, job_id: str, view, mark: int | None) -> None:
        """Cache a view read after `mark`, unless anything was announced meanwhile."""
        with self._lock:
            if mark is None or mark != self._seq or not self.listening.is_set():
                return
            self._cache[job_id] = (time.monotonic(), view)
            self._cache.move_to_end(job_id)
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)

    def read(self, redis: Redis, job_id: str, reuse_s: float = 0.0) -> View | None:
        """`status.read` of job_id for a stream, shared by the streams of this process: one announcement wakes
        every stream watching the job (50 per job in `make bench`), and they all need the same view. A
        reader joins a read of the job in flight when that read began after the last announcement the
        process has seen (and so after any change announced so far); else it starts one. Errors are
        shared too. With `reuse_s`, a view in the status cache younger than that is taken as it is (the
        cache never holds a view older than an announced change): the once-a-second re-reads of a
        waiting job's streams cost one read between them."""
        if reuse_s > 0:
            cached = self.cached(job_id, reuse_s)
            if cached is not None:
                return cached
        with self._lock:
            flight = self._flights.get(job_id)
            lead = flight is None or flight.seq != self._seq
            if lead:
                flight = self._flights[job_id] = _Flight(self._seq)
        if not lead:
            if flight.done.wait(self.JOIN_WAIT_S):
                if flight.error is not None:
                    raise flight.error
                return flight.view
            return read(redis, job_id)  # the read in flight is stuck: read alone
        try:
            mark = self.mark()
            flight.view = read(redis, job_id)
            if flight.view is not None:
                self.remember(job_id, flight.view, mark)
            return flight.view
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                if self._flights.get(job_id) is flight:
                    del self._flights[job_id]
            flight.done.set()

    def watch(self, job_id: str) -> threading.Event:
        """An event set whenever job_id is announced; pass it to `unwatch` when done."""
        self._ensure_listener()
        event = threading.Event()
        with self._lock:
            self._watchers.setdefault(job_id, set()).add(event)
        return event

    def unwatch(self, job_id: str, event: threading.Event) -> None:
        with self._lock:
            watchers = self._watchers.get(job_id)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[job_id]

    def changed(self, job_id: str) -> None:
        """What an announcement of job_id does, now, in this process: for a change this process made and
        announced (an erasure), whose announcement the listener may not have heard yet when the next
        request of the same client arrives."""
        self._wake(job_id)

    def stop(self) -> None:
        """Stop listening (tests that build many apps); open streams fall back to their re-reads."""
        self._stopped = True

    def _wake(self, job_id: str | None) -> None:
        with self._lock:
            self._seq += 1
            if job_id is None:
                self._cache.clear()
            else:
                self._cache.pop(job_id, None)
            if job_id is None:
                events = [e for watchers in self._watchers.values() for e in watchers]
            else:
                events = list(self._watchers.get(job_id, ()))
        for event in events:
            event.set()

    def _ensure_listener(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self.listening.clear()
            threading.Thread(target=self._listen, name="inkq-events", daemon=True).start()

    def _listen(self) -> None:
        """Subscribe and dispatch for ever; after a lost connection, wake everyone (they re-read)."""
        delay = 0.1
        while not self._stopped:
            pubsub = None
            try:
                client = Redis.from_url(self.redis_url, socket_connect_timeout=3, socket_timeout=30,
                                        socket_keepalive=True, health_check_interval=15)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                self.listening.set()
                self._wake(None)  # anything announced before this subscription is read now
                delay = 0.1
                while not self._stopped:  # get_message, not listen: an idle connection is PINGed, so a dead one is noticed
                    message = pubsub.get_message(timeout=5.0)
                    if message and message.get("type") == "message":
                        data = message["data"]
                        self._wake(data.decode() if isinstance(data, bytes) else data)
            except (RedisError, OSError) as exc:
                log.warning("event listener lost Redis (%s); reconnecting in %.1f s", exc, delay)
            except Exception:  # never let the listener die: streams would fall back to slow re-reads
                log.exception("event listener failed; restarting")
            finally:
                self.listening.clear()
                self._wake(None)  # the cache is void without the subscription
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001 - closing a broken connection
                        pass
            if not self._stopped:
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


def _only_place_changed(body: dict, last: dict) -> bool:
    """Whether two status objects differ in queuePosition and etaS only."""
    return all(body.get(k) == last.get(k) for k in body.keys() | last.keys() if k not in PLACE_FIELDS)


class _Flight:
    """One read of a job in flight (`Hub.read`): the announcements seen when it began, then its outcome."""

    __slots__ = ("seq", "done", "view", "error")

    def __init__(self, seq: int):
        self.seq = seq
        self.done = threading.Event()
        self.view = None
        self.error: Exception | None = None


def stream(hub: Hub, redis: Redis, job_id: str, result_url: Callable[[str], str],
           recheck_s: float, limit_s: float, renew: Callable[[], None] | None = None,
           first: View | None = None, woken: threading.Event | None = None,
           past_deadline: Callable[[View], View | None] | None = None) -> Iterator[str]:
    """The event-stream body: status objects as they change, ending after the terminal one; `renew`
    (the stream's lease, api/leases.py) is called at least every `recheck_s` while it runs.

    `past_deadline` (`api.store.JobStore.past_deadline`): a view of a job waiting past its start deadline
    becomes the view after its end; a waiting job with a deadline is read again at its deadline.

    `first`, `woken`: a view of the job read after `woken = hub.watch(job_id)` was registered (the
    read that opened the stream): it is the first event, sent with the retry line in one write, and
    not read again; an announcement since the watch began has set `woken`, so it is read at once."""
    prefix = "retry: 2000\n\n"
    if first is None:
        yield prefix  # the headers go out before the first read
        prefix = ""
    if woken is None:
        woken = hub.watch(job_id)
    try:
        last = None
        sent_at = 0.0  # when the last status object went out
        deadline = time.monotonic() + limit_s
        renewed = spoke = time.monotonic()
        view = first
        wake_at = None  # a waiting job's deadline (monotonic), when it comes before the next re-read
        placed = False  # the job waits with a position: re-read every PLACE_EVERY_S
        held = False  # a change of the place only, held back by the once-a-second limit
        while True:
            if renew is not None and time.monotonic() - renewed >= recheck_s:
                renew()
                renewed = time.monotonic()
            if view is None:
                woken.clear()  # cleared before the read: an announcement during it wakes the next wait
                try:
                    view = hub.read(redis, job_id, PLACE_EVERY_S / 2 if placed else 0.0)
                except RedisError as exc:  # the stream stays open and tries again at its next wake
                    log.warning("event stream could not read job %s: %s", job_id, exc)
                else:
                    if view is None:  # expired while watched
                        return
            if view is not None and past_deadline is not None:
                try:
                    view = past_deadline(view)
                except RedisError as exc:  # shown as read; the supervisors end it, and announce that
                    log.warning("event stream could not end job %s at its deadline: %s", job_id, exc)
                if view is None:
                    return
            if view is not None:
                left = deadlines.seconds_left(view.meta) if view.word == WAITING else None
                # due and still waiting (a worker is taking it): look again in a second
                wake_at = None if left is None else time.monotonic() + (left + 0.05 if left > 0 else 1.0)
                body = describe(view, result_url)
                view = None
                placed = body["queuePosition"] is not None
                held = False
                if body != last:
                    if (last is None or not _only_place_changed(body, last)
                            or time.monotonic() - sent_at >= PLACE_EVERY_S):
                        yield f"{prefix}event: status\ndata: {json.dumps(body)}\n\n"
                        prefix, last, sent_at, spoke = "", body, time.monotonic(), time.monotonic()
                    else:
                        held = True
                if body["status"] in TERMINAL:
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            wait = min(recheck_s, remaining)
            if held:  # read again (and send) once the last status object is a second old
                wait = min(wait, max(0.05, sent_at + PLACE_EVERY_S - time.monotonic()))
            elif placed:
                wait = min(wait, PLACE_EVERY_S)
            if wake_at is not None:  # the deadline comes first: read then
                wait = min(wait, max(wake_at - time.monotonic(), 0.0))
            if not woken.wait(wait) and time.monotonic() - spoke >= recheck_s:
                yield ": still watching\n\n"
                spoke = time.monotonic()
    finally:
        hub.unwatch(job_id, woken)


def open_stream(ctx, job_id: str, user_id: str, result_url: Callable[[str], str], limiter=None):
    """Open the owner's event stream on a job: (its body, the callbacks to run when its response is
    closed, also when the body never started); None when the job is gone or not the user's; 429 when
    the user holds MAX_STREAMS_PER_USER. One round trip (`leases.open_on`: the owner's read of the
    job, which is the first event, and the lease), made after the stream watches the job's
    announcements, so nothing announced after that read is missed. Used by the Flask view
    (`jobs.events`) and the fast path below it (`fastpath.FastStatus`), which also counts the request
    against `limiter` in that round trip (`limits.OverLimit` when over it)."""
    if not valid_job_id(job_id):
        return None
    woken = ctx.hub.watch(job_id)
    try:
        opened = ctx.leases.open_on(job_id, user_id, limiter)
    except BaseException:
        ctx.hub.unwatch(job_id, woken)
        raise
    if opened is None:
        ctx.hub.unwatch(job_id, woken)
        return None
    view, lease = opened
    body = stream(ctx.hub, ctx.redis, job_id, result_url, ctx.settings.events_poll_s, ctx.settings.events_max_s,
                  renew=lease.renew, first=view, woken=woken,
                  past_deadline=partial(ctx.store.past_deadline, webhook_retry_s=ctx.settings.webhook_retry_s))
    return body, (lease.release, partial(ctx.hub.unwatch, job_id, woken))
