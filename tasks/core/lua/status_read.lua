-- One script, so a status read is one command: the job hash's few fields, the latest result entry
-- (raw: [[id, [field, value, ...]]]), whether a credit charge is still pending, and the job's place in its
-- queue (fair_place.lua: O(log n) in the queue's length).
-- KEYS: the job, its results, its charge. ARGV: keys.FAIR_PREFIX, rq's started registry prefix.
-- include: fair_place
local job = redis.call('HMGET', KEYS[1], 'status', 'meta', 'origin', 'created_at', 'ended_at', 'fair')
return {job,
        redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1),
        redis.call('EXISTS', KEYS[3]),
        fair_place(job[1], job[6], job[3], ARGV[1], ARGV[2])}
