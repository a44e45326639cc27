-- Learn the provider's limit from the calls it took and its 429s (tasks/quota.py).
-- KEYS: the learned limit (hash: n, since), the taken calls (sorted set of send times).
-- ARGV: now, window (s), TTL of the learned limit (ms), event ("taken" or "429"), send time, member.
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
if ARGV[4] == 'taken' then
  redis.call('zadd', KEYS[2], ARGV[5], ARGV[6])
  redis.call('pexpire', KEYS[2], math.ceil(window * 1000))
end
redis.call('zremrangebyscore', KEYS[2], '-inf', '(' .. string.format('%.6f', now - window))
local count = redis.call('zcard', KEYS[2])
local n = tonumber(redis.call('hget', KEYS[1], 'n'))
local since = redis.call('hget', KEYS[1], 'since')
local learning = n ~= nil and now - tonumber(since) < window
local new
if ARGV[4] == 'taken' then
  if not learning or count <= n then return n or 0 end
  new = count
elseif n == nil then
  new, since = math.max(1, count), ARGV[1]
elseif learning then
  new = math.max(1, n, count)
else
  new = math.max(1, n - 1)
end
redis.call('hset', KEYS[1], 'n', new, 'since', since)
redis.call('pexpire', KEYS[1], ARGV[3])
return new
