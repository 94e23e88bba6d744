//! [`MemoryStore`]: sessions in a sharded in-process map.
//!
//! # Sweeping without stalls
//!
//! Each shard keeps, next to its map, an index of keys by the minute their deadline falls in. A
//! write adds the key to a bucket only when its deadline moves into another minute (at most once a
//! minute per session), and never searches the index. A sweep takes buckets whose minute is over
//! and checks their keys in chunks of [`SWEEP_CHUNK`], releasing the shard's lock between chunks:
//! a request waits at most for one chunk, however many sessions the store holds. A key whose
//! session was refreshed, rotated or deleted since it was filed is simply dropped from the old
//! bucket when the sweep reaches it.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use time::OffsetDateTime;

use crate::id::SessionKey;
use crate::record::{ChangeSet, Record};
use crate::store::{Saved, SessionInfo, SessionStore, StoreError};

const DEFAULT_SHARDS: usize = 256;

/// How many index entries a sweep checks per hold of a shard's lock.
pub(crate) const SWEEP_CHUNK: usize = 256;

/// Sessions kept in memory, in a map split into shards with one lock each.
///
/// Good for tests, development and single-process apps that accept losing sessions on restart.
/// Every operation holds one shard's lock for the time of a hash-map operation (and the owner
/// index's lock when the owner changes), so requests of different sessions rarely wait on each
/// other. Change sets are merged under the shard lock, so concurrent requests of one session that
/// write different keys both keep their writes.
///
/// Expired records are dropped when a load finds them, and by
/// [`delete_expired`](SessionStore::delete_expired), which finds them through a per-shard index of
/// deadlines (by minute) and holds a shard's lock for at most 256 index entries at a time, so a
/// sweep never stalls requests whatever the number of sessions. Run
/// [`spawn_cleanup`](crate::spawn_cleanup) so that sessions nobody comes back to do not accumulate.
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
    owners: Mutex<HashMap<String, HashSet<SessionKey>>>,
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

#[derive(Default)]
struct Shard {
    records: KeyMap<Record>,
    /// Keys by the minute (Unix time / 60) their deadline falls in. A key may be filed under an
    /// old minute too; the sweep drops such stale entries.
    by_minute: BTreeMap<i64, Vec<SessionKey>>,
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
        f.debug_struct("MemoryStore")
            .field("shards", &self.inner.shards.len())
            .field("sessions", &self.len())
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
    /// An empty store with 256 shards.
    pub fn new() -> Self {
        Self::with_shards(DEFAULT_SHARDS)
    }

    /// An empty store with `shards` shards (at least 1).
    pub fn with_shards(shards: usize) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        Self {
            inner: Arc::new(Inner {
                shards,
                owners: Mutex::new(HashMap::new()),
            }),
        }
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

    fn shard(&self, key: &SessionKey) -> &Mutex<Shard> {
        // Keys are SHA-256 digests: any two bytes are uniformly distributed.
        let [a, b, ..] = *key.as_bytes();
        let index = usize::from(u16::from_le_bytes([a, b])) % self.inner.shards.len();
        &self.inner.shards[index]
    }

    fn index_owner(&self, key: &SessionKey, old: Option<&str>, new: Option<&str>) {
        if old == new {
            return;
        }
        let mut owners = lock(&self.inner.owners);
        if let Some(old) = old
            && let Some(keys) = owners.get_mut(old)
        {
            keys.remove(key);
            if keys.is_empty() {
                owners.remove(old);
            }
        }
        if let Some(new) = new {
            owners.entry(new.to_owned()).or_default().insert(*key);
        }
    }

    /// Sweeps one shard: at most `limit` deletions, [`SWEEP_CHUNK`] index entries per lock hold.
    fn sweep_shard(&self, shard: &Mutex<Shard>, now: OffsetDateTime, limit: usize) -> usize {
        let current = minute(now);
        let mut deleted = 0;
        while deleted < limit {
            let mut guard = lock(shard);
            let shard = &mut *guard;
            let Some(mut bucket) = shard.by_minute.first_entry() else {
                break;
            };
            if *bucket.key() >= current {
                // Deadlines in this minute (or later) may still be ahead of `now`.
                break;
            }
            let keys = bucket.get_mut();
            let take = keys.len().min(SWEEP_CHUNK);
            let chunk: Vec<SessionKey> = keys.drain(keys.len() - take..).collect();
            if keys.is_empty() {
                bucket.remove();
            }
            let mut owners_gone = Vec::new();
            for (i, key) in chunk.iter().enumerate() {
                let expired = shard.records.get(key).is_some_and(|r| !r.is_live(now));
                if !expired {
                    continue; // refreshed, rotated or deleted since it was filed
                }
                if deleted == limit {
                    // Over the limit: put the rest back for the next call.
                    shard
                        .by_minute
                        .entry(current - 1)
                        .or_default()
                        .extend_from_slice(&chunk[i..]);
                    break;
                }
                if let Some(record) = shard.records.remove(key) {
                    deleted += 1;
                    if let Some(owner) = record.owner {
                        owners_gone.push((*key, owner));
                    }
                }
            }
            drop(guard);
            for (key, owner) in owners_gone {
                self.index_owner(&key, Some(&owner), None);
            }
        }
        deleted
    }
}

impl SessionStore for MemoryStore {
    async fn load(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> Result<Option<Record>, StoreError> {
        let mut shard = lock(self.shard(key));
        match shard.records.get(key) {
            Some(record) if record.is_live(now) => Ok(Some(record.clone())),
            Some(_) => {
                if let Some(dead) = shard.records.remove(key) {
                    drop(shard);
                    self.index_owner(key, dead.owner.as_deref(), None);
                }
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut shard = lock(self.shard(key));
        let old = match shard.records.entry(*key) {
            Entry::Occupied(existing) if existing.get().is_live(now) => return Ok(false),
            Entry::Occupied(mut dead) => Some(dead.insert(record.clone())),
            Entry::Vacant(slot) => {
                slot.insert(record.clone());
                None
            }
        };
        shard.file(*key, None, record.deadline());
        drop(shard);
        self.index_owner(
            key,
            old.as_ref().and_then(|r| r.owner.as_deref()),
            record.owner.as_deref(),
        );
        Ok(true)
    }

    async fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        let mut guard = lock(self.shard(key));
        let shard = &mut *guard;
        let Some(record) = shard.records.get_mut(key).filter(|r| r.is_live(now)) else {
            return Ok(Saved::Gone);
        };
        let old_owner = record.owner.clone();
        let before = record.deadline();
        changes.apply_to(record);
        let after = record.deadline();
        let new_owner = record.owner.clone();
        shard.file(*key, Some(before), after);
        drop(guard);
        self.index_owner(key, old_owner.as_deref(), new_owner.as_deref());
        Ok(Saved::Applied)
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        let mut guard = lock(self.shard(key));
        let shard = &mut *guard;
        match shard.records.get_mut(key).filter(|r| r.is_live(now)) {
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

    async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        let removed = lock(self.shard(key)).records.remove(key);
        if let Some(record) = removed {
            self.index_owner(key, record.owner.as_deref(), None);
        }
        Ok(())
    }

    async fn delete_expired(&self, now: OffsetDateTime, limit: usize) -> Result<usize, StoreError> {
        let mut deleted = 0;
        for shard in self.inner.shards.iter() {
            if deleted >= limit {
                break;
            }
            deleted += self.sweep_shard(shard, now, limit - deleted);
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
                sessions.push(SessionInfo::from_record(key, record));
            }
        }
        sessions.sort_by_key(|s| s.created_at);
        Ok(sessions)
    }

    async fn delete_owner(&self, owner: &str) -> Result<usize, StoreError> {
        let keys: Vec<SessionKey> = lock(&self.inner.owners)
            .remove(owner)
            .map(|keys| keys.into_iter().collect())
            .unwrap_or_default();
        let mut deleted = 0;
        for key in keys {
            let mut shard = lock(self.shard(&key));
            if shard.records.get(&key).and_then(|r| r.owner.as_deref()) == Some(owner) {
                shard.records.remove(&key);
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Expiry, SessionId};
    use time::Duration;

    fn record(now: OffsetDateTime, ttl: Duration) -> Record {
        Record::new(now, now + ttl, None, Expiry::OnSessionEnd)
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
                .touch(&key, t1 + Duration::hours(1), t1)
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
        assert_eq!(store.sweep_shard(shard, later, 100), 100);
        assert_eq!(store.len(), SWEEP_CHUNK * 3 + 7 - 100);
        assert_eq!(
            store.delete_expired(later, usize::MAX).await.unwrap(),
            SWEEP_CHUNK * 3 + 7 - 100,
            "entries left over by the limit are found again"
        );
        assert!(store.is_empty());
        assert!(lock(shard).by_minute.is_empty(), "the index empties too");
    }
}
