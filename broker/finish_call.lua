-- finish_call.lua: a node records the end of a call, in one atomic step (what a MULTI/EXEC of
-- the same commands did, in one command): the pool's counters, the worker's busy count, the
-- caller's direct reply, the fast lane's processing entry, and for a call that ran its state
-- 'done:<node>' (so a janitor never gives a call that had its outcome another one).
--
-- KEYS[1] pool counters   snakepit:stats:<pool>
-- KEYS[2] busy            snakepit:node:<node>:busy
-- KEYS[3] reply list      snakepit:reply:<call_id>     (used when ARGV[4] is '1')
-- KEYS[4] call state      snakepit:call:<call_id>      (used when ARGV[8] is not '')
-- KEYS[5] a list to remove ARGV[7] from: the fast lane's processing list (when ARGV[7] ~= '')
-- ARGV[1] requests to count    ARGV[2] errors to count    ARGV[3] busy worker ('' none)
-- ARGV[4] '1': push the reply ARGV[5] to KEYS[3], expiring in ARGV[6] s; '0': no reply
-- ARGV[7] the processing entry to remove ('' none)
-- ARGV[8] the call's new state, set only if it has one ('done:<node>'; '' leaves it)
-- Returns 1.
if ARGV[1] ~= '0' then
  redis.call('HINCRBY', KEYS[1], 'requests', ARGV[1])
end
if ARGV[2] ~= '0' then
  redis.call('HINCRBY', KEYS[1], 'errors', ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('HINCRBY', KEYS[2], ARGV[3], -1)
end
if ARGV[4] == '1' then
  redis.call('RPUSH', KEYS[3], ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
if ARGV[7] ~= '' then
  redis.call('LREM', KEYS[5], 1, ARGV[7])
end
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[4], ARGV[8], 'XX', 'KEEPTTL')
end
return 1
