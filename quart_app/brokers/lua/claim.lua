--! include _now
-- Claim an idempotency key (Coordination.claim).  KEYS[1]: the claim's record, a
-- hash: f the request's fingerprint, a the answer so far (JSON; '' none), h who
-- holds it ('' nobody) until u (the server's ms), d '1' once done.
-- ARGV: holder, fingerprint, hold ms, ttl ms.  Reply: {won, fingerprint, answer, done}.
local f, a, h, u, d = unpack(redis.call('HMGET', KEYS[1], 'f', 'a', 'h', 'u', 'd'))
local hold = tonumber(ARGV[3])
if not f then
  redis.call('HSET', KEYS[1], 'f', ARGV[2], 'a', '', 'h', ARGV[1], 'u', now + hold, 'd', '')
  redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[4]), hold))
  return {1, ARGV[2], '', 0}
end
if d == '1' or f ~= ARGV[2] or (h ~= '' and tonumber(u) > now) then
  return {0, f, a, d == '1' and 1 or 0}
end
-- Settled unfinished, or its holder is gone: taken over from the answer so far.
redis.call('HSET', KEYS[1], 'h', ARGV[1], 'u', now + hold)
if redis.call('PTTL', KEYS[1]) < hold then redis.call('PEXPIRE', KEYS[1], hold) end
return {1, f, a, 0}
