-- fast_send.lua: send one fast-lane call in one round trip, or say why not. Atomically:
--   1. the circuit breaker admits the call (fast_admit.lua: circuit_breaker.lua's 'admit' or
--      'check'), unless ARGV[1] is '' (no breaker, or admitted already);
--   2. a node serves the destination (KEYS[4] exists);
--   3. fewer than pool_max_queue_size calls wait there (both lanes' lists counted);
--   4. the call is pushed to the destination's fast-lane list.
-- A step that refuses ends the script; nothing is pushed then, except the word 'refused' to
-- the caller's reply list when ARGV[9] is '1', so a BLPOP the caller sent right behind this
-- script (same round trip) returns at once. The caller raises the error (CircuitOpen,
-- NoWorkersAvailable, QueueFull) and records the admitted call's outcome.
--
-- include: fast_admit
-- KEYS[1] circuit state     snakepit:circuit:<pool>[:<tool>]         (see circuit_breaker.lua)
-- KEYS[2] circuit trials    snakepit:circuit_trials:<pool>[:<tool>]
-- KEYS[3] the fast-lane list to push to   snakepit:fast:pool:<pool> | snakepit:fast:node:<node>
-- KEYS[4] what must exist                 snakepit:pool:<pool>:alive | snakepit:node:<node>
-- KEYS[5] the caller's reply list   snakepit:reply:<call id>
-- KEYS[6..] the Celery queue's lists for the same destination (kombu: one per priority)
-- ARGV[1] breaker op: 'admit' | 'check' | '' (skip step 1)
-- ARGV[2..6] circuit_breaker.lua's ARGV[2..6] (threshold, reset ms, half-open max calls,
--            token, key ttl ms)
-- ARGV[7] pool_max_queue_size
-- ARGV[8] the message (see snakepit_tasks/fast_lane.py)
-- ARGV[9] '1' when a BLPOP of KEYS[5] follows (a refusal is then pushed there), else '0'
-- ARGV[10] how long a refusal stays in KEYS[5] (ms)
-- Returns {status, calls waiting before this one, the breaker's reply ({} without step 1)}
--   status: 'sent' | 'open' (the breaker refused) | 'gone' (no node) | 'full'
local function refuse(status, waiting, breaker)
  if ARGV[9] == '1' then
    redis.call('RPUSH', KEYS[5], 'refused')
    redis.call('PEXPIRE', KEYS[5], ARGV[10])
  end
  return {status, waiting, breaker}
end

local breaker = fast_admit(KEYS, ARGV)
if breaker[3] == '' then
  return refuse('open', 0, breaker)
end
if redis.call('EXISTS', KEYS[4]) == 0 then
  return refuse('gone', 0, breaker)
end
local waiting = redis.call('LLEN', KEYS[3])
for i = 6, #KEYS do
  waiting = waiting + redis.call('LLEN', KEYS[i])
end
if waiting >= tonumber(ARGV[7]) then
  return refuse('full', waiting, breaker)
end
redis.call('LPUSH', KEYS[3], ARGV[8])
return {'sent', waiting, breaker}
