"""Every Lua script of the cache protocol, as a named constant (run atomically by Redis).

**Stamps.** A stored value is "<stamp>|<payload>". The stamp is the namespace epoch, followed
by ".<generation>" for each tag the entry is filed under (today at most one):

    order:42               "1764070000123456|{...}"
    customer:3:summary       "1764070000123456.1764070000234567|{...}"

A value whose stamp is not the current one is dead: bumping the epoch kills every entry at
once, bumping a tag's generation every entry filed under it, both in O(1).

**Row tags.** An entry may also hold rows (a page of orders): it is then filed under each
row's tag too ("row:orders:42"), which only its content names, so they are known only after
the load. Such a value carries them after its stamp, with the time its lease was granted:

    customer:3:orders:20:0 "<epoch>.<gen>\n<since>\n<ns>:g:row:orders:7\n...|{...}"

and is live only while every one of those generations is older than `since` (Redis TIME, µs,
when the lease was granted). A row tag bumped after the lease (its generation is at least the
time of the bump) kills the value, and refuses its fill; an evicted one is missing, which
counts as dead (FILL recreates it as now and refuses; the next lease is younger). Row tags are
read from the value, not passed as KEYS: fine on one Redis, one more thing for Cluster to
solve (hash tags per entry).

**Guard keys may vanish** (DESIGN invariant 9): Redis evicts any key under allkeys-*, a
restart loses them. So the epoch and every generation are microseconds on the Redis server's
clock (TIME), and a guard key never takes a value it held before:
- a bump sets max(old + 1, now): strictly greater than anything it held and, unless the
  clock ran ahead, than anything created before now;
- a missing guard key is created as `now` by the script that needs it to lease (GET_OR_LEASE)
  or to bump (INVALIDATE, BUMP_EPOCH, ENSURE_SERVER) — never as 0, never as an old value;
- scripts that only check a stamp (FILL, PEEK, the workers' UNLINK_DEAD) treat a missing guard
  key as "nothing stamped before is live".
An evicted-and-recreated guard key therefore cannot make an old stamp valid again, as long as
the Redis host's clock does not step back past values still in use. A lost lease makes its
fill fail; a lost server identity costs one flush; lost member sets only leave dead values
for eviction or the purge.

**A full Redis** (maxmemory reached, nothing left to evict) refuses commands that may grow
memory, but runs scripts flagged `allow-oom` (Redis 7 shebang `#!lua flags=allow-oom`; the
flags are read from the script body, also for EVALSHA of a loaded script). Invalidation frees
memory, so everything that invalidates is flagged: INVALIDATE, BUMP_EPOCH, ENSURE_SERVER,
RELEASE_LEASE and the workers' reclaiming. FILL carries no flag, so a full Redis refuses it
before it runs (OOM error): the cache stops filling instead of growing past maxmemory.
GET_OR_LEASE has no shebang on purpose: Redis' compatibility mode lets it run, serve hits,
and have only its writes refused, which redis.pcall turns into a "refused" reply.

Scripts with a shebang need Redis 7.0+ (pgbust.redis_policy checks it at start). On Redis
Cluster they may only touch keys of one hash slot (no allow-cross-slot-keys flag).
"""

# --- shebangs ---------------------------------------------------------------------------------

# may run when Redis is full: deletes, bumps and publishes only (what frees memory)
_RUNS_WHEN_FULL = "#!lua flags=allow-oom\n"
# refused as a whole by a full Redis, before it runs
_REFUSED_WHEN_FULL = "#!lua\n"
# reads only: runs when full and on replicas
_READ_ONLY = "#!lua flags=no-writes\n"

# --- shared Lua: the guard-key rules above, written once ----------------------------------------

_CLOCK = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function text(n) return string.format('%.0f', n) end
"""

# A bump: never a value the key held, and never one created before now.
_BUMP = """
local function bump(key)
  local new = text(math.max((tonumber(redis.call('GET', key)) or 0) + 1, now_us()))
  redis.call('SET', key, new)
  return new
end
"""

# The live stamp, or nil when a guard key is missing (evicted): then no stored value is live.
LIVE_STAMP = """
local function live_stamp(epoch_key, generation_key)
  local stamp = redis.call('GET', epoch_key)
  if stamp and generation_key then
    local generation = redis.call('GET', generation_key)
    stamp = generation and (stamp .. '.' .. generation)
  end
  return stamp and (stamp .. '|')
end
"""

# live_prefix's row check: every row generation older than the `since` stored before them
# (cluster scripts leave it out: their row generations live in other slots)
_ROW_CHECK = """\
  local since
  for part in string.gmatch(string.sub(v, #head + 2, bar - 1), '[^\\n]+') do
    if not since then
      since = tonumber(part)
    else
      local generation = tonumber(redis.call('GET', part))
      if not generation or generation >= since then return nil end
    end
  end
"""

# The row-tag section of a value whose static stamp is `head` (the stamp without its '|'):
# the prefix up to and including the '|' when the value is live, else nil. A value without
# rows is live with its stamp; one with rows only while every row generation is older than
# the `since` it was stored with (a missing generation was evicted or never existed: dead).
LIVE_PREFIX = (
    """
local function live_prefix(v, head)
  if not v or string.sub(v, 1, #head) ~= head then return nil end
  local sep = string.sub(v, #head + 1, #head + 1)
  if sep == '|' then return head .. '|' end
  if sep ~= '\\n' then return nil end
  local bar = string.find(v, '|', #head + 2, true)
  if not bar then return nil end
"""
    + _ROW_CHECK
    + """  return string.sub(v, 1, bar)
end
"""
)

# For the reader: a guard key's value, created as now when missing. nil (and `refused` set
# to Redis' error) when Redis refuses the write (full, read-only replica, disk error).
_CURRENT = """
local refused
local function current(key)
  local value = redis.call('GET', key)
  if value then return value end
  value = text(now_us())
  local reply = redis.pcall('SET', key, value)
  if type(reply) == 'table' and reply.err then
    refused = reply.err
    return nil
  end
  return value
end
"""

# --- the scripts ------------------------------------------------------------------------------

# KEYS: epoch, value, lease[, tag_generation]   ARGV: token, lease_ms
# -> {1, prefix, value} hit (prefix: stamp and row section up to '|') | {2, stamp, since}
#    lease granted (since: µs on the Redis clock, for the row tags) | {3, stamp} lease held by
#    another reader | {4, error} Redis refused a write (full ...): no lease; read the
#    database, do not fill
# No shebang (compatibility mode, see the module doc): hits are served by a full Redis.
GET_OR_LEASE = (
    _CLOCK
    + _CURRENT
    + LIVE_PREFIX
    + """
local head = current(KEYS[1])
if head and KEYS[4] then
  local generation = current(KEYS[4])
  head = generation and (head .. '.' .. generation)
end
if not head then return {4, refused} end
local v = redis.call('GET', KEYS[2])
local prefix = live_prefix(v, head)
if prefix then return {1, prefix, v} end
local granted = redis.pcall('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2])
if type(granted) == 'table' and granted.err then return {4, granted.err} end
if granted then return {2, head .. '|', text(now_us())} end
return {3, head .. '|'}
"""
)

# FILL's store (both FILLs): `value` into KEYS[2] with ARGV[4] ms of TTL (0: none), filed in
# the home tag's member set KEYS[5] when the entry has one (`tag_key`)
_STORE = """
local function store(value, tag_key)
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then
    redis.call('SET', KEYS[2], value, 'PX', ttl)
  else
    redis.call('SET', KEYS[2], value)
  end
  if tag_key then redis.call('SADD', KEYS[5], KEYS[2]) end
end
"""

# KEYS: epoch, value, lease[, tag_generation, tag_members], then per row tag: generation,
#       members
# ARGV: token, stamp, payload, ttl_ms, has_tag ("1": KEYS[4..5] are the entry's tag), since
# -> 1 stored | 0 refused: lease gone or taken over | -1 refused: epoch or tag changed (or
# its key was evicted meanwhile), or a row tag was bumped since the lease | -2 refused: a
# row tag had no generation (never bumped, or evicted): created now, so the next lease can
# fill. Refused by a full Redis before it runs (OOM error).
# The fill guard: an invalidation deletes the lease (or bumps the generation), so a reader
# that loaded the database before the invalidation can no longer store what it read.
FILL = (
    _REFUSED_WHEN_FULL
    + _STORE
    + _CLOCK
    + LIVE_STAMP
    + """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[3])
local first = 4
local tag_key
if ARGV[5] == '1' then
  tag_key = KEYS[4]
  first = 6
end
if live_stamp(KEYS[1], tag_key) ~= ARGV[2] then return -1 end
local since = tonumber(ARGV[6])
local rows = {}
local untracked = false
for i = first, #KEYS, 2 do
  local generation = tonumber(redis.call('GET', KEYS[i]))
  if not generation then
    redis.call('SET', KEYS[i], text(now_us()))
    untracked = true
  elseif generation >= since then
    return -1
  end
  rows[#rows + 1] = KEYS[i]
end
if untracked then return -2 end
local value
if #rows > 0 then
  value = string.sub(ARGV[2], 1, -2) .. '\\n' .. ARGV[6] .. '\\n' .. table.concat(rows, '\\n')
    .. '|' .. ARGV[3]
else
  value = ARGV[2] .. ARGV[3]
end
store(value, tag_key)
for i = first + 1, #KEYS, 2 do redis.call('SADD', KEYS[i], KEYS[2]) end
return 1
"""
)

# KEYS: n value keys, n lease keys, m tag generations, m tag member sets, m garbage keys
# ARGV: n, m, channel, message, inline_member_limit
# Deletes the entries and their leases, bumps each tag's generation, frees up to
# inline_member_limit members of each tag inline and renames a larger remainder to its
# garbage key (handed to a worker), then publishes one message. Returns {receivers, garbage}.
INVALIDATE = (
    _RUNS_WHEN_FULL
    + _CLOCK
    + _BUMP
    + """
local n = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
for i = 1, 2 * n do
  redis.call('DEL', KEYS[i])
end
local garbage = {}
for j = 1, m do
  bump(KEYS[2 * n + j])
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
)

# --- Redis Cluster: one slot per script (pgbust/slots.py, keys.ClusterNames) -----------------

# KEYS: n value keys, n lease keys, m tag generations, m tag member sets, m garbage keys, all
#       of one slot   ARGV: n, m, inline_member_limit
# INVALIDATE for the keys of one slot, without the publish (the caller SPUBLISHes once after
# every slot's script). A tag's members may live in other slots: they are returned, for the
# caller to UNLINK (they are dead by the bumped generation already), not unlinked here.
# -> {freed member keys, garbage keys}
INVALIDATE_SLOT = (
    _RUNS_WHEN_FULL
    + _CLOCK
    + _BUMP
    + """
local n = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
for i = 1, 2 * n do
  redis.call('DEL', KEYS[i])
end
local freed = {}
local garbage = {}
for j = 1, m do
  bump(KEYS[2 * n + j])
  local members_key = KEYS[2 * n + m + j]
  for _, k in ipairs(redis.call('SPOP', members_key, tonumber(ARGV[3]))) do
    freed[#freed + 1] = k
  end
  if redis.call('EXISTS', members_key) == 1 then
    local gc_key = KEYS[2 * n + 2 * m + j]
    redis.call('RENAME', members_key, gc_key)
    garbage[#garbage + 1] = gc_key
  end
end
return {freed, garbage}
"""
)

# KEYS: none   ARGV: inline_member_limit, then for each slot of one node: n, m, n value keys,
#       n lease keys, m tag generations, m tag member sets, m garbage keys
# INVALIDATE_SLOT for every slot one node serves, in one call (allow-cross-slot-keys: keys of
# several slots of one node; none declared, as Redis wants declared KEYS in one slot). Each
# key is handled exactly as INVALIDATE_SLOT does, independently of the others. A key this
# node does not serve (its slot moved) makes Redis refuse the rest: the caller runs the
# per-slot scripts again, which redis-py routes (everything here is idempotent).
# -> {freed member keys, garbage keys}
INVALIDATE_NODE = (
    "#!lua flags=allow-oom,allow-cross-slot-keys\n"
    + _CLOCK
    + _BUMP
    + """
local limit = tonumber(ARGV[1])
local freed = {}
local garbage = {}
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local m = tonumber(ARGV[i + 1])
  local base = i + 1
  for k = base + 1, base + 2 * n do redis.call('DEL', ARGV[k]) end
  for j = 1, m do
    bump(ARGV[base + 2 * n + j])
    local members_key = ARGV[base + 2 * n + m + j]
    for _, k in ipairs(redis.call('SPOP', members_key, limit)) do freed[#freed + 1] = k end
    if redis.call('EXISTS', members_key) == 1 then
      local gc_key = ARGV[base + 2 * n + 2 * m + j]
      redis.call('RENAME', members_key, gc_key)
      garbage[#garbage + 1] = gc_key
    end
  end
  i = base + 2 * n + 3 * m + 1
end
return {freed, garbage}
"""
)

# KEYS: the epoch of the node's first slot   ARGV: the epochs of its other slots
# -> how many were bumped
# A flush runs it once per master, then SPUBLISHes once. The only script allowed several slots
# (allow-cross-slot-keys: of one node, Redis 7; Redis still wants the declared KEYS in one
# slot, hence the others in ARGV, and refuses a key this node does not serve): the epochs
# are independent keys, each bumped by the same rule, so no slot's guard depends on another's.
BUMP_SLOT_EPOCHS = (
    "#!lua flags=allow-oom,allow-cross-slot-keys\n"
    + _CLOCK
    + _BUMP
    + """
bump(KEYS[1])
for i = 1, #ARGV do bump(ARGV[i]) end
return 1 + #ARGV
"""
)

# KEYS: epoch   ARGV: channel, message   -> the new epoch
BUMP_EPOCH = (
    _RUNS_WHEN_FULL
    + _CLOCK
    + _BUMP
    + """
local epoch = bump(KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return epoch
"""
)

# KEYS: server_identity, epoch[, lsn marker]   ARGV: run_id, channel, message
# Redis restarted (new run_id, or the identity key was lost): whatever it holds may predate
# writes it never saw deleted, so the first component to notice bumps the epoch, and deletes
# the read replicas' LSN marker (restored from an old snapshot it would be behind the
# invalidations the restart lost; readers use the primary until the invalidator raises it
# again). Returns the new epoch, or false.
ENSURE_SERVER = (
    _RUNS_WHEN_FULL
    + _CLOCK
    + _BUMP
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[1])
local epoch = bump(KEYS[2])
if KEYS[3] then redis.call('DEL', KEYS[3]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return epoch
"""
)

# KEYS: epoch, value[, tag_generation]   -> value if its stamp (and rows) are live, else false.
PEEK = (
    _READ_ONLY
    + LIVE_STAMP
    + LIVE_PREFIX
    + """
local stamp = live_stamp(KEYS[1], KEYS[3])
if not stamp then return false end
local v = redis.call('GET', KEYS[2])
if live_prefix(v, string.sub(stamp, 1, -2)) then return v end
return false
"""
)

# KEYS: lease   ARGV: token   -> 1 released | 0 not ours (expired or taken over)
# A reader whose load found no row (or whose fill a full Redis refused) gives its lease back,
# so waiters need not sit out the lease time.
RELEASE_LEASE = (
    _RUNS_WHEN_FULL
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)

RUNS_WHEN_FULL = _RUNS_WHEN_FULL  # for the workers' scripts (worker/lua.py)


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


def sharded(script: str) -> str:
    """`script` publishing with SPUBLISH (Redis Cluster sharded pub/sub) instead of PUBLISH.
    A script may SPUBLISH only to a channel of its own slot (Redis refuses "a non local key"),
    so its keys must share the channel's hash tag (pgbust.keys, cluster names)."""
    published = script.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
    assert published != script, "the script publishes nothing"
    return published


# KEYS: capture_alive   ARGV: value, ttl_ms, channel, message   -> receivers
# One beat of the active invalidator: the liveness key (expiring when the current proof does)
# and the heartbeat message, in one call, so a beat Redis accepted is a beat subscribers hear.
# Runs on a full Redis (allow-oom): the beat is what lets readers keep serving there.
HEARTBEAT = (
    _RUNS_WHEN_FULL
    + """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('PUBLISH', ARGV[3], ARGV[4])
"""
)
# on a cluster: the liveness key and the channel share the namespace's slot (pgbust.keys)
HEARTBEAT_SHARDED = sharded(HEARTBEAT)


# --- the LSN marker of read replicas (pgbust/replica.py) --------------------------------------
# <ns>:lsn holds an LSN (16 hex digits) at or past the commit of every change whose
# invalidation has been applied; a reader loads from a replica only once it has replayed that
# far. Raised set-if-greater in the same script as the invalidation it covers, so it is never
# behind one; "" deletes it (the invalidator could not learn an LSN: readers use the primary
# until a later invalidation writes it again). Compared in two 32-bit halves (exact in Lua).
_RAISE_LSN = """
local function raise_lsn(key, lsn)
  if lsn == '' then
    redis.call('DEL', key)
    return
  end
  local old = redis.call('GET', key)
  if old and #old == 16 and #lsn == 16 then
    local oh = tonumber(string.sub(old, 1, 8), 16)
    local ol = tonumber(string.sub(old, 9, 16), 16)
    local nh = tonumber(string.sub(lsn, 1, 8), 16)
    local nl = tonumber(string.sub(lsn, 9, 16), 16)
    if oh and ol and (oh > nh or (oh == nh and ol >= nl)) then return end
  end
  redis.call('SET', key, lsn)
end
"""


def raising_lsn(script: str) -> str:
    """`script`, first raising the LSN marker: the wrapped script takes the marker key as its
    last KEY and the LSN (16 hex digits, or "" to delete the marker) as its last ARGV, then
    exactly the keys and arguments of `script`, which runs unchanged (its shebang kept)."""
    shebang = ""
    if script.startswith("#!"):
        first, _, script = script.partition("\n")
        shebang = first + "\n"
    return (
        shebang
        + _RAISE_LSN
        + "raise_lsn(KEYS[#KEYS], ARGV[#ARGV])\n"
        + "local function raised(KEYS, ARGV)\n"
        + f"{script}\n"
        + "end\n"
        + "return raised({unpack(KEYS, 1, #KEYS - 1)}, {unpack(ARGV, 1, #ARGV - 1)})\n"
    )


def with_lsn_marker(script: str) -> str:
    """A GET_OR_LEASE variant whose granted lease ({2, stamp, since}) also carries the LSN
    marker ({2, stamp, since, marker}, "" when the key is missing), read atomically with the
    grant; the marker key is the last KEY, the others are exactly `script`'s."""
    return (
        "local function leased(KEYS, ARGV)\n"
        f"{script}\n"
        "end\n"
        "local reply = leased({unpack(KEYS, 1, #KEYS - 1)}, ARGV)\n"
        "if reply[1] == 2 then reply[#reply + 1] = redis.call('GET', KEYS[#KEYS]) or '' end\n"
        "return reply\n"
    )


# KEYS: lsn marker   ARGV: lsn (16 hex digits, or "" to delete)   -> 1
# The invalidator keeps the marker present between invalidations (at each capture probe), so
# an evicted marker sends readers to the primary for at most a heartbeat of a quiet system.
RAISE_LSN = _RUNS_WHEN_FULL + _RAISE_LSN + "raise_lsn(KEYS[1], ARGV[1])\nreturn 1\n"
GET_OR_LEASE_WITH_LSN = with_lsn_marker(GET_OR_LEASE)
GET_OR_LEASE_IF_LIVE_WITH_LSN = with_lsn_marker(GET_OR_LEASE_IF_LIVE)
INVALIDATE_RAISING_LSN = raising_lsn(INVALIDATE)
BUMP_EPOCH_RAISING_LSN = raising_lsn(BUMP_EPOCH)


# --- Redis Cluster: the read path in one slot (pgbust/cluster_reads.py) ----------------------
# An entry's value, lease, home tag (its first tag) and the epoch of that slot share one slot
# (keys.ClusterNames); its other tags and its row tags live in other slots, so these scripts
# do not read their generations: the caller does, outside, with the same time guard (older
# than the lease's `since`), before and after the fill and after every hit.

# live_prefix without the row check: the prefix up to '|' when the static stamp is live.
LIVE_PREFIX_ROWS_UNCHECKED = LIVE_PREFIX.replace(_ROW_CHECK, "")

# GET_OR_LEASE whose live_prefix leaves the row section to the caller, and which takes
# ARGV[3] == '1' to ignore the stored value (the caller found it dead by a row tag): a lease
# then, or Busy. KEYS as GET_OR_LEASE (one slot); no liveness gate (another slot: the caller
# GETs it first).
_HIT = "if prefix then return {1, prefix, v} end"
assert _HIT in GET_OR_LEASE
GET_OR_LEASE_CLUSTER = GET_OR_LEASE.replace(LIVE_PREFIX, LIVE_PREFIX_ROWS_UNCHECKED).replace(
    _HIT, "if prefix and ARGV[3] ~= '1' then return {1, prefix, v} end"
)

# KEYS: epoch, value, lease[, tag_generation, tag_members] (one slot)
# ARGV: token, stamp, payload, ttl_ms, has_tag, since, then the generation keys of the other
#       tags and row tags (other slots: written into the row section, not read; the caller
#       checked them before and checks them again after)
# -> 1 stored | 0 lease gone or taken over | -1 epoch or home tag changed. Refused by a full
# Redis before it runs, as FILL.
FILL_CLUSTER = (
    _REFUSED_WHEN_FULL
    + _STORE
    + LIVE_STAMP
    + """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[3])
local tag_key
if ARGV[5] == '1' then tag_key = KEYS[4] end
if live_stamp(KEYS[1], tag_key) ~= ARGV[2] then return -1 end
local value
if #ARGV > 6 then
  value = string.sub(ARGV[2], 1, -2) .. '\\n' .. ARGV[6] .. '\\n'
    .. table.concat({unpack(ARGV, 7)}, '\\n') .. '|' .. ARGV[3]
else
  value = ARGV[2] .. ARGV[3]
end
store(value, tag_key)
return 1
"""
)

# PEEK with the row section left to the caller. KEYS as PEEK (one slot).
PEEK_CLUSTER = PEEK.replace(LIVE_PREFIX, LIVE_PREFIX_ROWS_UNCHECKED)

# KEYS: a tag generation   -> its value, created as now (Redis TIME) when missing
# A row tag nobody bumped yet (or evicted) has no generation: created as now, so that a lease
# granted after it can fill (as FILL's -2 on one Redis).
CREATE_GENERATION = (
    _CLOCK
    + """
local value = redis.call('GET', KEYS[1])
if value then return value end
value = text(now_us())
redis.call('SET', KEYS[1], value)
return value
"""
)
