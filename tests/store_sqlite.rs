//! The SQLite store: the conformance suite against SQLite files, plus concurrency, two pools on
//! one file, a missing table, persistence across reopening, a full disk, a write lock held
//! elsewhere, reads that fail, what the rows hold, and rows damaged every which way (fuzzed).
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
use sqlx::Connection as _;
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

/// The database file and its `-wal` and `-shm` files hold every session: private to the app's
/// user (`0600`), and a database file every user may write to (planted ahead) is refused.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_files_are_private_and_a_world_writable_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, _cleanup) = lite::temp_dir();
    let path = dir.join("private.db");
    let store = SqliteStore::connect(path.to_str().unwrap()).await.unwrap();
    store.migrate().await.unwrap();
    let now = now();
    let key = conformance::contract::key();
    assert!(
        store
            .create(&key, &conformance::contract::record(now), now)
            .await
            .unwrap()
    );
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{file}: {mode:o}");
    }
    drop(store);

    let planted = dir.join("planted.db");
    std::fs::write(&planted, b"").unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
    let error = SqliteStore::connect(planted.to_str().unwrap())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Config);
    assert!(
        error.to_string().contains("writable by every user"),
        "{error}"
    );
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
        // Encoded, or a memory file system: caught on the file SQLite opened.
        "sqlite://%3Amemory%3A",
        "sqlite:%3Amemory%3A",
        "sqlite:sessions-memdb.db?vfs=memdb",
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

/// SECURITY.md 28 when reading fails: the session table renamed, or a column it reads renamed, by
/// another connection (an operator's botched migration). A load is then an error, never "no
/// session": a request of a live session, even one that only reads (`/keys`, where an empty
/// session would answer 200 and write nothing), gets an error response with the store error
/// and no `Set-Cookie` at all (no fresh session, no removal of the real one). Once the schema
/// is put back, the same cookie's session is there with its data, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_read_gives_error_responses_then_recovers() {
    let store = lite::store().await;
    let breakages = [
        (
            "ALTER TABLE tower_satchel_sessions RENAME TO moved_away",
            "ALTER TABLE moved_away RENAME TO tower_satchel_sessions",
        ),
        (
            "ALTER TABLE tower_satchel_sessions RENAME COLUMN data TO moved_away",
            "ALTER TABLE tower_satchel_sessions RENAME COLUMN moved_away TO data",
        ),
    ]
    .map(|(a, b)| (a.to_owned(), b.to_owned()));
    // Another connection, as another process would.
    let mut other = sqlx::SqliteConnection::connect_with(&store.pool().connect_options())
        .await
        .unwrap();
    support_sql::failing_reads_give_error_responses_then_recover(
        &*store,
        &breakages,
        async |sql: &str| {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut other)
                .await
                .unwrap();
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Damaged rows, fuzzed (SECURITY.md 27)

/// A value of any of SQLite's storage classes, as written into a column by hand.
#[derive(Clone, Debug)]
enum Cell {
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Null,
}

const COLUMNS: [&str; 7] = [
    "version",
    "data",
    "created_at",
    "idle_deadline",
    "absolute_deadline",
    "expiry",
    "owner",
];

/// The microseconds of `time`'s first and last instants (years -9999 and 9999): the time
/// columns' range.
fn time_range_micros() -> (i64, i64) {
    let micros = |date, time| {
        let at = time::PrimitiveDateTime::new(date, time).assume_utc();
        i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap()
    };
    (
        micros(time::Date::MIN, time::Time::MIDNIGHT),
        micros(time::Date::MAX, time::Time::MAX),
    )
}

fn from_micros(us: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok()
}

/// Numbers as JSON or SQLite text may spell them: in and out of `i64` and `f64`, NaN-ish words.
fn number_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        (-5i64..5).prop_map(|n| n.to_string()),
        proptest::sample::select(vec![
            "1e400",
            "-1e400",
            "18446744073709551616",
            "-9223372036854775809",
            "1.5",
            "-0",
            "NaN",
            "inf",
            "-Infinity",
            "0x10",
            " 12 ",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Text meant for the JSON columns (`data`, `expiry`) or mistaken for a number: policies with
/// odd numbers, objects with numbers out of range, nesting around serde_json's depth limit, JSON
/// of another shape, broken JSON, and any text at all.
fn text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        number_text().prop_map(|n| format!(r#"{{"OnInactivity":{n}}}"#)),
        number_text().prop_map(|n| format!(r#"{{"AtDateTime":{n}}}"#)),
        number_text().prop_map(|n| format!(r#"{{"Someday":{n}}}"#)),
        number_text().prop_map(|n| format!(r#"{{"k":{n},"s":[{n},"x"]}}"#)),
        number_text(),
        (100usize..160).prop_map(|d| format!(r#"{{"deep":{}{}}}"#, "[".repeat(d), "]".repeat(d))),
        proptest::sample::select(vec![
            r#""OnSessionEnd""#,
            r#"{"OnSessionEnd":null}"#,
            "{}",
            "[]",
            "null",
            "{",
            r#"{"a":1,}"#,
            "",
        ])
        .prop_map(str::to_owned),
        ".{0,24}",
    ]
}

/// Any value of any storage class.
fn cell() -> impl proptest::strategy::Strategy<Value = Cell> {
    use proptest::prelude::*;
    prop_oneof![
        2 => any::<i64>().prop_map(Cell::Int),
        2 => any::<f64>().prop_map(Cell::Real),
        3 => text().prop_map(Cell::Text),
        2 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(Cell::Blob),
        1 => Just(Cell::Null),
    ]
}

/// One column and what to write into it: either a value of the column's own storage class at
/// the edges of what the store reads (format versions around this crate's and around multiples
/// of 2^32, times around the ends of `time`'s years, at the ends of `i64` and an hour or so
/// either side of now, JSON text for `data` and `expiry`), or anything at all in any column.
fn damage() -> impl proptest::strategy::Strategy<Value = (&'static str, Cell)> {
    use proptest::prelude::*;
    let now = micros(now());
    let (first, last) = time_range_micros();
    let version = i64::from(tower_satchel::RECORD_VERSION);
    let versions = prop_oneof![
        -2..=version + 2,
        (-2i64..=2, -2i64..=2).prop_map(|(k, d)| (k << 32) + d),
    ];
    let times = prop_oneof![
        first - 2..=first + 2,
        last - 2..=last + 2,
        proptest::sample::select(vec![i64::MIN, i64::MIN + 1, i64::MAX - 1, i64::MAX]),
        now - 10_000_000_000..now + 10_000_000_000,
    ];
    let time_columns =
        proptest::sample::select(vec!["created_at", "idle_deadline", "absolute_deadline"]);
    prop_oneof![
        1 => versions.prop_map(|v| ("version", Cell::Int(v))),
        1 => (time_columns, times).prop_map(|(column, t)| (column, Cell::Int(t))),
        1 => (proptest::sample::select(vec!["data", "expiry"]), text())
            .prop_map(|(column, t)| (column, Cell::Text(t))),
        2 => (proptest::sample::select(COLUMNS.to_vec()), cell()),
    ]
}

fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap()
}

/// What a damaged row holds, read with SQL: each column's value where its storage class is the
/// one the store writes, and whether the row is live.
#[derive(Debug)]
struct Stored {
    version: Option<i64>,
    data: Option<String>,
    expiry: Option<String>,
    created_at: Option<i64>,
    idle_deadline: Option<i64>,
    absolute_type: String,
    absolute_deadline: Option<i64>,
    owner_type: String,
    owner: Option<String>,
    expires_at: Option<i64>,
    live: bool,
}

impl Stored {
    async fn read(store: &SqliteStore, key: &tower_satchel::SessionKey, now: i64) -> Self {
        use sqlx::Row as _;
        let row = sqlx::query(
            "SELECT \
             CASE WHEN typeof(version) = 'integer' THEN version END AS version, \
             CASE WHEN typeof(data) = 'text' THEN data END AS data, \
             CASE WHEN typeof(expiry) = 'text' THEN expiry END AS expiry, \
             CASE WHEN typeof(created_at) = 'integer' THEN created_at END AS created_at, \
             CASE WHEN typeof(idle_deadline) = 'integer' THEN idle_deadline END \
                 AS idle_deadline, \
             typeof(absolute_deadline) AS absolute_type, \
             CASE WHEN typeof(absolute_deadline) = 'integer' THEN absolute_deadline END \
                 AS absolute_deadline, \
             typeof(owner) AS owner_type, \
             CASE WHEN typeof(owner) = 'text' THEN owner END AS owner, \
             CASE WHEN typeof(expires_at) = 'integer' THEN expires_at END AS expires_at, \
             expires_at > ?2 AS live \
             FROM tower_satchel_sessions WHERE id = ?1",
        )
        .bind(key.as_bytes().as_slice())
        .bind(now)
        .fetch_one(store.pool())
        .await
        .unwrap();
        Self {
            version: row.get("version"),
            data: row.get("data"),
            expiry: row.get("expiry"),
            created_at: row.get("created_at"),
            idle_deadline: row.get("idle_deadline"),
            absolute_type: row.get("absolute_type"),
            absolute_deadline: row.get("absolute_deadline"),
            owner_type: row.get("owner_type"),
            owner: row.get("owner"),
            expires_at: row.get("expires_at"),
            live: row.get("live"),
        }
    }

    /// The record the row holds when every column holds a value of its type, in range, and the
    /// record format is one this crate reads; `None` otherwise: the store's contract reads such
    /// a row as no session.
    fn record(&self) -> Option<tower_satchel::Record> {
        let version = u32::try_from(self.version?)
            .ok()
            .filter(|&v| v <= tower_satchel::RECORD_VERSION)?;
        let data = serde_json::from_str(self.data.as_deref()?).ok()?;
        let expiry = serde_json::from_str(self.expiry.as_deref()?).ok()?;
        let absolute = match self.absolute_type.as_str() {
            "null" => None,
            "integer" => Some(from_micros(self.absolute_deadline?)?),
            _ => return None,
        };
        let owner = match self.owner_type.as_str() {
            "null" => None,
            "text" => Some(self.owner.clone()?),
            _ => return None,
        };
        let mut record = tower_satchel::Record::new(
            from_micros(self.created_at?)?,
            from_micros(self.idle_deadline?)?,
            absolute,
            expiry,
        );
        record.version = version;
        record.data = data;
        record.owner = owner;
        Some(record)
    }

    /// The owner listing's entry for the row, if any: it reads only the times.
    fn listed(&self) -> Option<(OffsetDateTime, OffsetDateTime)> {
        if !self.live || self.owner.as_deref() != Some("mallory") {
            return None;
        }
        Some((
            from_micros(self.created_at?)?,
            from_micros(self.expires_at?)?,
        ))
    }
}

/// Writes `damage` over a fresh session row, next to a good one of the same owner, and checks
/// every store operation that decodes rows against what the row then holds (read back in SQL):
/// none panics or fails; `load` gives the record exactly when each column holds a value of its
/// type in range (else no session, not an error that would answer each request of the cookie
/// with a 500), a data save applies to it exactly then (else `Gone`, with the row left as it
/// was), the owner listing shows it exactly when its times are readable and skips it otherwise,
/// and the cleanup deletes it exactly when it has expired. The good row is unaffected.
async fn check_damaged_row(damage: &[(&str, Cell)]) {
    let store = lite::store().await;
    let now = now();
    let (good, damaged) = (conformance::contract::key(), conformance::contract::key());
    let record = conformance::contract::owned(now, "mallory");
    for key in [&good, &damaged] {
        assert!(store.create(key, &record, now).await.unwrap());
    }
    for (column, cell) in damage {
        let sql = format!("UPDATE tower_satchel_sessions SET {column} = ?1 WHERE id = ?2");
        let query = sqlx::query(sqlx::AssertSqlSafe(sql));
        let query = match cell {
            Cell::Int(n) => query.bind(*n),
            Cell::Real(f) => query.bind(*f),
            Cell::Text(t) => query.bind(t.clone()),
            Cell::Blob(b) => query.bind(b.clone()),
            Cell::Null => query.bind(None::<i64>),
        };
        if let Err(e) = query
            .bind(damaged.as_bytes().as_slice())
            .execute(store.pool())
            .await
        {
            // NULL (NaN binds as NULL) where the schema forbids it: the row keeps its value.
            assert!(
                e.to_string().contains("NOT NULL"),
                "{column} = {cell:?}: {e}"
            );
        }
    }
    let stored = Stored::read(&store, &damaged, micros(now)).await;
    let expected = stored.record().filter(|_| stored.live);

    assert_eq!(
        store.load(&damaged, now).await.unwrap(),
        expected,
        "{stored:?}"
    );
    assert_eq!(store.load(&good, now).await.unwrap(), Some(record.clone()));

    let mut listed: Vec<_> = store
        .list_owner("mallory", now)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.key, s.created_at, s.deadline))
        .collect();
    listed.sort_by_key(|(key, ..)| key.to_hex());
    let good_deadline = record.idle_deadline.min(record.absolute_deadline.unwrap());
    let mut want = vec![(good, record.created_at, good_deadline)];
    want.extend(stored.listed().map(|(c, d)| (damaged, c, d)));
    want.sort_by_key(|(key, ..)| key.to_hex());
    assert_eq!(listed, want, "{stored:?}");

    let dump = async || -> String {
        sqlx::query_scalar(
            "SELECT quote(version) || quote(data) || quote(created_at) || quote(idle_deadline) \
             || quote(absolute_deadline) || quote(expiry) || quote(owner) \
             FROM tower_satchel_sessions WHERE id = ?1",
        )
        .bind(damaged.as_bytes().as_slice())
        .fetch_one(store.pool())
        .await
        .unwrap()
    };
    let before = dump().await;
    let mut probe = ChangeSet::default();
    probe.set.insert("probe".into(), json!(true));
    let saved = store.save(&damaged, &probe, now).await.unwrap();
    if let Some(mut expected) = expected {
        assert_eq!(saved, Saved::Applied, "{stored:?}");
        expected.data.insert("probe".into(), json!(true));
        assert_eq!(store.load(&damaged, now).await.unwrap(), Some(expected));
    } else {
        assert_eq!(saved, Saved::Gone, "{stored:?}");
        assert_eq!(dump().await, before, "a save wrote an unreadable row");
    }

    let deleted = store.delete_expired(now, 100).await.unwrap();
    assert_eq!(deleted, usize::from(!stored.live), "{stored:?}");
    assert_eq!(store.load(&good, now).await.unwrap(), Some(record));
    assert_eq!(count(&store).await, 2 - i64::from(!stored.live));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn damaged_rows_never_panic_and_read_as_no_session(
        damage in proptest::collection::vec(damage(), 1..=3)
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(check_damaged_row(&damage));
    }
}
