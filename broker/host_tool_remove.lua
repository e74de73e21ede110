-- host_tool_remove.lua: remove a host tool's record, optionally only if one registrant owns it.
--
-- KEYS[1] tools of the session   snakepit:host_tools:<sid>   (hash name -> JSON record)
-- ARGV[1] tool name
-- ARGV[2] registrant id: remove only a record it owns ('' removes whoever owns it)
-- Returns 1 when a record was removed, 0 otherwise.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then
  return 0
end
if ARGV[2] ~= '' then
  local ok, record = pcall(cjson.decode, current)
  if not ok or type(record) ~= 'table' or record['owner'] ~= ARGV[2] then
    return 0
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
