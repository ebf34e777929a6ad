--! include _incarnation
-- ARGV: maxlen, ttl ms (0: none), a fresh incarnation, n, then n times
-- (data, event, id), then the topic's channel, the first explicit seq (0: none) and
-- whether to notify the followers ('0': a silent put-back of what Redis lost, which
-- live subscribers had already; catch-ups read it from the stream), then the ms to
-- keep the answer of a publish under an idempotency key ('0': none) and the holder
-- the publish is fenced by ('': none).  KEYS[3]: that answer (a retry finds it and
-- appends nothing: 'once:<seq>.<incarnation>'); KEYS[4]: the lease that fences it
-- (held by someone else, lapsed or lost: nothing is written, 'lease').
local n = tonumber(ARGV[4])
local keep = tonumber(ARGV[8 + 3 * n])
local holder = ARGV[9 + 3 * n]
if holder ~= '' and redis.call('GET', KEYS[4]) ~= holder then
  return {'', 'lease'}
end
if keep > 0 then
  local done = redis.call('GET', KEYS[3])
  if done then return {'', 'once:' .. done} end
end
local inc, changed = incarnation(ARGV[3])
-- Explicit seqs (a job's indexes): refused, with nothing written, if the stream
-- already has the first one (fencing: a slow former owner never repeats an index).
-- Refused too, as a hole ('hole:<newest seq>'), if the stream lacks the seqs before
-- it: Redis lost them (restarted empty, or a replica without the last writes took
-- over), and the writer puts them back first.
local want = tonumber(ARGV[6 + 3 * n])
if want > 0 then
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  local newest = 0
  if top[1] then newest = tonumber(string.match(top[1][1], '%-(%d+)$')) end
  if newest >= want then
    return {'', top[1][1]}
  end
  if want > 1 and newest < want - 1 then
    return {'', 'hole:' .. newest}
  end
end
local id
local first
local parts = {}
for k = 0, n - 1 do
  local at = 5 + 3 * k
  local fields = {'d', ARGV[at]}
  if ARGV[at + 1] ~= '' then fields[#fields + 1] = 'e'; fields[#fields + 1] = ARGV[at + 1] end
  if ARGV[at + 2] ~= '' then fields[#fields + 1] = 'i'; fields[#fields + 1] = ARGV[at + 2] end
  local explicit = '0-*'
  if want > 0 then explicit = '0-' .. (want + k) end
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], explicit, unpack(fields))
  if first == nil then first = string.match(id, '%-(%d+)$') end
  local d = ARGV[at]
  parts[#parts + 1] = ARGV[at + 1] .. '\0' .. ARGV[at + 2] .. '\0' .. #d .. '\0' .. d
end
if changed then redis.call('SET', KEYS[2], inc) end
if keep > 0 then
  redis.call('SET', KEYS[3], string.match(id, '%-(%d+)$') .. '.' .. inc, 'PX', keep)
end
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
mirror_ttl()
-- The followers' notification (redis_replies.py), on the topic's channel.
local head = first .. '\0' .. inc .. '\0' .. n .. '\0'
if ARGV[7 + 3 * n] ~= '0' then
  redis.call('SPUBLISH', ARGV[5 + 3 * n], head .. table.concat(parts))
end
return {id, inc}
