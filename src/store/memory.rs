//! [`MemoryStore`]: sessions in a sharded in-process map.
//!
//! # Sweeping without stalls
//!
//! Each shard keeps, next to its map, an index of keys by the minute their deadline falls in. A
//! write adds the key to a bucket when the session is created or renamed, or its deadline moves
//! into another minute, and never searches the index. A sweep takes buckets whose minute is over
//! and checks their keys in chunks of [`SWEEP_CHUNK`], releasing the shard's lock between chunks:
//! a request waits at most for one chunk, however many sessions the store holds. A key whose
//! session was refreshed, rotated or deleted since it was filed is simply dropped from the old
//! bucket when the sweep reaches it.
//!
//! Such stale entries would otherwise stay until their minute is over, up to a whole idle window
//! (24 hours by default): a stream of sessions created and deleted at once (a login and a logout)
//! would grow the index without the store's count of sessions, and its limit, seeing it. So each
//! shard counts its index entries, and when they outnumber its records by more than its share of
//! [`COMPACT_SLACK`] (16,384 entries for the whole store, at least 16 per shard) past twice as
//! many, every change that adds an entry or removes a record
//! also checks [`SWEEP_CHUNK`] entries, round the index from where the last check stopped, and
//! drops those that no longer lead to their record's deadline. More than half of the entries are
//! stale then, so each check drops about half a chunk, and the index stays within about twice
//! the records.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use time::OffsetDateTime;

use crate::Expiry;
use crate::id::SessionKey;
use crate::record::{ChangeSet, Record, check_depth, earlier_deadline};
use crate::store::{
    ImmediateStore, Renamed, Saved, SessionInfo, SessionStore, StoreError, StoreErrorKind,
};

/// Shards per core for [`MemoryStore::new`], and the bounds of the default.
const SHARDS_PER_CORE: usize = 4;
const MIN_DEFAULT_SHARDS: usize = 16;
const MAX_DEFAULT_SHARDS: usize = 256;

/// Four shards per core, as a power of two between 16 and 256: enough that requests running on
/// different cores rarely want the same lock, and few enough that each shard's lock, table header
/// and deadline index stay in cache. Every write touches those three; with more shards than the
/// cores can use, each is touched too rarely to stay cached and a new session costs more cache
/// misses. Measured on the 2-core development machine (300,000 sessions created into an empty
/// store, one thread): 256 shards 360–590 ns per create, 16 shards 300–320 ns; under a web
/// server's load, which evicts more, the difference grows.
fn default_shards() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    cores
        .saturating_mul(SHARDS_PER_CORE)
        .next_power_of_two()
        .clamp(MIN_DEFAULT_SHARDS, MAX_DEFAULT_SHARDS)
}

/// A change set with more values and removals than this is merged into a stored session in one
/// pass (see [`Stored::merge`]), not one at a time.
const MERGE_ABOVE: usize = 8;

/// How many index entries a sweep checks per hold of a shard's lock.
pub(crate) const SWEEP_CHUNK: usize = 256;

/// How many stale deadline-index entries a store keeps in all, past as many as it has records,
/// before each change also drops some (see the module docs): each shard's share of it, with at
/// least [`MIN_SHARD_SLACK`] per shard.
const COMPACT_SLACK: usize = 64 * SWEEP_CHUNK;
/// The least slack a shard gets, however many shards there are.
const MIN_SHARD_SLACK: usize = 16;

/// The most chunks of index entries a full store looks at in each shard to make room (see
/// [`MemoryStore::with_max_sessions`]).
const ROOM_CHUNKS: usize = 4;

/// How many chunks [`MemoryStore`]'s `delete_expired` sweeps between two yields to the runtime.
const CHUNKS_PER_YIELD: usize = 16;

/// The most shards [`MemoryStore::with_shards`] uses: a key's shard is chosen by two of its bytes.
const MAX_SHARDS: usize = 1 << 16;

/// Sessions kept in memory, in a map split into shards with one lock each.
///
/// Good for tests, development and single-process apps that accept losing sessions on restart.
/// Every operation holds one shard's lock briefly (a rename holds its two keys' shards, the
/// lower-numbered first), so requests of different sessions rarely wait on each other: for a
/// hash-map operation, plus copying the session's values out on a load (a
/// session holding megabytes holds up its shard that long), plus, while the shard's index of
/// deadlines holds many stale entries, a check of 256 of them on a write (see the module docs).
/// Two things are shared by all shards: an operation that changes a session's owner also takes
/// the owner index's lock, inside the shard's, and creating or deleting a session updates the
/// count of sessions (one atomic operation). Change sets are merged under the shard lock, so
/// concurrent requests of one session that write different keys both keep their writes.
///
/// Expired records are dropped when a load finds them, and by
/// [`delete_expired`](SessionStore::delete_expired), which finds them through a per-shard index of
/// deadlines (by minute) and holds a shard's lock for at most 256 index entries at a time, and
/// yields to the runtime every 16 such chunks, so a sweep never stalls requests whatever the
/// number of sessions, on a current-thread runtime too. Run
/// [`spawn_cleanup`](crate::spawn_cleanup) so that sessions nobody comes back to do not accumulate.
///
/// Memory: a session holding one small value costs about 450 bytes of process memory, the
/// table, the index and allocator overhead included (measured as the resident size of the counter
/// example after 600,000 new visitors: 264 MB). Values are kept as JSON values, so large sessions
/// cost what their values cost.
///
/// Cheap to clone: clones share the sessions.
///
/// # Examples
///
/// ```
/// use tower_satchel::{MemoryStore, SessionLayer};
/// let store = MemoryStore::new();
/// let layer = SessionLayer::new(store.clone());
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    /// The keys of each owner's records, expired records not yet removed included. Changed only
    /// with the key's shard locked, in the same critical section as the record, so that two
    /// requests of one session change the index in the order they changed the record. The lock
    /// order is therefore a shard, then `owners`: nothing takes a shard's lock while it holds
    /// this one.
    owners: Mutex<HashMap<String, HashSet<SessionKey>>>,
    /// How many records the shards hold. Raised with the shard locked right before a new record
    /// goes in, and only while it is below `max_sessions`; lowered with the shard locked right
    /// after one is removed.
    sessions: AtomicUsize,
    /// See [`MemoryStore::with_max_sessions`]; `usize::MAX` when unlimited.
    max_sessions: AtomicUsize,
}

/// Hashes a [`SessionKey`] by taking 8 of its bytes: keys are SHA-256 digests, so those bytes are
/// already uniform, and SipHash over 32 bytes would be work for nothing. Hash flooding is not a
/// concern: only keys of IDs the server minted are ever stored, and a client cannot choose those.
/// (Bytes 8..16 are used so the hash is independent of the shard choice, which uses bytes 0..2.)
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `SessionKey` hashes as its 32 bytes (after a length prefix, which `write_usize` drops).
        if let Some(chunk) = bytes.get(8..16) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = u64::from_le_bytes(word);
        } else {
            // Not a session key: mix it in anyway, so the hasher stays correct for any input.
            for b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(*b);
            }
        }
    }

    fn write_usize(&mut self, _: usize) {}
}

type KeyMap<V> = HashMap<SessionKey, V, BuildHasherDefault<KeyHasher>>;

/// A [`Record`] as the memory store keeps it: the values in a vector sorted by name rather than
/// a B-tree, whose smallest node alone takes about 640 bytes, and the whole behind one pointer, so
/// a shard's table holds 40-byte entries and moves little when it grows. Measured as in the
/// [`MemoryStore`] docs, a session holding one small value went from about 930 bytes to 450.
struct Stored {
    data: Vec<(Box<str>, Value)>,
    created_at: OffsetDateTime,
    idle_deadline: OffsetDateTime,
    absolute_deadline: Option<OffsetDateTime>,
    expiry: Expiry,
    owner: Option<Box<str>>,
    version: u32,
}

impl Stored {
    fn from_record(record: &Record) -> Box<Self> {
        let mut data: Vec<(Box<str>, Value)> = record
            .data
            .iter()
            .map(|(name, value)| (Box::from(name.as_str()), value.clone()))
            .collect();
        // `position` searches by bisection. The map iterates in key order, unless serde_json's
        // `preserve_order` feature is on (any crate of the app can turn it on), when it keeps
        // insertion order. Names are unique, so an unstable sort is exact; on a vector already
        // sorted it makes one pass, and it never allocates.
        data.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        Box::new(Self {
            data,
            created_at: record.created_at,
            idle_deadline: record.idle_deadline,
            absolute_deadline: record.absolute_deadline,
            expiry: record.expiry,
            owner: record.owner.as_deref().map(Box::from),
            version: record.version,
        })
    }

    fn to_record(&self) -> Record {
        let mut record = Record::new(
            self.created_at,
            self.idle_deadline,
            self.absolute_deadline,
            self.expiry,
        );
        record.version = self.version;
        // One by one: `collect` would gather into a vector and sort it first.
        for (name, value) in &self.data {
            record.data.insert(String::from(&**name), value.clone());
        }
        record.owner = self.owner.as_deref().map(String::from);
        record
    }

    fn deadline(&self) -> OffsetDateTime {
        earlier_deadline(self.idle_deadline, self.absolute_deadline)
    }

    fn is_live(&self, now: OffsetDateTime) -> bool {
        now < self.deadline()
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.data.binary_search_by(|(have, _)| (**have).cmp(name))
    }

    /// The removals and values of a large change set, in one pass over the sorted values: one
    /// insertion or removal in the middle of the vector at a time would move the rest of it each
    /// time, under the shard's lock.
    fn merge(&mut self, changes: &ChangeSet) {
        let removed: HashSet<&str> = changes.removed.iter().map(String::as_str).collect();
        // Sorted here: `Map` keeps insertion order with serde_json's `preserve_order`.
        let mut set: Vec<(&String, &Value)> = changes.set.iter().collect();
        set.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let old = std::mem::take(&mut self.data);
        let mut merged = Vec::with_capacity(old.len() + set.len());
        let mut old = old.into_iter().peekable();
        for (name, value) in set {
            while let Some(entry) = old.next_if(|(have, _)| **have < **name) {
                if !removed.contains(&*entry.0) {
                    merged.push(entry);
                }
            }
            // Replaced by the new value.
            let _ = old.next_if(|(have, _)| **have == **name);
            merged.push((Box::from(name.as_str()), value.clone()));
        }
        merged.extend(old.filter(|(have, _)| !removed.contains(&**have)));
        self.data = merged;
    }

    /// [`ChangeSet::apply_to`] for this form, in the same order: clear, remove, set, metadata.
    fn apply(&mut self, changes: &ChangeSet) -> Saved {
        let outcome = changes.outcome_for(&self.expiry);
        if changes.cleared {
            self.data.clear();
        }
        if changes.set.len() + changes.removed.len() > MERGE_ABOVE {
            self.merge(changes);
        } else {
            for name in &changes.removed {
                if let Ok(at) = self.position(name) {
                    self.data.remove(at);
                }
            }
            for (name, value) in &changes.set {
                match self.position(name) {
                    Ok(at) => {
                        if let Some((_, slot)) = self.data.get_mut(at) {
                            slot.clone_from(value);
                        }
                    }
                    Err(at) => self
                        .data
                        .insert(at, (Box::from(name.as_str()), value.clone())),
                }
            }
        }
        if let Some(idle) = changes.idle_deadline
            && outcome == Saved::Applied
        {
            self.idle_deadline = idle;
        }
        if let Some(expiry) = changes.expiry {
            self.expiry = expiry;
        }
        if let Some(owner) = &changes.owner {
            self.owner = owner.as_deref().map(Box::from);
        }
        outcome
    }
}

#[derive(Default)]
struct Shard {
    records: KeyMap<Box<Stored>>,
    /// Keys by the minute (Unix time / 60) their deadline falls in. Every record has its key
    /// filed under its deadline's minute. A key may be filed under another minute too, or have
    /// no record: such stale entries are dropped by the sweep, or by [`Shard::compact`].
    by_minute: BTreeMap<i64, Vec<SessionKey>>,
    /// How many keys `by_minute` holds in all.
    entries: usize,
    /// Where the next [`Shard::compact`] starts: a minute, and a position in its bucket.
    cursor: (i64, usize),
    /// The stale entries this shard keeps before it compacts: its share of [`COMPACT_SLACK`].
    slack: usize,
}

fn minute(at: OffsetDateTime) -> i64 {
    at.unix_timestamp().div_euclid(60)
}

impl Shard {
    /// Files `key` under its record's deadline minute, unless it is filed there already.
    fn file(&mut self, key: SessionKey, before: Option<OffsetDateTime>, after: OffsetDateTime) {
        let target = minute(after);
        if before.map(minute) != Some(target) {
            self.by_minute.entry(target).or_default().push(key);
            self.entries += 1;
            self.compact_if_bloated();
        }
    }

    /// Whether `key`, found in the bucket of minute `at`, leads to its record's deadline.
    fn is_current(&self, key: &SessionKey, at: i64) -> bool {
        self.records
            .get(key)
            .is_some_and(|r| minute(r.deadline()) == at)
    }

    /// Call after a change that made an index entry stale: [`Shard::compact`] when the index
    /// holds more than twice as many entries as there are records, and the shard's slack more.
    fn compact_if_bloated(&mut self) {
        let allowed = self
            .records
            .len()
            .saturating_mul(2)
            .saturating_add(self.slack);
        if self.entries > allowed {
            self.compact();
        }
    }

    /// Checks up to [`SWEEP_CHUNK`] index entries, from [`Shard::cursor`] on and round to the
    /// first bucket, and drops those that are not current (see [`Shard::is_current`]).
    fn compact(&mut self) {
        let mut budget = SWEEP_CHUNK;
        let mut wrapped = false;
        while budget > 0 {
            let (from, position) = self.cursor;
            let Some((&at, _)) = self.by_minute.range(from..).next() else {
                if wrapped {
                    return;
                }
                wrapped = true;
                self.cursor = (i64::MIN, 0);
                continue;
            };
            let mut keys = self.by_minute.remove(&at).unwrap_or_default();
            let mut i = if at == from { position } else { 0 };
            while i < keys.len() && budget > 0 {
                budget -= 1;
                if self.is_current(&keys[i], at) {
                    i += 1;
                } else {
                    keys.swap_remove(i);
                    self.entries -= 1;
                }
            }
            self.cursor = if i < keys.len() {
                (at, i)
            } else {
                (at.saturating_add(1), 0)
            };
            if !keys.is_empty() {
                self.by_minute.insert(at, keys);
            }
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = self.inner.max_sessions.load(Ordering::Relaxed);
        f.debug_struct("MemoryStore")
            .field("shards", &self.inner.shards.len())
            .field("sessions", &self.len())
            .field("max_sessions", &(max != usize::MAX).then_some(max))
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves the maps consistent before anything that could panic,
    // so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryStore {
    /// An empty store with four shards per core: 16 on a machine of up to 4 cores, at most 256.
    pub fn new() -> Self {
        Self::with_shards(default_shards())
    }

    /// An empty store with `shards` shards (at least 1, at most 65,536: a key's shard is chosen
    /// by two bytes of it, so more could never be used).
    ///
    /// More shards mean less waiting when many cores write sessions at once; fewer mean each
    /// shard's hot data stays in cache. A shard's table grows by doubling while its lock is held,
    /// so the longest single wait grows with the sessions per shard: on the development machine,
    /// filling a store with a million sessions, the slowest single create took 4–14 ms with 16
    /// shards and 0.5–1.8 ms with 256. An app that keeps millions of sessions in memory and cares
    /// about its slowest requests more than its average should ask for 256.
    pub fn with_shards(shards: usize) -> Self {
        let shards = shards.clamp(1, MAX_SHARDS);
        let slack = (COMPACT_SLACK / shards).max(MIN_SHARD_SLACK);
        let shards = (0..shards)
            .map(|_| {
                Mutex::new(Shard {
                    slack,
                    ..Shard::default()
                })
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                shards,
                owners: Mutex::new(HashMap::new()),
                sessions: AtomicUsize::new(0),
                max_sessions: AtomicUsize::new(usize::MAX),
            }),
        }
    }

    /// Refuses new sessions once the store holds `max` (for this store and its clones).
    ///
    /// Without a limit, every visitor whose request writes to a new session adds one, until it
    /// expires: a flood of requests without a cookie to a route that writes grows the process by
    /// about 450 bytes per request (see [`MemoryStore`]). With one, a new session that does not
    /// fit fails like a write to a full disk or a full Redis: a [`StoreError`] of kind
    /// [`Backend`](StoreErrorKind::Backend), so the request gets an error response and no cookie,
    /// while existing sessions load, save, rotate ([`cycle_id`](crate::Session::cycle_id) moves
    /// the record, taking no second place) and are deleted as before.
    ///
    /// The store counts its sessions, expired ones not yet removed included, in one counter that
    /// a new session takes a place in (with its shard locked, right before it goes in) only while
    /// the count is below `max`. So the store never holds more than `max` sessions, however many
    /// requests create sessions at once, and holds `max` when they fill it. A full store first
    /// deletes up to 256 expired sessions (those whose deadline fell in an earlier minute), from
    /// the new session's shard or, if that has none, from the next shard that has some, and
    /// refuses the session if it found none (or a session created meanwhile took the place it
    /// freed). It looks at no more than 1,024 entries of each shard's index of deadlines for
    /// them, so the search costs a request a bounded time.
    ///
    /// # Performance impact
    ///
    /// The counter is kept with or without a limit: creating or deleting a session costs one
    /// atomic operation on memory all cores share. While the store is full and holds no expired
    /// sessions, each refused session looks at every shard's oldest deadlines, taking each
    /// shard's lock in turn.
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_satchel::MemoryStore;
    ///
    /// // About 1 GB at 450 bytes a session.
    /// let store = MemoryStore::new().with_max_sessions(2_000_000);
    /// # let _ = store;
    /// ```
    pub fn with_max_sessions(self, max: usize) -> Self {
        self.inner.max_sessions.store(max, Ordering::Relaxed);
        self
    }

    /// How many records the store holds, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).records.len())
            .sum()
    }

    /// Whether the store holds no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_index(&self, key: &SessionKey) -> usize {
        // Keys are SHA-256 digests: any two bytes are uniformly distributed.
        let [a, b, ..] = *key.as_bytes();
        usize::from(u16::from_le_bytes([a, b])) % self.inner.shards.len()
    }

    fn shard(&self, key: &SessionKey) -> &Mutex<Shard> {
        &self.inner.shards[self.shard_index(key)]
    }

    /// Moves `key` from `old`'s keys to `new`'s in the owner index. Call it with the key's shard
    /// locked, in the critical section that changed the record (see [`Inner::owners`]).
    fn index_owner(&self, key: &SessionKey, old: Option<&str>, new: Option<&str>) {
        if old == new {
            return;
        }
        let mut owners = lock(&self.inner.owners);
        if let Some(old) = old {
            unindex_owner(&mut owners, key, old);
        }
        if let Some(new) = new {
            owners.entry(new.to_owned()).or_default().insert(*key);
        }
    }

    /// Counts a new record, unless the store holds its maximum: false then. Call it with the
    /// key's shard locked, right before inserting the record.
    fn take_place(&self) -> bool {
        let max = self.inner.max_sessions.load(Ordering::Relaxed);
        self.inner
            .sessions
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Uncounts `removed` records. Call it with their shard locked, right after removing them.
    fn free_places(&self, removed: usize) {
        self.inner.sessions.fetch_sub(removed, Ordering::Relaxed);
    }

    /// Sweeps expired sessions to make room for a new one under `key`: up to [`SWEEP_CHUNK`]
    /// from the key's shard or, if that has none, from the next shard that has some, looking at
    /// no more than [`ROOM_CHUNKS`] chunks of each shard's index.
    fn make_room(&self, key: &SessionKey, now: OffsetDateTime) {
        let shards = &self.inner.shards;
        let from_the_keys = shards.iter().cycle().skip(self.shard_index(key));
        for shard in from_the_keys.take(shards.len()) {
            if self.sweep_shard(shard, now, SWEEP_CHUNK, ROOM_CHUNKS) > 0 {
                break;
            }
        }
    }

    /// Sweeps one shard: at most `limit` deletions and `chunks` holds of its lock.
    fn sweep_shard(
        &self,
        shard: &Mutex<Shard>,
        now: OffsetDateTime,
        limit: usize,
        chunks: usize,
    ) -> usize {
        let mut deleted = 0;
        for _ in 0..chunks {
            let (removed, more) = self.sweep_chunk(shard, now, limit - deleted);
            deleted += removed;
            if !more || deleted >= limit {
                break;
            }
        }
        deleted
    }

    /// One hold of the shard's lock: checks up to [`SWEEP_CHUNK`] index entries whose minute is
    /// over and deletes the expired records they lead to, at most `limit`. Returns how many it
    /// deleted, and whether entries whose minute is over may remain.
    fn sweep_chunk(
        &self,
        shard: &Mutex<Shard>,
        now: OffsetDateTime,
        limit: usize,
    ) -> (usize, bool) {
        let current = minute(now);
        let mut guard = lock(shard);
        let shard = &mut *guard;
        let Some(mut bucket) = shard.by_minute.first_entry() else {
            return (0, false);
        };
        let at = *bucket.key();
        if at >= current {
            // Deadlines in this minute (or later) may still be ahead of `now`.
            return (0, false);
        }
        let keys = bucket.get_mut();
        let take = keys.len().min(SWEEP_CHUNK);
        let chunk: Vec<SessionKey> = keys.drain(keys.len() - take..).collect();
        if keys.is_empty() {
            bucket.remove();
        }
        shard.entries -= take;
        let mut removed = Vec::new();
        let mut owners_gone = Vec::new();
        for (i, key) in chunk.iter().enumerate() {
            let expired = shard.records.get(key).is_some_and(|r| !r.is_live(now));
            if !expired {
                continue; // refreshed, rotated or deleted since it was filed
            }
            if removed.len() == limit {
                // Over the limit: put the rest back for the next call, where they were (the
                // stale ones are dropped now).
                let rest: Vec<SessionKey> = chunk[i..]
                    .iter()
                    .filter(|key| shard.is_current(key, at))
                    .copied()
                    .collect();
                if !rest.is_empty() {
                    shard.entries += rest.len();
                    shard.by_minute.entry(at).or_default().extend(rest);
                }
                break;
            }
            if let Some(mut record) = shard.records.remove(key) {
                if let Some(owner) = record.owner.take() {
                    owners_gone.push((*key, owner));
                }
                removed.push(record);
            }
        }
        self.free_places(removed.len());
        if !owners_gone.is_empty() {
            // Still under the shard's lock; once for the chunk.
            let mut owners = lock(&self.inner.owners);
            for (key, owner) in &owners_gone {
                unindex_owner(&mut owners, key, owner);
            }
        }
        drop(guard); // before the removed records are freed
        (removed.len(), true)
    }
}

/// Removes `key` from `owner`'s keys in the owner index, and `owner` once it has none.
fn unindex_owner(owners: &mut HashMap<String, HashSet<SessionKey>>, key: &SessionKey, owner: &str) {
    if let Some(keys) = owners.get_mut(owner) {
        keys.remove(key);
        if keys.is_empty() {
            owners.remove(owner);
        }
    }
}

impl ImmediateStore for MemoryStore {
    fn load_now(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> Result<Option<Record>, StoreError> {
        let mut shard = lock(self.shard(key));
        match shard.records.get(key) {
            Some(stored) if stored.is_live(now) => Ok(Some(stored.to_record())),
            Some(_) => {
                let dead = shard.records.remove(key);
                if let Some(dead) = &dead {
                    self.free_places(1);
                    self.index_owner(key, dead.owner.as_deref(), None);
                    shard.compact_if_bloated();
                }
                drop(shard); // before `dead` is freed
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn create_now(
        &self,
        key: &SessionKey,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        check_depth(record.data.values())?;
        let mutex = self.shard(key);
        let mut guard = lock(mutex);
        // A new key takes a place in the count before its record goes in, under the same lock; a
        // key that has a record, live or expired, keeps the place it has.
        if !guard.records.contains_key(key) && !self.take_place() {
            drop(guard);
            self.make_room(key, now);
            guard = lock(mutex);
            if !guard.records.contains_key(key) && !self.take_place() {
                return Err(StoreError::new(
                    StoreErrorKind::Backend,
                    "memory store full: the limit on sessions is reached",
                ));
            }
        }
        let shard = &mut *guard;
        let old = match shard.records.entry(*key) {
            Entry::Occupied(existing) if existing.get().is_live(now) => return Ok(false),
            Entry::Occupied(mut dead) => Some(dead.insert(Stored::from_record(record))),
            Entry::Vacant(slot) => {
                slot.insert(Stored::from_record(record));
                None
            }
        };
        shard.file(*key, None, record.deadline());
        self.index_owner(
            key,
            old.as_ref().and_then(|r| r.owner.as_deref()),
            record.owner.as_deref(),
        );
        drop(guard); // before `old` is freed
        Ok(true)
    }

    fn save_now(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        check_depth(changes.set.values())?;
        let mut guard = lock(self.shard(key));
        let shard = &mut *guard;
        let Some(record) = shard.records.get_mut(key).filter(|r| r.is_live(now)) else {
            return Ok(Saved::Gone);
        };
        // The owner index changes only when the request changed the owner.
        let old_owner = changes.owner.is_some().then(|| record.owner.clone());
        let before = record.deadline();
        let outcome = record.apply(changes);
        let after = record.deadline();
        let new_owner = old_owner.is_some().then(|| record.owner.clone());
        shard.file(*key, Some(before), after);
        if let (Some(old), Some(new)) = (old_owner, new_owner) {
            self.index_owner(key, old.as_deref(), new.as_deref());
        }
        drop(guard);
        Ok(outcome)
    }

    fn touch_now(
        &self,
        key: &SessionKey,
        idle_deadline: OffsetDateTime,
        basis: Expiry,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        let mut guard = lock(self.shard(key));
        let shard = &mut *guard;
        match shard.records.get_mut(key).filter(|r| r.is_live(now)) {
            Some(record) if record.expiry != basis => Ok(Saved::PolicyChanged),
            Some(record) => {
                let before = record.deadline();
                record.idle_deadline = idle_deadline;
                let after = record.deadline();
                shard.file(*key, Some(before), after);
                Ok(Saved::Applied)
            }
            None => Ok(Saved::Gone),
        }
    }

    fn delete_now(&self, key: &SessionKey) -> Result<(), StoreError> {
        let mut shard = lock(self.shard(key));
        let removed = shard.records.remove(key);
        if let Some(record) = &removed {
            self.free_places(1);
            self.index_owner(key, record.owner.as_deref(), None);
            shard.compact_if_bloated();
        }
        drop(shard); // before `removed` is freed
        Ok(())
    }

    fn rename_now(
        &self,
        from: &SessionKey,
        to: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Renamed, StoreError> {
        check_depth(changes.set.values())?;
        // Both shards locked for the whole move, the lower index first (no other code holds two
        // shard locks at once), so every other operation on either key sees the move whole.
        let shards = &self.inner.shards;
        let (from_at, to_at) = (self.shard_index(from), self.shard_index(to));
        let mut first = lock(&shards[from_at.min(to_at)]);
        let mut second = (from_at != to_at).then(|| lock(&shards[from_at.max(to_at)]));
        let (from_second, to_second) = (from_at > to_at, to_at > from_at);
        let mut stored = {
            let shard = pick(&mut first, second.as_deref_mut(), from_second);
            if !shard.records.get(from).is_some_and(|r| r.is_live(now)) {
                return Ok(Renamed::Gone);
            }
            let to_shard = pick(&mut first, second.as_deref_mut(), to_second);
            if to_shard.records.get(to).is_some_and(|r| r.is_live(now)) {
                return Ok(Renamed::Taken);
            }
            let shard = pick(&mut first, second.as_deref_mut(), from_second);
            let Some(stored) = shard.records.remove(from) else {
                return Ok(Renamed::Gone);
            };
            shard.compact_if_bloated();
            stored
        };
        let old_owner = stored.owner.clone();
        stored.apply(changes);
        let deadline = stored.deadline();
        let new_owner = stored.owner.clone();
        let shard = pick(&mut first, second.as_deref_mut(), to_second);
        // An expired record under `to` is replaced; the moved one keeps `from`'s place.
        let replaced = shard.records.insert(*to, stored);
        shard.file(*to, None, deadline);
        if replaced.is_some() {
            self.free_places(1);
        }
        let replaced_owner = replaced.as_ref().and_then(|r| r.owner.as_deref());
        if old_owner.is_some() || new_owner.is_some() || replaced_owner.is_some() {
            let mut owners = lock(&self.inner.owners);
            if let Some(old) = old_owner.as_deref() {
                unindex_owner(&mut owners, from, old);
            }
            if let Some(dead) = replaced_owner {
                unindex_owner(&mut owners, to, dead);
            }
            if let Some(new) = new_owner {
                owners.entry(String::from(new)).or_default().insert(*to);
            }
        }
        drop(second);
        drop(first); // before `replaced` is freed
        Ok(Renamed::Applied)
    }
}

/// The shard of a key in [`MemoryStore::rename_now`]: `second` when the key is in the second
/// shard locked, else `first` (which is also the only one when both keys share a shard).
fn pick<'a>(first: &'a mut Shard, second: Option<&'a mut Shard>, in_second: bool) -> &'a mut Shard {
    match second {
        Some(shard) if in_second => shard,
        _ => first,
    }
}

// The async operations are the immediate ones: a shard lock is held only for a map operation.
impl SessionStore for MemoryStore {
    fn immediate(&self) -> Option<&dyn ImmediateStore> {
        Some(self)
    }

    async fn load(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> Result<Option<Record>, StoreError> {
        self.load_now(key, now)
    }

    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.create_now(key, record, now)
    }

    async fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        self.save_now(key, changes, now)
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: OffsetDateTime,
        basis: Expiry,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        self.touch_now(key, idle_deadline, basis, now)
    }

    async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.delete_now(key)
    }

    async fn rename(
        &self,
        from: &SessionKey,
        to: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Renamed, StoreError> {
        self.rename_now(from, to, changes, now)
    }

    // Yields to the runtime every `CHUNKS_PER_YIELD` chunks, so that a long sweep (many expired
    // sessions, or many stale index entries) lets requests on the same thread run.
    async fn delete_expired(&self, now: OffsetDateTime, limit: usize) -> Result<usize, StoreError> {
        let mut deleted = 0;
        let mut chunks = 0usize;
        for shard in self.inner.shards.iter() {
            loop {
                if deleted >= limit {
                    return Ok(deleted);
                }
                let (removed, more) = self.sweep_chunk(shard, now, limit - deleted);
                deleted += removed;
                if !more {
                    break;
                }
                chunks += 1;
                if chunks.is_multiple_of(CHUNKS_PER_YIELD) {
                    tokio::task::yield_now().await;
                }
            }
        }
        Ok(deleted)
    }

    async fn list_owner(
        &self,
        owner: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        let keys: Vec<SessionKey> = lock(&self.inner.owners)
            .get(owner)
            .map(|keys| keys.iter().copied().collect())
            .unwrap_or_default();
        let mut sessions = Vec::with_capacity(keys.len());
        for key in keys {
            let shard = lock(self.shard(&key));
            if let Some(record) = shard.records.get(&key)
                && record.is_live(now)
                && record.owner.as_deref() == Some(owner)
            {
                sessions.push(SessionInfo {
                    key,
                    created_at: record.created_at,
                    deadline: record.deadline(),
                });
            }
        }
        sessions.sort_by_key(|s| s.created_at);
        Ok(sessions)
    }

    async fn delete_owner(&self, owner: &str) -> Result<usize, StoreError> {
        // The index's lock is released before any shard's is taken (the lock order is a shard,
        // then the index), so each record is checked again under its shard's lock, and the
        // index updated there. A session renamed meanwhile (`cycle_id`) has moved to a key the
        // first read did not list, so the index is read again until it lists no key not tried
        // yet: each further round needs a session of this owner created or renamed since.
        let mut tried = HashSet::new();
        let mut deleted = 0;
        loop {
            let keys: Vec<SessionKey> = lock(&self.inner.owners)
                .get(owner)
                .map(|keys| keys.difference(&tried).copied().collect())
                .unwrap_or_default();
            if keys.is_empty() {
                return Ok(deleted);
            }
            for key in keys {
                tried.insert(key);
                let mut shard = lock(self.shard(&key));
                if shard.records.get(&key).and_then(|r| r.owner.as_deref()) != Some(owner) {
                    continue; // deleted, renamed or given another owner since
                }
                let removed = shard.records.remove(&key);
                self.free_places(1);
                self.index_owner(&key, Some(owner), None);
                shard.compact_if_bloated();
                drop(shard); // before `removed` is freed
                drop(removed);
                deleted += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Expiry, SessionId};
    use std::sync::TryLockError;
    use std::thread;
    use std::time::{Duration as StdDuration, Instant};
    use time::Duration;

    fn record(now: OffsetDateTime, ttl: Duration) -> Record {
        Record::new(now, now + ttl, None, Expiry::OnSessionEnd)
    }

    proptest::proptest! {
        /// The compact form applies a change set exactly as `ChangeSet::apply_to` does to a
        /// record, and converts back to the same record.
        #[test]
        fn stored_form_applies_change_sets_like_records(
            start in proptest::collection::btree_map("[a-e]{0,2}", 0u8..4, 0..20),
            cleared in proptest::bool::ANY,
            // Up to 16 of each: past `MERGE_ABOVE`, the one-pass merge.
            set in proptest::collection::btree_map("[a-e]{0,2}", 0u8..4, 0..16),
            removed in proptest::collection::vec("[a-e]{0,2}", 0..16),
            owner in proptest::option::of(proptest::option::of("[a-z]{1,3}")),
            basis in proptest::option::of(proptest::bool::ANY),
        ) {
            let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
            let mut record = record(now, Duration::hours(1));
            record.owner = Some("first".into());
            for (name, value) in start {
                record.data.insert(name, value.into());
            }
            let mut changes = ChangeSet {
                cleared,
                removed: removed.into_iter().filter(|name| !set.contains_key(name)).collect(),
                idle_deadline: Some(now + Duration::hours(2)),
                // The record's own policy, or another: the deadline then stays.
                deadline_basis: basis.map(|same| if same {
                    Expiry::OnSessionEnd
                } else {
                    Expiry::OnInactivity(Duration::hours(1))
                }),
                owner,
                ..ChangeSet::default()
            };
            for (name, value) in set {
                changes.set.insert(name, value.into());
            }
            let mut stored = Stored::from_record(&record);
            proptest::prop_assert_eq!(&stored.to_record(), &record);
            let outcome = stored.apply(&changes);
            proptest::prop_assert_eq!(changes.apply_to(&mut record), outcome);
            proptest::prop_assert_eq!(stored.to_record(), record);
        }
    }

    #[test]
    fn keys_hash_to_their_own_bytes() {
        use std::hash::BuildHasher;
        let key = SessionId::generate().unwrap().key();
        let hash = BuildHasherDefault::<KeyHasher>::default().hash_one(key);
        let mut word = [0u8; 8];
        word.copy_from_slice(&key.as_bytes()[8..16]);
        assert_eq!(hash, u64::from_le_bytes(word));
        let other = SessionId::generate().unwrap().key();
        assert_ne!(
            hash,
            BuildHasherDefault::<KeyHasher>::default().hash_one(other)
        );
    }

    #[tokio::test]
    async fn a_sweep_finds_expired_sessions_among_many_live_ones() {
        let store = MemoryStore::with_shards(4);
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut short = Vec::new();
        for i in 0..2000 {
            let key = SessionId::generate().unwrap().key();
            let ttl = if i % 10 == 0 {
                Duration::minutes(2)
            } else {
                Duration::hours(5)
            };
            assert!(store.create(&key, &record(now, ttl), now).await.unwrap());
            if i % 10 == 0 {
                short.push(key);
            }
        }
        let later = now + Duration::minutes(10);
        let mut deleted = 0;
        loop {
            let n = store.delete_expired(later, 50).await.unwrap();
            assert!(n <= 50, "the limit holds");
            if n == 0 {
                break;
            }
            deleted += n;
        }
        assert_eq!(deleted, 200);
        assert_eq!(store.len(), 1800);
        assert_counted(&store);
    }

    #[tokio::test]
    async fn refreshed_sessions_survive_the_sweep_of_their_old_minute() {
        let store = MemoryStore::with_shards(1);
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let key = SessionId::generate().unwrap().key();
        assert!(
            store
                .create(&key, &record(now, Duration::minutes(2)), now)
                .await
                .unwrap()
        );
        let t1 = now + Duration::minutes(1);
        assert_eq!(
            store
                .touch(&key, t1 + Duration::hours(1), Expiry::OnSessionEnd, t1)
                .await
                .unwrap(),
            Saved::Applied
        );
        let t2 = now + Duration::minutes(30);
        assert_eq!(store.delete_expired(t2, 10).await.unwrap(), 0);
        assert!(store.load(&key, t2).await.unwrap().is_some());
        // Its new minute is swept once it is over.
        let t3 = now + Duration::hours(2);
        assert_eq!(store.delete_expired(t3, 10).await.unwrap(), 1);
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn a_sweep_stops_at_its_limit_and_the_next_one_resumes() {
        let store = MemoryStore::with_shards(1);
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        for _ in 0..(SWEEP_CHUNK * 3 + 7) {
            let key = SessionId::generate().unwrap().key();
            store
                .create(&key, &record(now, Duration::minutes(1)), now)
                .await
                .unwrap();
        }
        let later = now + Duration::minutes(5);
        let shard = &store.inner.shards[0];
        assert_eq!(store.sweep_shard(shard, later, 100, usize::MAX), 100);
        assert_eq!(store.len(), SWEEP_CHUNK * 3 + 7 - 100);
        // The keys left over by the limit went back under their own minute: the index still
        // files every record where its deadline falls.
        assert_counted(&store);
        assert_eq!(
            store.delete_expired(later, usize::MAX).await.unwrap(),
            SWEEP_CHUNK * 3 + 7 - 100,
            "entries left over by the limit are found again"
        );
        assert!(store.is_empty());
        assert!(lock(shard).by_minute.is_empty(), "the index empties too");
        assert_counted(&store);
    }

    /// A sweep that reaches its limit in a chunk that also holds a stale entry puts back only
    /// the current ones, under their own minute, and leaves no empty bucket behind.
    #[test]
    fn a_sweep_stopped_by_its_limit_keeps_the_index_whole() {
        let store = MemoryStore::with_shards(1);
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let key = || SessionId::generate().unwrap().key();
        let (a, moved) = (key(), key());
        for k in [&a, &moved] {
            store
                .create_now(k, &record(now, Duration::minutes(1)), now)
                .unwrap();
        }
        // One of them moves to a later minute (still over by the sweep's time): its first entry
        // goes stale.
        let later_deadline = ChangeSet {
            idle_deadline: Some(now + Duration::minutes(3)),
            ..ChangeSet::default()
        };
        assert_eq!(
            store.save_now(&moved, &later_deadline, now).unwrap(),
            Saved::Applied
        );
        let sweep_at = now + Duration::minutes(10);
        let shard = &store.inner.shards[0];
        // The first sweep deletes `a`, and reaches its limit at `moved`'s stale entry.
        for _ in 0..2 {
            assert_eq!(store.sweep_shard(shard, sweep_at, 1, usize::MAX), 1);
            assert_counted(&store);
        }
        assert!(store.is_empty());
        assert_eq!(lock(shard).entries, 0);
    }

    /// Polls the key's record without ever waiting for its shard's lock, until `seen` holds for
    /// it (`None` when there is no record) or 20 ms have passed. False if it never did: the lock
    /// was held all along, or the operation has not run yet.
    fn settles(
        store: &MemoryStore,
        key: &SessionKey,
        seen: impl Fn(Option<&Stored>) -> bool,
    ) -> bool {
        let deadline = Instant::now() + StdDuration::from_millis(20);
        while Instant::now() < deadline {
            match store.shard(key).try_lock() {
                Ok(shard) if seen(shard.records.get(key).map(|r| &**r)) => return true,
                Ok(_) | Err(TryLockError::WouldBlock) => thread::yield_now(),
                Err(TryLockError::Poisoned(_)) => return false,
            }
        }
        false
    }

    /// Runs `first`, then `second`, on one key while the test holds the owner index's lock, and
    /// then lets `second` update the index before `first`: the interleaving that put the index
    /// out of step with the records when they changed it after releasing the shard's lock.
    ///
    /// Each operation is started once the one before has changed the record, if the shard's lock
    /// lets the test see that within 20 ms. `std`'s lock wakes its waiters in the order they came,
    /// so the test releases the lock, which wakes `first`, and takes it back before `first` runs;
    /// `first` then waits again, behind `second`. Updating the index under the shard's lock makes
    /// the interleaving impossible: `first` then waits for the index while holding the shard,
    /// and `second` cannot change the record before `first` is done.
    fn race_on_the_owner_index(
        store: &MemoryStore,
        key: SessionKey,
        first: impl FnOnce(&MemoryStore) + Send + 'static,
        first_done: impl Fn(Option<&Stored>) -> bool,
        second: impl FnOnce(&MemoryStore) + Send + 'static,
        second_done: impl Fn(Option<&Stored>) -> bool,
    ) {
        let owners = lock(&store.inner.owners);
        let a = {
            let store = store.clone();
            thread::spawn(move || first(&store))
        };
        settles(store, &key, first_done);
        let b = {
            let store = store.clone();
            thread::spawn(move || second(&store))
        };
        settles(store, &key, second_done);
        // Both now wait for the index's lock (without the fix).
        thread::sleep(StdDuration::from_millis(2));
        drop(owners);
        let owners = lock(&store.inner.owners);
        thread::sleep(StdDuration::from_millis(2));
        drop(owners);
        a.join().unwrap();
        b.join().unwrap();
    }

    /// Asserts that the count of sessions is the number of records.
    fn assert_counted(store: &MemoryStore) {
        let records: usize = store
            .inner
            .shards
            .iter()
            .map(|s| lock(s).records.len())
            .sum();
        assert_eq!(store.inner.sessions.load(Ordering::Relaxed), records);
        assert_deadline_index(store);
    }

    /// Asserts that each shard counts its deadline-index entries right, and that every record
    /// is filed under its deadline's minute (what the sweep relies on to find it).
    fn assert_deadline_index(store: &MemoryStore) {
        for shard in store.inner.shards.iter() {
            let shard = lock(shard);
            let filed: HashSet<(i64, SessionKey)> = shard
                .by_minute
                .iter()
                .flat_map(|(at, keys)| keys.iter().map(move |key| (*at, *key)))
                .collect();
            let entries: usize = shard.by_minute.values().map(Vec::len).sum();
            assert_eq!(shard.entries, entries, "the count of index entries");
            assert!(shard.by_minute.values().all(|keys| !keys.is_empty()));
            for (key, record) in &shard.records {
                assert!(
                    filed.contains(&(minute(record.deadline()), *key)),
                    "a record not filed under its deadline's minute"
                );
            }
        }
    }

    /// Sessions created and deleted at once (a login, then a logout) leave index entries that no
    /// record needs. They are dropped long before their minute is over: the index stays within
    /// twice the records and the shard's slack, whatever the churn, and every live record stays
    /// filed, so the sweep still finds it.
    /// The store's slack for stale index entries is shared out among its shards, so that many
    /// shards do not multiply it (with a least share per shard).
    #[test]
    fn the_index_slack_is_shared_among_the_shards() {
        let slack = |shards| lock(&MemoryStore::with_shards(shards).inner.shards[0]).slack;
        assert_eq!(slack(1), COMPACT_SLACK);
        assert_eq!(slack(16), 1024);
        assert_eq!(slack(256), 64);
        assert_eq!(slack(MAX_SHARDS), MIN_SHARD_SLACK);
    }

    #[test]
    fn churn_does_not_grow_the_deadline_index() {
        let store = MemoryStore::with_shards(1);
        // A default store's share per shard (16 shards), so that the churn below passes it.
        lock(&store.inner.shards[0]).slack = COMPACT_SLACK / 16;
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut kept = Vec::new();
        for i in 0..20_000u32 {
            let key = SessionId::generate().unwrap().key();
            let ttl = Duration::minutes(i64::from(1 + i % 90));
            store.create_now(&key, &record(now, ttl), now).unwrap();
            match i % 4 {
                0 => store.delete_now(&key).unwrap(),
                1 => {
                    let to = SessionId::generate().unwrap().key();
                    let renamed = store.rename_now(&key, &to, &ChangeSet::default(), now);
                    assert_eq!(renamed.unwrap(), Renamed::Applied);
                    store.delete_now(&to).unwrap();
                }
                2 => {
                    // Moves the deadline to another minute: the old entry goes stale.
                    let later = now + Duration::minutes(120);
                    let moved = ChangeSet {
                        idle_deadline: Some(later),
                        ..ChangeSet::default()
                    };
                    assert_eq!(store.save_now(&key, &moved, now).unwrap(), Saved::Applied);
                    kept.push(key);
                }
                _ => kept.push(key),
            }
            // Over the threshold, each change checks a chunk, which may happen to hold no stale
            // entry; a round of the whole index drops them all, so the excess stays small.
            let shard = lock(&store.inner.shards[0]);
            assert!(
                shard.entries <= 2 * shard.records.len() + shard.slack + SWEEP_CHUNK,
                "{} index entries for {} records",
                shard.entries,
                shard.records.len()
            );
        }
        assert_eq!(store.len(), kept.len());
        assert_counted(&store);
        let much_later = now + Duration::hours(3);
        let swept = futures_sweep(&store, much_later);
        assert_eq!(
            swept,
            kept.len(),
            "every live record was still found by the sweep"
        );
        assert!(store.is_empty());
        assert_eq!(lock(&store.inner.shards[0]).entries, 0);
    }

    fn futures_sweep(store: &MemoryStore, now: OffsetDateTime) -> usize {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(store.delete_expired(now, usize::MAX))
            .unwrap()
    }

    /// A long sweep yields to the runtime now and then, so a request on the same thread (a
    /// current-thread runtime) is not held up until the whole sweep is done.
    #[tokio::test]
    async fn a_long_sweep_lets_other_tasks_run() {
        let store = MemoryStore::with_shards(1);
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        for _ in 0..SWEEP_CHUNK * CHUNKS_PER_YIELD * 2 {
            let key = SessionId::generate().unwrap().key();
            store
                .create_now(&key, &record(now, Duration::minutes(1)), now)
                .unwrap();
        }
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let other = tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
        let later = now + Duration::minutes(5);
        let deleted = store.delete_expired(later, usize::MAX).await.unwrap();
        assert_eq!(deleted, SWEEP_CHUNK * CHUNKS_PER_YIELD * 2);
        assert!(
            ran.load(Ordering::SeqCst),
            "the other task ran during the sweep"
        );
        other.await.unwrap();
    }

    #[test]
    fn more_shards_than_a_key_can_choose_are_not_made() {
        assert_eq!(
            MemoryStore::with_shards(1 << 20).inner.shards.len(),
            1 << 16
        );
        assert_eq!(MemoryStore::with_shards(0).inner.shards.len(), 1);
    }

    /// Asserts that the owner index lists exactly the keys of the records that have an owner.
    fn assert_index_matches_records(store: &MemoryStore) {
        let mut owned: HashMap<String, HashSet<SessionKey>> = HashMap::new();
        for shard in store.inner.shards.iter() {
            for (key, record) in &lock(shard).records {
                if let Some(owner) = &record.owner {
                    owned.entry(owner.to_string()).or_default().insert(*key);
                }
            }
        }
        assert_eq!(*lock(&store.inner.owners), owned);
    }

    fn owner_change(owner: Option<&str>) -> ChangeSet {
        ChangeSet {
            owner: Some(owner.map(String::from)),
            ..ChangeSet::default()
        }
    }

    fn owner_is(owner: Option<&'static str>) -> impl Fn(Option<&Stored>) -> bool {
        move |record| record.is_some_and(|r| r.owner.as_deref() == owner)
    }

    #[tokio::test]
    async fn an_owner_set_while_another_request_clears_it_stays_revocable() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        for _ in 0..20 {
            let store = MemoryStore::with_shards(1);
            let key = SessionId::generate().unwrap().key();
            let mut alices = record(now, Duration::hours(1));
            alices.owner = Some("alice".into());
            assert!(store.create_now(&key, &alices, now).unwrap());
            race_on_the_owner_index(
                &store,
                key,
                move |store| {
                    let saved = store.save_now(&key, &owner_change(None), now).unwrap();
                    assert_eq!(saved, Saved::Applied);
                },
                owner_is(None),
                move |store| {
                    let saved = store.save_now(&key, &owner_change(Some("alice")), now);
                    assert_eq!(saved.unwrap(), Saved::Applied);
                },
                owner_is(Some("alice")),
            );
            assert_index_matches_records(&store);
            assert_counted(&store);
            let owned = store
                .load_now(&key, now)
                .unwrap()
                .is_some_and(|r| r.owner.as_deref() == Some("alice"));
            assert_eq!(
                store.delete_owner("alice").await.unwrap(),
                usize::from(owned)
            );
            // Either request may have come last: the session goes exactly when it is alice's.
            let left = store.load_now(&key, now).unwrap();
            assert_eq!(left.is_some(), !owned, "deleted exactly when alice's");
        }
    }

    #[tokio::test]
    async fn a_delete_racing_a_login_leaves_no_owner_entry_behind() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        for _ in 0..20 {
            let store = MemoryStore::with_shards(1);
            let key = SessionId::generate().unwrap().key();
            assert!(
                store
                    .create_now(&key, &record(now, Duration::hours(1)), now)
                    .unwrap()
            );
            race_on_the_owner_index(
                &store,
                key,
                move |store| {
                    store
                        .save_now(&key, &owner_change(Some("alice")), now)
                        .unwrap();
                },
                owner_is(Some("alice")),
                move |store| store.delete_now(&key).unwrap(),
                |record| record.is_none(),
            );
            assert!(store.is_empty());
            assert!(lock(&store.inner.owners).is_empty(), "a deleted key stayed");
            assert_counted(&store);
        }
    }

    #[test]
    fn stored_values_are_sorted_whatever_order_the_record_keeps() {
        // With serde_json's `preserve_order` feature, which any crate in an app's dependency tree
        // can turn on, a record's map iterates in insertion order. Only a build with that feature
        // shows the failure: `cargo test --lib --features serde_json/preserve_order`.
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut record = record(now, Duration::hours(1));
        record.data.insert("b".into(), 1.into());
        record.data.insert("a".into(), 2.into());
        let mut stored = Stored::from_record(&record);
        let names = |stored: &Stored| -> Vec<String> {
            stored
                .data
                .iter()
                .map(|(name, _)| name.to_string())
                .collect()
        };
        assert_eq!(names(&stored), ["a", "b"]);
        let mut changes = ChangeSet::default();
        changes.removed.push("b".into());
        changes.set.insert("c".into(), 3.into());
        stored.apply(&changes);
        assert_eq!(names(&stored), ["a", "c"], "a removed value came back");
        let mut expected = record.clone();
        changes.apply_to(&mut expected);
        assert_eq!(stored.to_record(), expected);
    }

    /// A key whose shard is not `other`'s.
    fn key_in_another_shard(store: &MemoryStore, other: &SessionKey) -> SessionKey {
        loop {
            let key = SessionId::generate().unwrap().key();
            if !std::ptr::eq(store.shard(&key), store.shard(other)) {
                return key;
            }
        }
    }

    /// Creates a session under `key` (a fresh one when `None`), live for `ttl` from `at`.
    fn create_at(
        store: &MemoryStore,
        key: Option<&SessionKey>,
        at: OffsetDateTime,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let fresh = SessionId::generate().unwrap().key();
        store.create_now(key.unwrap_or(&fresh), &record(at, ttl), at)
    }

    #[test]
    fn a_store_of_many_shards_holds_exactly_its_maximum() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let hour = Duration::hours(1);
        let store = MemoryStore::with_shards(16).with_max_sessions(1);
        let first = SessionId::generate().unwrap().key();
        assert!(create_at(&store, Some(&first), now, hour).unwrap());
        let second = key_in_another_shard(&store, &first);
        assert!(create_at(&store, Some(&second), now, hour).is_err());
        assert_eq!(store.len(), 1);

        let store = MemoryStore::with_shards(16).with_max_sessions(1000);
        let keys: Vec<SessionKey> = (0..1000)
            .map(|_| SessionId::generate().unwrap().key())
            .collect();
        for key in &keys {
            assert!(create_at(&store, Some(key), now, hour).unwrap());
        }
        let refused = create_at(&store, None, now, hour);
        assert_eq!(refused.unwrap_err().kind(), StoreErrorKind::Backend);
        assert_eq!(store.len(), 1000);
        assert_counted(&store);
        // Deleting one lets exactly one more in.
        store.delete_now(&keys[0]).unwrap();
        assert!(create_at(&store, None, now, hour).unwrap());
        assert!(create_at(&store, None, now, hour).is_err());
        assert_eq!(store.len(), 1000);
        assert_counted(&store);
    }

    #[test]
    fn a_full_store_sweeps_expired_sessions_of_any_shard_to_make_room() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let later = now + Duration::minutes(5);
        let store = MemoryStore::with_shards(16).with_max_sessions(1);
        let short = SessionId::generate().unwrap().key();
        assert!(create_at(&store, Some(&short), now, Duration::minutes(1)).unwrap());
        let key = key_in_another_shard(&store, &short);
        assert!(create_at(&store, Some(&key), later, Duration::hours(1)).unwrap());
        assert_eq!(store.len(), 1, "the expired session was swept");

        let store = MemoryStore::with_shards(16).with_max_sessions(1000);
        for _ in 0..1000 {
            assert!(create_at(&store, None, now, Duration::minutes(1)).unwrap());
        }
        for _ in 0..1000 {
            assert!(create_at(&store, None, later, Duration::hours(1)).unwrap());
        }
        assert_eq!(store.len(), 1000);
        assert_counted(&store);
    }

    #[test]
    fn concurrent_creates_fill_the_store_to_its_maximum_and_no_further() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let store = MemoryStore::with_shards(16).with_max_sessions(1000);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                thread::spawn(move || {
                    (0..400)
                        .filter(|_| create_at(&store, None, now, Duration::hours(1)).is_ok())
                        .count()
                })
            })
            .collect();
        let created: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(created, 1000);
        assert_eq!(store.len(), 1000);
        assert_counted(&store);
    }

    #[tokio::test]
    async fn the_owner_index_drops_keys_that_are_deleted_expired_or_given_another_owner() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let later = now + Duration::minutes(5);
        let store = MemoryStore::with_shards(4);
        let owned = |owner: &str, ttl: Duration, at: OffsetDateTime| {
            let mut record = record(at, ttl);
            record.owner = Some(owner.into());
            record
        };
        let sizes = |store: &MemoryStore| -> BTreeMap<String, usize> {
            lock(&store.inner.owners)
                .iter()
                .map(|(owner, keys)| (owner.clone(), keys.len()))
                .collect()
        };
        let keys: Vec<SessionKey> = (0..7)
            .map(|_| SessionId::generate().unwrap().key())
            .collect();
        let long = Duration::hours(1);
        let short = Duration::minutes(1);
        for (key, (owner, ttl)) in keys.iter().zip([
            ("alice", long),
            ("alice", long),
            ("bob", long),
            ("carol", short),
            ("dave", short),
            ("frank", short),
            ("gina", long),
        ]) {
            assert!(store.create_now(key, &owned(owner, ttl, now), now).unwrap());
        }
        assert_eq!(lock(&store.inner.owners).len(), 6);

        store.delete_now(&keys[0]).unwrap();
        assert_eq!(sizes(&store).get("alice"), Some(&1), "deleted");
        assert_counted(&store);
        store.save_now(&keys[1], &owner_change(None), now).unwrap();
        assert_eq!(sizes(&store).get("alice"), None, "owner cleared");
        store
            .save_now(&keys[2], &owner_change(Some("erin")), now)
            .unwrap();
        assert_eq!(sizes(&store).get("bob"), None, "owner changed");
        assert!(store.load_now(&keys[3], later).unwrap().is_none());
        assert_eq!(sizes(&store).get("carol"), None, "expired, found by a load");
        assert_counted(&store);
        // The expired record of frank is replaced by a new one of harry's.
        assert!(
            store
                .create_now(&keys[5], &owned("harry", long, later), later)
                .unwrap()
        );
        assert_eq!(sizes(&store).get("frank"), None, "expired, replaced");
        assert_counted(&store);
        assert_eq!(store.delete_expired(later, usize::MAX).await.unwrap(), 1);
        assert_eq!(sizes(&store).get("dave"), None, "expired, swept");
        assert_counted(&store);
        assert_eq!(store.delete_owner("gina").await.unwrap(), 1);
        assert_eq!(sizes(&store).get("gina"), None, "revoked");
        assert_counted(&store);
        assert_eq!(
            sizes(&store),
            BTreeMap::from([("erin".to_owned(), 1), ("harry".to_owned(), 1)])
        );
        assert_index_matches_records(&store);
    }
}
