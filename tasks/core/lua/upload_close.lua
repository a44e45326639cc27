-- An upload serves no job any more: refused (ARGV[1], why) or used by a job (ARGV[1] empty).
-- KEYS: its record, the user's open uploads, the blob expiry set. ARGV: why, upload id, object key, closes.
-- Its slot is freed, and its key's entry made due at `closes` (never removed: a form may still write it).
if ARGV[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'refused', ARGV[1])
  redis.call('HDEL', KEYS[1], 'job')
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 'XX', ARGV[4], ARGV[3])
return 1
