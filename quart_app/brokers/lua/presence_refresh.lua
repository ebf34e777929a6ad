--! include _presence
-- Node ARGV[3]'s connections count TTL more; how many it holds here.
sweep()
local count = tonumber(redis.call('HGET', KEYS[5], ARGV[3]) or '0')
if count > 0 then keep(ARGV[3]) end
flush()
return count
