"""The workers' Lua scripts, next to the stamp format they read (see pgbust/lua.py).

Stored values are "<epoch>[.<tag generation>][<rows>]|<payload>" (<rows>: a newline and the
row section, see pgbust/lua.py). A value is dead when its stamp is not the current one (or a
guard key it was stamped with is gone: evicted guard keys come back with new values); readers
already treat it as a miss, the workers reclaim its memory. Both scripts only delete, so they
run on a full Redis (allow-oom): that is when memory matters.
"""

from pgbust.lua import LIVE_STAMP, RUNS_WHEN_FULL

# KEYS: epoch[, tag_generation], value keys...   ARGV: with_tag ("1" when KEYS[2] is a tag
# generation: compare the whole stamp; "0": compare the epoch only)
# UNLINKs every listed value whose stamp is dead, atomically: a value refilled with a live
# stamp since the caller listed it is kept. Reads only the stamp (GETRANGE), never the payload.
# -> number of values unlinked
UNLINK_DEAD = (
    RUNS_WHEN_FULL
    + LIVE_STAMP
    + """
local first, live, epoch = 2, nil, nil
if ARGV[1] == '1' then
  first = 3
  live = live_stamp(KEYS[1], KEYS[2])
else
  epoch = redis.call('GET', KEYS[1])
end
local n = 0
for i = first, #KEYS do
  local dead = true
  if live then
    -- live ends with '|'; a value holding rows has a newline there (its rows are the
    -- readers' to judge: a row tag's bump frees its members anyway)
    local head = redis.call('GETRANGE', KEYS[i], 0, #live - 1)
    dead = head ~= live and head ~= string.sub(live, 1, -2) .. '\\n'
  elseif epoch then
    local head = redis.call('GETRANGE', KEYS[i], 0, #epoch)
    dead = head ~= epoch .. '|' and head ~= epoch .. '.' and head ~= epoch .. '\\n'
  end
  if dead then
    n = n + redis.call('UNLINK', KEYS[i])
  end
end
return n
"""
)

# KEYS: tag member set, value keys (members of it)
# SREMs the members whose value no longer exists (purged, evicted, expired), atomically: a
# value filled meanwhile stays listed. Keeps tag bookkeeping as small as the live cache.
# -> number of members removed
UNLIST_MISSING = (
    RUNS_WHEN_FULL
    + """
local n = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    n = n + redis.call('SREM', KEYS[1], KEYS[i])
  end
end
return n
"""
)

# KEYS: hot   ARGV: min_score, hot_max   -> entries left
# The hot-key decay as one script, for a Redis Cluster: redis-py's asyncio cluster
# transaction cannot route ZUNIONSTORE (its keys are "movable": the client asks COMMAND
# GETKEYS from a thread of its own, on another event loop). One key, one slot. No shebang:
# like the MULTI it replaces, a full Redis refuses its writes (OOM error).
DECAY_HOT = """
redis.call('ZUNIONSTORE', KEYS[1], 1, KEYS[1], 'WEIGHTS', 0.5)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[2]) + 1))
return redis.call('ZCARD', KEYS[1])
"""
