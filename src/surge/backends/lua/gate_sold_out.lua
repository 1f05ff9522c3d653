-- only a gate that exists learns it is sold out (a half-made one would break reserve)
-- KEYS[1] the sale's gate
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'remaining', 0) end
return 0
