-- orders learned, only by a gate that exists (else a keys hash would live on without expiry)
-- KEYS[1] the sale's gate, KEYS[2] its keys; ARGV: field, entry, field, entry, ...
if redis.call('EXISTS', KEYS[1]) == 1 then
  for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
return 0
