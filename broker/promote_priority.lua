-- promote_priority.lua: a node's consumer blocks on a queue's base list only (BLMOVE takes one
-- key); a message sent with a priority lies in one of the queue's sub-lists, which kombu
-- serves only while the base list is empty (priority 0, the base list, comes first). When
-- the base list is empty, move the next message of the first non-empty sub-list to the end
-- of the base list that is popped next, so the blocked consumer (or any node) takes it.
-- Atomic: the message is always in one of the queue's lists.
--
-- KEYS[1] the queue's base list   snakepit.pool.<pool>
-- KEYS[2..] its priority sub-lists, in kombu's order (priority 3, 6, 9)
-- Returns 1 when a message was moved, else 0.
if redis.call('LLEN', KEYS[1]) > 0 then
  return 0
end
for i = 2, #KEYS do
  local message = redis.call('RPOP', KEYS[i])
  if message then
    redis.call('RPUSH', KEYS[1], message)
    return 1
  end
end
return 0
