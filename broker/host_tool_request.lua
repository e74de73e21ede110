-- host_tool_request.lua: a node hands a host-tool call to the process that registered the
-- tool, only while that process holds its lease (a dead registrant fails the call at once).
--
-- KEYS[1] registrant lease     snakepit:host_registrant:<id>
-- KEYS[2] its request list     snakepit:host_registrant:<id>:requests
-- ARGV[1] the request (see snakepit_tasks/host_tools/wire.py)
-- ARGV[2] ttl of the request list (ms)
-- Returns 1 when queued, 0 when the registrant is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
