-- circuit_breaker.lua: every state change of one circuit breaker, atomically, on Redis time
-- (TIME), so all callers and nodes on all machines see the same closed/open/half_open state.
--
--   closed    --(failure_threshold CONSECUTIVE failures)-->  open      (a success resets the count)
--   open      --(reset_timeout elapsed, seen by any op)--->  half_open
--   half_open --(a trial call succeeds)------------------->  closed
--   half_open --(a trial call fails)---------------------->  open      (timer restarts)
--
-- Half-open admits at most ARGV[4] trial calls at once. Each trial holds a slot in KEYS[2]
-- (member = token, score = expiry); a slot whose caller never reports (it died) expires after
-- reset_timeout, so a lost caller cannot wedge the breaker in half_open.
--
-- KEYS[1] state hash       snakepit:circuit:<pool>[:<tool>]
--           fields: state, failures (consecutive), opened_at, changed_at (ms, Redis time),
--                   seq (trial tokens), and counters successes, failures_total, rejected,
--                   opened, last_failure_at
-- KEYS[2] trial slots       snakepit:circuit_trials:<pool>[:<tool>]  (zset token -> expiry ms)
-- ARGV[1] op: 'admit'   let a call through? (takes a trial slot when half_open)
--             'check'   like admit but takes no slot, rejects only when open
--             'success' | 'failure'  outcome of an admitted call
--             'release' an admitted call ended with no verdict (frees its trial slot)
--             'peek'    current state   'stats' state plus every field   'reset' back to closed
-- ARGV[2] failure threshold   ARGV[3] reset timeout (ms)   ARGV[4] half-open max calls
-- ARGV[5] trial token from 'admit' ('' when unknown: the oldest trial slot is used)
-- ARGV[6] key ttl (ms): the keys expire when the breaker is left alone that long
-- Returns {state before, state after, verdict, retry in (ms), consecutive failures,
--          trials in flight, [field, value, ...] (only for 'stats')}
--   verdict for admit: '' rejected, '0' admitted (closed), '<token>' admitted as a trial;
--   for check: '' rejected, '0' admitted; for success/failure/release: '1' counted toward the
--   state, '0' stale (a token that is no longer a trial: its outcome changes no state).
local key, trials = KEYS[1], KEYS[2]
local op = ARGV[1]
local threshold = tonumber(ARGV[2])
local reset_ms = tonumber(ARGV[3])
local max_trials = tonumber(ARGV[4])
local token = ARGV[5]
local ttl = tonumber(ARGV[6])

-- Redis time (ms), read once and only when a step needs it (a closed admit does not).
local now_ms = nil
local function now()
  if now_ms == nil then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_ms
end

if op == 'reset' then
  local before = redis.call('HGET', key, 'state') or 'closed'
  redis.call('DEL', key, trials)
  return {before, 'closed', '1', 0, 0, 0}
end

local h = redis.call('HMGET', key, 'state', 'failures', 'opened_at')
local state = h[1] or 'closed'
local failures = tonumber(h[2] or '0')
local opened_at = tonumber(h[3] or '0')
local before = state
local wrote = false

local function to(new)
  state = new
  wrote = true
  redis.call('HSET', key, 'state', new, 'changed_at', now())
  redis.call('DEL', trials)
  if new == 'open' then
    opened_at = now()
    redis.call('HSET', key, 'opened_at', now())
    redis.call('HINCRBY', key, 'opened', 1)
  elseif new == 'closed' then
    failures = 0
    redis.call('HSET', key, 'failures', 0)
  end
end

-- A trial's outcome decides the half-open state only if it still holds its slot.
local function trial_done()
  if token ~= '' then
    return redis.call('ZREM', trials, token) == 1
  end
  redis.call('ZPOPMIN', trials)
  return true
end

if state == 'open' and now() - opened_at >= reset_ms then
  to('half_open')
end
if state == 'half_open' then
  redis.call('ZREMRANGEBYSCORE', trials, '-inf', now())  -- slots of callers that never reported
end

local verdict = '1'
if op == 'admit' or op == 'check' then
  verdict = '0'
  if state == 'open' then
    verdict = ''
  elseif state == 'half_open' and op == 'admit' then
    if redis.call('ZCARD', trials) < max_trials then
      verdict = tostring(redis.call('HINCRBY', key, 'seq', 1))
      redis.call('ZADD', trials, now() + reset_ms, verdict)
      redis.call('PEXPIRE', trials, reset_ms + 1000)
      wrote = true
    else
      verdict = ''
    end
  end
  if verdict == '' then
    redis.call('HINCRBY', key, 'rejected', 1)
    wrote = true
  end
elseif op == 'success' then
  redis.call('HINCRBY', key, 'successes', 1)
  wrote = true
  if state == 'half_open' then
    if trial_done() then to('closed') else verdict = '0' end
  elseif state == 'closed' then
    if failures > 0 then
      failures = 0
      redis.call('HSET', key, 'failures', 0)
    end
  else
    verdict = '0'  -- open: a late success of a call let through before the circuit opened
  end
elseif op == 'failure' then
  redis.call('HINCRBY', key, 'failures_total', 1)
  redis.call('HSET', key, 'last_failure_at', now())
  wrote = true
  if state == 'closed' then
    failures = redis.call('HINCRBY', key, 'failures', 1)
    if failures >= threshold then to('open') end
  elseif state == 'half_open' then
    if trial_done() then to('open') else verdict = '0' end
  else
    verdict = '0'  -- open already: the timer is not pushed back by late failures
  end
elseif op == 'release' then
  if state == 'half_open' then
    if not trial_done() then verdict = '0' end
  end
end

if wrote then
  redis.call('PEXPIRE', key, ttl)
end

local retry_in = 0
if state == 'open' then
  retry_in = opened_at + reset_ms - now()
end
local in_flight = 0
if state == 'half_open' then
  in_flight = redis.call('ZCARD', trials)
end
local reply = {before, state, verdict, retry_in, failures, in_flight}
if op == 'stats' then
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields do
    reply[#reply + 1] = fields[i]
  end
end
return reply
