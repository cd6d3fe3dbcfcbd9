package redisstate

import "github.com/redis/go-redis/v9"

// syncScript is one sync, atomically: it applies this process's batches of
// counts that it has not applied before, publishes its health marks
// (keeping the later end), forgets marks that are over, and returns the
// window's totals and every running mark.
//
// Keys, all under the tag {prefix:name} (one hash slot, for Redis Cluster):
//
//	KEYS[1]     tag:health:v2     mark field -> end (Unix ms)
//	KEYS[2]     tag:procs         process id -> its now at its last sync (Unix ms)
//	KEYS[3]     tag:seqs          process id -> number of the last batch applied
//	KEYS[4..13] tag:budget:<n>    the window's slices, current first:
//	                              req, ret, ok, fail, aban
//
// ARGV: slice TTL (ms), now (Unix ms), this process's id, MaxRest (ms),
// the most marks the health hash keeps, the number of batches; then each
// batch: its number, its number of slices, then per slice its place in
// KEYS[4..] counted from 0 and its five counts; then pairs of mark field
// and end (Unix ms).
//
// It returns the window's five totals, the processes that synced within
// the window, the number of the last batch applied for this process, the
// number of junk entries and each as key, field and value (cut to 64
// bytes; at most 16), then pairs of mark field and end.
//
// Junk is anything this version does not write: a value that is not a
// count of at most 15 digits, a field of a slice other than the five. It
// is skipped, never counted and never fatal. A count this process adds to
// a junk value replaces it. A mark that ends later than MaxRest from now
// is cut to end then, in Redis, so a hostile end does not keep sliding
// forward at every read.
//
// A process's batch number outlives its last sync by three slice TTLs, so
// a batch it sends again after that has no slice left in the window:
// nothing can be applied twice, even with clocks some seconds apart.
var syncScript = redis.NewScript(`
local ttl, now, id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local maxrest, cap = tonumber(ARGV[4]), tonumber(ARGV[5])
local keep = 3 * ttl
local junk = {}
local function count(v)
  if type(v) == 'string' and #v <= 15 and string.find(v, '^%d+$') then return tonumber(v) end
  return nil
end
local function bad(key, field, value)
  if #junk < 3 * 16 then
    table.insert(junk, key)
    table.insert(junk, string.sub(field, 1, 64))
    table.insert(junk, string.sub(value or '', 1, 64))
  end
end
local function ms(n) return string.format('%.0f', n) end

-- Batches not applied before, each once.
local last = 0
local v = redis.call('HGET', KEYS[3], id)
if v then
  last = count(v)
  if not last then bad(KEYS[3], id, v); last = 0 end
end
local fields = {'req', 'ret', 'ok', 'fail', 'aban'}
local isfield = {req = 1, ret = 2, ok = 3, fail = 4, aban = 5}
local i = 7
for b = 1, tonumber(ARGV[6]) do
  local seq, ns = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  i = i + 2
  local apply = seq > last
  for j = 1, ns do
    if apply then
      local k = KEYS[4 + tonumber(ARGV[i])]
      for f = 1, 5 do
        local n = tonumber(ARGV[i + f])
        if n > 0 then
          local old = redis.call('HGET', k, fields[f])
          if old and not count(old) then
            bad(k, fields[f], old)
            redis.call('HSET', k, fields[f], n)
          else
            redis.call('HINCRBY', k, fields[f], n)
          end
        end
      end
      redis.call('PEXPIRE', k, ttl)
    end
    i = i + 6
  end
  if apply then last = seq end
end
redis.call('HSET', KEYS[3], id, last)
redis.call('PEXPIRE', KEYS[3], keep)

-- Processes: those that synced within the window share its budget.
redis.call('HSET', KEYS[2], id, ms(now))
redis.call('PEXPIRE', KEYS[2], keep)
local procs = 0
local seen = redis.call('HGETALL', KEYS[2])
for j = 1, #seen, 2 do
  local t = count(seen[j + 1])
  if not t then
    bad(KEYS[2], seen[j], seen[j + 1])
  elseif now - t > keep then
    redis.call('HDEL', KEYS[2], seen[j])
    redis.call('HDEL', KEYS[3], seen[j])
  elseif now - t <= ttl then
    procs = procs + 1
  end
end

-- Marks: this process's, then every running one.
local ceiling = now + maxrest
for j = i, #ARGV, 2 do
  local u = math.min(tonumber(ARGV[j + 1]), ceiling)
  local old = count(redis.call('HGET', KEYS[1], ARGV[j]))
  if not old or u > old then redis.call('HSET', KEYS[1], ARGV[j], ms(u)) end
end
local live = {}
local all = redis.call('HGETALL', KEYS[1])
for j = 1, #all, 2 do
  local u = count(all[j + 1])
  if not u then
    bad(KEYS[1], all[j], all[j + 1])
    table.insert(live, {all[j], -1})
  elseif u <= now then
    redis.call('HDEL', KEYS[1], all[j])
  else
    if u > ceiling then
      u = ceiling
      redis.call('HSET', KEYS[1], all[j], ms(u))
    end
    table.insert(live, {all[j], u})
  end
end
local first = 1
if #live > cap then
  table.sort(live, function(a, b) return a[2] < b[2] end)
  first = #live - cap + 1
  for j = 1, first - 1 do redis.call('HDEL', KEYS[1], live[j][1]) end
end
if #live > 0 then redis.call('PEXPIRE', KEYS[1], maxrest) end

-- The window's totals.
local sums = {0, 0, 0, 0, 0}
for k = 4, #KEYS do
  local h = redis.call('HGETALL', KEYS[k])
  for j = 1, #h, 2 do
    local f, n = isfield[h[j]], count(h[j + 1])
    if f and n then sums[f] = sums[f] + n else bad(KEYS[k], h[j], h[j + 1]) end
  end
end

local out = {sums[1], sums[2], sums[3], sums[4], sums[5], procs, last, #junk / 3}
for j = 1, #junk do table.insert(out, junk[j]) end
for j = first, #live do
  if live[j][2] >= 0 then
    table.insert(out, live[j][1])
    table.insert(out, live[j][2])
  end
end
return out
`)
