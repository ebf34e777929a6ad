-- Counted sets (held:{<key>}): a sorted set whose scores are when each member
-- stops counting, in the Redis server's milliseconds, so holders on several hosts
-- agree whatever their clocks.  The key expires with its last member.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function expire_with_last()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', KEYS[1], last[2]) end
end
