-- The supervisor's heartbeat of one running execution (tasks/runtime/slots.py), fenced by that execution:
-- rq's (`Execution.heartbeat`, `Job.heartbeat`) writes the execution's record and the job's hash whatever
-- became of them, and so made a job erased or ended meanwhile exist again.
-- KEYS: the job, its executions (rq), the execution's record, the queue's started registry.
-- ARGV: the execution id, `<jobId>:<executionId>`, TTL (s), now (Unix s), now (rq's time format).
-- Answer: 1 renewed, 0 refused (the execution no longer owns the job).
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
local ttl, now = tonumber(ARGV[3]), math.floor(tonumber(ARGV[4]))
redis.call('HSET', KEYS[3], 'last_heartbeat', ARGV[4])
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('ZADD', KEYS[4], 'XX', now + ttl, ARGV[2])
redis.call('ZADD', KEYS[2], 'XX', now + ttl + 60, ARGV[1])
redis.call('EXPIRE', KEYS[2], ttl + 60)
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'last_heartbeat', ARGV[5]) end
return 1
