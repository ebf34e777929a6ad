--! include _presence
-- Stop counting connection ARGV[3]; 1 if it was its member's last.
sweep()
local member = redis.call('HGET', KEYS[3], ARGV[3])
local last = 0
if member then last = remove(ARGV[3], member) end
flush()
return last
