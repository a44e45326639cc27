-- Shared by release_own and sweep (tasks/runtime/recovery.py): move a claims list's still-queued ids into
-- `back`, and put `back` at a queue's head. `job_key(id)` names a job's hash, `queues_key` is rq's set of
-- queues.
local function take_back_claims(ckey, back, job_key)
  local n = 0
  for _, job_id in ipairs(redis.call('LRANGE', ckey, 0, -1)) do
    local jkey = job_key(job_id)
    if redis.call('HGET', jkey, 'status') == 'queued' then
      table.insert(back, {job_id, redis.call('HGET', jkey, 'enqueued_at') or ''})
      n = n + 1
    end
  end
  redis.call('DEL', ckey)
  return n
end

local function requeue_at_head(qkey, ids, queues_key)
  -- ids: {{id, enqueued_at}, ...}; the oldest ends up first
  table.sort(ids, function(a, b) return a[2] > b[2] end)
  for _, item in ipairs(ids) do
    redis.call('LPUSH', qkey, item[1])
  end
  if #ids > 0 then redis.call('SADD', queues_key, qkey) end
  return #ids
end
