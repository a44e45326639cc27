-- The recovery sweep (tasks/runtime/recovery.py, whose docstring tells what it does and why).
-- KEYS: none (the script walks rq's and inkq's keys for the queues given; a single Redis, not a cluster).
-- ARGV: now (Unix seconds), now (rq's timestamp format), the scheduler lock's stale threshold (ms), the key
-- names (JSON from tasks/core/keys.py: a fixed name as a string, a name built around a job id, execution,
-- worker or queue as its [prefix, suffix]), then the queues.
-- Answer: JSON {ended = {{jobId, 'failed' | 'canceled'}, ...}, counts = {...}}.
-- include: claims
local now, now_utc, stale_lock_ms = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local N = cjson.decode(ARGV[4])
local ended, changed, counts = {}, {}, {requeued = 0, recovered = 0, failed = 0, canceled = 0, released = 0, scheduled = 0}

local function key(name, x)
  return name[1] .. x .. name[2]
end

local function job_key(job_id)
  return key(N.job, job_id)
end

local function dead(worker)
  return worker and worker ~= '' and redis.call('EXISTS', key(N.alive, worker)) == 0
end

local function meta_of(jkey)
  local raw = redis.call('HGET', jkey, 'meta')
  if raw then
    local ok, meta = pcall(cjson.decode, raw)
    if ok and type(meta) == 'table' then return meta end
  end
  return {}
end

local function drop_outputs(job_id, exec_id)
  -- what a dead execution may have stored is never a result (its job runs again, or ends without one):
  -- deleted in the Redis store, due now for the blob sweep in the S3 store
  if exec_id == '' then return end
  for _, name in ipairs({N.output, N.svg}) do
    local okey = key(name, job_id .. '/' .. exec_id)
    redis.call('DEL', okey)
    redis.call('ZADD', N.expiry, 'XX', 0, okey)
  end
end

local function to_end(job_id, word)
  -- the job's end is left to `drain` (tasks/ending.py's one end path), as a durable entry written in
  -- this same step as the removal of its dead execution: no end is lost with the supervisor
  redis.call('HSET', N.ending, job_id, word)
  table.insert(ended, {job_id, word})
  counts[word] = counts[word] + 1
end

for qi = 5, #ARGV do
  local queue = ARGV[qi]
  local back = {}
  local started, qkey = key(N.started, queue), key(N.queue, queue)

  -- 1. executions of dead workers in the started registry
  local members = redis.call('ZRANGE', started, 0, -1)
  for _, member in ipairs(members) do
    local sep = string.find(member, ':', 1, true)
    local job_id = sep and string.sub(member, 1, sep - 1) or member
    local exec_id = sep and string.sub(member, sep + 1) or ''
    local jkey = job_key(job_id)
    local ekey = key(N.execution, member)
    local worker = redis.call('HGET', ekey, 'worker_name') or redis.call('HGET', jkey, 'worker_name')
    if worker and redis.call('SISMEMBER', key(N.workers, queue), worker) == 1 and dead(worker) then
      redis.call('ZREM', started, member)
      redis.call('DEL', ekey)
      redis.call('ZREM', key(N.executions, job_id), exec_id)
      redis.call('SREM', key(N.worker_executions, worker), member)
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
          redis.call('HINCRBY', N.metrics, 'c|' .. queue .. '|recovered', 1)
        elseif retries_left > 0 then
          meta['stage'] = 'queued again: its worker stopped'
          meta['progress'] = 0
          meta['recovered'] = (tonumber(meta['recovered']) or 0) + 1
          redis.call('HSET', jkey, 'status', 'queued', 'retries_left', retries_left - 1, 'meta', cjson.encode(meta))
          table.insert(back, {job_id, redis.call('HGET', jkey, 'enqueued_at') or ''})
          table.insert(changed, job_id)
          counts.recovered = counts.recovered + 1
          redis.call('HINCRBY', N.metrics, 'c|' .. queue .. '|recovered', 1)
        else
          to_end(job_id, 'failed')
        end
      end
    end
  end

  -- 2. claims of dead workers go back; 3. dead workers that hold nothing are forgotten
  for _, worker in ipairs(redis.call('SMEMBERS', key(N.workers, queue))) do
    if dead(worker) then
      local released = take_back_claims(key(N.claims, worker), back, job_key)
      counts.released = counts.released + released
      if released > 0 then redis.call('HINCRBY', N.metrics, 'c|' .. queue .. '|recovered', released) end
      redis.call('SREM', key(N.workers, queue), worker)
      -- and from rq's registry, where a killed worker stayed listed until its TTL (7 minutes)
      local rq_worker = key(N.rq_worker, worker)
      redis.call('SREM', N.rq_workers, rq_worker)
      redis.call('SREM', key(N.rq_queue_workers, queue), rq_worker)
      redis.call('DEL', rq_worker, key(N.worker_executions, worker))
    end
  end
  requeue_at_head(qkey, back, N.rq_queues)

  -- 4. due retries of a queue whose rq scheduler is gone: its lock is missing or not renewed
  local lock_ms = redis.call('PTTL', key(N.scheduler_lock, queue))
  if lock_ms == -2 or (lock_ms >= 0 and lock_ms < stale_lock_ms) then
    local scheduled = key(N.scheduled, queue)
    for _, job_id in ipairs(redis.call('ZRANGEBYSCORE', scheduled, 0, now)) do
      local jkey = job_key(job_id)
      redis.call('ZREM', scheduled, job_id)
      if redis.call('EXISTS', jkey) == 1 then
        redis.call('HSET', jkey, 'status', 'queued', 'enqueued_at', now_utc)
        redis.call('RPUSH', qkey, job_id)
        redis.call('SADD', N.rq_queues, qkey)
        counts.scheduled = counts.scheduled + 1
      end
    end
  end
end

for name, n in pairs(counts) do
  if n > 0 then redis.call('HINCRBY', N.stats, name, n) end
end
for _, job_id in ipairs(changed) do redis.call('PUBLISH', N.channel, job_id) end
return cjson.encode({ended = ended, counts = counts})
