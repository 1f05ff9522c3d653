-- The purchase gate, atomically (see surge/gate.py for the outcomes).
-- KEYS[1] {sale:ID}:meta    hash: remaining, limit, starts_ms, ends_ms
-- KEYS[2] {sale:ID}:bought  hash: user -> quantity reserved or bought
-- KEYS[3] {sale:ID}:keys    hash: user|key -> "p|fingerprint|" (pending) or "d|fingerprint|order"
-- ARGV: user, user|key, quantity, fingerprint
-- The keys share the hash tag {sale:ID}, so they live on one Redis Cluster slot.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'unknown', 0, 0}
end
local meta = redis.call('HMGET', KEYS[1], 'remaining', 'limit', 'starts_ms', 'ends_ms')
local remaining = tonumber(meta[1])
local t = redis.call('TIME')  -- the server's clock, not the callers'
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now_ms < tonumber(meta[3]) or now_ms >= tonumber(meta[4]) then
  return {'not_live', remaining, 0}
end
local prior = redis.call('HGET', KEYS[3], ARGV[2])
if prior then
  local kind, known, order_id = string.match(prior, '^(%a)|([^|]*)|(.*)$')
  if known ~= ARGV[4] then
    return {'mismatch', remaining, 0}
  end
  if kind == 'd' then
    return {'done', remaining, tonumber(order_id)}
  end
  return {'in_flight', remaining, 0}
end
local quantity = tonumber(ARGV[3])
if remaining < quantity then
  return {'sold_out', remaining, 0}
end
local bought = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if bought + quantity > tonumber(meta[2]) then
  return {'limit', remaining, 0}
end
redis.call('HINCRBY', KEYS[1], 'remaining', -quantity)
redis.call('HINCRBY', KEYS[2], ARGV[1], quantity)
redis.call('HSET', KEYS[3], ARGV[2], 'p|' .. ARGV[4] .. '|')
-- the gate outlives its sale by a day, then Redis forgets it
local expires = tonumber(meta[4]) + 86400000
redis.call('PEXPIREAT', KEYS[2], expires)
redis.call('PEXPIREAT', KEYS[3], expires)
return {'ok', remaining - quantity, 0}
