-- Token buckets, several per call (one per waiting request of a loop turn), decided in
-- order, on Redis's clock (TIME): no client clock matters, and every process sees the
-- same buckets. The arithmetic is surge.protect.bucket.LocalBuckets.check's.
-- KEYS[i]: a bucket (hash: tk = tokens, ts = milliseconds of the last update), all of one
-- policy: ARGV[1] rate (tokens a second), ARGV[2] burst, ARGV[3] TTL in ms
-- Returns, per key: allowed (1/0), whole tokens left, milliseconds until the next token.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local out = {}
for _, key in ipairs(KEYS) do
  local state = redis.call('HMGET', key, 'tk', 'ts')
  local tokens = tonumber(state[1])
  local stamp = tonumber(state[2])
  if tokens == nil or stamp == nil then
    tokens = burst
    stamp = now
  end
  local elapsed = now - stamp
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(burst, tokens + elapsed * rate / 1000)
  local allowed, wait = 0, 0
  if tokens >= 1 then
    tokens = tokens - 1
    allowed = 1
  else
    wait = math.ceil((1 - tokens) * 1000 / rate)
  end
  redis.call('HSET', key, 'tk', string.format('%.6f', tokens), 'ts', now)
  redis.call('PEXPIRE', key, ARGV[3])
  out[#out + 1] = allowed
  out[#out + 1] = math.floor(tokens)
  out[#out + 1] = wait
end
return out
