--! include _presence
-- Node ARGV[3]'s connections here are exactly ARGV[4..] (conn, member, data triples):
-- the others leave, the missing ones join.  How many it holds now.
sweep()
local node = ARGV[3]
local wanted = {}
for i = 4, #ARGV, 3 do wanted[ARGV[i]] = true end
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  if node_of(all[i]) == node and not wanted[all[i]] then remove(all[i], all[i + 1]) end
end
for i = 4, #ARGV, 3 do add(ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
keep(node)
flush()
return tonumber(redis.call('HGET', KEYS[5], node) or '0')
