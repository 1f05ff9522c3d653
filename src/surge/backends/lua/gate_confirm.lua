-- orders learned, only by a gate that exists (else a keys hash would live on without expiry)
-- KEYS[1] the sale's gate, KEYS[2] its keys; ARGV: field, entry, field, entry, ...
-- A key already returned (its order cancelled before the gate learned it) stays returned.
if redis.call('EXISTS', KEYS[1]) == 1 then
  for i = 1, #ARGV, 2 do
    local prior = redis.call('HGET', KEYS[2], ARGV[i])
    if not prior or string.sub(prior, 1, 1) ~= 'r' then
      redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    end
  end
end
return 0
