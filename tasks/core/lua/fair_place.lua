-- Shared by the status read (status_read.lua, lease_open.lua) and the enqueue (fair_enqueue.lua): where a
-- job stands, read in O(log n) whatever the queue's length (tasks/core/fairness.py, `Place`).
-- `status`, `member`, `origin`: the job hash's fields; `fair_prefix`: keys.FAIR_PREFIX; `wip_prefix`:
-- rq's started registry without the queue (keys.started_key('')).
-- Answer: false for a job neither queued nor started (nothing more is read), else
-- {position or false, the queue's p50 run time (string) or false, its live slots (string) or false,
-- the jobs running in it}. The position is 1 + the member's rank in the order; false when the job is
-- not in it (waiting for a retry, queued again by rq or recovery, being taken).
local function fair_place(status, member, origin, fair_prefix, wip_prefix)
  if not origin or (status ~= 'queued' and status ~= 'started') then return false end
  local base = fair_prefix .. origin
  local position = false
  if status == 'queued' and member then
    local rank = redis.call('ZRANK', base, member)
    if rank then position = rank + 1 end
  end
  return {position, redis.call('HGET', base .. ':state', 'run_s') or false,
          redis.call('GET', base .. ':slots') or false, redis.call('ZCARD', wip_prefix .. origin)}
end
