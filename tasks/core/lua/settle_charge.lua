-- The one rule of settling: the charge is read and deleted at once (GETDEL), so a job is settled once;
-- a refund adds its cost back to the user's balance. Answers the cost, or -1 when already settled or
-- never charged. Shared by settle.lua, settle_unqueued.lua and the recovery sweep's script
-- (tasks/runtime/recovery.py joins it as `credits.SETTLE_FN`).
local function settle_charge(charge_key, balance_prefix, refund)
  local raw = redis.call('GETDEL', charge_key)
  if not raw then return -1 end
  local user_and_cost = cjson.decode(raw)
  if refund then
    redis.call('INCRBY', balance_prefix .. user_and_cost[1], user_and_cost[2])
  end
  return tonumber(user_and_cost[2])
end
