-- A worker takes the next job of its queue into its claims list, in one step (tasks/core/fairness.py; the
-- worker's InkqQueue.lmove): the id lands in the claims list atomically, as rq's BLMOVE would put it.
-- KEYS: the queue (rq's list), the worker's claims list, the order, the users' tags, the waiting counts,
-- the state. ARGV: rq's job hash prefix ('rq:job:').
-- 1. The list's head not in the order (pushed by rq itself: a retry, a recovery or dashboard requeue at the
--    head): it is taken, first, as rq would.
-- 2. Else the order's lowest member whose id is still in the list: removed from the list (LREM) and the
--    order, pushed on the claims list; V = its tag. Members whose ids left the list some other way
--    (rq-dashboard's delete, an expiry) are dropped on the way.
-- Answer: the id taken, or false when nothing waits (the worker then blocks in BLMOVE).
-- include: fair_member
local queue, claims, order, users, waiting, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local head = redis.call('LINDEX', queue, 0)
if not head then
  if redis.call('EXISTS', order) == 1 then  -- nothing is queued, so nothing in the order is real
    redis.call('DEL', order, waiting, users)
  end
  return false
end
local member = redis.call('HGET', ARGV[1] .. head, 'fair')
if not member or not redis.call('ZSCORE', order, member) then
  return redis.call('LMOVE', queue, claims, 'LEFT', 'RIGHT')
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
    redis.call('HDEL', ARGV[1] .. id, 'fair')
    return id
  end
end
return false
