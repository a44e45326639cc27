-- Shared by the fair order's scripts (tasks/core/fairness.py): a member of the order is
-- `<seq, 16 digits>:<jobId>:<userId>` (a user id may hold ':'; the job id never does).
local function fair_parts(member)
  local id, user = string.match(member, '^%d+:([^:]+):(.*)$')
  return id, user
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
