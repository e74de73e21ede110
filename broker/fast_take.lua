-- fast_take.lua: runs right behind a fast-lane consumer's BLMOVE, in the same round trip, and
-- claims the call it took when that needs nothing the node must decide first. Atomically:
--   1. the message in the consumer's landing list (what its BLMOVE moved there: one at
--      most, its crew's leader takes one at a time) goes on to the node's processing list,
--      where the janitor recovers it if the node dies;
--   2. a plain call (no unbound session to bind, nothing required of the host, not a
--      session clean-up, for this pool) is claimed for the first worker it may run on of
--      those the node named (its pinned worker, if any), exactly as start_call.lua claims
--      it; any other message is left for the node to claim itself (status 'skip').
-- The node then takes that worker's slot; if it cannot (another thread was quicker), or the
-- call turns out to be late, it hands the claim back (release_claim.lua) and claims as usual.
--
-- include: start_call
-- KEYS[1] the consumer's landing list   snakepit:fast:node:<node>:landing:<crew>
-- KEYS[2] the node's processing list    snakepit:fast:node:<node>:processing
-- KEYS[3] session index                 snakepit:sessions
-- KEYS[4] busy                          snakepit:node:<node>:busy
-- KEYS[5] the consumer's clock          snakepit:fast:node:<node>:landing:<crew>:clock
--                                       (Redis's clock when the BLMOVE began: fast_clock.lua)
-- ARGV[1] node name    ARGV[2] pool
-- ARGV[3] the node's clock when it sent the BLMOVE (s, float): the claim's "now" is that,
--         plus for a session's call how long the BLMOVE waited (by Redis's clock)
-- ARGV[4] session ttl (s)    ARGV[5] max sessions
-- ARGV[6] call state ttl margin (ms, added to the time left before the call's deadline)
-- ARGV[7] call state key prefix (snakepit:call:)    ARGV[8] session key prefix
-- ARGV[9] the longest message looked into (bytes; a longer one is left to the node)
-- ARGV[10] the clean-up command's name (left to the node)
-- ARGV[11] this take's mark: KEYS[5] is its clock only when it carries this mark
-- ARGV[12..] ids of the node's ready workers, preferred first (those with a free slot when
--           the BLMOVE was sent come first)
-- Returns {status, the message (or false), worker claimed for ('' unless 'ok'), and with 'ok'
--          the call's id}
--   status: 'none' (nothing taken) | 'ok' (claimed, as start_call's 'ok', for an existing or
--           no session) | 'skip' (the node claims it: a start_call status other than 'ok',
--           or a message this script does not look into)
-- One at a time, oldest first: a message left here by a take whose script never ran (its
-- connection broke) goes on with the next take.
local raw = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
if not raw then
  return {'none', false, ''}
end
if #raw > tonumber(ARGV[9]) then
  return {'skip', raw, ''}
end
local ok, message = pcall(cjson.decode, raw)
if not ok or type(message) ~= 'table' or type(message['id']) ~= 'string'
    or message['id'] == '' or type(message['call']) ~= 'table' then
  return {'skip', raw, ''}
end
local call = message['call']
local function field(name, kind)  -- nil when absent or null; false when of another type
  local value = call[name]
  if value == nil or value == cjson.null then return nil end
  if type(value) ~= kind then return false end
  return value
end
local command, pool, sid = field('command', 'string'), field('pool', 'string'), field('session_id', 'string')
local pinned, deadline, requires = field('worker', 'string'), field('deadline', 'number'), call['requires']
local flags = type(call['fallback']) == 'boolean' and type(call['stream']) == 'boolean'
  and type(call['reply']) == 'boolean'
if not command or command == ARGV[10] or (pool ~= nil and pool ~= ARGV[2] and pool ~= '')
    or sid == false or pinned == false or not deadline or not flags
    or (requires ~= nil and requires ~= cjson.null
        and (type(requires) ~= 'table' or next(requires) ~= nil)) then
  return {'skip', raw, ''}
end
sid = sid or ''
local bind = call['fallback'] and '0' or '1'
local session_key = ARGV[8] .. sid
if sid ~= '' and bind == '1' and redis.call('HEXISTS', session_key, 'worker') == 0 then
  return {'skip', raw, ''}  -- binds a session: the node does (and runs its hook)
end
local worker = false
for i = 12, #ARGV do
  if pinned == nil or ARGV[i] == pinned then
    worker = ARGV[i]
    break
  end
end
if not worker then
  return {'skip', raw, ''}  -- its worker is not ready: the node decides
end
local now = tonumber(ARGV[3])
if sid ~= '' then  -- a session's last use: when the call came, not when the wait began
  local mark = redis.call('GET', KEYS[5])
  local began = mark and string.match(mark, '^' .. ARGV[11] .. ':(%d+)$')
  if began then
    local t = redis.call('TIME')
    now = now + math.max(0, t[1] * 1000000 + t[2] - tonumber(began)) / 1000000
  end
end
local ttl = math.floor(math.max(0, deadline - now) * 1000) + tonumber(ARGV[6])
local reply = start_call(
  {ARGV[7] .. message['id'], session_key, KEYS[3], KEYS[4]},
  {worker, ARGV[1], ARGV[2], string.format('%.6f', now), ARGV[4], ARGV[5], sid, bind, ttl,
   '0', ''})
if reply[1] ~= 'ok' then
  return {'skip', raw, ''}
end
return {'ok', raw, worker, message['id']}
