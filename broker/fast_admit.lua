-- fast_admit.lua: the circuit breaker step of the fast-lane send scripts (fast_send.lua,
-- fast_send_session.lua), which share its KEYS and ARGV positions: circuit_breaker.lua's
-- 'admit' or 'check' on KEYS[1..2] with ARGV[1..6], or nothing when ARGV[1] is '' (no
-- breaker, or admitted already).
--
-- include: circuit_breaker
-- Returns the breaker's reply ({} when skipped): its third element is '' when it refused.
if ARGV[1] == '' then
  return {}
end
return circuit_breaker({KEYS[1], KEYS[2]}, {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]})
