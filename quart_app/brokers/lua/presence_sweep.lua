--! include _presence
-- Sweep the nodes whose time ran out; 1 if node ARGV[3] still counts here.
sweep()
flush()
if redis.call('ZSCORE', KEYS[4], ARGV[3]) then return 1 end
return 0
