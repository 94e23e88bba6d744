//! The SQLite store: the conformance suite against SQLite files, plus concurrency, two pools on
//! one file, a missing table, persistence across reopening, a full disk, a write lock held
//! elsewhere, and what the rows hold.
//!
//! Needs nothing but a writable temporary folder (SQLite is compiled in); each store gets its own
//! file, removed afterwards.
#![cfg(feature = "sqlite-store")]
#![allow(clippy::unwrap_used)]

#[macro_use]
mod conformance;
mod support_disk;
mod support_sql;

use std::time::Duration as StdDuration;

use axum::http::StatusCode;
use serde_json::json;
use support_sql::{app, lite};
use time::{Duration, OffsetDateTime};
use tower_satchel::{
    ChangeSet, Saved, SessionErrorKind, SessionId, SessionStore, SqliteStore, StoreErrorKind,
};

mod sqlite {
    server_store_conformance!(|| async { crate::support_sql::lite::store().await });
}

fn now() -> OffsetDateTime {
    conformance::contract::now()
}

async fn count(store: &SqliteStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tower_satchel_sessions")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_connections_go_from_operation_to_operation() {
    let store = lite::store().await;
    support_sql::connections_go_from_operation_to_operation(store.store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_still_gets_pool_connections_while_the_store_is_saturated() {
    let store = lite::store().await;
    let pool = store.pool().clone();
    support_sql::the_pool_still_serves_the_app_while_the_store_is_saturated(
        store.store.clone(),
        async || drop(pool.acquire().await.unwrap()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_writes_nothing() {
    let store = lite::store().await;
    support_sql::an_unknown_id_writes_nothing(store.store.clone(), async || count(&store).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_of_one_session_keep_every_key() {
    let store = lite::store().await;
    support_sql::hundred_concurrent_requests_keep_every_key(app(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_app_instances_with_their_own_pools_share_one_file() {
    let (dir, _cleanup) = lite::temp_dir();
    let path = dir.join("shared.sqlite3");
    let path = path.to_str().unwrap();
    let (a, b, admin) = (
        SqliteStore::connect(path).await.unwrap(),
        SqliteStore::connect(&format!("sqlite://{path}"))
            .await
            .unwrap(),
        SqliteStore::connect(path).await.unwrap(),
    );
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    support_sql::two_instances_share_one_database(a, b, admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_reopening_the_file() {
    let (dir, _cleanup) = lite::temp_dir();
    let path = dir.join("restart.sqlite3");
    let path = path.to_str().unwrap();
    let store = SqliteStore::connect(path).await.unwrap();
    store.migrate().await.unwrap();
    let first = app(store.clone());
    let token = first.get("/incr", None).await.token.unwrap();
    assert_eq!(first.get("/incr", Some(&token)).await.body, "2");
    drop(first);
    store.pool().close().await;

    let reopened = SqliteStore::connect(path).await.unwrap();
    reopened.migrate().await.unwrap();
    assert_eq!(app(reopened).get("/incr", Some(&token)).await.body, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_a_config_error_that_names_migrate() {
    let (dir, _cleanup) = lite::temp_dir();
    let store = SqliteStore::connect(dir.join("empty.sqlite3").to_str().unwrap())
        .await
        .unwrap();
    support_sql::a_missing_table_is_a_config_error(store.clone(), "SqliteStore", async || {
        store.migrate().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_hold_the_hashed_id_and_never_the_session_id() {
    let store = lite::store().await;
    let app = app(store.clone());
    let token = app.get("/incr", None).await.token.unwrap();
    let key = SessionId::parse(&token).unwrap().key();
    let rows: Vec<(Vec<u8>, String)> = sqlx::query_as(
        "SELECT id, data || expiry || coalesce(owner, '') FROM tower_satchel_sessions",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, key.as_bytes().to_vec());
    assert!(!rows[0].1.contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_after_expiry_does_not_revive_the_row() {
    let store = lite::store().await;
    let now = now();
    support_sql::writes_after_expiry_are_refused(&store, now, async |key| {
        // Still expired, and neither "x" nor the owner was written.
        let (idle, has_x, owner): (i64, bool, Option<String>) = sqlx::query_as(
            "SELECT idle_deadline, json_extract(data, '$.x') IS NOT NULL, owner \
             FROM tower_satchel_sessions WHERE id = ?1",
        )
        .bind(key.as_bytes().as_slice())
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(
            idle,
            (now + Duration::seconds(10)).unix_timestamp() * 1_000_000
        );
        assert!(!has_x);
        assert_eq!(owner, None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_read_as_no_session() {
    let store = lite::store().await;
    let now = now();
    let key = conformance::contract::key();
    assert!(
        store
            .create(&key, &conformance::contract::record(now), now)
            .await
            .unwrap()
    );
    sqlx::query("UPDATE tower_satchel_sessions SET data = '[not json'")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(store.load(&key, now).await.unwrap(), None);
    let mut changes = ChangeSet::default();
    changes.set.insert("x".into(), json!(1));
    assert_eq!(store.save(&key, &changes, now).await.unwrap(), Saved::Gone);
    // A value of another type than the column's (SQLite keeps whatever it is given): no
    // session too, not an error that would answer every request of its cookie with a 500.
    for damage in [
        "version = 'one'",
        "idle_deadline = 'later'",
        "created_at = x'00'",
        "data = x'7b7d'",
    ] {
        let key = conformance::contract::key();
        assert!(
            store
                .create(&key, &conformance::contract::record(now), now)
                .await
                .unwrap()
        );
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE tower_satchel_sessions SET {damage} WHERE id = ?1"
        )))
        .bind(key.as_bytes().as_slice())
        .execute(store.pool())
        .await
        .unwrap();
        assert_eq!(store.load(&key, now).await.unwrap(), None, "{damage}");
    }
    // Nor does such a row fail its owner's whole listing: it is left out.
    let listed = conformance::contract::key();
    let owned = conformance::contract::owned(now, "mallory");
    let damaged = conformance::contract::key();
    for key in [&listed, &damaged] {
        assert!(store.create(key, &owned, now).await.unwrap());
    }
    sqlx::query("UPDATE tower_satchel_sessions SET created_at = 'earlier' WHERE id = ?1")
        .bind(damaged.as_bytes().as_slice())
        .execute(store.pool())
        .await
        .unwrap();
    let sessions = store.list_owner("mallory", now).await.unwrap();
    assert_eq!(sessions.iter().map(|s| s.key).collect::<Vec<_>>(), [listed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_row_is_neither_read_nor_written() {
    let store = lite::store().await;
    let pool = store.pool().clone();
    support_sql::a_newer_row_is_neither_read_nor_written(
        store.store.clone(),
        async |key| {
            sqlx::query("UPDATE tower_satchel_sessions SET version = version + 1 WHERE id = ?1")
                .bind(key.as_bytes().as_slice())
                .execute(&pool)
                .await
                .unwrap();
        },
        async |key| {
            sqlx::query_scalar(
                "SELECT version || data || idle_deadline || expiry || coalesce(owner, '') \
                 FROM tower_satchel_sessions WHERE id = ?1",
            )
            .bind(key.as_bytes().as_slice())
            .fetch_one(&pool)
            .await
            .unwrap()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_task_deletes_expired_rows_in_batches() {
    let store = lite::store().await;
    support_sql::the_cleanup_task_deletes_expired_rows(store.store.clone(), async || {
        count(&store).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_takes_paths_and_sqlite_urls_only() {
    let (dir, _cleanup) = lite::temp_dir();
    let url = format!("sqlite://{}?mode=rwc", dir.join("url.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    // No ping before each use: a round trip to the connection's thread that guards nothing.
    assert!(!store.pool().options().get_test_before_acquire());
    store.migrate().await.unwrap();
    assert!(dir.join("url.db").exists());
    let custom = store.with_table("web_sessions").unwrap();
    custom.migrate().await.unwrap();
    let now = now();
    let key = conformance::contract::key();
    assert!(
        custom
            .create(&key, &conformance::contract::record(now), now)
            .await
            .unwrap()
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM web_sessions")
        .fetch_one(custom.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(format!("{custom:?}").contains("web_sessions"));

    let error = SqliteStore::connect("postgres://localhost/db")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Config);
    for memory in [
        ":memory:",
        "sqlite::memory:",
        "sqlite://:memory:",
        "sqlite://?mode=memory",
        "file::memory:?cache=shared",
        "file:sessions?mode=memory&cache=shared",
        "sqlite:file::memory:",
        "sqlite:file::memory:?cache=shared",
        "sqlite:",
        "sqlite://",
        "",
    ] {
        let error = SqliteStore::connect(memory).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Config, "{memory}");
        assert!(
            error.to_string().contains("in-memory or temporary"),
            "{error}"
        );
    }
    assert!(custom.clone().with_table("x; DROP TABLE y").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_error_responses_and_loses_nothing() {
    let (dir, _cleanup) = lite::temp_dir();
    let Some(disk) = support_disk::SmallDisk::mount(&dir, "512k") else {
        support_disk::skip_without_root("mounting a small tmpfs");
        return;
    };
    let store = SqliteStore::connect(dir.join("sessions.sqlite3").to_str().unwrap())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let app = app(store.clone());
    let first = app.get("/incr", None).await;
    assert_eq!(first.body, "1");
    let token = first.token.unwrap();
    let filler = disk.fill();

    // Every write fails with a store error and no cookie, whatever SQLite had to grow.
    for _ in 0..3 {
        let resp = app
            .get("/set/a-longer-key-that-needs-room", Some(&token))
            .await;
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "a save");
        assert!(
            resp.error
                .as_ref()
                .is_some_and(|e| e.kind() == SessionErrorKind::Store)
        );
        let resp = app.get("/incr", None).await;
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "a create");
        assert!(resp.token.is_none(), "no cookie for a session not stored");
    }
    // Directly: a backend error.
    let now = now();
    let key = SessionId::generate().unwrap().key();
    let err = store
        .create(&key, &conformance::contract::record(now), now)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Backend);
    // A touch and a save of metadata alone (one `UPDATE … RETURNING` each) fail too, not
    // answer that they were applied.
    let stored = SessionId::parse(&token).unwrap().key();
    let policy = store.load(&stored, now).await.unwrap().unwrap().expiry;
    let touched = store
        .touch(&stored, now + Duration::hours(1), policy, now)
        .await;
    assert_eq!(touched.unwrap_err().kind(), StoreErrorKind::Backend);
    let mut metadata = ChangeSet::default();
    metadata.owner = Some(Some("alice".into()));
    let saved = store.save(&stored, &metadata, now).await;
    assert_eq!(saved.unwrap_err().kind(), StoreErrorKind::Backend);
    // Reading still works and shows the session as it was.
    assert_eq!(app.get("/keys", Some(&token)).await.body, "n");

    // Space again: the session was neither emptied nor lost, and every later write succeeds (a
    // connection whose transaction failed is not reused: sqlx would refuse its next transaction).
    std::fs::remove_file(filler).unwrap();
    for n in 2..=25 {
        let resp = app.get("/incr", Some(&token)).await;
        assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
        assert_eq!(resp.body, n.to_string());
    }
    assert_eq!(
        app.get("/set/a-longer-key-that-needs-room", Some(&token))
            .await
            .status,
        StatusCode::OK
    );
    drop(store);
    drop(disk);
}

/// Another process holds the write lock (a backup, a long migration) for longer than the busy
/// timeout: writes fail with a store error once the timeout passes, reads go on (WAL mode), and
/// once the lock is released every write succeeds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_elsewhere_gives_error_responses_then_recovers() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let (dir, _cleanup) = lite::temp_dir();
    let path = dir.join("locked.sqlite3");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(StdDuration::from_millis(300));
    let pool = SqlitePoolOptions::new()
        .max_connections(3)
        .connect_with(options.clone())
        .await
        .unwrap();
    let store = SqliteStore::new(pool);
    store.migrate().await.unwrap();
    let app = app(store);
    let first = app.get("/incr", None).await;
    let token = first.token.unwrap();

    // Another connection, as another process would, takes the write lock and keeps it.
    let mut other = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
        .begin_with("BEGIN IMMEDIATE")
        .await
        .unwrap();
    sqlx::query("UPDATE tower_satchel_sessions SET owner = owner")
        .execute(&mut *other)
        .await
        .unwrap();
    for _ in 0..4 {
        let started = std::time::Instant::now();
        let resp = app.get("/incr", Some(&token)).await;
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "{resp:?}");
        assert!(
            resp.error
                .is_some_and(|e| e.kind() == SessionErrorKind::Store)
        );
        assert!(started.elapsed() < StdDuration::from_secs(5));
        let resp = app.get("/incr", None).await;
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "a create");
        assert!(resp.token.is_none());
    }
    // Reads are not blocked.
    assert_eq!(app.get("/keys", Some(&token)).await.body, "n");

    other.rollback().await.unwrap();
    for n in 2..=10 {
        assert_eq!(app.get("/incr", Some(&token)).await.body, n.to_string());
    }
}
