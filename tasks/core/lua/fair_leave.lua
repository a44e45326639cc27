-- A job leaves its queue's fair order (tasks/core/fairness.py): taken by a worker's BLMOVE ('take': V moves
-- to its tag) or ended while waiting (cancel, deadline, erasure: every end runs it, a no-op for a job not in
-- the order). KEYS: the order, the users' tags, the waiting counts, the state, the job. ARGV: 'take' | 'end'.
-- Answer: 1 if the job was in the order, else 0.
-- include: fair_member
local member = redis.call('HGET', KEYS[5], 'fair')
if not member then return 0 end
redis.call('HDEL', KEYS[5], 'fair')
local tag = redis.call('ZSCORE', KEYS[1], member)
if not tag then return 0 end
redis.call('ZREM', KEYS[1], member)
local _, user = fair_parts(member)
fair_unwait(KEYS[3], KEYS[2], user)
if ARGV[1] == 'take' then
  if tonumber(tag) > tonumber(redis.call('HGET', KEYS[4], 'v') or '0') then redis.call('HSET', KEYS[4], 'v', tag) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tag)
end
return 1
