--! include _presence
-- Every member with its connections, and every member's data (after a sweep).
sweep()
flush()
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
