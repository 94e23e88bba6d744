//! What the layer talks to: a server-side store or a client-side (sealed cookie) store.
//!
//! Server-side stores implement the public [`SessionStore`] trait; the layer holds them as a
//! `dyn DynStore` so it is not generic over the store, and switching store is one line. The
//! client-side cookie store keeps the record in the cookie itself, so it cannot meet the server
//! contract (there is no ID to load by); it plugs in through the crate-private [`ClientStore`] trait
//! instead. Both are reached through [`IntoBackend`], which [`SessionLayer::new`] takes.
//!
//! [`SessionLayer::new`]: crate::SessionLayer::new

use std::fmt;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::record::Record;
use crate::store::{BoxFuture, DynStore, SessionStore, StoreError};

/// Anything [`SessionLayer::new`](crate::SessionLayer::new) accepts: every [`SessionStore`], and
/// the client-side `CookieStore`.
pub trait IntoBackend {
    /// Wraps the store for the layer.
    fn into_backend(self) -> Backend;
}

impl<S: SessionStore> IntoBackend for S {
    fn into_backend(self) -> Backend {
        Backend(Kind::Server(Arc::new(self)))
    }
}

impl IntoBackend for Backend {
    fn into_backend(self) -> Backend {
        self
    }
}

/// A store as the layer holds it. Obtained through [`IntoBackend`]; opaque.
#[derive(Clone)]
pub struct Backend(pub(crate) Kind);

#[derive(Clone)]
pub(crate) enum Kind {
    Server(Arc<dyn DynStore>),
    #[cfg_attr(not(feature = "cookie-store"), allow(dead_code))]
    Client(Arc<dyn ClientStore>),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Kind::Server(_) => f.write_str("Backend::Server"),
            Kind::Client(_) => f.write_str("Backend::Client"),
        }
    }
}

impl Backend {
    pub(crate) fn is_client(&self) -> bool {
        matches!(self.0, Kind::Client(_))
    }

    /// Whether a client-side token could be a sealed value (see [`ClientStore::plausible`]).
    pub(crate) fn plausible(&self, token: &str) -> bool {
        match &self.0 {
            Kind::Client(store) => store.plausible(token),
            Kind::Server(_) => true,
        }
    }
}

/// What opening a client-side token gave.
#[cfg_attr(not(feature = "cookie-store"), allow(dead_code))]
pub(crate) enum Opened {
    /// A live record. `reseal` asks the layer to write the cookie again even if nothing changed
    /// (e.g. it was sealed under an old key).
    Live { record: Record, reseal: bool },
    /// Authentic, but past a deadline or revoked.
    Expired,
    /// Not authentic, malformed or oversized.
    Invalid,
}

/// The contract of a client-side store: the record travels in the cookie.
#[cfg_attr(not(feature = "cookie-store"), allow(dead_code))]
pub(crate) trait ClientStore: Send + Sync + 'static {
    /// Opens a cookie value sent under `cookie_name`. Never fails for bad input (that is
    /// [`Opened::Invalid`]); an error is for a failing revocation hook.
    fn open<'a>(
        &'a self,
        cookie_name: &'a str,
        value: &'a str,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Opened, StoreError>>;

    /// Seals `record` into a cookie value for `cookie_name` at `now` (the sealing time is what a
    /// revocation hook compares against). An error of kind
    /// [`TooLarge`](crate::StoreErrorKind::TooLarge) when the cookie would exceed its size limit.
    fn seal(
        &self,
        cookie_name: &str,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<String, StoreError>;

    /// Whether `value` could be a sealed value at all (its alphabet and length), checked only
    /// when a request presents several cookies of the name, so that planted junk does not take
    /// the place of the real one (see `SessionService::incoming`). One value alone goes to
    /// [`open`](Self::open), which checks this itself.
    fn plausible(&self, value: &str) -> bool;

    /// Revokes every session of `owner` (through the app's revocation hook), if configured.
    fn revoke_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<usize, StoreError>>;
}
