-- Run by a worker before each dequeue (tasks/runtime/worker.py). An id still in its own claims here is one
-- it never got: the reply to its BLMOVE was lost with its connection, or the job was deleted.
-- KEYS: its claims list, its queue. ARGV: a job's hash prefix, rq's set of queues (tasks/core/keys.py).
-- Answer: the number of ids put back at the queue's head.
-- include: claims
local back = {}
take_back_claims(KEYS[1], back, function(job_id) return ARGV[1] .. job_id end)
return requeue_at_head(KEYS[2], back, ARGV[2])
