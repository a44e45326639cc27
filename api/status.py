"""The status object of API.md: the one place RQ states become status words.

A status read is one round trip, one Lua call (`read`): the job hash's few fields, the latest result entry,
whether a credit charge is still pending and the job's place in its queue's fair order
(`tasks.core.fairness.Place`: queuePosition and what etaS is estimated from, O(log n) in the queue's
length), parsed without building an RQ `Job`.
"""
from __future__ import annotations

import json
from base64 import b64decode
from dataclasses import dataclass

from rq.job import Job, JobStatus
from rq.results import Result

from tasks.core import fairness, scripts
from tasks.core.credits import charge_key
from tasks.core.errors import CANCELED_MESSAGE, CRASH_FAILURE, GENERIC_FAILURE
from tasks.core.links import SVG_SUFFIX

WAITING, ACTIVE, COMPLETED, FAILED, CANCELED = "waiting", "active", "completed", "failed", "canceled"
STATUS_WORDS = (WAITING, ACTIVE, COMPLETED, FAILED, CANCELED)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELED})

_WORDS = {
    JobStatus.QUEUED: WAITING,
    JobStatus.DEFERRED: WAITING,
    JobStatus.SCHEDULED: WAITING,
    JobStatus.CREATED: WAITING,
    JobStatus.STARTED: ACTIVE,
    JobStatus.FINISHED: COMPLETED,
    JobStatus.FAILED: FAILED,
    JobStatus.STOPPED: CANCELED,
    JobStatus.CANCELED: CANCELED,
}


def status_word(rq_status: JobStatus | str | None) -> str:
    """Map an RQ job status to the contract's status word."""
    if rq_status is None:
        return FAILED
    return _WORDS.get(JobStatus(rq_status), WAITING)


def word_of(job: Job, refresh: bool = False) -> str:
    """A job's status word; a job canceled while a worker was taking it (it refused to run) is canceled."""
    word = status_word(job.get_status(refresh=refresh))
    if word == FAILED and refresh:
        job.get_meta(refresh=True)
    return _canceled_or(word, job.meta)


def _canceled_or(word: str, meta: dict) -> str:
    return CANCELED if word == FAILED and meta.get("canceled") else word


@dataclass(frozen=True)
class View:
    """What a status object is made of, read from Redis in one round trip (`read`) or from an RQ job."""

    id: str
    status: str | None
    meta: dict
    origin: str | None
    created_at: str | None
    ended_at: str | None
    value: dict | None  # the return value of a completed job
    charged: bool  # a credit charge is still pending settlement
    place: fairness.Place | None = None  # a waiting or active job's place in its queue

    @property
    def word(self) -> str:
        return _canceled_or(status_word(self.status), self.meta)

    @property
    def user(self) -> str | None:
        return self.meta.get("user")


_READ = scripts.load("status_read")
_scripts: dict[int, object] = {}


def _script(redis):
    found = _scripts.get(id(redis))
    if found is None:
        found = _scripts[id(redis)] = redis.register_script(_READ)
    return found


def _keys(job_id: str) -> list[str]:
    return [Job.key_for(job_id), Result.get_key(job_id), charge_key(job_id)]


def _text(raw) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


def _view(job_id: str, reply) -> View | None:
    (status, meta, origin, created_at, ended_at, _), results, charged, place = reply
    if status is None and meta is None:
        return None
    value = None
    if results:
        flat = results[0][1]
        payload = dict(zip(flat[::2], flat[1::2]))
        raw = payload.get(b"return_value")
        if raw is not None and payload.get(b"type") == b"1":  # rq's Result.Type.SUCCESSFUL
            value = json.loads(b64decode(raw))
    return View(job_id, _text(status), json.loads(meta) if meta else {}, _text(origin),
                _rq_time(created_at), _rq_time(ended_at), value if isinstance(value, dict) else None, bool(charged),
                fairness.Place.of(place))


def read_keys(job_id: str) -> list[str]:
    """The keys `read` looks at, in its order (for scripts that read a job along with other work)."""
    return _keys(job_id)


def read_args() -> list[str]:
    """The ARGV of `read`'s script (for scripts that read a job as it does)."""
    return fairness.read_args()


def view_of(job_id: str, reply) -> View | None:
    """The view from a reply shaped as `read`'s script answers: [hash fields, latest result, pending charge,
    place]."""
    return _view(job_id, reply)


def read(redis, job_id: str) -> View | None:
    """A job's view in one command (job hash fields, latest result, pending charge, place); None if gone."""
    return _view(job_id, _script(redis)(keys=_keys(job_id), args=fairness.read_args()))


def read_many(redis, job_ids: list[str]) -> list[View | None]:
    """Views of several jobs in one round trip."""
    script = _script(redis)
    with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            script(keys=_keys(job_id), args=fairness.read_args(), client=pipe)
        replies = pipe.execute()
    return [_view(job_id, reply) for job_id, reply in zip(job_ids, replies)]


def _rq_time(raw) -> str | None:
    """RQ's '%Y-%m-%dT%H:%M:%S.%fZ' as the contract's milliseconds form."""
    text = _text(raw)
    if not text:
        return None
    return text[:23] + "Z" if len(text) >= 24 and text[19] == "." else text


def error_text(view: View, word: str) -> str | None:
    """The human-readable reason a job failed, never a traceback."""
    if word == CANCELED:  # by its owner, or by its start deadline (`tasks/core/deadlines.py`), which says why
        return (view.meta.get("error") or CANCELED_MESSAGE) if view.meta.get("expired") else CANCELED_MESSAGE
    if word != FAILED:
        return None
    return view.meta.get("error") or (CRASH_FAILURE if view.meta.get("attempts") else GENERIC_FAILURE)


def describe(view: View, result_url=None) -> dict:
    """The status object for a job; `result_url(name, value)` builds the signed image URL of `<jobId>` or
    `<jobId>.svg` (`value`, the return value, names the stored keys)."""
    meta = view.meta
    word = view.word
    result = None
    if word == COMPLETED:
        value = view.value or {}
        result = {k: v for k, v in value.items() if k not in ("outputKey", "svgKey")}
        result["image"] = result_url(view.id, value) if result_url else None
        if value.get("svgKey"):
            result["svg"] = result_url(view.id + SVG_SUFFIX, value) if result_url else None
    progress = 100 if word == COMPLETED else int(meta.get("progress", 0))
    stage = meta.get("stage") or {WAITING: "queued", COMPLETED: "done", CANCELED: "canceled"}.get(word, "")
    if word == WAITING and meta.get("attempts"):
        stage = "waiting to retry"
    ended = view.ended_at if word in TERMINAL else None
    if word == CANCELED:
        ended = ended or meta.get("canceledAt")
    return {
        "jobId": view.id,
        "queue": view.origin,
        "operation": meta.get("operation"),
        "status": word,
        "progress": progress,
        "stage": stage,
        "result": result,
        "error": error_text(view, word),
        "attempts": int(meta.get("attempts", 0)),
        "createdAt": view.created_at,
        "startedAt": meta.get("startedAt"),
        "endedAt": ended,
        "queuePosition": view.place.position if word == WAITING and view.place else None,
        "etaS": eta_of(view, word),
        **({"webhook": meta["webhook"]} if meta.get("webhook") else {}),
    }


def eta_of(view: View, word: str, now: float | None = None) -> int | None:
    """etaS: estimated seconds until a waiting or active job's result (`fairness.Place.eta_s`); else None."""
    if view.place is None or word not in (WAITING, ACTIVE):
        return None
    return view.place.eta_s(view.origin, word == ACTIVE, view.meta.get("startedAt"), now)
