-- release_taken.lua: the janitor re-routes a call that a dead node held waiting for a slot.
-- Clear that node's mark, so later sweeps do not see the call as the dead node's again.
--
-- KEYS[1] call state      snakepit:call:<call_id>
-- ARGV[1] the dead node's name
-- Returns 1 when the mark was cleared, 0 when the state is something else.
if redis.call('GET', KEYS[1]) == 'taken:' .. ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
