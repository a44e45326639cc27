-- Admit a submission (api/admission.py), checks in this order: jobs in flight (the user's plan's `inflight`),
-- the queue's waiting depth (its list plus the ids its workers have claimed and not yet started), credits.
-- KEYS: the user's in-flight set, the queue's list, the user's balance, the job's charge record,
--       the queue's workers set, the job's admitting mark.
-- ARGV: the plan's in-flight limit, QUEUE_MAX_DEPTH, credits on ('1'/'0'), the cost, CREDITS_INITIAL,
--       job id, user id, the charge and in-flight TTL (s), the claims key prefix, the admitting mark's TTL (s).
-- Returns {verdict, balance}: 'ok', 'too_many_jobs', 'queue_full' or 'insufficient_credits'.
local inflight, qkey, bkey, ckey, wkey, akey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local max_inflight, max_depth = tonumber(ARGV[1]), tonumber(ARGV[2])
local use_credits, cost, initial = ARGV[3] == '1', tonumber(ARGV[4]), tonumber(ARGV[5])
local job_id, user_id, ttl, claims_p = ARGV[6], ARGV[7], tonumber(ARGV[8]), ARGV[9]
if redis.call('SCARD', inflight) >= max_inflight then return {'too_many_jobs', 0} end
local depth = redis.call('LLEN', qkey)
for _, worker in ipairs(redis.call('SMEMBERS', wkey)) do
  depth = depth + redis.call('LLEN', claims_p .. worker)  -- taken off the queue, not started yet
end
if depth >= max_depth then return {'queue_full', 0} end
local balance = 0
if use_credits then
  redis.call('SET', bkey, initial, 'NX')
  balance = tonumber(redis.call('GET', bkey))
  if balance < cost then return {'insufficient_credits', balance} end
  balance = redis.call('DECRBY', bkey, cost)
  redis.call('SET', ckey, cjson.encode({user_id, cost}), 'EX', ttl)
end
redis.call('SET', akey, 1, 'EX', ARGV[10])
redis.call('SADD', inflight, job_id)
redis.call('EXPIRE', inflight, ttl)
return {'ok', balance}
