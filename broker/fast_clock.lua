-- fast_clock.lua: sent right before a fast-lane consumer's BLMOVE, in the same round trip:
-- notes Redis's clock as the consumer starts to wait, so that fast_take.lua (right behind the
-- BLMOVE) can tell how long it waited, and so what the node's clock says by then.
--
-- KEYS[1] the consumer's clock   snakepit:fast:node:<node>:landing:<crew>:clock
-- ARGV[1] this take's mark (fast_take.lua trusts the clock only when it carries its own)
-- Returns 1.
local t = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%.0f', t[1] * 1000000 + t[2]),
           'PX', 600000)
return 1
