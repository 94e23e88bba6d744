//! Sessions for Tower and Axum.
//!
//! A [`SessionLayer`] loads the session named by a cookie when a handler asks for it, hands it to
//! the handler as a [`Session`], and afterwards writes back **only what changed**, with a refreshed
//! cookie. The same layer works with every store; switching store is one line and handler code does
//! not change. (The encrypted-cookie store, `cookie-store`, keeps nothing on the server: listing
//! an owner's sessions is an error there, and revoking them needs a hook the app provides.)
//!
//! # Quick start
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use tower_satchel::{MemoryStore, Session, SessionError, SessionLayer};
//!
//! async fn counter(session: Session) -> Result<String, SessionError> {
//!     let visits: u64 = session.get("visits")?.unwrap_or(0) + 1;
//!     session.insert("visits", visits)?;
//!     Ok(visits.to_string())
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let app = Router::new()
//!         .route("/", get(counter))
//!         .layer(SessionLayer::new(MemoryStore::new()));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `memory-store` | yes | [`MemoryStore`]: a sharded in-process map |
//! | `axum` | yes | the [`Session`] / `Option<Session>` / [`ScopedSession`] extractors |
//! | `file-store` | | one file per session in a folder |
//! | `redis-store` | | Redis and Redis Cluster |
//! | `postgres-store` | | PostgreSQL through sqlx |
//! | `sqlite-store` | | SQLite through sqlx |
//! | `cookie-store` | | the session sealed with AES-256-GCM in the cookie itself |
//! | `full` | | all of the above |
//!
//! # Choosing a store
//!
//! | store | survives restart | several processes | revoke a session / an owner's sessions | concurrent requests of one session |
//! |---|---|---|---|---|
//! | memory | no | no | yes | change sets merged: different keys both kept |
//! | file | yes | same machine (shared folder, file locks) | yes | change sets merged under a file lock |
//! | Redis | with Redis persistence | yes (also Cluster) | yes | change sets merged by a server-side script |
//! | PostgreSQL | yes | yes | yes | change sets merged in one statement |
//! | SQLite | yes | same machine | yes | change sets merged in one transaction |
//! | cookie | nothing stored | yes | only through an app-provided hook | last writer wins |
//!
//! The [README](https://docs.rs/crate/tower-satchel/latest) has a section for each store other than
//! memory: when to choose it, how to configure it, its limits and deployment notes; each store's
//! type (including [`MemoryStore`]'s) documents the same.
//!
//! # What happens per request
//!
//! - The token is read from the configured cookie only (or the configured header, never both) and
//!   its syntax checked before any store is asked (43 base64url characters for 256 bits).
//! - Nothing is loaded until a handler extracts the [`Session`]; that costs one store round trip.
//!   After that, `get`/`insert`/`remove` are plain in-memory operations.
//! - After the handler: an untouched session costs nothing; a read-only one gets `Vary: Cookie` and
//!   a throttled deadline refresh; a changed one is saved as a **change set** (the keys this
//!   request set or removed, and the new deadline on the same schedule as a refresh), so two
//!   concurrent requests that write different keys both keep their writes (peers write the whole
//!   record back and the last writer wins). Same-key writes stay last-writer-wins.
//! - A 5xx response persists nothing (configurable).
//! - A handler that needs the write done before its response calls [`Session::save`]: what is
//!   pending is written then (a new session gets its ID), and whatever changes afterwards is
//!   saved after the handler as above.
//!
//! # How we chose the defaults
//!
//! Every default is the one a careful reviewer would ask for, so that an app that changes nothing is
//! safe: a neutral cookie name (`id`) that does not advertise the framework; `Secure`, `HttpOnly`
//! and `SameSite=Lax` (the ID is a bearer token; scripts and cross-site POSTs have no business with
//! it); a host-only cookie on `Path=/`; 24 hours of inactivity and a 30-day absolute lifetime (a
//! forgotten login lapses, a stolen cookie dies); a deadline refresh only after a tenth of the idle
//! window (read-heavy traffic does not write on every request); nothing persisted from a 5xx
//! response. The table on [`SessionLayer`] lists each with its setter. Weakening one is an explicit
//! call whose docs say what it costs.
//!
//! # Logging
//!
//! Events go through [`tracing`](https://docs.rs/tracing): `info` for a malformed or forged token
//! and for revocations, `debug` for unknown or expired sessions, ID rotation and destruction,
//! `error` for store failures that fail the request, `warn` for those that lose nothing (a failed
//! touch, a failed delete of an expired record found on load, a failed cleanup batch). Sessions are named by a [`LogTag`], never by their ID or store key.
//!
//! # Security notes
//!
//! - IDs are 256 bits from the OS CSPRNG; a cookie naming no live session is never adopted (no
//!   session fixation); stores see only a SHA-256 of the ID; logs only a keyed 48-bit tag.
//! - Cookies default to `HttpOnly; Secure; SameSite=Lax; Path=/`, host-only. `__Host-`/`__Secure-`
//!   names are checked when the layer is built.
//! - Idle and absolute deadlines live in the record and are enforced by the middleware, not left to
//!   a store's TTL. [`Session::cycle_id`] on login; [`Session::destroy`] on logout;
//!   [`Session::revoke_owner`] for "log out everywhere".
//! - A store failure is an error response (or an extractor rejection), never an empty session that
//!   could overwrite the real one.
//!
//! The numbered requirements these notes refer to (SECURITY.md *n*) are in `SECURITY.md` at the
//! root of the repository, and each has a test.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod expiry;
#[cfg(feature = "axum")]
mod extract;
mod id;
mod layer;
mod random;
mod record;
mod service;
mod session;
pub mod store;

pub use backend::{Backend, IntoBackend};
pub use expiry::{Clock, Expiry, MAX_COOKIE_AGE, ManualClock, SystemClock};
#[cfg(feature = "axum")]
pub use extract::SessionRejection;
pub use id::{LogTag, SessionId, SessionKey};
pub use layer::{ConfigError, ConfigErrorKind, ErrorHandler, SessionLayer, SessionLayerBuilder};
pub use record::{ChangeSet, RECORD_VERSION, Record};
pub use service::{ResponseFuture, SessionService};
pub use session::{Arrival, ScopedSession, Session, SessionError, SessionErrorKind};
#[cfg(feature = "cookie-store")]
pub use store::cookie::{
    CookieStore, Key, KeyId, KeyRing, MemoryRevocations, Rejection, Revocation, Unsealed,
};
#[cfg(feature = "file-store")]
pub use store::file::{FileStore, FileStoreBuilder};
#[cfg(feature = "memory-store")]
pub use store::memory::MemoryStore;
#[cfg(feature = "redis-store")]
pub use store::redis::RedisStore;
#[cfg(feature = "postgres-store")]
pub use store::sql::PostgresStore;
#[cfg(feature = "sqlite-store")]
pub use store::sql::SqliteStore;
pub use store::{
    CleanupConfig, CleanupTask, ImmediateStore, Renamed, Saved, SessionInfo, SessionStore,
    StoreError, StoreErrorKind, spawn_cleanup, spawn_cleanup_with_clock,
};

/// Re-exported so that apps and stores use the same `time` types as this crate.
pub use time;

/// The cookie's `SameSite` attribute, for [`SessionLayerBuilder::same_site`]: re-exported from the
/// `cookie` crate so that apps need not depend on the exact version this crate uses.
pub use cookie::SameSite;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<crate::Session>();
        assert_send_sync::<crate::SessionLayer>();
        assert_send_sync::<crate::SessionError>();
        assert_send_sync::<crate::StoreError>();
        assert_send_sync::<crate::SessionId>();
        assert_send_sync::<crate::ConfigError>();
        #[cfg(feature = "memory-store")]
        assert_send_sync::<crate::MemoryStore>();
    }
}
