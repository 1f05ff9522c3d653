-- Installs a sale's gate state unless one exists. KEYS as in gate_reserve.lua;
-- ARGV: remaining, limit, starts_ms, ends_ms, then user, bought pairs.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'remaining', ARGV[1], 'limit', ARGV[2], 'starts_ms', ARGV[3],
           'ends_ms', ARGV[4])
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
local expires = tonumber(ARGV[4]) + 86400000
redis.call('PEXPIREAT', KEYS[1], expires)
redis.call('PEXPIREAT', KEYS[2], expires)
return 1
