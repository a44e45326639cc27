-- Record one run time of a queue and keep the p50 of its last runs (tasks/core/fairness.py).
-- KEYS: the runs list, the state hash. ARGV: seconds, how many runs to keep.
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local runs = redis.call('LRANGE', KEYS[1], 0, -1)
local values = {}
for i, raw in ipairs(runs) do values[i] = tonumber(raw) or 0 end
table.sort(values)
local n = #values
local p50 = n % 2 == 1 and values[(n + 1) / 2] or (values[n / 2] + values[n / 2 + 1]) / 2
redis.call('HSET', KEYS[2], 'run_s', string.format('%.3f', p50))
return n
