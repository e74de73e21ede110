-- host_tool_sync.lua: a registrant's listener keeps a session's tools alive as long as the
-- session itself (a session that is used keeps its tools; one that expires takes them along).
--
-- KEYS[1] tools of the session   snakepit:host_tools:<sid>
-- KEYS[2] the session            snakepit:session:<sid>
-- Returns 1 while the tools exist, 0 once they are gone (expired or deleted with the session).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local session_ttl = redis.call('PTTL', KEYS[2])
if session_ttl > 0 and redis.call('PTTL', KEYS[1]) < session_ttl then
  redis.call('PEXPIRE', KEYS[1], session_ttl)
end
return 1
