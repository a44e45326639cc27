-- A job's start, written by the execution that runs it and fenced by it (tasks/runtime/slots.py): rq's
-- `prepare_job_execution` writes the job's hash whatever became of the job, and so made a job erased or
-- ended meanwhile exist again.
-- KEYS: the job, its executions (rq). ARGV: the execution id, now (rq's time format), the worker's name.
-- Answer: 1 started, 0 refused (the execution no longer owns the job, the job is gone or has ended).
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'finished' or status == 'failed' or status == 'stopped' or status == 'canceled' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'started', 'started_at', ARGV[2], 'last_heartbeat', ARGV[2],
           'worker_name', ARGV[3])
redis.call('PERSIST', KEYS[1])
return 1
