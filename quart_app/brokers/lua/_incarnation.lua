-- Incarnations: see t:{<topic>}:inc in redis.py's docstring.  The scripts that
-- include this touch the stream (KEYS[1]) and its incarnation key (KEYS[2]),
-- which hash alike: the incarnation key is the stream key plus a suffix.
local function incarnation(fresh)
  local inc = redis.call('GET', KEYS[2])
  local exists = redis.call('EXISTS', KEYS[1]) == 1
  if inc and string.sub(inc, 1, 1) == '?' then
    return string.sub(inc, 2), true
  end
  if exists and inc then return inc, false end
  return fresh, true
end
local function mirror_ttl()
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then redis.call('PEXPIRE', KEYS[2], pttl) end
end
