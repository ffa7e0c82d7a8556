-- POST the echo body; with KEY_MODE=fresh a new Idempotency-Key per request, with
-- KEY_MODE=fixed the same key every time (replays), else no key.
wrk.method = "POST"
wrk.body = '{"agent_id":"agent_1","phone_number":"+15555550123"}'
wrk.headers["Content-Type"] = "application/json"

local mode = os.getenv("KEY_MODE") or "none"
local prefix = os.getenv("KEY_PREFIX") or "k"
local counter = 0

if mode == "fixed" then
  wrk.headers["Idempotency-Key"] = prefix .. "-replayed"
end

request = function()
  if mode == "fresh" then
    counter = counter + 1
    wrk.headers["Idempotency-Key"] = prefix .. "-" .. counter
  end
  return wrk.format(nil, nil, nil, wrk.body)
end
