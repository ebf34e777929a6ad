--! include _presence
-- Count connection ARGV[3] of member ARGV[4] (data ARGV[5]); 1 if the member's first.
sweep()
local first = add(ARGV[3], ARGV[4], ARGV[5])
keep(node_of(ARGV[3]))
flush()
return first
