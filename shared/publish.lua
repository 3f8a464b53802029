-- Publish a batch of events of one run, atomically and in one round trip. A single publish is a
-- batch of one; a checkpointed commit is a batch of one with a checkpoint.
--
-- Per event: gapless seq, monotonic progress, XADD to the log, PUBLISH on the run's channel, and a
-- lifecycle summary on its bucket's lifecycle channel when the status or the whole-percent
-- progress changes (ARGV[12] names the command: PUBLISH, or SPUBLISH in a cluster, where every
-- key and channel here is in the run's slot). Once per batch: the
-- fence check, the optional checkpoint (HSETNX), one HSET of the run record. When the batch ends
-- the run and a retention is given: every key of the run gets it as TTL (PEXPIRE LT: a lease
-- keeps its shorter one), the run enters the expiring index, and up to ARGV[11] runs whose keys
-- are due are dropped from the history index (both indexes are the run's bucket's: its due
-- neighbours there go).
--
-- KEYS[1] run hash   KEYS[2] event stream   KEYS[3] active-runs zset (the run's bucket's)
-- KEYS[4] checkpoint hash   KEYS[5] expiring zset   KEYS[6] history zset (the bucket's)
-- KEYS[7..] the run's other keys (state, signals, …), passed when the batch may end the run
-- ARGV[1] fence attempt ('' = no check)     ARGV[2] log MAXLEN (approximate)
-- ARGV[3] run channel     ARGV[4] lifecycle channel     ARGV[5] now (ISO 8601)
-- ARGV[6] batch uid, 16 characters (a resent batch is refused as DUPLICATE instead of written
--         twice: the run keeps the uids of its last 32 batches, whoever wrote them)
-- ARGV[7] run id          ARGV[8] checkpoint field ('' = none)     ARGV[9] checkpoint value
-- ARGV[10] retention ms ('0' = keep forever)     ARGV[11] most history entries dropped per call
-- ARGV[12] the publish command ('PUBLISH' or 'SPUBLISH')
-- then per event, 6 + 2n values: body (JSON object without id/seq/progress), progress ('' = keep),
-- status ('' = keep), message ('' = keep), task ('' = keep), n, then n run-hash field/value pairs.
--
-- Returns one string per event: "<id> <seq> <progress>", or "FINISHED <status>" for an event that
-- came after the run ended. An empty array: the checkpoint was already set, nothing was written.
-- Errors: NOTFOUND, FENCED <attempt>, FINISHED <status>, DUPLICATE.
local h = redis.call('HMGET', KEYS[1], 'attempt', 'status', 'progress', 'seq', 'recent_uids',
                     'workflow', 'message', 'created_at', 'started_at', 'finished_at')
if not h[2] then
  return redis.error_reply('NOTFOUND')
end
local recent = h[5] or ''
if string.find(recent, ARGV[6] .. ' ', 1, true) then
  return redis.error_reply('DUPLICATE')
end
if ARGV[1] ~= '' and h[1] ~= ARGV[1] then
  return redis.error_reply('FENCED ' .. tostring(h[1]))
end
local function ended(s)
  return s == 'completed' or s == 'failed' or s == 'cancelled'
end
local status = h[2]
if ended(status) then
  return redis.error_reply('FINISHED ' .. status)
end
if ARGV[8] ~= '' and redis.call('HSETNX', KEYS[4], ARGV[8], ARGV[9]) == 0 then
  return {}
end

local progress = tonumber(h[3]) or 0
local seq = tonumber(h[4]) or 0
local message, started, finished = h[7] or '', h[9], h[10]
local fields = {}
local out = {}
local last_id = nil
local ended_now = false
local publish = ARGV[12]
local i = 13
while i <= #ARGV do
  local body, asked, new_status = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local msg, task, n = ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5])
  local first_field = i + 6
  i = first_field + 2 * n
  if ended(status) then
    out[#out + 1] = 'FINISHED ' .. status
  else
    local old = progress
    if asked then
      if asked > 100 then asked = 100 end
      if asked > progress then progress = asked end
    end
    seq = seq + 1
    local ps = tostring(progress)
    local stored = '{"seq":' .. seq .. ',"progress":' .. ps .. ',' .. string.sub(body, 2)
    last_id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', stored)
    redis.call(publish, ARGV[3], '{"id":"' .. last_id .. '",' .. string.sub(stored, 2))
    out[#out + 1] = last_id .. ' ' .. seq .. ' ' .. ps
    if msg ~= '' then message = msg end
    if task ~= '' then fields['task'] = task end
    for j = first_field, i - 1, 2 do
      fields[ARGV[j]] = ARGV[j + 1]
    end
    local changed = new_status ~= '' and new_status ~= status
    if new_status ~= '' then
      status = new_status
      if status == 'running' and not started then started = ARGV[5] end
      if ended(status) then
        finished = ARGV[5]
        ended_now = true
        redis.call('ZREM', KEYS[3], ARGV[7])
      end
    end
    if changed or math.floor(progress) ~= math.floor(old) then
      redis.call(publish, ARGV[4], cjson.encode({
        run_id = ARGV[7], workflow = h[6], status = status, progress = progress,
        message = message, seq = seq, created_at = h[8] or '', started_at = started or '',
        finished_at = finished or ''}))
    end
  end
end

if last_id then
  local hset = {'seq', seq, 'progress', tostring(progress), 'status', status, 'message', message,
                'last_event_id', last_id, 'updated_at', ARGV[5],
                'recent_uids', string.sub(recent .. ARGV[6] .. ' ', -32 * 17)}
  if started then hset[#hset + 1] = 'started_at'; hset[#hset + 1] = started end
  if finished then hset[#hset + 1] = 'finished_at'; hset[#hset + 1] = finished end
  for k, v in pairs(fields) do
    hset[#hset + 1] = k; hset[#hset + 1] = v
  end
  redis.call('HSET', KEYS[1], unpack(hset))
end

local retention = tonumber(ARGV[10]) or 0
if ended_now and retention > 0 then
  for k = 1, #KEYS do
    if k ~= 3 and k ~= 5 and k ~= 6 then
      redis.call('PEXPIRE', KEYS[k], retention, 'LT')
    end
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[5], now + retention, ARGV[7])
  local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, tonumber(ARGV[11]))
  if #due > 0 then
    redis.call('ZREM', KEYS[6], unpack(due))
    redis.call('ZREM', KEYS[5], unpack(due))
  end
end
return out
