"""Recovery of jobs whose worker died: one sweep, one Lua script, run every second by any worker service.

Why: RQ notices a dead worker only when the job's heartbeat has lapsed (60 s or more) and then only at
some worker's next maintenance run (every 10 minutes); a job id taken off the queue by a worker that
died before starting it sits in the queue's intermediate list for at least a minute and is then failed,
not run (rq#2079, rq#2061). inkq keeps RQ and adds three things:

1. **Liveness.** Every rq worker process keeps `inkq:alive:<worker>` alive (PX `LIVENESS_TTL_MS`, renewed
   every `LIVENESS_EVERY_S` by a thread of its own, whatever the job is doing) and is listed in
   `inkq:workers:<queue>`. A worker is dead when it is listed and its key has lapsed. A listed worker
   that is alive is never judged, however long its job runs.
2. **Claims.** A worker moves a job id from its queue into its own list, `inkq:claims:<worker>`
   (`tasks.runtime.worker.InkqQueue`), instead of RQ's shared intermediate list, and takes it out in the same
   transaction that records the execution in RQ's started registry. So every id is always in exactly one
   place: the queue, one worker's claims, or the started registry, and each place has an owner whose
   death is visible.
3. **The sweep** (`SWEEP`, below), run by the supervisor of every worker service (`tasks/runtime/cli.py`) at most
   once a second across all of them (`inkq:recovery:tick`, SET NX PX). In one atomic step it:
   - puts the claimed ids of dead workers back at the head of their queue, oldest first (a job no longer
     queued, e.g. canceled meanwhile, is dropped instead);
   - for each execution in a started registry whose worker is dead: removes the execution and what it stored
     (its outputs are never a result: deleted in the Redis store, made due for the blob sweep in S3); a job that
     never started is queued again at the head without using a retry; a started job with retries left is
     queued again at the head as a new attempt (its retry counter goes down by one); a job with none left
     is to be failed with `CRASH_FAILURE`, and a job its owner had asked to stop to be canceled: the
     script does not end them itself but leaves an entry in `inkq:ending` (`ENDING_KEY`), in the same
     step as the removal of the dead execution (the job's fencing token, `tasks/ending.py`). `drain`,
     run by every supervisor at each tick, ends each entry through the one end path (refund, input,
     webhook, metrics, announcement) in one transaction with the entry's removal, so a supervisor
     that dies between the script and the drain loses no end and no webhook;
   - forgets dead workers that hold nothing any more, in rq's worker registry too (a killed worker
     stayed listed for 7 minutes, counted by `/admin/queue-stats` and rq-dashboard);
   - moves due retries to their queue when the queue's rq scheduler is gone (its lock missing, or not
     renewed for 10 s). rq lets a dead scheduler's lock linger 61 s and lets a live worker take it
     over only at its next maintenance run (every 10 minutes), so a retry scheduled on a machine that
     died waited up to ten minutes.
   It returns the ids it left to end and counts what it did in `inkq:recovery:stats`.

Recovery time = liveness TTL (5 s) + at most one sweep interval (1 s), then a free worker's BLMOVE picks
the job at once. Running the sweep on several boxes at once is safe: it is one script, so each dead
execution is handled exactly once.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from rq.utils import now, utcformat

from .. import ending
from ..core import blobs, changes, logs, metrics
from ..core.errors import CRASH_FAILURE
from ..core.keys import ENDING_KEY, TICK_KEY
from ..core.queues import QUEUE_NAMES

log = logging.getLogger("inkq.recovery")

LIVENESS_EVERY_S = 1.0
SWEEP_EVERY_S = 1.0
# rq's scheduler renews its per-queue lock to 61 s every second; one not renewed for 10 s is dead.
SCHEDULER_STALE_MS = 51_000
FAILURE_TTL_S = 604800  # a swept job's record lives this long without a failure TTL of its own


# Shared by both scripts: move a claims list's still-queued ids into `back`, and put `back` at a queue's head.
_CLAIMS = """
local function take_back_claims(ckey, back)
  local n = 0
  for _, job_id in ipairs(redis.call('LRANGE', ckey, 0, -1)) do
    local jkey = 'rq:job:' .. job_id
    if redis.call('HGET', jkey, 'status') == 'queued' then
      table.insert(back, {job_id, redis.call('HGET', jkey, 'enqueued_at') or ''})
      n = n + 1
    end
  end
  redis.call('DEL', ckey)
  return n
end

local function requeue_at_head(qkey, ids)
  -- ids: {{id, enqueued_at}, ...}; the oldest ends up first
  table.sort(ids, function(a, b) return a[2] > b[2] end)
  for _, item in ipairs(ids) do
    redis.call('LPUSH', qkey, item[1])
  end
  if #ids > 0 then redis.call('SADD', 'rq:queues', qkey) end
  return #ids
end
"""

# Run by a worker before each dequeue. KEYS: its claims list, its queue. An id still in its own claims
# here is one it never got: the reply to its BLMOVE was lost with its connection, or the job was deleted.
RELEASE_OWN = _CLAIMS + """
local back = {}
take_back_claims(KEYS[1], back)
return requeue_at_head(KEYS[2], back)
"""

# KEYS: none (the script walks rq's and inkq's keys for the queues given; a single Redis, not a cluster).
# ARGV: now (Unix seconds, and in rq's timestamp format), the ending hash (`ENDING_KEY`), the scheduler lock's
# stale threshold (ms), the change channel (tasks.core.changes), the metrics hash (tasks.core.metrics), the key
# prefixes of an execution's outputs (PNG, SVG) and the blob expiry set (tasks.core.blobs), then the queues.
SWEEP = _CLAIMS + """
local now, now_utc, ending_key = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local stale_lock_ms, changes_channel, metrics_key = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local output_prefixes, expiry_key = {ARGV[7], ARGV[8]}, ARGV[9]
local ended, changed, counts = {}, {}, {requeued = 0, recovered = 0, failed = 0, canceled = 0, released = 0, scheduled = 0}

local function dead(worker)
  return worker and worker ~= '' and redis.call('EXISTS', 'inkq:alive:' .. worker) == 0
end

local function meta_of(jkey)
  local raw = redis.call('HGET', jkey, 'meta')
  if raw then
    local ok, meta = pcall(cjson.decode, raw)
    if ok and type(meta) == 'table' then return meta end
  end
  return {}
end

local function to_end(job_id, word)
  -- the job's end is left to `drain` (tasks/ending.py's one end path), as a durable entry written in
  -- this same step as the removal of its dead execution: no end is lost with the supervisor
  redis.call('HSET', ending_key, job_id, word)
  table.insert(ended, {job_id, word})
  counts[word] = counts[word] + 1
end

local function drop_outputs(job_id, exec_id)
  -- what a dead execution may have stored is never a result (its job runs again, or ends without one):
  -- deleted in the Redis store, due now for the blob sweep in the S3 store
  if exec_id == '' then return end
  for _, prefix in ipairs(output_prefixes) do
    local key = prefix .. job_id .. '/' .. exec_id
    redis.call('DEL', key)
    redis.call('ZADD', expiry_key, 'XX', 0, key)
  end
end

for qi = 10, #ARGV do
  local queue = ARGV[qi]
  local back = {}

  -- 1. executions of dead workers in the started registry
  local members = redis.call('ZRANGE', 'rq:wip:' .. queue, 0, -1)
  for _, member in ipairs(members) do
    local sep = string.find(member, ':', 1, true)
    local job_id = sep and string.sub(member, 1, sep - 1) or member
    local exec_id = sep and string.sub(member, sep + 1) or ''
    local jkey = 'rq:job:' .. job_id
    local ekey = 'rq:execution:' .. member
    local worker = redis.call('HGET', ekey, 'worker_name') or redis.call('HGET', jkey, 'worker_name')
    if worker and redis.call('SISMEMBER', 'inkq:workers:' .. queue, worker) == 1 and dead(worker) then
      redis.call('ZREM', 'rq:wip:' .. queue, member)
      redis.call('DEL', ekey)
      redis.call('ZREM', 'rq:executions:' .. job_id, exec_id)
      redis.call('SREM', 'rq:worker:' .. worker .. ':executions', member)
      local status = redis.call('HGET', jkey, 'status')
      if status ~= 'finished' then drop_outputs(job_id, exec_id) end
      if status == 'queued' or status == 'started' then
        local meta = meta_of(jkey)
        local retries_left = tonumber(redis.call('HGET', jkey, 'retries_left') or '0') or 0
        if meta['canceledAt'] then
          to_end(job_id, 'canceled')
        elseif status == 'queued' then
          -- its job never started: not an attempt
          meta['stage'] = 'queued again: its worker stopped before starting it'
          meta['progress'] = 0
          redis.call('HSET', jkey, 'meta', cjson.encode(meta))
          table.insert(back, {job_id, redis.call('HGET', jkey, 'enqueued_at') or ''})
          table.insert(changed, job_id)
          counts.requeued = counts.requeued + 1
          redis.call('HINCRBY', metrics_key, 'c|' .. queue .. '|recovered', 1)
        elseif retries_left > 0 then
          meta['stage'] = 'queued again: its worker stopped'
          meta['progress'] = 0
          meta['recovered'] = (tonumber(meta['recovered']) or 0) + 1
          redis.call('HSET', jkey, 'status', 'queued', 'retries_left', retries_left - 1, 'meta', cjson.encode(meta))
          table.insert(back, {job_id, redis.call('HGET', jkey, 'enqueued_at') or ''})
          table.insert(changed, job_id)
          counts.recovered = counts.recovered + 1
          redis.call('HINCRBY', metrics_key, 'c|' .. queue .. '|recovered', 1)
        else
          to_end(job_id, 'failed')
        end
      end
    end
  end

  -- 2. claims of dead workers go back; 3. dead workers that hold nothing are forgotten
  for _, worker in ipairs(redis.call('SMEMBERS', 'inkq:workers:' .. queue)) do
    if dead(worker) then
      local released = take_back_claims('inkq:claims:' .. worker, back)
      counts.released = counts.released + released
      if released > 0 then redis.call('HINCRBY', metrics_key, 'c|' .. queue .. '|recovered', released) end
      redis.call('SREM', 'inkq:workers:' .. queue, worker)
      -- and from rq's registry, where a killed worker stayed listed until its TTL (7 minutes)
      redis.call('SREM', 'rq:workers', 'rq:worker:' .. worker)
      redis.call('SREM', 'rq:workers:' .. queue, 'rq:worker:' .. worker)
      redis.call('DEL', 'rq:worker:' .. worker, 'rq:worker:' .. worker .. ':executions')
    end
  end
  requeue_at_head('rq:queue:' .. queue, back)

  -- 4. due retries of a queue whose rq scheduler is gone: its lock is missing or not renewed
  local lock_ms = redis.call('PTTL', 'rq:scheduler-lock:' .. queue)
  if lock_ms == -2 or (lock_ms >= 0 and lock_ms < stale_lock_ms) then
    for _, job_id in ipairs(redis.call('ZRANGEBYSCORE', 'rq:scheduled:' .. queue, 0, now)) do
      local jkey = 'rq:job:' .. job_id
      redis.call('ZREM', 'rq:scheduled:' .. queue, job_id)
      if redis.call('EXISTS', jkey) == 1 then
        redis.call('HSET', jkey, 'status', 'queued', 'enqueued_at', now_utc)
        redis.call('RPUSH', 'rq:queue:' .. queue, job_id)
        redis.call('SADD', 'rq:queues', 'rq:queue:' .. queue)
        counts.scheduled = counts.scheduled + 1
      end
    end
  end
end

for name, n in pairs(counts) do
  if n > 0 then redis.call('HINCRBY', 'inkq:recovery:stats', name, n) end
end
for _, job_id in ipairs(changed) do redis.call('PUBLISH', changes_channel, job_id) end
return cjson.encode({ended = ended, counts = counts})
"""


@dataclass
class SweepResult:
    """What one sweep did."""

    ended: list = field(default_factory=list)  # [(jobId, "failed" | "canceled"), ...]
    counts: dict = field(default_factory=dict)

    @property
    def anything(self) -> bool:
        """Whether the sweep changed anything."""
        return any(self.counts.values())


class Recovery:
    """The sweep, bound to one Redis connection."""

    def __init__(self, redis, queues=QUEUE_NAMES):
        self.redis = redis
        self.queues = list(queues)
        self._sweep = redis.register_script(SWEEP)

    def sweep(self) -> SweepResult:
        """Run the sweep once, now, whatever the tick says."""
        raw = self._sweep(keys=[], args=[
            f"{time.time():.6f}", utcformat(now()), ENDING_KEY, SCHEDULER_STALE_MS, changes.CHANNEL, metrics.KEY,
            blobs.output_key(""), blobs.svg_key(""), blobs.EXPIRY_KEY, *self.queues])
        data = json.loads(raw)
        ended = [tuple(item) for item in (data.get("ended") or [])]
        return SweepResult(ended=ended, counts=data.get("counts") or {})

    def maybe_sweep(self, owner: str) -> SweepResult | None:
        """Sweep if no worker service has swept in the last `SWEEP_EVERY_S`; None if another one did."""
        if not self.redis.set(TICK_KEY, owner, nx=True, px=int(SWEEP_EVERY_S * 1000) - 50):
            return None
        result = self.sweep()
        if result.anything:
            log.warning("recovered jobs of dead workers: %s", {k: v for k, v in result.counts.items() if v})
        return result


def drain(redis) -> int:
    """End the jobs the sweep left in `ENDING_KEY` through the one end path (`tasks/ending.py`); the number
    ended. Run by every worker service's supervisor at each tick: an entry left by a supervisor that died
    after its sweep is ended by the next one (another service, or this one restarted)."""
    if not redis.hlen(ENDING_KEY):
        return 0
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.serializers import JSONSerializer

    done = 0
    for raw_id, raw_word in redis.hgetall(ENDING_KEY).items():
        job_id, word = raw_id.decode(), raw_word.decode()
        try:
            job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
        except NoSuchJobError:
            redis.hdel(ENDING_KEY, job_id)
            continue
        with logs.bound(jobId=job_id, queue=job.origin, userId=job.meta.get("user"),
                        requestId=job.meta.get("requestId")):
            if end_swept(redis, job, word):
                ending.drop_input_now(blobs.store(redis), job_id)
                done += 1
            else:
                redis.hdel(ENDING_KEY, job_id)  # it had ended otherwise, or another drain ended it
    return done


def end_swept(redis, job, word: str) -> bool:
    """End one job of a dead worker as the sweep decided: failed with `CRASH_FAILURE`, or canceled when its
    owner had asked it to stop. Its entry goes in the same transaction as its end."""
    def entry_stands(pipe) -> bool:
        pipe.watch(ENDING_KEY, job.key)
        return bool(pipe.hexists(ENDING_KEY, job.id)) and not ending.ended(pipe, job.id)

    def writes(pipe) -> None:
        ttl = int(job.failure_ttl or FAILURE_TTL_S)
        job.meta["stage"] = word
        if word == "canceled":
            job.meta["canceled"] = True
            status, registry = "stopped", f"rq:canceled:{job.origin}"
        else:
            job.meta["error"] = CRASH_FAILURE
            status, registry = "failed", f"rq:failed:{job.origin}"
        pipe.hset(job.key, mapping={"status": status, "ended_at": utcformat(now()), "meta": job._serialize_meta()})
        pipe.zadd(registry, {job.id: time.time() + ttl})
        if ttl > 0:
            pipe.expire(job.key, ttl)
        pipe.hdel(ENDING_KEY, job.id)
    return ending.finish(redis, ending.Ending(job, word, "sweep"), writes, entry_stands)
