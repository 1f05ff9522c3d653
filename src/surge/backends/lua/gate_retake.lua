-- A retry of an uncertain key whose order the database does not have (surge/gate.py): it
-- may buy now, in one atomic step, as a fresh attempt would; if the gate refuses it the
-- key stays uncertain (the first attempt's commit may still land), and the caller learns
-- how long it has been uncertain. KEYS as in gate_reserve.lua. ARGV: user, user|key,
-- quantity, fingerprint, call.
-- Returns outcome ("again": the key is no longer uncertain, decide it afresh), remaining,
-- milliseconds since the key became uncertain.
local meta = redis.call('HMGET', KEYS[1], 'remaining', 'limit', 'starts_ms', 'ends_ms')
if not meta[1] then
  return {'again', 0, 0}
end
local prior = redis.call('HGET', KEYS[3], ARGV[2])
if not prior or string.sub(prior, 1, 1) ~= 'u' then
  return {'again', tonumber(meta[1]), 0}
end
local parts = {}
for part in string.gmatch(prior, '[^|]+') do parts[#parts + 1] = part end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local age = now_ms - (tonumber(parts[5]) or 0)
local remaining = tonumber(meta[1])
local quantity = tonumber(ARGV[3])
if parts[2] ~= ARGV[4] then
  return {'mismatch', remaining, age}
end
if now_ms < tonumber(meta[3]) or now_ms >= tonumber(meta[4]) then
  return {'not_live', remaining, age}
end
if remaining < quantity then
  return {'sold_out', remaining, age}
end
local bought = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if bought + quantity > tonumber(meta[2]) then
  return {'limit', remaining, age}
end
remaining = tonumber(redis.call('HINCRBY', KEYS[1], 'remaining', -quantity))
redis.call('HINCRBY', KEYS[2], ARGV[1], quantity)
redis.call('HSET', KEYS[3], ARGV[2],
           'p|' .. ARGV[4] .. '|' .. ARGV[5] .. '|' .. quantity .. '|' .. now_ms)
return {'ok', remaining, 0}
