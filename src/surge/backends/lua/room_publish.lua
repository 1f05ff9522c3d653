-- KEYS[1] the room's number, KEYS[2] its history (a list of finished messages), KEYS[3]
-- the history's size in bytes. ARGV: room, data (JSON), keep, channel, ttl ms, max bytes,
-- the publish command (PUBLISH; SPUBLISH on a cluster, where the channel shares the keys' slot).
-- The history keeps the last `keep` messages, and fewer when they would pass max bytes.
local seq = redis.call('INCR', KEYS[1])
local payload = '{"op":"message","room":"' .. ARGV[1] .. '","seq":' .. seq
  .. ',"data":' .. ARGV[2] .. '}'
local keep = tonumber(ARGV[3])
local cap = tonumber(ARGV[6])
if keep > 0 and #payload <= cap then
  redis.call('RPUSH', KEYS[2], payload)
  local size = redis.call('INCRBY', KEYS[3], #payload)
  local n = redis.call('LLEN', KEYS[2])
  while n > keep or (size > cap and n > 0) do
    local old = redis.call('LPOP', KEYS[2])
    size = redis.call('INCRBY', KEYS[3], -#old)
    n = n - 1
  end
  if size < 0 or n == 0 then
    redis.call('SET', KEYS[3], n == 0 and 0 or #payload)
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call(ARGV[7], ARGV[4], ARGV[1] .. '\n' .. seq .. '\n' .. payload)
return seq
