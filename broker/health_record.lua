-- health_record.lua: a pool's worker crashes in a sliding window, on Redis time (TIME), so
-- every node and caller counts the same window.
--
-- KEYS[1] crash window      snakepit:health:<pool>   (zset '<uid>:<worker id>' -> time ms)
-- ARGV[1] op: 'record' (add one crash, then count) | 'count' | 'stats' (count and list)
-- ARGV[2] window (ms)       ARGV[3] member for 'record' ('<uid>:<worker id>')
-- Returns {crashes in the window, now (ms), [member, time, ...] oldest first (only 'stats')}
-- Crashes older than the window are trimmed on every call; the key expires with the window.
local key, op, window = KEYS[1], ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('(%d', now - window))
if op == 'record' then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, window)
end
local reply = {redis.call('ZCARD', key), now}
if op == 'stats' then
  local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for i = 1, #entries do
    reply[#reply + 1] = entries[i]
  end
end
return reply
