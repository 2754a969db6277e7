//! The Lua scripts the bus runs in Redis: each presence or routing step is one
//! atomic round trip.
//!
//! Keys, under a prefix `P` (default `chat`):
//! - `P:online` — hash user id → node id: where each user is logged in;
//! - `P:node:<node>` — exists while the node is alive (refreshed, with a TTL); its
//!   value is the stream format the node reads (`b1`; the previous build wrote `1`);
//! - `P:nodes` — set of node ids that registered, for the dead-node sweep;
//! - `P:nodeusers:<node>` — set of the node's users, for the sweep and resync;
//! - `P:q:<node>` — stream of what the node must deliver, in order: chat frames
//!   (fields `to`, ids joined by commas, and `f`, the frame), batches of them
//!   (field `b1`, see `ROUTE`) and flush notices
//!   (field `flush`, ids). The node trims what it wrote to its sockets, so what a
//!   dead node leaves there is what it never handed to the kernel;
//! - `P:drain:<node>` — lock of the node that moves a dead node's stream to the store;
//! - `P:gv:<group>` — the version of a group's membership (`Bus::group_version`);
//! - channel `P:ch:all` (broadcast), for group cache invalidations.

/// A Lua function the scripts that forget a node's users start with:
/// `forget(online, set, node)` drops the presence entries (in hash `online`) of
/// the users in `set` that still point at `node`, then the set itself.
macro_rules! forget_fn {
    () => {
        r"
local function forget(online, set, node)
  for _, uid in ipairs(redis.call('SMEMBERS', set)) do
    if redis.call('HGET', online, uid) == node then
      redis.call('HDEL', online, uid)
    end
  end
  redis.call('DEL', set)
end
"
    };
}

/// Claims a user for this node unless another live node has it — or, with the
/// take-over flag (RESUME), from that node too.
/// KEYS: online, nodeusers:me. ARGV: uid, me, node-key prefix, queue prefix,
/// take-over flag ("1" or "0"), node-users prefix.
/// Returns "" on success, the node that has the user, "=" and the live node it was
/// taken from (take-over), or "!" and a dead node whose stream still exists (it may
/// hold undelivered frames): the caller drains it, then claims again (so they are
/// stored before this login takes its offline messages).
pub const CLAIM: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local from = ''
if cur and cur ~= ARGV[2] then
  if redis.call('EXISTS', ARGV[3] .. cur) == 1 then
    if ARGV[5] ~= '1' then
      return cur
    end
    redis.call('SREM', ARGV[6] .. cur, ARGV[1])
    from = '=' .. cur
  elseif redis.call('EXISTS', ARGV[4] .. cur) == 1 then
    return '!' .. cur
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return from
";

/// Releases a user if this node holds it. KEYS: online, nodeusers:me. ARGV: uid, me.
pub const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
";

/// Appends frames to the streams of their recipients' nodes, in the order given:
/// many frames (a batch the router formed from what was queued) cost one round
/// trip. A live node that reads the batch format (its liveness key holds
/// [`super::STREAM_FORMAT`]) gets what the call carries for it as **one** entry
/// (field `b1`: per frame, its uids joined by commas, LF, the frame's length in
/// bytes, LF, the frame), so Redis stores, and the node reads and trims, one entry
/// per call instead of one per frame. Any other node — one of the previous build
/// (its key holds `1`), or a dead node whose stream was not drained yet — gets
/// one plain entry per frame (`to`, `f`), which every build reads and drains; a
/// dead node's still come behind the frames already there, so the drain stores
/// them in order. Presence is looked up once per user and node per call, the
/// users' in one HMGET per 500 (nothing can change it while a script runs). A
/// frame for one user (the common case) takes no table of its own.
/// KEYS: online. ARGV: node-key prefix, queue prefix, the batch format marker,
/// then for each frame: its recipient count n, n uids, the frame text.
/// Returns, per frame, the uids with no node (offline, or on a dead node already
/// drained) joined by commas ('' for none): the caller stores it for those.
pub const ROUTE: &str = r"
local where = {}
local mode = {}
local want = {}
local argc = #ARGV
local i = 4
while i <= argc do
  local n = tonumber(ARGV[i])
  for j = i + 1, i + n do
    local uid = ARGV[j]
    if where[uid] == nil then
      where[uid] = false
      want[#want + 1] = uid
    end
  end
  i = i + n + 2
end
for k = 1, #want, 500 do
  local chunk = {}
  for m = k, math.min(k + 499, #want) do chunk[#chunk + 1] = want[m] end
  local nodes = redis.call('HMGET', KEYS[1], unpack(chunk))
  for m = 1, #chunk do
    local node = nodes[m]
    if node then
      local md = mode[node]
      if md == nil then
        local v = redis.call('GET', ARGV[1] .. node)
        if v == ARGV[3] then
          md = 'batch'
        elseif v or redis.call('EXISTS', ARGV[2] .. node) == 1 then
          md = 'plain'
        else
          md = 'gone'
        end
        mode[node] = md
      end
      if md ~= 'gone' then where[chunk[m]] = node end
    end
  end
end
local out = {}
local parts = {}
local count = {}
local order = {}
local function pack(node, to, frame)
  local p = parts[node]
  local k = count[node]
  if not p then
    p = {}; parts[node] = p; k = 0; order[#order + 1] = node
  end
  p[k + 1] = to; p[k + 2] = '\n'; p[k + 3] = #frame; p[k + 4] = '\n'; p[k + 5] = frame
  count[node] = k + 5
end
-- A frame for `to` (one uid or a comma-separated list) on `node`: into the node's
-- batch entry, or an entry of its own for a node of the previous build.
local function emit(node, to, frame)
  if mode[node] == 'batch' then
    pack(node, to, frame)
  else
    redis.call('XADD', ARGV[2] .. node, '*', 'to', to, 'f', frame)
  end
end
i = 4
while i <= argc do
  local n = tonumber(ARGV[i])
  local frame = ARGV[i + n + 1]
  if n == 1 then
    local uid = ARGV[i + 1]
    local node = where[uid]
    if not node then
      out[#out + 1] = uid
    else
      out[#out + 1] = ''
      emit(node, uid, frame)
    end
  else
    local bynode = {}
    local missed = {}
    for j = i + 1, i + n do
      local node = where[ARGV[j]]
      if node then
        local t = bynode[node]
        if not t then t = {}; bynode[node] = t end
        t[#t + 1] = ARGV[j]
      else
        missed[#missed + 1] = ARGV[j]
      end
    end
    for node, uids in pairs(bynode) do
      emit(node, table.concat(uids, ','), frame)
    end
    out[#out + 1] = table.concat(missed, ',')
  end
  i = i + n + 2
end
for _, node in ipairs(order) do
  redis.call('XADD', ARGV[2] .. node, '*', ARGV[3], table.concat(parts[node]))
end
return out
";

/// Asks a live node to deliver what is stored for some users: a notice in its
/// stream, behind the frames already routed there. KEYS: node:node, q:node.
/// ARGV: user ids joined by commas. Returns 0 (and adds nothing) if the node is dead.
pub const FLUSH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], '*', 'flush', ARGV[1])
return 1
";

/// Forgets what an earlier process with this node id left: presence entries that
/// still point here and the user set (a restart with a fixed `--node-id` would
/// otherwise keep its old users "online"). KEYS: online, nodeusers:me. ARGV: me.
pub const RESET: &str = concat!(
    forget_fn!(),
    r"
forget(KEYS[1], KEYS[2], ARGV[1])
return 1
"
);

/// Where each user is online: a live node id, or "".
/// KEYS: online. ARGV: node-key prefix, uid...
pub const LOCATE: &str = r"
local out = {}
for i = 2, #ARGV do
  local node = redis.call('HGET', KEYS[1], ARGV[i])
  if node and redis.call('EXISTS', ARGV[1] .. node) == 1 then
    out[#out + 1] = node
  else
    out[#out + 1] = ''
  end
end
return out
";

/// Keeps this node alive. KEYS: node:me, nodes. ARGV: ttl ms, me, the stream
/// format this node reads (the key's value; see `ROUTE`).
/// Returns 1 if the node key still existed, 0 if it had expired or Redis lost it
/// (then the node must re-claim its users).
pub const HEARTBEAT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return existed
";

/// Forgets dead nodes: their presence entries, user sets and registrations — but
/// only once their streams are drained. KEYS: nodes, online. ARGV: key prefix with
/// its trailing ':'. Returns {forgotten count, {dead nodes whose streams need a drain}}.
pub const SWEEP: &str = concat!(
    forget_fn!(),
    r"
local swept = 0
local undrained = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'node:' .. node) == 0 then
    if redis.call('EXISTS', ARGV[1] .. 'q:' .. node) == 1 then
      undrained[#undrained + 1] = node
    else
      forget(KEYS[2], ARGV[1] .. 'nodeusers:' .. node, node)
      redis.call('SREM', KEYS[1], node)
      swept = swept + 1
    end
  end
end
return {swept, undrained}
"
);

/// A drain step's read: the next entries of a dead node's stream, if this node
/// still holds the drain lock (extended here) and the node is still dead.
/// KEYS: node:node, q:node, drain:node. ARGV: me, count, lock ttl ms.
/// Returns {0, entries}, or {-1, {}} when the node is alive, {-2, {}} when the
/// lock is lost.
pub const DRAIN_TAKE: &str = r"
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return {-2, {}}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {-1, {}}
end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {0, redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', ARGV[2])}
";

/// After a drain step stored some entries of a dead node's stream: deletes them and,
/// when the stream is empty, the stream itself, the node's dseq records and its
/// presence entries.
/// KEYS: q:node, node:node, online, nodeusers:node, nodes, drain:node, qa:node.
/// ARGV: node, me, entry id...
/// Returns 1 when the node is forgotten, 0 when entries remain, -1 when the node is
/// alive again (it was only late with its heartbeat: it reads its stream itself;
/// what this step stored it may deliver too), -2 when the lock was lost.
pub const DRAINED: &str = concat!(
    forget_fn!(),
    r"
if redis.call('GET', KEYS[6]) ~= ARGV[2] then
  return -2
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
if #ARGV > 2 then
  redis.call('XDEL', KEYS[1], unpack(ARGV, 3))
end
if redis.call('XLEN', KEYS[1]) > 0 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[7])
forget(KEYS[3], KEYS[4], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
return 1
"
);

/// Releases a lock if this node still holds it. KEYS: lock. ARGV: me.
pub const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A clean leave: drops this node's users (only those still pointing at it), its
/// user set and liveness key. The node stays registered while its stream exists, so
/// that if its own last drain fails, another node's sweep drains it.
/// KEYS: online, nodeusers:me, node:me, nodes, q:me. ARGV: me.
pub const LEAVE: &str = concat!(
    forget_fn!(),
    r"
forget(KEYS[1], KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
if redis.call('EXISTS', KEYS[5]) == 0 then
  redis.call('SREM', KEYS[4], ARGV[1])
end
return 1
"
);
