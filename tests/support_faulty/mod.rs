//! `Faulty`: a memory store that counts calls and fails, collides, waits or hangs on demand,
//! shared by the HTTP-level tests. `tests/layer.rs` runs the conformance suite against it, so the
//! wrapper itself keeps the store contract.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use time::OffsetDateTime;
use tokio::sync::Notify;
use tower_satchel::{
    ChangeSet, Expiry, ImmediateStore, MemoryStore, Record, Renamed, Saved, SessionInfo,
    SessionKey, SessionStore, StoreError, StoreErrorKind,
};

/// A memory store that counts calls and fails on demand. The layer reaches it through boxed
/// futures, or, when `immediate` is set, as an [`ImmediateStore`]; both run the same code.
///
/// `fail` fails every call; `fail_writes` only the writes (create, save, touch, delete, rename,
/// `delete_owner`), so sessions still load.
#[derive(Clone, Default)]
pub struct Faulty {
    pub inner: MemoryStore,
    pub immediate: bool,
    pub fail: Arc<AtomicBool>,
    pub fail_writes: Arc<AtomicBool>,
    pub fail_renames: Arc<AtomicUsize>,
    /// Renames to carry out, then answer with an error (a reply lost on the way back).
    pub lose_rename_replies: Arc<AtomicUsize>,
    /// Renames to cut short after writing the new key (the old one stays), with an error.
    pub half_renames: Arc<AtomicUsize>,
    pub fail_touches: Arc<AtomicBool>,
    /// Creates to answer "ID taken" before accepting one.
    pub collisions: Arc<AtomicUsize>,
    /// Async loads yield to the scheduler once before answering.
    pub slow_loads: bool,
    /// The next async save never answers (as if cut off by a timeout).
    pub hang_next_save: Arc<AtomicBool>,
    /// Async creates announce themselves on the first `Notify` and wait for the second.
    pub create_gate: Option<Arc<(Notify, Notify)>>,
    /// Async saves do the same.
    pub save_gate: Option<Arc<(Notify, Notify)>>,
    pub loads: Arc<AtomicUsize>,
    pub writes: Arc<AtomicUsize>,
    pub touches: Arc<AtomicUsize>,
    pub sweeps: Arc<AtomicUsize>,
}

impl Faulty {
    fn check(&self) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            Err(StoreError::backend(
                "injected failure",
                std::io::Error::other("backend down"),
            ))
        } else {
            Ok(())
        }
    }
    fn check_write(&self) -> Result<(), StoreError> {
        self.check()?;
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(StoreError::backend(
                "injected write failure",
                std::io::Error::other("backend read-only"),
            ));
        }
        Ok(())
    }
    pub fn calls(&self) -> (usize, usize, usize) {
        (
            self.loads.load(Ordering::SeqCst),
            self.writes.load(Ordering::SeqCst),
            self.touches.load(Ordering::SeqCst),
        )
    }
}

impl ImmediateStore for Faulty {
    fn load_now(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> Result<Option<Record>, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.inner.load_now(key, now)
    }
    fn create_now(
        &self,
        key: &SessionKey,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.check_write()?;
        if self
            .collisions
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Ok(false);
        }
        self.inner.create_now(key, record, now)
    }
    fn save_now(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.check_write()?;
        self.inner.save_now(key, changes, now)
    }
    fn touch_now(
        &self,
        key: &SessionKey,
        deadline: OffsetDateTime,
        basis: Expiry,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        self.touches.fetch_add(1, Ordering::SeqCst);
        self.check_write()?;
        if self.fail_touches.load(Ordering::SeqCst) {
            return Err(StoreError::new(
                StoreErrorKind::Backend,
                "injected touch failure",
            ));
        }
        self.inner.touch_now(key, deadline, basis, now)
    }
    fn delete_now(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.check_write()?;
        self.inner.delete_now(key)
    }
    fn rename_now(
        &self,
        from: &SessionKey,
        to: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Renamed, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.check_write()?;
        if self
            .fail_renames
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::new(
                StoreErrorKind::Backend,
                "injected rename failure",
            ));
        }
        if self
            .collisions
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Ok(Renamed::Taken);
        }
        if self
            .half_renames
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            if let Some(mut record) = self.inner.load_now(from, now)? {
                changes.apply_to(&mut record);
                self.inner.create_now(to, &record, now)?;
            }
            return Err(StoreError::new(
                StoreErrorKind::Backend,
                "injected rename cut short (the new key written, the old one kept)",
            ));
        }
        let renamed = self.inner.rename_now(from, to, changes, now)?;
        if self
            .lose_rename_replies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::new(
                StoreErrorKind::Backend,
                "injected lost reply (the rename was made)",
            ));
        }
        Ok(renamed)
    }
}

impl SessionStore for Faulty {
    fn immediate(&self) -> Option<&dyn ImmediateStore> {
        self.immediate.then_some(self as &dyn ImmediateStore)
    }
    async fn load(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> Result<Option<Record>, StoreError> {
        if self.slow_loads {
            tokio::task::yield_now().await;
        }
        self.load_now(key, now)
    }
    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        if let Some(gate) = &self.create_gate {
            gate.0.notify_one();
            gate.1.notified().await;
        }
        self.create_now(key, record, now)
    }
    async fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        if self.hang_next_save.swap(false, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if let Some(gate) = &self.save_gate {
            gate.0.notify_one();
            gate.1.notified().await;
        }
        self.save_now(key, changes, now)
    }
    async fn touch(
        &self,
        key: &SessionKey,
        deadline: OffsetDateTime,
        basis: Expiry,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        self.touch_now(key, deadline, basis, now)
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
        if let Some(gate) = &self.create_gate {
            gate.0.notify_one();
            gate.1.notified().await;
        }
        self.rename_now(from, to, changes, now)
    }
    async fn delete_expired(&self, now: OffsetDateTime, limit: usize) -> Result<usize, StoreError> {
        self.sweeps.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.inner.delete_expired(now, limit).await
    }
    async fn list_owner(
        &self,
        owner: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        self.check()?;
        self.inner.list_owner(owner, now).await
    }
    async fn delete_owner(&self, owner: &str) -> Result<usize, StoreError> {
        self.check_write()?;
        self.inner.delete_owner(owner).await
    }
}
