-- Settle a claim (Coordination.settle): the answer, done or not, and nobody holds
-- it.  KEYS[1]: the record (see claim.lua).  ARGV: holder, answer, done ('1' or ''),
-- ttl ms.  0, with nothing written, if the holder no longer holds it.
if redis.call('HGET', KEYS[1], 'h') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'a', ARGV[2], 'h', '', 'u', 0, 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
