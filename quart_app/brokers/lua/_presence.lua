-- Presence of one topic (see redis_presence.py).  KEYS, all hash-tagged by the topic:
--   [1] members: member -> its connections          [2] data: member -> its join/leave data
--   [3] conns: connection ("<node>/<n>") -> member    [4] nodes: node -> when its connections
--   [5] per-node: node -> its connections                  expire (ms, the server's clock)
-- ARGV[1]: the topic's pub/sub channel (its followers'), ARGV[2]: the TTL (ms).
-- Join and leave are live-only: one notification per script, "!<n>\0" then n times
-- "<event>\0<bytes>\0<data>" (redis_replies.parse_live), never in the stream.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[2])
local events = {}
local function node_of(conn) return string.match(conn, '^(.*)/') or conn end
local function announce(kind, data)
  events[#events + 1] = kind .. '\0' .. #data .. '\0' .. data
end
local function flush()
  if #events > 0 then
    redis.call('SPUBLISH', ARGV[1], '!' .. #events .. '\0' .. table.concat(events))
  end
end
-- Count a connection; 1 if it is its member's first (join).
local function add(conn, member, data)
  if redis.call('HSETNX', KEYS[3], conn, member) == 0 then return 0 end
  redis.call('HINCRBY', KEYS[5], node_of(conn), 1)
  if redis.call('HINCRBY', KEYS[1], member, 1) > 1 then return 0 end
  redis.call('HSET', KEYS[2], member, data)
  announce('join', data)
  return 1
end
-- Stop counting a connection; 1 if it was its member's last (leave).
local function remove(conn, member)
  redis.call('HDEL', KEYS[3], conn)
  local node = node_of(conn)
  if redis.call('HINCRBY', KEYS[5], node, -1) <= 0 then
    redis.call('HDEL', KEYS[5], node)
    redis.call('ZREM', KEYS[4], node)
  end
  if redis.call('HINCRBY', KEYS[1], member, -1) > 0 then return 0 end
  redis.call('HDEL', KEYS[1], member)
  local data = redis.call('HGET', KEYS[2], member)
  redis.call('HDEL', KEYS[2], member)
  if data then announce('leave', data) end
  return 1
end
-- The connections of nodes whose time ran out (a process that died) go.
local function sweep()
  local dead = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
  if #dead == 0 then return 0 end
  local gone = {}
  for _, node in ipairs(dead) do
    gone[node] = true
    redis.call('ZREM', KEYS[4], node)
    redis.call('HDEL', KEYS[5], node)
  end
  local all = redis.call('HGETALL', KEYS[3])
  for i = 1, #all, 2 do
    if gone[node_of(all[i])] then remove(all[i], all[i + 1]) end
  end
  return #dead
end
-- A node that holds connections here counts them TTL more.  The keys live twice
-- as long, so that the sweep of a node that stopped has time to announce its leaves.
local function keep(node)
  if redis.call('HEXISTS', KEYS[5], node) == 1 then
    redis.call('ZADD', KEYS[4], now + ttl, node)
  end
  for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], 2 * ttl) end
end
