-- give_up_call.lua: a caller (or a node seeing a stale message) gives up on a call that
-- waited too long in the queue. Succeeds only if no node has started it, so the call then
-- never runs: exactly one of "timed out" and "ran" happens.
--
-- KEYS[1] call state      snakepit:call:<call_id>
-- KEYS[2] pool counters   snakepit:stats:<pool>
-- ARGV[1] call state ttl (ms)
-- Returns 1 when the call is now timed out (and counted), 0 when it had already started.
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 6) == 'taken:' then
  redis.call('DEL', KEYS[1])  -- a node holds it waiting for a slot: it has not started
end
if redis.call('SET', KEYS[1], 'timed_out', 'NX', 'PX', ARGV[1]) then
  redis.call('HINCRBY', KEYS[2], 'queue_timeouts', 1)
  return 1
end
if redis.call('GET', KEYS[1]) == 'timed_out' then
  return 1
end
return 0
