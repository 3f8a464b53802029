-- Publish one event of a run, atomically and in one round trip:
-- fence check, gapless seq, monotonic progress, XADD to the log, run-hash update, PUBLISH.
--
-- KEYS[1] run hash          KEYS[2] run event stream        KEYS[3] active-runs zset
-- ARGV[1] fence attempt ('' = no check)     ARGV[2] body: JSON object without id/seq/progress
-- ARGV[3] requested progress ('' = keep)    ARGV[4] log MAXLEN (approximate)
-- ARGV[5] run channel       ARGV[6] lifecycle channel       ARGV[7] new status ('' = keep)
-- ARGV[8] now (ISO 8601)    ARGV[9] message ('' = keep)     ARGV[10] task name ('' = keep)
-- ARGV[11] publish uid (a retried publish with the same uid returns the first result)
-- ARGV[12] run id           ARGV[13..] extra run-hash field/value pairs
-- Returns {stream id, seq, progress}. Errors: NOTFOUND, FENCED <attempt>, FINISHED <status>.
local h = redis.call('HMGET', KEYS[1], 'attempt', 'status', 'progress', 'last_uid', 'last_ret')
if not h[2] then
  return redis.error_reply('NOTFOUND')
end
if h[4] == ARGV[11] and h[5] then
  local ret = {}
  for part in string.gmatch(h[5], '%S+') do ret[#ret + 1] = part end
  return ret
end
if ARGV[1] ~= '' and h[1] ~= ARGV[1] then
  return redis.error_reply('FENCED ' .. tostring(h[1]))
end
local status = h[2]
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return redis.error_reply('FINISHED ' .. status)
end

local old = tonumber(h[3]) or 0
local progress = old
local asked = tonumber(ARGV[3])
if asked then
  if asked > 100 then asked = 100 end
  if asked > progress then progress = asked end
end
local ps = tostring(progress)
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local stored = '{"seq":' .. seq .. ',"progress":' .. ps .. ',' .. string.sub(ARGV[2], 2)
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', stored)
redis.call('PUBLISH', ARGV[5], '{"id":"' .. id .. '",' .. string.sub(stored, 2))

local ret = id .. ' ' .. seq .. ' ' .. ps
local fields = {'progress', ps, 'last_event_id', id, 'updated_at', ARGV[8],
                'last_uid', ARGV[11], 'last_ret', ret}
if ARGV[9] ~= '' then
  fields[#fields + 1] = 'message'; fields[#fields + 1] = ARGV[9]
end
if ARGV[10] ~= '' then
  fields[#fields + 1] = 'task'; fields[#fields + 1] = ARGV[10]
end
local new_status = ARGV[7]
if new_status ~= '' then
  fields[#fields + 1] = 'status'; fields[#fields + 1] = new_status
  if new_status == 'running' and not redis.call('HGET', KEYS[1], 'started_at') then
    fields[#fields + 1] = 'started_at'; fields[#fields + 1] = ARGV[8]
  end
  if new_status == 'completed' or new_status == 'failed' or new_status == 'cancelled' then
    fields[#fields + 1] = 'finished_at'; fields[#fields + 1] = ARGV[8]
    redis.call('ZREM', KEYS[3], ARGV[12])
  end
end
for i = 13, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]; fields[#fields + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[1], unpack(fields))

-- Lifecycle summaries: on a status change, or when whole-percent progress moves.
if (new_status ~= '' and new_status ~= status) or math.floor(progress) ~= math.floor(old) then
  local r = redis.call('HMGET', KEYS[1], 'workflow', 'status', 'message', 'created_at',
                       'started_at', 'finished_at')
  redis.call('PUBLISH', ARGV[6], cjson.encode({
    run_id = ARGV[12], workflow = r[1], status = r[2], progress = progress,
    message = r[3] or '', seq = seq, created_at = r[4] or '', started_at = r[5] or '',
    finished_at = r[6] or ''}))
end
return {id, tostring(seq), ps}
