//! [`RedisStore`]: sessions in Redis or Redis Cluster, one round trip per operation.
//!
//! The public documentation is on the type; see [`RedisStore`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration as StdDuration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use ::redis::{Cmd, ErrorKind, RedisError, Script, ServerErrorKind, Value};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::Expiry;
use crate::id::SessionKey;
use crate::record::{ChangeSet, RECORD_VERSION, Record, check_depth};
use crate::store::{Renamed, Saved, SessionInfo, SessionStore, StoreError, StoreErrorKind};

/// How many commands [`delete_expired`](SessionStore::delete_expired) and the owner index keep in
/// flight at once.
const BATCH: usize = 128;

/// Shared by every script: the deadline of a session and its metadata (the field `m`, see
/// [`pack_meta`]).
const LUA_PRELUDE: &str = r"
local function deadline(i, a)
  if a and a < i then return a end
  return i
end
-- The idle and absolute deadlines of the session at key (numbers), then its metadata field in
-- four parts: the idle deadline, the absolute deadline, 'created:version:' and the expiry policy.
-- Nothing when there is no session or its metadata is unreadable.
local function meta(key)
  local m = redis.call('HGET', key, 'm')
  if not m then return nil end
  local i, a, cv, e = string.match(m, '^(%-?%d+):(%-?%d*):(%-?%d+:%d+:)(.+)$')
  if not i then return nil end
  local absolute = nil
  if a ~= '' then absolute = tonumber(a) end
  return tonumber(i), absolute, i, a, cv, e
end
local function each_chunk(cmd, key, list, from, to)
  local i = from
  while i <= to do
    local j = math.min(i + 799, to)
    redis.call(cmd, key, unpack(list, i, j))
    i = j + 1
  end
end
-- Deletes the fields of key not written by the field/value pairs list[from..to]; with data_only,
-- only data fields ('d:...').
local function delete_others(key, list, from, to, data_only)
  local keep = {}
  for j = from, to, 2 do keep[list[j]] = true end
  local stale = {}
  for _, f in ipairs(redis.call('HKEYS', key)) do
    if not keep[f] and (not data_only or string.sub(f, 1, 2) == 'd:') then
      stale[#stale + 1] = f
    end
  end
  each_chunk('HDEL', key, stale, 1, #stale)
end
local function expire_at(key, d, now)
  local ttl = d - now
  if ttl <= 0 then redis.call('DEL', key) else redis.call('PEXPIRE', key, ttl) end
end
-- The rename fence of the session at key (the field 'f', '<until>:<new key>', see
-- LUA_RENAME_FENCE): 'held' while a rename holds the session, 'stale' once its time has passed
-- (the rename died, or is too slow and will fail), nil when there is none.
local function fence(key, now)
  local f = redis.call('HGET', key, 'f')
  if not f then return nil end
  local t = tonumber(string.match(f, '^(%-?%d+):'))
  if t and now < t then return 'held' end
  return 'stale'
end
";

/// KEYS[1] session; ARGV[1] now, ARGV[2] deadline, ARGV[3..] field/value pairs. 0 when a live
/// session is there, unless it is exactly the one this call writes: the cluster client sends a
/// script again when the connection dropped before its reply, and the second run must report
/// what the first did (IDs are 256-bit random, so no other create writes the same key).
///
/// The scripts write with `HSET` before they delete anything: Redis refuses a script's `HSET` when
/// it is out of memory (`maxmemory` with `noeviction`) only while the script has not written yet,
/// so a delete first, even of nothing, would let the script grow a full Redis.
const LUA_CREATE: &str = r"
local now = tonumber(ARGV[1])
local i, a = meta(KEYS[1])
if i and now < deadline(i, a) then
  if redis.call('HLEN', KEYS[1]) * 2 ~= #ARGV - 2 then return 0 end
  for n = 3, #ARGV, 2 do
    if redis.call('HGET', KEYS[1], ARGV[n]) ~= ARGV[n + 1] then return 0 end
  end
  return 1
end
local ttl = tonumber(ARGV[2]) - now
if ttl <= 0 then
  redis.call('DEL', KEYS[1])
  return 1
end
each_chunk('HSET', KEYS[1], ARGV, 3, #ARGV)
-- Replacing a dead or unreadable record: drop what it had beyond the new fields.
if redis.call('HLEN', KEYS[1]) > (#ARGV - 2) / 2 then
  delete_others(KEYS[1], ARGV, 3, #ARGV, false)
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
";

/// KEYS[1] session; ARGV[1] now, ARGV[2] cleared (0/1), ARGV[3] new idle deadline or '', ARGV[4]
/// owner set (0/1), ARGV[5] new expiry policy (JSON) or '', ARGV[6] the policy the idle deadline
/// was worked out from (JSON, see `ChangeSet::deadline_basis`) or '', ARGV[7] n, ARGV[8..7+n]
/// fields to delete, then field/value pairs to set. Returns 0 when gone (or held by a rename); 1
/// when applied; 2 when applied but the idle deadline, as the stored policy is not ARGV[6]; when
/// the owner was set and the session has an absolute deadline, that deadline, ':' and the 1 or 2
/// (a string).
const LUA_SAVE: &str = r"
local now = tonumber(ARGV[1])
local key = KEYS[1]
local i, a, i_text, a_text, cv, e = meta(key)
if not i or now >= deadline(i, a) then return 0 end
-- A rename is moving the session: gone for writers, as it will be once moved.
local fenced = fence(key, now)
if fenced == 'held' then return 0 end
local n = tonumber(ARGV[7])
local pairs_from = 8 + n
-- A deadline worked out from a policy another request has replaced since is dropped.
local new_idle, status = ARGV[3], 1
if new_idle ~= '' and ARGV[5] == '' and ARGV[6] ~= '' and ARGV[6] ~= e then
  new_idle, status = '', 2
end
-- Writes first (see LUA_CREATE), then deletes: the same result, as the fields set and the
-- fields removed never overlap, and a clear keeps only the data fields just set.
if new_idle ~= '' or ARGV[5] ~= '' then
  -- The metadata changes: written in the same call as the first values.
  local idle = i_text
  if new_idle ~= '' then idle = new_idle end
  if ARGV[5] ~= '' then e = ARGV[5] end
  local last = math.min(#ARGV, pairs_from + 797)
  redis.call('HSET', key, 'm', idle .. ':' .. a_text .. ':' .. cv .. e,
    unpack(ARGV, pairs_from, last))
  each_chunk('HSET', key, ARGV, last + 1, #ARGV)
else
  each_chunk('HSET', key, ARGV, pairs_from, #ARGV)
end
if ARGV[2] == '1' then delete_others(key, ARGV, pairs_from, #ARGV, true) end
each_chunk('HDEL', key, ARGV, 8, pairs_from - 1)
-- A stale fence is broken (after the writes, see LUA_CREATE): the rename that set it must not
-- complete now, as its copy lacks this write.
if fenced then redis.call('HDEL', key, 'f') end
if new_idle ~= '' then
  -- The deadline moved: so does the TTL. Otherwise the TTL already matches it.
  i = tonumber(new_idle)
  expire_at(key, deadline(i, a), now)
end
-- The stored digits: `tostring` prints large numbers in exponent form.
if ARGV[4] == '1' and a then return a_text .. ':' .. status end
return status
";

/// KEYS[1] session; ARGV[1] now, ARGV[2] new idle deadline, ARGV[3] the policy it was worked out
/// from (JSON). 0 when gone (or held by a rename), 2 when the stored policy is another (nothing
/// written), 1 when touched.
const LUA_TOUCH: &str = r"
local now = tonumber(ARGV[1])
local i, a, _, a_text, cv, e = meta(KEYS[1])
if not i or now >= deadline(i, a) then return 0 end
local fenced = fence(KEYS[1], now)
if fenced == 'held' then return 0 end
if e ~= ARGV[3] then return 2 end
redis.call('HSET', KEYS[1], 'm', ARGV[2] .. ':' .. a_text .. ':' .. cv .. e)
if fenced then redis.call('HDEL', KEYS[1], 'f') end
expire_at(KEYS[1], deadline(tonumber(ARGV[2]), a), now)
return 1
";

/// KEYS[1] session; ARGV[1] now. 1 when deleted.
const LUA_DELETE_IF_DEAD: &str = r"
local i, a = meta(KEYS[1])
if i and tonumber(ARGV[1]) >= deadline(i, a) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// KEYS[1] session; ARGV[1] owner. 1 deleted, 0 missing, -1 owned by someone else (or nobody);
/// the rename fence (a string) when the session was deleted while it carried one.
const LUA_DELETE_IF_OWNER: &str = r"
local o, f = unpack(redis.call('HMGET', KEYS[1], 'o', 'f'))
if o == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if f then return f end
  return 1
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return -1
";

/// Step 1 of a rename, on the old key. KEYS[1] session; ARGV[1] now, ARGV[2] the fence
/// (`<until>:<new key hex>`, see [`rename_fence`]). 0 when the session is gone or expired, or
/// held by another rename; otherwise the fence is set and the reply is the session's fields (as
/// `HGETALL`). A stale fence (of a rename that died) is replaced. The same fence already there
/// is this rename's own: the cluster client sends a script again when the connection dropped
/// before its reply came, and the second run goes on like the first.
const LUA_RENAME_FENCE: &str = r"
local now = tonumber(ARGV[1])
local i, a = meta(KEYS[1])
if not i or now >= deadline(i, a) then return 0 end
if redis.call('HGET', KEYS[1], 'f') == ARGV[2] then return redis.call('HGETALL', KEYS[1]) end
if fence(KEYS[1], now) == 'held' then return 0 end
redis.call('HSET', KEYS[1], 'f', ARGV[2])
return redis.call('HGETALL', KEYS[1])
";

/// Step 3 of a rename, on the old key, once the new record is written. KEYS[1] session, KEYS[2]
/// its rename marker (see [`RENAME_MARKER_MS`]); ARGV[1] the fence. 1 when the session still
/// carried this fence and is deleted (the rename is done), leaving the marker; 1 too when the
/// marker says this rename was done already (the cluster client sends a script again when the
/// connection dropped before its reply came); 0 when it is gone (deleted or revoked meanwhile);
/// -1 when it is there without this fence (a write broke the fence once its time had passed, or
/// another rename replaced it). The marker is written before the delete: under `maxmemory`,
/// Redis refuses a script at its first write, and nothing is deleted then.
const LUA_RENAME_COMMIT: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then return 1 end
local f = redis.call('HGET', KEYS[1], 'f')
if f == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  redis.call('DEL', KEYS[1])
  return 1
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return -1
";

/// After step 3 of a rename failed without an answer (a timeout, a dropped connection), whether
/// it ran: KEYS[1] session, KEYS[2] its rename marker; ARGV[1] the fence. 1 when the marker says
/// it did (the rename is done); 0 when the session still carries this fence (it did not; the
/// fence is removed, so it cannot run later either); -1 otherwise (the session is gone, or a
/// write broke the fence: the rename did not happen).
const LUA_RENAME_SETTLE: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then return 1 end
if redis.call('HGET', KEYS[1], 'f') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'f')
  return 0
end
return -1
";

/// A rename that gives up: KEYS[1] session; ARGV[1] the fence, removed if it is still there.
const LUA_RENAME_RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'f') == ARGV[1] then redis.call('HDEL', KEYS[1], 'f') end
return 1
";

/// The end of the owner-index scripts, with `now` set to ARGV[1]: drops the entries past their
/// absolute deadline and gives the index the TTL of the last of them (none while an entry has
/// no absolute deadline: score +inf).
macro_rules! lua_index_expiry {
    () => {
        r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCOUNT', KEYS[1], '+inf', '+inf') > 0 then
  redis.call('PERSIST', KEYS[1])
else
  local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if top[2] then redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(top[2]) - now)) end
end
return 1
"
    };
}

/// KEYS[1] owner index; ARGV[1] now, ARGV[2] score (absolute deadline or +inf), ARGV[3] member.
const LUA_INDEX_ADD: &str = concat!(
    r"
local now = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
",
    lua_index_expiry!()
);

/// KEYS[1] owner index; ARGV[1] now, ARGV[2..] members to remove. The index's TTL is worked out
/// again: removing the last entry without an absolute deadline lets the index expire.
const LUA_INDEX_REMOVE: &str = concat!(
    r"
local now = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
",
    lua_index_expiry!()
);

/// One server-side script: its source (sent after `NOSCRIPT`) and its SHA-1 (computed once).
struct Lua {
    script: Script,
    source: String,
}

impl Lua {
    fn new(body: &str) -> Self {
        let source = format!("{LUA_PRELUDE}{body}");
        Self {
            script: Script::new(&source),
            source,
        }
    }
}

/// The store's scripts.
struct Scripts {
    create: Lua,
    save: Lua,
    touch: Lua,
    delete_if_dead: Lua,
    delete_if_owner: Lua,
    rename_fence: Lua,
    rename_commit: Lua,
    rename_settle: Lua,
    rename_release: Lua,
    index_add: Lua,
    index_remove: Lua,
}

impl Scripts {
    fn new() -> Self {
        Self {
            create: Lua::new(LUA_CREATE),
            save: Lua::new(LUA_SAVE),
            touch: Lua::new(LUA_TOUCH),
            delete_if_dead: Lua::new(LUA_DELETE_IF_DEAD),
            delete_if_owner: Lua::new(LUA_DELETE_IF_OWNER),
            rename_fence: Lua::new(LUA_RENAME_FENCE),
            rename_commit: Lua::new(LUA_RENAME_COMMIT),
            rename_settle: Lua::new(LUA_RENAME_SETTLE),
            rename_release: Lua::new(LUA_RENAME_RELEASE),
            index_add: Lua::new(LUA_INDEX_ADD),
            index_remove: Lua::new(LUA_INDEX_REMOVE),
        }
    }
}

/// The connection: one Redis (through a reconnecting manager) or a cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Sends `cmd`; an error reply is an `Err`.
    async fn query(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        let reply = match self {
            // The manager's own method: `cmd.query_async` would box a 1.3 KB future per command.
            Conn::Single(conn) => conn.clone().send_packed_command(cmd).await?,
            Conn::Cluster(conn) => conn.clone().req_packed_command(cmd).await?,
        };
        // Only the reply itself can be an error: no command this store sends (nor its scripts,
        // which return numbers and strings) nests one in an array, so the whole reply is not
        // walked for one, as `Value::extract_error` would.
        match reply {
            Value::ServerError(error) => Err(error.into()),
            reply => Ok(reply),
        }
    }
}

/// Sessions in Redis or Redis Cluster, one round trip per operation.
///
/// Cheap to clone: clones share the connection.
///
/// # When to choose it
///
/// When several processes or machines serve the same app and must share sessions, and a Redis is
/// already part of the deployment. Every operation on one session is one round trip, and the change
/// set of a request is merged into the stored session by a script on the server, so concurrent
/// requests of one session that write different keys both keep their writes. Redis expires each
/// session by itself at its deadline.
///
/// # Why the `redis` crate
///
/// The store talks to Redis through [`redis`] (redis-rs): the most widely used Redis client for
/// Rust, actively maintained, with the two things a session store needs from a client built in: a [`ConnectionManager`](::redis::aio::ConnectionManager) (one
/// multiplexed connection that pipelines concurrent requests and reconnects by itself after an
/// outage) and an async cluster client that follows slot moves and refreshes the topology. `fred` is
/// a fine alternative with more features; redis-rs was chosen for its smaller dependency tree and
/// because apps that already use Redis most likely use it, so they can hand their own client or
/// connection to [`RedisStore::from_client`] or [`RedisStore::from_connection_manager`].
///
/// # How sessions are kept
///
/// Each session is one Redis **hash** under `<prefix>s:{<key>}`, where `<key>` is the 64-hex-digit
/// [`SessionKey`] (the SHA-256 of the session ID, never the ID itself: a dump of Redis yields no
/// usable cookie, SECURITY.md 6). Its fields are `m`, the metadata in one field
/// (`<idle deadline>:<absolute deadline>:<created-at>:<format version>:<expiry policy>`, the times
/// in Unix milliseconds, the absolute deadline empty when there is none, the policy as JSON), `o`,
/// the owner, if any, one field `d:<name>` per session value, holding that value's JSON, and, only
/// while a rename moves the session, `f`, its fence (see [Renaming](#renaming)). Since
/// every value is its own field, the server-side scripts never parse JSON: they only add, replace
/// and delete fields, and rewrite the numbers at the start of `m`. The metadata is one field, not
/// five, because the client parses a reply element by element, at about 3,000 instructions each:
/// with one field, a counter app's returning-visitor request runs 76,800 instructions instead of
/// 92,200 (callgrind, the whole app process).
///
/// | operation | round trips | how |
/// |---|---|---|
/// | load | 1 | `HGETALL` |
/// | create | 1 (+1 with an owner) | script: refuse if a live session is there, else write the hash |
/// | save | 1 (+2 when it sets an owner) | script: refuse if gone or expired, else apply the change set |
/// | touch | 1 | script: move the idle deadline and the TTL, nothing else, if the stored expiry policy is the one the deadline was worked out from ([`Saved::PolicyChanged`] otherwise; a save checks it too) |
/// | delete | 1 | `DEL` |
/// | rename (a new ID, [`cycle_id`](crate::Session::cycle_id)) | 3 (+1 for an owner the request did not set) | see [Renaming](#renaming) |
/// | list an owner's sessions | 3 (+1 per 128 sessions beyond the first 128) | index read, parallel batches of 128, index prune |
/// | revoke an owner's sessions | 3 (+2, +1 per 128 sessions beyond the first 128) | index read, parallel batches of 128, index read again (with the prune); see [Owner index](#owner-index) |
///
/// Scripts are called with `EVALSHA` and sent in full (`EVAL`) only when the server does not have
/// them cached yet (after a restart or `SCRIPT FLUSH`).
///
/// Liveness is always judged by the `now` the layer passes in, never by Redis' clock alone. The
/// Redis TTL is set to exactly the time left until the session's deadline (the earlier of its idle
/// and absolute deadlines) on every create and touch and on every save that moves the deadline (a
/// save that leaves it leaves the TTL, which already matches), so Redis drops a session when it
/// expires, and a save or touch of an expired session writes nothing and reports
/// [`Saved::Gone`]: a session deleted or expired meanwhile is never brought back
/// (SECURITY.md 11).
///
/// # Owner index
///
/// The sessions of an owner (see [`Session::set_owner`](crate::Session::set_owner)) are indexed
/// in a sorted set under `<prefix>o:{<SHA-256 of the owner>}`, whose members are session keys and
/// whose scores are the sessions' absolute deadlines. The index entry is written *before* the
/// session (so the index never misses a session; at worst it names one that is gone), and
/// listing or revoking checks each named session, so its answers are exact. Entries past their
/// absolute deadline are dropped whenever the index is written, the index key itself expires with
/// the last absolute deadline it holds, and entries of sessions that are gone are dropped when the
/// index is listed or revoked (once they are ten minutes old: a younger entry may name a session
/// that is still being created, which a concurrent revoke must not forget). Gone means no longer
/// in Redis: a session past its idle deadline by the listing caller's clock is left out of the
/// list but keeps its entry, since a host whose clock is behind may still serve it and move the
/// deadline; its record's TTL removes it when its deadline passes. Without an absolute lifetime
/// ([`absolute_lifetime(None)`](crate::SessionLayerBuilder::absolute_lifetime)) entries have no
/// deadline and the index key does not expire: they are dropped only when the index is listed or
/// revoked.
///
/// Revoking all sessions of an owner ([`delete_owner`](SessionStore::delete_owner)) takes three
/// round trips for up to 128 sessions (one more per further 128): it reads the index, deletes
/// what it names in parallel batches of 128, and reads the index again (while pruning it) to catch a session that a concurrent
/// [rename](#renaming) moved to a key the first read did not list; each further read that finds
/// such a key costs two more. An entry written in the last ten minutes whose session is missing
/// may belong to a session still being written (a login, a rename), so it is tried once more
/// after the next read: two more round trips in the ten minutes after a session of the owner
/// was created, renamed or deleted. A session it deletes while a rename holds it (see below) is
/// counted once, and the copy that rename may have written is deleted too.
///
/// # Renaming
///
/// [`rename`](SessionStore::rename) (the layer's [`cycle_id`](crate::Session::cycle_id), at a
/// login) moves a session to a new key, whose hash tag puts it in another cluster slot, so no
/// script can do it in one step. It takes three round trips (four when the session has an owner
/// the rotating request did not set, see step 1):
///
/// 1. A script on the old key checks that the session is live, sets a **fence** on it (the field
///    `f`: `<until>:<new key>`, `until` five seconds ahead by the layer's clock) and returns its
///    fields. The owner index entry of the new key is written at the same time, on its own key,
///    when the request names the owner (a login that sets it); otherwise it is written for the
///    owner those fields name, once they are back: one round trip more.
/// 2. The change set is applied to that copy, and the result is written under the new key by the
///    create script (an expired record there is replaced; a live one answers
///    [`Renamed::Taken`], after the fence is released).
/// 3. A script on the old key deletes it if it still carries this rename's fence, and leaves a
///    marker in its place (`<prefix>r:{<old key>}`, for a minute): the rename is done
///    ([`Renamed::Applied`]). If the session was deleted meanwhile (a logout, a revocation),
///    the new record is deleted again and the answer is [`Renamed::Gone`]: a session that ended
///    is never brought back under a new ID (SECURITY.md 11, 12).
///
/// While the fence holds, the session is gone for writers: a save or touch of it (a concurrent
/// request) answers [`Saved::Gone`] and writes nothing, as it would once the session has moved,
/// and another rename answers [`Renamed::Gone`]. Loads still return it, so concurrent requests
/// that only read work as usual. So every save either lands before step 1 and is carried to the
/// new key, or is refused: none answered [`Saved::Applied`] is lost. A save or touch that finds a
/// fence past its time writes as usual and removes the fence, and the rename that set it then
/// fails at step 3 with an error rather than drop that write (after five seconds: a Redis that
/// slow fails requests anyway). [`list_owner`](SessionStore::list_owner) lists the session under
/// its old key until the rename is done, not the copy under the new key as well.
///
/// If a step fails (Redis unreachable, a timeout), the rename removes what it wrote, best effort
/// (the fence, the new record and its index entry), and answers the error; the session stays
/// under its old key, and the layer keeps the old cookie. Step 3 may have run although its
/// answer never came (lost with a dropped connection, or Redis stalled past the timeout and ran
/// it afterwards): the rename then asks, by the marker, and answers [`Renamed::Applied`] if it
/// ran (a retried step 3 finds the marker too, and answers the same). Only if that question
/// goes unanswered as well does the rename keep the new record and answer the error: the old
/// ID then names no session if step 3 ran (the user signs in again), and the new record, which
/// no client holds, expires at the session's deadline. If the app process dies between
/// steps 1 and 3, the fence runs out after five seconds (until then the session's writes are
/// refused, its reads work), and a record may be left under the new key: no client has its ID,
/// so it is never used, and it expires at the session's deadline (while the old key still
/// carries the fence, the owner's listing leaves it out and a revocation deletes it with the
/// session).
///
/// # Redis Cluster
///
/// Construct the store with [`RedisStore::open_cluster`] or [`RedisStore::from_cluster_client`].
/// Every key carries a hash tag (the `{...}` part), so all data of one session is in one slot and
/// each script touches one key only: the scripts are valid in a cluster. The owner index of one
/// owner is one key too; it is written in its own round trip, before the session. A rename, whose
/// two keys are in different slots, is three scripts of one key each (see [Renaming](#renaming)),
/// and works the same way on a single Redis. A prefix must not contain `{` or `}`, so it cannot
/// change the slot of a key.
///
/// # Outages
///
/// A failing Redis makes each store operation fail with a [`StoreError`] of kind
/// [`Backend`](crate::StoreErrorKind::Backend), which the layer turns into an error response (the
/// handler never runs with an empty session that could overwrite the real one, SECURITY.md 28). The
/// connection comes back by itself once Redis is reachable again; no restart of the app is needed.
/// [`RedisStore::open`] uses a one-second connect timeout, a two-second response timeout and up to
/// three quick reconnection attempts, so requests fail within a few seconds during an outage; pass your own
/// [`ConnectionManager`](::redis::aio::ConnectionManager) to change that. A Redis that stops
/// answering without closing its connections (stuck, swapping, stopped) gives the same error
/// responses once the response timeout passes; when it answers again, each reply still reaches
/// the request that sent its command (tested by stopping the server with `SIGSTOP` while requests
/// of two sessions wait, then letting it run). Redis cannot be told to drop a command it has
/// received: a save whose request already failed this way is still applied when the server runs
/// again (only what that request changed, merged as usual, and never into a session that ended).
///
/// In a cluster, a crashed master's sessions fail the same way while the other masters' sessions
/// keep working (until the cluster declares itself down, under Redis' default
/// `cluster-require-full-coverage yes`); once the master is back, or a replica took over, requests
/// succeed again with no restart of the app. When a replica takes over, the sessions it had
/// received before the crash are served from it with their data; the client finds the new master
/// by itself. These cases are tested against real servers: a killed and restarted standalone
/// Redis, a crashed and rejoined master of a 3-master cluster, and a crashed master of a cluster
/// with one replica per master (node timeout one second), whose sessions keep their counts once
/// the replica is promoted.
///
/// # Deployment notes
///
/// - **TLS**: use a `rediss://` URL, and enable a TLS feature of the `redis` crate in your app
///   (`redis = { version = "1.8", features = ["tokio-rustls-comp"] }` or `tokio-native-tls-comp`);
///   Cargo's feature unification turns it on for this store too. Credentials go in the URL
///   (`rediss://user:password@host:6380/0`); [`RedisStore`]'s `Debug` never prints them.
/// - **Persistence**: with Redis' defaults (RDB snapshots) a Redis restart loses the sessions written
///   since the last snapshot: those users are logged out, nothing worse (a lost session is never
///   resurrected in a wrong state). `appendonly yes` with `appendfsync everysec` loses at most about a
///   second of writes; with no persistence at all (`save ""`, `appendonly no`) every Redis restart
///   logs everybody out. Replicas are asynchronous: a failover may likewise lose the last writes.
/// - **Memory policy**: prefer `maxmemory-policy noeviction`: a full Redis then refuses the writes
///   that would grow it (new sessions, saves), which become error responses, while sessions still
///   load and logging out (a delete) still works; the test suite checks this against a Redis over
///   its `maxmemory`. Deadline refreshes are writes too: while Redis stays full, active sessions
///   are not extended and end at their idle deadline. Under an eviction policy Redis may silently drop sessions (users
///   logged out) and owner indexes (after which "log out everywhere" misses sessions); give sessions
///   a Redis of their own or enough memory.
/// - **Keys and ACLs**: the store uses `<prefix>s:{…}` (sessions), `<prefix>o:{…}` (owner
///   indexes) and `<prefix>r:{…}` (the one-minute marker a rename leaves, see
///   [Renaming](#renaming)). A Redis user restricted by key pattern needs all three
///   (`~<prefix>*`), and `EVAL`/`EVALSHA`; without the last pattern, every login fails. Under
///   `volatile-ttl` eviction the short-lived markers go first, and a rename whose answer was
///   lost can then no longer tell that it ran (the session is lost, the user signs in again):
///   one more reason for `noeviction`.
/// - **Failover**: a replica's index entries may trail its master's (replication is
///   asynchronous), so a failover can lose the entry of a session written just before it, which
///   "log out everywhere" then misses until the session expires. A connection to a standalone
///   Redis that was demoted to a replica (behind a DNS name that now points elsewhere) keeps
///   getting `READONLY` errors for its writes until it reconnects: point the URL at a proxy or
///   Sentinel-aware endpoint that closes old connections, or restart the app.
/// - **Clocks**: TTLs are set relative to the layer's clock, so a Redis whose clock differs from the
///   app's does not shorten or extend sessions.
/// - **Cleanup**: Redis expires sessions by itself, so [`spawn_cleanup`](crate::spawn_cleanup) is
///   not needed with this store. [`delete_expired`](SessionStore::delete_expired) is implemented
///   (it `SCAN`s the keys under the prefix on every master) for the rare case of a layer clock
///   running ahead of the TTLs. It costs one script call per session key, live or not, and each
///   call starts its scan over: with many sessions, run it rarely, if at all. A key under the
///   prefix that is no session (another program's) is logged and skipped.
///
/// # Limits
///
/// - Same-key writes of concurrent requests are last-writer-wins (as in every store).
/// - Times are kept with millisecond precision.
/// - In a cluster, a rename's last step names two keys in one slot (the session and its rename
///   marker): while that slot is being migrated, Redis answers it `TRYAGAIN`, so a login
///   (`cycle_id`) of a session in that slot fails after the client's retries (a few seconds),
///   and keeps failing if a reshard stops halfway, until `redis-cli --cluster fix` closes it.
///   Loads and saves go on working.
/// - Requests that write to a session while its ID is being renamed (for a few milliseconds
///   at a login) find it gone and their changes are dropped (see [Renaming](#renaming)); if the
///   rename then fails, those changes are lost although the session goes on under its old ID.
/// - Setting an owner costs one or two more round trips (the owner index, written first); only
///   the requests that set it (a login) pay for them, and a `cycle_id` of a session that has one
///   (a privilege step-up after the login) pays one.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_satchel::{RedisStore, SessionLayer};
///
/// let store = RedisStore::open("redis://127.0.0.1:6379/").await?;
/// let layer = SessionLayer::new(store.clone());
/// # let _ = layer;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection holds the URL, which may carry a password: never printed.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field(
                "mode",
                &match self.conn {
                    Conn::Single(_) => "single",
                    Conn::Cluster(_) => "cluster",
                },
            )
            .finish_non_exhaustive()
    }
}

fn backend(message: &'static str) -> impl FnOnce(RedisError) -> StoreError {
    move |error| StoreError::backend(message, error)
}

fn config_error(message: &str) -> StoreError {
    StoreError::new(StoreErrorKind::Config, message)
}

/// The connection settings [`RedisStore::open`] and [`RedisStore::from_client`] use.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(StdDuration::from_secs(1)))
        .set_response_timeout(Some(StdDuration::from_secs(2)))
        .set_number_of_retries(3)
        .set_min_delay(StdDuration::from_millis(50))
        .set_max_delay(StdDuration::from_millis(500))
}

impl RedisStore {
    /// The key prefix used unless [`RedisStore::with_prefix`] sets another.
    pub const DEFAULT_PREFIX: &'static str = "satchel:";

    /// Connects to the Redis at `url` (`redis://[user:password@]host[:port][/db]`, or `rediss://`
    /// with a TLS feature of the `redis` crate enabled, see [Deployment notes](Self#deployment-notes)).
    ///
    /// # Errors
    ///
    /// A [`Config`](StoreErrorKind::Config) error for a malformed URL, a
    /// [`Backend`](StoreErrorKind::Backend) error when Redis cannot be reached.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let client = ::redis::Client::open(url).map_err(|error| {
            StoreError::new(StoreErrorKind::Config, "invalid Redis URL").with_source(error)
        })?;
        Self::from_client(client).await
    }

    /// Connects through an existing client, with a reconnecting connection manager (one-second
    /// connect timeout, two-second response timeout, up to three quick reconnection attempts
    /// before a request fails; the next request tries again).
    ///
    /// # Errors
    ///
    /// A [`Backend`](StoreErrorKind::Backend) error when Redis cannot be reached.
    pub async fn from_client(client: ::redis::Client) -> Result<Self, StoreError> {
        let manager = ConnectionManager::new_with_config(client, manager_config())
            .await
            .map_err(backend("could not connect to Redis"))?;
        Ok(Self::from_connection_manager(manager))
    }

    /// Uses an existing connection manager (with your own timeouts and retry settings).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_satchel::RedisStore;
    ///
    /// let client = redis::Client::open("redis://127.0.0.1/")?;
    /// let manager = redis::aio::ConnectionManager::new(client).await?;
    /// let store = RedisStore::from_connection_manager(manager).with_prefix("myapp:session:")?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub fn from_connection_manager(manager: ConnectionManager) -> Self {
        Self::with_conn(Conn::Single(manager))
    }

    /// Connects to a Redis Cluster through the given seed nodes (any subset of its masters).
    ///
    /// # Errors
    ///
    /// A [`Config`](StoreErrorKind::Config) error for malformed URLs, a
    /// [`Backend`](StoreErrorKind::Backend) error when the cluster cannot be reached.
    pub async fn open_cluster<'a>(
        urls: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, StoreError> {
        let client = ClusterClient::builder(urls)
            .connection_timeout(StdDuration::from_secs(1))
            .response_timeout(StdDuration::from_secs(2))
            .retries(3)
            .build()
            .map_err(|error| {
                StoreError::new(StoreErrorKind::Config, "invalid Redis Cluster URLs")
                    .with_source(error)
            })?;
        Self::from_cluster_client(client).await
    }

    /// Connects through an existing cluster client.
    ///
    /// Give the client a response timeout (`ClusterClientBuilder::response_timeout`, as
    /// [`open_cluster`](Self::open_cluster) does): a `ClusterClient` built with the defaults has
    /// none, and a node that stops answering then holds its requests forever.
    ///
    /// # Errors
    ///
    /// A [`Backend`](StoreErrorKind::Backend) error when the cluster cannot be reached.
    pub async fn from_cluster_client(client: ClusterClient) -> Result<Self, StoreError> {
        let conn = client
            .get_async_connection()
            .await
            .map_err(backend("could not connect to Redis Cluster"))?;
        Ok(Self::from_cluster_connection(conn))
    }

    /// Uses an existing cluster connection.
    pub fn from_cluster_connection(conn: ClusterConnection) -> Self {
        Self::with_conn(Conn::Cluster(conn))
    }

    fn with_conn(conn: Conn) -> Self {
        Self {
            conn,
            prefix: Arc::from(Self::DEFAULT_PREFIX),
            scripts: Arc::new(Scripts::new()),
        }
    }

    /// Sets the prefix of every key this store writes. Default: [`RedisStore::DEFAULT_PREFIX`] (`satchel:`).
    /// Give each app sharing a Redis its own prefix.
    ///
    /// # Errors
    ///
    /// A [`Config`](StoreErrorKind::Config) error if the prefix contains `{` or `}` (they would
    /// change which cluster slot a key is in) or is longer than 256 bytes.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Result<Self, StoreError> {
        let prefix = prefix.into();
        if prefix.contains(['{', '}']) {
            return Err(config_error(
                "a Redis key prefix must not contain `{` or `}`",
            ));
        }
        if prefix.len() > 256 {
            return Err(config_error("a Redis key prefix must be at most 256 bytes"));
        }
        self.prefix = Arc::from(prefix);
        Ok(self)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// The Redis key of a session: `<prefix>s:{<hex>}`.
    fn session_key(&self, key: &SessionKey) -> Vec<u8> {
        key_name(&self.prefix, b's', key)
    }

    /// The Redis key of the marker a done rename leaves on its old key (see
    /// [`LUA_RENAME_COMMIT`]): `<prefix>r:{<key hex>}`, in the session key's cluster slot.
    fn rename_marker_key(&self, key: &SessionKey) -> Vec<u8> {
        key_name(&self.prefix, b'r', key)
    }

    /// The Redis key of an owner's index: `<prefix>o:{<hex of SHA-256(owner)>}`.
    fn owner_key(&self, owner: &str) -> Vec<u8> {
        let digest: [u8; 32] = Sha256::digest(owner.as_bytes()).into();
        key_name(&self.prefix, b'o', &SessionKey::from_bytes(digest))
    }

    /// Runs `lua` by its SHA-1, sending it in full only if the server does not know it. `bytes`
    /// is about what `fill`'s arguments add up to: the command is encoded into a buffer of that
    /// size from the start rather than one grown argument by argument (each growth a `realloc`).
    async fn eval(
        &self,
        lua: &Lua,
        bytes: usize,
        fill: impl Fn(&mut Cmd),
    ) -> Result<Value, RedisError> {
        let mut cmd = Cmd::with_capacity(16, bytes + 160);
        cmd.arg("EVALSHA").arg(lua.script.get_hash());
        fill(&mut cmd);
        match self.conn.query(&cmd).await {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // EVAL runs it and caches it on the node that owns the key.
                let mut cmd = ::redis::cmd("EVAL");
                cmd.arg(&lua.source);
                fill(&mut cmd);
                self.conn.query(&cmd).await
            }
            other => other,
        }
    }

    /// Adds `member` (see [`index_member`]) to `owner`'s index with `score` (the absolute
    /// deadline, or `+inf`).
    async fn index_add(
        &self,
        owner: &str,
        member: &str,
        score: Option<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        let index = self.owner_key(owner);
        self.eval(&self.scripts.index_add, index.len() + member.len(), |cmd| {
            cmd.arg(1).arg(&index).arg(now);
            match score {
                Some(score) => cmd.arg(score),
                None => cmd.arg("+inf"),
            };
            cmd.arg(member);
        })
        .await
        .map_err(backend("Redis owner index update failed"))?;
        Ok(())
    }

    /// The sessions named by `owner`'s index, with the index key.
    async fn index_entries(&self, owner: &str) -> Result<(Vec<u8>, Vec<Indexed>), StoreError> {
        let index = self.owner_key(owner);
        let mut cmd = ::redis::cmd("ZRANGE");
        cmd.arg(&index).arg(0).arg(-1);
        let value = self
            .conn
            .query(&cmd)
            .await
            .map_err(backend("Redis owner index read failed"))?;
        let mut entries: Vec<(SessionKey, i64, Vec<u8>)> = into_list(value)
            .into_iter()
            .filter_map(into_bytes)
            .filter_map(|member| {
                let (key, added) = parse_member(&member)?;
                Some((key, added, member))
            })
            .collect();
        entries.sort_by_key(|e| e.0);
        // One entry per session (a session indexed twice has two members).
        let mut sessions: Vec<Indexed> = Vec::new();
        for (key, added, member) in entries {
            match sessions.last_mut() {
                Some(last) if last.key == key => {
                    last.newest_added = last.newest_added.max(added);
                    last.members.push(member);
                }
                _ => sessions.push(Indexed {
                    key,
                    newest_added: added,
                    members: vec![member],
                }),
            }
        }
        Ok((index, sessions))
    }

    /// Removes the members of `sessions` from the index `index`.
    async fn index_remove(
        &self,
        index: &[u8],
        sessions: &[&Indexed],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let members: Vec<&[u8]> = sessions
            .iter()
            .flat_map(|s| s.members.iter().map(Vec::as_slice))
            .collect();
        self.index_remove_members(index, &members, now_ms).await
    }

    /// Removes `members` from the index `index`, and sets the index's TTL again (see
    /// [`LUA_INDEX_REMOVE`]) from `now_ms`: the layer's clock, as the entries' scores are (the
    /// wall clock only where the caller has no other, in `delete_owner`).
    async fn index_remove_members(
        &self,
        index: &[u8],
        members: &[&[u8]],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        for chunk in members.chunks(1000) {
            let bytes = index.len() + chunk.iter().map(|m| m.len()).sum::<usize>();
            self.eval(&self.scripts.index_remove, bytes, |cmd| {
                cmd.arg(1).arg(index).arg(now_ms);
                for member in chunk {
                    cmd.arg(*member);
                }
            })
            .await
            .map_err(backend("Redis owner index prune failed"))?;
        }
        Ok(())
    }

    /// The masters to `SCAN`: one representative slot each (or none for a single Redis).
    async fn scan_targets(&self) -> Result<Vec<Option<u16>>, StoreError> {
        let Conn::Cluster(conn) = &self.conn else {
            return Ok(vec![None]);
        };
        let value = conn
            .clone()
            .route_command(
                ::redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .and_then(Value::extract_error)
            .map_err(backend("Redis CLUSTER SLOTS failed"))?;
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let mut targets = Vec::new();
        for range in into_list(value) {
            let mut items = into_list(range).into_iter();
            let (Some(Value::Int(start)), Some(_end), Some(master)) =
                (items.next(), items.next(), items.next())
            else {
                continue;
            };
            let mut node = into_list(master).into_iter();
            let host = node.next().and_then(into_bytes).unwrap_or_default();
            let port = match node.next() {
                Some(Value::Int(port)) => port,
                _ => 0,
            };
            let mut id = host;
            id.extend_from_slice(format!(":{port}").as_bytes());
            if seen.contains(&id) {
                continue;
            }
            seen.push(id);
            if let Ok(slot) = u16::try_from(start) {
                targets.push(Some(slot));
            }
        }
        // A cluster always has a master: none found is a reply this code cannot read, and a
        // sweep that scanned nothing must not pass for one that found nothing expired.
        if targets.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Backend,
                "unexpected CLUSTER SLOTS reply from Redis: no master found",
            ));
        }
        Ok(targets)
    }

    /// One `SCAN` page on `target`: the next cursor and the keys.
    async fn scan_page(
        &self,
        target: Option<u16>,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<Vec<u8>>), StoreError> {
        let mut cmd = ::redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        let value = match (&self.conn, target) {
            (Conn::Cluster(conn), Some(slot)) => conn
                .clone()
                .route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                        slot,
                        SlotAddr::Master,
                    ))),
                )
                .await
                .and_then(Value::extract_error),
            _ => self.conn.query(&cmd).await,
        }
        .map_err(backend("Redis SCAN failed"))?;
        let mut parts = into_list(value).into_iter();
        let next = parts
            .next()
            .and_then(into_bytes)
            .and_then(|c| std::str::from_utf8(&c).ok()?.parse::<u64>().ok())
            .ok_or_else(|| {
                StoreError::new(StoreErrorKind::Backend, "unexpected SCAN reply from Redis")
            })?;
        let keys = parts
            .next()
            .map(into_list)
            .unwrap_or_default()
            .into_iter()
            .filter_map(into_bytes)
            .collect();
        Ok((next, keys))
    }

    /// Writes a new session under `key` with [`LUA_CREATE`]: `false` if a live one is there.
    async fn write_new(
        &self,
        key: &SessionKey,
        encoded: &Encoded<'_>,
        now_ms: i64,
    ) -> Result<bool, RedisError> {
        let redis_key = self.session_key(key);
        let bytes = redis_key.len()
            + encoded.meta.len()
            + encoded.owner.map_or(0, str::len)
            + encoded
                .values
                .iter()
                .map(|(name, value)| name.len() + value.len() + 2)
                .sum::<usize>();
        let reply = self
            .eval(&self.scripts.create, bytes, |cmd| {
                let mut field = Vec::with_capacity(32);
                cmd.arg(1).arg(&redis_key).arg(now_ms).arg(encoded.deadline);
                cmd.arg("m").arg(&encoded.meta);
                if let Some(owner) = encoded.owner {
                    cmd.arg("o").arg(owner);
                }
                for (name, value) in &encoded.values {
                    field.clear();
                    field.extend_from_slice(b"d:");
                    field.extend_from_slice(name.as_bytes());
                    cmd.arg(&field[..]).arg(&value[..]);
                }
            })
            .await?;
        Ok(int_reply(&reply) == Some(1))
    }

    /// The steps of [`rename`](SessionStore::rename) (see "Renaming" on [`RedisStore`]), noting
    /// in `done` what a rename that does not complete must take back.
    async fn rename_steps(
        &self,
        from: &SessionKey,
        to: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
        done: &mut Undo,
    ) -> Result<Renamed, StoreError> {
        let now_ms = to_ms(now)?;
        let fence = rename_fence(now_ms, to);
        let from_key = self.session_key(from);
        let member = index_member(to);
        // The owner the change set names (a login that sets it) is indexed under the new key
        // alongside the fence, before the new record as always; at +inf until the absolute
        // deadline is known. A stored owner the change set leaves alone is indexed once the
        // fenced fields are back.
        let named_owner = match &changes.owner {
            Some(Some(owner)) => Some(owner.as_str()),
            _ => None,
        };
        // Noted before the calls: a reply lost on the way still means the call may have run.
        done.fence = Some((from_key.clone(), fence.clone()));
        done.entry = named_owner.map(|owner| (owner.to_owned(), member.clone()));
        let (fenced, indexed) = join2(
            self.eval(
                &self.scripts.rename_fence,
                from_key.len() + fence.len(),
                |cmd| {
                    cmd.arg(1).arg(&from_key).arg(now_ms).arg(&fence);
                },
            ),
            async {
                match named_owner {
                    Some(owner) => self.index_add(owner, &member, None, now_ms).await,
                    None => Ok(()),
                }
            },
        )
        .await;
        let fenced = fenced.map_err(backend("Redis session rename failed"))?;
        indexed?;
        let mut record = match fenced {
            // Gone, expired or held by another rename: nothing fenced.
            Value::Int(_) => {
                done.fence = None;
                return Ok(Renamed::Gone);
            }
            reply if !is_hash_reply(&reply) => return Err(unexpected_reply("session rename")),
            reply => match decode_hash(reply) {
                Ok(Some(record)) => record,
                Ok(None) => return Ok(Renamed::Gone),
                Err(why) => {
                    tracing::warn!(
                        session = %from.log_tag(),
                        reason = why,
                        "unreadable session record in Redis; treated as no session"
                    );
                    return Ok(Renamed::Gone);
                }
            },
        };
        changes.apply_to(&mut record);
        let absolute = record.absolute_deadline.map(deadline_ms).transpose()?;
        let encoded = Encoded::new(&record)?;
        if named_owner.is_none()
            && let Some(owner) = &record.owner
        {
            // The stored owner, kept: indexed now, with its deadline.
            done.entry = Some((owner.clone(), member.clone()));
            self.index_add(owner, &member, absolute, now_ms).await?;
        }
        done.created = true;
        let created = self
            .write_new(to, &encoded, now_ms)
            .await
            .map_err(backend("Redis session rename failed"))?;
        if !created {
            // Someone else's session: not ours to delete.
            done.created = false;
            return Ok(Renamed::Taken);
        }
        // The old key goes if it still carries the fence; meanwhile, the index entry gets its
        // real score, so the index can expire (best effort, as in `save`).
        let refine = named_owner.zip(absolute);
        let marker_key = self.rename_marker_key(from);
        let (committed, ()) = join2(
            self.eval(
                &self.scripts.rename_commit,
                from_key.len() + marker_key.len() + fence.len(),
                |cmd| {
                    cmd.arg(2)
                        .arg(&from_key)
                        .arg(&marker_key)
                        .arg(&fence)
                        .arg(RENAME_MARKER_MS);
                },
            ),
            async {
                if let Some((owner, absolute)) = refine
                    && let Err(error) = self.index_add(owner, &member, Some(absolute), now_ms).await
                {
                    tracing::debug!(session = %to.log_tag(), %error, "owner index score not refined");
                }
            },
        )
        .await;
        let committed = match committed {
            Ok(reply) => reply,
            // No answer: the commit may have run all the same (its reply lost, or Redis stalled
            // past the timeout and ran it afterwards). Undoing blindly would then delete the
            // only copy of the session: ask first.
            Err(error) => {
                return self
                    .settle_rename(to, &from_key, &marker_key, &fence, done, error)
                    .await;
            }
        };
        // Answered: the fence is gone with the session, or is not this rename's any more.
        done.fence = None;
        match int_reply(&committed) {
            Some(1) => Ok(Renamed::Applied),
            Some(0) => Ok(Renamed::Gone),
            _ => Err(StoreError::new(
                StoreErrorKind::Backend,
                "Redis session rename outlasted its fence and a write to the session came first; \
                 the session stays under its old ID",
            )),
        }
    }

    /// After step 3 of a rename went unanswered (`error`): asks Redis whether it ran (see
    /// [`LUA_RENAME_SETTLE`]). Done, the rename answers `Applied`. Not done, the fence is
    /// released and `done` takes back the rest. Unknown (Redis does not answer this either),
    /// the new record and its index entry are kept, as they may be the session's only copy,
    /// and the fence runs out by itself.
    async fn settle_rename(
        &self,
        to: &SessionKey,
        from_key: &[u8],
        marker_key: &[u8],
        fence: &str,
        done: &mut Undo,
        error: ::redis::RedisError,
    ) -> Result<Renamed, StoreError> {
        let failed = backend("Redis session rename failed")(error);
        let settled = self
            .eval(
                &self.scripts.rename_settle,
                from_key.len() + marker_key.len() + fence.len(),
                |cmd| {
                    cmd.arg(2).arg(from_key).arg(marker_key).arg(fence);
                },
            )
            .await;
        match settled.as_ref().map(int_reply) {
            Ok(Some(1)) => {
                tracing::info!(session = %to.log_tag(), "session rename done, its answer lost on the way");
                *done = Undo::default();
                Ok(Renamed::Applied)
            }
            Ok(Some(0 | -1)) => {
                done.fence = None;
                Err(failed)
            }
            Ok(_) | Err(_) => {
                tracing::warn!(
                    session = %to.log_tag(),
                    "session rename unanswered, and whether it was done is unknown: its new \
                     record is kept; the old ID works again once the fence runs out, or names \
                     no session if the rename was done"
                );
                *done = Undo::default();
                Err(failed)
            }
        }
    }

    /// Takes back what a rename that does not complete did (see [`Undo`]), best effort: a
    /// failure is logged, and the fence runs out by itself.
    async fn undo_rename(&self, to: &SessionKey, done: Undo, now_ms: i64) {
        let release = async {
            if let Some((from_key, fence)) = &done.fence
                && let Err(error) = self
                    .eval(
                        &self.scripts.rename_release,
                        from_key.len() + fence.len(),
                        |cmd| {
                            cmd.arg(1).arg(from_key).arg(fence);
                        },
                    )
                    .await
            {
                tracing::warn!(session = %to.log_tag(), %error, "rename fence not released; it runs out by itself");
            }
        };
        let remove = async {
            if done.created
                && let Err(error) = self.delete(to).await
            {
                tracing::warn!(session = %to.log_tag(), %error, "record of an incomplete rename not deleted; no client has its ID");
            }
            // After the record: the index never misses a live session.
            if let Some((owner, member)) = &done.entry
                && let Err(error) = self
                    .index_remove_members(&self.owner_key(owner), &[member.as_bytes()], now_ms)
                    .await
            {
                tracing::debug!(session = %to.log_tag(), %error, "owner index entry of an incomplete rename not removed");
            }
        };
        join2(release, remove).await;
    }
}

/// How long an index entry of a session that does not exist is kept: the entry is written just
/// before the session, so a session that is missing this soon after may still be on its way.
const INDEX_GRACE_MS: i64 = 10 * 60 * 1000;

/// How long the marker of a done rename stays on its old key (see [`LUA_RENAME_COMMIT`]): long
/// after any retry of the commit, or the check that follows an unanswered one, can arrive.
const RENAME_MARKER_MS: i64 = 60_000;

/// How long a rename holds the session it moves (see "Renaming" on [`RedisStore`]): ample for
/// its three round trips, short enough that a rename that died blocks the session's writes only
/// briefly.
const FENCE_MS: i64 = 5_000;

/// The fence a rename to `to` sets on the old key at `now_ms`: `<until>:<new key hex>`. The new
/// key makes it this rename's own, and tells a revocation where a copy may be.
fn rename_fence(now_ms: i64, to: &SessionKey) -> String {
    format!("{}:{}", now_ms.saturating_add(FENCE_MS), to.to_hex())
}

/// The new key a fence names.
fn fence_target(fence: &[u8]) -> Option<SessionKey> {
    let fence = std::str::from_utf8(fence).ok()?;
    let (_, hex) = fence.split_once(':')?;
    SessionKey::from_hex(hex)
}

/// What a rename that does not complete takes back: its fence on the old key (old key, fence),
/// the record it wrote under the new key, and that record's owner-index entry (owner, member).
#[derive(Default)]
struct Undo {
    fence: Option<(Vec<u8>, String)>,
    created: bool,
    entry: Option<(String, String)>,
}

/// A record encoded for [`LUA_CREATE`]: every value first, so the script call cannot fail
/// halfway.
struct Encoded<'r> {
    meta: String,
    deadline: i64,
    owner: Option<&'r str>,
    values: Vec<(&'r str, Vec<u8>)>,
}

impl<'r> Encoded<'r> {
    fn new(record: &'r Record) -> Result<Self, StoreError> {
        let deadline = deadline_ms(record.deadline())?;
        let meta = pack_meta(record)?;
        let mut values = Vec::with_capacity(record.data.len());
        for (name, value) in &record.data {
            values.push((name.as_str(), serde_json::to_vec(value).map_err(encoding)?));
        }
        Ok(Self {
            meta,
            deadline,
            owner: record.owner.as_deref(),
            values,
        })
    }
}

/// One session named by an owner index.
struct Indexed {
    key: SessionKey,
    /// When the newest of its entries was written (wall clock, Unix ms).
    newest_added: i64,
    members: Vec<Vec<u8>>,
}

impl Indexed {
    /// Whether a missing session may be dropped from the index: its entry is older than the
    /// grace period, so the session is not merely about to be created.
    fn settled(&self, wall_ms: i64) -> bool {
        wall_ms.saturating_sub(self.newest_added) > INDEX_GRACE_MS
    }
}

/// An index member: `<session key hex>:<when it was written, wall clock Unix ms>`.
fn index_member(key: &SessionKey) -> String {
    format!("{}:{}", key.to_hex(), wall_ms())
}

fn parse_member(member: &[u8]) -> Option<(SessionKey, i64)> {
    let member = std::str::from_utf8(member).ok()?;
    let (hex, added) = member.split_once(':')?;
    Some((SessionKey::from_hex(hex)?, added.parse().ok()?))
}

/// The wall clock in Unix ms (for index bookkeeping only; session deadlines use the layer's clock).
fn wall_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc()).unwrap_or(i64::MAX)
}

/// Unix milliseconds (floored). In whole seconds and milliseconds, here and in [`from_ms`]: going
/// through nanoseconds would divide an `i128`, several times the cost.
fn to_ms(at: OffsetDateTime) -> Result<i64, StoreError> {
    // The time of day is never negative, so `unix_timestamp` is floored and the sum too.
    at.unix_timestamp()
        .checked_mul(1000)
        .map(|ms| ms + i64::from(at.millisecond()))
        .ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Encoding,
                "session time out of range for Redis",
            )
        })
}

/// A deadline in Unix milliseconds, rounded up, as every store keeps deadlines (see
/// [`Record::encode`]): a cookie's `Max-Age`, worked out from the exact deadline, must not outlast
/// the one stored, nor Redis drop the key while the cookie still names it (SECURITY.md 15).
fn deadline_ms(at: OffsetDateTime) -> Result<i64, StoreError> {
    to_ms(crate::record::deadline_rounded_up(at, 1_000_000))
}

fn from_ms(ms: i64) -> Option<OffsetDateTime> {
    let millis = u16::try_from(ms.rem_euclid(1000)).ok()?;
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()?
        .replace_millisecond(millis)
        .ok()
}

fn encoding(error: serde_json::Error) -> StoreError {
    StoreError::new(StoreErrorKind::Encoding, "could not encode a session value").with_source(error)
}

/// The items of an array-like reply (a map reply is flattened to key, value, key, value).
fn into_list(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        Value::Attribute { data, .. } => into_list(*data),
        _ => Vec::new(),
    }
}

fn into_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// A decimal integer, optionally negative, as Redis and [`pack_meta`] write them; `None` for
/// anything else or out of range. Read from the bytes directly: a session load reads four.
fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let (sign, digits) = match bytes {
        [b'-', rest @ ..] => (-1, rest),
        _ => (1, bytes),
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0i64, |n, &digit| {
        let digit = i64::from(digit.checked_sub(b'0').filter(|d| *d < 10)?);
        n.checked_mul(10)?.checked_add(sign * digit)
    })
}

/// A session's metadata, kept in one hash field (`m`) so that a load parses one reply element for
/// it rather than one per item.
struct Meta {
    idle: OffsetDateTime,
    absolute: Option<OffsetDateTime>,
    created: OffsetDateTime,
    version: u32,
    expiry: Expiry,
}

/// The metadata field of `record`: `<idle>:<absolute>:<created>:<version>:<expiry>`, the times in
/// Unix milliseconds (the absolute deadline empty when there is none), the expiry policy as JSON.
/// The scripts read the deadlines at its start and replace the idle deadline and the expiry
/// policy; the four numbers never hold a `:`, so the JSON may.
fn pack_meta(record: &Record) -> Result<String, StoreError> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64);
    let _ = write!(out, "{}:", deadline_ms(record.idle_deadline)?);
    if let Some(absolute) = record.absolute_deadline {
        let _ = write!(out, "{}", deadline_ms(absolute)?);
    }
    let _ = write!(out, ":{}:{}:", to_ms(record.created_at)?, record.version);
    out.push_str(&serde_json::to_string(&record.expiry).map_err(encoding)?);
    Ok(out)
}

/// Reads a metadata field written by [`pack_meta`] (or by the scripts).
fn unpack_meta(bytes: &[u8]) -> Option<Meta> {
    let time = |ms: &[u8]| parse_i64(ms).and_then(from_ms);
    let mut parts = bytes.splitn(5, |&b| b == b':');
    let idle = time(parts.next()?)?;
    let absolute = match parts.next()? {
        [] => None,
        ms => Some(time(ms)?),
    };
    let created = time(parts.next()?)?;
    let version = u32::try_from(parse_i64(parts.next()?)?).ok()?;
    let expiry = parse_expiry(parts.next()?)?;
    Some(Meta {
        idle,
        absolute,
        created,
        version,
        expiry,
    })
}

/// The expiry policy at the end of a metadata field: the two forms a layer writes for nearly every
/// session (its default policies, as `serde_json` writes them) read directly, anything else
/// through `serde_json`, which would take four times the instructions for these too.
fn parse_expiry(json: &[u8]) -> Option<Expiry> {
    if json == br#""OnSessionEnd""# {
        return Some(Expiry::OnSessionEnd);
    }
    let seconds = json
        .strip_prefix(br#"{"OnInactivity":"#)
        .and_then(|rest| rest.strip_suffix(b"}"))
        .and_then(parse_i64);
    match seconds {
        Some(seconds) => Some(Expiry::OnInactivity(time::Duration::seconds(seconds))),
        None => serde_json::from_slice(json).ok(),
    }
}

/// A key of this store: `<prefix><kind>:{<hex of hash>}`, the hash in braces so that it alone picks
/// the cluster slot. Bytes: Redis takes them as they are, and building a `String` would check the
/// digits for UTF-8 on every request.
fn key_name(prefix: &str, kind: u8, hash: &SessionKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 68);
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(&[kind, b':', b'{']);
    out.extend_from_slice(&hash.hex_digits());
    out.push(b'}');
    out
}

/// Decodes a session hash (an `HGETALL` reply). `Ok(None)` when there is no such key.
fn decode_hash(value: Value) -> Result<Option<Record>, &'static str> {
    let mut fields = Fields::default();
    match value {
        Value::Map(pairs) => {
            for (field, value) in pairs {
                fields.add(field, value)?;
            }
        }
        other => {
            let mut items = into_list(other).into_iter();
            while let (Some(field), Some(value)) = (items.next(), items.next()) {
                fields.add(field, value)?;
            }
        }
    }
    if !fields.any {
        return Ok(None);
    }
    let Meta {
        idle,
        absolute,
        created,
        version,
        expiry,
    } = fields.meta.ok_or("missing metadata")?;
    if version > RECORD_VERSION {
        return Err("a record format version newer than this crate knows");
    }
    let mut record = Record::new(created, idle, absolute, expiry);
    record.version = version;
    record.data = fields.data;
    record.owner = fields.owner;
    Ok(Some(record))
}

/// The fields of a session hash, as [`decode_hash`] reads them.
#[derive(Default)]
struct Fields {
    any: bool,
    meta: Option<Meta>,
    owner: Option<String>,
    data: Map<String, Json>,
}

impl Fields {
    fn add(&mut self, field: Value, value: Value) -> Result<(), &'static str> {
        self.any = true;
        let (Some(mut field), Some(value)) = (into_bytes(field), into_bytes(value)) else {
            return Err("a field of an unexpected type");
        };
        match field.as_slice() {
            b"m" => self.meta = Some(unpack_meta(&value).ok_or("bad metadata")?),
            b"o" => self.owner = Some(String::from_utf8(value).map_err(|_| "bad owner")?),
            [b'd', b':', ..] => {
                // The name in place, without a copy.
                field.drain(..2);
                let name = String::from_utf8(field).map_err(|_| "bad value name")?;
                let value: Json = serde_json::from_slice(&value).map_err(|_| "bad value JSON")?;
                self.data.insert(name, value);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Runs `futures` concurrently (they share one multiplexed connection, so this is one round trip
/// for a single Redis, and one per node, in parallel, for a cluster).
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Runs two futures concurrently (see [`join_all`]).
async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let (mut out_a, mut out_b) = (None, None);
    std::future::poll_fn(|cx| {
        if out_a.is_none()
            && let Poll::Ready(value) = a.as_mut().poll(cx)
        {
            out_a = Some(value);
        }
        if out_b.is_none()
            && let Poll::Ready(value) = b.as_mut().poll(cx)
        {
            out_b = Some(value);
        }
        match (out_a.take(), out_b.take()) {
            (Some(a), Some(b)) => Poll::Ready((a, b)),
            (a, b) => {
                (out_a, out_b) = (a, b);
                Poll::Pending
            }
        }
    })
    .await
}

/// The answer of [`LUA_SAVE`]: the outcome, and the session's absolute deadline when the script
/// gave it (`<deadline>:<status>`). Any other reply is an error, not a guess: a save reported
/// applied must have been.
fn save_reply(reply: Value) -> Result<(Saved, Option<i64>), StoreError> {
    let status = |code: &[u8]| match code {
        b"1" => Some(Saved::Applied),
        b"2" => Some(Saved::PolicyChanged),
        _ => None,
    };
    let parsed = match reply {
        Value::Int(0) => Some((Saved::Gone, None)),
        Value::Int(1) => Some((Saved::Applied, None)),
        Value::Int(2) => Some((Saved::PolicyChanged, None)),
        Value::Int(_) => None,
        other => into_bytes(other).and_then(|text| {
            let at = text.iter().position(|&b| b == b':')?;
            Some((status(&text[at + 1..])?, Some(parse_i64(&text[..at])?)))
        }),
    };
    parsed.ok_or_else(|| unexpected_reply("session save"))
}

/// What [`LUA_DELETE_IF_OWNER`] answered for one session.
#[derive(Debug, PartialEq)]
enum Revoked {
    /// Deleted; with the fence it carried when a rename held it.
    Deleted(Option<Vec<u8>>),
    /// No such session (yet).
    Missing,
    /// Owned by someone else now.
    Other,
}

/// Reads a [`LUA_DELETE_IF_OWNER`] answer: 1 or a fence deleted, 0 missing, -1 another owner's.
/// Anything else is an error, so that a revocation never counts what it did not delete.
fn revoked_reply(reply: Value) -> Result<Revoked, StoreError> {
    match reply {
        Value::Int(1) => Ok(Revoked::Deleted(None)),
        Value::Int(0) => Ok(Revoked::Missing),
        Value::Int(-1) => Ok(Revoked::Other),
        Value::BulkString(fence) => Ok(Revoked::Deleted(Some(fence))),
        _ => Err(unexpected_reply("owner revocation")),
    }
}

/// A reply of a shape the command never gives: a protocol mix-up, an error, not a result.
/// What [`LUA_TOUCH`] answered. Only the answers the script gives: anything else is no proof
/// that the session ended.
fn touch_reply(reply: &Value) -> Result<Saved, StoreError> {
    match int_reply(reply) {
        Some(0) => Ok(Saved::Gone),
        Some(1) => Ok(Saved::Applied),
        Some(2) => Ok(Saved::PolicyChanged),
        _ => Err(unexpected_reply("session touch")),
    }
}

fn unexpected_reply(what: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Backend,
        format!("unexpected Redis reply to a {what}"),
    )
}

/// Whether `value` is a hash as `HGETALL` (or a script returning it) gives one: a list or a
/// map, empty for no key. Anything else is no answer to read a session from.
fn is_hash_reply(value: &Value) -> bool {
    match value {
        Value::Array(_) | Value::Map(_) => true,
        Value::Attribute { data, .. } => is_hash_reply(data),
        _ => false,
    }
}

fn int_reply(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

impl SessionStore for RedisStore {
    async fn load(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> Result<Option<Record>, StoreError> {
        let redis_key = self.session_key(key);
        let mut cmd = Cmd::with_capacity(2, redis_key.len() + 32);
        cmd.arg("HGETALL").arg(&redis_key);
        let value = self
            .conn
            .query(&cmd)
            .await
            .map_err(backend("Redis session load failed"))?;
        if !is_hash_reply(&value) {
            return Err(unexpected_reply("session load"));
        }
        match decode_hash(value) {
            Ok(Some(record)) if record.is_live(now) => Ok(Some(record)),
            Ok(_) => Ok(None),
            Err(why) => {
                tracing::warn!(
                    session = %key.log_tag(),
                    reason = why,
                    "unreadable session record in Redis; treated as no session"
                );
                Ok(None)
            }
        }
    }

    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        check_depth(record.data.values())?;
        let now_ms = to_ms(now)?;
        let absolute = record.absolute_deadline.map(deadline_ms).transpose()?;
        let encoded = Encoded::new(record)?;
        if let Some(owner) = &record.owner {
            // Index first: the index may name a session that is gone, never miss a live one.
            self.index_add(owner, &index_member(key), absolute, now_ms)
                .await?;
        }
        self.write_new(key, &encoded, now_ms)
            .await
            .map_err(backend("Redis session create failed"))
    }

    async fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        check_depth(changes.set.values())?;
        let now_ms = to_ms(now)?;
        let idle = changes.idle_deadline.map(deadline_ms).transpose()?;
        let expiry = changes
            .expiry
            .map(|e| serde_json::to_string(&e))
            .transpose()
            .map_err(encoding)?;
        // Only needed with a deadline of the request's own working out.
        let basis = match (idle, changes.expiry, changes.deadline_basis) {
            (Some(_), None, Some(basis)) => Some(serde_json::to_string(&basis).map_err(encoding)?),
            _ => None,
        };
        // One buffer for every value's JSON, with the end of each.
        let mut json = Vec::new();
        let mut ends = Vec::with_capacity(changes.set.len());
        for value in changes.set.values() {
            serde_json::to_writer(&mut json, value).map_err(encoding)?;
            ends.push(json.len());
        }
        let new_owner = match &changes.owner {
            Some(Some(owner)) => Some(owner.as_str()),
            _ => None,
        };
        let member = match new_owner {
            Some(owner) => {
                // Index first (score unknown yet: +inf, refined below).
                let member = index_member(key);
                self.index_add(owner, &member, None, now_ms).await?;
                Some(member)
            }
            None => None,
        };
        let owner_removed = matches!(changes.owner, Some(None));
        let redis_key = self.session_key(key);
        let bytes = redis_key.len()
            + json.len()
            + expiry.as_ref().map_or(0, String::len)
            + basis.as_ref().map_or(0, String::len)
            + new_owner.map_or(0, str::len)
            + changes
                .set
                .keys()
                .chain(&changes.removed)
                .map(|name| name.len() + 2)
                .sum::<usize>();
        let reply = self
            .eval(&self.scripts.save, bytes, |cmd| {
                let mut field = Vec::with_capacity(32);
                cmd.arg(1).arg(&redis_key).arg(now_ms);
                cmd.arg(if changes.cleared { "1" } else { "0" });
                match idle {
                    Some(idle) => cmd.arg(idle),
                    None => cmd.arg(""),
                };
                cmd.arg(if new_owner.is_some() { "1" } else { "0" });
                cmd.arg(expiry.as_deref().unwrap_or(""));
                cmd.arg(basis.as_deref().unwrap_or(""));
                cmd.arg(changes.removed.len() + usize::from(owner_removed));
                for name in &changes.removed {
                    field.clear();
                    field.extend_from_slice(b"d:");
                    field.extend_from_slice(name.as_bytes());
                    cmd.arg(&field[..]);
                }
                if owner_removed {
                    cmd.arg("o");
                }
                let mut start = 0;
                for (name, end) in changes.set.keys().zip(&ends) {
                    field.clear();
                    field.extend_from_slice(b"d:");
                    field.extend_from_slice(name.as_bytes());
                    cmd.arg(&field[..]).arg(&json[start..*end]);
                    start = *end;
                }
                if let Some(owner) = new_owner {
                    cmd.arg("o").arg(owner);
                }
            })
            .await
            .map_err(backend("Redis session save failed"))?;
        match save_reply(reply)? {
            (Saved::Gone, _) => {
                // Gone: the entry indexed above names no session, and at +inf it would keep the
                // index from ever expiring. Best effort: a failure leaves it to the next listing.
                if let (Some(owner), Some(member)) = (new_owner, &member)
                    && let Err(error) = self
                        .index_remove_members(&self.owner_key(owner), &[member.as_bytes()], now_ms)
                        .await
                {
                    tracing::debug!(session = %key.log_tag(), %error, "owner index entry of an ended session not removed");
                }
                Ok(Saved::Gone)
            }
            (saved, absolute) => {
                // The owner was set and the session has an absolute deadline: give the index
                // entry its real score, so the index can expire. Best effort: a failure only
                // leaves the entry at +inf, which is pruned when the index is next listed.
                if let (Some(owner), Some(member), Some(absolute)) = (new_owner, &member, absolute)
                    && let Err(error) = self.index_add(owner, member, Some(absolute), now_ms).await
                {
                    tracing::debug!(session = %key.log_tag(), %error, "owner index score not refined");
                }
                Ok(saved)
            }
        }
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: OffsetDateTime,
        basis: Expiry,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        let now_ms = to_ms(now)?;
        let idle = deadline_ms(idle_deadline)?;
        let basis = serde_json::to_string(&basis).map_err(encoding)?;
        let redis_key = self.session_key(key);
        let reply = self
            .eval(&self.scripts.touch, redis_key.len() + basis.len(), |cmd| {
                cmd.arg(1).arg(&redis_key).arg(now_ms).arg(idle).arg(&basis);
            })
            .await
            .map_err(backend("Redis session touch failed"))?;
        touch_reply(&reply)
    }

    async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        let mut cmd = ::redis::cmd("DEL");
        cmd.arg(self.session_key(key));
        self.conn
            .query(&cmd)
            .await
            .map_err(backend("Redis session delete failed"))?;
        Ok(())
    }

    async fn rename(
        &self,
        from: &SessionKey,
        to: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Renamed, StoreError> {
        check_depth(changes.set.values())?;
        let mut done = Undo::default();
        let outcome = self.rename_steps(from, to, changes, now, &mut done).await;
        if !matches!(outcome, Ok(Renamed::Applied)) {
            // `rename_steps` failed at once on a time `to_ms` refuses; the wall clock will do.
            let now_ms = to_ms(now).unwrap_or_else(|_| wall_ms());
            self.undo_rename(to, done, now_ms).await;
        }
        outcome
    }

    async fn delete_expired(&self, now: OffsetDateTime, limit: usize) -> Result<usize, StoreError> {
        let now_ms = to_ms(now)?;
        let pattern = format!("{}s:{{*", escape_glob(&self.prefix));
        let mut deleted = 0;
        let mut failed = None;
        for target in self.scan_targets().await? {
            let mut cursor = 0;
            loop {
                if deleted >= limit {
                    return Ok(deleted);
                }
                let (next, keys) = self.scan_page(target, cursor, &pattern).await?;
                let mut keys = keys.as_slice();
                while !keys.is_empty() && deleted < limit {
                    // Never more in flight than may still be deleted, so `limit` holds.
                    let take = keys.len().min(limit - deleted).min(BATCH);
                    let (batch, rest) = keys.split_at(take);
                    keys = rest;
                    let replies = join_all(
                        batch
                            .iter()
                            .map(|k| {
                                self.eval(&self.scripts.delete_if_dead, k.len(), move |cmd| {
                                    cmd.arg(1).arg(&k[..]).arg(now_ms);
                                })
                            })
                            .collect(),
                    )
                    .await;
                    for reply in replies {
                        match reply {
                            Ok(reply) if int_reply(&reply) == Some(1) => deleted += 1,
                            Ok(_) => {}
                            // One key the script cannot read (not a hash: another program's,
                            // under a prefix it shares) must not stop the sweep there on every
                            // run: it is logged, and the sweep goes on.
                            Err(error) => {
                                let error = StoreError::backend(
                                    "Redis expired-session sweep failed on a key",
                                    error,
                                );
                                tracing::warn!(%error, "key skipped by the session cleanup");
                                failed.get_or_insert(error);
                            }
                        }
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        // Nothing removed and something failed: Redis itself may be the problem, and the caller
        // (the cleanup task) learns of it.
        match failed {
            Some(error) if deleted == 0 => Err(error),
            _ => Ok(deleted),
        }
    }

    async fn list_owner(
        &self,
        owner: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        let (index, sessions) = self.index_entries(owner).await?;
        let wall = wall_ms();
        let mut listed = Vec::new();
        let mut gone = Vec::new();
        // The keys renames of these sessions are moving them to: until a rename completes, its
        // session is the one under the old key, and the copy under the new key is not listed.
        let mut copies = HashSet::new();
        for chunk in sessions.chunks(BATCH) {
            let replies = join_all(
                chunk
                    .iter()
                    .map(|indexed| {
                        let mut cmd = ::redis::cmd("HMGET");
                        cmd.arg(self.session_key(&indexed.key))
                            .arg("m")
                            .arg("o")
                            .arg("f");
                        async move { self.conn.query(&cmd).await }
                    })
                    .collect(),
            )
            .await;
            for (indexed, reply) in chunk.iter().zip(replies) {
                let reply = reply.map_err(backend("Redis owner listing failed"))?;
                let mut fields = into_list(reply).into_iter().map(into_bytes);
                let meta = fields.next().flatten();
                let session_owner = fields.next().flatten();
                if let Some(to) = fields.next().flatten().as_deref().and_then(fence_target) {
                    copies.insert(to);
                }
                let Some(Meta {
                    created: created_at,
                    idle,
                    absolute,
                    ..
                }) = meta.as_deref().and_then(unpack_meta)
                else {
                    if indexed.settled(wall) {
                        gone.push(indexed);
                    }
                    continue;
                };
                let deadline = match absolute {
                    Some(absolute) if absolute < idle => absolute,
                    _ => idle,
                };
                if now >= deadline {
                    // Expired by this caller's clock, but still in Redis: left out of the list,
                    // and its entry kept. Another host, whose clock is behind this one's, may
                    // still serve the session and move its idle deadline, and a touch does not
                    // index it again: without its entry, `delete_owner` would miss it. Its
                    // record's TTL removes it at its deadline, and the entry goes with the next
                    // listing that finds the record gone.
                } else if session_owner.as_deref() == Some(owner.as_bytes()) {
                    // A session that moved to another owner keeps its entry here (it may move
                    // back); it is only left out of the list.
                    listed.push(SessionInfo {
                        key: indexed.key,
                        created_at,
                        deadline,
                    });
                }
            }
        }
        if !gone.is_empty() {
            self.index_remove(&index, &gone, to_ms(now)?).await?;
        }
        listed.retain(|s| !copies.contains(&s.key));
        listed.sort_by_key(|s| s.created_at);
        Ok(listed)
    }

    async fn delete_owner(&self, owner: &str) -> Result<usize, StoreError> {
        // A session renamed meanwhile (`cycle_id`) moves to a key the first read did not list,
        // so the index is read again after each batch until it lists no key not tried yet. The
        // new key is indexed before the record is written, so a batch may try it too early and
        // find nothing: a young entry found missing is tried once more after the next read. A
        // session deleted while a rename held it is counted once, whether or not the copy the
        // rename wrote is deleted too (its fence names it), and that copy is tried as well.
        let wall = wall_ms();
        let mut named: HashMap<SessionKey, Indexed> = HashMap::new();
        let mut tried: HashSet<SessionKey> = HashSet::new();
        let mut retried: HashSet<SessionKey> = HashSet::new();
        let mut deleted: HashSet<SessionKey> = HashSet::new();
        // (a session deleted while a rename held it, the key it was moving to)
        let mut moving: Vec<(SessionKey, SessionKey)> = Vec::new();
        let mut again: Vec<SessionKey> = Vec::new();
        let mut prune: Vec<Vec<u8>> = Vec::new();
        loop {
            // The entries of the last batch are pruned while the index is read again.
            let members: Vec<&[u8]> = prune.iter().map(Vec::as_slice).collect();
            let (read, pruned) = join2(self.index_entries(owner), async {
                if members.is_empty() {
                    return Ok(());
                }
                self.index_remove_members(&self.owner_key(owner), &members, wall_ms())
                    .await
            })
            .await;
            pruned?;
            prune.clear();
            let (_, sessions) = read?;
            let mut batch = std::mem::take(&mut again);
            for indexed in sessions {
                if tried.insert(indexed.key) {
                    batch.push(indexed.key);
                }
                named.insert(indexed.key, indexed);
            }
            if batch.is_empty() {
                return Ok(
                    deleted.len() - moving.iter().filter(|(_, to)| deleted.contains(to)).count()
                );
            }
            for chunk in batch.chunks(BATCH) {
                let replies = join_all(
                    chunk
                        .iter()
                        .map(|key| {
                            let redis_key = self.session_key(key);
                            async move {
                                self.eval(
                                    &self.scripts.delete_if_owner,
                                    redis_key.len() + owner.len(),
                                    |cmd| {
                                        cmd.arg(1).arg(&redis_key).arg(owner);
                                    },
                                )
                                .await
                            }
                        })
                        .collect(),
                )
                .await;
                for (key, reply) in chunk.iter().zip(replies) {
                    let reply = reply.map_err(backend("Redis owner revocation failed"))?;
                    let indexed = named.get(key);
                    match revoked_reply(reply)? {
                        Revoked::Missing => match indexed {
                            // Missing, and maybe on its way: tried once more.
                            Some(indexed) if indexed.settled(wall) => {
                                prune.extend(indexed.members.iter().cloned());
                            }
                            _ => {
                                if retried.insert(*key) {
                                    again.push(*key);
                                }
                            }
                        },
                        // Owned by someone else (it may move back): its entries stay.
                        Revoked::Other => {}
                        Revoked::Deleted(fence) => {
                            deleted.insert(*key);
                            if let Some(indexed) = indexed {
                                prune.extend(indexed.members.iter().cloned());
                            }
                            // Deleted while a rename held it: the copy is tried too.
                            if let Some(to) = fence.as_deref().and_then(fence_target) {
                                moving.push((*key, to));
                                tried.insert(to);
                                if !deleted.contains(&to) {
                                    again.push(to);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Escapes the glob characters of a `SCAN MATCH` pattern.
fn escape_glob(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;
    use time::Duration;

    /// Only the answers the save script gives are read; any other is an error, never a save
    /// reported applied.
    #[test]
    fn save_replies_of_another_shape_are_errors() {
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        assert_eq!(save_reply(Value::Int(0)).unwrap(), (Saved::Gone, None));
        assert_eq!(save_reply(Value::Int(1)).unwrap(), (Saved::Applied, None));
        assert_eq!(
            save_reply(Value::Int(2)).unwrap(),
            (Saved::PolicyChanged, None)
        );
        assert_eq!(
            save_reply(bulk("1700000000000:1")).unwrap(),
            (Saved::Applied, Some(1_700_000_000_000))
        );
        assert_eq!(
            save_reply(bulk("1700000000000:2")).unwrap(),
            (Saved::PolicyChanged, Some(1_700_000_000_000))
        );
        // Year 9999, 15 digits.
        assert_eq!(
            save_reply(bulk("253402300799000:1")).unwrap(),
            (Saved::Applied, Some(253_402_300_799_000))
        );
        for odd in [
            Value::Nil,
            Value::Okay,
            Value::Int(7),
            Value::Int(-1),
            Value::Array(vec![]),
            bulk(""),
            bulk("1700000000000"),
            bulk("1700000000000:9"),
            bulk("soon:1"),
        ] {
            let error = save_reply(odd.clone()).unwrap_err();
            assert_eq!(error.kind(), StoreErrorKind::Backend, "{odd:?}");
        }
    }

    /// Only the answers the touch script gives are read; any other is an error, never a session
    /// taken for ended (which drops the request's changes).
    #[test]
    fn touch_replies_of_another_shape_are_errors() {
        assert_eq!(touch_reply(&Value::Int(0)).unwrap(), Saved::Gone);
        assert_eq!(touch_reply(&Value::Int(1)).unwrap(), Saved::Applied);
        assert_eq!(touch_reply(&Value::Int(2)).unwrap(), Saved::PolicyChanged);
        for odd in [
            Value::Nil,
            Value::Okay,
            Value::Int(3),
            Value::Int(-1),
            Value::BulkString(b"1".to_vec()),
        ] {
            let error = touch_reply(&odd).unwrap_err();
            assert_eq!(error.kind(), StoreErrorKind::Backend, "{odd:?}");
        }
    }

    /// Only the answers the revocation script gives are read; any other is an error, never a
    /// session counted as deleted.
    #[test]
    fn revocation_replies_of_another_shape_are_errors() {
        assert_eq!(
            revoked_reply(Value::Int(1)).unwrap(),
            Revoked::Deleted(None)
        );
        assert_eq!(
            revoked_reply(Value::BulkString(b"123:ab".to_vec())).unwrap(),
            Revoked::Deleted(Some(b"123:ab".to_vec()))
        );
        assert_eq!(revoked_reply(Value::Int(0)).unwrap(), Revoked::Missing);
        assert_eq!(revoked_reply(Value::Int(-1)).unwrap(), Revoked::Other);
        for odd in [Value::Nil, Value::Okay, Value::Int(2), Value::Array(vec![])] {
            assert!(revoked_reply(odd.clone()).is_err(), "{odd:?}");
        }
    }

    /// A load or rename reads a session only from a list or map; any other reply is an error,
    /// not "no session" (which would start a fresh one over the real one's cookie).
    #[test]
    fn only_lists_and_maps_are_hashes() {
        assert!(is_hash_reply(&Value::Array(vec![])));
        assert!(is_hash_reply(&Value::Map(vec![])));
        for odd in [
            Value::Nil,
            Value::Okay,
            Value::Int(1),
            Value::BulkString(b"x".to_vec()),
        ] {
            assert!(!is_hash_reply(&odd), "{odd:?}");
        }
    }

    fn hash_reply(record: &Record) -> Value {
        let mut items = vec![("m", pack_meta(record).unwrap().into_bytes())];
        if let Some(o) = &record.owner {
            items.push(("o", o.clone().into_bytes()));
        }
        let mut out = Vec::new();
        for (k, v) in items {
            out.push(Value::BulkString(k.as_bytes().to_vec()));
            out.push(Value::BulkString(v));
        }
        for (k, v) in &record.data {
            out.push(Value::BulkString(format!("d:{k}").into_bytes()));
            out.push(Value::BulkString(serde_json::to_vec(v).unwrap()));
        }
        Value::Array(out)
    }

    fn sample() -> Record {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut record = Record::new(
            t0,
            t0 + Duration::hours(1),
            Some(t0 + Duration::days(1)),
            Expiry::OnInactivity(Duration::hours(1)),
        );
        record
            .data
            .insert("n".into(), json!(12_345_678_901_234_567_i64));
        record.data.insert("empty".into(), json!([]));
        record.data.insert("nested".into(), json!({"x": {}}));
        record.owner = Some("alice".into());
        record
    }

    /// A field name as a session hash might hold it, or not.
    fn any_field() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            Just(b"m".to_vec()),
            Just(b"o".to_vec()),
            Just(b"f".to_vec()),
            "d:[a-z]{0,3}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..6),
        ]
    }

    /// A field value: metadata-shaped (numbers of any size, any policy text), JSON-ish, or bytes.
    fn any_value() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            "-?[0-9]{1,21}:-?[0-9]{0,21}:-?[0-9]{1,21}:[0-9]{1,12}:.{0,24}"
                .prop_map(String::into_bytes),
            r#"\{"(OnInactivity|AtDateTime)":-?[0-9]{1,21}\}|"OnSessionEnd"|\[[0-9,]{0,8}\]"#
                .prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..40),
        ]
    }

    proptest::proptest! {
        /// Whatever a hash holds (a damaged record, another program's key under the prefix),
        /// decoding it answers, never panics (SECURITY.md 27).
        #[test]
        fn any_hash_decodes_or_is_refused(
            pairs in proptest::collection::vec((any_field(), any_value()), 0..8),
        ) {
            let items = pairs
                .into_iter()
                .flat_map(|(field, value)| [Value::BulkString(field), Value::BulkString(value)])
                .collect();
            let _ = decode_hash(Value::Array(items));
        }

        /// A valid record's hash with one byte of its metadata changed: decoded or refused.
        #[test]
        fn a_damaged_metadata_field_is_decoded_or_refused(at in 0usize..64, byte in 0u8..=255) {
            let record = sample();
            let mut meta = pack_meta(&record).unwrap().into_bytes();
            let at = at % meta.len();
            meta[at] = byte;
            let items = vec![Value::BulkString(b"m".to_vec()), Value::BulkString(meta)];
            let _ = decode_hash(Value::Array(items));
        }
    }

    #[test]
    fn session_hashes_decode_back_to_the_record() {
        let record = sample();
        assert_eq!(decode_hash(hash_reply(&record)).unwrap(), Some(record));
    }

    #[test]
    fn metadata_round_trips_with_and_without_an_absolute_deadline() {
        let mut record = sample();
        let meta = pack_meta(&record).unwrap();
        assert_eq!(
            meta,
            format!(
                "{}:{}:{}:{}:{}",
                to_ms(record.idle_deadline).unwrap(),
                to_ms(record.absolute_deadline.unwrap()).unwrap(),
                to_ms(record.created_at).unwrap(),
                RECORD_VERSION,
                serde_json::to_string(&record.expiry).unwrap()
            )
        );
        record.absolute_deadline = None;
        record.expiry = Expiry::AtDateTime(record.idle_deadline);
        let meta = pack_meta(&record).unwrap();
        assert!(meta.contains("::"), "no absolute deadline: {meta}");
        let back = unpack_meta(meta.as_bytes()).unwrap();
        assert_eq!(
            (
                back.idle,
                back.absolute,
                back.created,
                back.version,
                back.expiry
            ),
            (
                record.idle_deadline,
                None,
                record.created_at,
                record.version,
                record.expiry
            )
        );
        for bad in [
            "",
            "1:2:3",
            "x:2:3:1:\"OnSessionEnd\"",
            "1:2:3:1:",
            "1:2:3:1:{",
        ] {
            assert!(unpack_meta(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn milliseconds_are_floored_and_read_back() {
        for nanos in [
            0_i128,
            1,
            999_999,
            1_000_000,
            1_764_600_000_123_456_789,
            -1,
            -1_000_000,
            -1_000_001,
            -86_400_000_000_500,
        ] {
            let at = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
            let ms = to_ms(at).unwrap();
            assert_eq!(i128::from(ms), nanos.div_euclid(1_000_000), "{nanos}");
            let back = from_ms(ms).unwrap();
            assert_eq!(
                back.unix_timestamp_nanos(),
                i128::from(ms) * 1_000_000,
                "{nanos}"
            );
        }
        assert!(from_ms(i64::MAX).is_none());
    }

    #[test]
    fn a_missing_key_decodes_to_none() {
        assert_eq!(decode_hash(Value::Array(vec![])).unwrap(), None);
        assert_eq!(decode_hash(Value::Map(vec![])).unwrap(), None);
    }

    #[test]
    fn resp3_map_replies_decode_like_arrays() {
        let record = sample();
        let mut items = into_list(hash_reply(&record)).into_iter();
        let mut pairs = Vec::new();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            pairs.push((k, v));
        }
        assert_eq!(decode_hash(Value::Map(pairs)).unwrap(), Some(record));
    }

    #[test]
    fn expiry_policies_read_back_through_either_path() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        for expiry in [
            Expiry::OnSessionEnd,
            Expiry::OnInactivity(Duration::hours(24)),
            Expiry::OnInactivity(Duration::ZERO),
            Expiry::AtDateTime(t),
        ] {
            let json = serde_json::to_vec(&expiry).unwrap();
            assert_eq!(parse_expiry(&json), Some(expiry));
        }
        // Other spellings of the same JSON go through serde_json.
        assert_eq!(
            parse_expiry(br#"{ "OnInactivity" : 60 }"#),
            Some(Expiry::OnInactivity(Duration::minutes(1)))
        );
        assert_eq!(parse_expiry(br#"{"OnInactivity":}"#), None);
        assert_eq!(parse_expiry(br#"{"OnInactivity":1e3}"#), None);
        assert_eq!(parse_expiry(b"OnSessionEnd"), None);
    }

    #[test]
    fn integers_are_read_strictly_from_the_bytes() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-5"), Some(-5));
        assert_eq!(parse_i64(b"1700000000123"), Some(1_700_000_000_123));
        assert_eq!(parse_i64(i64::MAX.to_string().as_bytes()), Some(i64::MAX));
        assert_eq!(parse_i64(i64::MIN.to_string().as_bytes()), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b"--1",
            b" 1",
            b"1 ",
            b"1a",
            b"0x10",
            b"9223372036854775808",
            b"-9223372036854775809",
        ] {
            assert_eq!(parse_i64(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn garbled_hashes_are_unreadable_not_panics() {
        let garbled = Value::Array(vec![
            Value::BulkString(b"m".to_vec()),
            Value::BulkString(b"soon".to_vec()),
        ]);
        assert!(decode_hash(garbled).is_err());
        let without_metadata = Value::Array(vec![
            Value::BulkString(b"d:x".to_vec()),
            Value::BulkString(b"1".to_vec()),
        ]);
        assert!(decode_hash(without_metadata).is_err());
        let mut newer = sample();
        newer.version = RECORD_VERSION + 1;
        assert!(decode_hash(hash_reply(&newer)).is_err());
        let bad_json = Value::Array(vec![
            Value::BulkString(b"d:x".to_vec()),
            Value::BulkString(b"{".to_vec()),
        ]);
        assert!(decode_hash(bad_json).is_err());
    }

    #[test]
    fn keys_hold_the_hash_in_a_hash_tag_never_the_id() {
        let store_prefix = "app:";
        let id = crate::SessionId::generate().unwrap();
        let key = id.key();
        let out = String::from_utf8(key_name(store_prefix, b's', &key)).unwrap();
        assert_eq!(out, format!("app:s:{{{}}}", key.to_hex()));
        assert!(!out.contains(&id.expose()));
    }

    #[test]
    fn index_members_carry_the_key_and_when_they_were_written() {
        let key = crate::SessionId::generate().unwrap().key();
        let member = index_member(&key);
        let (parsed, added) = parse_member(member.as_bytes()).unwrap();
        assert_eq!(parsed, key);
        assert!((wall_ms() - added).abs() < 60_000);
        assert!(parse_member(b"not-hex:1").is_none());
        assert!(parse_member(key.to_hex().as_bytes()).is_none());
        let old = Indexed {
            key,
            newest_added: 0,
            members: Vec::new(),
        };
        assert!(old.settled(wall_ms()));
        let fresh = Indexed {
            newest_added: wall_ms(),
            ..old
        };
        assert!(!fresh.settled(wall_ms()));
    }

    #[test]
    fn rename_fences_carry_their_time_and_name_their_new_key() {
        let to = crate::SessionId::generate().unwrap().key();
        let fence = rename_fence(1_700_000_000_000, &to);
        assert_eq!(fence, format!("1700000005000:{}", to.to_hex()));
        assert_eq!(fence_target(fence.as_bytes()), Some(to));
        for bad in [&b""[..], b"1", b"1:", b"1:xyz", to.to_hex().as_bytes()] {
            assert_eq!(fence_target(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn glob_characters_in_prefixes_are_escaped() {
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn milliseconds_round_trip_and_floor() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let ms = to_ms(t).unwrap();
        assert_eq!(ms, 1_700_000_000_123);
        assert_eq!(
            from_ms(ms).unwrap(),
            OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_000_000).unwrap()
        );
    }

    #[test]
    fn deadlines_are_rounded_up_to_the_millisecond() {
        let at = |nanos: i128| OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
        assert_eq!(
            deadline_ms(at(1_700_000_000_123_456_789)).unwrap(),
            1_700_000_000_124
        );
        assert_eq!(
            deadline_ms(at(1_700_000_000_123_000_000)).unwrap(),
            1_700_000_000_123
        );
        // Before 1970 too: half a millisecond before the epoch is the epoch.
        assert_eq!(deadline_ms(at(-500_000)).unwrap(), 0);
        assert_eq!(deadline_ms(at(-1_500_000)).unwrap(), -1);
    }
}
