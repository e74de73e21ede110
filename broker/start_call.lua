-- start_call.lua: a node is about to run a call on one of its workers. Atomically:
--   1. session affinity: bind an unbound session to this worker (first writer wins,
--      quota enforced), or refresh a bound one; report where the session lives;
--   2. claim the call ("started"), unless a caller already gave up on it ("timed_out"),
--      so a call that timed out in the queue never runs later;
--   3. count the worker busy.
--
-- KEYS[1] call state        snakepit:call:<call_id>
--                           ('taken:<node>' waiting for a slot | 'started:<node>'
--                            | 'done:<node>' ran to its end, outcome sent | 'timed_out')
-- KEYS[2] session           snakepit:session:<sid>      (ignored when ARGV[7] == '')
-- KEYS[3] session index     snakepit:sessions            (zset sid -> last use)
-- KEYS[4] busy              snakepit:node:<node>:busy    (hash worker -> calls in flight)
-- ARGV[1] worker id         ARGV[2] node name           ARGV[3] pool
-- ARGV[4] now (s, float)    ARGV[5] session ttl (s)     ARGV[6] max sessions
-- ARGV[7] session id        ARGV[8] bind ('1': bind if unbound; '0': hint fallback)
-- ARGV[9] call state ttl (ms)
-- ARGV[10] '1' when the tool is idempotent (a call that already started may run again)
-- ARGV[11] takeover: a node name; if the call was started by that (dead) node, start it
--          here anyway (the caller of this script checked the node is gone). '' otherwise.
-- Returns {status, bound worker, bound node, new session ('1'/'0'), started by}
--   status: 'ok' | 'moved' (session lives on another worker) | 'timed_out' | 'quota'
--           | 'duplicate' (started before by the node in the 5th element: a copy)
--           | 'done' (a copy of a call that the node in the 5th element finished)
local worker, node, pool = ARGV[1], ARGV[2], ARGV[3]
local now, ttl, max = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local sid, bind = ARGV[7], ARGV[8]
local bound, bound_node, new = '', '', '0'

if sid ~= '' then
  local current = redis.call('HMGET', KEYS[2], 'worker', 'node')
  if current[1] then
    bound, bound_node = current[1], current[2]
    redis.call('HSET', KEYS[2], 'last_used', now)
    redis.call('EXPIRE', KEYS[2], ttl)
    redis.call('ZADD', KEYS[3], now, sid)
  elseif bind == '1' then
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - ttl)
    if redis.call('ZCARD', KEYS[3]) >= max then
      return {'quota', '', '', '0', ''}
    end
    redis.call('HSET', KEYS[2], 'worker', worker, 'node', node, 'pool', pool,
               'created', now, 'last_used', now)
    redis.call('EXPIRE', KEYS[2], ttl)
    redis.call('ZADD', KEYS[3], now, sid)
    bound, bound_node, new = worker, node, '1'
  end
  if bind == '1' and bound ~= worker then
    return {'moved', bound, bound_node, '0', ''}
  end
end

-- The value names the node, so a janitor can tell which calls died with their node.
local started = 'started:' .. node
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 6) == 'taken:' then
  current = false  -- taken by a node that waited for a slot: not started
  redis.call('DEL', KEYS[1])
end
if not redis.call('SET', KEYS[1], started, 'NX', 'PX', ARGV[9]) then
  local holder = redis.call('GET', KEYS[1])
  if holder == 'timed_out' then
    return {'timed_out', bound, bound_node, new, ''}
  end
  local kind, by = string.match(holder, '^(%a+):(.*)$')  -- 'started:<node>' | 'done:<node>'
  holder = by or ''
  if kind == 'done' then
    -- A copy of a call that ran to its end: its outcome is out, so never run it again.
    return {'done', bound, bound_node, new, holder}
  end
  -- A copy of a call that started before: run it again only when its node is gone and
  -- the tool is idempotent (the caller of this script decides both).
  if ARGV[10] ~= '1' or ARGV[11] == '' or holder ~= ARGV[11] then
    return {'duplicate', bound, bound_node, new, holder}
  end
  redis.call('SET', KEYS[1], started, 'PX', ARGV[9])
end
redis.call('HINCRBY', KEYS[4], worker, 1)
return {'ok', bound, bound_node, new, ''}
