-- Settles admitted requests, any number in one call: gives back the tokens
-- each reserved but did not use (a negative count charges what it used
-- beyond the reservation) and releases its parallel lease. Items are
-- applied in order, each exactly as if it were settled alone.
--
-- KEYS[i]: the counter of item i.
-- Four values per item: kind ('r' rate, 'p' parallel), and
--   for 'r': interval_us, units to give back, -;  for 'p': -, -, lease id.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
for i = 1, #KEYS do
  local base = (i - 1) * 4
  if ARGV[base + 1] == 'r' then
    local interval = tonumber(ARGV[base + 2])
    local units = tonumber(ARGV[base + 3])
    local tat = now
    local stored = redis.call('GET', KEYS[i])
    if stored then
      tat = math.max(tonumber(stored), now)
    end
    tat = tat - units * interval
    if tat > now then
      redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
    else
      -- Nothing owed: never credit beyond the initial state.
      redis.call('DEL', KEYS[i])
    end
  else
    redis.call('ZREM', KEYS[i], ARGV[base + 4])
  end
end
return 1
