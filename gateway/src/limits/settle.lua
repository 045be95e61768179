-- Settles an admitted request: gives back the tokens it reserved but did
-- not use (a negative count charges what it used beyond the reservation)
-- and releases its parallel lease.
--
-- KEYS[i]: the counter of item i.
-- ARGV[1]: the request's lease id.
-- Then three values per item: kind ('r' rate, 'p' parallel), and
--   for 'r': interval_us, units to give back;  for 'p': -, -.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local lease = ARGV[1]
for i = 1, #KEYS do
  local base = 1 + (i - 1) * 3
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
    redis.call('ZREM', KEYS[i], lease)
  end
end
return 1
