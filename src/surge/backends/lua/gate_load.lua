-- Installs a sale's gate state unless one exists (or ARGV[1] is 1: replace it).
-- KEYS as in gate_reserve.lua; ARGV: replace, remaining, limit, starts_ms, ends_ms,
-- then user, bought pairs.
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'remaining', ARGV[2], 'limit', ARGV[3], 'starts_ms', ARGV[4],
           'ends_ms', ARGV[5])
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
local expires = tonumber(ARGV[5]) + 86400000
redis.call('PEXPIREAT', KEYS[1], expires)
redis.call('PEXPIREAT', KEYS[2], expires)
return 1
