-- Refund an admitted job that has no record, and forget it (tasks/core/credits.py).
-- KEYS: the job's record, its admitting mark, its charge, the user's in-flight set.
-- ARGV: the balance prefix, the job id, '1' to wait for a job still being admitted.
-- include: settle_charge
if redis.call('EXISTS', KEYS[1]) == 1 then return -2 end
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[4], ARGV[2])
return settle_charge(KEYS[3], ARGV[1], true)
