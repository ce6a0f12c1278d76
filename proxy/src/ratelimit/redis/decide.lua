local t = redis.call('TIME')
local sec, usec = tonumber(t[1]), tonumber(t[2])
local floor, ceil, max = math.floor, math.ceil, math.max
local pack, unpack, byte = struct.pack, struct.unpack, string.byte
local now = sec * 1000 + floor(usec / 1000)
local now_us = sec * 1000000 + usec
local sizes = ARGV[#KEYS + 1]
local out = {}
local writes = {}
-- Each key is read once and written once per call, however many requests of the batch
-- count on it (a limited client's requests share their key): `seen` holds a key's value
-- as the requests decided so far left it (false: absent), `ttls` the expiry of its last
-- write, `dirty` the keys to write back, in first-write order.
local seen, ttls, dirty = {}, {}, {}
local k = 0
for r = 1, #sizes, 2 do
  local n = byte(sizes, r) * 256 + byte(sizes, r + 1)
  local all = true
  for j = 1, n do
    local i = k + j
    local kind, limit, period, burst = unpack('<dddd', ARGV[i])
    local raw = seen[KEYS[i]]
    if raw == nil then
      raw = redis.call('GET', KEYS[i])
      seen[KEYS[i]] = raw
    end
    local a, b, c = nil, 0, 0
    if raw then a, b, c = unpack('<ddd', raw) end
    local ok, remaining, reset, retry, na, nb, nc, ttl
    if kind == 1 then
      local w = floor(now / period)
      local e = now - w * period
      local cur, prev = 0, 0
      if a == w then cur = b; prev = c elseif a == w - 1 then prev = b end
      local weighted = prev * (period - e)
      ok = weighted + (cur + 1) * period <= limit * period
      local counted = cur
      if ok then counted = cur + 1 end
      remaining = max(limit - ceil((weighted + counted * period) / period), 0)
      local to_end = period - e
      if counted > 0 then reset = to_end + period elseif prev > 0 then reset = to_end else reset = 0 end
      if ok then
        retry = 0
      elseif cur < limit and prev > 0 then
        local free = floor((limit - cur - 1) * period / prev)
        retry = max(max(period - free, 0) - e, 1)
      else
        local free = floor((limit - 1) * period / max(cur, 1))
        retry = to_end + max(period - free, 0)
      end
      na = w; nb = cur + 1; nc = prev; ttl = 2 * period
    elseif kind == 2 then
      local interval = max(floor(period * 1000 / limit), 1)
      local tolerance = interval * burst
      local tat = now_us
      if a and a > now_us then tat = a end
      local new_tat = tat + interval
      ok = new_tat - now_us <= tolerance
      if ok then
        remaining = floor((tolerance - (new_tat - now_us)) / interval)
        reset = ceil((new_tat - now_us) / 1000); retry = 0
      else
        remaining = 0
        reset = ceil((tat - now_us) / 1000)
        retry = ceil((new_tat - tolerance - now_us) / 1000)
      end
      na = new_tat; nb = 0; nc = 0; ttl = ceil((new_tat - now_us) / 1000) + 1000
    else
      local w, wend
      if kind == 3 then
        w = floor(now / period); wend = (w + 1) * period
      elseif kind == 4 then
        w = floor(now / 86400000); wend = (w + 1) * 86400000
      else
        local function days_from_civil(y, m, d)
          if m <= 2 then y = y - 1 end
          local era = floor(y / 400)
          local yoe = y - era * 400
          local mp = (m + 9) % 12
          local doy = floor((153 * mp + 2) / 5) + d - 1
          local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
          return era * 146097 + doe - 719468
        end
        local z = floor(now / 86400000) + 719468
        local era = floor(z / 146097)
        local doe = z - era * 146097
        local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
        local y = yoe + era * 400
        local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
        local mp = floor((5 * doy + 2) / 153)
        local m
        if mp < 10 then m = mp + 3 else m = mp - 9 end
        if m <= 2 then y = y + 1 end
        w = y * 12 + m - 1
        local ny, nm = y, m + 1
        if nm > 12 then ny = y + 1; nm = 1 end
        wend = days_from_civil(ny, nm, 1) * 86400000
      end
      local cur = 0
      if a == w then cur = b end
      reset = wend - now
      ok = cur < limit
      remaining = max(limit - cur - 1, 0)
      if ok then retry = 0 else retry = reset end
      na = w; nb = cur + 1; nc = 0; ttl = reset + 1000
    end
    local o = (i - 1) * 4
    if ok then out[o + 1] = 1 else out[o + 1] = 0; all = false end
    out[o + 2] = remaining; out[o + 3] = reset; out[o + 4] = retry
    -- Packed, not formatted: a number passed to redis.call is written with 17 significant
    -- digits (exact for these integers), but formatting costs more than the packing.
    writes[j] = pack('<ddd', na, nb, nc)
    writes[n + j] = max(floor(ttl), 1)
  end
  if all then
    for j = 1, n do
      local key = KEYS[k + j]
      if not ttls[key] then dirty[#dirty + 1] = key end
      seen[key] = writes[j]
      ttls[key] = writes[n + j]
    end
  end
  k = k + n
end
for d = 1, #dirty do
  local key = dirty[d]
  redis.call('SET', key, seen[key], 'PX', ttls[key])
end
return out
