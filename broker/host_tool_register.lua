-- host_tool_register.lua: record a host tool for a session, unless the name is taken.
-- The caller read the current record first and decided it may be replaced (absent, or left
-- by a registrant whose lease is gone); this writes only if it is still that record.
--
-- KEYS[1] tools of the session   snakepit:host_tools:<sid>   (hash name -> JSON record)
-- ARGV[1] tool name
-- ARGV[2] the new record (JSON)
-- ARGV[3] the record the caller saw ('' when there was none)
-- ARGV[4] ttl (ms): the hash lives at least this long from now
-- Returns 1 when recorded, 0 when the record changed meanwhile (read again).
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') ~= ARGV[3] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[4])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
