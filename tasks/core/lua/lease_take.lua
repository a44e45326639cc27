-- Take or renew one of a user's stream leases (api/leases.py).
if redis.replicate_commands then redis.replicate_commands() end
local key, cap, lease_ms, id, renew = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if not renew and redis.call('ZCARD', key) >= cap then return 0 end
redis.call('ZADD', key, now + lease_ms, id)
redis.call('PEXPIRE', key, lease_ms)
return 1
