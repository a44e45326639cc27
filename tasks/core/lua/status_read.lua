-- One script, so a status read is one command: the job hash's few fields, the latest result entry
-- (raw: [[id, [field, value, ...]]]) and whether a credit charge is still pending.
return {redis.call('HMGET', KEYS[1], 'status', 'meta', 'origin', 'created_at', 'ended_at'),
        redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1),
        redis.call('EXISTS', KEYS[3])}
