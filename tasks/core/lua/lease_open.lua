-- Open a stream: read the job as status_read.lua does and take a lease, in one round trip (api/leases.py).
-- KEYS: the job's keys as `status.read` reads them (hash, results, pending charge), the user's leases.
-- ARGV: user id, cap, lease ms, lease id, then `status.read`'s ARGV. Answers -1 when the job is gone or another
-- user's (the two are not told apart), 0 when the user holds the cap, else `status.read`'s reply, the lease taken.
-- include: fair_place
if redis.replicate_commands then redis.replicate_commands() end
local job = redis.call('HMGET', KEYS[1], 'status', 'meta', 'origin', 'created_at', 'ended_at', 'fair')
if not job[2] then return -1 end
local ok, meta = pcall(cjson.decode, job[2])
if not ok or type(meta) ~= 'table' or meta['user'] ~= ARGV[1] then return -1 end
local key, cap, lease_ms, id = KEYS[4], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZCARD', key) >= cap then return 0 end
redis.call('ZADD', key, now + lease_ms, id)
redis.call('PEXPIRE', key, lease_ms)
return {job, redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1), redis.call('EXISTS', KEYS[3]),
        fair_place(job[1], job[6], job[3], ARGV[5], ARGV[6])}
