-- The purchase gate, atomically (see surge/gate.py for the outcomes), for a batch of
-- purchase attempts on one sale, decided one after the other in the order given.
-- KEYS[1] {sale:ID}:meta    hash: remaining, limit, starts_ms, ends_ms
-- KEYS[2] {sale:ID}:bought  hash: user -> quantity reserved or bought
-- KEYS[3] {sale:ID}:keys    hash: user|key -> "p|fingerprint|call|quantity|ms" (pending since
--                           ms), "d|fingerprint|order|quantity" (committed) or
--                           "u|fingerprint|call|quantity|ms" (uncertain: gate_reconcile.lua)
--                           or "r|fingerprint|order|quantity" (returned: gate_return.lua)
-- ARGV: call (a token unique to this call), then user, user|key, quantity, fingerprint;
-- then the same four for the next attempt...
-- A pending reservation remembers the call that made it: if the same call runs twice (a
-- client retrying after a lost reply) it answers 'ok' again instead of 'in_flight', and a
-- caller that never heard the answer can give back exactly what the call reserved
-- (gate_release.lua with the token).
-- Returns outcome, remaining, order id ("done"; else 0); then the same for the next attempt...
-- The keys share the hash tag {sale:ID}, so they live on one Redis Cluster slot.
local answers = {}
local call = ARGV[1]
local attempts = (#ARGV - 1) / 4
if redis.call('EXISTS', KEYS[1]) == 0 then
  for i = 1, attempts do
    answers[#answers + 1] = 'unknown'; answers[#answers + 1] = 0; answers[#answers + 1] = 0
  end
  return answers
end
local meta = redis.call('HMGET', KEYS[1], 'remaining', 'limit', 'starts_ms', 'ends_ms')
local remaining = tonumber(meta[1])
local limit = tonumber(meta[2])
local t = redis.call('TIME')  -- the server's clock, not the callers'
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = now_ms >= tonumber(meta[3]) and now_ms < tonumber(meta[4])
local taken = 0
local reserved_now = {}  -- fields this run reserved (the same key twice in one call: in_flight)

local function decide(user, field, quantity, fingerprint)
  local prior = redis.call('HGET', KEYS[3], field)
  if prior then  -- known keys first: a replay is answered whatever the stock, even after the end
    local kind, known, third = string.match(prior, '^(%a)|([^|]*)|([^|]*)')
    if known ~= fingerprint then
      return 'mismatch', 0
    end
    if kind == 'd' or kind == 'r' then
      return 'done', tonumber(third)
    end
    if kind == 'u' then
      return 'uncertain', 0
    end
    if kind == 'p' and live and third == call and not reserved_now[field] then
      return 'ok', 0  -- this very call, run again: reserved once, by the first run
    end
    return 'in_flight', 0
  end
  if not live then
    return 'not_live', 0
  end
  if remaining < quantity then
    return 'sold_out', 0
  end
  local bought = tonumber(redis.call('HGET', KEYS[2], user) or '0')
  if bought + quantity > limit then
    return 'limit', 0
  end
  remaining = remaining - quantity
  taken = taken + quantity
  redis.call('HINCRBY', KEYS[2], user, quantity)
  redis.call('HSET', KEYS[3], field, 'p|' .. fingerprint .. '|' .. call .. '|' .. quantity .. '|' .. now_ms)
  reserved_now[field] = true
  return 'ok', 0
end

for i = 0, attempts - 1 do
  local at = 1 + i * 4
  local outcome, order_id = decide(ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3]), ARGV[at + 4])
  answers[#answers + 1] = outcome; answers[#answers + 1] = remaining; answers[#answers + 1] = order_id
end
if taken > 0 then
  redis.call('HINCRBY', KEYS[1], 'remaining', -taken)
  -- the gate outlives its sale by a day, then Redis forgets it
  local expires = tonumber(meta[4]) + 86400000
  redis.call('PEXPIREAT', KEYS[2], expires)
  redis.call('PEXPIREAT', KEYS[3], expires)
end
return answers
