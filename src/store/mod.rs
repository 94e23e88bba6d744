//! The store contract, its error type, and the background cleanup helper.
//!
//! A server-side store implements [`SessionStore`]. The layer is the only caller in normal use; apps
//! call the store directly for administration (listing or revoking the sessions of an owner) and to
//! run [`spawn_cleanup`].
//!
//! # The contract
//!
//! | operation | contract |
//! |---|---|
//! | [`load`](SessionStore::load) | the live record, or `None` for missing or expired; never an error for "not found" |
//! | [`create`](SessionStore::create) | insert only if absent; `Ok(false)` on collision (the layer mints a new ID and retries) |
//! | [`save`](SessionStore::save) | apply **only** the [`ChangeSet`] atomically to the stored record; [`Saved::Gone`] if the record is gone or expired, never resurrect it; the idle deadline only while the stored expiry policy is the one it was worked out from, else [`Saved::PolicyChanged`] |
//! | [`touch`](SessionStore::touch) | move the idle deadline only, and only while the stored expiry policy is the one it was worked out from (else [`Saved::PolicyChanged`]); no data rewrite; [`Saved::Gone`] as for save |
//! | [`rename`](SessionStore::rename) | apply the [`ChangeSet`] and move the live record to a new key, as one step; [`Renamed::Gone`] if it is gone or expired, [`Renamed::Taken`] if the new key holds a live record |
//! | [`delete`](SessionStore::delete) | idempotent |
//! | [`delete_expired`](SessionStore::delete_expired) | removes at most `limit` expired records, returns how many |
//! | [`list_owner`](SessionStore::list_owner), [`delete_owner`](SessionStore::delete_owner) | the owner index |
//!
//! Stores are handed a [`SessionKey`] (the SHA-256 of the session ID), never the ID itself, so a
//! store dump yields no usable cookie (SECURITY.md 6). `now` is passed in so that every deadline is
//! judged by the layer's one [`Clock`](crate::Clock).
//!
//! A store is cheap to clone (it is a handle to shared state): keep a clone for administration and
//! give another to [`SessionLayer::new`](crate::SessionLayer::new).
//!
//! A store whose per-request operations never wait (an in-process map) can also implement
//! [`ImmediateStore`] and return itself from [`SessionStore::immediate`]: the layer then calls it
//! without allocating a future per store call, and commits a save, a touch or a new session's
//! create before the response future's first return. [`MemoryStore`](crate::MemoryStore) does.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use time::OffsetDateTime;

use crate::Expiry;
use crate::id::SessionKey;
use crate::record::{ChangeSet, Record};

#[cfg(feature = "cookie-store")]
pub(crate) mod cookie;
#[cfg(feature = "file-store")]
pub(crate) mod file;
#[cfg(feature = "memory-store")]
pub(crate) mod memory;
#[cfg(feature = "redis-store")]
pub(crate) mod redis;
#[cfg(any(feature = "postgres-store", feature = "sqlite-store"))]
pub(crate) mod sql;

/// The outcome of [`SessionStore::save`] and [`SessionStore::touch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Saved {
    /// The change was applied.
    Applied,
    /// The record no longer exists (deleted, rotated away or expired meanwhile); nothing was written.
    Gone,
    /// The change was applied except its idle deadline, which stays as stored: another request
    /// changed the session's expiry policy since this one loaded it, and the deadline was worked
    /// out from the old policy (see [`ChangeSet::deadline_basis`]). For a touch, nothing changed.
    /// The layer then sends no refreshed cookie, whose `Max-Age` would follow the old
    /// policy too.
    PolicyChanged,
}

/// The outcome of [`SessionStore::rename`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Renamed {
    /// The record moved to the new key, with the changes applied; the old key holds nothing.
    Applied,
    /// No live record under the old key (deleted, rotated away or expired meanwhile); nothing
    /// was written.
    Gone,
    /// A live record is stored under the new key; nothing was written (the layer draws another
    /// ID).
    Taken,
}

/// One entry of the owner index, as listed by [`SessionStore::list_owner`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The store key of the session.
    pub key: SessionKey,
    /// When the session was created.
    pub created_at: OffsetDateTime,
    /// When it expires unless used (the earlier of its deadlines).
    pub deadline: OffsetDateTime,
}

impl SessionInfo {
    /// Summarises a stored record.
    pub fn from_record(key: SessionKey, record: &Record) -> Self {
        Self {
            key,
            created_at: record.created_at,
            deadline: record.deadline(),
        }
    }
}

/// A server-side session store.
///
/// Implement it with `async fn`; the futures must be `Send`. See the [module docs](self) for the
/// contract each operation must meet, and run the conformance suite in `tests/conformance` against
/// a new store.
pub trait SessionStore: Send + Sync + 'static {
    /// Loads the live record under `key`, or `None` if it is missing or expired at `now`.
    fn load(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;

    /// Stores `record` under `key` if nothing live is stored there; `Ok(false)` if something is.
    fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Applies `changes` to the live record under `key`, atomically; [`Saved::Gone`] if there is
    /// none, [`Saved::PolicyChanged`] if it applied all but the idle deadline (see
    /// [`ChangeSet::deadline_basis`]).
    fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Saved, StoreError>> + Send;

    /// Moves the idle deadline of the live record under `key` to `idle_deadline`, worked out from
    /// the expiry policy `basis`; [`Saved::Gone`] if there is no live record.
    ///
    /// The deadline moves only if the record's stored policy is `basis`; otherwise it stays as
    /// stored and the answer is [`Saved::PolicyChanged`]: another request set a new policy, and
    /// a deadline to go with it, since this one loaded the session (see
    /// [`ChangeSet::deadline_basis`]).
    fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: OffsetDateTime,
        basis: Expiry,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Saved, StoreError>> + Send;

    /// Deletes the record under `key`, if any.
    fn delete(&self, key: &SessionKey) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Applies `changes` to the live record under `from` and moves it to `to`, as one step;
    /// [`Renamed::Gone`] if there is no live record under `from`, [`Renamed::Taken`] if there is
    /// one under `to`.
    ///
    /// This is [`Session::cycle_id`](crate::Session::cycle_id). The layer passes the request's
    /// changes with the new idle deadline and expiry policy set (so a
    /// [`deadline_basis`](ChangeSet::deadline_basis) never holds the deadline back: a direct
    /// caller that passes one without a policy gets no word of a deadline kept, as
    /// [`Renamed`] has no such answer), and the owner only where the
    /// request changed it (`None` keeps the stored owner, and the owner index must then list the
    /// record under `to` for it); the creation time and the absolute deadline stay as stored
    /// (SECURITY.md 9). "As one step" means that a save,
    /// touch, delete or [`delete_owner`](SessionStore::delete_owner) of the same session at the
    /// same time takes effect either before the rename (its write is carried to `to`, or the
    /// rename finds the session gone) or after it (it finds nothing under `from`, and a
    /// `delete_owner` finds the record under `to`). So a rotation neither loses a concurrent
    /// request's write without telling it, nor brings back under a new ID a session that was
    /// logged out or revoked meanwhile (SECURITY.md 11 and 12).
    ///
    /// The default implementation is **not** one step: it loads `from`, creates `to` and deletes
    /// `from` (and deletes `to` again if that fails). A save that lands between the load and the
    /// delete is lost although it was answered [`Saved::Applied`], and a delete in that window
    /// is undone under the new ID. Every store of this crate overrides it; a store of your own
    /// should, and the conformance suite in `tests/conformance` checks it under concurrency.
    fn rename(
        &self,
        from: &SessionKey,
        to: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Renamed, StoreError>> + Send {
        async move {
            let Some(mut record) = self.load(from, now).await? else {
                return Ok(Renamed::Gone);
            };
            changes.apply_to(&mut record);
            if !self.create(to, &record, now).await? {
                return Ok(Renamed::Taken);
            }
            if let Err(error) = self.delete(from).await {
                // `from` still works: leave one live record, not two.
                let _ = self.delete(to).await;
                return Err(error);
            }
            Ok(Renamed::Applied)
        }
    }

    /// Deletes up to `limit` records expired at `now`; returns how many it deleted. One record it
    /// cannot delete should not stop it before the others (the cleanup task calls it again every
    /// period, and would stop at the same record each time).
    fn delete_expired(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Lists the sessions of `owner` that are live at `now`. A session that `now` calls expired
    /// but the store still holds (a host whose clock is behind the caller's may still serve it)
    /// is left out of the list, but must stay findable by
    /// [`delete_owner`](SessionStore::delete_owner).
    fn list_owner(
        &self,
        owner: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<SessionInfo>, StoreError>> + Send;

    /// Deletes every session of `owner`; returns how many it deleted. A session it cannot delete
    /// should not spare the others while the store can still delete them (the file store tries
    /// them all), and the error is returned: a partial revocation is never reported as a
    /// success (SECURITY.md 12).
    fn delete_owner(&self, owner: &str) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// The same store as an [`ImmediateStore`], if its per-request operations never wait.
    ///
    /// The default, `None`, suits every store that does I/O. An in-process store returns itself
    /// here, and the layer then calls it without a boxed future per store call.
    fn immediate(&self) -> Option<&dyn ImmediateStore> {
        None
    }
}

/// The per-request operations of a [`SessionStore`] that never waits, as plain calls.
///
/// Offered through [`SessionStore::immediate`] by a store whose load, create, save, touch and
/// delete complete at once, such as [`MemoryStore`](crate::MemoryStore) (a map under a short
/// lock). The layer then makes these calls directly, sparing an allocated future per call; the
/// `SessionStore` methods stay the contract, and each method here must give exactly the answer of
/// its async twin (the usual way: the async method calls this one). The `_now` names keep
/// both traits usable in one scope.
pub trait ImmediateStore: Send + Sync {
    /// [`SessionStore::load`], answered at once.
    fn load_now(&self, key: &SessionKey, now: OffsetDateTime)
    -> Result<Option<Record>, StoreError>;

    /// [`SessionStore::create`], answered at once.
    fn create_now(
        &self,
        key: &SessionKey,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// [`SessionStore::save`], answered at once.
    fn save_now(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError>;

    /// [`SessionStore::touch`], answered at once.
    fn touch_now(
        &self,
        key: &SessionKey,
        idle_deadline: OffsetDateTime,
        basis: Expiry,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError>;

    /// [`SessionStore::delete`], answered at once.
    fn delete_now(&self, key: &SessionKey) -> Result<(), StoreError>;

    /// [`SessionStore::rename`], answered at once.
    ///
    /// The default implementation, like [`SessionStore::rename`]'s, is not one step: a store
    /// should override both.
    fn rename_now(
        &self,
        from: &SessionKey,
        to: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Renamed, StoreError> {
        let Some(mut record) = self.load_now(from, now)? else {
            return Ok(Renamed::Gone);
        };
        changes.apply_to(&mut record);
        if !self.create_now(to, &record, now)? {
            return Ok(Renamed::Taken);
        }
        if let Err(error) = self.delete_now(from) {
            let _ = self.delete_now(to);
            return Err(error);
        }
        Ok(Renamed::Applied)
    }
}

impl<S: SessionStore> SessionStore for Arc<S> {
    fn load(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        (**self).load(key, now)
    }
    fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).create(key, record, now)
    }
    fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Saved, StoreError>> + Send {
        (**self).save(key, changes, now)
    }
    fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: OffsetDateTime,
        basis: Expiry,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Saved, StoreError>> + Send {
        (**self).touch(key, idle_deadline, basis, now)
    }
    fn delete(&self, key: &SessionKey) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).delete(key)
    }
    fn rename(
        &self,
        from: &SessionKey,
        to: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Renamed, StoreError>> + Send {
        (**self).rename(from, to, changes, now)
    }
    fn delete_expired(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        (**self).delete_expired(now, limit)
    }
    fn list_owner(
        &self,
        owner: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<SessionInfo>, StoreError>> + Send {
        (**self).list_owner(owner, now)
    }
    fn delete_owner(&self, owner: &str) -> impl Future<Output = Result<usize, StoreError>> + Send {
        (**self).delete_owner(owner)
    }
    fn immediate(&self) -> Option<&dyn ImmediateStore> {
        (**self).immediate()
    }
}

/// What kind of failure a [`StoreError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The backend could not be reached or failed (connection, I/O, timeout, disk full).
    Backend,
    /// Stored data could not be encoded or decoded.
    Encoding,
    /// The store is misconfigured (a missing table, a bad folder, a missing migration).
    Config,
    /// The operation is not supported by this store.
    Unsupported,
    /// The session is too large for the store (e.g. a cookie over 4096 bytes).
    TooLarge,
}

/// A store failure. Keeps the backend's error as its [`source`](StdError::source).
pub struct StoreError {
    kind: StoreErrorKind,
    message: Box<str>,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl StoreError {
    /// A new error of `kind` with a message (which must not contain session IDs or keys).
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into().into_boxed_str(),
            source: None,
        }
    }

    /// A backend failure wrapping its cause.
    pub fn backend(
        message: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self::new(StoreErrorKind::Backend, message).with_source(source)
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

/// A configuration error where a store error is expected (`PostgresStore::with_schema` in a
/// set-up function that returns `StoreError`, say): a [`StoreErrorKind::Config`] error with the
/// same message, keeping the original as its [`source`](StdError::source).
impl From<crate::ConfigError> for StoreError {
    fn from(error: crate::ConfigError) -> Self {
        Self::new(StoreErrorKind::Config, error.to_string()).with_source(error)
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store call as the layer awaits it: already answered by an [`ImmediateStore`], or a boxed
/// future of the store's async method.
pub(crate) enum StoreFuture<'a, T> {
    Ready(Option<T>),
    Pending(BoxFuture<'a, T>),
}

impl<T: Unpin> Future for StoreFuture<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        match self.get_mut() {
            // Taken once; a poll after completion (outside the `Future` contract) never completes.
            StoreFuture::Ready(answer) => answer
                .take()
                .map_or(std::task::Poll::Pending, std::task::Poll::Ready),
            StoreFuture::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

/// The object-safe face of [`SessionStore`] the layer holds, so it is not generic over the store.
pub(crate) trait DynStore: Send + Sync + 'static {
    fn load<'a>(
        &'a self,
        key: &'a SessionKey,
        now: OffsetDateTime,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>>;
    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a Record,
        now: OffsetDateTime,
    ) -> StoreFuture<'a, Result<bool, StoreError>>;
    fn save<'a>(
        &'a self,
        key: &'a SessionKey,
        changes: &'a ChangeSet,
        now: OffsetDateTime,
    ) -> StoreFuture<'a, Result<Saved, StoreError>>;
    fn touch<'a>(
        &'a self,
        key: &'a SessionKey,
        idle_deadline: OffsetDateTime,
        basis: Expiry,
        now: OffsetDateTime,
    ) -> StoreFuture<'a, Result<Saved, StoreError>>;
    fn delete<'a>(&'a self, key: &'a SessionKey) -> StoreFuture<'a, Result<(), StoreError>>;
    fn rename<'a>(
        &'a self,
        from: &'a SessionKey,
        to: &'a SessionKey,
        changes: &'a ChangeSet,
        now: OffsetDateTime,
    ) -> StoreFuture<'a, Result<Renamed, StoreError>>;
    fn delete_owner<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<usize, StoreError>>;
    fn list_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Vec<SessionInfo>, StoreError>>;
    fn immediate(&self) -> Option<&dyn ImmediateStore>;
}

impl<S: SessionStore> DynStore for S {
    fn immediate(&self) -> Option<&dyn ImmediateStore> {
        SessionStore::immediate(self)
    }
    fn load<'a>(
        &'a self,
        key: &'a SessionKey,
        now: OffsetDateTime,
    ) -> StoreFuture<'a, Result<Option<Record>, StoreError>> {
        match self.immediate() {
            Some(store) => StoreFuture::Ready(Some(store.load_now(key, now))),
            None => StoreFuture::Pending(Box::pin(SessionStore::load(self, key, now))),
        }
    }
    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a Record,
        now: OffsetDateTime,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        match self.immediate() {
            Some(store) => StoreFuture::Ready(Some(store.create_now(key, record, now))),
            None => StoreFuture::Pending(Box::pin(SessionStore::create(self, key, record, now))),
        }
    }
    fn save<'a>(
        &'a self,
        key: &'a SessionKey,
        changes: &'a ChangeSet,
        now: OffsetDateTime,
    ) -> StoreFuture<'a, Result<Saved, StoreError>> {
        match self.immediate() {
            Some(store) => StoreFuture::Ready(Some(store.save_now(key, changes, now))),
            None => StoreFuture::Pending(Box::pin(SessionStore::save(self, key, changes, now))),
        }
    }
    fn touch<'a>(
        &'a self,
        key: &'a SessionKey,
        idle_deadline: OffsetDateTime,
        basis: Expiry,
        now: OffsetDateTime,
    ) -> StoreFuture<'a, Result<Saved, StoreError>> {
        match self.immediate() {
            Some(store) => {
                StoreFuture::Ready(Some(store.touch_now(key, idle_deadline, basis, now)))
            }
            None => StoreFuture::Pending(Box::pin(SessionStore::touch(
                self,
                key,
                idle_deadline,
                basis,
                now,
            ))),
        }
    }
    fn delete<'a>(&'a self, key: &'a SessionKey) -> StoreFuture<'a, Result<(), StoreError>> {
        match self.immediate() {
            Some(store) => StoreFuture::Ready(Some(store.delete_now(key))),
            None => StoreFuture::Pending(Box::pin(SessionStore::delete(self, key))),
        }
    }
    fn rename<'a>(
        &'a self,
        from: &'a SessionKey,
        to: &'a SessionKey,
        changes: &'a ChangeSet,
        now: OffsetDateTime,
    ) -> StoreFuture<'a, Result<Renamed, StoreError>> {
        match self.immediate() {
            Some(store) => StoreFuture::Ready(Some(store.rename_now(from, to, changes, now))),
            None => {
                StoreFuture::Pending(Box::pin(SessionStore::rename(self, from, to, changes, now)))
            }
        }
    }
    fn delete_owner<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(SessionStore::delete_owner(self, owner))
    }
    fn list_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Vec<SessionInfo>, StoreError>> {
        Box::pin(SessionStore::list_owner(self, owner, now))
    }
}

/// Settings for [`spawn_cleanup`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CleanupConfig {
    /// Time between sweeps. Default: 60 seconds.
    pub period: StdDuration,
    /// Records deleted per batch. Default: 1000.
    pub batch: usize,
    /// Batches per sweep before waiting for the next period, so one sweep never runs unbounded.
    /// Default: 100.
    pub max_batches: usize,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        Self {
            period: StdDuration::from_secs(60),
            batch: 1000,
            max_batches: 100,
        }
    }
}

impl CleanupConfig {
    /// Sets the time between sweeps (default 60 seconds).
    #[must_use]
    pub fn period(mut self, period: StdDuration) -> Self {
        self.period = period;
        self
    }

    /// Sets the batch size (at least 1; default 1000).
    #[must_use]
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }
}

/// A running cleanup task. [`CleanupTask::stop`] ends it and waits; dropping it also ends it
/// without waiting: at once while it waits for its next period, after the current batch while it
/// sweeps. Keep it for as long as the app serves (in `main`, or in the app's state), not in a
/// set-up function that returns.
#[derive(Debug)]
#[must_use = "dropping the task stops the cleanup"]
pub struct CleanupTask {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl CleanupTask {
    /// Stops the task after its current batch and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.handle).await;
    }
}

/// Runs `store.delete_expired` every `config.period` on the current Tokio runtime, in bounded
/// batches, until [`CleanupTask::stop`] (SECURITY.md 16). A store error is logged and the task keeps
/// running; the next period tries again.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "memory-store")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower_satchel::{CleanupConfig, MemoryStore, spawn_cleanup};
///
/// let store = MemoryStore::new();
/// let task = spawn_cleanup(store.clone(), CleanupConfig::default());
/// // ... serve ...
/// task.stop().await;
/// # }
/// # #[cfg(not(feature = "memory-store"))] fn main() {}
/// ```
pub fn spawn_cleanup<S: SessionStore>(store: S, config: CleanupConfig) -> CleanupTask {
    spawn_cleanup_with_clock(store, config, Arc::new(crate::SystemClock))
}

/// [`spawn_cleanup`] with an explicit clock (for tests that move time).
pub fn spawn_cleanup_with_clock<S: SessionStore>(
    store: S,
    config: CleanupConfig,
    clock: Arc<dyn crate::Clock>,
) -> CleanupTask {
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        loop {
            // Wait one period, or stop when asked (or when the handle was dropped).
            if tokio::time::timeout(config.period, &mut stop_rx)
                .await
                .is_ok()
            {
                break;
            }
            let mut total = 0usize;
            // The fields are public: hold them to what the setters allow.
            let batch = config.batch.max(1);
            for _ in 0..config.max_batches.max(1) {
                match store.delete_expired(clock.now(), batch).await {
                    Ok(n) => {
                        total += n;
                        if n < batch {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "session cleanup failed; retrying next period");
                        break;
                    }
                }
                // Stop promptly between batches when asked.
                if let Ok(()) | Err(tokio::sync::oneshot::error::TryRecvError::Closed) =
                    stop_rx.try_recv()
                {
                    return;
                }
                // A store whose sweep never waits (the memory store's, mostly) would otherwise
                // hold its thread for every batch of the period: requests on it go first.
                tokio::task::yield_now().await;
            }
            if total > 0 {
                tracing::debug!(deleted = total, "expired sessions removed");
            }
        }
    });
    CleanupTask {
        stop: Some(stop_tx),
        handle,
    }
}

#[cfg(all(test, feature = "memory-store"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    // Not `super::*`: `DynStore`, which every store implements too, would make calls ambiguous.
    use super::{
        ChangeSet, Record, Renamed, Saved, SessionInfo, SessionKey, SessionStore, StoreError,
        StoreErrorKind,
    };

    #[test]
    fn a_config_error_converts_to_a_config_store_error() {
        let config = crate::SessionLayer::builder(crate::MemoryStore::new())
            .cookie_name("not a token")
            .build()
            .unwrap_err();
        let message = config.to_string();
        let error = StoreError::from(config);
        assert_eq!(error.kind(), StoreErrorKind::Config);
        assert!(error.to_string().contains(&message), "{error}");
        let source = std::error::Error::source(&error).unwrap();
        assert!(source.downcast_ref::<crate::ConfigError>().is_some());
    }
    use crate::{Expiry, MemoryStore, SessionId};
    use std::sync::atomic::{AtomicBool, Ordering};
    use time::Duration;
    use time::OffsetDateTime;

    /// A memory store seen only through the required methods, so `rename` is the default one;
    /// its deletes fail while `fail_deletes` is set.
    #[derive(Default)]
    struct Plain {
        inner: MemoryStore,
        fail_deletes: AtomicBool,
        /// When set, sweeps count themselves here and report a full batch, without waiting.
        full_sweeps: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    }

    impl SessionStore for Plain {
        async fn load(
            &self,
            k: &SessionKey,
            n: OffsetDateTime,
        ) -> Result<Option<Record>, StoreError> {
            self.inner.load(k, n).await
        }
        async fn create(
            &self,
            k: &SessionKey,
            r: &Record,
            n: OffsetDateTime,
        ) -> Result<bool, StoreError> {
            self.inner.create(k, r, n).await
        }
        async fn save(
            &self,
            k: &SessionKey,
            c: &ChangeSet,
            n: OffsetDateTime,
        ) -> Result<Saved, StoreError> {
            self.inner.save(k, c, n).await
        }
        async fn touch(
            &self,
            k: &SessionKey,
            d: OffsetDateTime,
            b: Expiry,
            n: OffsetDateTime,
        ) -> Result<Saved, StoreError> {
            self.inner.touch(k, d, b, n).await
        }
        async fn delete(&self, k: &SessionKey) -> Result<(), StoreError> {
            if self.fail_deletes.load(Ordering::SeqCst) {
                return Err(StoreError::new(StoreErrorKind::Backend, "injected"));
            }
            self.inner.delete(k).await
        }
        async fn delete_expired(&self, n: OffsetDateTime, l: usize) -> Result<usize, StoreError> {
            if let Some(sweeps) = &self.full_sweeps {
                sweeps.fetch_add(1, Ordering::SeqCst);
                return Ok(l);
            }
            self.inner.delete_expired(n, l).await
        }
        async fn list_owner(
            &self,
            o: &str,
            n: OffsetDateTime,
        ) -> Result<Vec<SessionInfo>, StoreError> {
            self.inner.list_owner(o, n).await
        }
        async fn delete_owner(&self, o: &str) -> Result<usize, StoreError> {
            self.inner.delete_owner(o).await
        }
    }

    /// The cleanup task yields between batches, so that a store whose sweep never waits does
    /// not hold a current-thread runtime for a whole period's batches.
    #[tokio::test]
    async fn the_cleanup_task_lets_other_tasks_run_between_batches() {
        let sweeps = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let store = Plain {
            full_sweeps: Some(sweeps.clone()),
            ..Plain::default()
        };
        let config = crate::CleanupConfig::default().period(std::time::Duration::from_millis(1));
        let max_batches = config.max_batches;
        let task = crate::spawn_cleanup(store, config);
        let seen = loop {
            tokio::task::yield_now().await;
            let seen = sweeps.load(Ordering::SeqCst);
            if seen > 0 {
                break seen;
            }
        };
        assert!(
            seen < max_batches,
            "{seen} batches ran before another task could"
        );
        task.stop().await;
    }

    #[tokio::test]
    async fn the_default_rename_moves_refuses_and_cleans_up_after_a_failed_delete() {
        let store = Plain::default();
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let key = || SessionId::generate().unwrap().key();
        let mut record = Record::new(now, now + Duration::hours(1), None, Expiry::OnSessionEnd);
        record.data.insert("a".into(), 1.into());
        let (from, to, taken) = (key(), key(), key());
        assert!(store.create(&from, &record, now).await.unwrap());
        assert!(store.create(&taken, &record, now).await.unwrap());
        let mut changes = ChangeSet::default();
        changes.set.insert("b".into(), 2.into());

        assert_eq!(
            store.rename(&key(), &to, &changes, now).await.unwrap(),
            Renamed::Gone
        );
        assert_eq!(
            store.rename(&from, &taken, &changes, now).await.unwrap(),
            Renamed::Taken
        );

        store.fail_deletes.store(true, Ordering::SeqCst);
        assert!(store.rename(&from, &to, &changes, now).await.is_err());
        assert_eq!(
            store.inner.load(&from, now).await.unwrap(),
            Some(record.clone())
        );
        // The cleanup's delete failed too: the new key may hold a copy, never the only one.
        store.fail_deletes.store(false, Ordering::SeqCst);

        let to = key();
        assert_eq!(
            store.rename(&from, &to, &changes, now).await.unwrap(),
            Renamed::Applied
        );
        assert_eq!(store.inner.load(&from, now).await.unwrap(), None);
        changes.apply_to(&mut record);
        assert_eq!(store.inner.load(&to, now).await.unwrap(), Some(record));
    }
}
