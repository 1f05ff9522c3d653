-- Gives a reservation back. KEYS as in gate_reserve.lua; ARGV: user, user|key, quantity,
-- call ('' for any), uncertain ('1' or '0'), fingerprint. Only a pending reservation is
-- released, and only once: a retried release is harmless. With a call token, only a
-- reservation that call made (see gate_reserve.lua). With uncertain = '1' (its commit
-- failed in a way that may have committed it: a lost connection, a deadline) the stock
-- comes back but the key stays, as uncertain: a retry of it asks the database first
-- (surge/gate.py); a key the gate no longer has (Redis restarted meanwhile) is written
-- as uncertain all the same, holding no stock.
local prior = redis.call('HGET', KEYS[3], ARGV[2])
local mine = prior and string.sub(prior, 1, 1) == 'p'
if mine and ARGV[4] ~= '' then
  mine = string.match(prior, '^p|[^|]*|([^|]*)') == ARGV[4]
end
local uncertain = ARGV[5] == '1'
if mine or (uncertain and not prior and redis.call('EXISTS', KEYS[1]) == 1) then
  if uncertain then
    local t = redis.call('TIME')
    local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local call = prior and string.match(prior, '^p|[^|]*|([^|]*)') or '-'
    redis.call('HSET', KEYS[3], ARGV[2],
               'u|' .. ARGV[6] .. '|' .. call .. '|' .. ARGV[3] .. '|' .. now_ms)
    local ends = tonumber(redis.call('HGET', KEYS[1], 'ends_ms') or '0')
    redis.call('PEXPIREAT', KEYS[3], ends + 86400000)  -- as every other write of the gate
  else
    redis.call('HDEL', KEYS[3], ARGV[2])
  end
end
if mine then
  redis.call('HINCRBY', KEYS[1], 'remaining', tonumber(ARGV[3]))
  local left = redis.call('HINCRBY', KEYS[2], ARGV[1], -tonumber(ARGV[3]))
  if left <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[1])
  end
end
return tonumber(redis.call('HGET', KEYS[1], 'remaining') or '0')
