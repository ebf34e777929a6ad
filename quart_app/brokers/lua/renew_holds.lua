--! include _now
-- Count members ARGV[2..] for ARGV[1] ms more, whatever the limit.
local until_ms = now + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], until_ms, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
expire_with_last()
return 1
