-- A committed order was cancelled or expired (the database says so first): its units go
-- back on sale, once. KEYS as in gate_reserve.lua. ARGV: user, user|key, order id,
-- quantity, fingerprint. The key stays, as returned ("r|fingerprint|order|quantity"): it
-- replays its order and holds no stock. Only a key whose units the gate counted (pending
-- or done) gives them back; an uncertain one, an unknown one or a returned one changes
-- no count, so a repeated call is harmless.
-- Returns the remaining stock (-1: no gate; the next reconciliation installs it).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local prior = redis.call('HGET', KEYS[3], ARGV[2])
local kind = prior and string.sub(prior, 1, 1)
redis.call('HSET', KEYS[3], ARGV[2], 'r|' .. ARGV[5] .. '|' .. ARGV[3] .. '|' .. ARGV[4])
local ends = tonumber(redis.call('HGET', KEYS[1], 'ends_ms') or '0')
redis.call('PEXPIREAT', KEYS[3], ends + 86400000)  -- as every other write of the gate
if kind == 'p' or kind == 'd' then
  local quantity = tonumber(ARGV[4])
  local left = redis.call('HINCRBY', KEYS[2], ARGV[1], -quantity)
  if left <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[1])
  end
  return redis.call('HINCRBY', KEYS[1], 'remaining', quantity)
end
return tonumber(redis.call('HGET', KEYS[1], 'remaining'))
