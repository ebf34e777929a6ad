-- HSET plus its expiry (ARGV[1] ms; 0: none) in one atomic script.  Not a MULTI
-- pipeline: redis-py's asyncio cluster client runs every command queued in a
-- transaction through asyncio.run in a thread of its own, joined from the event
-- loop, and that held the loop for about 10 ms per command at 10,000 streams.
if #ARGV > 1 then redis.call('HSET', KEYS[1], unpack(ARGV, 2)) end
local ms = tonumber(ARGV[1])
if ms > 0 then redis.call('PEXPIRE', KEYS[1], ms) else redis.call('PERSIST', KEYS[1]) end
return 1
