-- A capped sorted set: the score is when the member leaves (ms; a huge number: never).
-- ARGV: member, limit, now (ms), leaves (ms).  1 if the member is in the set afterwards.
local now = tonumber(ARGV[3])
local leaves = tonumber(ARGV[4])
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
if current and tonumber(current) > now then
  if leaves > tonumber(current) then redis.call('ZADD', KEYS[1], leaves, ARGV[1]) end
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('ZADD', KEYS[1], leaves, ARGV[1])
return 1
