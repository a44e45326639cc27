-- Settle a job's charge once, refunded or committed (`settle` in tasks/core/credits.py).
-- KEYS: the charge. ARGV: 'refund' or 'commit', the balance prefix.
-- include: settle_charge
return settle_charge(KEYS[1], ARGV[2], ARGV[1] == 'refund')
