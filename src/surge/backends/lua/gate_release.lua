-- Gives a reservation back. KEYS as in gate_reserve.lua; ARGV: user, user|key, quantity
-- [, call]. Only a pending reservation is released, and only once: a retried release is
-- harmless. With `call`, only a reservation that call made (see gate_reserve.lua).
local prior = redis.call('HGET', KEYS[3], ARGV[2])
local mine = prior and string.sub(prior, 1, 1) == 'p'
if mine and ARGV[4] then
  mine = string.match(prior, '^p|[^|]*|([^|]*)') == ARGV[4]
end
if mine then
  redis.call('HDEL', KEYS[3], ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'remaining', tonumber(ARGV[3]))
  -- a user at 0 stays listed: they may hold an uncertain key (surge/gate.py)
  redis.call('HINCRBY', KEYS[2], ARGV[1], -tonumber(ARGV[3]))
end
return tonumber(redis.call('HGET', KEYS[1], 'remaining') or '0')
