-- A worker takes the next job of its queue into its claims list, in one step (tasks/core/fairness.py; the
-- worker's InkqQueue.lmove): the id lands in the claims list atomically, as rq's BLMOVE would put it.
-- KEYS: the queue (rq's list), the worker's claims list, the order, the users' tags, the waiting counts,
-- the state. ARGV: rq's job hash prefix ('rq:job:').
-- 1. Ids at the list's head that are not in the order (pushed there by rq or inkq: a retry, a recovery
--    requeue, a dashboard requeue):
--    - one that never started (a worker died or lost its reply between taking it and starting it: its
--      turn was already given), or one with no owner (not a job of the API's): taken at once, as rq would;
--    - one that ran before (a retry, a re-run after a dead worker): it enters the order as its user's next
--      turn, and moves to the list's tail (its place is its tag now), so the next head is looked at.
-- 2. Then the order's lowest member whose id is still in the list: removed from the list (LREM) and the
--    order, pushed on the claims list; V = its tag. Members whose ids left the list some other way
--    (rq-dashboard's delete, an expiry) are dropped on the way.
-- Answer: the id taken, or false when nothing waits (the worker then blocks in BLMOVE).
-- include: fair_member
local queue, claims, order, users, waiting, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
for _ = 1, 100 do
  local head = redis.call('LINDEX', queue, 0)
  if not head then
    if redis.call('EXISTS', order) == 1 then  -- nothing is queued, so nothing in the order is real
      redis.call('DEL', order, waiting, users)
    end
    return false
  end
  local job_key = ARGV[1] .. head
  local job = redis.call('HMGET', job_key, 'fair', 'fair_w', 'started_at', 'meta')
  if job[1] and redis.call('ZSCORE', order, job[1]) then break end  -- the head is in the order
  local user = nil
  if job[3] and job[3] ~= '' and job[4] then  -- rq writes '' until the job first starts
    local ok, meta = pcall(cjson.decode, job[4])
    if ok and type(meta) == 'table' and type(meta['user']) == 'string' then user = meta['user'] end
  end
  if not user then return redis.call('LMOVE', queue, claims, 'LEFT', 'RIGHT') end
  fair_enter(order, users, waiting, state, job_key, head, user, job[2])
  redis.call('LMOVE', queue, queue, 'LEFT', 'RIGHT')
end
for _ = 1, 1000 do
  local popped = redis.call('ZPOPMIN', order)
  if #popped == 0 then break end
  local id, user = fair_parts(popped[1])
  fair_unwait(waiting, users, user)
  if id and redis.call('LREM', queue, 1, id) == 1 then
    redis.call('RPUSH', claims, id)
    local tag = tonumber(popped[2])
    if tag > tonumber(redis.call('HGET', state, 'v') or '0') then redis.call('HSET', state, 'v', popped[2]) end
    redis.call('ZREMRANGEBYSCORE', users, '-inf', tag)
    return id
  end
end
return false
