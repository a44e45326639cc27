-- A job claims an upload (api/uploads.py).
-- KEYS: the upload's record. ARGV: the caller, the job id.
-- Returns {0} unknown or another user's, {1} used by a job, {2, why} refused, {3, closes} claimed now.
if redis.call('HGET', KEYS[1], 'user') ~= ARGV[1] then return {0} end
local refused = redis.call('HGET', KEYS[1], 'refused')
if refused then return {2, refused} end
if redis.call('HSETNX', KEYS[1], 'job', ARGV[2]) == 0 then return {1} end
return {3, redis.call('HGET', KEYS[1], 'closes')}
