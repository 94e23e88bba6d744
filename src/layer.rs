//! [`SessionLayer`] and its configuration.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use cookie::SameSite;
use http::{Extensions, HeaderName, Response};
use time::{Duration, OffsetDateTime};
use tower_layer::Layer;

use crate::backend::{Backend, IntoBackend};
use crate::expiry::{Clock, Expiry, MAX_COOKIE_AGE, SystemClock};
use crate::record::Record;
use crate::service::SessionService;
use crate::session::{Session, SessionError};

/// Renders the response for a store failure. See [`SessionLayerBuilder::error_handler`].
pub type ErrorHandler = Arc<dyn Fn(&SessionError) -> Response<Bytes> + Send + Sync>;

/// Where the session token travels.
#[derive(Clone, Debug)]
pub(crate) enum Transport {
    Cookie,
    Header(HeaderName),
}

/// The layer's configuration, shared by every request.
pub(crate) struct Config {
    pub(crate) cookie_name: String,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    pub(crate) secure: bool,
    pub(crate) http_only: bool,
    pub(crate) same_site: Option<SameSite>,
    pub(crate) partitioned: bool,
    pub(crate) transport: Transport,
    pub(crate) default_expiry: Expiry,
    pub(crate) session_end_idle: Duration,
    pub(crate) absolute_lifetime: Option<Duration>,
    pub(crate) touch_fraction: f64,
    pub(crate) persist_on_5xx: bool,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) error_handler: Option<ErrorHandler>,
    pub(crate) install: fn(&mut Extensions, Session),
    pub(crate) scope: &'static str,
    /// The attributes every session cookie carries, rendered once by the `cookie` crate when the
    /// layer is built (`; HttpOnly; SameSite=Lax; Secure; Path=/`...), so a response only formats
    /// `name=value; Max-Age=n` in front of it.
    pub(crate) cookie_attributes: String,
    /// What the cookie store binds a sealed value to (see [`Config::token_name`]).
    pub(crate) token_binding: String,
    /// Commits of dropped requests running on in tasks of their own (see
    /// [`ResponseFuture`](crate::ResponseFuture)), held to [`MAX_DETACHED`].
    pub(crate) detached: AtomicUsize,
}

/// How many commits of dropped requests one layer carries on at a time (see
/// [`ResponseFuture`](crate::ResponseFuture)). Beyond it the store is not keeping up, and a
/// further one is abandoned (logged at `warn`) rather than pile up behind it.
pub(crate) const MAX_DETACHED: usize = 1024;

impl Config {
    /// The name the cookie store binds what it seals to, so that a value is refused under any
    /// other: the cookie's name, or with the header transport `header:` and the header's name.
    /// The colon cannot appear in a cookie name, so a value sealed for a header is also refused
    /// as a cookie of the same name, and the other way round.
    pub(crate) fn token_name(&self) -> &str {
        &self.token_binding
    }

    /// How long a session under `expiry` can stay idle and still come back, if it has such a
    /// window: the policy's own, held to [`MAX_COOKIE_AGE`] for a persistent cookie, which the
    /// browser drops after that long whatever its `Max-Age` asked for (a token in a header has
    /// no such limit). An [`Expiry::AtDateTime`] further away than that becomes a window of
    /// `MAX_COOKIE_AGE` that activity slides up to the date, so that the cookie is sent again
    /// before the browser drops it.
    pub(crate) fn idle_window(&self, expiry: Expiry) -> Option<Duration> {
        let cap = (expiry.is_persistent() && matches!(self.transport, Transport::Cookie))
            .then_some(MAX_COOKIE_AGE);
        match (expiry.window(self.session_end_idle), cap) {
            (Some(window), Some(cap)) => Some(window.min(cap)),
            (window, cap) => window.or(cap),
        }
    }

    /// The idle deadline for activity at `now` under `expiry`, within [`Config::idle_window`].
    pub(crate) fn idle_deadline(&self, expiry: Expiry, now: OffsetDateTime) -> OffsetDateTime {
        let deadline = expiry.idle_deadline(now, self.session_end_idle);
        match self.idle_window(expiry) {
            Some(window) => deadline.min(now.saturating_add(window)),
            None => deadline,
        }
    }

    /// Holds a loaded session to the absolute lifetime configured now, counted from its creation:
    /// a lifetime shortened since the session began (after a suspected theft, say) applies to it
    /// too. A longer one does not lengthen the deadline it was stored with.
    ///
    /// In whole seconds, with one to spare: stores keep the creation time rounded down (and the
    /// deadline rounded up), so a session's own deadline can lie up to a second past its stored
    /// creation time plus the lifetime, and must not be cut short (the cookie's `Max-Age`, sent
    /// at creation, runs to it). Whole seconds also spare the date arithmetic on every load.
    pub(crate) fn cap_absolute(&self, record: &mut Record) {
        let Some(cap) = self.absolute_cap(record.created_at) else {
            return;
        };
        match record.absolute_deadline {
            Some(deadline) if deadline.unix_timestamp() < cap => {}
            deadline => {
                if let Ok(cap) = OffsetDateTime::from_unix_timestamp(cap) {
                    record.absolute_deadline = Some(deadline.map_or(cap, |d| d.min(cap)));
                }
            }
        }
    }

    /// The latest a session created at `created_at` may last under the absolute lifetime
    /// configured now, in Unix seconds (see [`Config::cap_absolute`]); `None` without one.
    pub(crate) fn absolute_cap(&self, created_at: OffsetDateTime) -> Option<i64> {
        let lifetime = self.absolute_lifetime?;
        let window = lifetime
            .whole_seconds()
            .saturating_add(i64::from(lifetime.subsec_nanoseconds() > 0));
        Some(
            created_at
                .unix_timestamp()
                .saturating_add(window)
                .saturating_add(1),
        )
    }

    /// Holds a listed session's deadline to the absolute lifetime configured now, as
    /// [`Config::cap_absolute`] does a loaded session's.
    pub(crate) fn cap_listed(&self, info: &mut crate::SessionInfo) {
        if let Some(cap) = self.absolute_cap(info.created_at)
            && info.deadline.unix_timestamp() >= cap
            && let Ok(cap) = OffsetDateTime::from_unix_timestamp(cap)
        {
            info.deadline = cap;
        }
    }

    /// Fills in what is derived from the settings.
    fn finish(mut self) -> Self {
        let empty = crate::service::build_cookie(&self, String::new(), None).to_string();
        let prefix_len = self.cookie_name.len() + 1; // "name="
        self.cookie_attributes = empty.get(prefix_len..).unwrap_or_default().to_owned();
        self.token_binding = match &self.transport {
            Transport::Cookie => self.cookie_name.clone(),
            Transport::Header(name) => format!("header:{name}"),
        };
        crate::service::register_carrier(&self);
        self
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("cookie_name", &self.cookie_name)
            .field("path", &self.path)
            .field("domain", &self.domain)
            .field("secure", &self.secure)
            .field("http_only", &self.http_only)
            .field("same_site", &self.same_site)
            .field("partitioned", &self.partitioned)
            .field("transport", &self.transport)
            .field("default_expiry", &self.default_expiry)
            .field("session_end_idle", &self.session_end_idle)
            .field("absolute_lifetime", &self.absolute_lifetime)
            .field("touch_fraction", &self.touch_fraction)
            .field("persist_on_5xx", &self.persist_on_5xx)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

fn install_default(extensions: &mut Extensions, session: Session) {
    extensions.insert(session);
}

fn install_scoped<M: Send + Sync + 'static>(extensions: &mut Extensions, session: Session) {
    extensions.insert(crate::session::ScopedSession::<M>::new(session));
}

/// The session middleware: loads the session named by the cookie when a handler asks for it, and
/// writes back what changed.
///
/// [`SessionLayer::new`] gives the secure defaults; [`SessionLayer::builder`] changes them. The
/// defaults, and why:
///
/// | setting | setter | default | why |
/// |---|---|---|---|
/// | cookie name | [`cookie_name`](SessionLayerBuilder::cookie_name) | `id` | says nothing about the framework (OWASP: neutral names) |
/// | `Secure` | [`secure`](SessionLayerBuilder::secure) | on | the ID is a bearer token; never send it in clear |
/// | `HttpOnly` | [`http_only`](SessionLayerBuilder::http_only) | on | scripts have no business reading it |
/// | `SameSite` | [`same_site`](SessionLayerBuilder::same_site) | `Lax` | blocks cross-site POSTs carrying the session, keeps top-level links working |
/// | `Path`, `Domain` | [`path`](SessionLayerBuilder::path), [`domain`](SessionLayerBuilder::domain) | `/`, none | host-only cookie: sub-domains cannot read or set it |
/// | expiry | [`expiry`](SessionLayerBuilder::expiry) | 24 h of inactivity | long enough for a working day, short enough that a forgotten login lapses |
/// | absolute lifetime | [`absolute_lifetime`](SessionLayerBuilder::absolute_lifetime) | 30 days | bounds the life of a stolen cookie however active it is |
/// | touch | [`touch_after`](SessionLayerBuilder::touch_after) | after 10 % of the idle window | the idle deadline moves once per window tenth, not per request: read-heavy traffic does not write |
/// | persist on 5xx | [`persist_on_server_error`](SessionLayerBuilder::persist_on_server_error) | off | a failed request should not half-apply its changes |
///
/// # Examples
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_satchel::{MemoryStore, Session, SessionError, SessionLayer};
///
/// async fn handler(session: Session) -> Result<String, SessionError> {
///     let visits: u64 = session.get("visits")?.unwrap_or(0) + 1;
///     session.insert("visits", visits)?;
///     Ok(visits.to_string())
/// }
///
/// let app: Router = Router::new()
///     .route("/", get(handler))
///     .layer(SessionLayer::new(MemoryStore::new()));
/// ```
#[derive(Clone)]
pub struct SessionLayer {
    pub(crate) config: Arc<Config>,
    pub(crate) backend: Backend,
}

impl fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayer")
            .field("config", &self.config)
            .field("backend", &self.backend)
            .finish()
    }
}

impl SessionLayer {
    /// A layer over `store` with the defaults in the table above.
    pub fn new(store: impl IntoBackend) -> Self {
        Self {
            config: Arc::new(SessionLayerBuilder::defaults().finish()),
            backend: store.into_backend(),
        }
    }

    /// A builder to change the defaults; [`SessionLayerBuilder::build`] checks the result.
    pub fn builder(store: impl IntoBackend) -> SessionLayerBuilder {
        SessionLayerBuilder {
            config: SessionLayerBuilder::defaults(),
            backend: store.into_backend(),
        }
    }

    /// The cookie name this layer reads and writes.
    pub fn cookie_name(&self) -> &str {
        &self.config.cookie_name
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService::new(inner, self.config.clone(), self.backend.clone())
    }
}

/// Headers that cannot carry the session token ([`SessionLayerBuilder::header_transport`]): the
/// layer writes or reads them itself (it would overwrite the app's `Set-Cookie` headers, say,
/// or never find the token in a request), or they frame the message.
const RESERVED_HEADERS: [&str; 14] = [
    "cookie",
    "set-cookie",
    "vary",
    "cache-control",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "host",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// Builds a [`SessionLayer`]. Every setter states its default; [`build`](Self::build) refuses
/// combinations browsers would reject or that would weaken the cookie.
pub struct SessionLayerBuilder {
    config: Config,
    backend: Backend,
}

impl fmt::Debug for SessionLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SessionLayerBuilder {
    fn defaults() -> Config {
        Config {
            cookie_name: "id".to_owned(),
            path: "/".to_owned(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: Some(SameSite::Lax),
            partitioned: false,
            transport: Transport::Cookie,
            default_expiry: Expiry::OnInactivity(Duration::hours(24)),
            session_end_idle: Duration::hours(24),
            absolute_lifetime: Some(Duration::days(30)),
            touch_fraction: 0.1,
            persist_on_5xx: false,
            clock: Arc::new(SystemClock),
            error_handler: None,
            install: install_default,
            scope: "default",
            cookie_attributes: String::new(),
            token_binding: String::new(),
            detached: AtomicUsize::new(0),
        }
    }

    /// The cookie name. Default: `id`. Names starting with `__Host-` or `__Secure-` get the checks
    /// browsers apply to them (SECURITY.md 18).
    ///
    /// A browser that holds cookies of this name for different domains or paths sends them all
    /// (after the app changed its cookie's `Domain` or `Path`, or when a sibling sub-domain set
    /// one), in an order the app does not choose. The layer uses the first that names a live
    /// session, looking at no more than three distinct well-formed ones (empty, malformed and
    /// repeated values take no place), so a stale cookie sent first cannot lock the visitor
    /// out. A sibling sub-domain that means harm can still plant three well-formed ones; a
    /// `__Host-` name keeps sibling sub-domains from setting such cookies at all.
    #[must_use]
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.config.cookie_name = name.into();
        self
    }

    /// The cookie's `Path`. Default: `/`.
    #[must_use]
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.config.path = path.into();
        self
    }

    /// The cookie's `Domain`. Default: none, a host-only cookie.
    ///
    /// Setting it shares the session with every sub-domain of `domain`, including ones you do not
    /// control well (user content, staging); prefer a separate, scoped layer for shared sessions.
    #[must_use]
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.config.domain = Some(domain.into());
        self
    }

    /// The `Secure` attribute. Default: on.
    ///
    /// Turning it off lets browsers send the session ID over plain HTTP, where anyone on the path
    /// can read it. Only do it for local development over `http://localhost`.
    #[must_use]
    pub fn secure(mut self, secure: bool) -> Self {
        self.config.secure = secure;
        self
    }

    /// The `HttpOnly` attribute. Default: on.
    ///
    /// Turning it off lets any script on the page, including injected ones, read the session ID.
    #[must_use]
    pub fn http_only(mut self, http_only: bool) -> Self {
        self.config.http_only = http_only;
        self
    }

    /// The `SameSite` attribute ([`SameSite`](crate::SameSite), re-exported from the `cookie`
    /// crate); `None` omits it. Default: `Some(SameSite::Lax)`.
    ///
    /// `SameSite::None` sends the cookie on cross-site requests (needs `Secure`, and CSRF
    /// protection of your own). Omitting the attribute weakens the default too: browsers that do
    /// not treat a cookie without it as `Lax` (Safari, and Firefox by default) then send it with
    /// cross-site POSTs, so forms need CSRF protection of your own as well.
    #[must_use]
    pub fn same_site(mut self, same_site: Option<SameSite>) -> Self {
        self.config.same_site = same_site;
        self
    }

    /// The `Partitioned` attribute (CHIPS), for cookies used in third-party contexts. Default: off.
    ///
    /// Browsers ignore a `Partitioned` cookie without `Secure`, so [`build`](Self::build) refuses
    /// it with [`secure(false)`](Self::secure).
    #[must_use]
    pub fn partitioned(mut self, partitioned: bool) -> Self {
        self.config.partitioned = partitioned;
        self
    }

    /// Carry the session token in this request/response header instead of a cookie, for API clients
    /// (like axum_session's REST mode). When set, it is the only place the token is read from
    /// (SECURITY.md 7): cookies are ignored. A response that creates, rotates or (with a
    /// persistent expiry) refreshes the session carries the token in the same header; one that
    /// destroys it carries the header with an empty value.
    /// A browser script on another origin reads that header only if the app's CORS layer lists
    /// it in `Access-Control-Expose-Headers` (and allows it in `Access-Control-Allow-Headers`).
    /// [`build`](Self::build) refuses a header the layer or HTTP uses itself (`Cookie`,
    /// `Set-Cookie`, `Vary`, `Cache-Control`, `Content-Length`, `Content-Type`,
    /// `Transfer-Encoding`, `Connection`, `Host`, and the other hop-by-hop headers HTTP/2
    /// refuses). Default: cookies.
    #[must_use]
    pub fn header_transport(mut self, header: HeaderName) -> Self {
        self.config.transport = Transport::Header(header);
        self
    }

    /// The expiry of new sessions. Default: `Expiry::OnInactivity(24 hours)`. A handler can change
    /// it per session with [`Session::set_expiry`]. A fixed date ([`Expiry::AtDateTime`]) can
    /// only be set per session: [`build`](Self::build) refuses it here. A window is kept in whole
    /// seconds, rounded up.
    #[must_use]
    pub fn expiry(mut self, expiry: Expiry) -> Self {
        self.config.default_expiry = expiry.stored();
        self
    }

    /// How long the server keeps an idle [`Expiry::OnSessionEnd`] session. Default: 24 hours.
    #[must_use]
    pub fn session_end_idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.session_end_idle = timeout;
        self
    }

    /// The absolute lifetime counted from creation, which no activity, touch or ID rotation extends;
    /// `None` for no limit. Default: 30 days.
    ///
    /// It holds for sessions created before it was set, too: shortening it (after a suspected
    /// theft, say) ends every session older than the new lifetime at its next request, with
    /// every store, the cookie store included. Lengthening it does not extend sessions that
    /// were created under the shorter one.
    #[must_use]
    pub fn absolute_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.config.absolute_lifetime = lifetime;
        self
    }

    /// The part of the idle window that must pass before a request refreshes the idle deadline,
    /// from 0.0 (every request) up to, not including, 1.0 (refused when the layer is built: the
    /// deadline would never be due to move). Default: 0.1.
    ///
    /// A read-only request then touches the session (a store write of the deadline alone); a
    /// request that changes the session saves the new deadline with its changes. Before that, the
    /// deadline stays where it is, for writes too: the server-side deadline and the cookie's
    /// `Max-Age` move together, and the store skips the deadline's own cost (a TTL update in
    /// Redis, an indexed column in SQL). A new expiry policy (`set_expiry`) always sets the
    /// deadline it implies. Once the idle deadline has reached the absolute one, no request
    /// refreshes it any more: nothing could make the session last longer.
    ///
    /// # Performance impact
    ///
    /// 0.0 writes to the store on every request that reads the session (until the absolute
    /// deadline is in reach, see above). The deadline a user sees can
    /// be early by at most this part of the window.
    #[must_use]
    pub fn touch_after(mut self, fraction: f64) -> Self {
        self.config.touch_fraction = fraction;
        self
    }

    /// Whether changes are saved when the response status is 5xx. Default: off (SECURITY.md 20).
    #[must_use]
    pub fn persist_on_server_error(mut self, persist: bool) -> Self {
        self.config.persist_on_5xx = persist;
        self
    }

    /// The clock for every deadline. Default: the system clock.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.config.clock = Arc::new(clock);
        self
    }

    /// Renders the response when the store fails: on load (through the extractor's rejection), in
    /// the layer's save after the handler (where any failure of that save goes through it: the
    /// store's, or the OS random source's for a new ID, whose
    /// [`SessionErrorKind`](crate::SessionErrorKind) says which), and in a store failure a
    /// handler returns from [`Session::load`](crate::Session::load),
    /// [`save`](crate::Session::save) or [`revoke_owner`](crate::Session::revoke_owner) with `?`.
    /// Default: `500 Internal Server Error`, empty from the layer's save, with a short plain-text
    /// message from the extractor or a handler's `?`. The [`SessionError`] is also put in the
    /// response's extensions for outer layers.
    ///
    /// The handler sees the error only. To render it by request (JSON under `/api`, a page
    /// elsewhere), leave this unset and look for the error in the response's extensions in a
    /// middleware outside the layer, as in the second example. Keep the response's headers: an
    /// error response can carry cookies that must reach the client (a rotation another layer
    /// or an explicit `save` made).
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_satchel::{MemoryStore, SessionLayer};
    /// use http::{Response, StatusCode};
    ///
    /// # fn main() -> Result<(), tower_satchel::ConfigError> {
    /// let layer = SessionLayer::builder(MemoryStore::new())
    ///     .error_handler(|_error| {
    ///         let mut response = Response::new(r#"{"error":"session store unavailable"}"#.into());
    ///         *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    ///         response
    ///     })
    ///     .build()?;
    /// # let _ = layer; Ok(()) }
    /// ```
    ///
    /// Rendering by request, in an axum middleware outside the layer:
    ///
    /// ```
    /// use axum::body::Body;
    /// use axum::extract::Request;
    /// use axum::middleware::{self, Next};
    /// use axum::response::Response;
    /// use axum::Router;
    /// use http::header::{CONTENT_TYPE, HeaderValue};
    /// use tower_satchel::{MemoryStore, SessionError, SessionLayer};
    ///
    /// async fn session_errors(request: Request, next: Next) -> Response {
    ///     let api = request.uri().path().starts_with("/api/");
    ///     let response = next.run(request).await;
    ///     if !api || response.extensions().get::<SessionError>().is_none() {
    ///         return response;
    ///     }
    ///     // The status and every header stay; only the body changes.
    ///     let (mut parts, _) = response.into_parts();
    ///     parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    ///     Response::from_parts(parts, Body::from(r#"{"error":"session unavailable"}"#))
    /// }
    ///
    /// let app: Router = Router::new()
    ///     .layer(SessionLayer::new(MemoryStore::new()))
    ///     .layer(middleware::from_fn(session_errors));
    /// # let _ = app;
    /// ```
    #[must_use]
    pub fn error_handler(
        mut self,
        handler: impl Fn(&SessionError) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.config.error_handler = Some(Arc::new(handler));
        self
    }

    /// Makes this layer's session reachable as [`ScopedSession<M>`](crate::ScopedSession) instead of
    /// [`Session`], so that several layers (each with its own cookie name) can serve one app.
    /// Default: unscoped.
    ///
    /// Each layer commits its own session, the innermost first. When an outer layer's store fails,
    /// its error response still carries the cookies (or token headers) the inner layers set, with
    /// `Cache-Control: no-store`: their writes stand, and a rotated ID's old record is already gone.
    ///
    /// # Examples
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use tower_satchel::{MemoryStore, ScopedSession, Session, SessionLayer};
    ///
    /// /// The session shared across sub-domains.
    /// struct Shared;
    ///
    /// async fn handler(local: Session, shared: ScopedSession<Shared>) -> String {
    ///     format!("{} {}", local.len(), shared.len())
    /// }
    ///
    /// # fn main() -> Result<(), tower_satchel::ConfigError> {
    /// let app: Router = Router::new()
    ///     .route("/", get(handler))
    ///     .layer(SessionLayer::new(MemoryStore::new()))
    ///     .layer(
    ///         SessionLayer::builder(MemoryStore::new())
    ///             .cookie_name("shared")
    ///             .domain("example.com")
    ///             .scope::<Shared>()
    ///             .build()?,
    ///     );
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn scope<M: Send + Sync + 'static>(mut self) -> Self {
        self.config.install = install_scoped::<M>;
        self.config.scope = std::any::type_name::<M>();
        self
    }

    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for an invalid cookie name, path or domain; a `__Host-` name with a
    /// `Domain`, a `Path` other than `/`, or without `Secure`; a `__Secure-` name without `Secure`;
    /// `SameSite=None` or `Partitioned` without `Secure`; a touch fraction below 0.0 or not below
    /// 1.0; an [`Expiry::AtDateTime`] default expiry; a non-positive duration.
    pub fn build(self) -> Result<SessionLayer, ConfigError> {
        let c = &self.config;
        if !is_token(&c.cookie_name) {
            return Err(ConfigError::new(format!(
                "cookie name {:?} is not a valid cookie name",
                c.cookie_name
            )));
        }
        if !c.path.starts_with('/') || !is_attribute_value(&c.path) {
            return Err(ConfigError::new(format!(
                "cookie path {:?} must start with '/' and hold no ';' or control characters",
                c.path
            )));
        }
        if let Some(domain) = &c.domain
            && (domain.is_empty() || !is_attribute_value(domain) || domain.contains(' '))
        {
            return Err(ConfigError::new(format!(
                "cookie domain {domain:?} is not valid"
            )));
        }
        let lower = c.cookie_name.to_ascii_lowercase();
        if lower.starts_with("__host-") {
            if !c.secure || c.path != "/" || c.domain.is_some() {
                return Err(ConfigError::new(
                    "a __Host- cookie must be Secure, have Path=/ and no Domain",
                ));
            }
        } else if lower.starts_with("__secure-") && !c.secure {
            return Err(ConfigError::new("a __Secure- cookie must be Secure"));
        }
        if c.same_site == Some(SameSite::None) && !c.secure {
            return Err(ConfigError::new(
                "SameSite=None requires Secure (browsers drop the cookie otherwise)",
            ));
        }
        if c.partitioned && !c.secure {
            return Err(ConfigError::new(
                "Partitioned requires Secure (browsers drop the cookie otherwise)",
            ));
        }
        if !(0.0..1.0).contains(&c.touch_fraction) {
            return Err(ConfigError::new(
                "touch_after must be at least 0.0 and below 1.0 (at 1.0 the idle deadline \
                 would only be due to move once it had passed, that is never)",
            ));
        }
        let positive = |d: Duration| d.is_positive();
        if !positive(c.session_end_idle)
            || c.absolute_lifetime.is_some_and(|d| !positive(d))
            || matches!(c.default_expiry, Expiry::OnInactivity(d) if !positive(d))
        {
            return Err(ConfigError::new("expiry durations must be positive"));
        }
        if matches!(c.default_expiry, Expiry::AtDateTime(_)) {
            return Err(ConfigError::new(
                "a fixed date cannot be the default expiry of every new session; set it per session",
            ));
        }
        if let Transport::Header(name) = &c.transport
            && RESERVED_HEADERS.contains(&name.as_str())
        {
            return Err(ConfigError::new(format!(
                "the header {name:?} cannot carry the session token: the layer or HTTP itself \
                 uses it; pick a name of your own (e.g. x-session)"
            )));
        }
        Ok(SessionLayer {
            config: Arc::new(self.config.finish()),
            backend: self.backend,
        })
    }
}

/// RFC 6265 `token`: visible ASCII without separators.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'(' | b')'
                        | b'<'
                        | b'>'
                        | b'@'
                        | b','
                        | b';'
                        | b':'
                        | b'\\'
                        | b'"'
                        | b'/'
                        | b'['
                        | b']'
                        | b'?'
                        | b'='
                        | b'{'
                        | b'}'
                )
        })
}

fn is_attribute_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (b == b' ' || b.is_ascii_graphic()) && b != b';')
}

/// A configuration the layer or a store refuses. See [`SessionLayerBuilder::build`].
///
/// Its message says what to change; it never quotes key material.
#[derive(Clone, Debug)]
pub struct ConfigError {
    kind: ConfigErrorKind,
    message: String,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

/// What kind of failure a [`ConfigError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// A setting is invalid, or contradicts another: cookie attributes, durations, table or
    /// schema names, key material.
    Invalid,
    /// Something the configuration needs from the system is missing, such as the OS random
    /// source for `Key::generate` (cookie store). The setting itself is fine; try again.
    Unavailable,
}

impl ConfigError {
    /// An invalid setting.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            kind: ConfigErrorKind::Invalid,
            message: message.into(),
            source: None,
        }
    }

    /// Something the configuration needs from the system failed with `source`.
    #[cfg_attr(not(feature = "cookie-store"), allow(dead_code))]
    pub(crate) fn unavailable(
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind: ConfigErrorKind::Unavailable,
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ConfigErrorKind::Unavailable => write!(f, "cannot set up sessions: {}", self.message),
            _ => write!(f, "invalid session configuration: {}", self.message),
        }
    }
}

impl StdError for ConfigError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    fn builder() -> SessionLayerBuilder {
        SessionLayer::builder(MemoryStore::new())
    }

    #[test]
    fn defaults_are_secure() {
        let layer = SessionLayer::new(MemoryStore::new());
        let c = &layer.config;
        assert!(c.secure && c.http_only);
        assert_eq!(c.same_site, Some(SameSite::Lax));
        assert_eq!(c.path, "/");
        assert_eq!(c.domain, None);
        assert_eq!(c.cookie_name, "id");
        assert!(!c.persist_on_5xx);
    }

    #[test]
    fn host_prefix_rules_are_enforced() {
        assert!(builder().cookie_name("__Host-id").build().is_ok());
        assert!(
            builder()
                .cookie_name("__Host-id")
                .secure(false)
                .build()
                .is_err()
        );
        assert!(
            builder()
                .cookie_name("__Host-id")
                .path("/app")
                .build()
                .is_err()
        );
        assert!(
            builder()
                .cookie_name("__Host-id")
                .domain("example.com")
                .build()
                .is_err()
        );
        assert!(
            builder()
                .cookie_name("__Secure-id")
                .secure(false)
                .build()
                .is_err()
        );
        assert!(
            builder()
                .cookie_name("__Secure-id")
                .domain("example.com")
                .build()
                .is_ok()
        );
        // Browsers match the prefixes without regard to case.
        for name in ["__host-id", "__HOST-id"] {
            assert!(
                builder().cookie_name(name).secure(false).build().is_err(),
                "{name}"
            );
            assert!(builder().cookie_name(name).path("/app").build().is_err());
        }
        assert!(
            builder()
                .cookie_name("__secure-id")
                .secure(false)
                .build()
                .is_err()
        );
    }

    #[test]
    fn invalid_names_paths_and_domains_are_refused() {
        for name in ["", "a b", "a;b", "a=b", "é", "a\"b"] {
            assert!(builder().cookie_name(name).build().is_err(), "{name:?}");
        }
        assert!(builder().path("app").build().is_err());
        assert!(builder().path("/a;b").build().is_err());
        assert!(builder().domain("a;b").build().is_err());
    }

    #[test]
    fn headers_the_layer_or_http_uses_cannot_carry_the_token() {
        for name in RESERVED_HEADERS {
            let error = builder()
                .header_transport(HeaderName::from_static(name))
                .build()
                .expect_err("a reserved header is refused");
            assert!(
                error.to_string().contains("cannot carry"),
                "{name}: {error}"
            );
        }
        assert!(
            builder()
                .header_transport(HeaderName::from_static("x-session"))
                .build()
                .is_ok()
        );
    }

    #[test]
    fn same_site_none_needs_secure() {
        assert!(
            builder()
                .same_site(Some(SameSite::None))
                .secure(false)
                .build()
                .is_err()
        );
        assert!(builder().same_site(Some(SameSite::None)).build().is_ok());
    }

    #[test]
    fn partitioned_needs_secure() {
        let refused = builder().partitioned(true).secure(false).build();
        assert!(refused.is_err_and(|error| error.to_string().contains("Partitioned")));
        assert!(builder().partitioned(true).secure(true).build().is_ok());
        assert!(builder().partitioned(false).secure(false).build().is_ok());
    }

    #[test]
    fn nonsense_durations_are_refused() {
        let error = builder()
            .touch_after(1.5)
            .build()
            .expect_err("touch_after 1.5");
        assert_eq!(error.kind(), ConfigErrorKind::Invalid);
        assert!(StdError::source(&error).is_none());
        assert!(
            error
                .to_string()
                .starts_with("invalid session configuration: touch_after")
        );
        assert!(builder().touch_after(1.5).build().is_err());
        assert!(builder().touch_after(1.0).build().is_err());
        assert!(builder().touch_after(f64::NAN).build().is_err());
        assert!(builder().touch_after(0.99).build().is_ok());
        assert!(
            builder()
                .expiry(Expiry::OnInactivity(Duration::ZERO))
                .build()
                .is_err()
        );
        assert!(
            builder()
                .absolute_lifetime(Some(Duration::seconds(-1)))
                .build()
                .is_err()
        );
    }
}
