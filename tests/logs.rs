//! Log events: what happened is logged, session IDs and store keys never are (SECURITY.md 29),
//! in the layer's own lines and in those of the stores (SQLite, PostgreSQL and Redis on a damaged
//! record).
//!
//! In its own test binary because it installs a global subscriber.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod conformance;
#[cfg(feature = "redis-store")]
mod support_redis;
#[cfg(feature = "postgres-store")]
mod support_sql;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use conformance::harness;
use tower::ServiceExt;
use tower_satchel::{MemoryStore, Session, SessionId, SessionLayer};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_name_events_but_never_the_session_id() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let app = harness::default_app(tower_satchel::IntoBackend::into_backend(MemoryStore::new()));
    let token = app.start().await;
    let rotated = app.get("/cycle", Some(&token)).await.expect_token();
    app.get("/read", Some(&token)).await; // unknown now
    app.get("/read", Some("garbage")).await;
    app.get("/destroy", Some(&rotated)).await;
    // A save that finds its session ended by another request says so.
    let ended = app.start().await;
    let late = {
        let (app, token) = (app.clone(), ended.clone());
        tokio::spawn(async move { app.get("/wait-save/late", Some(&token)).await })
    };
    app.signals.loaded.notified().await;
    app.get("/destroy", Some(&ended)).await;
    app.signals.go.notify_one();
    assert_eq!(late.await.unwrap().body, "Ended");
    // A handle kept past its response: the change it tries is ignored, and said so.
    let kept: Arc<Mutex<Option<Session>>> = Arc::default();
    let slot = kept.clone();
    let router = Router::new()
        .route(
            "/",
            get(move |session: Session| async move {
                session.insert("x", 1).unwrap();
                *slot.lock().unwrap() = Some(session);
            }),
        )
        .layer(SessionLayer::new(MemoryStore::new()));
    router
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    kept.lock().unwrap().take().unwrap().destroy();
    // The cookie store's rotation and destruction are logged too, with what they cannot do.
    #[cfg(feature = "cookie-store")]
    let sealed = {
        let store = tower_satchel::CookieStore::new(tower_satchel::Key::generate().unwrap());
        let app = harness::default_app(tower_satchel::IntoBackend::into_backend(store));
        let sealed = app.start().await;
        let cycled = app.get("/cycle", Some(&sealed)).await.expect_token();
        app.get("/destroy", Some(&cycled)).await;
        [
            "sealed session cycled; a copy of the old cookie stays valid until its deadline",
            "sealed session destroyed; a copy of its cookie stays valid until its deadline",
        ]
    };
    #[cfg(not(feature = "cookie-store"))]
    let sealed: [&str; 0] = [];
    // A store's own lines name the session by its tag too, on a damaged record: each adds the
    // session's token and the event it logs.
    #[allow(unused_mut)] // without a store feature, nothing is added
    let mut damaged: Vec<(String, &str)> = Vec::new();
    // SQLite, on a row whose data is not JSON.
    #[cfg(feature = "sqlite-store")]
    {
        let dir = std::env::temp_dir().join(format!("satchel-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sessions.sqlite3");
        let store = tower_satchel::SqliteStore::connect(path.to_str().unwrap())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let app = harness::default_app(tower_satchel::IntoBackend::into_backend(store.clone()));
        let token = app.start().await;
        sqlx::query("UPDATE tower_satchel_sessions SET data = 'not json'")
            .execute(store.pool())
            .await
            .unwrap();
        app.get("/read", Some(&token)).await;
        drop((app, store));
        let _ = std::fs::remove_dir_all(&dir);
        damaged.push((
            token,
            "tower_satchel::store::sql::sqlite: unreadable session row; treated as no session",
        ));
    }
    // Redis, on a record with a field it cannot read.
    #[cfg(feature = "redis-store")]
    {
        let url = support_redis::single_url();
        let prefix = support_redis::unique_prefix();
        let store = tower_satchel::RedisStore::open(&url)
            .await
            .unwrap()
            .with_prefix(&prefix)
            .unwrap();
        let app = harness::default_app(tower_satchel::IntoBackend::into_backend(store));
        let token = app.start().await;
        let key = SessionId::parse(&token).unwrap().key().to_hex();
        let mut conn = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(format!("{prefix}s:{{{key}}}"))
            .arg("m")
            .arg("not a record")
            .query_async(&mut conn)
            .await
            .unwrap();
        app.get("/read", Some(&token)).await;
        damaged.push((
            token,
            "tower_satchel::store::redis: unreadable session record in Redis; treated as no session",
        ));
    }
    // PostgreSQL, on a row whose format version is impossible.
    #[cfg(feature = "postgres-store")]
    {
        use support_sql::pg;
        let schema = support_sql::unique("satchel_logs");
        let _cleanup = pg::drop_schema_later(schema.clone());
        let store = tower_satchel::PostgresStore::new(pg::pool(2).await)
            .with_schema(&schema)
            .unwrap();
        store.migrate().await.unwrap();
        let app = harness::default_app(tower_satchel::IntoBackend::into_backend(store.clone()));
        let token = app.start().await;
        let sql = format!("UPDATE \"{schema}\".tower_satchel_sessions SET version = -1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(store.pool())
            .await
            .unwrap();
        app.get("/read", Some(&token)).await;
        damaged.push((
            token,
            "tower_satchel::store::sql::postgres: unreadable session row; treated as no session",
        ));
    }

    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    for needle in [
        "session ID cycled",
        "unknown or expired session",
        "malformed session token",
        "session destroyed",
        "WARN tower_satchel::session: session changed after its response; the change is ignored",
        "change=\"destroy\"",
        "session ended during the request; its changes were dropped",
    ]
    .into_iter()
    .chain(sealed)
    .chain(damaged.iter().map(|(_, event)| *event))
    {
        assert!(logs.contains(needle), "missing event {needle:?} in\n{logs}");
    }
    // Each store's own line names its session by the tag (the layer's lines do too, so the tag
    // is looked for in that line).
    for (secret, event) in &damaged {
        let tag = SessionId::parse(secret).unwrap().log_tag().to_string();
        assert!(
            logs.lines()
                .any(|line| line.contains(event) && line.contains(&tag)),
            "{event:?} does not name its session by its tag in\n{logs}"
        );
    }
    for secret in [&token, &rotated, &ended]
        .into_iter()
        .chain(damaged.iter().map(|(token, _)| token))
    {
        assert!(
            !logs.contains(secret.as_str()),
            "a session ID leaked into the logs"
        );
        let key = SessionId::parse(secret).unwrap().key().to_hex();
        assert!(!logs.contains(&key), "a store key leaked into the logs");
        // Nor a piece of it as long as a tag (a tag cut from the key would pass the check above).
        for start in 0..=key.len() - 12 {
            assert!(
                !logs.contains(&key[start..start + 12]),
                "a piece of a store key in the logs"
            );
        }
        // The tag that is logged is the keyed one.
        let tag = SessionId::parse(secret).unwrap().log_tag().to_string();
        assert!(logs.contains(&tag), "events name the session by its tag");
    }
}
