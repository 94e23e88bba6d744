//! Model-based test of what a session holds after a sequence of requests: random requests, each a
//! random list of operations (`insert`, `remove`, `clear`, `destroy`, `cycle_id`, `save`,
//! `set_expiry`, `set_owner`, `clear_owner`, `revoke_owner`) ending in a 200 or a 500, run through
//! the real layer, with the browser's cookie followed. After every request, what the next request
//! would read (values, owner, expiry policy) is compared with a small model of the documented
//! rules:
//!
//! - a 2xx response persists the session as the handler left it, and a session that does not exist
//!   yet is created only with something to keep (values or an owner; an expiry alone is not);
//! - a 5xx response persists nothing the layer would have saved after the handler, but a
//!   [`Session::save`] made during the request stands (server stores), with its cookie, and so
//!   does a [`Session::revoke_owner`]: it ends the stored session of that owner at once;
//! - the cookie store writes only into the response, so for it `save` changes nothing, and its
//!   revocation hook refuses the browser's cookie when that cookie's owner was revoked.
//!
//! `destroy` empties the session (values, owner, expiry: what is set after it starts a new one),
//! `revoke_owner` ends it the same way, and `cycle_id` keeps it under a new ID, so the model is the
//! session's contents, whether it exists, and the copy of it a 5xx leaves. Whether it exists is
//! checked too: the next request arrives as [`Arrival::Returning`] exactly when it does.
//!
//! Every response is also checked against the response rules (DESIGN.md §2, SECURITY.md 15, 19):
//!
//! - at most one `Set-Cookie`, and `Cache-Control: no-store` exactly when there is one;
//! - `Vary: Cookie` (every route reads the session);
//! - no cookie from a read-only request, nor from a 5xx unless a `save` or `revoke_owner` ran;
//! - a cookie that is not a removal names a live session (looked up in the store, or opened with
//!   the cookie store's key), and the next request with it arrives as [`Arrival::Returning`];
//! - it has a `Max-Age` exactly when that session's expiry is persistent, and the `Max-Age` is the
//!   time left to the session's deadline (within the second or two the request takes);
//! - when the response replaces the browser's cookie, the old one, replayed, no longer opens with
//!   a server store (SECURITY.md 2, 8, 10, 12). With the cookie store it still opens (a documented
//!   limit), unless the request revoked its owner.
#![allow(clippy::unwrap_used)]

mod support_faulty;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::routing::get;
use http_body_util::BodyExt;
use proptest::prelude::*;
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;
use tower_satchel::{
    Arrival, Backend, Expiry, IntoBackend, MemoryStore, Record, Session, SessionError, SessionId,
    SessionLayer, SessionStore,
};

use support_faulty::Faulty;

#[derive(Clone, Debug)]
enum Op {
    Insert(&'static str, u8),
    Remove(&'static str),
    Clear,
    Destroy,
    Cycle,
    Save,
    /// `set_expiry` with one of the policies of [`expiry`].
    Expiry(u8),
    Owner(&'static str),
    ClearOwner,
    /// `revoke_owner`, when the session has an owner.
    Revoke,
}

/// One request: its operations and whether it ends in a 500.
#[derive(Clone, Debug)]
struct Step {
    ops: Vec<Op>,
    fails: bool,
}

impl Step {
    fn has(&self, wanted: fn(&Op) -> bool) -> bool {
        self.ops.iter().any(wanted)
    }
}

fn op() -> impl Strategy<Value = Op> {
    let key = prop::sample::select(vec!["a", "b", "c"]);
    prop_oneof![
        4 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => key.prop_map(Op::Remove),
        1 => Just(Op::Clear),
        1 => Just(Op::Destroy),
        1 => Just(Op::Cycle),
        3 => Just(Op::Save),
        2 => (0u8..4).prop_map(Op::Expiry),
        2 => prop::sample::select(vec!["u1", "u2"]).prop_map(Op::Owner),
        1 => Just(Op::ClearOwner),
        1 => Just(Op::Revoke),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (prop::collection::vec(op(), 0..7), prop::bool::weighted(0.3))
        .prop_map(|(ops, fails)| Step { ops, fails });
    prop::collection::vec(step, 1..6)
}

/// The layer's default expiry (not configured here).
const DEFAULT_EXPIRY: Expiry = Expiry::OnInactivity(Duration::hours(24));

/// The policies `Op::Expiry` sets: a browser-session cookie, a short window, a window past the
/// layer's absolute lifetime (30 days, which then bounds `Max-Age`), and a fixed date (a whole
/// second: records keep whole seconds).
fn expiry(choice: u8) -> Expiry {
    static DATE: LazyLock<OffsetDateTime> = LazyLock::new(|| {
        OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + Duration::days(2)
    });
    match choice {
        0 => Expiry::OnSessionEnd,
        1 => Expiry::OnInactivity(Duration::days(3)),
        2 => Expiry::OnInactivity(Duration::days(40)),
        _ => Expiry::AtDateTime(*DATE),
    }
}

type Data = BTreeMap<String, u8>;

/// What a request reads from the session.
#[derive(Clone, Debug, PartialEq)]
struct Held {
    data: Data,
    owner: Option<String>,
    expiry: Expiry,
}

impl Default for Held {
    fn default() -> Self {
        Self {
            data: Data::new(),
            owner: None,
            expiry: DEFAULT_EXPIRY,
        }
    }
}

/// The session as the model keeps it: what it holds, and whether it exists (a record in the
/// store, or a cookie that opens). A session that does not exist reads as a new one: empty, with
/// the default expiry.
#[derive(Clone, Debug, Default)]
struct Kept {
    held: Held,
    live: bool,
}

impl Kept {
    /// What a write of `held` leaves: a session that does not exist yet is only created with
    /// something to keep, values or an owner (an expiry alone is not kept).
    fn write(held: &Held, live: bool) -> Kept {
        let live = live || !held.data.is_empty() || held.owner.is_some();
        Kept {
            held: if live { held.clone() } else { Held::default() },
            live,
        }
    }
}

/// What the model says a request leaves.
struct Outcome {
    kept: Kept,
    /// The owners `revoke_owner` revoked.
    revoked: Vec<String>,
}

/// What the session holds after `step`, starting from `stored`. `server`: a server-side store,
/// where `save` writes before the response.
fn model(stored: &Kept, step: &Step, server: bool) -> Outcome {
    let mut held = stored.held.clone();
    // Whether the session exists as the request goes: `destroy` and `revoke_owner` end it, and
    // what is set after them starts a new one.
    let mut live = stored.live;
    // What a 5xx leaves, if not `stored`: the last save, or the end of the stored session by a
    // revocation of its owner.
    let mut stands = None;
    let mut stored_owner = stored.held.owner.clone();
    let mut revoked = Vec::new();
    for op in &step.ops {
        match op {
            Op::Insert(key, value) => {
                held.data.insert((*key).to_owned(), *value);
            }
            Op::Remove(key) => {
                held.data.remove(*key);
            }
            Op::Clear => held.data.clear(),
            Op::Destroy => {
                held = Held::default();
                live = false;
            }
            Op::Cycle => {}
            Op::Save if server => {
                let saved = Kept::write(&held, live);
                live = saved.live;
                stored_owner = saved.held.owner.clone();
                stands = Some(saved);
            }
            Op::Save => {}
            Op::Expiry(choice) => held.expiry = expiry(*choice),
            Op::Owner(owner) => held.owner = Some((*owner).to_owned()),
            Op::ClearOwner => held.owner = None,
            Op::Revoke => {
                if let Some(owner) = held.owner.take() {
                    if stored_owner.as_ref() == Some(&owner) {
                        stands = Some(Kept::default());
                        stored_owner = None;
                    }
                    revoked.push(owner);
                    held = Held::default();
                    live = false;
                }
            }
        }
    }
    let kept = match (step.fails, stands) {
        (false, _) => Kept::write(&held, live),
        (true, Some(stands)) => stands,
        (true, None) => stored.clone(),
    };
    Outcome { kept, revoked }
}

fn router(backend: Backend) -> Router {
    let layer = SessionLayer::builder(backend)
        .secure(false)
        .build()
        .unwrap();
    Router::new()
        .route(
            "/step",
            get(
                |session: Session, Extension(step): Extension<Step>| async move {
                    for op in &step.ops {
                        match op {
                            Op::Insert(key, value) => session.insert(key, value)?,
                            Op::Remove(key) => {
                                session.remove::<u8>(key)?;
                            }
                            Op::Clear => session.clear(),
                            Op::Destroy => session.destroy(),
                            Op::Cycle => session.cycle_id(),
                            Op::Save => session.save().await?,
                            Op::Expiry(choice) => session.set_expiry(expiry(*choice)),
                            Op::Owner(owner) => session.set_owner(*owner),
                            Op::ClearOwner => session.clear_owner(),
                            Op::Revoke => {
                                if session.owner().is_some() {
                                    session.revoke_owner().await?;
                                }
                            }
                        }
                    }
                    let status = if step.fails {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    };
                    Ok::<_, SessionError>((status, "done"))
                },
            ),
        )
        .route(
            "/dump",
            get(|session: Session| async move {
                let mut data = Data::new();
                for key in session.keys() {
                    data.insert(key.clone(), session.get(&key).unwrap().unwrap());
                }
                let held = Held {
                    data,
                    owner: session.owner(),
                    expiry: session.expiry(),
                };
                let arrival = format!("{:?}", session.arrival());
                ([("x-arrival", arrival)], format!("{held:?}"))
            }),
        )
        .layer(layer)
}

/// The store behind the layer, kept to look up what a cookie names.
#[derive(Clone)]
enum Store {
    Memory(MemoryStore),
    Faulty(Faulty),
    #[cfg(feature = "file-store")]
    File(tower_satchel::FileStore),
    #[cfg(feature = "cookie-store")]
    Cookie(tower_satchel::CookieStore),
}

impl Store {
    fn backend(&self) -> Backend {
        match self.clone() {
            Store::Memory(store) => store.into_backend(),
            Store::Faulty(store) => store.into_backend(),
            #[cfg(feature = "file-store")]
            Store::File(store) => store.into_backend(),
            #[cfg(feature = "cookie-store")]
            Store::Cookie(store) => store.into_backend(),
        }
    }

    fn is_server(&self) -> bool {
        #[cfg(feature = "cookie-store")]
        if let Store::Cookie(_) = self {
            return false;
        }
        true
    }

    /// The live session a cookie value names, if any.
    async fn live(&self, value: &str, now: OffsetDateTime) -> Option<Record> {
        async fn load(
            store: &impl SessionStore,
            value: &str,
            now: OffsetDateTime,
        ) -> Option<Record> {
            let id = SessionId::parse(value)?;
            store.load(&id.key(), now).await.unwrap()
        }
        match self {
            Store::Memory(store) => load(store, value, now).await,
            Store::Faulty(store) => load(store, value, now).await,
            #[cfg(feature = "file-store")]
            Store::File(store) => load(store, value, now).await,
            #[cfg(feature = "cookie-store")]
            Store::Cookie(store) => match store.open("id", value, now).await.unwrap() {
                tower_satchel::Unsealed::Live { record, .. } => Some(record),
                _ => None,
            },
        }
    }
}

/// A response, as far as the test looks at it.
struct Reply {
    status: StatusCode,
    arrival: Option<String>,
    body: String,
    /// Whether it set a cookie (not a removal).
    set_cookie: bool,
}

/// Sends `GET path` with the browser's cookie, checks the response rules of the module docs,
/// and updates the cookie from the response as a browser would. `writes`: whether the request
/// may set a cookie.
async fn send(
    router: &Router,
    store: &Store,
    path: &str,
    step: Option<Step>,
    writes: bool,
    cookie: &mut Option<String>,
) -> Result<Reply, TestCaseError> {
    let mut request = Request::get(path);
    if let Some(value) = cookie.as_deref() {
        request = request.header(header::COOKIE, format!("id={value}"));
    }
    if let Some(step) = step {
        request = request.extension(step);
    }
    // The layer reads the real clock somewhere between these two instants.
    let sent_at = OffsetDateTime::now_utc();
    let resp = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let headers = resp.headers();
    let sets: Vec<_> = headers.get_all(header::SET_COOKIE).iter().collect();
    prop_assert!(sets.len() <= 1, "{} sent {} cookies", path, sets.len());
    prop_assert_eq!(
        lists(headers, header::CACHE_CONTROL, "no-store"),
        !sets.is_empty(),
        "{}: `Cache-Control: no-store` exactly when a cookie is set or removed",
        path
    );
    prop_assert!(
        lists(headers, header::VARY, "cookie"),
        "{}: no `Vary: Cookie` though the session was read",
        path
    );
    let mut set_cookie = false;
    if let Some(set) = sets.first() {
        let set = cookie::Cookie::parse(set.to_str().unwrap().to_owned()).unwrap();
        let removal = set.value().is_empty() || set.max_age() == Some(Duration::ZERO);
        if !removal {
            prop_assert!(writes, "{} set a cookie it had no cause for", path);
            let now = OffsetDateTime::now_utc();
            let record = store.live(set.value(), now).await;
            prop_assert!(
                record.is_some(),
                "{} set a cookie for no live session",
                path
            );
            let record = record.unwrap();
            prop_assert_eq!(
                set.max_age().is_some(),
                record.expiry.is_persistent(),
                "{}: Max-Age {:?} for a session expiring {:?}",
                path,
                set.max_age(),
                record.expiry
            );
            if let Some(max_age) = set.max_age() {
                // Counted from the layer's reading of the clock, between `sent_at` and `now`
                // (however long the request took on a loaded machine), rounded to seconds.
                let (most, least) = (record.deadline() - sent_at, record.deadline() - now);
                prop_assert!(
                    max_age <= most + Duration::seconds(1)
                        && max_age >= least - Duration::seconds(2),
                    "{}: Max-Age {} for a deadline {} to {} away",
                    path,
                    max_age,
                    least,
                    most
                );
            }
            set_cookie = true;
        }
        *cookie = (!removal).then(|| set.value().to_owned());
    }
    let arrival = headers
        .get("x-arrival")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok(Reply {
        status,
        arrival,
        body: String::from_utf8(body.to_vec()).unwrap(),
        set_cookie,
    })
}

/// Whether a header of `name` lists `item` (comma-separated, any case).
fn lists(headers: &HeaderMap, name: header::HeaderName, item: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .unwrap()
            .split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(item))
    })
}

/// Runs `steps` against the layer over `store` and the model; fails at the first difference.
fn check(store: Store, steps: &[Step]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let router = router(store.backend());
        let server = store.is_server();
        let returning = format!("{:?}", Arrival::Returning);
        let mut cookie = None;
        let mut expected = Kept::default();
        for (n, step) in steps.iter().enumerate() {
            let before = cookie.clone();
            // A 5xx commits nothing: only a save (server stores) or a revocation reach the client.
            let writes = !step.ops.is_empty()
                && (!step.fails
                    || step.has(|op| matches!(op, Op::Revoke))
                    || (server && step.has(|op| matches!(op, Op::Save))));
            let reply = send(
                &router,
                &store,
                "/step",
                Some(step.clone()),
                writes,
                &mut cookie,
            )
            .await?;
            let wanted = if step.fails { 500 } else { 200 };
            prop_assert_eq!(reply.status.as_u16(), wanted, "request {}", n);
            let outcome = model(&expected, step, server);

            if let Some(old) = before.filter(|old| cookie.as_ref() != Some(old)) {
                // The browser's cookie was replaced or removed: replay the old one. Only a sealed
                // cookie can still open, and not once its owner is revoked.
                let opens = !server
                    && expected.live
                    && (expected.held.owner.as_ref())
                        .is_none_or(|owner| !outcome.revoked.contains(owner));
                let replay = send(&router, &store, "/dump", None, false, &mut Some(old)).await?;
                prop_assert_eq!(
                    replay.arrival.as_ref() == Some(&returning),
                    opens,
                    "the cookie request {} replaced, replayed, arrived {:?}",
                    n,
                    replay.arrival
                );
            }

            expected = outcome.kept;
            let dump = send(&router, &store, "/dump", None, false, &mut cookie).await?;
            prop_assert_eq!(
                dump.body,
                format!("{:?}", expected.held),
                "after request {}",
                n
            );
            prop_assert_eq!(
                dump.arrival.as_ref() == Some(&returning),
                expected.live,
                "after request {}, the session {} but the next request arrived {:?}",
                n,
                if expected.live {
                    "exists"
                } else {
                    "does not exist"
                },
                dump.arrival
            );
            prop_assert!(
                expected.live || !reply.set_cookie,
                "request {} set a cookie for a session that does not exist",
                n
            );
        }
        Ok(())
    })
}

/// A fresh file store in a folder of its own (removed by the caller).
#[cfg(feature = "file-store")]
fn file_store() -> (Store, std::path::PathBuf) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("model")
        .join(SessionId::generate().unwrap().key().to_hex());
    let store = tower_satchel::FileStore::new(&dir).unwrap();
    (Store::File(store), dir)
}

/// A cookie store with a fresh key and a revocation hook.
#[cfg(feature = "cookie-store")]
fn cookie_store() -> Store {
    let store = tower_satchel::CookieStore::new(tower_satchel::Key::generate().unwrap())
        .revocation(tower_satchel::MemoryRevocations::new());
    Store::Cookie(store)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// The memory store, which the layer reaches without a boxed future.
    #[test]
    fn memory_store_sessions_follow_the_model(steps in steps()) {
        check(Store::Memory(MemoryStore::new()), &steps)?;
    }

    /// The same memory store behind `Faulty`, which the layer reaches through boxed futures.
    #[test]
    fn boxed_store_sessions_follow_the_model(steps in steps()) {
        check(Store::Faulty(Faulty::default()), &steps)?;
    }

    /// The cookie store with a revocation hook: `save` writes nothing before the response, so a
    /// 5xx keeps nothing of it, and a replaced cookie still opens unless its owner was revoked.
    #[cfg(feature = "cookie-store")]
    #[test]
    fn cookie_store_sessions_follow_the_model(steps in steps()) {
        check(cookie_store(), &steps)?;
    }
}

proptest! {
    // Fewer: every write is a file written and synced.
    #![proptest_config(ProptestConfig::with_cases(800))]

    /// The file store, through the layer's boxed store futures.
    #[cfg(feature = "file-store")]
    #[test]
    fn file_store_sessions_follow_the_model(steps in steps()) {
        let (store, dir) = file_store();
        let outcome = check(store, &steps);
        let _ = std::fs::remove_dir_all(&dir);
        outcome?;
    }
}

/// Sequences that a random run meets rarely (most found by it), run against every store.
#[test]
fn found_sequences_follow_the_model() {
    let step = |ops: Vec<Op>, fails: bool| Step { ops, fails };
    let sequences = [
        // "Remember me" on a new login after a logout, saved before the login's values are set.
        vec![
            step(vec![Op::Insert("a", 0)], false),
            step(
                vec![Op::Destroy, Op::Expiry(0), Op::Save, Op::Insert("b", 1)],
                false,
            ),
        ],
        // A revocation of the owner a save stored ends the saved session, cookie included, even
        // on a 5xx; of an owner the saved session does not have yet, it leaves the saved session
        // (and its cookie) to the 5xx.
        vec![step(vec![Op::Owner("u1"), Op::Save, Op::Revoke], true)],
        vec![step(
            vec![Op::Insert("a", 0), Op::Save, Op::Owner("u1"), Op::Revoke],
            true,
        )],
        vec![
            step(vec![Op::Insert("a", 0)], false),
            step(vec![Op::Cycle, Op::Save, Op::Owner("u1"), Op::Revoke], true),
        ],
    ];
    let mut failures = Vec::new();
    for steps in &sequences {
        let stores = [
            ("memory", Store::Memory(MemoryStore::new())),
            ("boxed", Store::Faulty(Faulty::default())),
        ]
        .into_iter();
        #[cfg(feature = "cookie-store")]
        let stores = stores.chain([("cookie", cookie_store())]);
        #[cfg(feature = "file-store")]
        let (file, dir) = file_store();
        #[cfg(feature = "file-store")]
        let stores = stores.chain([("file", file)]);
        for (name, store) in stores {
            if let Err(error) = check(store, steps) {
                failures.push(format!("{name} store, {steps:?}:\n{error}"));
            }
        }
        #[cfg(feature = "file-store")]
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
