-- One page of a run's log, bounded in entries and in bytes, with the log's shape and the run's
-- status from the same snapshot (a script runs atomically).
--
-- KEYS[1] events stream, KEYS[2] run hash
-- ARGV[1] XRANGE start, ARGV[2] XRANGE end, ARGV[3] count, ARGV[4] byte budget,
-- ARGV[5] an entry ID to look for ('' = none): the reader's cursor, which it saw delivered
--
-- Entries are taken in order while their payloads fit the budget; the first always is, so a
-- page makes progress whatever an entry's size. Returns {entries, xinfo or false, {status,
-- last_event_id}, 1 if the ARGV[5] entry is in the log, 0 if not, false when not asked}.
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
local budget = tonumber(ARGV[4])
local page, used = {}, 0
for i, entry in ipairs(entries) do
  local fields = entry[2]
  local size = 0
  for j = 2, #fields, 2 do
    size = size + #fields[j]
  end
  if i > 1 and used + size > budget then
    break
  end
  used = used + size
  page[i] = entry
end
local info = false
if redis.call('EXISTS', KEYS[1]) == 1 then
  info = redis.call('XINFO', 'STREAM', KEYS[1])
end
local found = false
if ARGV[5] ~= '' then
  found = #redis.call('XRANGE', KEYS[1], ARGV[5], ARGV[5]) > 0 and 1 or 0
end
return {page, info, redis.call('HMGET', KEYS[2], 'status', 'last_event_id'), found}
