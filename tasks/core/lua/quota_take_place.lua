-- A call to the provider takes a place in the fleet's budget, or learns how long to wait (tasks/quota.py).
-- KEYS: the window's calls, the users' last places, the waiting calls (all sorted sets).
-- ARGV: now, window (s), limit, user, this call's id, the slack of a sleeping waiter (margin + jitter, s),
--   the grace of a turn (s), how late a waiter is stale (s), the poll of a call passed over (s),
--   how long a user's last place is remembered (s).
-- Returns "0" when a place was taken, "<s>" to wait for the window's oldest call to leave it, "-<s>" to try
-- again soon because another user's call has the turn.
local calls, served, waiting = KEYS[1], KEYS[2], KEYS[3]
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local user, me = ARGV[4], ARGV[4] .. ' ' .. ARGV[5]
local slack, grace, stale, poll = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local remember = tonumber(ARGV[10])
local function keep(key, s) redis.call('pexpire', key, math.ceil(s * 1000)) end
redis.call('zremrangebyscore', calls, '-inf', '(' .. string.format('%.6f', now - window))
redis.call('zremrangebyscore', waiting, '-inf', '(' .. string.format('%.6f', now - stale))
redis.call('zremrangebyscore', served, '-inf', '(' .. string.format('%.6f', now - remember))
if redis.call('zcard', calls) >= limit then
  local oldest = tonumber(redis.call('zrange', calls, 0, 0, 'WITHSCORES')[2])
  local wait = math.max(0.05, oldest + window - now)
  redis.call('zadd', waiting, now + wait + slack, me)
  keep(waiting, window + slack + stale)
  return string.format('%.3f', wait)
end
local last = tonumber(redis.call('zscore', served, user) or '0')
for _, other in ipairs(redis.call('zrangebyscore', waiting, '-inf', now + grace)) do
  local who = string.match(other, '^(.*) [^ ]*$')
  if who ~= user and tonumber(redis.call('zscore', served, who) or '0') < last then
    redis.call('zadd', waiting, now + poll, me)
    keep(waiting, window + slack + stale)
    return string.format('-%.3f', poll)
  end
end
redis.call('zrem', waiting, me)
redis.call('zadd', calls, now, me)
keep(calls, window)
redis.call('zadd', served, now, user)
keep(served, remember)
return '0'
