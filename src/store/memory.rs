//! [`MemoryStore`]: sessions in a sharded in-process map.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use time::OffsetDateTime;

use crate::id::SessionKey;
use crate::record::{ChangeSet, Record};
use crate::store::{Saved, SessionInfo, SessionStore, StoreError};

const DEFAULT_SHARDS: usize = 64;

/// Sessions kept in memory, in a map split into shards with one lock each.
///
/// Good for tests, development and single-process apps that accept losing sessions on restart.
/// Every operation holds one shard's lock for the time of a hash-map operation (and the owner
/// index's lock when the owner changes), so requests of different sessions rarely wait on each
/// other. Change sets are merged under the shard lock, so concurrent requests of one session that
/// write different keys both keep their writes.
///
/// Expired records are dropped when a load finds them, and in bounded batches by
/// [`delete_expired`](SessionStore::delete_expired); run [`spawn_cleanup`](crate::spawn_cleanup) so
/// that sessions nobody comes back to do not accumulate. A batch holds one shard's lock at a time.
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
    shards: Box<[Mutex<HashMap<SessionKey, Record>>]>,
    owners: Mutex<HashMap<String, HashSet<SessionKey>>>,
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
    // A panic while holding a shard lock cannot leave a map half-updated in a way that matters
    // (each operation is a single insert/remove), so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryStore {
    /// An empty store with 64 shards.
    pub fn new() -> Self {
        Self::with_shards(DEFAULT_SHARDS)
    }

    /// An empty store with `shards` shards (at least 1).
    pub fn with_shards(shards: usize) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| Mutex::new(HashMap::new()))
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
        self.inner.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether the store holds no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &SessionKey) -> &Mutex<HashMap<SessionKey, Record>> {
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
}

impl SessionStore for MemoryStore {
    async fn load(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> Result<Option<Record>, StoreError> {
        let mut shard = lock(self.shard(key));
        match shard.get(key) {
            Some(record) if record.is_live(now) => Ok(Some(record.clone())),
            Some(_) => {
                if let Some(dead) = shard.remove(key) {
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
        if let Some(existing) = shard.get(key)
            && existing.is_live(now)
        {
            return Ok(false);
        }
        let old = shard.insert(*key, record.clone());
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
        let mut shard = lock(self.shard(key));
        let Some(record) = shard.get_mut(key).filter(|r| r.is_live(now)) else {
            return Ok(Saved::Gone);
        };
        let old_owner = record.owner.clone();
        changes.apply_to(record);
        let new_owner = record.owner.clone();
        self.index_owner(key, old_owner.as_deref(), new_owner.as_deref());
        Ok(Saved::Applied)
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        let mut shard = lock(self.shard(key));
        match shard.get_mut(key).filter(|r| r.is_live(now)) {
            Some(record) => {
                record.idle_deadline = idle_deadline;
                Ok(Saved::Applied)
            }
            None => Ok(Saved::Gone),
        }
    }

    async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        let removed = lock(self.shard(key)).remove(key);
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
            let mut shard = lock(shard);
            let dead: Vec<SessionKey> = shard
                .iter()
                .filter(|(_, r)| !r.is_live(now))
                .map(|(k, _)| *k)
                .take(limit - deleted)
                .collect();
            for key in dead {
                if let Some(record) = shard.remove(&key) {
                    self.index_owner(&key, record.owner.as_deref(), None);
                    deleted += 1;
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
            if let Some(record) = shard.get(&key)
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
            if shard.get(&key).and_then(|r| r.owner.as_deref()) == Some(owner) {
                shard.remove(&key);
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
