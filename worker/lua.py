"""The workers' Lua scripts, next to the stamp format they read (see pgbust/lua.py).

Stored values are "<epoch>.<tag generation>|<payload>". A value is dead when its stamp is not
the current one; readers already treat it as a miss, the workers reclaim its memory.
"""

# KEYS: epoch[, tag_generation], value keys...   ARGV: with_tag ("1" when KEYS[2] is a tag
# generation: compare the whole stamp; "0": compare the epoch only)
# UNLINKs every listed value whose stamp is dead, atomically: a value refilled with a live
# stamp since the caller listed it is kept. Reads only the stamp (GETRANGE), never the payload.
# -> number of values unlinked
UNLINK_DEAD = """
local live = (redis.call('GET', KEYS[1]) or '0') .. '.'
local first = 2
if ARGV[1] == '1' then
  live = live .. (redis.call('GET', KEYS[2]) or '0') .. '|'
  first = 3
end
local n = 0
for i = first, #KEYS do
  local head = redis.call('GETRANGE', KEYS[i], 0, #live - 1)
  if head ~= live then
    n = n + redis.call('UNLINK', KEYS[i])
  end
end
return n
"""

# KEYS: tag member set, value keys (members of it)
# SREMs the members whose value no longer exists (purged, evicted, expired), atomically: a
# value filled meanwhile stays listed. Keeps tag bookkeeping as small as the live cache.
# -> number of members removed
UNLIST_MISSING = """
local n = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    n = n + redis.call('SREM', KEYS[1], KEYS[i])
  end
end
return n
"""
