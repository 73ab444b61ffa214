"""Every Lua script of the cache protocol, as a named constant (run atomically by Redis).

Stored values are "<stamp>|<payload>" where stamp = "<epoch>.<tag generation>". A value whose
stamp differs from the current one is dead: bumping the namespace epoch kills every entry at
once, bumping a tag generation kills every entry filed under the tag, both in O(1).
"""

# KEYS: epoch, value, lease[, tag_generation]   ARGV: token, lease_ms
# -> {1, stamp, value} hit | {2, stamp} lease granted | {3, stamp} lease held by another reader
GET_OR_LEASE = """
local epoch = redis.call('GET', KEYS[1]) or '0'
local gen = '0'
if KEYS[4] then gen = redis.call('GET', KEYS[4]) or '0' end
local stamp = epoch .. '.' .. gen .. '|'
local v = redis.call('GET', KEYS[2])
if v and string.sub(v, 1, #stamp) == stamp then
  return {1, stamp, v}
end
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, stamp}
end
return {3, stamp}
"""

# KEYS: epoch, value, lease[, tag_generation, tag_members]   ARGV: token, stamp, payload, ttl_ms
# -> 1 stored | 0 refused: lease gone or taken over | -1 refused: epoch or tag changed
# The fill guard: an invalidation deletes the lease (or bumps the generation), so a reader
# that loaded the database before the invalidation can no longer store what it read.
FILL = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[3])
local epoch = redis.call('GET', KEYS[1]) or '0'
local gen = '0'
if KEYS[4] then gen = redis.call('GET', KEYS[4]) or '0' end
local stamp = epoch .. '.' .. gen .. '|'
if stamp ~= ARGV[2] then return -1 end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('SET', KEYS[2], stamp .. ARGV[3], 'PX', ttl)
else
  redis.call('SET', KEYS[2], stamp .. ARGV[3])
end
if KEYS[5] then redis.call('SADD', KEYS[5], KEYS[2]) end
return 1
"""

# KEYS: n value keys, n lease keys, m tag generations, m tag member sets, m garbage keys
# ARGV: n, m, channel, message, inline_member_limit
# Deletes the entries and their leases, bumps each tag's generation, frees up to
# inline_member_limit members of each tag inline and renames a larger remainder to its
# garbage key (handed to a worker), then publishes one message. Returns {receivers, garbage}.
INVALIDATE = """
local n = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
for i = 1, 2 * n do
  redis.call('DEL', KEYS[i])
end
local garbage = {}
for j = 1, m do
  redis.call('INCR', KEYS[2 * n + j])
  local members_key = KEYS[2 * n + m + j]
  local freed = redis.call('SPOP', members_key, tonumber(ARGV[5]))
  for _, k in ipairs(freed) do redis.call('UNLINK', k) end
  if redis.call('EXISTS', members_key) == 1 then
    local gc_key = KEYS[2 * n + 2 * m + j]
    redis.call('RENAME', members_key, gc_key)
    garbage[#garbage + 1] = gc_key
  end
end
local receivers = redis.call('PUBLISH', ARGV[3], ARGV[4])
return {receivers, garbage}
"""

# KEYS: epoch   ARGV: now_ms, channel, message
# The new epoch is max(old + 1, now in ms): it never repeats, even after Redis restarts from
# an old snapshot that holds an older epoch.
BUMP_EPOCH = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local nxt = math.max(current + 1, tonumber(ARGV[1]))
local text = string.format('%.0f', nxt)
redis.call('SET', KEYS[1], text)
redis.call('PUBLISH', ARGV[2], ARGV[3])
return text
"""

# KEYS: server_identity, epoch   ARGV: run_id, now_ms, channel, message
# Redis restarted (new run_id): whatever it holds may predate writes it never saw deleted,
# so the first component to notice bumps the epoch. Returns the new epoch, or false.
ENSURE_SERVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[1])
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
local nxt = math.max(current + 1, tonumber(ARGV[2]))
local text = string.format('%.0f', nxt)
redis.call('SET', KEYS[2], text)
redis.call('PUBLISH', ARGV[3], ARGV[4])
return text
"""

# KEYS: epoch, value[, tag_generation]   -> value if its stamp is current, else false.
PEEK = """
local epoch = redis.call('GET', KEYS[1]) or '0'
local gen = '0'
if KEYS[3] then gen = redis.call('GET', KEYS[3]) or '0' end
local stamp = epoch .. '.' .. gen .. '|'
local v = redis.call('GET', KEYS[2])
if v and string.sub(v, 1, #stamp) == stamp then return v end
return false
"""

# KEYS: lease   ARGV: token   -> 1 released | 0 not ours (expired or taken over)
# A reader whose load found no row gives its lease back, so waiters need not sit out the
# lease time for a 404.
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# --- capture liveness (DESIGN invariant 8) ---------------------------------------------------
# Redis may only be served while invalidations can flow: the active invalidator keeps the key
# <ns>:capture:alive alive (HEARTBEAT) only while its LISTEN connection and its Redis
# connection are proven alive. A read script wrapped by `capture_gated` runs only while that
# key exists; otherwise it answers {0, ''} (pgbust.protocol.NotLive) and touches nothing.


def capture_gated(script: str) -> str:
    """`script` behind the capture gate: the gated script takes the liveness key as KEYS[1]
    and then exactly the keys and arguments of `script`, which runs unchanged (as a local
    function whose parameters shadow KEYS and ARGV), so the two can evolve apart."""
    return (
        "if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end\n"
        "local function gated(KEYS, ARGV)\n"
        f"{script}\n"
        "end\n"
        "return gated({unpack(KEYS, 2)}, ARGV)\n"
    )


GET_OR_LEASE_IF_LIVE = capture_gated(GET_OR_LEASE)

# KEYS: capture_alive   ARGV: value, ttl_ms, channel, message   -> receivers
# One beat of the active invalidator: the liveness key (expiring when the current proof does)
# and the heartbeat message, in one call, so a beat Redis accepted is a beat subscribers hear.
HEARTBEAT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('PUBLISH', ARGV[3], ARGV[4])
"""
