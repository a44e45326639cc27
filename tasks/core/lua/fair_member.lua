-- Shared by the fair order's scripts (tasks/core/fairness.py). A member of the order is
-- `<seq, 16 digits>:<jobId>:<userId>` (a user id may hold ':'; the job id never does); the job hash keeps it
-- (field `fair`) and the user's weight (field `fair_w`).
local function fair_parts(member)
  local id, user = string.match(member, '^%d+:([^:]+):(.*)$')
  return id, user
end

-- Enter a job in the order as its user's next turn: tag = max(V, the user's last tag) + 1/weight, ties by
-- arrival. Returns the member.
local function fair_enter(order, users, waiting, state, job_key, job_id, user, weight)
  weight = tonumber(weight)
  if not weight or weight <= 0 then weight = 1 end
  local v = tonumber(redis.call('HGET', state, 'v') or '0')
  local last = tonumber(redis.call('ZSCORE', users, user) or '0')
  local tag = math.max(v, last) + 1 / weight
  local seq = redis.call('HINCRBY', state, 'seq', 1)
  local member = string.format('%016d', seq) .. ':' .. job_id .. ':' .. user
  redis.call('ZADD', order, tag, member)
  redis.call('ZADD', users, tag, user)
  redis.call('HINCRBY', waiting, user, 1)
  redis.call('HSET', job_key, 'fair', member, 'fair_w', weight)
  return member
end

-- One waiting job of `user` fewer in the waiting hash; a user with none leaves it, and leaves the
-- users' tags too (the next job of a user with nothing waiting starts at the virtual time, as a new user's).
local function fair_unwait(waiting_key, users_key, user)
  if not user then return end
  if redis.call('HINCRBY', waiting_key, user, -1) <= 0 then
    redis.call('HDEL', waiting_key, user)
    redis.call('ZREM', users_key, user)
  end
end
