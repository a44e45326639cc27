-- A job enters its queue's fair order (tasks/core/fairness.py), in the transaction that queues it.
-- KEYS: the order (zset), the users' last tags (zset), the waiting counts (hash), the state (hash), the job.
-- ARGV: user id, weight, job id, queue, keys.FAIR_PREFIX, rq's started registry prefix.
-- Start-time fair queueing: tag = max(V, the user's last tag) + 1/weight; ties by arrival.
-- Answer: the job's place, as fair_place answers it.
-- include: fair_member
-- include: fair_place
local member = fair_enter(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[3], ARGV[1], ARGV[2])
return fair_place('queued', member, ARGV[4], ARGV[5], ARGV[6])
