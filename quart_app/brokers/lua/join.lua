--! include _incarnation
-- What a process reads when it starts following a topic: the incarnation (as
-- head.lua) and the newest ARGV[3] entries, newest first.
local inc, changed = incarnation(ARGV[1])
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 1 then
  if changed then redis.call('SET', KEYS[2], inc); mirror_ttl() end
elseif changed then
  redis.call('SET', KEYS[2], '?' .. inc, 'PX', ARGV[2])
end
return {inc, newest}
