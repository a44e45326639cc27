-- A job's meta written and announced, fenced by the execution writing it (tasks/core/changes.py).
-- KEYS: the job, its executions (rq). ARGV: the meta, the channel, the job id, the execution id or ''.
-- Answer: 1 written, 0 refused (the execution no longer owns the job).
if ARGV[4] ~= '' and not redis.call('ZSCORE', KEYS[2], ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'meta', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
