//! The Lua scripts the bus runs in Redis: each presence or routing step is one
//! atomic round trip.
//!
//! Keys, under a prefix `P` (default `chat`):
//! - `P:online` — hash user id → node id: where each user is logged in;
//! - `P:node:<node>` — exists while the node is alive (refreshed, with a TTL);
//! - `P:nodes` — set of node ids that registered, for the dead-node sweep;
//! - `P:nodeusers:<node>` — set of the node's users, for the sweep and resync;
//! - channels `P:ch:<node>` (one per node) and `P:ch:all` (broadcast).

/// Claims a user for this node unless another live node has it.
/// KEYS: online, nodeusers:me. ARGV: uid, me, node-key prefix.
/// Returns "" on success, else the node that has the user.
pub const CLAIM: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and cur ~= ARGV[2] and redis.call('EXISTS', ARGV[3] .. cur) == 1 then
  return cur
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return ''
";

/// Releases a user if this node holds it. KEYS: online, nodeusers:me. ARGV: uid, me.
pub const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
";

/// Publishes a frame to the nodes of the given users, one message per node.
/// KEYS: online. ARGV: node-key prefix, channel prefix, frame text, uid...
/// Returns the uids that no live subscriber received (offline, dead node, or a
/// node whose subscriber is gone): the caller stores those.
pub const ROUTE: &str = r"
local bynode = {}
local missed = {}
for i = 4, #ARGV do
  local uid = ARGV[i]
  local node = redis.call('HGET', KEYS[1], uid)
  if node and redis.call('EXISTS', ARGV[1] .. node) == 1 then
    local t = bynode[node]
    if not t then t = {}; bynode[node] = t end
    t[#t + 1] = uid
  else
    missed[#missed + 1] = uid
  end
end
for node, uids in pairs(bynode) do
  local payload = cjson.encode({t = 'm', to = uids, f = ARGV[3]})
  if redis.call('PUBLISH', ARGV[2] .. node, payload) == 0 then
    for _, u in ipairs(uids) do missed[#missed + 1] = u end
  end
end
return missed
";

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

/// Keeps this node alive. KEYS: node:me, nodes. ARGV: ttl ms, me.
/// Returns 1 if the node key still existed, 0 if it had expired or Redis lost it
/// (then the node must re-claim its users).
pub const HEARTBEAT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return existed
";

/// Forgets dead nodes: their presence entries, user sets and registrations.
/// KEYS: nodes, online. ARGV: key prefix with its trailing ':'.
pub const SWEEP: &str = r"
local swept = 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'node:' .. node) == 0 then
    local setkey = ARGV[1] .. 'nodeusers:' .. node
    for _, uid in ipairs(redis.call('SMEMBERS', setkey)) do
      if redis.call('HGET', KEYS[2], uid) == node then
        redis.call('HDEL', KEYS[2], uid)
      end
    end
    redis.call('DEL', setkey)
    redis.call('SREM', KEYS[1], node)
    swept = swept + 1
  end
end
return swept
";

/// A clean leave: drops this node's users (only those still pointing at it), its
/// user set, its liveness key and registration. KEYS: online, nodeusers:me, node:me,
/// nodes. ARGV: me.
pub const LEAVE: &str = r"
for _, uid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('HGET', KEYS[1], uid) == ARGV[1] then
    redis.call('HDEL', KEYS[1], uid)
  end
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SREM', KEYS[4], ARGV[1])
return 1
";
