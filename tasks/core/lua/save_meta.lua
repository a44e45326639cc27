-- A job's meta written and announced, fenced by the execution writing it (tasks/core/changes.py).
-- KEYS: the job, its executions (rq). ARGV: the meta, the channel, the job id, the execution id or ''.
-- Answer: 1 written, 0 refused (the execution no longer owns the job, or the job is gone: a meta write
-- never makes a job exist again, after it expired or was erased).
if ARGV[4] ~= '' and not redis.call('ZSCORE', KEYS[2], ARGV[4]) then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'meta', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
