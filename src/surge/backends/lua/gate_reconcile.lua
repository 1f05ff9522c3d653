-- Installs a sale's gate, or brings it in step with a snapshot of the database taken just
-- before this call (surge.sales.reconcile explains why the arithmetic is exact while purchases
-- go on). KEYS as in gate_reserve.lua. ARGV: remaining (the snapshot's), limit, starts_ms,
-- ends_ms, stale_ms, uncertain_ms, then for every order of the sale in the snapshot:
-- user|key, user, order id, quantity, fingerprint, kind ('d' active, 'r' returned: its units
-- are back in the snapshot's remaining, gate_return.lua).
-- A pending key older than stale_ms gives its stock back and becomes uncertain ("u": its
-- commit may still land; a retry of it asks the database), forgotten after uncertain_ms
-- (surge/gate.py).
-- Returns: remaining before (-1: no gate), remaining after, stale reservations dropped.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local before = -1
if redis.call('EXISTS', KEYS[1]) == 1 then
  before = tonumber(redis.call('HGET', KEYS[1], 'remaining') or '0')
end
local remaining = tonumber(ARGV[1])
local stale = tonumber(ARGV[5])
local uncertain = tonumber(ARGV[6])
local stored = {}  -- user|key -> the entry a committed order has
local bought = {}  -- user -> quantity held or reserved
for i = 7, #ARGV, 6 do
  stored[ARGV[i]] = ARGV[i + 5] .. '|' .. ARGV[i + 4] .. '|' .. ARGV[i + 2] .. '|' .. ARGV[i + 3]
  if ARGV[i + 5] == 'd' then
    bought[ARGV[i + 1]] = (bought[ARGV[i + 1]] or 0) + tonumber(ARGV[i + 3])
  end
end
local dropped = 0
local entries = redis.call('HGETALL', KEYS[3])
for j = 1, #entries, 2 do
  local field, value = entries[j], entries[j + 1]
  local want = stored[field]
  if want and string.sub(want, 1, 1) == 'd' and string.sub(value, 1, 1) == 'r' then
    -- returned after the snapshot (a return is never undone): its units are back
    local quantity = tonumber(string.match(value, '^r|[^|]*|[^|]*|([^|]*)')) or 0
    local user = string.match(field, '^(.*)|[^|]*$')
    remaining = remaining + quantity
    bought[user] = (bought[user] or 0) - quantity
    stored[field] = nil
  elseif want then  -- committed by the snapshot: counted in its remaining
    if value ~= want then redis.call('HSET', KEYS[3], field, want) end
    stored[field] = nil
  elseif string.sub(value, 1, 1) == 'r' then
    -- committed and returned after the snapshot: nothing to count either way
  else
    local parts = {}
    for part in string.gmatch(value, '[^|]+') do parts[#parts + 1] = part end
    -- entries written before quantities and times were kept (p|fingerprint|call): one
    -- item, and just stale, so a pending one becomes uncertain rather than forgotten
    local quantity = tonumber(parts[4]) or 1
    local since = tonumber(parts[5]) or (now_ms - stale - 1)
    local user = string.match(field, '^(.*)|[^|]*$')
    local kind = parts[1]
    if kind == 'u' or (kind == 'p' and now_ms - since > stale) then
      if now_ms - since <= uncertain then  -- kept, its stock not counted
        if kind == 'p' then
          redis.call('HSET', KEYS[3], field,
                     'u|' .. parts[2] .. '|' .. (parts[3] or '') .. '|' .. quantity .. '|' .. since)
          dropped = dropped + 1
        end
      else
        redis.call('HDEL', KEYS[3], field)
        if kind == 'p' then dropped = dropped + 1 end
      end
    else  -- pending, or committed after the snapshot: not in its remaining yet
      remaining = remaining - quantity
      bought[user] = (bought[user] or 0) + quantity
    end
  end
end
for field, want in pairs(stored) do  -- orders the gate did not know (it was rebuilt)
  redis.call('HSET', KEYS[3], field, want)
end
if remaining < 0 then remaining = 0 end
redis.call('DEL', KEYS[2])
for user, count in pairs(bought) do
  if count > 0 then redis.call('HSET', KEYS[2], user, count) end
end
redis.call('HSET', KEYS[1], 'remaining', remaining, 'limit', ARGV[2], 'starts_ms', ARGV[3],
           'ends_ms', ARGV[4])
-- the gate outlives its sale by a day, then Redis forgets it
local expires = tonumber(ARGV[4]) + 86400000
redis.call('PEXPIREAT', KEYS[1], expires)
redis.call('PEXPIREAT', KEYS[2], expires)
redis.call('PEXPIREAT', KEYS[3], expires)
return {before, remaining, dropped}
