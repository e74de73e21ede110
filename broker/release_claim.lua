-- release_claim.lua: a node hands back a claim fast_take.lua made for it but that it cannot
-- use (the worker's slot went to another call first, the call turned out to be late, or its
-- message is not one the node accepts): the call has not started, so its state goes (the
-- node then claims it as usual, or gives up on it) and the worker's busy count drops.
--
-- KEYS[1] call state      snakepit:call:<call_id>
-- KEYS[2] busy            snakepit:node:<node>:busy
-- ARGV[1] node name       ARGV[2] worker id (the one fast_take.lua counted busy)
-- Returns 1 when the state was this node's claim and is gone, else 0 (state left as it is).
redis.call('HINCRBY', KEYS[2], ARGV[2], -1)
if redis.call('GET', KEYS[1]) ~= 'started:' .. ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
