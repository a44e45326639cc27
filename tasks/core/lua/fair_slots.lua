-- The slots of a queue's live workers, summed, for the estimate of a wait (tasks/core/fairness.py); run by
-- each worker's liveness beat. KEYS: the queue's workers (set), where the sum goes (string).
-- ARGV: the liveness key prefix, the published slots prefix, the sum's lifetime (ms).
-- Answer: the sum.
local sum = 0
for _, worker in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. worker) == 1 then
    sum = sum + (tonumber(redis.call('GET', ARGV[2] .. worker) or '0') or 0)
  end
end
redis.call('SET', KEYS[2], sum, 'PX', ARGV[3])
return sum
