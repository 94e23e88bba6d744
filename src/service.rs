//! [`SessionService`] and its [`ResponseFuture`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use cookie::Cookie;
use http::header::{CACHE_CONTROL, COOKIE, HeaderName, HeaderValue, SET_COOKIE, VARY};
use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use time::{Duration, OffsetDateTime};
use tower_service::Service;

use crate::backend::Backend;
use crate::id::SessionId;
use crate::layer::{Config, MAX_DETACHED, Transport};
use crate::session::{Committed, Finish, Incoming, Session, SessionError, TokenAction};
use crate::store::BoxFuture;

/// The service [`SessionLayer`](crate::SessionLayer) wraps around yours. Its error type is the inner
/// service's: a store failure becomes an error response, never an `Err`.
///
/// The inner service's response body must implement `From<Bytes>`, which the layer uses to build
/// the error response for a store failure. axum's `Body`, `Vec<u8>`, `Bytes` itself
/// and `http_body_util::Full<Bytes>` do. A body type that does not (`http_body_util`'s `BoxBody`,
/// tower-http's wrapped bodies, tonic's body) can be mapped to one that does inside the layer,
/// with `tower_http::map_response_body::MapResponseBodyLayer` or `tower::util::MapResponse`.
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    config: Arc<Config>,
    backend: Backend,
}

impl<S> SessionService<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>, backend: Backend) -> Self {
        Self {
            inner,
            config,
            backend,
        }
    }

    /// The token the request presents: with cookies, more than one when the request has several
    /// cookies of the name (see [`MAX_PRESENTED`]). An empty value counts as no token, as it does
    /// in the header transport: it is what a removal leaves in a client that keeps it.
    fn incoming(&self, headers: &HeaderMap) -> Incoming {
        let name = match &self.config.transport {
            Transport::Cookie => &self.config.cookie_name,
            // An empty header is what `destroy` answers: a client that echoes it has no token.
            Transport::Header(name) => {
                let value = headers.get(name).map(HeaderValue::as_bytes);
                return self.parse(value.filter(|v| !v.is_empty()));
            }
        };
        // The common case, one cookie of the name, in one tight pass over the header.
        let (mut first, mut second) = (None, None);
        for_each_cookie(headers, name, |value| {
            if value.is_empty() {
                return true;
            }
            if first.is_none() {
                first = Some(value);
                return true;
            }
            second = Some(value);
            false
        });
        match (first, second) {
            (None, _) => Incoming::Absent,
            (Some(first), None) => self.parse(Some(first)),
            (Some(_), Some(_)) => self.several(headers, name),
        }
    }

    /// The tokens of several cookies of the session's name: the first [`MAX_PRESENTED`]
    /// distinct ones that are well-formed, after [`Incoming::Malformed`] if the first value is
    /// not. Malformed values, empty ones and repeats take no place, so junk cookies sent first
    /// cannot crowd out the real one (well-formed ones planted on purpose still can, see
    /// [`MAX_PRESENTED`]).
    fn several(&self, headers: &HeaderMap, name: &str) -> Incoming {
        let mut tokens = Vec::new();
        let mut kept: Vec<&[u8]> = Vec::new();
        let mut first = true;
        for_each_cookie(headers, name, |value| {
            if value.is_empty() || kept.contains(&value) {
                return true;
            }
            let token = match std::str::from_utf8(value) {
                // Checked before `parse` copies it.
                Ok(text) if self.backend.is_client() && !self.backend.plausible(text) => {
                    Incoming::Malformed
                }
                _ => self.parse(Some(value)),
            };
            match token {
                Incoming::Malformed if first => tokens.push(Incoming::Malformed),
                Incoming::Malformed => {}
                token => {
                    tokens.push(token);
                    kept.push(value);
                }
            }
            first = false;
            kept.len() < MAX_PRESENTED
        });
        if tokens.len() == 1 {
            return tokens.swap_remove(0);
        }
        Incoming::Several(tokens.into_boxed_slice())
    }

    /// A presented token, checked for the syntax of the backend's tokens.
    fn parse(&self, value: Option<&[u8]>) -> Incoming {
        let Some(value) = value else {
            return Incoming::Absent;
        };
        if self.backend.is_client() {
            // The client store checks size, encoding and authenticity itself.
            return match std::str::from_utf8(value) {
                Ok(token) if !token.is_empty() => Incoming::Token(token.to_owned()),
                _ => Incoming::Malformed,
            };
        }
        match std::str::from_utf8(value).ok().and_then(SessionId::parse) {
            Some(id) => Incoming::Id(id),
            None => Incoming::Malformed,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionService")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .field("backend", &self.backend)
            .finish()
    }
}

/// How many distinct, well-formed cookies of the session's name one request may present. A
/// browser sends more than one when it holds cookies of that name for different domains or paths
/// (after the app changed its cookie's `Domain` or `Path`, or when a sibling sub-domain sets one):
/// the first that names a live session is used, so stale or planted cookies sent first cannot
/// lock the visitor out unless they are this many distinct well-formed tokens. That stops stale
/// and accidental ones, not a sibling sub-domain that means harm: it can make up three
/// well-formed IDs (or values of a sealed cookie's alphabet and length). A `__Host-` cookie name
/// keeps it from setting any. Malformed values, empty ones and repeats take no place. The cap
/// bounds the store loads one request can cause.
pub(crate) const MAX_PRESENTED: usize = 3;

/// Calls `visit` with the value of each cookie called `name` in the request's `Cookie` headers,
/// in order, until it answers `false` (SECURITY.md 7: the only place a cookie-transported token
/// is read from).
fn for_each_cookie<'h>(
    headers: &'h HeaderMap,
    name: &str,
    mut visit: impl FnMut(&'h [u8]) -> bool,
) {
    for header in headers.get_all(COOKIE) {
        let bytes = header.as_bytes();
        // Splitting a `str` at a byte finds each `;` a word at a time, and the UTF-8 check is as
        // fast for ASCII: worth it for a long sealed cookie. Other headers go byte by byte.
        let pairs = match std::str::from_utf8(bytes) {
            Ok(text) => Pairs::Text(text.split(';')),
            Err(_) => Pairs::Bytes(bytes.split(is_semicolon as fn(&u8) -> bool)),
        };
        for pair in pairs {
            if let Some(value) = cookie_value(pair, name)
                && !visit(value)
            {
                return;
            }
        }
    }
}

/// The `name=value` pairs of one `Cookie` header.
enum Pairs<'h> {
    Text(std::str::Split<'h, char>),
    Bytes(std::slice::Split<'h, u8, fn(&u8) -> bool>),
}

impl<'h> Iterator for Pairs<'h> {
    type Item = &'h [u8];
    fn next(&mut self) -> Option<&'h [u8]> {
        match self {
            Pairs::Text(split) => split.next().map(str::as_bytes),
            Pairs::Bytes(split) => split.next(),
        }
    }
}

fn is_semicolon(byte: &u8) -> bool {
    *byte == b';'
}

/// The value of `pair` when it is `name=value`, unquoted.
fn cookie_value<'h>(pair: &'h [u8], name: &str) -> Option<&'h [u8]> {
    let pair = pair.trim_ascii();
    let eq = pair.iter().position(|b| *b == b'=')?;
    if pair[..eq].trim_ascii() != name.as_bytes() {
        return None;
    }
    let value = pair[eq + 1..].trim_ascii();
    Some(
        value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value),
    )
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let incoming = self.incoming(request.headers());
        let session = Session::new(self.config.clone(), self.backend.clone(), incoming);
        (self.config.install)(request.extensions_mut(), session.clone());
        ResponseFuture {
            state: State::Handler {
                future: self.inner.call(request),
                session: Some(session),
                config: self.config.clone(),
            },
        }
    }
}

type CommitFuture = BoxFuture<'static, Result<Committed, SessionError>>;

pin_project! {
    /// The response future of [`SessionService`]: the handler's future, then (only when the handler
    /// changed the session or a deadline refresh is due) the store call that commits it.
    ///
    /// # When it is dropped
    ///
    /// A server drops the response future when the client goes away before the response is
    /// ready, and so does a timeout layer that gives up on it.
    ///
    /// - Dropped while the handler runs: nothing is saved, and the session handle (and any
    ///   clone the handler passed on) refuses further changes.
    /// - Dropped once the handler has answered, while the store calls that commit its changes
    ///   are under way: those calls are finished in a task of their own, spawned on the Tokio
    ///   runtime the future was dropped in, so the handler's changes are written whole, as
    ///   when the client waits. (Abandoned half-way, a `destroy` followed by new values could
    ///   delete the session without storing the new one.) Store failures in that task are
    ///   logged as they are in the request, in the request's span.
    ///
    /// What follows from the second case:
    ///
    /// - The client never sees the new cookie, as with any response it did not wait for: after
    ///   a `cycle_id` its old cookie names no session any more, and a login cut short leaves a
    ///   session (listed by [`Session::owner_sessions`](crate::Session::owner_sessions)) that
    ///   no browser holds, until it expires.
    /// - A timeout or concurrency-limit layer outside this one stops waiting for the store, but
    ///   not the store calls themselves, which go on until the store answers or its own timeout
    ///   ends them (the Redis and PostgreSQL stores have one; the file store's calls end when
    ///   the disk answers). The client may get the timeout layer's error while the changes are
    ///   kept.
    /// - A layer carries on at most 1,024 such commits at a time. When that many are still
    ///   waiting for the store (a store without a timeout of its own that hangs, behind a
    ///   timeout layer), a further one is abandoned rather than pile up, and logged at `warn`.
    /// - Outside a Tokio runtime nothing can carry the calls on, and they are abandoned (logged
    ///   at `warn`). They are abandoned too when the runtime shuts down before they are done
    ///   (`main` returning right after a graceful shutdown, say); that is logged at `warn` as
    ///   well, in the request's span.
    /// - Abandoned in any of these ways, the calls stop where they stand, possibly half-done:
    ///   what the paragraph above guards against (a `destroy` made, the session that was to
    ///   follow it not stored) can then happen.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }

    impl<F, B> PinnedDrop for ResponseFuture<F, B> {
        fn drop(this: Pin<&mut Self>) {
            match this.project().state.project() {
                // Dropped before the handler answered (the client went away, a timeout): nothing
                // is saved, so a handle the handler passed on must not accept changes either.
                StateProj::Handler {
                    session: Some(session),
                    ..
                } => {
                    session.close();
                }
                // Dropped during the commit: the handler's changes are written whole anyway.
                StateProj::Commit {
                    future,
                    response: Some(_),
                    config,
                    ..
                } => {
                    let commit = std::mem::replace(future, Box::pin(std::future::pending()));
                    finish_detached(config, commit);
                }
                _ => {}
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Handler {
            #[pin]
            future: F,
            session: Option<Session>,
            config: Arc<Config>,
        },
        Commit {
            future: CommitFuture,
            response: Option<Response<B>>,
            config: Arc<Config>,
            session: Session,
        },
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<Bytes>,
{
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Handler {
                    future,
                    session,
                    config,
                } => {
                    let mut response = match ready!(future.poll(cx)) {
                        Ok(response) => response,
                        Err(error) => {
                            // No response, so nothing is saved: a handle the handler passed on
                            // must refuse changes from now on, as when the request is dropped.
                            if let Some(session) = session.take() {
                                session.close();
                            }
                            return Poll::Ready(Err(error));
                        }
                    };
                    let Some(session) = session.take() else {
                        return Poll::Ready(Ok(response));
                    };
                    if !session.close() {
                        return Poll::Ready(Ok(response));
                    }
                    match session.finish(response.status().is_server_error()) {
                        Finish::Ready(outcome) => {
                            finished(config, &session, &mut response, outcome);
                            return Poll::Ready(Ok(response));
                        }
                        Finish::Pending(future) => {
                            let config = config.clone();
                            this.state.set(State::Commit {
                                future,
                                response: Some(response),
                                config,
                                session,
                            });
                        }
                    }
                }
                StateProj::Commit {
                    future,
                    response,
                    config,
                    session,
                } => {
                    if response.is_none() {
                        // Polled again after it completed, which the `Future` contract does not
                        // allow; answer with an error response rather than resume the store call.
                        return Poll::Ready(Ok(error_response(
                            config,
                            SessionError::completed_twice(),
                        )));
                    }
                    let outcome = ready!(future.as_mut().poll(cx));
                    let Some(mut response) = response.take() else {
                        return Poll::Ready(Ok(error_response(
                            config,
                            SessionError::completed_twice(),
                        )));
                    };
                    finished(config, session, &mut response, outcome);
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

/// Carries a commit whose response future was dropped on to its end, in a task of its own (see
/// [`ResponseFuture`]). The commit logs its own store failures; what keeps it from finishing is
/// logged here: no runtime to run it on, [`MAX_DETACHED`] of the layer's commits already
/// running, or the task dropped before the commit was done.
fn finish_detached(config: &Arc<Config>, commit: CommitFuture) {
    use tracing::instrument::{Instrument, WithSubscriber};
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            scope = config.scope,
            "session changes abandoned: the request was dropped during its commit, outside a Tokio runtime"
        );
        return;
    };
    let Some(running) = Detached::start(config) else {
        tracing::warn!(
            scope = config.scope,
            limit = MAX_DETACHED,
            "session changes abandoned: the request was dropped during its commit, and as many \
             commits of dropped requests are still waiting for the store as the layer carries on"
        );
        return;
    };
    let commit = async move {
        let _ = commit.await;
        running.done();
    };
    // In the request's span and with its subscriber, so that what the commit logs is logged as
    // it would have been in the request.
    drop(
        runtime.spawn(
            commit
                .instrument(tracing::Span::current())
                .with_current_subscriber(),
        ),
    );
}

/// One commit of a dropped request running in its own task, counted in the layer's
/// `Config::detached`. Dropped before [`done`](Self::done) (the runtime shut down, or the store
/// call panicked), it logs that the changes were not finished.
struct Detached {
    config: Arc<Config>,
    span: tracing::Span,
    dispatch: tracing::Dispatch,
    finished: bool,
}

impl Detached {
    /// Counts one more running commit, unless the layer already runs [`MAX_DETACHED`].
    fn start(config: &Arc<Config>) -> Option<Self> {
        config
            .detached
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_DETACHED).then_some(n + 1)
            })
            .ok()?;
        Some(Self {
            config: config.clone(),
            span: tracing::Span::current(),
            dispatch: tracing::dispatcher::get_default(Clone::clone),
            finished: false,
        })
    }

    fn done(mut self) {
        self.finished = true;
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        self.config.detached.fetch_sub(1, Ordering::AcqRel);
        if !self.finished {
            // Dropped outside the task's span and subscriber (at runtime shutdown, say).
            tracing::dispatcher::with_default(&self.dispatch, || {
                self.span.in_scope(|| {
                    tracing::warn!(
                        scope = self.config.scope,
                        "session changes abandoned: the task finishing the commit of a dropped \
                         request ended before the store answered (the runtime shut down, or the \
                         store call panicked)"
                    );
                });
            });
        }
    }
}

/// The response for a store failure: the app's error handler, or an empty one with the error's
/// status. The error goes into the response's extensions either way.
pub(crate) fn error_response<B: From<Bytes>>(config: &Config, error: SessionError) -> Response<B> {
    let mut response = match &config.error_handler {
        Some(handler) => handler(&error).map(B::from),
        None => {
            let mut response = Response::new(B::from(Bytes::new()));
            *response.status_mut() = error.status();
            response
        }
    };
    response.extensions_mut().insert(error);
    response
}

/// Completes `response` once the commit is done: the handler's response with what the commit
/// calls for, or [`error_response`] in its place if it failed. Either carries the token of a
/// [`Session::save`] made during the request, since that write stands.
///
/// With several layers on one app, inner layers have committed before this one, and their
/// writes stand just the same (a rotated ID's old record is already deleted, say): an error
/// response carries over the session cookies and token headers they set (see
/// [`carry_inner_tokens`]), but no other header of the failed response.
fn finished<B: From<Bytes>>(
    config: &Config,
    session: &Session,
    response: &mut Response<B>,
    outcome: Result<Committed, SessionError>,
) {
    let committed = match outcome {
        Ok(committed) => committed,
        Err(error) => {
            let failed = std::mem::replace(response, error_response(config, error));
            carry_inner_tokens(config, failed.headers(), response.headers_mut());
            // The error is this session's: a cache must not hand it to another visitor, nor
            // the handler's response to this one (an error handler may answer with a 200).
            Committed {
                token: TokenAction::Keep,
                read: true,
            }
        }
    };
    apply(
        config,
        response.headers_mut(),
        session.with_saved_token(committed),
    );
}

fn apply(config: &Config, headers: &mut HeaderMap, committed: Committed) {
    let sets_token = !matches!(committed.token, TokenAction::Keep);
    if committed.read || sets_token {
        let vary = match &config.transport {
            Transport::Cookie => HeaderValue::from_static("cookie"),
            Transport::Header(name) => HeaderValue::from_str(name.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("cookie")),
        };
        add_vary(headers, vary);
    }
    let value = match committed.token {
        TokenAction::Keep => return,
        TokenAction::Set { value, max_age } => token_header(config, value, max_age),
        TokenAction::Remove => token_header(config, String::new(), Some(Duration::ZERO)),
    };
    let Some(value) = value else {
        tracing::error!(
            scope = config.scope,
            "session token could not be put in a header"
        );
        return;
    };
    match &config.transport {
        Transport::Cookie => {
            headers.append(SET_COOKIE, value);
        }
        Transport::Header(name) => {
            headers.insert(name.clone(), value);
        }
    }
    // A response that carries a session token must never be cached by a shared cache
    // (SECURITY.md 19, Flask CVE-2023-30861).
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Where a layer sends its token: a cookie name, or a header name with header transport.
#[derive(PartialEq)]
enum Carrier {
    Cookie(String),
    Header(HeaderName),
}

/// Where the layers built in this process send their tokens. A layer whose commit fails finds
/// inner layers' tokens in the failed response by these names; a record kept per response of
/// what each layer set would instead cost every response that sets a token. It holds each
/// distinct name once and is never pruned: an app that builds layers under ever new names (one
/// per tenant, say) grows it by a name each, scanned only when a commit fails.
static CARRIERS: Mutex<Vec<Carrier>> = Mutex::new(Vec::new());

fn carriers() -> MutexGuard<'static, Vec<Carrier>> {
    CARRIERS.lock().unwrap_or_else(PoisonError::into_inner)
}

fn carrier(config: &Config) -> Carrier {
    match &config.transport {
        Transport::Cookie => Carrier::Cookie(config.cookie_name.clone()),
        Transport::Header(name) => Carrier::Header(name.clone()),
    }
}

/// Records where a new layer sends its token (see [`CARRIERS`]).
pub(crate) fn register_carrier(config: &Config) {
    let new = carrier(config);
    let mut known = carriers();
    if !known.contains(&new) {
        known.push(new);
    }
}

/// Copies into `error` (this layer's error response) the session tokens other layers set on
/// `failed` (the response it replaces), with their `Vary` and `Cache-Control: no-store`. They are
/// found by name: every `Set-Cookie` named like another layer's cookie, and every header named
/// like another layer's token header, of any layer built in this process. A cookie the handler
/// itself set under such a name is carried too; on a store failure, that is a harmless excess.
fn carry_inner_tokens(config: &Config, failed: &HeaderMap, error: &mut HeaderMap) {
    let own = carrier(config);
    let mut carried = false;
    for other in carriers().iter().filter(|c| **c != own) {
        match other {
            Carrier::Cookie(name) => {
                for value in failed.get_all(SET_COOKIE) {
                    let cookie_name = value.as_bytes().split(|b| *b == b'=').next();
                    if cookie_name.map(<[u8]>::trim_ascii) == Some(name.as_bytes()) {
                        error.append(SET_COOKIE, value.clone());
                        add_vary(error, HeaderValue::from_static("cookie"));
                        carried = true;
                    }
                }
            }
            Carrier::Header(name) => {
                if let Some(value) = failed.get(name) {
                    error.insert(name.clone(), value.clone());
                    if let Ok(vary) = HeaderValue::from_str(name.as_str()) {
                        add_vary(error, vary);
                    }
                    carried = true;
                }
            }
        }
    }
    if carried {
        error.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

fn add_vary(headers: &mut HeaderMap, value: HeaderValue) {
    let present = headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|part| {
                part.trim() == "*"
                    || part
                        .trim()
                        .eq_ignore_ascii_case(value.to_str().unwrap_or(""))
            })
        })
    });
    if !present {
        headers.append(VARY, value);
    }
}

fn token_header(config: &Config, value: String, max_age: Option<Duration>) -> Option<HeaderValue> {
    match &config.transport {
        Transport::Header(_) => HeaderValue::try_from(value).ok(),
        // Removal cookies are rare: let the cookie crate render them whole.
        Transport::Cookie if value.is_empty() => {
            HeaderValue::try_from(build_cookie(config, value, max_age).to_string()).ok()
        }
        Transport::Cookie => HeaderValue::try_from(set_cookie(config, &value, max_age)).ok(),
    }
}

/// `name=value; Max-Age=n` followed by the attributes the cookie crate rendered when the layer was
/// built. Token values are base64url (IDs) or the cookie store's sealed base64url, so they need no
/// quoting. `HeaderValue` would not catch a value that did (it accepts `;`, `,`, `"` and spaces,
/// which would add attributes), so debug builds check the alphabet.
///
/// The string is allocated at exactly its length: `HeaderValue` then takes the buffer over as it
/// is, where spare capacity would cost it a second allocation.
fn set_cookie(config: &Config, value: &str, max_age: Option<Duration>) -> String {
    use std::fmt::Write as _;
    debug_assert!(
        crate::id::is_base64url(value),
        "a session token is base64url"
    );
    const MAX_AGE: &str = "; Max-Age=";
    let seconds = max_age.map(Duration::whole_seconds);
    let len = config.cookie_name.len()
        + 1
        + value.len()
        + seconds.map_or(0, |n| MAX_AGE.len() + decimal_len(n))
        + config.cookie_attributes.len();
    let mut out = String::with_capacity(len);
    out.push_str(&config.cookie_name);
    out.push('=');
    out.push_str(value);
    if let Some(seconds) = seconds {
        let _ = write!(out, "{MAX_AGE}{seconds}");
    }
    out.push_str(&config.cookie_attributes);
    out
}

/// How many characters `n` takes in decimal.
fn decimal_len(n: i64) -> usize {
    let digits = n
        .unsigned_abs()
        .checked_ilog10()
        .map_or(1, |log| log as usize + 1);
    digits + usize::from(n < 0)
}

/// The session cookie with the layer's attributes. A removal cookie (empty value, `Max-Age=0`)
/// repeats Name, Path, Domain, Secure, HttpOnly and SameSite so the browser matches and drops the
/// original (SECURITY.md 10).
pub(crate) fn build_cookie(
    config: &Config,
    value: String,
    max_age: Option<Duration>,
) -> Cookie<'static> {
    let mut builder = Cookie::build((config.cookie_name.clone(), value))
        .path(config.path.clone())
        .secure(config.secure)
        .http_only(config.http_only);
    if let Some(domain) = &config.domain {
        builder = builder.domain(domain.clone());
    }
    if let Some(same_site) = config.same_site {
        builder = builder.same_site(same_site);
    }
    if config.partitioned {
        builder = builder.partitioned(true);
    }
    if let Some(max_age) = max_age {
        builder = builder.max_age(max_age);
        if max_age.is_zero() {
            builder = builder.expires(OffsetDateTime::UNIX_EPOCH);
        }
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cookie_values<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h [u8]> {
        let mut values = Vec::new();
        for_each_cookie(headers, name, |value| {
            values.push(value);
            true
        });
        values
    }

    fn find_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
        cookie_values(headers, name).first().copied()
    }

    #[test]
    fn set_cookie_headers_are_allocated_at_their_exact_length() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            86_400,
            34_560_000,
            -1,
            -10,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(decimal_len(n), n.to_string().len(), "{n}");
        }
        let layer = crate::SessionLayer::new(crate::MemoryStore::new());
        for max_age in [None, Some(Duration::seconds(5)), Some(Duration::days(400))] {
            let header = set_cookie(&layer.config, "abc", max_age);
            assert_eq!(header.len(), header.capacity(), "{header}");
            assert!(header.starts_with("id=abc"));
        }
    }

    #[test]
    fn the_named_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; idx=2"));
        headers.append(
            COOKIE,
            HeaderValue::from_static("theme=dark; id=\"abc\"; id=second"),
        );
        assert_eq!(find_cookie(&headers, "id"), Some(&b"abc"[..]));
        assert_eq!(find_cookie(&headers, "idx"), Some(&b"2"[..]));
        assert_eq!(find_cookie(&headers, "missing"), None);
        headers.append(COOKIE, HeaderValue::from_static("id=third"));
        assert_eq!(
            cookie_values(&headers, "id"),
            [&b"abc"[..], b"second", b"third"],
            "the cookies of the name, in order, across headers"
        );
    }

    #[test]
    fn headers_that_are_not_utf8_are_searched_too() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_bytes(b"x=\xff\xfe; id=abc").unwrap(),
        );
        assert_eq!(find_cookie(&headers, "id"), Some(&b"abc"[..]));
    }

    proptest::proptest! {
        #[test]
        fn both_ways_of_splitting_find_the_same_cookie(text in "[ -~]{0,64}", name in "[a-c]{1,2}") {
            let text_split: Vec<_> = Pairs::Text(text.split(';'))
                .filter_map(|pair| cookie_value(pair, &name))
                .collect();
            let byte_split: Vec<_> = Pairs::Bytes(text.as_bytes().split(is_semicolon as fn(&u8) -> bool))
                .filter_map(|pair| cookie_value(pair, &name))
                .collect();
            proptest::prop_assert_eq!(text_split, byte_split);
        }

        #[test]
        fn cookie_headers_of_any_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                headers.append(COOKIE, value);
            }
            let _ = find_cookie(&headers, "id");
        }

        #[test]
        fn our_cookie_is_found_among_arbitrary_others(
            before in proptest::collection::vec(("[a-z]{1,8}", "[A-Za-z0-9]{0,12}"), 0..5),
            after in proptest::collection::vec(("[a-z]{1,8}", "[A-Za-z0-9]{0,12}"), 0..5),
            value in "[A-Za-z0-9_-]{1,43}",
        ) {
            let others = |pairs: &[(String, String)]| pairs
                .iter()
                .filter(|(name, _)| name != "id")
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>();
            let mut parts = others(&before);
            parts.push(format!("id={value}"));
            parts.extend(others(&after));
            let mut headers = HeaderMap::new();
            headers.append(COOKIE, HeaderValue::from_str(&parts.join("; ")).unwrap_or(HeaderValue::from_static("")));
            proptest::prop_assert_eq!(find_cookie(&headers, "id"), Some(value.as_bytes()));
        }
    }

    #[test]
    fn the_fast_cookie_matches_the_cookie_crate() {
        use crate::{MemoryStore, SessionLayer};
        use cookie::SameSite;
        let layers = [
            SessionLayer::new(MemoryStore::new()),
            SessionLayer::builder(MemoryStore::new())
                .cookie_name("__Host-sid")
                .same_site(Some(SameSite::Strict))
                .partitioned(true)
                .build()
                .unwrap(),
            SessionLayer::builder(MemoryStore::new())
                .cookie_name("app")
                .domain("example.com")
                .path("/app")
                .secure(false)
                .http_only(false)
                .same_site(None)
                .build()
                .unwrap(),
        ];
        for layer in layers {
            let config = &layer.config;
            for max_age in [None, Some(Duration::seconds(3600))] {
                let fast = set_cookie(config, "abc-_123", max_age);
                let slow = build_cookie(config, "abc-_123".to_owned(), max_age).to_string();
                let fast = Cookie::parse(fast.as_str()).unwrap();
                let slow = Cookie::parse(slow.as_str()).unwrap();
                assert_eq!(fast.name_value(), slow.name_value());
                assert_eq!(fast.max_age(), slow.max_age());
                assert_eq!(fast.path(), slow.path());
                assert_eq!(fast.domain(), slow.domain());
                assert_eq!(fast.secure(), slow.secure());
                assert_eq!(fast.http_only(), slow.http_only());
                assert_eq!(fast.same_site(), slow.same_site());
                assert_eq!(fast.partitioned(), slow.partitioned());
                assert_eq!(fast.expires(), slow.expires());
            }
        }
    }

    #[test]
    fn vary_is_added_once() {
        let vary_after = |before: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for value in before {
                headers.append(VARY, HeaderValue::from_static(value));
            }
            add_vary(&mut headers, HeaderValue::from_static("cookie"));
            headers
                .get_all(VARY)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        // The handler's own values stay as they are; `cookie` is added unless already there
        // (in any case, in a list) or `*` covers it.
        assert_eq!(vary_after(&[]), ["cookie"]);
        assert_eq!(
            vary_after(&["Accept-Encoding, Cookie"]),
            ["Accept-Encoding, Cookie"]
        );
        assert_eq!(
            vary_after(&["Accept-Encoding"]),
            ["Accept-Encoding", "cookie"]
        );
        assert_eq!(vary_after(&["*"]), ["*"]);
        assert_eq!(vary_after(&["Origin", "COOKIE"]), ["Origin", "COOKIE"]);
    }
}
