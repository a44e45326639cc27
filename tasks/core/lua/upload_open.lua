-- Open a direct upload (api/uploads.py).
-- KEYS: the user's open uploads, the new upload's record, the blob expiry set, every upload of the user on record.
-- ARGV: now, expires at, the cap, upload id, user, content type, TTL (s), the upload's object key,
--       closes (its form expired, plus the grace), the object key's due time (the later of the two).
-- Returns {1} when created, {0, the oldest open upload's expiry} when the user is at the cap.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, oldest[2]}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('HSET', KEYS[2], 'user', ARGV[5], 'contentType', ARGV[6], 'closes', ARGV[9])
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('ZADD', KEYS[3], ARGV[10], ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[7])
return {1}
