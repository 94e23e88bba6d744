//! The PostgreSQL store: the conformance suite against a real server, plus concurrency, two app
//! instances, a server restart, a frozen server, a full disk, a missing table, reads that fail,
//! unreadable rows, and what the rows hold.
//!
//! Needs a PostgreSQL server at `$DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! where the user may create schemas; each store gets its own schema, dropped afterwards. The
//! restart test starts a throwaway server of its own (see `restart_gives_error_responses_then_recovers`).
#![cfg(feature = "postgres-store")]
#![allow(clippy::unwrap_used, clippy::panic)]

#[macro_use]
mod conformance;
mod support_disk;
mod support_sql;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use support_sql::pg::table_of;
use support_sql::{app, pg, unique};
use time::{Duration, OffsetDateTime};
use tower_satchel::{
    ChangeSet, PostgresStore, Saved, SessionErrorKind, SessionId, SessionStore, StoreErrorKind,
};

mod postgres {
    server_store_conformance!(|| async { crate::support_sql::pg::store().await });
}

/// The same suite over a pool the store made itself, where connections are handed on between
/// operations under load.
mod postgres_connect {
    server_store_conformance!(|| async { crate::support_sql::pg::connected_store().await });
}

fn now() -> OffsetDateTime {
    conformance::contract::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_writes_nothing() {
    let store = pg::store().await;
    support_sql::an_unknown_id_writes_nothing(store.store.clone(), async || {
        pg::count_rows(&store).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_of_one_session_keep_every_key() {
    let store = pg::store().await;
    support_sql::hundred_concurrent_requests_keep_every_key(app(store)).await;
}

/// `migrate` is not cut off by the short `statement_timeout` of the store's connections: here it
/// waits a second for the migration lock another server holds, with a `statement_timeout` of
/// 250 ms on its pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_waits_past_the_statement_timeout() {
    let schema = unique("satchel_test");
    let _cleanup = pg::drop_schema_later(schema.clone());
    let url = pg::url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let short = format!("{url}{sep}options=-c%20statement_timeout%3D250");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&short)
        .await
        .unwrap();
    let store = PostgresStore::new(pool).with_schema(&schema).unwrap();
    // Another server's migration, holding the lock (the key `migrate` uses, "satchel1").
    let other = pg::pool(1).await;
    let mut held = other.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(0x7361_7463_6865_6c31_i64)
        .execute(&mut *held)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(StdDuration::from_secs(1)).await;
        held.rollback().await.unwrap();
    });
    store.migrate().await.unwrap();
    release.await.unwrap();
    let now = now();
    let key = conformance::contract::key();
    assert!(
        store
            .create(&key, &conformance::contract::record(now), now)
            .await
            .unwrap()
    );
}

/// A store without a schema of its own finds its table through `search_path`; `migrate` of a
/// table that lives further along the path than the first schema, with an index missing, adds
/// the index there. It used to create a new, empty table in the first schema, which then hid the
/// real one from every statement (everyone logged out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_completes_a_table_further_along_the_search_path() {
    let (first, second) = (unique("satchel_sp_a"), unique("satchel_sp_b"));
    let _drop_first = pg::drop_schema_later(first.clone());
    let _drop_second = pg::drop_schema_later(second.clone());
    let pool = pg::pool(2).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{first}\"")))
        .execute(&pool)
        .await
        .unwrap();
    let in_second = PostgresStore::connect(&pg::url())
        .await
        .unwrap()
        .with_schema(&second)
        .unwrap();
    in_second.migrate().await.unwrap();
    let now = now();
    let key = conformance::contract::key();
    assert!(
        in_second
            .create(&key, &conformance::contract::record(now), now)
            .await
            .unwrap()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP INDEX \"{second}\".\"tower_satchel_sessions_owner_idx\""
    )))
    .execute(&pool)
    .await
    .unwrap();
    let url = pg::url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let path = format!("{url}{sep}options=-c%20search_path%3D{first}%2C{second}");
    let through_path = PostgresStore::connect(&path).await.unwrap();
    through_path.migrate().await.unwrap();
    assert!(
        through_path.load(&key, now).await.unwrap().is_some(),
        "the existing table, not a new one"
    );
    let exists = async |name: String| -> bool {
        sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(name)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert!(!exists(format!("\"{first}\".tower_satchel_sessions")).await);
    assert!(exists(format!("\"{second}\".tower_satchel_sessions_owner_idx")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_app_instances_with_their_own_pools_share_one_database() {
    let schema = unique("satchel_test");
    let _cleanup = pg::drop_schema_later(schema.clone());
    let make = |pool| PostgresStore::new(pool).with_schema(&schema).unwrap();
    let (a, b, admin) = (
        make(pg::pool(5).await),
        make(pg::pool(5).await),
        make(pg::pool(2).await),
    );
    // Both instances migrate at start-up, at the same time.
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    support_sql::two_instances_share_one_database(a, b, admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_a_config_error_that_names_migrate() {
    let (store, _cleanup) = pg::unmigrated().await;
    support_sql::a_missing_table_is_a_config_error(store.clone(), "PostgresStore", async || {
        store.migrate().await.unwrap();
    })
    .await;
}

/// An app role that may not create tables, or not use them, learns which privilege it lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_privileges_gets_a_config_error_that_names_them() {
    let role = unique("satchel_role");
    let schema = unique("satchel_test");
    let admin = PostgresStore::new(pg::pool(2).await)
        .with_schema(&schema)
        .unwrap();
    let exec = |sql: String| {
        let pool = admin.pool().clone();
        async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    exec(format!("CREATE ROLE \"{role}\" NOLOGIN")).await;
    let _drop_role = pg::execute_later(format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""));
    let _drop_schema = pg::drop_schema_later(schema.clone());
    // The app's connections act as that role.
    let set_role = format!("SET ROLE \"{role}\"");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .after_connect(move |conn, _| {
            let sql = set_role.clone();
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect(&pg::url())
        .await
        .unwrap();
    let app_store = PostgresStore::new(pool).with_schema(&schema).unwrap();

    let error = app_store.migrate().await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Config, "{error}");
    assert!(error.to_string().contains("may not create"), "{error}");
    assert!(error.to_string().contains("schema_sql()"), "{error}");

    admin.migrate().await.unwrap();
    exec(format!("GRANT USAGE ON SCHEMA \"{schema}\" TO \"{role}\"")).await;
    let key = conformance::contract::key();
    let error = app_store.load(&key, now()).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Config, "{error}");
    assert!(error.to_string().contains("may not use"), "{error}");
    assert!(!error.to_string().contains("migrate()"), "{error}");

    exec(format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON \"{schema}\".tower_satchel_sessions TO \"{role}\""
    ))
    .await;
    assert!(app_store.load(&key, now()).await.unwrap().is_none());
    // Having the table, migrate() needs nothing more.
    app_store.migrate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_another_shape_is_a_config_error() {
    let (store, _cleanup) = pg::unmigrated().await;
    let store = store.with_table("not_ours").unwrap();
    let schema_sql = store.schema_sql();
    let schema_stmt = schema_sql.lines().next().unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{schema_stmt}\nCREATE TABLE {}.\"not_ours\" (id bytea PRIMARY KEY, payload text)",
        schema_stmt
            .trim_start_matches("CREATE SCHEMA IF NOT EXISTS ")
            .trim_end_matches(';')
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let error = store
        .load(&conformance::contract::key(), now())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Config, "{error}");
    assert!(error.to_string().contains("migrate()"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_schema_sql_is_what_it_runs() {
    let store = pg::store().await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let sql = store.schema_sql();
    assert!(sql.contains("CREATE SCHEMA IF NOT EXISTS \"satchel_test_"));
    assert!(sql.contains("jsonb"));
    assert!(sql.contains("ON \"satchel_test_") && sql.contains("(expires_at)"));
    assert!(sql.contains("(owner)"));
    // The indexes exist, in this store's schema.
    let schema = sql
        .lines()
        .next()
        .and_then(|line| line.split('"').nth(1))
        .unwrap();
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes \
         WHERE schemaname = $1 AND tablename = 'tower_satchel_sessions' ORDER BY indexname",
    )
    .bind(schema)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            "tower_satchel_sessions_expires_at_idx",
            "tower_satchel_sessions_owner_idx",
            "tower_satchel_sessions_pkey",
        ],
        "in schema {schema}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_hold_the_hashed_id_and_never_the_session_id() {
    let store = pg::store().await;
    let app = app(store.clone());
    let token = app.get("/incr", None).await.token.unwrap();
    let key = SessionId::parse(&token).unwrap().key();
    let dump: Vec<(Vec<u8>, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, t::text FROM {0} AS t",
        table_of(&store)
    )))
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(dump.len(), 1);
    assert_eq!(
        dump[0].0,
        key.as_bytes().to_vec(),
        "the primary key is SHA-256(ID)"
    );
    assert!(
        !dump[0].1.contains(&token),
        "the session ID is stored nowhere (SECURITY.md 6)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_after_expiry_does_not_revive_the_row() {
    let store = pg::store().await;
    let now = now();
    let table = table_of(&store);
    support_sql::writes_after_expiry_are_refused(&store, now, async |key| {
        // Still expired, and neither "x" nor the owner was written.
        let (idle, owner): (OffsetDateTime, Option<String>) = sqlx::query_as(sqlx::AssertSqlSafe(
            format!("SELECT idle_deadline, owner FROM {table} WHERE id = $1 AND NOT data ? 'x'"),
        ))
        .bind(key.as_bytes().as_slice())
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(idle, now + Duration::seconds(10));
        assert_eq!(owner, None);
    })
    .await;
}

/// A `tracing` writer that keeps what is logged.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// A row the store cannot read reads as no session (DESIGN §5), with a warning naming the problem
/// and the session's log tag (never its key). `jsonb` holds only valid JSON and the table's CHECK
/// only an object in `data`, so the damage is of content: data nested deeper than the store
/// reads or holding a number past `f64`, an expiry that is no policy (another shape, a window
/// that is no `i64` of seconds, a date past `time`'s years), timestamps before year 1 or after
/// 9999, a negative format version, and a newer one (as a newer release sharing the table would
/// write). `load` only reads, so the row stays (a newer
/// release's session in particular), and revoking its owner still deletes it. Other sessions are
/// unaffected.
#[tokio::test(flavor = "current_thread")]
async fn unreadable_rows_read_as_no_session_are_logged_and_kept() {
    let logs = Logs::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let store = pg::store().await;
    let table = table_of(&store);
    let now = now();
    let good = conformance::contract::key();
    assert!(
        store
            .create(&good, &conformance::contract::record(now), now)
            .await
            .unwrap()
    );
    let newer = format!("version = {}", tower_satchel::RECORD_VERSION + 1);
    let damages = [
        // Nested deeper than serde_json reads (128 levels); the table's CHECK keeps anything but
        // an object out of `data`.
        (
            "data = jsonb_build_object('deep', (repeat('[', 200) || repeat(']', 200))::jsonb)",
            "data is not a JSON object",
        ),
        ("expiry = '{\"Someday\": 1}'", "unreadable expiry"),
        ("version = -1", "negative record version"),
        (
            newer.as_str(),
            "record format version newer than this crate",
        ),
        // Timestamps past the years sqlx can decode into `time` (it panicked on them).
        ("idle_deadline = 'infinity'", "a timestamp out of range"),
        (
            "created_at = '12000-01-01 00:00:00+00'",
            "a timestamp out of range",
        ),
        ("created_at = '-infinity'", "a timestamp out of range"),
        (
            "created_at = '0001-12-31 23:59:59+00 BC'",
            "a timestamp out of range",
        ),
        // Numbers `jsonb` keeps and serde_json cannot read: past `f64`, past `i64`, a float
        // for the seconds of a window, a date past `time`'s years.
        ("data = '{\"n\": [1, -1e400]}'", "data is not a JSON object"),
        ("expiry = '{\"OnInactivity\": 1e30}'", "unreadable expiry"),
        (
            "expiry = '{\"OnInactivity\": 18446744073709551616}'",
            "unreadable expiry",
        ),
        ("expiry = '{\"OnInactivity\": 1.5}'", "unreadable expiry"),
        (
            "expiry = '{\"AtDateTime\": 9223372036854775807}'",
            "unreadable expiry",
        ),
        // JSON of another shape.
        ("expiry = 'null'", "unreadable expiry"),
        ("expiry = '[\"OnSessionEnd\"]'", "unreadable expiry"),
        ("expiry = '{\"OnInactivity\": \"1h\"}'", "unreadable expiry"),
        ("version = -2147483648", "negative record version"),
        (
            "version = 2147483647",
            "record format version newer than this crate",
        ),
    ];
    for (damage, problem) in damages {
        let key = conformance::contract::key();
        let record = conformance::contract::owned(now, "mallory");
        assert!(store.create(&key, &record, now).await.unwrap());
        let changed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET {damage} WHERE id = $1"
        )))
        .bind(key.as_bytes().as_slice())
        .execute(store.pool())
        .await
        .unwrap();
        assert_eq!(changed.rows_affected(), 1, "{damage}");

        assert_eq!(store.load(&key, now).await.unwrap(), None, "{damage}");
        let text = logs.text();
        let line = text
            .lines()
            .find(|line| line.contains(&key.log_tag().to_string()))
            .unwrap_or_else(|| panic!("{damage}: no line with the session's tag in\n{text}"));
        assert!(line.contains("WARN"), "{damage}: {line}");
        assert!(line.contains("unreadable session row"), "{damage}: {line}");
        assert!(line.contains(problem), "{damage}: {line}");
        assert!(!text.contains(&key.to_hex()), "{damage}: the key leaked");
        let kept: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE id = $1 AND {damage}"
        )))
        .bind(key.as_bytes().as_slice())
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(kept, 1, "{damage}: the row was not kept as it was");
    }
    assert!(store.load(&good, now).await.unwrap().is_some());
    // The cleanup reads no row, and leaves unreadable rows that have not expired.
    assert_eq!(store.delete_expired(now, 100).await.unwrap(), 0);
    // An absolute deadline of `infinity` is as good as none: the session reads.
    let endless = conformance::contract::key();
    assert!(
        store
            .create(&endless, &conformance::contract::record(now), now)
            .await
            .unwrap()
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET absolute_deadline = 'infinity' WHERE id = $1"
    )))
    .bind(endless.as_bytes().as_slice())
    .execute(store.pool())
    .await
    .unwrap();
    let loaded = store.load(&endless, now).await.unwrap().expect("a session");
    assert_eq!(loaded.absolute_deadline, None);
    // The owner's list leaves out what it cannot read, without failing (or panicking).
    let listed = store.list_owner("mallory", now).await.unwrap();
    assert!(listed.len() < damages.len(), "{listed:?}");
    assert_eq!(store.delete_owner("mallory").await.unwrap(), damages.len());
    assert_eq!(
        pg::count_rows(&store).await,
        2,
        "only the readable sessions are left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_row_is_neither_read_nor_written() {
    let store = pg::store().await;
    let table = table_of(&store);
    let pool = store.pool().clone();
    support_sql::a_newer_row_is_neither_read_nor_written(
        store.store.clone(),
        async |key| {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET version = version + 1 WHERE id = $1"
            )))
            .bind(key.as_bytes().as_slice())
            .execute(&pool)
            .await
            .unwrap();
        },
        async |key| {
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT version || data::text || idle_deadline::text || expiry::text \
                 || coalesce(owner, '') FROM {table} WHERE id = $1"
            )))
            .bind(key.as_bytes().as_slice())
            .fetch_one(&pool)
            .await
            .unwrap()
        },
    )
    .await;
}

/// A connection whose server turned read-only (a primary demoted at a failover, behind the same
/// address) fails its write, and is then closed rather than put back in the pool, where a ping
/// would have passed it: the next write gets a new connection and succeeds. Here the pool's
/// first connection is made read-only by hand, its later ones are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_turned_read_only_is_not_reused() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let migrated = pg::store().await;
    let schema = pg::schema_of(&migrated);
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
            Box::pin(async move {
                if first {
                    sqlx::query("SET default_transaction_read_only = on")
                        .execute(conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect(&pg::url())
        .await
        .unwrap();
    let store = PostgresStore::new(pool).with_schema(&schema).unwrap();
    let now = now();
    let key = conformance::contract::key();
    let record = conformance::contract::record(now);
    let error = store.create(&key, &record, now).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Backend, "{error}");
    assert!(
        store.create(&key, &record, now).await.unwrap(),
        "a new connection wrote it"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_eq!(store.load(&key, now).await.unwrap(), Some(record));
}

/// A statement the store gives up on (its timeout passed while the row was locked elsewhere)
/// does not take its connection back to the pool with it: there the ping before reuse would wait
/// for that statement, and with a pool of one the next operation would wait for the lock too.
/// It gets a new connection and answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_given_up_on_is_not_reused() {
    let migrated = pg::store().await;
    let schema = pg::schema_of(&migrated);
    let store = PostgresStore::new(pg::pool(1).await)
        .with_schema(&schema)
        .unwrap();
    // The short timeout for the save on the locked row only: the other operations keep the
    // default, so that a loaded machine does not fail them (the new connection included).
    let quick = store.clone().with_timeout(StdDuration::from_millis(300));
    let now = now();
    let (locked, other) = (conformance::contract::key(), conformance::contract::key());
    for key in [&locked, &other] {
        assert!(
            store
                .create(key, &conformance::contract::record(now), now)
                .await
                .unwrap()
        );
    }
    let admin_pool = pg::pool(1).await;
    let mut admin = admin_pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {} WHERE id = $1 FOR UPDATE",
        table_of(&migrated)
    )))
    .bind(locked.as_bytes().as_slice())
    .fetch_all(&mut *admin)
    .await
    .unwrap();
    let error = quick
        .save(&locked, &ChangeSet::default(), now)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("no answer within 300 ms"),
        "{error}"
    );
    // The lock is still held: the next operation runs on a new connection.
    let started = std::time::Instant::now();
    assert!(store.load(&other, now).await.unwrap().is_some());
    assert!(
        started.elapsed() < StdDuration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    admin.rollback().await.unwrap();
}

/// A session row locked by a long transaction elsewhere: the request that needs to write it gets
/// a store error once the store's timeout passes, rather than waiting for that transaction. With
/// the app's own pool (no `statement_timeout`), the server still applies the write later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_row_times_out_into_an_error_response() {
    let guarded = pg::store().await;
    let store = guarded
        .store
        .clone()
        .with_timeout(StdDuration::from_millis(500));
    let (app, token, error, admin) = write_a_locked_row(&store).await;
    assert!(error.contains("no answer within 500 ms"), "{error}");

    // As documented, the server still runs the write that timed out once the lock is released.
    admin.rollback().await.unwrap();
    let deadline = std::time::Instant::now() + StdDuration::from_secs(10);
    loop {
        let n = stored_n(&store).await;
        if n.as_deref() == Some("2") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "n is {n:?}");
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    assert_eq!(app.get("/incr", Some(&token)).await.body, "3");
}

/// The same with a pool `PostgresStore::connect` made: the server gives up first
/// (`statement_timeout`), so the request's error is the server's, and the write it gave up on is
/// never applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_own_pool_a_timed_out_write_is_never_applied() {
    let schema = unique("satchel_test");
    let _cleanup = pg::drop_schema_later(schema.clone());
    // The server's limit set in the URL (the store leaves it alone), well under the store's
    // own: the server's error comes first even on a loaded machine.
    let url = pg::url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = PostgresStore::connect(&format!("{url}{sep}options=-c%20statement_timeout%3D200"))
        .await
        .unwrap()
        .with_schema(&schema)
        .unwrap()
        .with_timeout(StdDuration::from_secs(2));
    store.migrate().await.unwrap();
    let (app, token, error, admin) = write_a_locked_row(&store).await;
    assert!(
        error.contains("statement timeout"),
        "the server's own error: {error}"
    );

    admin.rollback().await.unwrap();
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    assert_eq!(stored_n(&store).await.as_deref(), Some("1"), "not applied");
    assert_eq!(app.get("/incr", Some(&token)).await.body, "2");

    // A timeout set in the URL is left as it is.
    let url = format!("{}?options=-c%20statement_timeout%3D123", pg::url());
    let store = PostgresStore::connect(&url).await.unwrap();
    let set: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(set, "123ms");
    let store = PostgresStore::connect(&pg::url()).await.unwrap();
    let set: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(set, "4500ms", "nine tenths of the default 5 s");
}

/// A write that had to wait for a pooled connection first: the store must not give up on it
/// while the server (`statement_timeout`, set by `connect`) may still apply it, so its limit for
/// the statement starts when the statement is sent, as the server's does (`with_timeout`).
///
/// The store's timeout is 4 s (the server's 3.6 s). The session row is locked elsewhere, and the
/// app holds every connection of the store's pool for the first 2.5 s of the save: the save sends
/// nothing meanwhile. Once it has a connection, its `UPDATE` waits for the lock, which is released
/// 2 s after the server shows it waiting. By then the save has taken 4.5 s, more than the store's
/// timeout: a store counting from the start of the wait would have given up with an error 1.5 s
/// after sending, and the server, whose limit was not reached, would then have applied the write
/// anyway. The save must instead wait, succeed and its write be there. (The margins are wide: the
/// server's limit is 1.6 s away when the lock goes, the store's own 2 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_after_waiting_for_a_connection_gets_the_whole_timeout() {
    const TIMEOUT: StdDuration = StdDuration::from_secs(4);
    const HOLD: StdDuration = StdDuration::from_millis(2500);
    const LOCKED_AFTER_SENT: StdDuration = StdDuration::from_secs(2);
    let schema = unique("satchel_test");
    let _cleanup = pg::drop_schema_later(schema.clone());
    let store = PostgresStore::connect(&pg::url())
        .await
        .unwrap()
        .with_schema(&schema)
        .unwrap()
        .with_timeout(TIMEOUT);
    store.migrate().await.unwrap();
    let now = now();
    let key = conformance::contract::key();
    assert!(
        store
            .create(&key, &conformance::contract::record(now), now)
            .await
            .unwrap()
    );
    let table = table_of(&store);
    let admin_pool = pg::pool(2).await;
    let mut admin = admin_pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {table} FOR UPDATE"
    )))
    .fetch_all(&mut *admin)
    .await
    .unwrap();
    // The store's `UPDATE` of this table while the server runs it: whether it waits for a lock.
    let update_waits_for_lock = async || -> Option<bool> {
        sqlx::query_scalar(
            "SELECT wait_event_type IS NOT DISTINCT FROM 'Lock' FROM pg_stat_activity \
             WHERE state = 'active' AND starts_with(query, 'UPDATE ' || $1)",
        )
        .bind(&table)
        .fetch_optional(&admin_pool)
        .await
        .unwrap()
    };
    let mut held = Vec::new();
    for _ in 0..store.pool().options().get_max_connections() {
        held.push(store.pool().acquire().await.unwrap());
    }

    let (began_tx, began) = tokio::sync::oneshot::channel();
    let save = tokio::spawn({
        let store = store.clone();
        async move {
            let mut changes = ChangeSet::default();
            changes.set.insert("late".into(), json!(true));
            let began = std::time::Instant::now();
            began_tx.send(began).unwrap();
            let saved = store.save(&key, &changes, now).await;
            (saved, began.elapsed())
        }
    });
    let began = began.await.unwrap();
    tokio::time::sleep_until((began + HOLD).into()).await;
    // Every connection was held all along: the save still waits for one and has sent nothing.
    assert!(!save.is_finished(), "{:?}", save.await.unwrap());
    assert_eq!(
        update_waits_for_lock().await,
        None,
        "sent without a connection"
    );
    drop(held);

    // It gets one and its statement reaches the server, where it waits for the lock.
    let deadline = std::time::Instant::now() + StdDuration::from_secs(10);
    while update_waits_for_lock().await != Some(true) {
        assert!(!save.is_finished(), "{:?}", save.await.unwrap());
        assert!(
            std::time::Instant::now() < deadline,
            "the save's statement never waited for the lock"
        );
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    tokio::time::sleep(LOCKED_AFTER_SENT).await;
    // Longer than the store's timeout since the save began, and still waiting.
    assert!(began.elapsed() > TIMEOUT);
    assert!(
        !save.is_finished(),
        "the store gave up on a statement sent {LOCKED_AFTER_SENT:?} ago: {:?}",
        save.await.unwrap()
    );
    assert_eq!(update_waits_for_lock().await, Some(true));
    admin.rollback().await.unwrap();

    let (saved, took) = save.await.unwrap();
    assert!(
        matches!(saved, Ok(Saved::Applied)),
        "the save answered {saved:?} after {took:?}"
    );
    assert!(took > TIMEOUT, "{took:?}");
    let record = store.load(&key, now).await.unwrap().unwrap();
    assert_eq!(record.data.get("late"), Some(&json!(true)));
}

/// A store timeout beyond what PostgreSQL accepts for `statement_timeout` (an `int` of
/// milliseconds, about 24.8 days), such as `Duration::MAX` for "wait as long as it takes", still
/// gives a working store: the server-side limit is capped, not refused by the server on every
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_beyond_the_servers_range_still_connects() {
    for timeout in [StdDuration::from_secs(30 * 86_400), StdDuration::MAX] {
        let schema = unique("satchel_test");
        let _cleanup = pg::drop_schema_later(schema.clone());
        let store = PostgresStore::connect(&pg::url())
            .await
            .unwrap()
            .with_schema(&schema)
            .unwrap()
            .with_timeout(timeout);
        store.migrate().await.unwrap();
        let now = now();
        let key = conformance::contract::key();
        assert!(
            store
                .create(&key, &conformance::contract::record(now), now)
                .await
                .unwrap()
        );
        assert!(store.load(&key, now).await.unwrap().is_some());
        let set: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(set, "2147483647ms");
    }
}

/// A pool made by `connect` does not ping a connection before every use, as sqlx does by default
/// (one more round trip per store operation), but only one idle for a second or more: connections
/// the server closed while the app was quiet are replaced, with no error response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_replaces_connections_that_died_while_idle() {
    let schema = unique("satchel_test");
    let _cleanup = pg::drop_schema_later(schema.clone());
    let name = unique("satchel_ping");
    let sep = if pg::url().contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}application_name={name}", pg::url());
    let store = PostgresStore::connect(&url)
        .await
        .unwrap()
        .with_schema(&schema)
        .unwrap();
    assert!(!store.pool().options().get_test_before_acquire());
    store.migrate().await.unwrap();
    let app = app(store.clone());
    let token = app.get("/incr", None).await.token.unwrap();
    assert_eq!(app.get("/incr", Some(&token)).await.body, "2");

    // The server ends every connection of the store's pool.
    let admin = pg::pool(1).await;
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&name)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(!ended.is_empty() && ended.iter().all(|&e| e), "{ended:?}");

    tokio::time::sleep(StdDuration::from_millis(1100)).await;
    for n in 3..6 {
        let resp = app.get("/incr", Some(&token)).await;
        assert_eq!(resp.status, StatusCode::OK, "{:?}", resp.error);
        assert_eq!(resp.body, n.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_connections_go_from_operation_to_operation() {
    let store = pg::connected_store().await;
    support_sql::connections_go_from_operation_to_operation(store.store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_still_gets_pool_connections_while_the_store_is_saturated() {
    let store = pg::connected_store().await;
    let pool = store.pool().clone();
    support_sql::the_pool_still_serves_the_app_while_the_store_is_saturated(
        store.store.clone(),
        async || drop(pool.acquire().await.unwrap()),
    )
    .await;
}

/// Creates a session, locks every row from another transaction, and sends a request that writes
/// the session: it must fail with a store error (the store's timeout), well before the lock ends
/// (never, here; the test gives up after 10 s). Returns the app, the token, that
/// store error's text and the transaction holding the lock.
async fn write_a_locked_row(
    store: &PostgresStore,
) -> (
    support_sql::TestApp,
    String,
    String,
    sqlx::Transaction<'static, sqlx::Postgres>,
) {
    let app = app(store.clone());
    let first = app.get("/incr", None).await;
    let token = first.token.unwrap();

    // Another connection locks every session row, as a long maintenance transaction would.
    let mut admin = store.pool().begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {} FOR UPDATE",
        table_of(store)
    )))
    .fetch_all(&mut *admin)
    .await
    .unwrap();
    let started = std::time::Instant::now();
    // The load reads past the lock; the save waits for it, until the timeout.
    let resp = tokio::time::timeout(StdDuration::from_secs(10), app.get("/incr", Some(&token)))
        .await
        .expect("the request still waits for the lock after 10 s");
    let took = started.elapsed();
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "{resp:?}");
    let error = resp.error.as_ref().and_then(|e| e.store_error()).unwrap();
    assert_eq!(error.kind(), StoreErrorKind::Backend);
    assert!(
        took < StdDuration::from_secs(8),
        "the request waited {took:?}"
    );
    (app, token, error.to_string(), admin)
}

/// The counter `n` of the only session in the store's table.
async fn stored_n(store: &PostgresStore) -> Option<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT data->>'n' FROM {}",
        table_of(store)
    )))
    .fetch_one(store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_an_encoding_error_unless_in_a_removed_key() {
    let store = pg::store().await;
    let now = now();
    let key = conformance::contract::key();
    assert!(
        store
            .create(&key, &conformance::contract::record(now), now)
            .await
            .unwrap()
    );
    let mut changes = ChangeSet::default();
    changes.set.insert("k".into(), json!("a\u{0}b"));
    let error = store.save(&key, &changes, now).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Encoding);
    // Nothing was written; the session is intact.
    let loaded = store.load(&key, now).await.unwrap().unwrap();
    assert!(!loaded.data.contains_key("k"));
    // Removing a key that holds NUL changes nothing, as in every other store: no session can
    // hold it. The rest of the change set is applied.
    let mut changes = ChangeSet::default();
    changes.removed.push("k\u{0}".into());
    changes.removed.push("a".into());
    changes.set.insert("n".into(), json!(1));
    assert_eq!(
        store.save(&key, &changes, now).await.unwrap(),
        Saved::Applied
    );
    let loaded = store.load(&key, now).await.unwrap().unwrap();
    assert!(!loaded.data.contains_key("a"));
    assert_eq!(loaded.data.get("n"), Some(&json!(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_task_deletes_expired_rows_in_batches() {
    let store = pg::store().await;
    support_sql::the_cleanup_task_deletes_expired_rows(store.store.clone(), async || {
        pg::count_rows(&store).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_expired_deletes_at_most_the_limit() {
    let store = pg::store().await;
    let now = now();
    for _ in 0..7 {
        let mut record = conformance::contract::record(now);
        record.idle_deadline = now + Duration::seconds(1);
        assert!(
            store
                .create(&conformance::contract::key(), &record, now)
                .await
                .unwrap()
        );
    }
    let later = now + Duration::seconds(5);
    assert_eq!(store.delete_expired(later, 4).await.unwrap(), 4);
    assert_eq!(store.delete_expired(later, 4).await.unwrap(), 3);
    assert_eq!(store.delete_expired(later, 4).await.unwrap(), 0);
}

#[tokio::test]
async fn names_are_validated_and_debug_hides_the_password() {
    let pool = PgPoolOptions::new()
        .connect_lazy("postgres://app:hunter2secret@127.0.0.1:1/db")
        .unwrap();
    let store = PostgresStore::new(pool);
    assert!(format!("{store:?}").contains("tower_satchel_sessions"));
    assert!(!format!("{store:?}").contains("hunter2secret"));
    assert!(
        store
            .clone()
            .with_table("sessions; DROP TABLE users")
            .is_err()
    );
    assert!(store.clone().with_schema("a\"b").is_err());
    let custom = store
        .with_schema("Auth")
        .unwrap()
        .with_table("web_sessions")
        .unwrap();
    assert!(custom.schema_sql().contains("\"Auth\".\"web_sessions\""));
    assert!(PostgresStore::connect("not a url").await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Restart: a throwaway server of our own, never the machine's shared one.

mod throwaway {
    use std::path::PathBuf;
    use std::process::{Command, Output};

    /// A PostgreSQL cluster in a temporary folder on a free port; stopped and removed on drop.
    pub(crate) struct Cluster {
        bin: PathBuf,
        dir: PathBuf,
        pub(crate) port: u16,
        as_postgres: bool,
    }

    /// Where `initdb` and `pg_ctl` live: `$PG_BIN`, the newest `/usr/lib/postgresql/*/bin`,
    /// `pg_config --bindir`, or `$PATH`.
    fn bin_dir() -> PathBuf {
        if let Ok(dir) = std::env::var("PG_BIN") {
            return PathBuf::from(dir);
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return bin;
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
                return dir;
            }
        }
        panic!(
            "the restart test needs the PostgreSQL server programs (initdb, pg_ctl): install \
             them (Debian: apt-get install postgresql) or set PG_BIN to their folder"
        )
    }

    fn is_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    impl Cluster {
        /// `initdb` and start. As root, both run as the `postgres` user (PostgreSQL refuses root).
        pub(crate) fn start() -> Self {
            let bin = bin_dir();
            let dir = std::env::temp_dir().join(super::unique("satchel-pg"));
            std::fs::create_dir_all(&dir).unwrap();
            let as_postgres = is_root();
            if as_postgres {
                let out = Command::new("chown")
                    .arg("postgres:")
                    .arg(&dir)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "running as root, the restart test needs a `postgres` user to run a \
                     throwaway server as: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let mut cluster = Self {
                bin,
                dir,
                port: free_port(),
                as_postgres,
            };
            let data = cluster.data();
            cluster.run(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
            );
            // The port was free when picked, seconds ago: another process may have taken it
            // since. A few fresh ones before giving up.
            for _ in 0..4 {
                if cluster.start_output().status.success() {
                    return cluster;
                }
                cluster.port = free_port();
            }
            cluster.pg_ctl_start();
            cluster
        }

        fn data(&self) -> String {
            self.dir.join("data").display().to_string()
        }

        pub(crate) fn url(&self) -> String {
            format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
        }

        fn run(&self, program: &str, args: &[&str]) -> Output {
            let out = self.run_unchecked(program, args);
            assert!(
                out.status.success(),
                "{program} {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            out
        }

        fn run_unchecked(&self, program: &str, args: &[&str]) -> Output {
            let program = self.bin.join(program);
            let out = if self.as_postgres {
                Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(&program)
                    .args(args)
                    .current_dir(&self.dir)
                    .output()
            } else {
                Command::new(&program)
                    .args(args)
                    .current_dir(&self.dir)
                    .output()
            };
            out.unwrap_or_else(|e| panic!("could not run {}: {e}", program.display()))
        }

        pub(crate) fn pg_ctl_start(&self) {
            let out = self.start_output();
            assert!(
                out.status.success(),
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        /// `pg_ctl start` on the cluster's port, waiting until the server answers.
        fn start_output(&self) -> Output {
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.display()
            );
            let log = self.dir.join("server.log").display().to_string();
            self.run_unchecked(
                "pg_ctl",
                &[
                    "-D",
                    &self.data(),
                    "-o",
                    &options,
                    "-l",
                    &log,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            )
        }

        /// The server and its backends, postmaster first (from `postmaster.pid`).
        fn processes(&self) -> Vec<String> {
            let pid_file = std::path::Path::new(&self.data()).join("postmaster.pid");
            let text = std::fs::read_to_string(pid_file).unwrap();
            let postmaster = text.lines().next().unwrap().trim().to_owned();
            let children = Command::new("pgrep")
                .args(["-P", &postmaster])
                .output()
                .unwrap();
            let mut pids = vec![postmaster];
            pids.extend(
                String::from_utf8_lossy(&children.stdout)
                    .split_whitespace()
                    .map(str::to_owned),
            );
            pids
        }

        fn signal(pids: &[String], signal: &str) {
            let status = Command::new("kill")
                .arg(signal)
                .args(pids)
                .status()
                .unwrap();
            assert!(status.success(), "kill {signal} failed");
        }

        /// Stops the server and its backends (SIGSTOP): connections stay open and nothing is
        /// answered, as with a stuck server or a network that drops packets.
        pub(crate) fn freeze(&self) -> Vec<String> {
            let pids = self.processes();
            Self::signal(&pids, "-STOP");
            pids
        }

        /// Lets the processes [`Cluster::freeze`] stopped run again.
        pub(crate) fn thaw(&self, pids: &[String]) {
            let mut reversed = pids.to_vec();
            reversed.reverse();
            Self::signal(&reversed, "-CONT");
        }

        pub(crate) fn pg_ctl_stop(&self, mode: &str) {
            self.run(
                "pg_ctl",
                &["-D", &self.data(), "-m", mode, "-w", "-t", "60", "stop"],
            );
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            let pg_ctl = self.bin.join("pg_ctl");
            let data = self.data();
            let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
            let _ = if self.as_postgres {
                Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(&pg_ctl)
                    .args(args)
                    .output()
            } else {
                Command::new(&pg_ctl).args(args).output()
            };
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A throwaway server (see [`throwaway::Cluster`]) and a migrated store on it, over a pool of 4
/// that waits at most 500 ms for a connection.
async fn throwaway_store() -> (throwaway::Cluster, PostgresStore) {
    let cluster = tokio::task::spawn_blocking(throwaway::Cluster::start)
        .await
        .unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(StdDuration::from_millis(500))
        .connect(&cluster.url())
        .await
        .unwrap();
    let store = PostgresStore::new(pool);
    store.migrate().await.unwrap();
    (cluster, store)
}

/// The server goes down while requests keep coming: they get error responses (with the store
/// error attached, never a fresh empty session), and once the server is back the same session
/// carries on (SECURITY.md 28).
///
/// Starts its own cluster with `initdb` + `pg_ctl` (as the `postgres` user when run as root) in a
/// temporary folder on a free port, so the machine's server is never restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_gives_error_responses_then_recovers() {
    let (cluster, store) = throwaway_store().await;
    let app = app(store);
    let first = app.get("/incr", None).await;
    assert_eq!(first.body, "1");
    let token = first.token.unwrap();

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Phase {
        Up,
        Down,
        Back,
    }
    /// One response of the request loop.
    #[derive(Debug, Clone)]
    struct Seen {
        phase: Phase,
        status: StatusCode,
        body: String,
        store_error: Option<StoreErrorKind>,
        new_cookie: bool,
    }
    let phase = Arc::new(Mutex::new(Phase::Up));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let requests = {
        let (app, token, phase, seen, stop) = (
            app.clone(),
            token.clone(),
            phase.clone(),
            seen.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let at = *phase.lock().unwrap();
                let resp = app.get("/incr", Some(&token)).await;
                seen.lock().unwrap().push(Seen {
                    phase: at,
                    status: resp.status,
                    store_error: resp
                        .error
                        .as_ref()
                        .and_then(|e| e.store_error())
                        .map(|e| e.kind()),
                    body: resp.body,
                    new_cookie: resp.token.is_some(),
                });
                tokio::time::sleep(StdDuration::from_millis(20)).await;
            }
        })
    };
    let ok_in = |seen: &[Seen], phase| {
        seen.iter()
            .filter(|s| s.phase == phase && s.status == StatusCode::OK)
            .count()
    };
    tokio::time::sleep(StdDuration::from_millis(300)).await;

    let cluster = Arc::new(cluster);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.pg_ctl_stop("fast"))
        .await
        .unwrap();
    *phase.lock().unwrap() = Phase::Down;
    tokio::time::sleep(StdDuration::from_secs(3)).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.pg_ctl_start())
        .await
        .unwrap();
    *phase.lock().unwrap() = Phase::Back;

    // Recovers by itself: wait (bounded) for successes after the restart.
    for _ in 0..150 {
        if ok_in(&seen.lock().unwrap(), Phase::Back) >= 5 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    requests.await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert!(
        ok_in(&seen, Phase::Up) > 0,
        "no successful request before the restart: {seen:?}"
    );
    let down_errors: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.phase == Phase::Down && s.status == StatusCode::INTERNAL_SERVER_ERROR)
        .collect();
    assert!(
        !down_errors.is_empty(),
        "no error response while the server was down: {seen:?}"
    );
    assert!(
        down_errors
            .iter()
            .all(|s| s.store_error == Some(StoreErrorKind::Backend)),
        "outage errors carry a backend store error: {down_errors:?}"
    );
    assert!(
        ok_in(&seen, Phase::Back) >= 5,
        "did not recover after the restart: {seen:?}"
    );
    // Fail closed: no request ever got a fresh session (which would overwrite the real one).
    assert!(
        seen.iter().all(|s| !s.new_cookie),
        "a new session was minted: {seen:?}"
    );
    // The session survived the restart and kept counting: successful counts strictly increase.
    let counts: Vec<u64> = seen
        .iter()
        .filter(|s| s.status == StatusCode::OK)
        .map(|s| s.body.parse().unwrap())
        .collect();
    assert!(
        counts.windows(2).all(|w| w[0] < w[1]),
        "counts went backwards: {counts:?}"
    );
    assert!(counts[0] >= 2);
}

/// The server restarts while 32 request loops keep a `connect`-made store saturated, so its
/// connections are being handed from operation to operation (see
/// `under_load_connections_go_from_operation_to_operation`): the dead connections are not handed
/// on as if good. Requests during the outage get store errors, never a fresh session, and after it
/// every session carries on counting with no restart of the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_load_with_connections_handed_on_recovers() {
    let cluster = tokio::task::spawn_blocking(throwaway::Cluster::start)
        .await
        .unwrap();
    let store = PostgresStore::connect(&cluster.url()).await.unwrap();
    store.migrate().await.unwrap();
    let app = app(store.clone());
    let mut tokens = Vec::new();
    for _ in 0..32 {
        tokens.push(app.get("/incr", None).await.token.unwrap());
    }
    let down = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // Whether each loop's latest response was a success.
    let last_ok: Arc<Vec<AtomicBool>> =
        Arc::new((0..tokens.len()).map(|_| AtomicBool::new(true)).collect());
    // Per loop: (down at the time, status, count or 0, a new cookie was set).
    let loops: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            let (app, down, stop) = (app.clone(), down.clone(), stop.clone());
            let last_ok = last_ok.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let was_down = down.load(Ordering::Relaxed);
                    let resp = app.get("/incr", Some(&token)).await;
                    last_ok[i].store(resp.status == StatusCode::OK, Ordering::Relaxed);
                    let failed_with_store_error =
                        resp.error.as_ref().and_then(|e| e.store_error()).is_some();
                    let count = resp.body.parse::<u64>().unwrap_or(0);
                    seen.push((was_down, resp.status, count, resp.token.is_some()));
                    if resp.status != StatusCode::OK {
                        assert!(failed_with_store_error, "{resp:?}");
                        tokio::time::sleep(StdDuration::from_millis(20)).await;
                    }
                }
                seen
            })
        })
        .collect();
    // Given time (a loaded machine schedules the loops as it can), they saturate the store.
    let deadline = std::time::Instant::now() + StdDuration::from_secs(10);
    while support_sql::handed_on(&store) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the store was not saturated: {store:?}"
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    let cluster = Arc::new(cluster);
    let c = cluster.clone();
    down.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || c.pg_ctl_stop("fast"))
        .await
        .unwrap();
    tokio::time::sleep(StdDuration::from_secs(1)).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.pg_ctl_start())
        .await
        .unwrap();
    down.store(false, Ordering::Relaxed);
    // Each loop must answer a success from here on.
    for ok in last_ok.iter() {
        ok.store(false, Ordering::Relaxed);
    }
    let handed_before = support_sql::handed_on(&store);
    // Recovered once every loop's latest response is a success and connections are handed on
    // again; a loaded machine may take a while to reconnect, but not 30 s.
    let deadline = std::time::Instant::now() + StdDuration::from_secs(30);
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    while !(last_ok.iter().all(|ok| ok.load(Ordering::Relaxed))
        && support_sql::handed_on(&store) > handed_before)
    {
        if std::time::Instant::now() > deadline {
            break; // the assertions below say what did not recover
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors_while_down = 0;
    for handle in loops {
        let seen = handle.await.unwrap();
        assert!(
            seen.iter().all(|s| !s.3),
            "a new session was minted: {seen:?}"
        );
        errors_while_down += seen.iter().filter(|s| s.0 && s.1 != StatusCode::OK).count();
        let counts: Vec<u64> = seen
            .iter()
            .filter(|s| s.1 == StatusCode::OK)
            .map(|s| s.2)
            .collect();
        assert!(
            counts.windows(2).all(|w| w[0] < w[1]),
            "counts went backwards: {counts:?}"
        );
        // Recovered: the last response of every loop, well after the restart, is a success.
        assert_eq!(seen.last().unwrap().1, StatusCode::OK, "{seen:?}");
    }
    assert!(errors_while_down > 0, "no error response during the outage");
    assert!(
        support_sql::handed_on(&store) > handed_before,
        "no hand-on after the restart: {store:?}"
    );
}

/// The server stops answering without closing its connections (SIGSTOP on the postmaster and
/// every backend): requests fail with a store error within the pool's acquire timeout (the pool
/// checks a connection before handing it out) or the store's timeout, instead of waiting as long
/// as TCP would, and once the server runs again the sessions carry on with their data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_times_out_into_error_responses_then_recovers() {
    let (cluster, store) = throwaway_store().await;
    let app = app(store.with_timeout(StdDuration::from_millis(500)));
    let a = app.get("/incr", None).await.token.unwrap();
    let b = app.get("/incr", None).await.token.unwrap();
    for _ in 0..4 {
        assert_eq!(app.get("/incr", Some(&b)).await.status, StatusCode::OK);
    }

    let frozen = cluster.freeze();
    let mut waiting = Vec::new();
    for token in [&a, &b, &a, &b, &a, &b] {
        let (app, token) = (app.clone(), token.clone());
        waiting.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let resp = app.get("/incr", Some(&token)).await;
            (resp, started.elapsed())
        }));
    }
    for task in waiting {
        let (resp, took) = tokio::time::timeout(StdDuration::from_secs(10), task)
            .await
            .expect("a request still waits for the frozen server after 10 s")
            .unwrap();
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "{resp:?}");
        assert_eq!(
            resp.error
                .as_ref()
                .and_then(|e| e.store_error())
                .map(|e| e.kind()),
            Some(StoreErrorKind::Backend)
        );
        assert!(resp.token.is_none());
        assert!(
            took < StdDuration::from_secs(5),
            "a request waited {took:?}"
        );
    }

    cluster.thaw(&frozen);
    let deadline = std::time::Instant::now() + StdDuration::from_secs(30);
    let first = loop {
        let resp = app.get("/incr", Some(&a)).await;
        if resp.status == StatusCode::OK {
            break resp;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not recover after the server ran again: {resp:?}"
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    };
    assert_eq!(first.body, "2", "the session kept its count");
    let (mut count_a, mut count_b) = (2, 5);
    for _ in 0..10 {
        let (ra, rb) = tokio::join!(app.get("/incr", Some(&a)), app.get("/incr", Some(&b)));
        count_a += 1;
        count_b += 1;
        assert_eq!(
            (ra.body, rb.body),
            (count_a.to_string(), count_b.to_string())
        );
    }
}

/// The disk under the sessions table fills up (a tablespace on a small tmpfs, on a throwaway
/// server whose own files and WAL are elsewhere). Once PostgreSQL needs a page it cannot have,
/// creates and saves fail with a store error and no cookie, never a half-written session; reads go
/// on; and once there is space again every write succeeds, with every session as its last
/// successful write left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_error_responses_and_loses_nothing() {
    use sqlx::postgres::PgConnectOptions;
    let dir = std::env::temp_dir().join(unique("satchel-pg-space"));
    let Some(disk) = support_disk::SmallDisk::mount(&dir, "1m") else {
        support_disk::skip_without_root("mounting a small tmpfs");
        return;
    };
    let space = dir.join("tablespace");
    std::fs::create_dir(&space).unwrap();
    let chown = std::process::Command::new("chown")
        .arg("postgres:")
        .arg(&dir)
        .arg(&space)
        .status()
        .unwrap();
    assert!(chown.success());
    let cluster = tokio::task::spawn_blocking(throwaway::Cluster::start)
        .await
        .unwrap();
    let options: PgConnectOptions = cluster.url().parse().unwrap();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .unwrap();
    // The path is the test's own temporary folder.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLESPACE small LOCATION '{}'",
        space.display()
    )))
    .execute(&admin)
    .await
    .unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options.options([("default_tablespace", "small")]))
        .await
        .unwrap();
    let store = PostgresStore::new(pool);
    store.migrate().await.unwrap();
    let app = app(store.clone());
    let first = app.get("/incr", None).await;
    let token = first.token.unwrap();
    let mut n = 1;
    let filler = disk.fill();

    // New sessions of 1.5 KB each until the pages the table already has are full: every create
    // either succeeds with a cookie or fails with a store error and none.
    let big_key = || {
        (0..24)
            .map(|_| SessionId::generate().unwrap().key().to_hex())
            .collect::<String>()
    };
    let mut stored = Vec::new();
    let mut failed = 0;
    for _ in 0..200 {
        let key = big_key();
        let resp = app.get(&format!("/set/{key}"), None).await;
        if resp.status == StatusCode::OK {
            stored.push((resp.token.unwrap(), key));
            continue;
        }
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
        let error = resp.error.as_ref().unwrap();
        assert_eq!(error.kind(), SessionErrorKind::Store);
        assert_eq!(
            error.store_error().map(tower_satchel::StoreError::kind),
            Some(StoreErrorKind::Backend),
            "{error}"
        );
        assert!(resp.token.is_none(), "no cookie for a session not stored");
        failed += 1;
        if failed == 3 {
            break;
        }
    }
    assert_eq!(failed, 3, "the disk never filled up");
    // The first session: saves succeed while its page has room, and fail cleanly after.
    for _ in 0..20 {
        let resp = app.get("/incr", Some(&token)).await;
        if resp.status == StatusCode::OK {
            n += 1;
            assert_eq!(resp.body, n.to_string());
        } else {
            assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(resp.token.is_none());
        }
    }
    // Saves that make the session grow by 1.5 KB: they fail once no page has room for it.
    let mut keys = vec!["n".to_owned()];
    let mut save_failed = false;
    for _ in 0..20 {
        let key = big_key();
        let resp = app.get(&format!("/set/{key}"), Some(&token)).await;
        if resp.status == StatusCode::OK {
            keys.push(key);
            continue;
        }
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.error.unwrap().kind(), SessionErrorKind::Store);
        save_failed = true;
        break;
    }
    assert!(save_failed, "a growing session never ran out of room");
    keys.sort();
    // Reads go on and show what was stored.
    assert_eq!(app.get("/keys", Some(&token)).await.body, keys.join(","));
    for (token, key) in &stored {
        assert_eq!(&app.get("/keys", Some(token)).await.body, key);
    }

    // Space again: nothing was lost or emptied, and every write succeeds.
    std::fs::remove_file(filler).unwrap();
    for _ in 0..20 {
        let resp = app.get("/incr", Some(&token)).await;
        assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
        n += 1;
        assert_eq!(resp.body, n.to_string());
    }
    for _ in 0..20 {
        let resp = app.get(&format!("/set/{}", big_key()), None).await;
        assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
        assert!(resp.token.is_some());
    }
    for (token, key) in &stored {
        assert_eq!(&app.get("/keys", Some(token)).await.body, key);
    }
    assert_eq!(app.get("/keys", Some(&token)).await.body, keys.join(","));
    drop((app, store, admin));
    drop(cluster);
    drop(disk);
}

/// SECURITY.md 28 when reading fails while the server is up: the session table renamed, or a
/// column it reads renamed (an operator's botched migration). A load is then an error, never "no
/// session": a request of a live session, even one that only reads (`/keys`, where an empty
/// session would answer 200 and write nothing), gets an error response with the store error
/// and no `Set-Cookie` at all (no fresh session, no removal of the real one). Once the schema
/// is put back, the same cookie's session is there with its data, with no restart. (The restart
/// tests cover a server that is down, where every write fails too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_read_gives_error_responses_then_recovers() {
    let store = pg::store().await;
    let table = table_of(&store);
    let schema = table.split('.').next().unwrap().to_owned();
    let breakages = [
        (
            format!("ALTER TABLE {table} RENAME TO moved_away"),
            format!("ALTER TABLE {schema}.moved_away RENAME TO tower_satchel_sessions"),
        ),
        (
            format!("ALTER TABLE {table} RENAME COLUMN data TO moved_away"),
            format!("ALTER TABLE {table} RENAME COLUMN moved_away TO data"),
        ),
    ];
    let pool = store.pool().clone();
    support_sql::failing_reads_give_error_responses_then_recover(
        &*store,
        &breakages,
        async |sql: &str| {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&pool)
                .await
                .unwrap();
        },
    )
    .await;
}
