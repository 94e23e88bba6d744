//! The [`Session`] handle: lazy loading, change tracking, arrival status, and the commit plan the
//! service carries out after the handler.
//!
//! # Change tracking
//!
//! The handle keeps the data it loaded plus a record of what this request did: which keys it wrote
//! or removed, whether it cleared the map, changed the expiry or owner, rotated the ID or destroyed
//! the session. After the handler, the service turns that into one store call:
//!
//! | the handler... | store call | response |
//! |---|---|---|
//! | did not extract the session | none | unchanged |
//! | only read it | `touch`, only when due | `Vary: Cookie` (+ refreshed cookie after a touch, when it is persistent) |
//! | changed it | `save(change set)` | `Vary: Cookie`; `Set-Cookie` and `Cache-Control: no-store` only when the cookie changes (a new expiry, or a persistent cookie's refresh when due) |
//! | changed a session that did not exist | `create` | `Set-Cookie` with a new ID |
//! | called [`cycle_id`](Session::cycle_id) | `rename` to a new ID, with the change set | `Set-Cookie` with the new ID |
//! | called [`destroy`](Session::destroy) | `delete` | removal cookie |
//! | returned a 5xx | none (unless configured) | `Vary: Cookie` if it read the session, and the token a [`save`](Session::save) during the request gave |
//!
//! A session that nobody wrote to never gets a record or a cookie, so anonymous traffic cannot fill
//! the store.

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::error::Error as StdError;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime};

use crate::backend::{Backend, Kind, Opened};
use crate::expiry::{Expiry, MAX_COOKIE_AGE};
use crate::id::{SessionId, SessionKey};
use crate::layer::Config;
use crate::record::{ChangeSet, Record};
use crate::store::{BoxFuture, Renamed, Saved, StoreError, StoreErrorKind};

/// How the request arrived, as far as its session is concerned. Known once the session is loaded.
///
/// Apps use it to say "your session timed out, please log in again" instead of silently treating a
/// returning user as a stranger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Arrival {
    /// No session token came with the request: a new visitor (or one whose cookie the browser
    /// already dropped). An empty cookie or token header counts as none.
    #[default]
    New,
    /// The token named a live session.
    Returning,
    /// The token was well-formed but named no live session: it expired, was destroyed or rotated
    /// away, or never existed. A fresh session is used (SECURITY.md 2).
    Expired,
    /// The token was malformed, or failed authentication (cookie store). A fresh session is used.
    Invalid,
}

/// The token the request carried, checked for syntax before any store sees it.
#[derive(Clone)]
pub(crate) enum Incoming {
    Absent,
    Malformed,
    Id(SessionId),
    Token(String),
    /// The request presented more than one cookie of the session's name: the first token (which
    /// may be malformed) and then the other well-formed ones, without repeats.
    Several(Box<[Incoming]>),
}

/// A cheap-to-clone handle to the current request's session.
///
/// Every extractor of one request shares the same handle. Extracting it (or calling
/// [`load`](Session::load)) reads the store once; after that every operation is synchronous and
/// in-memory, and the service writes back only what changed when the handler returns.
///
/// Values are any `Serialize + DeserializeOwned` type, kept as JSON values.
///
/// # Plain Tower
///
/// Without axum, the layer puts the handle in the request's extensions; load it before use:
///
/// ```
/// # async fn handler(request: http::Request<()>) -> Result<(), tower_satchel::SessionError> {
/// use tower_satchel::Session;
/// if let Some(session) = request.extensions().get::<Session>() {
///     session.load().await?;
///     let visits: u64 = session.get("visits")?.unwrap_or(0);
///     session.insert("visits", visits + 1)?;
/// }
/// # Ok(()) }
/// ```
///
/// # After the response
///
/// A handle can outlive its request, moved into a spawned task, a streaming body or a WebSocket
/// handler (`on_upgrade` runs after the `101` response). Once the handler has produced its response
/// (or failed with an error, or the request was abandoned, when the client went away), the session
/// is closed: reads still answer what the request left, but changes are refused, because nothing
/// would save them. [`insert`](Session::insert), [`remove`](Session::remove),
/// [`update`](Session::update) and [`save`](Session::save) return a [`SessionErrorKind::Closed`]
/// error; `clear`, `destroy`, `cycle_id`, `set_expiry`, `set_owner` and `clear_owner` log a warning
/// and change nothing.
/// Change the session before the handler returns.
///
/// A long-lived task that must change the session later can keep its [`id`](Session::id) and
/// the store, and apply a [`ChangeSet`] itself. The change is merged like a request's, and a
/// session ended meanwhile is not brought back:
///
/// ```
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_satchel::{ChangeSet, MemoryStore, Saved, Session, SessionStore};
///
/// async fn later(store: &MemoryStore, session: &Session) -> Result<(), Box<dyn std::error::Error>> {
///     // In the handler: the session's ID (a new session has one once saved).
///     session.save().await?;
///     let Some(id) = session.id() else { return Ok(()) };
///     // Later, in the task:
///     let mut changes = ChangeSet::default();
///     changes.set.insert("last_seen".into(), serde_json::json!("2026-12-01T12:00:00Z"));
///     let saved = store.save(&id.key(), &changes, time::OffsetDateTime::now_utc()).await?;
///     if matches!(saved, Saved::Gone) {
///         // The session ended meanwhile (logged out, expired): nothing was written.
///     }
///     Ok(())
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session(Arc<Shared>);

struct Shared {
    config: Arc<Config>,
    backend: Backend,
    incoming: Incoming,
    /// Held by [`Session::load`] and [`Session::save`]: one store call of the handle's own at a
    /// time, and the commit waits for a save in flight.
    load_lock: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    /// Whether [`Session::save`] left a token for the response (`State::pending`), so the service
    /// looks at the state again only when it did.
    pending: AtomicBool,
}

#[derive(Default)]
struct State {
    loaded: bool,
    /// A load was tried and failed: the response (made without the session) still depended on
    /// the token the request carried, so it gets `Vary` like a read.
    load_failed: bool,
    arrival: Arrival,
    /// The stored session this request started from (its data moved into `data`).
    live: Option<Live>,
    data: Map<String, Value>,
    dirty: BTreeSet<String>,
    cleared: bool,
    expiry: Option<Expiry>,
    owner: Option<Option<String>>,
    cycle: bool,
    destroyed: bool,
    reseal: bool,
    /// When the cookie store opened (and checked for revocation) the sealed session this request
    /// started from: its next seal carries this time, not the commit's, so a revocation that
    /// lands while the request runs still refuses the cookie it writes. Not when the request
    /// sets another owner (see `Session::plan_with`).
    opened_at: Option<OffsetDateTime>,
    /// A rotation whose store call went unanswered (a store error, or a [`Session::save`]
    /// dropped while it waited): the key it moved from and the new ID, where the store may have
    /// moved the session. The next rotation of that key reuses the ID, so that it can tell that
    /// from the session having ended; a `destroy` deletes whatever is there.
    rotating_to: Option<Box<(SessionKey, SessionId)>>,
    /// The service has taken what this request changed (or the request was abandoned): later
    /// changes could not be saved, so they are refused.
    closed: bool,
    /// A [`Session::save`] is waiting for the store: the commit must wait for it.
    saving: bool,
    /// The token a [`Session::save`] made the response owe the client (a new session's or a
    /// rotated ID, a refreshed `Max-Age`, a removal), unless the commit sends a newer one.
    /// Boxed: rare, and the state is allocated for every request.
    pending: Option<Box<TokenAction>>,
    /// Counts changes, so that a save can tell whether the handle changed while it waited.
    generation: u32,
    /// Counts the changes that are not to a value (`clear`, `cycle_id`, `destroy`, the expiry
    /// and the owner), so that a save can tell whether one came while it waited.
    reshaped: u32,
    /// `reshaped` as the last `clear` (or `destroy`) left it, so that a save can tell whether
    /// the `clear` it took is still the latest.
    cleared_at: u32,
    transient: HashMap<String, Box<dyn Any + Send + Sync>>,
}

struct Live {
    /// `None` for the client-side store, which has no ID.
    id: Option<SessionId>,
    record: Record,
}

impl State {
    fn modified(&self) -> bool {
        !self.dirty.is_empty()
            || self.cleared
            || self.expiry.is_some()
            || self.owner.is_some()
            || self.cycle
            || self.destroyed
    }

    fn current_expiry(&self, config: &Config) -> Expiry {
        self.expiry
            .or_else(|| self.kept_live().map(|l| l.record.expiry))
            .unwrap_or(config.default_expiry)
    }

    /// The stored session the commit builds on: none once destroyed, as what is set after
    /// `destroy` becomes a new session (created now, with the layer's default expiry unless set
    /// again).
    fn kept_live(&self) -> Option<&Live> {
        self.live.as_ref().filter(|_| !self.destroyed)
    }

    fn current_owner(&self) -> Option<String> {
        match &self.owner {
            Some(owner) => owner.clone(),
            None => self.live.as_ref().and_then(|l| l.record.owner.clone()),
        }
    }

    /// The full record as it would be written now, starting from the live one (or a new one).
    fn full_record(&self, config: &Config, now: OffsetDateTime) -> Record {
        self.record_with(self.data.clone(), config, now)
    }

    /// [`State::full_record`] for the commit, moving the data out instead of copying it unless
    /// `keep` (another handle to the session may still read it).
    fn take_record(&mut self, config: &Config, now: OffsetDateTime, keep: bool) -> Record {
        let data = if keep {
            self.data.clone()
        } else {
            std::mem::take(&mut self.data)
        };
        self.record_with(data, config, now)
    }

    fn record_with(
        &self,
        data: Map<String, Value>,
        config: &Config,
        now: OffsetDateTime,
    ) -> Record {
        let expiry = self.current_expiry(config);
        let idle = config.idle_deadline(expiry, now);
        let owner = self.current_owner();
        match self.kept_live() {
            Some(live) => Record {
                version: live.record.version,
                data,
                created_at: live.record.created_at,
                idle_deadline: idle,
                absolute_deadline: live.record.absolute_deadline,
                expiry,
                owner,
            },
            None => {
                let absolute = config
                    .absolute_lifetime
                    .map(|life| now.saturating_add(life));
                let mut record = Record::new(now, idle, absolute, expiry);
                record.data = data;
                record.owner = owner;
                record
            }
        }
    }

    /// What [`Session::destroy`] does to the handle.
    fn destroy(&mut self) {
        self.destroyed = true;
        self.cycle = false;
        self.data.clear();
        self.dirty.clear();
        self.cleared = true;
        self.cleared_at = self.reshaped;
        self.owner = Some(None);
        self.expiry = None;
    }

    /// After a save took everything pending: nothing is left to do but the data changes still
    /// marked.
    fn settle(&mut self) {
        self.cleared = false;
        self.expiry = None;
        self.owner = None;
        self.cycle = false;
        self.destroyed = false;
    }

    /// Marks the keys of `changes` (taken by [`State::take_change_set`]) to be saved again.
    fn mark_unsaved(&mut self, changes: ChangeSet) {
        self.dirty
            .extend(changes.set.into_iter().map(|(key, _)| key));
        self.dirty.extend(changes.removed);
    }

    fn mark_dirty(&mut self, key: &str) {
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_owned());
        }
    }

    /// What this request changed, for the commit: the dirty keys, with their values moved out of
    /// the handle unless `keep` (another handle to the session may still read them). The idle
    /// deadline moves only when `touch_due` or the expiry policy changed.
    fn take_change_set(
        &mut self,
        config: &Config,
        now: OffsetDateTime,
        keep: bool,
        touch_due: bool,
    ) -> ChangeSet {
        let expiry = self.current_expiry(config);
        let mut changes = ChangeSet {
            cleared: self.cleared,
            idle_deadline: (touch_due || self.expiry.is_some())
                .then(|| config.idle_deadline(expiry, now)),
            // A deadline worked out from the loaded policy holds only while that policy does.
            deadline_basis: self.expiry.is_none().then_some(expiry),
            expiry: self.expiry,
            owner: self.owner.clone(),
            ..ChangeSet::default()
        };
        let dirty = std::mem::take(&mut self.dirty);
        if !keep
            && dirty.len() == self.data.len()
            && dirty.iter().all(|key| self.data.contains_key(key))
        {
            // Every value the handle holds was written (a counter, a login's first values): the
            // whole map is the change set, handed over without taking it apart.
            changes.set = std::mem::take(&mut self.data);
            return changes;
        }
        for key in dirty {
            let value = if keep {
                self.data.get(&key).cloned()
            } else {
                self.data.remove(&key)
            };
            match value {
                Some(value) => {
                    changes.set.insert(key, value);
                }
                None => changes.removed.push(key),
            }
        }
        changes
    }
}

/// What a [`Session::save`] changed in the store, to be reflected in the handle.
enum Stored {
    /// The idle deadline moved.
    Touched(OffsetDateTime),
    /// These changes were merged into the stored session.
    Merged(ChangeSet),
    /// The stored session is now this one (created, rotated, or destroyed and perhaps created
    /// anew), or none; with the change set a rotation carried.
    Replaced(Option<Live>, Option<ChangeSet>),
}

/// Clears [`State::saving`] when dropped.
struct Saving<'a>(&'a Session);

/// A change set on its way to the store in [`Session::save`]. Should that future be dropped
/// before the store answers (a timeout or `select!` around the call), the changes go back to
/// pending, as after a store error, so the layer still writes them after the handler.
struct InFlight<'a> {
    session: &'a Session,
    changes: ChangeSet,
    answered: bool,
}

impl<'a> InFlight<'a> {
    fn new(session: &'a Session, changes: ChangeSet) -> Self {
        Self {
            session,
            changes,
            answered: false,
        }
    }

    /// The store answered: the caller takes the changes back and decides.
    fn answered(mut self) -> ChangeSet {
        self.answered = true;
        std::mem::take(&mut self.changes)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let changes = std::mem::take(&mut self.changes);
            self.session.state().mark_unsaved(changes);
        }
    }
}

impl Drop for Saving<'_> {
    fn drop(&mut self) {
        self.0.state().saving = false;
    }
}

/// What the service must do with the token after the handler. No `Debug`: it holds the token.
pub(crate) enum TokenAction {
    /// Nothing to send.
    Keep,
    /// Send this token; `max_age` for persistent cookies.
    Set {
        value: String,
        max_age: Option<Duration>,
    },
    /// Tell the client to forget its token.
    Remove,
}

/// What the service learns from [`Session::finish`].
pub(crate) struct Committed {
    pub(crate) token: TokenAction,
    pub(crate) read: bool,
}

/// The outcome of [`Session::finish`].
pub(crate) enum Finish {
    /// Nothing to wait for: no store call, or one an [`ImmediateStore`](crate::ImmediateStore)
    /// already made.
    Ready(Result<Committed, SessionError>),
    /// Store calls to make first.
    Pending(crate::store::BoxFuture<'static, Result<Committed, SessionError>>),
}

enum Plan {
    Nothing,
    Touch {
        id: SessionId,
        idle_deadline: OffsetDateTime,
        /// The expiry policy `idle_deadline` was worked out from (the loaded one).
        basis: Expiry,
        max_age: Option<Duration>,
    },
    Save {
        id: SessionId,
        changes: ChangeSet,
        /// `Some(max_age)` when the cookie must be sent again.
        cookie: Option<Option<Duration>>,
    },
    Create {
        record: Record,
        /// With `cycle_id`: the ID the new one replaces, and what this request changed. The store
        /// moves the old record as it holds it at commit time, with those changes applied, not
        /// this request's copy (see [`Session::create_replacing`]).
        replaces: Option<(SessionId, ChangeSet)>,
    },
    Seal {
        record: Record,
        /// Only a refresh (of the deadline, or under the primary key): the handler changed
        /// nothing, so the cookie the browser holds may stay if the new one cannot be made.
        refresh: bool,
        /// The sealing time a revocation hook compares (see `State::opened_at`).
        sealed_at: OffsetDateTime,
    },
    Destroy {
        old: Option<SessionId>,
        then: Option<Record>,
        remove_token: bool,
    },
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every critical section leaves the state consistent, so a panic elsewhere while it was held
    // does not make it unusable.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn max_age_for(record: &Record, now: OffsetDateTime) -> Option<Duration> {
    max_age_at(
        record.expiry,
        record.idle_deadline,
        record.absolute_deadline,
        now,
    )
}

/// `Max-Age` for a cookie whose session has these deadlines: never past the server-side deadline
/// nor 400 days (SECURITY.md 15); `None` for a browser-session cookie.
fn max_age_at(
    expiry: Expiry,
    idle: OffsetDateTime,
    absolute: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Option<Duration> {
    let deadline = absolute.map_or(idle, |absolute| absolute.min(idle));
    expiry.is_persistent().then(|| {
        (deadline - now)
            .clamp(Duration::ZERO, MAX_COOKIE_AGE)
            .floor_seconds()
    })
}

trait FloorSeconds {
    fn floor_seconds(self) -> Self;
}

impl FloorSeconds for Duration {
    fn floor_seconds(self) -> Self {
        Duration::seconds(self.whole_seconds())
    }
}

impl Session {
    pub(crate) fn new(config: Arc<Config>, backend: Backend, incoming: Incoming) -> Self {
        Self(Arc::new(Shared {
            config,
            backend,
            incoming,
            load_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
            pending: AtomicBool::new(false),
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.0.state)
    }

    /// Loads the session from the store, once per request; later calls return at once. The axum
    /// extractor calls it for you.
    ///
    /// # Errors
    ///
    /// A [`SessionError`] when the store fails. The session stays unloaded and the handler should
    /// not run with it: an empty session written back could overwrite the real one.
    pub async fn load(&self) -> Result<(), SessionError> {
        if self.state().loaded {
            return Ok(());
        }
        self.load_from_store().await.map_err(|e| {
            self.state().load_failed = true;
            self.hooked(e)
        })
    }

    /// [`Session::load`] once the session is known not to be loaded yet.
    async fn load_from_store(&self) -> Result<(), SessionError> {
        // Only a second extractor loading at the same time ever waits here.
        let _guard = match self.0.load_lock.try_lock() {
            Ok(guard) => guard,
            Err(_) => self.0.load_lock.lock().await,
        };
        if self.state().loaded {
            return Ok(());
        }
        let now = self.0.config.clock.now();
        let arrival = match &self.0.incoming {
            // Rare, and boxed so that the usual request's future stays small.
            Incoming::Several(tokens) => Box::pin(self.open_first_live(tokens, now)).await?,
            token => self.open(token, now).await?,
        };
        let mut state = self.state();
        state.arrival = arrival;
        state.loaded = true;
        Ok(())
    }

    /// Makes `live` the session this handle works on.
    fn adopt(&self, mut live: Live) -> Arrival {
        let mut state = self.state();
        if !state.cleared {
            state.data = std::mem::take(&mut live.record.data);
        } else {
            live.record.data.clear();
        }
        state.live = Some(live);
        Arrival::Returning
    }

    /// [`Session::open`] for several tokens in turn (cookies of the same name, see
    /// `MAX_PRESENTED`) until one names a live session; otherwise how the first token arrived.
    async fn open_first_live(
        &self,
        tokens: &[Incoming],
        now: OffsetDateTime,
    ) -> Result<Arrival, SessionError> {
        let mut first = None;
        for token in tokens {
            let arrival = self.open(token, now).await?;
            if arrival == Arrival::Returning {
                if first.is_some() {
                    tracing::debug!(
                        scope = self.0.config.scope,
                        "the first session cookie named no live session; a later one of the same name does"
                    );
                }
                return Ok(arrival);
            }
            first.get_or_insert(arrival);
        }
        Ok(first.unwrap_or(Arrival::Invalid))
    }

    /// How the request arrived with one presented token; when it names a live session, the
    /// handle adopts it (and, for a sealed session, notes whether it must be sealed again).
    async fn open(
        &self,
        incoming: &Incoming,
        now: OffsetDateTime,
    ) -> Result<Arrival, SessionError> {
        let scope = self.0.config.scope;
        Ok(match (incoming, &self.0.backend.0) {
            (Incoming::Absent, _) => Arrival::New,
            (Incoming::Malformed, _) => {
                tracing::info!(
                    scope,
                    "malformed session token ignored; a fresh session is used"
                );
                Arrival::Invalid
            }
            (Incoming::Id(id), Kind::Server(store)) => {
                let key = id.key();
                let loaded = store.load(&key, now).await.map(|record| {
                    record.map(|mut record| {
                        self.0.config.cap_absolute(&mut record);
                        record
                    })
                });
                match loaded {
                    Ok(Some(record)) if record.is_live(now) => self.adopt(Live {
                        id: Some(id.clone()),
                        record,
                    }),
                    Ok(Some(_)) => {
                        tracing::debug!(scope, session = %key.log_tag(), "session expired");
                        if let Err(error) = store.delete(&key).await {
                            tracing::warn!(scope, session = %key.log_tag(), %error, "could not delete expired session");
                        }
                        Arrival::Expired
                    }
                    Ok(None) => {
                        tracing::debug!(scope, session = %key.log_tag(), "unknown or expired session; a fresh session is used");
                        Arrival::Expired
                    }
                    Err(error) => {
                        tracing::error!(scope, session = %key.log_tag(), %error, "session store failed on load");
                        return Err(SessionError::store(error));
                    }
                }
            }
            (Incoming::Token(token), Kind::Client(store)) => {
                match store.open(self.0.config.token_name(), token, now).await {
                    Ok(Opened::Live { mut record, reseal }) => {
                        self.0.config.cap_absolute(&mut record);
                        if record.is_live(now) {
                            {
                                let mut state = self.state();
                                state.reseal = reseal;
                                state.opened_at = Some(now);
                            }
                            self.adopt(Live { id: None, record })
                        } else {
                            tracing::debug!(scope, "sealed session past the absolute lifetime");
                            Arrival::Expired
                        }
                    }
                    Ok(Opened::Expired) => {
                        tracing::debug!(scope, "sealed session expired or revoked");
                        Arrival::Expired
                    }
                    Ok(Opened::Invalid) => {
                        // The cookie store logged the reason (`Rejection`) at `debug`.
                        tracing::info!(
                            scope,
                            "sealed session cookie rejected (malformed, forged or under an unknown key)"
                        );
                        Arrival::Invalid
                    }
                    Err(error) => {
                        tracing::error!(scope, %error, "cookie store failed on open");
                        return Err(SessionError::store(error));
                    }
                }
            }
            // The service parses tokens for the backend it has, and never nests `Several`.
            (Incoming::Id(_), Kind::Client(_))
            | (Incoming::Token(_), Kind::Server(_))
            | (Incoming::Several(_), _) => Arrival::Invalid,
        })
    }

    /// Writes the session to the store now, rather than only after the handler. Whatever changes
    /// after this is saved after the handler, as usual.
    ///
    /// Most handlers never need it. It is for:
    /// - the ID of a new session during its first request: [`id`](Session::id) is `None` until
    ///   the session is stored, and returns its ID after `save`;
    /// - changes the visitor's other requests must see before this response is sent, such as a
    ///   long streaming response after a login, or a client that follows up on a second
    ///   connection before reading the response;
    /// - knowing inside the handler whether the write took, and answering accordingly.
    ///
    /// `save` carries out what is pending as the layer would after the handler: a new session is
    /// created, [`cycle_id`](Session::cycle_id) rotates the ID, [`destroy`](Session::destroy)
    /// deletes the session, and changes are merged into the stored session as a change set. The
    /// cookie this calls for (a new ID, a refreshed `Max-Age`, a removal) is sent with the
    /// response, whatever the response's status (unless the layer finds before sending it that
    /// the session ended, or that another request set a new expiry since, whose cookie that
    /// request sent). The app asked for the write, so it stands even when the response is a
    /// 5xx, unlike changes left to the layer (see
    /// [`persist_on_server_error`](crate::SessionLayerBuilder::persist_on_server_error)).
    ///
    /// `save` loads the session first if needed. Saves of one session run one at a time, and the
    /// layer's own save waits for one still in flight. With the cookie store nothing can be
    /// written before the response, since the session travels in the response's cookie: there
    /// `save` checks that the session can still change and that it fits its cookie (a
    /// [`StoreErrorKind::TooLarge`](crate::StoreErrorKind::TooLarge) store error otherwise), and
    /// a 5xx response writes nothing.
    ///
    /// ```
    /// use tower_satchel::{Session, SessionError};
    ///
    /// async fn checkout(session: Session) -> Result<String, SessionError> {
    ///     session.insert("cart", vec!["tea"])?;
    ///     session.save().await?;
    ///     // Stored now, so even a new visitor's session has its ID (none with the cookie store).
    ///     // Link records to `id.key()`, the hashed ID, never to the ID itself (SECURITY.md 6).
    ///     let linked = session.id().map(|id| id.key());
    ///     Ok(format!("ordered; linked to the session: {}", linked.is_some()))
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`SessionErrorKind::Store`] when the store fails. Nothing is lost: the changes stay
    ///   pending, and the layer tries them again after the handler (unless the response is a 5xx).
    /// - [`SessionErrorKind::Ended`] when the session ended in the store during this request
    ///   (logged out elsewhere, expired, or its ID rotated by another request). Its changes are
    ///   not written: an ended session is never brought back (SECURITY.md 11).
    /// - [`SessionErrorKind::Closed`] once the response is known (see "After the response").
    pub async fn save(&self) -> Result<(), SessionError> {
        self.save_to_store().await.map_err(|e| self.hooked(e))
    }

    /// [`Session::save`], its errors without the layer's error handler.
    async fn save_to_store(&self) -> Result<(), SessionError> {
        self.load().await?;
        let store = match &self.0.backend.0 {
            Kind::Server(store) => store.clone(),
            Kind::Client(store) => {
                // Nothing is written before the response, but whether the session fits its
                // cookie can be known now, before the handler acts on a save that seemed to work.
                let now = self.0.config.clock.now();
                let record = {
                    let mut state = self.writable_state()?;
                    // Unchanged: the commit seals at most a refresh, which never fails the
                    // request (see `Plan::Seal`).
                    if !state.modified() {
                        return Ok(());
                    }
                    state.take_record(&self.0.config, now, true)
                };
                return store
                    .seal(self.0.config.token_name(), &record, now)
                    .map(drop)
                    .map_err(SessionError::store);
            }
        };
        let _one_at_a_time = self.0.load_lock.lock().await;
        let now = self.0.config.clock.now();
        let (plan, generation, reshaped, cleared_at) = {
            let mut state = self.state();
            if state.closed {
                return Err(SessionError::closed());
            }
            state.saving = true;
            let (generation, reshaped) = (state.generation, state.reshaped);
            let cleared_at = state.cleared_at;
            // Copy, not move: the handle goes on reading its data.
            let plan = self.plan_with(&mut state, now, false, true).0;
            (plan, generation, reshaped, cleared_at)
        };
        // Clears `saving` however this ends, dropped halfway included.
        let _saving = Saving(self);
        let (stored, token) = match plan {
            Plan::Nothing | Plan::Seal { .. } => return Ok(()),
            Plan::Touch {
                id,
                idle_deadline,
                basis,
                max_age,
            } => {
                let outcome = store.touch(&id.key(), idle_deadline, basis, now).await;
                match outcome {
                    // Asked for, unlike the layer's own touch: the handler learns how it went.
                    Err(error) => {
                        tracing::error!(scope = self.0.config.scope, session = %id.log_tag(), %error, "session store failed on touch");
                        return Err(SessionError::store(error));
                    }
                    Ok(Saved::Gone) => {
                        tracing::info!(scope = self.0.config.scope, session = %id.log_tag(), "session ended during the request");
                        self.forget_pending_for(&id);
                        return Err(ended_during_request());
                    }
                    // Stored, with the deadline a concurrent new expiry came with.
                    Ok(Saved::PolicyChanged) => return Ok(()),
                    Ok(_) => {}
                }
                let token = self.touched(&id, outcome, max_age);
                (Stored::Touched(idle_deadline), token)
            }
            Plan::Save {
                id,
                changes,
                cookie,
            } => {
                let in_flight = InFlight::new(self, changes);
                let outcome = store.save(&id.key(), &in_flight.changes, now).await;
                let mut changes = in_flight.answered();
                if matches!(outcome, Ok(Saved::PolicyChanged)) {
                    // The store kept the deadline a new policy came with: so does the handle.
                    changes.idle_deadline = None;
                }
                if matches!(outcome, Ok(Saved::Gone)) {
                    tracing::info!(scope = self.0.config.scope, session = %id.log_tag(), "session ended during the request; its changes were dropped");
                    return Err(ended_during_request());
                }
                match self.saved(&id, outcome, cookie) {
                    Ok(token) => (Stored::Merged(changes), token),
                    Err(error) => {
                        // Still to be saved, by the next save or the layer's.
                        self.state().mark_unsaved(changes);
                        return Err(error);
                    }
                }
            }
            Plan::Create {
                mut record,
                replaces,
            } => {
                let (old, in_flight) = match replaces {
                    Some((old, changes)) => (Some(old), Some(InFlight::new(self, changes))),
                    None => (None, None),
                };
                let replacing = old.as_ref().zip(in_flight.as_ref().map(|f| &f.changes));
                let created = self
                    .create_replacing(store.as_ref(), &record, replacing, now)
                    .await;
                let changes = in_flight.map(InFlight::answered);
                let id = match created {
                    Ok(Some(id)) => id,
                    Ok(None) => return Err(ended_during_request()),
                    Err(error) => {
                        if let Some(changes) = changes {
                            // Still to be saved, by the next save or the layer's.
                            self.state().mark_unsaved(changes);
                        }
                        return Err(error);
                    }
                };
                let token = new_session_token(&id, &record, now);
                record.data = Map::new();
                let live = Live {
                    id: Some(id),
                    record,
                };
                (Stored::Replaced(Some(live), changes), token)
            }
            Plan::Destroy {
                old,
                then,
                remove_token,
            } => {
                let (token, live) = self
                    .destroy_then(&self.0.backend.0, old, then, remove_token, now)
                    .await?;
                (Stored::Replaced(live, None), token)
            }
        };
        let mut state = self.state();
        // Nothing changed meanwhile: what was saved is settled. Otherwise the changes stay marked,
        // and the next save writes them again with whatever came since (merging the same values
        // twice does no harm).
        let settled = state.generation == generation;
        match stored {
            Stored::Touched(idle_deadline) => {
                if let Some(live) = &mut state.live {
                    live.record.idle_deadline = idle_deadline;
                }
            }
            Stored::Merged(changes) => {
                if let Some(live) = &mut state.live {
                    if let Some(idle) = changes.idle_deadline {
                        live.record.idle_deadline = idle;
                    }
                    if let Some(expiry) = changes.expiry {
                        live.record.expiry = expiry;
                    }
                    if let Some(owner) = &changes.owner {
                        live.record.owner.clone_from(owner);
                    }
                }
                if settled || state.reshaped == reshaped {
                    // Saved, `clear` and metadata included. Keys changed meanwhile are still
                    // marked and go with the next save; sending the `clear` again would erase
                    // what other requests wrote since.
                    state.settle();
                } else {
                    // A `clear`, a new owner or the like came meanwhile, and its flag is set:
                    // the keys saved go again with it. A `clear` this save took is done, though:
                    // sent again, it would erase what other requests wrote since. Only one made
                    // meanwhile stays.
                    state.mark_unsaved(changes);
                    if state.cleared_at == cleared_at {
                        state.cleared = false;
                    }
                }
            }
            Stored::Replaced(live, changes) => {
                // A destroy that left no session: an expiry set for the next one still applies.
                let next_expiry = if live.is_none() { state.expiry } else { None };
                state.live = live;
                if settled {
                    state.settle();
                    state.dirty.clear();
                } else if state.reshaped == reshaped {
                    // Only values changed meanwhile: the rotation or destruction is done, and
                    // the keys changed since (still marked) go to the new session.
                    state.settle();
                } else if let Some(changes) = changes {
                    // A `clear`, a new owner or the like came meanwhile, and the rotation's
                    // flags stay set: its keys must go again with them.
                    state.mark_unsaved(changes);
                }
                if state.expiry.is_none() {
                    state.expiry = next_expiry;
                }
            }
        }
        if !matches!(token, TokenAction::Keep) {
            state.pending = Some(Box::new(token));
            self.0.pending.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// The session `id` ended in the store during the request: a cookie for it that a
    /// [`Session::save`] left for the response is stale, and could clobber the cookie of a
    /// concurrent rotation, so it is not sent.
    fn forget_pending_for(&self, id: &SessionId) {
        if !self.0.pending.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.state();
        if let Some(TokenAction::Set { value, .. }) = state.pending.as_deref()
            && *value == id.expose()
        {
            state.pending = None;
        }
    }

    /// The ID whose cookie a [`Session::save`] left for the response to refresh (a new
    /// `Max-Age` for the ID the client sent), if any. Another request may have ended or rotated
    /// that session since the save, and sent a new cookie: this one, sent later, would put the
    /// retired ID back over it. A commit that makes a store call of its own finds out (and
    /// [`forget_pending_for`](Self::forget_pending_for) drops the cookie); one that makes none
    /// checks with [`Session::check_refresh`].
    fn refresh_to_check(&self) -> Option<SessionId> {
        if !self.0.pending.load(Ordering::Acquire) {
            return None;
        }
        let state = self.state();
        let Some(TokenAction::Set { value, .. }) = state.pending.as_deref() else {
            return None;
        };
        let presented = |incoming: &Incoming| match incoming {
            Incoming::Id(id) if id.expose() == *value => Some(id.clone()),
            _ => None,
        };
        match &self.0.incoming {
            Incoming::Several(tokens) => tokens.iter().find_map(presented),
            incoming => presented(incoming),
        }
    }

    /// Drops the refresh cookie of [`refresh_to_check`](Self::refresh_to_check), if any: after
    /// a store call that could not tell whether the session still stands, or found another
    /// request's policy in place. A cookie for an ID the client was not sent yet (a session a
    /// `save` created or rotated to) stays: its session stands, and only this response can
    /// give the client its ID.
    fn drop_unchecked_refresh(&self) {
        if let Some(id) = self.refresh_to_check() {
            self.forget_pending_for(&id);
        }
    }

    /// Drops the refresh cookie of [`refresh_to_check`](Self::refresh_to_check) unless the
    /// store still holds the session `id` with the expiry this request holds (a failed check
    /// drops it too: the cookie is only a refresh, and the next due request sends another).
    fn check_refresh(&self, id: &SessionId, found: &Result<Option<Record>, StoreError>) {
        let scope = self.0.config.scope;
        match found {
            // Its `Max-Age` was worked out from the policy this request holds: another request
            // that set a new one since sent its own cookie, which this one must not undo.
            Ok(Some(stored)) if stored.expiry == self.expiry() => return,
            Ok(Some(_)) => tracing::debug!(
                scope,
                session = %id.log_tag(),
                "another request changed the session's expiry after a save refreshed its cookie; the cookie is not sent"
            ),
            Ok(None) => tracing::debug!(
                scope,
                session = %id.log_tag(),
                "the session a save refreshed ended before the response; its cookie is not sent"
            ),
            Err(error) => tracing::warn!(
                scope,
                session = %id.log_tag(),
                %error,
                "session store failed on the check of a refreshed cookie; the cookie is not sent"
            ),
        }
        self.forget_pending_for(id);
    }

    /// The token a [`Session::save`] left for the response, unless `committed` carries a newer
    /// one. Called by the service with what the layer's own save gave.
    pub(crate) fn with_saved_token(&self, mut committed: Committed) -> Committed {
        if self.0.pending.load(Ordering::Acquire)
            && matches!(committed.token, TokenAction::Keep)
            && let Some(token) = self.state().pending.take()
        {
            committed.token = *token;
        }
        committed
    }

    /// Whether [`load`](Session::load) has completed.
    pub fn is_loaded(&self) -> bool {
        self.state().loaded
    }

    fn loaded_state(&self) -> Result<MutexGuard<'_, State>, SessionError> {
        let state = self.state();
        if state.loaded {
            Ok(state)
        } else {
            Err(SessionError::new(
                SessionErrorKind::NotLoaded,
                "session used before load()",
            ))
        }
    }

    /// [`Session::loaded_state`], to change it: an error once the session is closed.
    fn writable_state(&self) -> Result<MutexGuard<'_, State>, SessionError> {
        let mut state = self.loaded_state()?;
        if state.closed {
            return Err(SessionError::closed());
        }
        state.generation = state.generation.wrapping_add(1);
        Ok(state)
    }

    /// The state, for a change that has no result to carry an error: `None`, and a warning, once
    /// the session is closed.
    fn state_to_change(&self, change: &'static str) -> Option<MutexGuard<'_, State>> {
        let mut state = self.state();
        if state.closed {
            tracing::warn!(
                scope = self.0.config.scope,
                change,
                "session changed after its response; the change is ignored"
            );
            return None;
        }
        state.generation = state.generation.wrapping_add(1);
        state.reshaped = state.reshaped.wrapping_add(1);
        Some(state)
    }

    /// How this request arrived (new visitor, returning, expired, invalid). [`Arrival::New`] until
    /// loaded.
    pub fn arrival(&self) -> Arrival {
        self.state().arrival
    }

    /// The value under `key`, deserialized as `T`.
    ///
    /// # Errors
    ///
    /// If the session is not loaded, or the stored value is not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let state = self.loaded_state()?;
        match state.data.get(key) {
            Some(value) => T::deserialize(value)
                .map(Some)
                .map_err(|e| unexpected_type(key, &e)),
            None => Ok(None),
        }
    }

    /// The raw JSON value under `key`.
    ///
    /// # Errors
    ///
    /// If the session is not loaded.
    pub fn get_value(&self, key: &str) -> Result<Option<Value>, SessionError> {
        Ok(self.loaded_state()?.data.get(key).cloned())
    }

    /// Sets `key` to `value`.
    ///
    /// Setting a key to the value it already has (in this request's copy) is not a change:
    /// a handler that sets the same value on every request costs no store write. So should a
    /// concurrent request of the session have changed that key after this one loaded it, its
    /// value stands.
    ///
    /// # Errors
    ///
    /// If the session is not loaded or is closed (see [`Session`]'s "After the response"), or
    /// `value` cannot be represented as JSON (e.g. a map with non-string keys) or nests arrays and
    /// objects more than 125 levels deep (see [`insert_value`](Session::insert_value)).
    pub fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionError> {
        let value = serde_json::to_value(value).map_err(|e| {
            SessionError::new(
                SessionErrorKind::Serialize,
                format!("session value {key:?} cannot be serialized"),
            )
            .with_source(e)
        })?;
        self.insert_value(key, value)
    }

    /// Sets `key` to a raw JSON value.
    ///
    /// # Errors
    ///
    /// If the session is not loaded, or is closed; [`SessionErrorKind::Serialize`] if `value`
    /// nests arrays and objects more than 125 levels deep. JSON parsers, `serde_json`'s
    /// included, refuse deeper input, so a store could write such a session and then not read it
    /// back: the session would be lost on its next request. Every store gets the same limit.
    pub fn insert_value(&self, key: &str, value: Value) -> Result<(), SessionError> {
        if crate::record::nests_deeper_than(&value, crate::record::MAX_VALUE_DEPTH) {
            return Err(SessionError::new(
                SessionErrorKind::Serialize,
                format!(
                    "session value {key:?} nests arrays and objects more than {} levels deep",
                    crate::record::MAX_VALUE_DEPTH
                ),
            ));
        }
        let mut state = self.writable_state()?;
        let state = &mut *state;
        match state.data.get_mut(key) {
            Some(slot) if *slot == value => return Ok(()),
            // An existing key keeps its allocation; only a new key is copied into the map.
            Some(slot) => *slot = value,
            None => {
                state.data.insert(key.to_owned(), value);
            }
        }
        state.mark_dirty(key);
        Ok(())
    }

    /// Removes `key` and returns its old value (Flask's `pop`). A value that is not a `T` is left in
    /// place and reported as an error.
    ///
    /// # Errors
    ///
    /// If the session is not loaded or is closed, or the stored value is not a `T`.
    pub fn remove<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let mut state = self.writable_state()?;
        let Some(value) = state.data.get(key) else {
            return Ok(None);
        };
        let old = T::deserialize(value).map_err(|e| unexpected_type(key, &e))?;
        state.data.remove(key);
        state.mark_dirty(key);
        Ok(Some(old))
    }

    /// Removes `key` and returns its raw old value.
    ///
    /// # Errors
    ///
    /// If the session is not loaded, or is closed.
    pub fn remove_value(&self, key: &str) -> Result<Option<Value>, SessionError> {
        let mut state = self.writable_state()?;
        let old = state.data.remove(key);
        if old.is_some() {
            state.mark_dirty(key);
        }
        Ok(old)
    }

    /// Reads the `T` under `key` (or `T::default()`), lets `f` change it, writes it back, and
    /// returns what `f` returned: one call to keep a whole struct in the session.
    ///
    /// # Examples
    ///
    /// ```
    /// # use tower_satchel::{Session, SessionError};
    /// #[derive(Default, serde::Serialize, serde::Deserialize)]
    /// struct Cart { items: Vec<String> }
    ///
    /// fn add(session: &Session, item: &str) -> Result<usize, SessionError> {
    ///     session.update("cart", |cart: &mut Cart| {
    ///         cart.items.push(item.to_owned());
    ///         cart.items.len()
    ///     })
    /// }
    /// ```
    ///
    /// The read and the write are two steps: tasks that share one handle and update the same key
    /// at the same time can lose one of the updates (the closure runs without the handle's lock,
    /// so it may use the session itself).
    ///
    /// # Errors
    ///
    /// As [`get`](Session::get) and [`insert`](Session::insert).
    pub fn update<T, R>(&self, key: &str, f: impl FnOnce(&mut T) -> R) -> Result<R, SessionError>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        let mut value: T = self.get(key)?.unwrap_or_default();
        let out = f(&mut value);
        self.insert(key, value)?;
        Ok(out)
    }

    /// Whether `key` is set. `false` before load.
    pub fn contains(&self, key: &str) -> bool {
        self.state().data.contains_key(key)
    }

    /// The keys that are set, sorted. Empty before load.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.state().data.keys().cloned().collect();
        // The map iterates sorted, unless serde_json's `preserve_order` feature is on (any crate
        // of the app can turn it on): then in insertion order. One pass when already sorted.
        keys.sort_unstable();
        keys
    }

    /// How many keys are set. 0 before load.
    pub fn len(&self) -> usize {
        self.state().data.len()
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.state().data.is_empty()
    }

    /// Removes every key. The session (and its ID) stays; use [`destroy`](Session::destroy) to end
    /// it.
    pub fn clear(&self) {
        let Some(mut state) = self.state_to_change("clear") else {
            return;
        };
        state.data.clear();
        state.dirty.clear();
        state.cleared = true;
        state.cleared_at = state.reshaped;
    }

    /// Gives the session a new ID at the end of the request, keeping its data: call it on login and
    /// on any change of privilege (SECURITY.md 8). The store moves the record to the new ID in one
    /// step ([`SessionStore::rename`](crate::SessionStore::rename)) when the request commits, so a
    /// failure or a 5xx response leaves the old session working (unless the handler
    /// [`save`](Session::save)d after `cycle_id`: then the rotation is done, and the new ID goes
    /// out with any response); a request still holding the old ID afterwards finds no session.
    /// Rotation never extends the absolute lifetime (SECURITY.md 9).
    ///
    /// If that `save` fails because the store's answer was lost (a dropped connection, a
    /// timeout), the store may have made the move anyway. A response that then commits (a status
    /// below 500, or any status with
    /// [`persist_on_server_error`](crate::SessionLayerBuilder::persist_on_server_error)) finishes
    /// the rotation; one that does not (a 5xx) looks: if the session moved, its new ID goes out
    /// with the error response, and if the store left only a copy under the new ID, the copy is
    /// deleted and the old ID goes on working.
    ///
    /// The new record is the old one as the store holds it at that moment, with this request's
    /// changes applied: what concurrent requests of the session saved before moves to the new ID
    /// too, and a save that comes after finds the old ID gone. If the session ended meanwhile
    /// (logged out or revoked elsewhere), it is not revived: no new ID is created, and no cookie
    /// sent.
    pub fn cycle_id(&self) {
        if let Some(mut state) = self.state_to_change("cycle_id") {
            state.cycle = true;
        }
    }

    /// Ends the session at the end of the request: its record is deleted and the client told to drop
    /// the cookie (SECURITY.md 10). Values inserted after `destroy` start a new session with a new
    /// ID (e.g. a "you have been logged out" message).
    pub fn destroy(&self) {
        if let Some(mut state) = self.state_to_change("destroy") {
            state.destroy();
        }
    }

    /// Sets this session's expiry, e.g. `Expiry::OnInactivity(30 days)` for "remember me".
    /// Persisted with the session; the absolute lifetime still applies. Kept in whole seconds,
    /// as the stores other than the memory store keep it: a window rounded up, a date rounded
    /// down (the session may end up to a second before it).
    ///
    /// Concurrent requests of the session that loaded it before the new expiry was saved do not
    /// undo it: their deadline refresh is worked out from the old expiry, so the store drops it
    /// (a new fixed date, or a shorter window, holds), and they send no cookie, which would carry
    /// the old `Max-Age`. Their value changes are still saved (see
    /// [`Saved::PolicyChanged`](crate::Saved::PolicyChanged)). Two requests that both set an
    /// expiry: the last to commit wins. A concurrent [`cycle_id`](Session::cycle_id) counts as
    /// setting one: the new ID goes out with a cookie, so its record takes the expiry that
    /// cookie's `Max-Age` follows, the one its request loaded or set. With the cookie store each
    /// response carries its own copy, so the browser keeps whichever arrives last.
    pub fn set_expiry(&self, expiry: Expiry) {
        if let Some(mut state) = self.state_to_change("set_expiry") {
            // In whole seconds, as the stores keep it (see `Expiry::stored`).
            state.expiry = Some(expiry.stored());
        }
    }

    /// This session's expiry policy.
    pub fn expiry(&self) -> Expiry {
        self.state().current_expiry(&self.0.config)
    }

    /// When the session will expire if this request is its last activity: the earlier of its idle
    /// and absolute deadlines, as they stand once this request is saved.
    ///
    /// The idle deadline moves with activity only on the touch schedule (see
    /// [`touch_after`](crate::SessionLayerBuilder::touch_after)), so between touches this is the
    /// deadline the last touch set, not the request's time plus the window.
    pub fn expires_at(&self) -> OffsetDateTime {
        let config = &self.0.config;
        let now = config.clock.now();
        let state = self.state();
        if let Some(live) = &state.live {
            // What the commit does (see `plan_with`): the idle deadline stays put unless this
            // request rotates, replaces or re-seals the record, changes the expiry policy, or is
            // due for a touch.
            let moves = state.destroyed
                || state.cycle
                || state.expiry.is_some()
                || (self.0.backend.is_client() && (state.modified() || state.reseal))
                || self.touch_due(&live.record, now);
            if !moves {
                return live.record.deadline();
            }
        }
        state.record_with(Map::new(), config, now).deadline()
    }

    /// The session's ID, once the session exists in the store: not for a new session before its
    /// first response or [`save`](Session::save), nor with the cookie store, which has no ID.
    pub fn id(&self) -> Option<SessionId> {
        let state = self.state();
        if state.destroyed {
            return None;
        }
        state.live.as_ref().and_then(|l| l.id.clone())
    }

    /// Ties the session to an account, so that all sessions of that account can be listed and
    /// revoked (SECURITY.md 12). Use a stable key (a user ID), not a display name.
    pub fn set_owner(&self, owner: impl Into<String>) {
        if let Some(mut state) = self.state_to_change("set_owner") {
            state.owner = Some(Some(owner.into()));
        }
    }

    /// Unties the session from its account.
    pub fn clear_owner(&self) {
        if let Some(mut state) = self.state_to_change("clear_owner") {
            state.owner = Some(None);
        }
    }

    /// The account this session belongs to.
    pub fn owner(&self) -> Option<String> {
        self.state().current_owner()
    }

    /// Ends every session of this session's owner, this one included ("log out everywhere"). If
    /// the owner was set in this request and not saved yet, the store does not have this session
    /// as the owner's: it ends when the response commits (not on a 5xx).
    /// Returns how many the store deleted: always 0 with the cookie store and its revocation
    /// hook, which deletes nothing (every cookie of the owner sealed until now is refused from
    /// then on, and the server does not know how many there are).
    ///
    /// # Errors
    ///
    /// When the session has no owner, the store fails, or the store cannot revoke (the cookie store
    /// without a revocation hook).
    pub async fn revoke_owner(&self) -> Result<usize, SessionError> {
        let owner = self.owner_to_act_on().await?;
        let now = self.0.config.clock.now();
        let revoked = match &self.0.backend.0 {
            Kind::Server(store) => store.delete_owner(&owner).await,
            Kind::Client(store) => store.revoke_owner(&owner, now).await,
        }
        .map_err(|e| self.hooked(SessionError::store(e)))?;
        tracing::info!(
            scope = self.0.config.scope,
            revoked,
            "sessions of an owner revoked"
        );
        // The store call above has ended this session too (if the store had it as the owner's:
        // the commit deletes it otherwise).
        self.ended_in_store(Some(&owner));
        Ok(revoked)
    }

    /// The live sessions of this session's owner, this one included, oldest first: for a "your
    /// devices" page. Each [`SessionInfo`](crate::SessionInfo) has the session's store key (never
    /// its ID), its creation time and its deadline; the current session is the one whose key is
    /// `session.id().map(|id| id.key())`. Deadlines are held to the
    /// [`absolute_lifetime`](crate::SessionLayerBuilder::absolute_lifetime) configured now, as
    /// loaded sessions are: one shortened since sessions began leaves out those past it, which
    /// would be refused if presented. (The store's own
    /// [`list_owner`](crate::SessionStore::list_owner) knows nothing of the layer, and lists them
    /// until their stored deadline.)
    ///
    /// ```
    /// use tower_satchel::{Session, SessionError};
    ///
    /// async fn devices(session: Session) -> Result<String, SessionError> {
    ///     let this = session.id().map(|id| id.key());
    ///     let mut page = String::new();
    ///     for info in session.owner_sessions().await? {
    ///         let current = if Some(info.key) == this { " (this one)" } else { "" };
    ///         // The key goes into a form for "end this session": see `revoke_owner_session`.
    ///         page += &format!("{} since {}{current}\n", info.key.to_hex(), info.created_at);
    ///     }
    ///     Ok(page)
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionErrorKind::NoOwner`] when the session has no owner; a store error when the store
    /// fails, or with the cookie store, which keeps no list of sessions
    /// ([`StoreErrorKind::Unsupported`]).
    pub async fn owner_sessions(&self) -> Result<Vec<crate::SessionInfo>, SessionError> {
        let owner = self.owner_to_act_on().await?;
        let now = self.0.config.clock.now();
        let Kind::Server(store) = &self.0.backend.0 else {
            return Err(self.hooked(SessionError::store(no_list())));
        };
        let mut listed = store
            .list_owner(&owner, now)
            .await
            .map_err(|e| self.hooked(SessionError::store(e)))?;
        // Held to the absolute lifetime configured now, as a loaded session is: one past it
        // would be refused if presented, so it is not listed.
        for info in &mut listed {
            self.0.config.cap_listed(info);
        }
        listed.retain(|info| info.deadline > now);
        listed.sort_by_key(|info| info.created_at);
        Ok(listed)
    }

    /// Ends one session of this session's owner ("log out that device"), named by its key from
    /// [`owner_sessions`](Session::owner_sessions) (read one back from a form with
    /// [`SessionKey::from_hex`]). Returns `false`, and deletes nothing, when the key names no live
    /// session of this owner (checked on the stored session right before it is deleted): a key
    /// the client sends can end none of another account's sessions. Naming the current session
    /// deletes it at once, as [`revoke_owner`](Session::revoke_owner) does, and the response
    /// then carries a removal cookie.
    ///
    /// ```
    /// use tower_satchel::{Session, SessionError, SessionKey};
    ///
    /// async fn end_device(session: Session, form_key: String) -> Result<&'static str, SessionError> {
    ///     let Some(key) = SessionKey::from_hex(&form_key) else {
    ///         return Ok("no such session");
    ///     };
    ///     Ok(if session.revoke_owner_session(&key).await? { "ended" } else { "no such session" })
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`owner_sessions`](Session::owner_sessions), and a store error when the delete fails.
    pub async fn revoke_owner_session(&self, key: &SessionKey) -> Result<bool, SessionError> {
        let owner = self.owner_to_act_on().await?;
        let Kind::Server(store) = &self.0.backend.0 else {
            return Err(self.hooked(SessionError::store(no_list())));
        };
        let failed = |e| self.hooked(SessionError::store(e));
        // Checked on the stored session itself, right before the delete: a key the client sends
        // ends nothing unless it names a live session whose owner is this one's now.
        let stored = store
            .load(key, self.0.config.clock.now())
            .await
            .map_err(failed)?;
        if stored.is_none_or(|record| record.owner.as_deref() != Some(owner.as_str())) {
            return Ok(false);
        }
        store.delete(key).await.map_err(failed)?;
        tracing::info!(
            scope = self.0.config.scope,
            session = %key.log_tag(),
            "session of the owner revoked"
        );
        if self.id().is_some_and(|id| id.key() == *key) {
            self.ended_in_store(None);
        }
        Ok(true)
    }

    /// Marks the session ended, after a store call ended it (or, with `owner`, ended every
    /// session of that owner): the commit then sends a removal cookie and writes nothing. Once
    /// closed, the handle stays as it was.
    fn ended_in_store(&self, owner: Option<&str>) {
        let mut state = self.state();
        if !state.closed {
            state.generation = state.generation.wrapping_add(1);
            state.reshaped = state.reshaped.wrapping_add(1);
            // A cookie a `save` left for it names a session that no longer exists: a response
            // that commits nothing (a 5xx) would still send it. (A client that holds no cookie
            // then needs no removal either.) Not when the store had it without that owner (set
            // in this request and not saved yet): the store call left it, and on a 5xx, which
            // deletes nothing, the session and its cookie stand.
            let stale = match (&state.live, state.pending.as_deref()) {
                (
                    Some(Live {
                        id: Some(id),
                        record,
                    }),
                    Some(TokenAction::Set { value, .. }),
                ) => {
                    *value == id.expose()
                        && owner.is_none_or(|owner| record.owner.as_deref() == Some(owner))
                }
                _ => false,
            };
            if stale {
                state.pending = None;
            }
            state.destroy();
        }
    }

    /// Loads the session and returns its owner, or the error for a session without one.
    async fn owner_to_act_on(&self) -> Result<String, SessionError> {
        self.load().await?;
        self.owner()
            .ok_or_else(|| SessionError::new(SessionErrorKind::NoOwner, "the session has no owner"))
    }

    /// Keeps `value` under `key` for this request only; it is never persisted (e.g. set by an auth
    /// middleware, read by the handler).
    pub fn insert_transient<T: Send + Sync + 'static>(&self, key: &str, value: T) {
        self.state()
            .transient
            .insert(key.to_owned(), Box::new(value));
    }

    /// A copy of the transient value under `key`, if it is a `T`.
    pub fn get_transient<T: Clone + Send + Sync + 'static>(&self, key: &str) -> Option<T> {
        self.state()
            .transient
            .get(key)
            .and_then(|v| v.downcast_ref::<T>())
            .cloned()
    }

    /// Removes the transient value under `key` and returns it, if it is a `T`.
    pub fn remove_transient<T: Send + Sync + 'static>(&self, key: &str) -> Option<T> {
        let mut state = self.state();
        let value = state.transient.remove(key)?;
        match value.downcast::<T>() {
            Ok(value) => Some(*value),
            Err(other) => {
                state.transient.insert(key.to_owned(), other);
                None
            }
        }
    }

    /// `error` as it leaves a public method: a store failure carries this layer's error handler,
    /// so that a handler returning it with `?` gets the app's response for a store failure
    /// (see `SessionLayerBuilder::error_handler`), as a failure on load or in the layer's own
    /// save does.
    fn hooked(&self, mut error: SessionError) -> SessionError {
        if error.kind == SessionErrorKind::Store && error.hook.is_none() {
            error.hook.clone_from(&self.0.config.error_handler);
        }
        error
    }

    #[cfg(feature = "axum")]
    pub(crate) fn error_handler(&self) -> Option<crate::layer::ErrorHandler> {
        self.0.config.error_handler.clone()
    }

    /// Closes the handle to changes, once the handler's response is known (or the request was
    /// abandoned): whatever another handle changed after this could not be saved, so it is refused
    /// rather than lost. Returns whether the handler did anything the service must act on.
    pub(crate) fn close(&self) -> bool {
        let mut state = self.state();
        state.closed = true;
        state.loaded || state.load_failed || state.modified()
    }

    fn plan(&self, now: OffsetDateTime, server_error: bool) -> (Plan, bool) {
        // Another handle (kept by a spawned task, say) may still read the data: then the commit
        // copies what it needs instead of moving it out.
        let keep = Arc::strong_count(&self.0) > 1;
        self.plan_with(&mut self.state(), now, server_error, keep)
    }

    /// What the store must be told about `state`; the data is copied into the plan if `keep`,
    /// moved otherwise.
    fn plan_with(
        &self,
        state: &mut State,
        now: OffsetDateTime,
        server_error: bool,
        keep: bool,
    ) -> (Plan, bool) {
        let config = &self.0.config;
        let read = state.loaded || state.load_failed;
        if server_error && !config.persist_on_5xx {
            return (Plan::Nothing, read);
        }
        let client = self.0.backend.is_client();
        let live_id = state.live.as_ref().and_then(|l| l.id.clone());
        if state.destroyed {
            let has_data =
                !state.data.is_empty() || state.owner.as_ref().is_some_and(Option::is_some);
            let then = has_data.then(|| {
                let mut record = State {
                    data: state.data.clone(),
                    owner: state.owner.clone(),
                    expiry: state.expiry,
                    ..State::default()
                }
                .full_record(config, now);
                record.created_at = now;
                record
            });
            // The client holds a token if it sent one, or if a save during this request gave it
            // one.
            let remove_token =
                !matches!(self.0.incoming, Incoming::Absent) || state.pending.is_some();
            return (
                Plan::Destroy {
                    old: live_id,
                    then,
                    remove_token,
                },
                read,
            );
        }
        let Some(live) = &state.live else {
            // No session yet: create one only if there is something to keep.
            if state.data.is_empty() && state.current_owner().is_none() {
                return (Plan::Nothing, read);
            }
            if !state.modified() {
                return (Plan::Nothing, read);
            }
            let record = state.take_record(config, now, keep);
            return if client {
                (
                    Plan::Seal {
                        record,
                        refresh: false,
                        sealed_at: now,
                    },
                    read,
                )
            } else {
                (
                    Plan::Create {
                        record,
                        replaces: None,
                    },
                    read,
                )
            };
        };
        if client {
            let due = state.modified() || state.reseal || self.touch_due(&live.record, now);
            if !due {
                return (Plan::Nothing, read);
            }
            if state.cycle {
                // Sealed afresh (a new nonce): that is all a rotation is without server state.
                tracing::debug!(
                    scope = config.scope,
                    "sealed session cycled; a copy of the old cookie stays valid until its deadline"
                );
            }
            // As of when the cookie was opened (see `State::opened_at`), unless the request
            // logs in (an owner other than the one the cookie had): a login starts afresh, and
            // must outlast a revocation the handler itself just made (signing in after "log
            // out everywhere"). A rotation, or setting the owner the session already has, keeps
            // the opening time: either would otherwise let a request in flight when its owner's
            // sessions were revoked write a cookie that passes the revocation.
            let new_owner = matches!(
                &state.owner,
                Some(owner) if owner.as_deref() != live.record.owner.as_deref()
            );
            let sealed_at = match state.opened_at {
                Some(opened) if !new_owner => opened.min(now),
                _ => now,
            };
            return (
                Plan::Seal {
                    refresh: !state.modified(),
                    sealed_at,
                    record: state.take_record(config, now, keep),
                },
                read,
            );
        }
        let Some(id) = live_id else {
            return (Plan::Nothing, read);
        };
        if state.cycle {
            let changes = state.take_change_set(config, now, keep, false);
            return (
                Plan::Create {
                    record: state.record_with(Map::new(), config, now),
                    replaces: Some((id, changes)),
                },
                read,
            );
        }
        if state.modified() {
            let (live_expiry, live_idle, absolute) = (
                live.record.expiry,
                live.record.idle_deadline,
                live.record.absolute_deadline,
            );
            let touch_due = self.touch_due(&live.record, now);
            // Like a read-only request's touch, a save moves the idle deadline only once the
            // touch fraction of the window has passed: moving it costs the store more than the
            // change itself (a TTL update in Redis, an indexed column in SQL).
            let changes = state.take_change_set(config, now, keep, touch_due);
            let expiry = changes.expiry.unwrap_or(live_expiry);
            let idle = changes.idle_deadline.unwrap_or(live_idle);
            // The cookie is re-sent only when it would change: a new expiry policy, or a
            // persistent cookie whose Max-Age has fallen behind by the touch fraction. The
            // value (the ID) is the same, so a browser-session cookie never needs it.
            let refresh = changes.expiry.is_some() || (expiry.is_persistent() && touch_due);
            let max_age = max_age_at(expiry, idle, absolute, now);
            return (
                Plan::Save {
                    id,
                    changes,
                    cookie: refresh.then_some(max_age),
                },
                read,
            );
        }
        if self.touch_due(&live.record, now) {
            let expiry = live.record.expiry;
            let idle_deadline = config.idle_deadline(expiry, now);
            return (
                Plan::Touch {
                    id,
                    idle_deadline,
                    basis: expiry,
                    max_age: max_age_at(expiry, idle_deadline, live.record.absolute_deadline, now),
                },
                read,
            );
        }
        (Plan::Nothing, read)
    }

    fn touch_due(&self, record: &Record, now: OffsetDateTime) -> bool {
        let config = &self.0.config;
        let Some(window) = config.idle_window(record.expiry) else {
            return false;
        };
        // Due once `touch_fraction` of the window has passed since the deadline was last set
        // (`idle_deadline - window`), put the other way round so there is one date subtraction.
        // The part of the window that has to pass is at most the window itself: an enormous
        // window (a configured `Duration::MAX`, say) must not overflow the multiplication.
        let spent = Duration::checked_seconds_f64(window.as_seconds_f64() * config.touch_fraction)
            .unwrap_or(window);
        let slides = record.idle_deadline - now <= window - spent
            // Once the idle deadline has reached the absolute one, no touch can make the
            // session, or its cookie (whose `Max-Age` stops there too), last any longer.
            && record
                .absolute_deadline
                .is_none_or(|absolute| record.idle_deadline < absolute);
        match record.expiry {
            // A date further away than a cookie lives (see `Config::idle_window`): the deadline
            // slides until it reaches the date (the last touch sets it to the date), never past.
            Expiry::AtDateTime(at) => slides && at > record.idle_deadline,
            _ => slides,
        }
    }

    /// Carries out what the handler did. Called by the service once the response is known.
    ///
    /// Returns at once when no store call is needed (the common read-only request) or when the
    /// only one is a save, a touch or a new session's create with an
    /// [`ImmediateStore`](crate::ImmediateStore); otherwise a boxed future that makes the store
    /// calls.
    pub(crate) fn finish(&self, server_error: bool) -> Finish {
        // A failed request persists nothing: no need to load what it changed without loading.
        // (A load then could only fail, and put the layer's error response in place of the
        // handler's own.)
        let persists = !server_error || self.0.config.persist_on_5xx;
        let needs_load = {
            let state = self.state();
            // A rotation left unanswered is settled by `execute` too (see `settle_rotation`).
            (persists && !state.loaded && state.modified())
                || state.saving
                || state.rotating_to.is_some()
        };
        if needs_load {
            let session = self.clone();
            return Finish::Pending(Box::pin(async move {
                // A save still in flight (made by a handle the handler passed on) finishes first.
                drop(session.0.load_lock.lock().await);
                if persists {
                    session.load().await?;
                }
                let now = session.0.config.clock.now();
                let (plan, read) = session.plan(now, server_error);
                session.execute(plan, read, now).await
            }));
        }
        let now = self.0.config.clock.now();
        match self.plan(now, server_error) {
            (Plan::Nothing, read) => {
                if let (Some(id), Kind::Server(store)) =
                    (self.refresh_to_check(), &self.0.backend.0)
                {
                    match store.immediate() {
                        Some(store) => self.check_refresh(&id, &store.load_now(&id.key(), now)),
                        // `execute` checks it, as after a load.
                        None => return Finish::Pending(self.execute(Plan::Nothing, read, now)),
                    }
                }
                Finish::Ready(Ok(Committed {
                    token: TokenAction::Keep,
                    read,
                }))
            }
            (plan, read) => {
                // A save, a touch or a new session's create with an ImmediateStore is made here and
                // now; every other store call goes into the boxed future of `execute`.
                let immediate = match &self.0.backend.0 {
                    Kind::Server(store) => store.immediate(),
                    Kind::Client(_) => None,
                };
                match (plan, immediate) {
                    (
                        Plan::Save {
                            id,
                            changes,
                            cookie,
                        },
                        Some(store),
                    ) => {
                        let outcome = store.save_now(&id.key(), &changes, now);
                        Finish::Ready(
                            self.saved(&id, outcome, cookie)
                                .map(|token| Committed { token, read }),
                        )
                    }
                    (
                        Plan::Touch {
                            id,
                            idle_deadline,
                            basis,
                            max_age,
                        },
                        Some(store),
                    ) => {
                        let outcome = store.touch_now(&id.key(), idle_deadline, basis, now);
                        let token = self.touched(&id, outcome, max_age);
                        Finish::Ready(Ok(Committed { token, read }))
                    }
                    (
                        Plan::Create {
                            record,
                            replaces: None,
                        },
                        Some(store),
                    ) => Finish::Ready(self.create_now(store, &record, now).map(|id| {
                        // Another handle (kept past the response) may ask for the ID.
                        if Arc::strong_count(&self.0) > 1 {
                            self.stored_as(&id, &record);
                        }
                        Committed {
                            token: new_session_token(&id, &record, now),
                            read,
                        }
                    })),
                    (plan, _) => Finish::Pending(self.execute(plan, read, now)),
                }
            }
        }
    }

    /// The token to send after a save of the session `id` ended with `outcome`.
    fn saved(
        &self,
        id: &SessionId,
        outcome: Result<Saved, StoreError>,
        cookie: Option<Option<Duration>>,
    ) -> Result<TokenAction, SessionError> {
        let scope = self.0.config.scope;
        Ok(match outcome {
            Ok(Saved::Applied) => match cookie {
                Some(max_age) => TokenAction::Set {
                    value: id.expose(),
                    max_age,
                },
                None => TokenAction::Keep,
            },
            // The deadline stayed as another request set it with a new policy, whose cookie
            // that request sent: one worked out from the old policy would undo it, and so would
            // the refresh an earlier `save` left.
            Ok(Saved::PolicyChanged) => {
                self.drop_unchecked_refresh();
                TokenAction::Keep
            }
            Ok(Saved::Gone) => {
                // Deleted meanwhile (logout elsewhere, rotation, expiry): never resurrect it
                // (SECURITY.md 11). No removal cookie either: it could clobber the new cookie a
                // concurrent rotation just set.
                tracing::info!(scope, session = %id.log_tag(), "session ended during the request; its changes were dropped");
                self.forget_pending_for(id);
                TokenAction::Keep
            }
            Err(error) => {
                tracing::error!(scope, session = %id.log_tag(), %error, "session store failed on save");
                // Whether the session still stands is unknown: a refresh is not sent unchecked.
                self.drop_unchecked_refresh();
                return Err(SessionError::store(error));
            }
        })
    }

    /// The token to send after a touch of the session `id` ended with `outcome`.
    fn touched(
        &self,
        id: &SessionId,
        outcome: Result<Saved, StoreError>,
        max_age: Option<Duration>,
    ) -> TokenAction {
        match outcome {
            Ok(Saved::Applied) if max_age.is_some() => TokenAction::Set {
                value: id.expose(),
                max_age,
            },
            Ok(Saved::Gone) => {
                self.forget_pending_for(id);
                TokenAction::Keep
            }
            Ok(Saved::PolicyChanged) => {
                self.drop_unchecked_refresh();
                TokenAction::Keep
            }
            Ok(_) => TokenAction::Keep,
            Err(error) => {
                // A failed touch loses nothing: the deadline is refreshed next time. Nor is a
                // refresh an earlier `save` left sent unchecked.
                let scope = self.0.config.scope;
                tracing::warn!(scope, session = %id.log_tag(), %error, "session touch failed");
                self.drop_unchecked_refresh();
                TokenAction::Keep
            }
        }
    }

    /// The store calls of `plan`, as a boxed future of its own per kind of plan: one future
    /// covering every plan would be as large as all of them together (over 1.5 KiB), and each
    /// commit would pay for allocating and moving it.
    fn execute(
        &self,
        plan: Plan,
        read: bool,
        now: OffsetDateTime,
    ) -> BoxFuture<'static, Result<Committed, SessionError>> {
        let session = self.clone();
        let done = move |token| Ok(Committed { token, read });
        match (plan, self.0.backend.0.clone()) {
            (Plan::Nothing, Kind::Server(store)) => Box::pin(async move {
                let unanswered = session.state().rotating_to.take();
                if let Some(rotation) = unanswered {
                    let (old, id) = *rotation;
                    let token = session
                        .settle_rotation(store.as_ref(), &old, &id, now)
                        .await?;
                    return done(token);
                }
                if let Some(id) = session.refresh_to_check() {
                    let found = store.load(&id.key(), now).await;
                    session.check_refresh(&id, &found);
                }
                done(TokenAction::Keep)
            }),
            (Plan::Nothing, Kind::Client(_)) => Box::pin(async move { done(TokenAction::Keep) }),
            (
                Plan::Seal {
                    record,
                    refresh,
                    sealed_at,
                },
                Kind::Client(store),
            ) => Box::pin(async move {
                let max_age = max_age_for(&record, now);
                match store.seal(session.0.config.token_name(), &record, sealed_at) {
                    Ok(value) => done(TokenAction::Set { value, max_age }),
                    // A session that fitted its cookie can outgrow it on a mere refresh (its
                    // compressed size moves with the deadline, or compression was turned off):
                    // the cookie the browser holds still works, so the request need not fail.
                    Err(error) if refresh && error.kind() == StoreErrorKind::TooLarge => {
                        tracing::warn!(scope = session.0.config.scope, %error, "sealed session not refreshed: it no longer fits its cookie");
                        done(TokenAction::Keep)
                    }
                    Err(error) => Err(SessionError::store(error)),
                }
            }),
            (
                Plan::Touch {
                    id,
                    idle_deadline,
                    basis,
                    max_age,
                },
                Kind::Server(store),
            ) => Box::pin(async move {
                let outcome = store.touch(&id.key(), idle_deadline, basis, now).await;
                done(session.touched(&id, outcome, max_age))
            }),
            (
                Plan::Save {
                    id,
                    changes,
                    cookie,
                },
                Kind::Server(store),
            ) => Box::pin(async move {
                let outcome = store.save(&id.key(), &changes, now).await;
                done(session.saved(&id, outcome, cookie)?)
            }),
            (Plan::Create { record, replaces }, Kind::Server(store)) => {
                Box::pin(async move {
                    let replacing = replaces.as_ref().map(|(old, changes)| (old, changes));
                    match session
                        .create_replacing(store.as_ref(), &record, replacing, now)
                        .await?
                    {
                        Some(id) => {
                            session.stored_as(&id, &record);
                            done(new_session_token(&id, &record, now))
                        }
                        // Ended meanwhile: nothing to rotate, and no cookie (see `saved`).
                        None => {
                            session.state().live = None;
                            done(TokenAction::Keep)
                        }
                    }
                })
            }
            (
                Plan::Destroy {
                    old,
                    then,
                    remove_token,
                },
                backend,
            ) => Box::pin(async move {
                let (token, live) = session
                    .destroy_then(&backend, old, then, remove_token, now)
                    .await?;
                // For a handle kept past the response: the session now is the one values set
                // after `destroy` started, if any.
                let mut state = session.state();
                state.live = live;
                state.destroyed = false;
                drop(state);
                done(token)
            }),
            // Plans are made for the backend at hand; the other pairs do not occur.
            (_, _) => Box::pin(async move { done(TokenAction::Keep) }),
        }
    }

    /// Notes that the commit stored the session as `id` (new, or rotated), for [`Session::id`]
    /// on a handle kept past the response.
    fn stored_as(&self, id: &SessionId, record: &Record) {
        let record = Record {
            data: Map::new(),
            owner: record.owner.clone(),
            ..*record
        };
        self.state().live = Some(Live {
            id: Some(id.clone()),
            record,
        });
    }

    /// Stores `record` under a new ID or, when it `replaces` one (`cycle_id`), moves the old
    /// ID's record to a new ID with this request's changes applied.
    ///
    /// A rotation is the store's [`rename`](crate::SessionStore::rename): one step that applies
    /// the change set to the record as the store holds it then, so that what concurrent requests
    /// of the session saved while this one ran is carried over to the new ID (concurrent
    /// requests writing different keys both keep their writes), and a save that comes
    /// after it finds the old ID gone (SECURITY.md 11). `None` when the old session ended
    /// meanwhile (logged out or revoked elsewhere, expired): it is not brought back under a new
    /// ID. The new record takes this request's idle deadline and expiry policy from `record`
    /// (they go together, like the cookie's `Max-Age`), and its owner only where this request
    /// changed it (in the change set); the rest stays as stored.
    async fn create_replacing(
        &self,
        store: &dyn crate::store::DynStore,
        record: &Record,
        replaces: Option<(&SessionId, &ChangeSet)>,
        now: OffsetDateTime,
    ) -> Result<Option<SessionId>, SessionError> {
        let Some((old, changes)) = replaces else {
            return self.create(store, record, now).await.map(Some);
        };
        let scope = self.0.config.scope;
        let old_key = old.key();
        // The rotation sets the idle deadline afresh, and with it the expiry policy it follows
        // (the new cookie's `Max-Age` is worked out from both). The owner goes with it only if
        // this request changed it (in `changes`): one a concurrent request set stands.
        let mut changes = changes.clone();
        changes.idle_deadline = Some(record.idle_deadline);
        changes.expiry = Some(record.expiry);
        let mut unanswered = self
            .state()
            .rotating_to
            .take()
            .filter(|unanswered| unanswered.0 == old_key)
            .map(|unanswered| unanswered.1);
        for _ in 0..CREATE_ATTEMPTS {
            let (id, again) = match unanswered.take() {
                Some(id) => (id, true),
                None => (new_id()?, false),
            };
            // Until the store answers: if it never does, the next attempt knows where to look.
            self.state().rotating_to = Some(Box::new((old_key, id.clone())));
            let mut outcome = store.rename(&old_key, &id.key(), &changes, now).await;
            match outcome {
                // An earlier attempt at this very move went unanswered, and may have made it.
                Ok(Renamed::Gone) if again => {
                    match Self::moved_already(store, &old_key, &id, &changes, now).await {
                        Ok(true) => outcome = Ok(Renamed::Applied),
                        Ok(false) => {}
                        Err(error) => outcome = Err(error),
                    }
                }
                // The session is still under the old key, so the earlier attempt did not
                // complete: whatever copy it left under the new ID goes, and a fresh ID is drawn.
                Ok(Renamed::Taken) if again => {
                    if let Err(error) = store.delete(&id.key()).await {
                        tracing::warn!(scope, session = %id.log_tag(), %error, "copy of an unanswered rotation not deleted");
                    }
                }
                _ => {}
            }
            if outcome.is_ok() {
                self.state().rotating_to = None;
            }
            match outcome {
                Ok(Renamed::Applied) => {
                    tracing::debug!(scope, from = %old_key.log_tag(), to = %id.log_tag(), "session ID cycled");
                    return Ok(Some(id));
                }
                Ok(Renamed::Gone) => {
                    self.forget_pending_for(old);
                    tracing::info!(scope, session = %old_key.log_tag(), "session ended during the request; its rotation was dropped");
                    return Ok(None);
                }
                Ok(Renamed::Taken) => {}
                Err(error) => {
                    tracing::error!(scope, session = %old_key.log_tag(), %error, "session store failed on rotation");
                    return Err(SessionError::store(error));
                }
            }
        }
        Err(collisions())
    }

    /// Settles a rotation from `old` to `id` whose store call went unanswered, for a commit that
    /// makes no rotation of its own (a 5xx, after a [`Session::save`] that failed or was
    /// dropped). If the store made the move, the session is under `id` only, and the client gets
    /// its cookie: the move stands, as a save's writes do, and the client's cookie now names no
    /// session. If the store left a copy under `id` beside the old session, the copy goes and the
    /// old ID goes on working. If nothing is under `id`, the move never happened.
    async fn settle_rotation(
        &self,
        store: &dyn crate::store::DynStore,
        old: &SessionKey,
        id: &SessionId,
        now: OffsetDateTime,
    ) -> Result<TokenAction, SessionError> {
        let scope = self.0.config.scope;
        let failed = |error: StoreError| {
            tracing::error!(scope, session = %old.log_tag(), %error, "session store failed on the check of an unanswered rotation");
            SessionError::store(error)
        };
        let Some(mut moved) = store.load(&id.key(), now).await.map_err(failed)? else {
            return Ok(TokenAction::Keep);
        };
        if store.load(old, now).await.map_err(failed)?.is_some() {
            store.delete(&id.key()).await.map_err(failed)?;
            tracing::debug!(scope, session = %old.log_tag(), "copy of an unanswered rotation deleted; the session keeps its ID");
            return Ok(TokenAction::Keep);
        }
        tracing::debug!(scope, from = %old.log_tag(), to = %id.log_tag(), "an unanswered rotation was made; its cookie goes out");
        self.0.config.cap_absolute(&mut moved);
        Ok(TokenAction::Set {
            value: id.expose(),
            max_age: max_age_for(&moved, now),
        })
    }

    /// Whether the session is already under `id`, moved there from `old` by an earlier rename
    /// whose answer was lost; if so, `changes` are saved to it, and whatever is left under `old`
    /// is deleted (a rename cut short can leave it behind, and the old ID must not keep working,
    /// SECURITY.md 8). IDs are 256-bit random: no other session is ever stored under `id`.
    async fn moved_already(
        store: &dyn crate::store::DynStore,
        old: &SessionKey,
        id: &SessionId,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        if store.load(&id.key(), now).await?.is_none()
            || store.save(&id.key(), changes, now).await? == Saved::Gone
        {
            return Ok(false);
        }
        store.delete(old).await?;
        Ok(true)
    }

    /// Deletes the session `old` and, when values were set after `destroy`, stores them as a new
    /// session. Returns the token for the client and, for a server store, the new session.
    async fn destroy_then(
        &self,
        backend: &Kind,
        old: Option<SessionId>,
        then: Option<Record>,
        remove_token: bool,
        now: OffsetDateTime,
    ) -> Result<(TokenAction, Option<Live>), SessionError> {
        let config = &self.0.config;
        let scope = config.scope;
        if let (Some(old), Kind::Server(store)) = (&old, backend) {
            let key = old.key();
            // A rotation of it that went unanswered may have moved it: that copy goes too.
            let unanswered = self.state().rotating_to.take();
            if let Some(moved) = unanswered.filter(|unanswered| unanswered.0 == key) {
                store.delete(&moved.1.key()).await.map_err(|error| {
                    tracing::error!(scope, session = %key.log_tag(), %error, "session store failed on delete");
                    SessionError::store(error)
                })?;
            }
            store.delete(&key).await.map_err(|error| {
                tracing::error!(scope, session = %key.log_tag(), %error, "session store failed on delete");
                SessionError::store(error)
            })?;
            tracing::debug!(scope, session = %key.log_tag(), "session destroyed");
        } else if remove_token && matches!(backend, Kind::Client(_)) {
            tracing::debug!(
                scope,
                "sealed session destroyed; a copy of its cookie stays valid until its deadline"
            );
        }
        Ok(match (then, backend) {
            (Some(mut record), Kind::Server(store)) => {
                let id = self.create(store.as_ref(), &record, now).await?;
                let token = new_session_token(&id, &record, now);
                // Like an adopted session's, the live record leaves its data to the handle.
                record.data = Map::new();
                (
                    token,
                    Some(Live {
                        id: Some(id),
                        record,
                    }),
                )
            }
            (Some(record), Kind::Client(store)) => {
                let value = match store.seal(config.token_name(), &record, now) {
                    Ok(value) => value,
                    Err(error) => {
                        if remove_token {
                            // Nothing on the server ends a sealed session: the cookie the
                            // client holds must go even though the values set after `destroy`
                            // cannot be kept, or the logout would leave it logged in. The error
                            // response carries the removal (see `with_saved_token`).
                            self.state().pending = Some(Box::new(TokenAction::Remove));
                            self.0.pending.store(true, Ordering::Release);
                        }
                        return Err(SessionError::store(error));
                    }
                };
                (
                    TokenAction::Set {
                        value,
                        max_age: max_age_for(&record, now),
                    },
                    None,
                )
            }
            (None, _) if remove_token => (TokenAction::Remove, None),
            (None, _) => (TokenAction::Keep, None),
        })
    }

    async fn create(
        &self,
        store: &dyn crate::store::DynStore,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<SessionId, SessionError> {
        for _ in 0..CREATE_ATTEMPTS {
            let id = new_id()?;
            if self.created(store.create(&id.key(), record, now).await)? {
                return Ok(id);
            }
        }
        Err(collisions())
    }

    /// [`Session::create`] with an [`ImmediateStore`](crate::ImmediateStore).
    fn create_now(
        &self,
        store: &dyn crate::ImmediateStore,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<SessionId, SessionError> {
        for _ in 0..CREATE_ATTEMPTS {
            let id = new_id()?;
            if self.created(store.create_now(&id.key(), record, now))? {
                return Ok(id);
            }
        }
        Err(collisions())
    }

    /// Whether a create took (`false`: the ID is taken, draw another).
    fn created(&self, outcome: Result<bool, StoreError>) -> Result<bool, SessionError> {
        outcome.map_err(|error| {
            tracing::error!(scope = self.0.config.scope, %error, "session store failed on create");
            SessionError::store(error)
        })
    }
}

/// IDs drawn for one new session before giving up: a store that reports three collisions of fresh
/// 256-bit IDs is broken, not unlucky.
const CREATE_ATTEMPTS: usize = 3;

fn new_id() -> Result<SessionId, SessionError> {
    SessionId::generate().map_err(|e| {
        SessionError::new(
            SessionErrorKind::Random,
            "no OS randomness for a session ID",
        )
        .with_source(e)
    })
}

/// The cookie for a session just stored under `id`.
fn new_session_token(id: &SessionId, record: &Record, now: OffsetDateTime) -> TokenAction {
    TokenAction::Set {
        value: id.expose(),
        max_age: max_age_for(record, now),
    }
}

/// A stored value that is not the type asked for. The message names the key and the kind of
/// mismatch, never the value: `serde_json`'s own message quotes it (`invalid type: string
/// "..."`), and an app that logs the error would log the session's content.
fn unexpected_type(key: &str, error: &serde_json::Error) -> SessionError {
    let what = match error.classify() {
        serde_json::error::Category::Data => "has an unexpected type or shape",
        _ => "cannot be read",
    };
    SessionError::new(
        SessionErrorKind::Deserialize,
        format!("session value {key:?} {what}"),
    )
}

/// The error for listing or revoking one session with a store that keeps no list of sessions.
fn no_list() -> StoreError {
    StoreError::new(
        StoreErrorKind::Unsupported,
        "the cookie store keeps no list of sessions: it cannot list or end them one by one",
    )
}

fn ended_during_request() -> SessionError {
    SessionError::new(
        SessionErrorKind::Ended,
        "the session ended in the store during the request; its changes were not written",
    )
}

fn collisions() -> SessionError {
    SessionError::store(StoreError::new(
        StoreErrorKind::Backend,
        "the store reported a collision for three fresh 256-bit IDs",
    ))
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Session")
            .field("scope", &self.0.config.scope)
            .field("loaded", &state.loaded)
            .field("arrival", &state.arrival)
            .field("keys", &state.data.len())
            .field("id", &"REDACTED")
            .finish()
    }
}

/// The session of a layer configured with [`scope::<M>()`](crate::SessionLayerBuilder::scope).
/// Derefs to [`Session`].
pub struct ScopedSession<M> {
    session: Session,
    _scope: PhantomData<fn() -> M>,
}

impl<M> ScopedSession<M> {
    pub(crate) fn new(session: Session) -> Self {
        Self {
            session,
            _scope: PhantomData,
        }
    }

    /// The plain handle.
    pub fn into_inner(self) -> Session {
        self.session
    }
}

impl<M> Clone for ScopedSession<M> {
    fn clone(&self) -> Self {
        Self::new(self.session.clone())
    }
}

impl<M> Deref for ScopedSession<M> {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl<M> fmt::Debug for ScopedSession<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.session.fmt(f)
    }
}

/// What kind of failure a [`SessionError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionErrorKind {
    /// The store failed; [`SessionError::store_error`] has the details.
    Store,
    /// The session was used before [`Session::load`].
    NotLoaded,
    /// A value could not be serialized.
    Serialize,
    /// A stored value is not of the requested type.
    Deserialize,
    /// The OS random source failed.
    Random,
    /// [`Session::revoke_owner`] on a session without owner.
    NoOwner,
    /// [`Session::save`] found that the session had ended in the store during the request (logged
    /// out elsewhere, expired, its ID rotated by another request); its changes were not written.
    Ended,
    /// The request did not pass through a [`SessionLayer`](crate::SessionLayer).
    MissingLayer,
    /// The session was changed after its response was produced (by a handle kept in a spawned
    /// task or a streaming body, say), or after its request was abandoned. The change could no
    /// longer be saved, so it is refused; see [`Session`]'s "After the response".
    Closed,
}

/// A session failure. Cheap to clone; keeps its cause as [`source`](StdError::source).
#[derive(Clone)]
pub struct SessionError {
    kind: SessionErrorKind,
    message: Arc<str>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
    /// The layer's error handler, for a store failure a handler returns (see `Session::hooked`).
    hook: Option<crate::layer::ErrorHandler>,
}

impl SessionError {
    pub(crate) fn new(kind: SessionErrorKind, message: impl Into<Arc<str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
            hook: None,
        }
    }

    pub(crate) fn store(error: StoreError) -> Self {
        Self {
            kind: SessionErrorKind::Store,
            message: Arc::from("session store failed"),
            source: Some(Arc::new(error)),
            hook: None,
        }
    }

    /// The error handler of the layer whose store failed, when the error left a [`Session`]
    /// method and the layer has one.
    #[cfg(feature = "axum")]
    pub(crate) fn hook(&self) -> Option<&crate::layer::ErrorHandler> {
        self.hook.as_ref()
    }

    pub(crate) fn closed() -> Self {
        Self::new(
            SessionErrorKind::Closed,
            "session changed after its response; the change cannot be saved",
        )
    }

    /// A broken `Future` contract (a wrapper polling the response future again), not a store
    /// failure: `Closed`, like other uses of a request that is over.
    pub(crate) fn completed_twice() -> Self {
        Self::new(
            SessionErrorKind::Closed,
            "session response future polled after completion",
        )
    }

    fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> SessionErrorKind {
        self.kind
    }

    /// The store's error, for [`SessionErrorKind::Store`].
    pub fn store_error(&self) -> Option<&StoreError> {
        self.source.as_deref().and_then(|e| e.downcast_ref())
    }

    /// The HTTP status this error maps to by default.
    pub fn status(&self) -> http::StatusCode {
        match self.kind {
            SessionErrorKind::NoOwner => http::StatusCode::BAD_REQUEST,
            SessionErrorKind::Ended => http::StatusCode::CONFLICT,
            _ => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl fmt::Debug for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for SessionError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
