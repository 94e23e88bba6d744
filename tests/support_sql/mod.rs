//! Shared by `store_postgres.rs` and `store_sqlite.rs`: fresh stores that clean up after
//! themselves, a small app for the HTTP-level tests, and the tests both stores run alike.
//!
//! PostgreSQL: `$DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`). Every store gets
//! its own schema, `satchel_test_<pid>_<n>_<random>`, dropped when the store is dropped, so runs
//! never collide. No server there is a test failure with a message saying so, not a skip.
//!
//! SQLite: every store gets its own file in a fresh temporary folder, removed on drop.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration as StdDuration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use http_body_util::BodyExt;
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;
use tower_satchel::{
    ChangeSet, CleanupConfig, Expiry, IntoBackend, ManualClock, Record, Renamed, Saved, Session,
    SessionError, SessionErrorKind, SessionId, SessionInfo, SessionKey, SessionLayer, SessionStore,
    StoreError, StoreErrorKind, spawn_cleanup_with_clock,
};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name no other run or test uses.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = SessionId::generate().unwrap().key().to_hex();
    format!("{prefix}_{}_{n}_{}", std::process::id(), &random[..8])
}

/// A store together with whatever must be cleaned up when it is dropped.
pub struct Guarded<S> {
    pub store: S,
    _cleanup: Cleanup,
}

impl<S> std::ops::Deref for Guarded<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.store
    }
}

/// Runs its action when dropped (also when a test panics).
pub struct Cleanup(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Cleanup {
    pub fn new(action: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self(Some(Box::new(action)))
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(action) = self.0.take() {
            action();
        }
    }
}

/// Implements `SessionStore` for a wrapper with a `store` field by handing every call on to it;
/// `delete_expired` runs `$sweep`, with `$this`, `$now` and `$limit` bound.
macro_rules! forwarding_store {
    ($wrapper:ident, |$this:ident, $now:ident, $limit:ident| $sweep:expr) => {
        impl<S: SessionStore> SessionStore for $wrapper<S> {
            async fn load(
                &self,
                key: &SessionKey,
                now: OffsetDateTime,
            ) -> Result<Option<Record>, StoreError> {
                self.store.load(key, now).await
            }
            async fn create(
                &self,
                key: &SessionKey,
                record: &Record,
                now: OffsetDateTime,
            ) -> Result<bool, StoreError> {
                self.store.create(key, record, now).await
            }
            async fn save(
                &self,
                key: &SessionKey,
                changes: &ChangeSet,
                now: OffsetDateTime,
            ) -> Result<Saved, StoreError> {
                self.store.save(key, changes, now).await
            }
            async fn touch(
                &self,
                key: &SessionKey,
                idle: OffsetDateTime,
                basis: Expiry,
                now: OffsetDateTime,
            ) -> Result<Saved, StoreError> {
                self.store.touch(key, idle, basis, now).await
            }
            async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
                self.store.delete(key).await
            }
            async fn rename(
                &self,
                from: &SessionKey,
                to: &SessionKey,
                changes: &ChangeSet,
                now: OffsetDateTime,
            ) -> Result<Renamed, StoreError> {
                self.store.rename(from, to, changes, now).await
            }
            async fn delete_expired(
                &self,
                $now: OffsetDateTime,
                $limit: usize,
            ) -> Result<usize, StoreError> {
                let $this = self;
                $sweep
            }
            async fn list_owner(
                &self,
                owner: &str,
                now: OffsetDateTime,
            ) -> Result<Vec<SessionInfo>, StoreError> {
                self.store.list_owner(owner, now).await
            }
            async fn delete_owner(&self, owner: &str) -> Result<usize, StoreError> {
                self.store.delete_owner(owner).await
            }
        }
    };
}

forwarding_store!(Guarded, |this, now, limit| this
    .store
    .delete_expired(now, limit)
    .await);

// ---------------------------------------------------------------------------------------------
// PostgreSQL

#[cfg(feature = "postgres-store")]
pub mod pg {
    use super::*;
    use sqlx::postgres::{PgPool, PgPoolOptions};
    use std::time::Duration as StdDuration;
    use tower_satchel::PostgresStore;

    pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    /// `$DATABASE_URL`, or the default.
    pub fn url() -> String {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => DEFAULT_URL.to_owned(),
        }
    }

    /// The URL with any password masked, for messages.
    pub fn shown(url: &str) -> String {
        match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &url[scheme + 3..at];
                match userinfo.find(':') {
                    Some(colon) => format!(
                        "{}{}:***{}",
                        &url[..scheme + 3],
                        &userinfo[..colon],
                        &url[at..]
                    ),
                    None => url.to_owned(),
                }
            }
            _ => url.to_owned(),
        }
    }

    /// A pool on `url`, or a test failure that says how to get a server.
    pub async fn pool_at(url: &str, max: u32) -> PgPool {
        assert!(
            url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "DATABASE_URL={} is not a PostgreSQL URL; the PostgreSQL tests need one \
             (default {DEFAULT_URL})",
            shown(url)
        );
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(StdDuration::from_secs(20))
            .connect(url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no PostgreSQL server answers at {} ({e}). The PostgreSQL store tests need \
                     one: start it (e.g. `pg_ctlcluster 15 main start`) or set DATABASE_URL \
                     to a database this user may create schemas in",
                    shown(url)
                )
            })
    }

    pub async fn pool(max: u32) -> PgPool {
        pool_at(&url(), max).await
    }

    /// Drops `schema` when run.
    pub fn drop_schema_later(schema: String) -> Cleanup {
        execute_later(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
    }

    /// Runs `sql` (as the test user) when run, on a thread of its own (drop glue cannot await).
    pub fn execute_later(sql: String) -> Cleanup {
        Cleanup::new(move || {
            let url = url();
            let _ = std::thread::spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async move {
                    use sqlx::Connection;
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                            .execute(&mut conn)
                            .await
                        {
                            eprintln!("test clean-up `{sql}` failed: {e}");
                        }
                        let _ = conn.close().await;
                    }
                });
            })
            .join();
        })
    }

    /// A migrated store in a fresh schema, dropped with the store.
    pub async fn store() -> Guarded<PostgresStore> {
        let (store, cleanup) = unmigrated().await;
        migrated(store, cleanup).await
    }

    async fn migrated(store: PostgresStore, cleanup: Cleanup) -> Guarded<PostgresStore> {
        store.migrate().await.unwrap();
        Guarded {
            store,
            _cleanup: cleanup,
        }
    }

    /// [`store`], but over a pool [`PostgresStore::connect`] made, which hands connections on
    /// from operation to operation under load.
    pub async fn connected_store() -> Guarded<PostgresStore> {
        let schema = unique("satchel_test");
        let cleanup = drop_schema_later(schema.clone());
        let store = PostgresStore::connect(&url())
            .await
            .unwrap()
            .with_schema(&schema)
            .unwrap();
        migrated(store, cleanup).await
    }

    /// A store in a fresh schema that nobody migrated (the schema does not exist yet).
    pub async fn unmigrated() -> (PostgresStore, Cleanup) {
        let schema = unique("satchel_test");
        let store = PostgresStore::new(pool(10).await)
            .with_schema(&schema)
            .unwrap();
        (store, drop_schema_later(schema))
    }

    /// `"schema"."tower_satchel_sessions"` of a test store, from its schema SQL.
    pub fn table_of(store: &PostgresStore) -> String {
        let sql = store.schema_sql();
        let start =
            sql.find("CREATE TABLE IF NOT EXISTS ").unwrap() + "CREATE TABLE IF NOT EXISTS ".len();
        sql[start..].split_whitespace().next().unwrap().to_owned()
    }

    /// The schema of a test store (see [`table_of`]), unquoted: for another store on the same
    /// table, over a pool made otherwise.
    pub fn schema_of(store: &PostgresStore) -> String {
        let table = table_of(store);
        table
            .split('.')
            .next()
            .unwrap()
            .trim_matches('"')
            .to_owned()
    }

    /// Rows in the store's table, whatever their deadline, counted in SQL for white-box checks.
    pub async fn count_rows(store: &PostgresStore) -> i64 {
        let sql = format!("SELECT count(*) FROM {}", table_of(store));
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(store.pool())
            .await
            .unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite

#[cfg(feature = "sqlite-store")]
pub mod lite {
    use super::*;
    use std::path::PathBuf;
    use tower_satchel::SqliteStore;

    /// A fresh, empty folder under the system's temporary folder, and its cleanup.
    pub fn temp_dir() -> (PathBuf, Cleanup) {
        let dir = std::env::temp_dir().join(unique("satchel-sqlite"));
        std::fs::create_dir_all(&dir).unwrap();
        let remove = dir.clone();
        (
            dir,
            Cleanup::new(move || {
                let _ = std::fs::remove_dir_all(remove);
            }),
        )
    }

    /// A migrated store in a file of its own, removed with the store.
    pub async fn store() -> Guarded<SqliteStore> {
        let (dir, cleanup) = temp_dir();
        let path = dir.join("sessions.sqlite3");
        let store = SqliteStore::connect(path.to_str().unwrap()).await.unwrap();
        store.migrate().await.unwrap();
        Guarded {
            store,
            _cleanup: cleanup,
        }
    }
}

/// A request naming an ID nobody issued loads it and writes nothing: no row, not even an expired
/// placeholder (SECURITY.md 3). `rows` counts the rows of the store's table in SQL, whatever their
/// deadline.
pub async fn an_unknown_id_writes_nothing<S: SessionStore + Clone>(
    store: S,
    rows: impl AsyncFn() -> i64,
) {
    let app = app(store.clone());
    // The count sees rows the app writes: a session started by the app is one.
    let started = app.get("/incr", None).await;
    assert_eq!(started.body, "1");
    assert!(started.token.is_some(), "a new session gets a cookie");
    assert_eq!(rows().await, 1);
    let planted = SessionId::generate().unwrap();
    let resp = app.get("/keys", Some(&planted.expose())).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body, "", "an unknown ID is an empty session");
    assert!(
        resp.token.is_none(),
        "no cookie for a session that does not exist"
    );
    assert_eq!(rows().await, 1, "the unknown ID left a row behind");
}

// ---------------------------------------------------------------------------------------------
// A small app

/// SECURITY.md 28 when reading fails while the database is up: for each pair of statements,
/// `run` the first (which makes the store's reads fail: a table or column renamed, as a botched
/// migration would), check that a request of a live session, even one that only reads, gets an
/// error response with the store error and no `Set-Cookie` at all (no fresh session, no removal
/// of the real one), then `run` the second (which mends it) and check that the same cookie's
/// session is back with its data.
pub async fn failing_reads_give_error_responses_then_recover<S: SessionStore + Clone>(
    store: &S,
    breakages: &[(String, String)],
    mut run: impl AsyncFnMut(&str),
) {
    let app = app(store.clone());
    let first = app.get("/incr", None).await;
    assert_eq!(first.body, "1");
    let token = first.token.unwrap();
    let key = SessionId::parse(&token).unwrap().key();
    let now = crate::conformance::contract::now;
    for (n, (break_it, mend_it)) in breakages.iter().enumerate() {
        run(break_it).await;
        assert!(store.load(&key, now()).await.is_err(), "{break_it}");
        for path in ["/keys", "/incr"] {
            let (status, cookies, error) = send_keeping_headers(store, path, &token).await;
            assert_eq!(
                status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{break_it}: {path}"
            );
            assert_eq!(cookies, 0, "{break_it}: {path} set a cookie");
            assert!(
                error.is_some_and(|e| e.kind() == SessionErrorKind::Store),
                "{break_it}: {path}"
            );
        }
        run(mend_it).await;
        assert_eq!(app.get("/keys", Some(&token)).await.body, "n", "{mend_it}");
        let resp = app.get("/incr", Some(&token)).await;
        assert_eq!(resp.body, (n + 2).to_string(), "{mend_it}");
        assert_eq!(resp.token, None, "{mend_it}: a new session was minted");
    }
}

/// `GET path` with `token` through a layer over `store`, as [`app`] sends it, keeping
/// what `TestApp` boils down: the number of `Set-Cookie` headers (a removal cookie included) and
/// the session error the layer attached.
pub async fn send_keeping_headers<S: SessionStore + Clone>(
    store: &S,
    path: &str,
    token: &str,
) -> (StatusCode, usize, Option<SessionError>) {
    let layer = SessionLayer::new(store.clone());
    let cookie = format!("{}={token}", layer.cookie_name());
    let router = Router::new()
        .route("/keys", get(|s: Session| async move { s.keys().join(",") }))
        .route(
            "/incr",
            get(|s: Session| async move {
                s.update("n", |n: &mut u64| *n += 1)?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .layer(layer);
    let request = Request::get(path)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    let cookies = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .count();
    let error = response.extensions().get::<SessionError>().cloned();
    (response.status(), cookies, error)
}

/// The routes the HTTP-level tests use.
pub fn app(store: impl IntoBackend) -> TestApp {
    let layer = SessionLayer::new(store);
    let cookie_name = layer.cookie_name().to_owned();
    let router = Router::new()
        .route(
            "/set/{key}",
            get(|s: Session, Path(key): Path<String>| async move {
                s.insert(&key, true)?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            "/incr",
            get(|s: Session| async move {
                let n = s.update("n", |n: &mut u64| {
                    *n += 1;
                    *n
                })?;
                Ok::<_, SessionError>(n.to_string())
            }),
        )
        .route("/keys", get(|s: Session| async move { s.keys().join(",") }))
        .route(
            "/login/{user}",
            get(|s: Session, Path(user): Path<String>| async move {
                s.set_owner(user);
                s.cycle_id();
                s.insert("logged-in", true)?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            "/destroy",
            get(|s: Session| async move {
                s.destroy();
                "bye"
            }),
        )
        .layer(layer);
    TestApp {
        router,
        cookie_name,
    }
}

#[derive(Clone)]
pub struct TestApp {
    router: Router,
    pub cookie_name: String,
}

/// A collected response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub body: String,
    /// The non-empty session cookie the response sets, if any.
    pub token: Option<String>,
    /// The session error the layer attached, if any.
    pub error: Option<SessionError>,
}

impl TestApp {
    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        let mut request = Request::get(path);
        if let Some(token) = token {
            request = request.header(header::COOKIE, format!("{}={token}", self.cookie_name));
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let error = response.extensions().get::<SessionError>().cloned();
        let token = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| cookie::Cookie::parse(v.to_str().ok()?.to_owned()).ok())
            .find(|c| c.name() == self.cookie_name && !c.value().is_empty())
            .map(|c| c.value().to_owned());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            token,
            error,
        }
    }
}

/// How many connections `store` handed from one operation to the next (its `Debug` says).
pub fn handed_on(store: &impl std::fmt::Debug) -> u64 {
    let debug = format!("{store:?}");
    let count = debug
        .split("connections_handed_on: Some(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no hand-on count in {debug}"));
    count.parse().unwrap()
}

/// A stored session, for the load tests below.
async fn one_session<S: SessionStore>(store: &S) -> SessionKey {
    use crate::conformance::contract::{key, now, record};
    let (key, now) = (key(), now());
    assert!(store.create(&key, &record(now), now).await.unwrap());
    key
}

/// Under load, with more operations than the pool has connections, a connection that answered
/// one operation goes straight to the next (no test round trip through the pool), and every
/// write is still applied. `store` must come from the store's `connect`.
pub async fn connections_go_from_operation_to_operation<S>(store: S)
where
    S: SessionStore + Clone + std::fmt::Debug + 'static,
{
    assert_eq!(handed_on(&store), 0);
    let key = one_session(&store).await;
    let now = crate::conformance::contract::now();
    // Operations wait for a hand-on only while the pool is at its limit, which depends on how
    // the machine schedules them (other tests run beside this one): a few rounds, not one, so
    // that a busy machine does not fail it. A hand-on that never happens fails every round.
    for round in 0..10 {
        let writes: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut changes = ChangeSet::default();
                    changes
                        .set
                        .insert(format!("k{i}"), serde_json::json!(i + round));
                    store.save(&key, &changes, now).await
                })
            })
            .collect();
        for write in writes {
            assert!(matches!(write.await.unwrap(), Ok(Saved::Applied)));
        }
        let data = store.load(&key, now).await.unwrap().unwrap().data;
        assert!((0..200).all(|i| data[&format!("k{i}")] == serde_json::json!(i + round)));
        if handed_on(&store) > 0 {
            return;
        }
    }
    panic!("no connection handed on in 10 rounds: {store:?}");
}

/// Handing connections on never keeps the pool from the app: while 40 tasks keep the store
/// saturated, `acquire_from_pool` (the app taking a connection from the store's pool and giving
/// it back) still completes within a second each time (every connection goes back to the pool
/// at the latest 100 ms after it left it), well within sqlx's acquire timeout.
pub async fn the_pool_still_serves_the_app_while_the_store_is_saturated<S>(
    store: S,
    acquire_from_pool: impl AsyncFn(),
) where
    S: SessionStore + Clone + std::fmt::Debug + 'static,
{
    let key = one_session(&store).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..40)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let now = crate::conformance::contract::now();
                    store.load(&key, now).await.unwrap().unwrap();
                }
            })
        })
        .collect();
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    // Not a speed target: a pool the store kept to itself would make the app wait for sqlx's
    // acquire timeout (10 s or more) and fail; a loaded machine still serves it in well under 5.
    for _ in 0..5 {
        tokio::time::timeout(StdDuration::from_secs(5), acquire_from_pool())
            .await
            .expect("the app waited over 5 seconds for a pooled connection");
    }
    // Whether a connection got handed on yet depends on how the machine schedules the tasks:
    // given time while they keep the store saturated, one does.
    let deadline = std::time::Instant::now() + StdDuration::from_secs(10);
    while handed_on(&store) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the store was not saturated"
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in busy {
        task.await.unwrap();
    }
}

/// Sends 100 concurrent requests in one session, each setting its own key, and checks that all
/// 100 keys (and the first one) are there afterwards.
pub async fn hundred_concurrent_requests_keep_every_key(app: TestApp) {
    let first = app.get("/set/first", None).await;
    assert_eq!(first.status, StatusCode::OK);
    let token = first.token.expect("a session cookie");
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (app, token) = (app.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            app.get(&format!("/set/k{i}"), Some(&token)).await
        }));
    }
    for task in tasks {
        let resp = task.await.unwrap();
        assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
        assert_eq!(
            resp.token, None,
            "a request of a live session must not mint a new one"
        );
    }
    let keys = app.get("/keys", Some(&token)).await.body;
    let keys: Vec<&str> = keys.split(',').collect();
    assert_eq!(keys.len(), 101, "lost writes: {keys:?}");
    for i in 0..100 {
        assert!(keys.contains(&format!("k{i}").as_str()), "k{i} lost");
    }
    assert!(keys.contains(&"first"));
}

/// Two app instances, each with its own pool, on one database.
pub async fn two_instances_share_one_database<S>(a: S, b: S, admin: S)
where
    S: SessionStore + Clone,
{
    let (app_a, app_b) = (app(a), app(b));
    // A session started on A is seen on B, and counting continues across instances.
    let token = app_a
        .get("/incr", None)
        .await
        .token
        .expect("a session cookie");
    assert_eq!(app_b.get("/incr", Some(&token)).await.body, "2");
    assert_eq!(app_a.get("/incr", Some(&token)).await.body, "3");

    // Concurrent writes of different keys through both instances all persist.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let app = if i % 2 == 0 {
            app_a.clone()
        } else {
            app_b.clone()
        };
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            app.get(&format!("/set/k{i}"), Some(&token)).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let keys = app_a.get("/keys", Some(&token)).await.body;
    for i in 0..20 {
        assert!(
            keys.split(',').any(|k| k == format!("k{i}")),
            "k{i} lost: {keys}"
        );
    }

    // Logging in on B: the owner index is shared, so A's admin can list and revoke.
    let login = app_b.get("/login/alice", Some(&token)).await;
    let alice = login.token.expect("login cycles the ID");
    let other = app_a.get("/login/alice", None).await.token.unwrap();
    let now = OffsetDateTime::now_utc();
    assert_eq!(admin.list_owner("alice", now).await.unwrap().len(), 2);
    // The old ID was retired on B; A does not adopt it: its request starts a fresh session (the
    // old one counted to 3) under a new ID, not the old one nor the one B issued.
    let stale = app_a.get("/incr", Some(&token)).await;
    assert_eq!(stale.body, "1", "old ID adopted");
    let fresh = stale.token.expect("a fresh session gets a cookie");
    assert_ne!(fresh, token, "old ID adopted");
    assert_ne!(fresh, alice);
    // Destroy on A is seen on B.
    assert_eq!(
        app_a.get("/destroy", Some(&other)).await.status,
        StatusCode::OK
    );
    let replay = app_b.get("/incr", Some(&other)).await;
    assert_eq!(
        replay.body, "1",
        "a destroyed session came back on the other instance"
    );
    // Revoke-all through the admin handle logs alice out on both instances.
    assert_eq!(admin.delete_owner("alice").await.unwrap(), 1);
    assert_eq!(app_b.get("/incr", Some(&alice)).await.body, "1");
    assert!(admin.list_owner("alice", now).await.unwrap().is_empty());
}

/// A store whose table is missing: loading is a `Config` store error that names `migrate()` (as
/// `{store_type}::migrate()`) and the table, with the driver's error as its source. Through the
/// layer the request gets an error response carrying that error, not an empty session, with no
/// backend detail in its body. Then `migrate` (run twice: it is idempotent) fixes it.
pub async fn a_missing_table_is_a_config_error<S: SessionStore + Clone>(
    store: S,
    store_type: &str,
    migrate: impl AsyncFn(),
) {
    let error = store
        .load(
            &crate::conformance::contract::key(),
            crate::conformance::contract::now(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Config);
    let message = error.to_string();
    assert!(
        message.contains(&format!("{store_type}::migrate()")),
        "{message}"
    );
    assert!(message.contains("tower_satchel_sessions"), "{message}");
    assert!(
        std::error::Error::source(&error).is_some(),
        "the sqlx error is kept as source"
    );

    let app = app(store);
    let token = SessionId::generate().unwrap().expose();
    let resp = app.get("/incr", Some(&token)).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    let error = resp
        .error
        .expect("the session error in the response extensions");
    assert_eq!(error.kind(), SessionErrorKind::Store);
    assert_eq!(error.store_error().unwrap().kind(), StoreErrorKind::Config);
    assert!(
        !resp.body.contains("migrate"),
        "backend details stay out of the body"
    );

    migrate().await;
    migrate().await;
    assert_eq!(app.get("/incr", None).await.body, "1");
}

/// Creates a session whose idle deadline is 10 s after `now`, then 11 s later tries to write it
/// three ways: values with a new deadline, metadata only (an owner), and a touch. Each is
/// `Saved::Gone`. Returns the key and that later time; the caller checks in SQL that the row was
/// not written, then this checks that create replaces the expired row rather than refusing.
pub async fn writes_after_expiry_are_refused<S: SessionStore>(
    store: &S,
    now: OffsetDateTime,
    row_is_untouched: impl AsyncFn(&SessionKey),
) {
    use crate::conformance::contract::{key, record};
    let key = key();
    let mut expiring = record(now);
    expiring.idle_deadline = now + Duration::seconds(10);
    assert!(store.create(&key, &expiring, now).await.unwrap());
    let later = now + Duration::seconds(11);
    let mut values = ChangeSet::default();
    values.set.insert("x".into(), serde_json::json!(1));
    values.idle_deadline = Some(later + Duration::hours(1));
    assert_eq!(store.save(&key, &values, later).await.unwrap(), Saved::Gone);
    let mut metadata = ChangeSet::default();
    metadata.owner = Some(Some("mallory".into()));
    metadata.idle_deadline = Some(later + Duration::hours(1));
    assert_eq!(
        store.save(&key, &metadata, later).await.unwrap(),
        Saved::Gone
    );
    assert_eq!(
        store
            .touch(&key, later + Duration::hours(1), expiring.expiry, later)
            .await
            .unwrap(),
        Saved::Gone
    );
    row_is_untouched(&key).await;
    assert!(store.create(&key, &record(later), later).await.unwrap());
}

/// A store that records every `delete_expired` call: the limit asked for and how many rows it
/// deleted.
#[derive(Clone)]
pub struct SweepLog<S> {
    pub store: S,
    pub sweeps: Arc<std::sync::Mutex<Vec<(usize, usize)>>>,
}

forwarding_store!(SweepLog, |this, now, limit| {
    let deleted = this.store.delete_expired(now, limit).await?;
    this.sweeps.lock().unwrap().push((limit, deleted));
    Ok(deleted)
});

/// 25 sessions expiring in 30 s and one live for 2 h; the cleanup task, on a clock a minute
/// later and in batches of 10, deletes the 25 (counted by `rows`) in batches of 10, 10 and 5,
/// and leaves the live one.
pub async fn the_cleanup_task_deletes_expired_rows<S>(store: S, rows: impl AsyncFn() -> i64)
where
    S: SessionStore + Clone + Send + Sync + 'static,
{
    use crate::conformance::contract::{key, record};
    let now = crate::conformance::contract::now();
    for _ in 0..25 {
        let mut expiring = record(now);
        expiring.idle_deadline = now + Duration::seconds(30);
        assert!(store.create(&key(), &expiring, now).await.unwrap());
    }
    let live = key();
    let mut long = record(now);
    long.idle_deadline = now + Duration::hours(2);
    assert!(store.create(&live, &long, now).await.unwrap());
    assert_eq!(rows().await, 26);

    let logged = SweepLog {
        store: store.clone(),
        sweeps: Arc::default(),
    };
    let task = spawn_cleanup_with_clock(
        logged.clone(),
        CleanupConfig::default()
            .period(StdDuration::from_millis(50))
            .batch(10),
        Arc::new(ManualClock::new(now + Duration::minutes(1))),
    );
    let mut remaining = rows().await;
    for _ in 0..100 {
        if remaining == 1 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
        remaining = rows().await;
    }
    task.stop().await;
    assert_eq!(remaining, 1, "expired rows left behind");
    assert!(
        store
            .load(&live, now + Duration::minutes(1))
            .await
            .unwrap()
            .is_some()
    );
    // Each sweep asked for the configured batch and the store deleted no more: 10, 10, then the
    // last 5 (later sweeps find nothing).
    let sweeps = logged.sweeps.lock().unwrap().clone();
    assert!(sweeps.iter().all(|&(limit, _)| limit == 10), "{sweeps:?}");
    let deleted: Vec<usize> = sweeps.iter().map(|&(_, n)| n).filter(|&n| n > 0).collect();
    assert_eq!(deleted, [10, 10, 5], "{sweeps:?}");
}

/// A row written by a newer version of the crate (a rolling upgrade) reads as no session, and no
/// write of this version changes it: a save (with values or only metadata), a touch and a rename
/// answer "gone", and the row is left as it was. `make_newer` raises the row's format version
/// with SQL; `dump` reads the whole row back as text.
pub async fn a_newer_row_is_neither_read_nor_written<S: SessionStore>(
    store: S,
    make_newer: impl AsyncFn(&SessionKey),
    dump: impl AsyncFn(&SessionKey) -> String,
) {
    let now =
        OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    let key = SessionId::generate().unwrap().key();
    let mut record = Record::new(
        now,
        now + Duration::hours(1),
        None,
        Expiry::OnInactivity(Duration::hours(1)),
    );
    record.data.insert("kept".into(), serde_json::json!(1));
    assert!(store.create(&key, &record, now).await.unwrap());
    make_newer(&key).await;
    let before = dump(&key).await;
    assert_eq!(store.load(&key, now).await.unwrap(), None);
    let later = now + Duration::hours(2);
    let mut values = ChangeSet::default();
    values.set.insert("x".into(), serde_json::json!(1));
    let mut metadata = ChangeSet::default();
    metadata.idle_deadline = Some(later);
    for changes in [&values, &metadata] {
        assert_eq!(store.save(&key, changes, now).await.unwrap(), Saved::Gone);
    }
    assert_eq!(
        store.touch(&key, later, record.expiry, now).await.unwrap(),
        Saved::Gone
    );
    let to = SessionId::generate().unwrap().key();
    assert_eq!(
        store.rename(&key, &to, &values, now).await.unwrap(),
        Renamed::Gone
    );
    assert_eq!(store.load(&to, now).await.unwrap(), None);
    assert_eq!(dump(&key).await, before, "the row was written");
}
