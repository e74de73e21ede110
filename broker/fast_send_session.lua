-- fast_send_session.lua: send one fast-lane call of a bound session in one round trip, or say
-- why not. The caller names the binding it saw last time (ARGV[8], ARGV[9]) and every key of
-- that worker's state; the script reads them all first, then (only when the session is still
-- bound to that worker) decides as routing._session_route does. Atomically:
--   1. reads: the binding (KEYS[3]), the pool's liveness, the node's lease, the worker's
--      snapshot and busy count, its taint. A binding other than the one named (or a snapshot
--      or busy count that is not what a node writes) ends the script with 'changed': nothing
--      else is done, and the caller routes the call the long way (routing.route);
--   2. the circuit breaker admits the call (fast_admit.lua: circuit_breaker.lua's 'admit' or
--      'check'), unless ARGV[1] is '' (no breaker, or admitted already);
--   3. a node serves the pool (KEYS[5] exists);
--   4. the affinity mode (ARGV[10]) decides, from the worker's state:
--      gone (no lease or no snapshot) or tainted: 'unavailable' unless the mode is 'hint';
--        under 'hint' the session is unbound (KEYS[3] deleted, ARGV[12] out of KEYS[4]) and
--        the call goes to the pool's list as it is (route 'rebound');
--      busy (busy count >= the snapshot's capacity, 1 when it has none) and ARGV[11] is '1'
--        (the call comes from a host tool this worker waits for; only sent for a strict
--        mode): 'reentrant';
--      busy under 'strict_fail_fast': 'busy';
--      busy under 'hint': the pool's list, marked fallback (route 'fallback');
--      otherwise: the node's list, for that worker (route 'worker');
--   5. fewer than pool_max_queue_size calls wait where it goes (both lanes' lists counted);
--   6. the message is pushed: ARGV[14] .. the route's middle part (ARGV[16..18]) .. ARGV[15]
--      (fast_lane.encode_parts: the same bytes fast_lane.encode writes for that call).
-- A step that refuses ends the script; nothing is pushed then, except the word 'refused' to
-- the caller's reply list when ARGV[19] is '1', so a BLPOP the caller sent right behind this
-- script (same round trip) returns at once. The caller raises the error (CircuitOpen,
-- NoWorkersAvailable, SessionWorkerUnavailable, WorkerBusy, QueueFull) and records the
-- admitted call's outcome. The unbinding of step 4 stays done when step 5 refuses (as in
-- routing.route).
--
-- include: fast_admit
-- KEYS[1] circuit state     snakepit:circuit:<pool>[:<tool>]         (see circuit_breaker.lua)
-- KEYS[2] circuit trials    snakepit:circuit_trials:<pool>[:<tool>]
-- KEYS[3] the session       snakepit:session:<sid>
-- KEYS[4] the session index snakepit:sessions
-- KEYS[5] the pool alive    snakepit:pool:<pool>:alive
-- KEYS[6] the caller's reply list   snakepit:reply:<call id>
-- KEYS[7] the node's lease          snakepit:node:<node>
-- KEYS[8] the node's workers        snakepit:node:<node>:workers
-- KEYS[9] the node's busy counts    snakepit:node:<node>:busy
-- KEYS[10] the worker's taint       snakepit:taint:<worker>
-- KEYS[11] the node's fast-lane list  snakepit:fast:node:<node>
-- KEYS[12] the pool's fast-lane list  snakepit:fast:pool:<pool>
-- KEYS[13 .. 12+ARGV[13]] the node's Celery queue lists (kombu: one per priority)
-- KEYS[13+ARGV[13] ..] the pool's Celery queue lists
-- ARGV[1] breaker op: 'admit' | 'check' | '' (skip step 2)
-- ARGV[2..6] circuit_breaker.lua's ARGV[2..6] (threshold, reset ms, half-open max calls,
--            token, key ttl ms)
-- ARGV[7] pool_max_queue_size
-- ARGV[8] the worker the session is expected to be bound to
-- ARGV[9] that worker's node
-- ARGV[10] the call's affinity mode: 'hint' | 'strict_queue' | 'strict_fail_fast'
-- ARGV[11] '1' when the call comes from a host tool of this session the worker waits for
-- ARGV[12] the session id (its member in KEYS[4])
-- ARGV[13] how many of KEYS are the node's Celery queue lists
-- ARGV[14] the message up to its worker field, ARGV[15] the message after its fallback field
-- ARGV[16] the middle for route 'worker', ARGV[17] for 'fallback', ARGV[18] for 'rebound'
-- ARGV[19] '1' when a BLPOP of KEYS[6] follows (a refusal is then pushed there), else '0'
-- ARGV[20] how long a refusal stays in KEYS[6] (ms)
-- Returns {status, calls waiting before this one, the breaker's reply ({} without step 2),
--          route, why}
--   status: 'sent' | 'changed' | 'open' | 'gone' (no node serves the pool) | 'unavailable' |
--           'reentrant' | 'busy' | 'full'
--   route: 'worker' | 'fallback' | 'rebound' | '' (none chosen)
--   why: 'gone' | 'tainted' when the worker is unavailable, else ''
-- For 'changed', the binding found instead: {'changed', 0, {}, worker or '', node or ''}.
local function refuse(status, waiting, breaker, route, why)
  if ARGV[19] == '1' then
    redis.call('RPUSH', KEYS[6], 'refused')
    redis.call('PEXPIRE', KEYS[6], ARGV[20])
  end
  return {status, waiting, breaker, route, why}
end

-- 1. reads
local bound = redis.call('HMGET', KEYS[3], 'worker', 'node')
if bound[1] ~= ARGV[8] or bound[2] ~= ARGV[9] then
  return refuse('changed', 0, {}, bound[1] or '', bound[2] or '')
end
local pool_alive = redis.call('EXISTS', KEYS[5]) == 1
local leased = redis.call('EXISTS', KEYS[7]) == 1
local snapshot = redis.call('HGET', KEYS[8], ARGV[8])
local busy_count = tonumber(redis.call('HGET', KEYS[9], ARGV[8]) or '0')
local tainted = redis.call('EXISTS', KEYS[10]) == 1
local capacity = 1
if snapshot then
  local ok, info = pcall(cjson.decode, snapshot)
  capacity = ok and type(info) == 'table' and (info.capacity == nil and 1
                                                or tonumber(info.capacity))
end
if not capacity or busy_count == nil then  -- state routing.route refuses: it says how
  return refuse('changed', 0, {}, bound[1], bound[2])
end

-- 2. the breaker
local breaker = fast_admit(KEYS, ARGV)
if breaker[3] == '' then
  return refuse('open', 0, breaker, '', '')
end

-- 3. the pool
if not pool_alive then
  return refuse('gone', 0, breaker, '', '')
end

-- 4. the affinity mode
local mode = ARGV[10]
local gone = not leased or not snapshot
local route, why = 'worker', ''
if gone or tainted then
  why = gone and 'gone' or 'tainted'
  if mode ~= 'hint' then
    return refuse('unavailable', 0, breaker, '', why)
  end
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[12])
  route = 'rebound'
else
  local busy = busy_count >= capacity
  if busy and ARGV[11] == '1' then
    return refuse('reentrant', 0, breaker, '', '')
  end
  if busy and mode == 'strict_fail_fast' then
    return refuse('busy', 0, breaker, '', '')
  end
  if busy and mode == 'hint' then
    route = 'fallback'
  end
end

-- 5. room where it goes
local node_lists = tonumber(ARGV[13])
local target, first, last = KEYS[11], 13, 12 + node_lists
if route ~= 'worker' then
  target, first, last = KEYS[12], 13 + node_lists, #KEYS
end
local waiting = redis.call('LLEN', target)
for i = first, last do
  waiting = waiting + redis.call('LLEN', KEYS[i])
end
if waiting >= tonumber(ARGV[7]) then
  return refuse('full', waiting, breaker, route, why)
end

-- 6. the push
local middle = ARGV[16]
if route == 'fallback' then
  middle = ARGV[17]
elseif route == 'rebound' then
  middle = ARGV[18]
end
redis.call('LPUSH', target, ARGV[14] .. middle .. ARGV[15])
return {'sent', waiting, breaker, route, why}
