//! Log events: what happened is logged, session IDs and store keys never are (SECURITY.md 29),
//! in the layer's own lines and in those of the stores (SQLite, PostgreSQL and Redis on a damaged
//! record).
//!
//! In its own test binary because it installs a global subscriber, which every test here shares
//! (see [`captured`]).
#![allow(clippy::unwrap_used)]

#[macro_use]
mod conformance;
mod support_faulty;
#[cfg(feature = "redis-store")]
mod support_redis;
#[cfg(feature = "postgres-store")]
mod support_sql;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::http::StatusCode;
use axum::routing::get;
use conformance::harness;
use support_faulty::Faulty;
use time::Duration;
use tower::ServiceExt;
use tower_satchel::{IntoBackend, MemoryStore, Session, SessionId, SessionLayer};

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

/// Everything logged by the tests of this binary: the global subscriber, installed by the first
/// test to ask. Tests run in parallel, so each looks for its own sessions' lines.
fn captured() -> Buffer {
    static LOGS: OnceLock<Buffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buffer
    })
    .clone()
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// SECURITY.md 29, for the session whose token is `secret`: no line of `logs` holds the token,
/// its store key, or a piece of either as long as a tag (a tag cut from the key or the token would
/// pass a check for the whole), while some line names the session by its keyed tag.
fn assert_never_logged(logs: &str, secret: &str) {
    let id = SessionId::parse(secret).unwrap();
    let key = id.key().to_hex();
    for line in logs.lines() {
        assert!(!line.contains(secret), "a session ID in the line {line:?}");
        assert!(!line.contains(&key), "a store key in the line {line:?}");
        for whole in [secret, key.as_str()] {
            for start in 0..=whole.len() - 12 {
                let piece = &whole[start..start + 12];
                assert!(
                    !line.contains(piece),
                    "a piece ({piece}) of a session ID or store key in the line {line:?}"
                );
            }
        }
    }
    let tag = id.log_tag().to_string();
    assert!(logs.contains(&tag), "events name the session by its tag");
}

/// Asserts that `logs` has a line with `event` that names the session `secret` by its tag.
fn assert_event_names(logs: &str, event: &str, secret: &str) {
    let tag = SessionId::parse(secret).unwrap().log_tag().to_string();
    assert!(
        logs.lines()
            .any(|line| line.contains(event) && line.contains(&tag)),
        "no line {event:?} naming the session by its tag {tag} in\n{logs}"
    );
}

#[tokio::test]
async fn logs_name_events_but_never_the_session_id() {
    let buffer = captured();

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

    let logs = buffer.text();
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
        assert_event_names(&logs, event, secret);
    }
    for secret in [&token, &rotated, &ended]
        .into_iter()
        .chain(damaged.iter().map(|(token, _)| token))
    {
        assert_never_logged(&logs, secret);
    }
}

/// The layer's error lines for a failing store (`%error` beside the session) name the session by
/// its tag and carry neither its ID nor its key: on load, save, rotation, delete and touch, with
/// the store reached through boxed futures and as an `ImmediateStore`, and (with the file store)
/// errors that come from the file system.
#[tokio::test]
async fn store_failures_are_logged_by_tag_never_by_id() {
    let buffer = captured();
    // (the session's token, the event logged for it)
    let mut failed: Vec<(String, &str)> = Vec::new();
    for immediate in [false, true] {
        let store = Faulty {
            immediate,
            ..Faulty::default()
        };
        let app = harness::default_app(store.clone().into_backend());
        let fails = |resp: harness::Resp, what: &str| {
            assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "{what}");
        };

        let token = app.start().await;
        store.fail.store(true, Ordering::SeqCst);
        fails(app.get("/read", Some(&token)).await, "load");
        store.fail.store(false, Ordering::SeqCst);
        failed.push((token, "session store failed on load"));

        let token = app.start().await;
        store.fail_writes.store(true, Ordering::SeqCst);
        fails(app.get("/incr/n", Some(&token)).await, "save");
        fails(app.get("/destroy", Some(&token)).await, "delete");
        store.fail_writes.store(false, Ordering::SeqCst);
        failed.push((token.clone(), "session store failed on save"));
        failed.push((token, "session store failed on delete"));

        let token = app.start().await;
        store.fail_renames.store(1, Ordering::SeqCst);
        fails(app.get("/cycle", Some(&token)).await, "rotation");
        failed.push((token, "session store failed on rotation"));

        // A failed touch loses nothing: the request goes on, and the failure is logged.
        let token = app.start().await;
        app.clock.advance(Duration::hours(3)); // past 10 % of the 24 h window: a touch is due
        store.fail_touches.store(true, Ordering::SeqCst);
        assert_eq!(app.get("/get/n", Some(&token)).await.body, "1");
        store.fail_touches.store(false, Ordering::SeqCst);
        assert_eq!(store.calls().2, 1, "the touch was tried");
        failed.push((token, "session touch failed"));
    }
    // The file store: what stands in a session file's place, or in the place of its lock file
    // (`.locks/` and the key's first three hex digits), is a folder, which cannot be read or
    // locked, as root too.
    #[cfg(feature = "file-store")]
    {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("logs")
            .join(format!("file-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = tower_satchel::FileStore::new(&dir).unwrap();
        let app = harness::default_app(store.clone().into_backend());
        let in_place_of = |path: std::path::PathBuf| {
            assert!(path.is_file(), "{path:?}");
            std::fs::remove_file(&path).unwrap();
            std::fs::create_dir(&path).unwrap();
        };

        let token = app.start().await;
        in_place_of(store.path_of(&SessionId::parse(&token).unwrap().key()));
        assert_eq!(
            app.get("/read", Some(&token)).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        failed.push((token, "session store failed on load"));

        let token = app.start().await;
        let hex = SessionId::parse(&token).unwrap().key().to_hex();
        in_place_of(dir.join(".locks").join(&hex[..3]));
        for route in ["/incr/n", "/cycle", "/destroy"] {
            let resp = app.get(route, Some(&token)).await;
            assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "{route}");
        }
        app.clock.advance(Duration::hours(3));
        assert_eq!(app.get("/get/n", Some(&token)).await.body, "1");
        for event in [
            "session store failed on save",
            "session store failed on rotation",
            "session store failed on delete",
            "session touch failed",
        ] {
            failed.push((token.clone(), event));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    let logs = buffer.text();
    for (secret, event) in &failed {
        assert_event_names(&logs, event, secret);
        assert_never_logged(&logs, secret);
    }
}
