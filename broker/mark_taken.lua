-- mark_taken.lua: a node holds a call while it waits for a free slot. Record that it holds it
-- (so a janitor can re-route the call if this node dies), replacing the mark of another node
-- that held it before (a call the janitor re-routed), but never a started or timed-out state.
--
-- KEYS[1] call state      snakepit:call:<call_id>
-- ARGV[1] node name       ARGV[2] ttl (ms)
-- Returns 1 when marked, 0 when the call already started or timed out.
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 6) ~= 'taken:' then
  return 0
end
redis.call('SET', KEYS[1], 'taken:' .. ARGV[1], 'PX', ARGV[2])
return 1
