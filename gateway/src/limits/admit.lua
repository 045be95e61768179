-- Admits one request against every limit that applies to it, all or none.
-- The twin of `gcra.rs` (same arithmetic, microseconds, Redis's clock).
--
-- KEYS[i]: the counter of check i.
-- ARGV[1]: the request's lease id; ARGV[2]: the lease's lifetime in ms.
-- Then four values per check: kind ('r' rate, 'p' parallel), and
--   for 'r': interval_us, window_us, cost;  for 'p': max, -, -.
-- Returns {1, remaining_1, reset_us_1, ...} or {0, i, retry_us}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local now_ms = math.floor(now / 1000)
local lease = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local new_tats = {}
local out = {1}
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 4
  if ARGV[base + 1] == 'r' then
    local interval = tonumber(ARGV[base + 2])
    local window = tonumber(ARGV[base + 3])
    local cost = tonumber(ARGV[base + 4])
    local tat = now
    local stored = redis.call('GET', KEYS[i])
    if stored then
      tat = math.max(tonumber(stored), now)
    end
    local new_tat = tat + cost * interval
    local allow_at = new_tat - window
    if now < allow_at then
      return {0, i, math.ceil(allow_at - now)}
    end
    new_tats[i] = new_tat
    out[#out + 1] = math.floor((now - allow_at) / interval)
    out[#out + 1] = math.ceil(new_tat - now)
  else
    local max = tonumber(ARGV[base + 2])
    -- Leases of crashed instances lapse here.
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now_ms)
    local held = redis.call('ZCARD', KEYS[i])
    if held >= max then
      return {0, i, 1000000}
    end
    out[#out + 1] = max - held - 1
    out[#out + 1] = 0
  end
end
for i = 1, #KEYS do
  local tat = new_tats[i]
  if tat then
    redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  else
    redis.call('ZADD', KEYS[i], now_ms + ttl_ms, lease)
    redis.call('PEXPIRE', KEYS[i], ttl_ms + 1000)
  end
end
return out
