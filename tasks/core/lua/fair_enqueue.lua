-- A job enters its queue's fair order (tasks/core/fairness.py), in the transaction that queues it.
-- KEYS: the order (zset), the users' last tags (zset), the waiting counts (hash), the state (hash), the job.
-- ARGV: user id, weight, job id, queue, keys.FAIR_PREFIX, rq's started registry prefix.
-- Start-time fair queueing: start = max(V, the user's last tag); tag = start + 1/weight; ties by arrival.
-- Answer: the job's place, as fair_place answers it.
-- include: fair_place
local user, weight = ARGV[1], tonumber(ARGV[2])
if not weight or weight <= 0 then weight = 1 end
local v = tonumber(redis.call('HGET', KEYS[4], 'v') or '0')
local last = tonumber(redis.call('ZSCORE', KEYS[2], user) or '0')
local tag = math.max(v, last) + 1 / weight
local seq = redis.call('HINCRBY', KEYS[4], 'seq', 1)
local member = string.format('%016d', seq) .. ':' .. ARGV[3] .. ':' .. user
redis.call('ZADD', KEYS[1], tag, member)
redis.call('ZADD', KEYS[2], tag, user)
redis.call('HINCRBY', KEYS[3], user, 1)
redis.call('HSET', KEYS[5], 'fair', member)
return fair_place('queued', member, ARGV[4], ARGV[5], ARGV[6])
