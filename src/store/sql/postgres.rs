//! [`PostgresStore`]: sessions in a PostgreSQL table.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use serde_json::{Map, Value};
use sqlx::Postgres;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Row};
use time::OffsetDateTime;

use super::handoff::{self, Handoff};
use super::{
    DEFAULT_TABLE, Failure, deadline_up, quote_ident, reserved_prefix, saved_from, store_error,
};
use crate::Expiry;
use crate::id::SessionKey;
use crate::layer::ConfigError;
use crate::record::{ChangeSet, RECORD_VERSION, Record, check_depth};
use crate::store::{Renamed, Saved, SessionInfo, SessionStore, StoreError, StoreErrorKind};

/// Key of the transaction-scoped advisory lock that serialises concurrent [`PostgresStore::migrate`]
/// calls (`CREATE TABLE IF NOT EXISTS` alone races between app servers starting together).
const MIGRATE_LOCK: i64 = 0x7361_7463_6865_6c31; // "satchel1"

/// Sessions in one PostgreSQL table, shared by every app server that points at it.
///
/// # When to choose it
///
/// Several app processes or machines behind a load balancer, sessions that must survive restarts,
/// and a PostgreSQL the app already runs. Each operation is one statement (one round trip):
///
/// - `load` is a primary-key lookup that ignores rows whose deadline has passed;
/// - `create` is an `INSERT … ON CONFLICT DO UPDATE … WHERE` that only replaces an *expired* row, so
///   it never overwrites a live session;
/// - `save` is one `UPDATE` that merges the [`ChangeSet`] into the stored `jsonb` with `-` (keys
///   removed) and `||` (keys set), under the row lock, and only while the row is live: two
///   concurrent requests that write different keys both keep their writes, and a session deleted
///   or expired meanwhile is reported as [`Saved::Gone`], never revived;
/// - `touch` updates the idle deadline only, and `save` moves it, only while the stored `expiry`
///   is the policy the deadline was worked out from (a `CASE` in the same statement, which
///   `RETURNING` reports: see [`Saved::PolicyChanged`]);
/// - `rename` (a rotated session ID) is the `save` statement that also changes the row's key, so
///   a concurrent save, touch or revocation of the session comes before it (and is carried over
///   or revoked) or after it (and finds nothing under the old key); only when the new key is
///   taken by an expired row does it take a second statement to delete that row first;
/// - `delete_expired` deletes at most `limit` rows per statement (`FOR UPDATE SKIP LOCKED`, so
///   several servers can run [`spawn_cleanup`](crate::spawn_cleanup) at once).
///
/// Deadlines are judged by the `now` the layer passes in (its [`Clock`](crate::Clock)), not by the
/// database server's clock.
///
/// # Set-up
///
/// Build it from the pool the app already has ([`PostgresStore::new`]) or from a URL
/// ([`PostgresStore::connect`]), then call [`PostgresStore::migrate`] once at start-up; it creates
/// the table and its indexes if they are missing and is safe to run from several servers at once.
/// Apps that manage their schema with their own migration tool can apply
/// [`PostgresStore::schema_sql`] instead. The table is `tower_satchel_sessions`, in the first
/// schema of the connection's `search_path` unless [`with_schema`](PostgresStore::with_schema) or
/// [`with_table`](PostgresStore::with_table) say otherwise.
///
/// | column | type | holds |
/// |---|---|---|
/// | `id` | `bytea` (32 bytes) | the SHA-256 of the session ID, never the ID (SECURITY.md 6) |
/// | `version` | `integer` | the record format version |
/// | `data` | `jsonb` | the session's values, as one object |
/// | `created_at` | `timestamptz` | creation time |
/// | `idle_deadline` | `timestamptz` | expires then unless activity moves it |
/// | `absolute_deadline` | `timestamptz`, null | fixed at creation |
/// | `expires_at` | `timestamptz`, generated | the earlier deadline (indexed, for cleanup) |
/// | `expiry` | `jsonb` | the session's [`Expiry`] policy |
/// | `owner` | `text`, null | the owner (indexed, for listing and revoking) |
///
/// # Deployment notes
///
/// - Run [`spawn_cleanup`](crate::spawn_cleanup) on at least one server: expired rows are invisible
///   but stay until deleted.
/// - The store takes one pooled connection per operation. A database outage makes requests that
///   need the session fail with an error response (never an empty session); the pool reconnects by
///   itself when the server is back. An operation the server does not answer within 5 seconds
///   (a stopped server, a dropped network, a row locked elsewhere) fails the same way
///   ([`with_timeout`](PostgresStore::with_timeout) changes the limit), and
///   [`PostgresStore::connect`] waits at most 5 seconds for a connection; pass your own pool to
///   choose other limits for it. A pool made by `connect` also has the server give up first
///   (`statement_timeout`), so a write that failed this way is not applied later (unless its
///   commit was already waiting on the disk or a synchronous standby, which `statement_timeout`
///   does not cover); with your own pool, set `statement_timeout` in its options.
/// - **TLS** (a database across a network, a managed service): put `sslmode=require` (or
///   `verify-full`, with `sslrootcert`) in the URL and enable a TLS feature of sqlx in your app,
///   e.g. `sqlx = { version = "0.9", default-features = false, features = ["tls-rustls"] }`; this
///   crate compiles none, so the app picks its TLS stack. Without one, `require` fails with sqlx's
///   "built without TLS support" error, and the default mode, `prefer`, connects in plain text.
/// - **Behind PgBouncer**, session pooling works: the whole store test suite passes through
///   PgBouncer 1.18 in session mode. Transaction pooling does not work with PgBouncer before 1.21:
///   sqlx prepares each statement once per connection under a name, PgBouncer hands the next
///   transaction another server connection, and operations fail with "prepared statement
///   \"sqlx_s_1\" already exists" (or could run another statement prepared there under the same
///   name: do not deploy it that way). Unnamed statements do not help, because sqlx prepares and
///   runs them in two exchanges, which PgBouncer may send to two server connections. PgBouncer
///   1.21 and later tracks prepared statements in transaction mode when `max_prepared_statements`
///   is set; that version was not available to test here.
/// - **Isolation**: the store's statements rely on PostgreSQL's default isolation level, `READ
///   COMMITTED`, under which two requests updating one session's row wait for each other and
///   both keep their writes. A database or role whose `default_transaction_isolation` is
///   `REPEATABLE READ` or `SERIALIZABLE` makes the second of two concurrent saves of one session
///   fail with a serialization error instead (its request gets an error response; nothing is
///   silently lost). Give such a store a pool that sets the level back, e.g. URL option
///   `?options=-c%20default_transaction_isolation%3Dread%5C%20committed`.
/// - Rows are small and updated in place; autovacuum's defaults suit the table. `UNLOGGED` is not
///   used: sessions survive a database crash.
///
/// # Performance impact
///
/// A new session costs one `INSERT`; a returning visitor whose request changes the session costs a
/// `SELECT` and an `UPDATE`, each waiting for its commit to reach the disk. Concurrent requests of
/// *one* session queue on its row lock (that is what keeps their writes). Apps that accept losing
/// the last fraction of a second of session writes when the database crashes can give the store a
/// pool with `synchronous_commit` off (URL option `?options=-c%20synchronous_commit%3Doff`);
/// on our test machine that doubled the throughput of returning visitors. Mind that a lost write
/// can be a logout or a revocation coming undone.
///
/// # Limitations
///
/// - `jsonb` cannot hold the NUL character: a session value or key containing `\u{0}` makes the
///   save fail with [`StoreErrorKind::Encoding`] (the request gets an error response). Removing
///   such a key changes nothing, as no session can hold it.
/// - `jsonb` does not keep the order of object keys or duplicate keys. Numbers keep their value
///   but not always their type: a whole-number float of 10¹⁶ or more in magnitude comes back as
///   an integer (`get::<f64>` still reads it), and `-0.0` as `0.0`.
/// - Timestamps are kept to the microsecond.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_satchel::{CleanupConfig, PostgresStore, SessionLayer, spawn_cleanup};
///
/// let store = PostgresStore::connect("postgres://app@localhost/app").await?;
/// store.migrate().await?;
/// let cleanup = spawn_cleanup(store.clone(), CleanupConfig::default());
/// let layer = SessionLayer::new(store);
/// # let _ = (layer, cleanup);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    sql: Arc<Statements>,
    timeout: StdDuration,
    /// For a pool [`PostgresStore::connect`] made: its options before the server-side timeout
    /// was added, so [`PostgresStore::with_timeout`] can set that timeout again.
    own_options: Option<Arc<PgConnectOptions>>,
    /// For a pool [`PostgresStore::connect`] made: operations hand connections on to each other
    /// under load (see `handoff`).
    handoff: Option<Arc<Handoff<Postgres>>>,
}

impl fmt::Debug for PostgresStore {
    // The pool's options hold the password: print the table and the pool's size only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.sql.schema)
            .field("table", &self.sql.table_name)
            .field("pool_size", &self.pool.size())
            .field("timeout", &self.timeout)
            .field(
                "connections_handed_on",
                &self.handoff.as_ref().map(|h| h.handed_on()),
            )
            .finish_non_exhaustive()
    }
}

/// The SQL text of every operation, built once from the (validated, quoted) table name.
struct Statements {
    /// The schema, unquoted, if one was set.
    schema: Option<String>,
    /// The table, unquoted.
    table_name: String,
    /// `"schema"."table"` or `"table"`.
    table: String,
    load: Arc<str>,
    create: Arc<str>,
    save: Arc<str>,
    touch: Arc<str>,
    rename: Arc<str>,
    clear_expired: Arc<str>,
    delete: Arc<str>,
    delete_expired: Arc<str>,
    list_owner: Arc<str>,
    delete_owner: Arc<str>,
}

impl Statements {
    fn new(schema: Option<&str>, table_name: &str) -> Result<Self, ConfigError> {
        let table = match schema {
            Some(schema) => format!(
                "{}.{}",
                quote_ident("schema", reserved_prefix("schema", schema, "pg_", false)?)?,
                quote_ident("table", table_name)?
            ),
            None => quote_ident("table", table_name)?,
        };
        let t = &table;
        Ok(Self {
            schema: schema.map(str::to_owned),
            table_name: table_name.to_owned(),
            load: format!(
                "SELECT version, data, {created_at}, {idle_deadline}, {absolute_deadline}, \
                 expiry, owner FROM {t} WHERE id = $1 AND expires_at > $2",
                created_at = in_range("created_at"),
                idle_deadline = in_range("idle_deadline"),
                absolute_deadline = in_range("absolute_deadline"),
            )
            .into(),
            create: format!(
                "INSERT INTO {t} AS s \
                 (id, version, data, created_at, idle_deadline, absolute_deadline, expiry, owner) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, data = EXCLUDED.data, \
                 created_at = EXCLUDED.created_at, idle_deadline = EXCLUDED.idle_deadline, \
                 absolute_deadline = EXCLUDED.absolute_deadline, expiry = EXCLUDED.expiry, \
                 owner = EXCLUDED.owner \
                 WHERE s.expires_at <= $9"
            )
            .into(),
            // $2 cleared, $3 removed keys, $4 keys set, $5 idle deadline, $6 expiry,
            // $7 owner changed, $8 owner, $9 now, $10 the policy $5 was worked out from
            // (`ChangeSet::deadline_basis`: the deadline moves only while the stored policy is
            // that one). Under READ COMMITTED a concurrent update of the row makes this statement
            // wait and then re-evaluate both the WHERE and the merge on the newest row version,
            // so no write is lost and a deleted row stays deleted. SET reads the row as it was;
            // RETURNING sees it as written, where the policy differs only when $6 sets it.
            save: format!(
                "UPDATE {t} SET \
                 data = CASE WHEN $2 THEN $4 ELSE (data - $3::text[]) || $4 END, \
                 idle_deadline = CASE WHEN {deadline_applies} \
                 THEN COALESCE($5, idle_deadline) ELSE idle_deadline END, \
                 expiry = COALESCE($6, expiry), \
                 owner = CASE WHEN $7 THEN $8 ELSE owner END \
                 WHERE id = $1 AND expires_at > $9 AND version <= {RECORD_VERSION} \
                 RETURNING $5::timestamptz IS NULL OR {deadline_applies}",
                deadline_applies = "$6::jsonb IS NOT NULL OR $10::jsonb IS NULL OR expiry = $10"
            )
            .into(),
            // $2 idle deadline, $3 now, $4 the policy $2 was worked out from.
            touch: format!(
                "UPDATE {t} SET idle_deadline = CASE WHEN expiry = $4 THEN $2 \
                 ELSE idle_deadline END \
                 WHERE id = $1 AND expires_at > $3 AND version <= {RECORD_VERSION} \
                 RETURNING expiry = $4"
            )
            .into(),
            // `save` that also moves the row to the key $2 (the parameters after $1 shift by
            // one). Changing the primary key in place keeps it one row to every concurrent
            // statement: one that waited for its lock re-evaluates on the moved row, so a save
            // or touch by the old key finds nothing, and a `delete_owner` deletes it under its new
            // key. A live row under $2 makes it fail with a unique violation.
            rename: format!(
                "UPDATE {t} SET id = $2, \
                 data = CASE WHEN $3 THEN $5 ELSE (data - $4::text[]) || $5 END, \
                 idle_deadline = CASE \
                 WHEN $7::jsonb IS NOT NULL OR $11::jsonb IS NULL OR expiry = $11 \
                 THEN COALESCE($6, idle_deadline) ELSE idle_deadline END, \
                 expiry = COALESCE($7, expiry), \
                 owner = CASE WHEN $8 THEN $9 ELSE owner END \
                 WHERE id = $1 AND expires_at > $10 AND version <= {RECORD_VERSION}"
            )
            .into(),
            clear_expired: format!("DELETE FROM {t} WHERE id = $1 AND expires_at <= $2").into(),
            delete: format!("DELETE FROM {t} WHERE id = $1").into(),
            delete_expired: format!(
                "DELETE FROM {t} WHERE expires_at <= $1 AND id IN \
                 (SELECT id FROM {t} WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2 \
                 FOR UPDATE SKIP LOCKED)"
            )
            .into(),
            list_owner: format!(
                "SELECT id, {created_at}, {expires_at} FROM {t} \
                 WHERE owner = $1 AND expires_at > $2 ORDER BY created_at, id",
                created_at = in_range("created_at"),
                expires_at = in_range("expires_at"),
            )
            .into(),
            delete_owner: format!("DELETE FROM {t} WHERE owner = $1").into(),
            table,
        })
    }

    fn schema_sql(&self) -> String {
        let mut sql = String::new();
        if let Some(schema) = &self.schema {
            sql.push_str(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\";\n"));
        }
        sql.push_str(&self.schema_sql_in_existing_schema());
        sql
    }

    /// [`Statements::schema_sql`] without creating the schema.
    fn schema_sql_in_existing_schema(&self) -> String {
        let t = &self.table;
        let [expires_at, owner] = self.index_names();
        let mut sql = String::new();
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (
    id bytea PRIMARY KEY CHECK (octet_length(id) = 32),
    version integer NOT NULL,
    data jsonb NOT NULL CHECK (jsonb_typeof(data) = 'object'),
    created_at timestamptz NOT NULL,
    idle_deadline timestamptz NOT NULL,
    absolute_deadline timestamptz,
    expires_at timestamptz GENERATED ALWAYS AS (LEAST(idle_deadline, absolute_deadline)) STORED,
    expiry jsonb NOT NULL,
    owner text
);
CREATE INDEX IF NOT EXISTS {expires_at} ON {t} (expires_at);
CREATE INDEX IF NOT EXISTS {owner} ON {t} (owner) WHERE owner IS NOT NULL;
"
        ));
        sql
    }

    /// The indexes' names, quoted: on the deadline, then on the owner. They live in the
    /// table's schema.
    fn index_names(&self) -> [String; 2] {
        let name = &self.table_name;
        [
            format!("\"{name}_expires_at_idx\""),
            format!("\"{name}_owner_idx\""),
        ]
    }

    /// The table and its indexes, as `to_regclass` takes them.
    fn schema_objects(&self) -> [String; 3] {
        let schema = match &self.schema {
            Some(schema) => format!("\"{schema}\"."),
            None => String::new(),
        };
        let [expires_at, owner] = self.index_names();
        [
            self.table.clone(),
            format!("{schema}{expires_at}"),
            format!("{schema}{owner}"),
        ]
    }
}

/// The longest `statement_timeout` PostgreSQL accepts, in milliseconds (the setting is an `int`):
/// about 24.8 days. A longer one makes the server refuse every connection.
const MAX_STATEMENT_TIMEOUT_MS: u128 = 2_147_483_647;

/// `options` with `statement_timeout` at nine tenths of `timeout` (at most
/// [`MAX_STATEMENT_TIMEOUT_MS`]), so that the server gives up (and says so) before the store
/// does; unchanged if they set `statement_timeout` already.
fn server_timeout(options: &PgConnectOptions, timeout: StdDuration) -> PgConnectOptions {
    if options
        .get_options()
        .is_some_and(|o| o.contains("statement_timeout"))
    {
        return options.clone();
    }
    let millis = (timeout.as_millis() * 9 / 10).clamp(1, MAX_STATEMENT_TIMEOUT_MS);
    options
        .clone()
        .options([("statement_timeout", format!("{millis}ms"))])
}

/// A pooled connection idle this long is pinged before use (and replaced if dead); one used more
/// recently is not. sqlx's default pings every time, which is one more round trip per store
/// operation: half the store's round trips under load.
const PING_IF_IDLE_FOR: StdDuration = StdDuration::from_secs(1);

fn stmt(sql: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    // Built only from validated identifiers (see `quote_ident`); every value is a bind parameter.
    AssertSqlSafe(Arc::clone(sql))
}

impl PostgresStore {
    /// How long an operation waits for the server unless [`with_timeout`](Self::with_timeout)
    /// says otherwise: 5 seconds.
    pub const DEFAULT_TIMEOUT: StdDuration = StdDuration::from_secs(5);

    /// A store over `pool`, using the table `tower_satchel_sessions` in the connection's
    /// `search_path`. Call [`migrate`](Self::migrate) before first use.
    pub fn new(pool: PgPool) -> Self {
        let sql = Statements::new(None, DEFAULT_TABLE)
            .expect("the default table name is a valid identifier");
        Self {
            pool,
            sql: Arc::new(sql),
            timeout: Self::DEFAULT_TIMEOUT,
            own_options: None,
            handoff: None,
        }
    }

    /// Connects a new pool to `url` (e.g. `postgres://user:password@host/db`), with sqlx's
    /// defaults except that:
    /// - acquiring a connection gives up after 5 seconds, so an outage turns into error responses
    ///   quickly;
    /// - the server gives up on a statement a little before the store does (`statement_timeout`,
    ///   see [`with_timeout`](Self::with_timeout)), unless the URL sets `statement_timeout` itself;
    /// - a pooled connection is pinged before use only when it has been idle for a second or
    ///   more, where sqlx pings every time: that ping is a round trip, and would double the
    ///   store's round trips under load (returning-visitor throughput of the counter example rose
    ///   10 to 25 % without it). A connection the server closed while the app was quiet is still
    ///   replaced unseen; one closed within a second of its last use fails the request that next
    ///   takes it, as it would had it been closed during that request;
    /// - under load, when the store's operations queue for a connection, one that has just
    ///   answered a statement goes straight to the next operation, skipping the round trip sqlx
    ///   makes to test every connection returned to the pool (it cannot be turned off): each
    ///   operation is then one round trip, not two. A connection goes back to the pool when nobody
    ///   waits, when its statement failed or was cancelled, and at the latest 100 ms after it left
    ///   the pool, so other users of [`pool`](Self::pool) still get their turn. With the counter
    ///   example under load (`benches/load.sh postgres`, 32 connections), returning-visitor
    ///   throughput rose 8 to 20 % and the app's CPU time per request fell from 83–95 µs to
    ///   71–74 µs.
    ///
    /// The pool connects lazily: this fails only for a malformed URL, and the first operation
    /// (usually [`migrate`](Self::migrate)) reports an unreachable server. Over a pool of your
    /// own ([`new`](Self::new)), sqlx's `PgPoolOptions::test_before_acquire(false)` with a
    /// `before_acquire` hook that pings idle connections does the same for the first point; the
    /// store hands connections on only within a pool it made, since it cannot know how an app
    /// shares its own.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Config`] when the URL cannot be parsed.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(|e| {
            StoreError::new(StoreErrorKind::Config, "invalid PostgreSQL URL").with_source(e)
        })?;
        let pool = PgPoolOptions::new()
            .acquire_timeout(StdDuration::from_secs(5))
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(connection).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(server_timeout(&options, Self::DEFAULT_TIMEOUT));
        Ok(Self {
            own_options: Some(Arc::new(options)),
            handoff: Some(Arc::new(Handoff::new(&pool))),
            ..Self::new(pool)
        })
    }

    /// Puts the table in `schema` (created by [`migrate`](Self::migrate) if missing) instead of
    /// the connection's `search_path`. Tests use a schema per run; apps may keep sessions apart
    /// from their own tables.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless the name is 1 to 48 ASCII letters, digits or underscores, not
    /// starting with a digit, nor (for a schema) with `pg_`, which PostgreSQL reserves. Names are
    /// used exactly as written (quoted, so case-sensitive).
    pub fn with_schema(self, schema: &str) -> Result<Self, ConfigError> {
        let sql = Statements::new(Some(schema), &self.sql.table_name)?;
        Ok(Self {
            sql: Arc::new(sql),
            ..self
        })
    }

    /// Gives up on an operation the server has not answered within `timeout` (default
    /// [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT), 5 seconds), with a
    /// [`Backend`](StoreErrorKind::Backend) error, so the request gets an error response.
    /// Waiting for a pooled connection gets the same limit, counted apart: an operation takes at
    /// most about twice `timeout` (see below for why the statement's time does not start with
    /// the wait). A pool made by [`connect`](Self::connect) gives up that wait after 5 seconds
    /// whatever `timeout` is; pass your own pool for a longer one.
    ///
    /// Without it, a statement already sent when the server stops answering (stopped,
    /// overloaded, or behind a network that drops packets) would wait as long as TCP does, and a
    /// row locked by a long transaction elsewhere would keep its session's requests waiting until
    /// that transaction ends.
    ///
    /// A write the store gave up on must not be applied later, when the server gets to it (after
    /// the lock is released, say): the request already answered with an error. With a pool made
    /// by [`connect`](Self::connect), the server is told to give up first: its connections set
    /// `statement_timeout` to nine tenths of `timeout` (connections opened after this call; the
    /// pool opens them lazily), so the statement is cancelled and the store reports the server's
    /// error. That holds only because the store's limit for the statement starts when the
    /// statement is sent, as the server's does, and not with the wait for a connection. It does
    /// not cover a commit: one already waiting when the time runs out (on a stalled disk, or a
    /// synchronous standby that does not answer) completes when the wait ends, and the write
    /// stands although the request got an error. The
    /// server's limit is capped at its maximum, 2,147,483,647 ms (about 24.8 days), so
    /// `Duration::MAX` waits as long as the server allows. Clones of a store share its pool: set
    /// the timeout once, before cloning. With your own pool ([`new`](Self::new)), set
    /// `statement_timeout` in its connect options the same way; without it, a timed-out write may
    /// still be applied.
    pub fn with_timeout(self, timeout: StdDuration) -> Self {
        if let Some(options) = &self.own_options {
            self.pool
                .set_connect_options(server_timeout(options, timeout));
        }
        Self { timeout, ..self }
    }

    /// Uses the table `table` instead of `tower_satchel_sessions`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] under the same rules as [`with_schema`](Self::with_schema).
    pub fn with_table(self, table: &str) -> Result<Self, ConfigError> {
        let sql = Statements::new(self.sql.schema.as_deref(), table)?;
        Ok(Self {
            sql: Arc::new(sql),
            ..self
        })
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The statements [`migrate`](Self::migrate) runs, for apps that apply schema changes with
    /// their own migration tool. Every statement is idempotent (`IF NOT EXISTS`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_satchel::PostgresStore;
    /// let store = PostgresStore::connect("postgres://localhost/app").await?.with_table("sessions")?;
    /// assert!(store.schema_sql().contains("CREATE TABLE IF NOT EXISTS \"sessions\""));
    /// # Ok(())
    /// # }
    /// ```
    pub fn schema_sql(&self) -> String {
        self.sql.schema_sql()
    }

    /// Creates the schema (if one was set), the table and its indexes, where missing, in one
    /// transaction. Safe to call on every start-up and from several servers at once (they take
    /// turns on an advisory lock). When the table and its indexes exist already, it only looks:
    /// an app whose role may not create tables can call it once an administrator has applied
    /// [`schema_sql`](Self::schema_sql).
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Config`] when the database role may not create what is missing (it
    /// needs `USAGE` and `CREATE` on the schema, `CREATE` on the database when a schema is set,
    /// even one that exists, and to own the table to add an index); an administrator can apply
    /// [`schema_sql`](Self::schema_sql) instead, after which `migrate` only checks;
    /// [`StoreErrorKind::Backend`] when the server cannot be reached or fails otherwise.
    ///
    /// It runs without the store's timeout and the server's `statement_timeout`: building a
    /// missing index on a large table takes as long as it takes, and blocks writes to the table
    /// meanwhile; so does waiting for a long transaction that holds the table, as the index
    /// build queues behind it and the session writes behind the build. On a large live table,
    /// build it first yourself with `CREATE INDEX CONCURRENTLY` (the names are in
    /// [`schema_sql`](Self::schema_sql)).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let fail = |e| self.error("migrate", e);
        let [table, expires_at, owner] = self.sql.schema_objects();
        let present: bool = sqlx::query_scalar(
            "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL \
             AND to_regclass($3) IS NOT NULL",
        )
        .bind(&table)
        .bind(expires_at)
        .bind(owner)
        .fetch_one(&self.pool)
        .await
        .map_err(fail)?;
        if present {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(fail)?;
        // Quiet the "already exists, skipping" notices of every start-up after the first. And
        // no `statement_timeout`: the one `connect` sets for session statements (a few seconds)
        // would cut off an index built on a large existing table, or the wait for the lock
        // another server's migration holds.
        sqlx::raw_sql("SET LOCAL client_min_messages = warning; SET LOCAL statement_timeout = 0")
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        // Without a schema of its own, the table's name resolves through `search_path`, and
        // `CREATE TABLE IF NOT EXISTS` looks in the first schema only: a table found further
        // along (an index of it missing) is completed there, not shadowed by a new, empty one
        // in the first schema, which every statement would then use (everyone logged out).
        let found: Option<String> = match &self.sql.schema {
            Some(_) => None,
            None => sqlx::query_scalar(
                "SELECT n.nspname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
            )
            .bind(table)
            .fetch_optional(&mut *tx)
            .await
            .map_err(fail)?,
        };
        let sql = match found {
            Some(schema) => Statements::new(Some(&schema), &self.sql.table_name)
                .map(|sql| sql.schema_sql_in_existing_schema())
                .unwrap_or_else(|_| self.schema_sql()),
            None => self.schema_sql(),
        };
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(())
    }

    /// Runs one statement of `op`, giving up when the server has not answered within the
    /// store's [timeout](Self::with_timeout).
    async fn run<T>(
        &self,
        op: &'static str,
        statement: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, statement).await {
            Ok(result) => result.map_err(|e| self.error(op, e)),
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Backend,
                format!(
                    "PostgresStore {op} failed: no answer within {} ms",
                    self.timeout.as_millis()
                ),
            )),
        }
    }

    /// Runs `f` on a connection (from the pool, or handed on by another operation, see
    /// `handoff`).
    ///
    /// Waiting for the connection and running the statement each get the store's timeout. Were
    /// they to share it, a statement sent after a long wait for a connection would be given up
    /// on by the store while the server, whose `statement_timeout` counts from when the statement
    /// arrives, could still run it: the request would fail and its write be applied anyway.
    async fn on_conn<T>(
        &self,
        op: &'static str,
        f: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        let handoff = self.handoff.as_deref();
        let mut held = self.run(op, handoff::checkout(&self.pool, handoff)).await?;
        // After a failed statement, or one given up on, `checkin` lets the connection go back to
        // the pool, which tests it before reuse: with a ping, which a server that turned
        // read-only (a primary demoted at a failover, behind the same address) or is shutting
        // down still answers. Such a connection is closed instead, so the next operation opens
        // a new one, to wherever the address now leads.
        // A statement given up on by the store's timeout is closed too: its connection would
        // otherwise go back with the statement still running, and the ping before its reuse wait
        // for it, holding a place in the pool for as long as the server takes (a blackholed
        // primary: until TCP gives up).
        let conn = &mut held.conn;
        let mut answered = false;
        let result = self
            .run(op, async {
                let result = f(conn).await;
                answered = true;
                if let Err(error) = &result
                    && needs_a_new_connection(error)
                {
                    conn.close_on_drop();
                }
                result
            })
            .await;
        if !answered {
            held.conn.close_on_drop();
        }
        handoff::checkin(&self.pool, handoff, held, result.is_ok());
        result
    }

    fn error(&self, op: &str, error: sqlx::Error) -> StoreError {
        let failure = match &error {
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // undefined_table, invalid_schema_name: unless migrate() itself failed on them
                Some("42P01" | "3F000") if op != "migrate" => Failure::MissingTable,
                // insufficient_privilege
                Some("42501") => Failure::Denied,
                // undefined_column, datatype_mismatch, undefined_function (operator on a wrong type)
                Some("42703" | "42804" | "42883") => Failure::WrongColumns,
                _ => Failure::Other,
            },
            _ => Failure::Other,
        };
        store_error("PostgresStore", &self.sql.table, op, failure, error)
    }
}

/// Whether `error` says the connection's server will not take this store's writes any more:
/// read-only (SQLSTATE 25006, a demoted primary), shutting down or refusing connections (57P01 to
/// 57P03), or a connection exception (class 08).
fn needs_a_new_connection(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    db.code().is_some_and(|code| {
        matches!(&*code, "25006" | "57P01" | "57P02" | "57P03") || code.starts_with("08")
    })
}

/// Refuses what `jsonb` and `text` cannot hold before it reaches the server.
fn check_nul<'a>(
    values: impl IntoIterator<Item = &'a Value>,
    strings: impl IntoIterator<Item = &'a str>,
) -> Result<(), StoreError> {
    let mut values = values.into_iter();
    let mut strings = strings.into_iter();
    if values.any(contains_nul) || strings.any(|s| s.contains('\0')) {
        return Err(StoreError::new(
            StoreErrorKind::Encoding,
            "PostgreSQL cannot store the NUL character (\\u0000) in session keys, values or owners",
        ));
    }
    Ok(())
}

/// Binds the parameters `save` and `rename` share, in their order: the change set (cleared,
/// removed, set, idle deadline, expiry, owner set, owner), `now`, then the change set's deadline
/// basis.
fn bind_changes<'q>(
    query: Query<'q, Postgres, PgArguments>,
    changes: &'q ChangeSet,
    now: OffsetDateTime,
) -> Query<'q, Postgres, PgArguments> {
    let owner = changes.owner.as_ref();
    query
        .bind(changes.cleared)
        .bind(removable(changes))
        .bind(Json(&changes.set))
        .bind(changes.idle_deadline.map(deadline_up))
        .bind(changes.expiry.map(Json))
        .bind(owner.is_some())
        .bind(owner.and_then(|o| o.as_deref()))
        .bind(now)
        .bind(changes.deadline_basis.map(Json))
}

/// [`check_nul`] for what a change set writes. Removed keys are not checked: one holding NUL
/// cannot be stored, so removing it changes nothing (see [`removable`]).
fn check_changes(changes: &ChangeSet) -> Result<(), StoreError> {
    check_depth(changes.set.values())?;
    check_nul(
        changes.set.values(),
        changes
            .set
            .keys()
            .map(String::as_str)
            .chain(changes.owner.as_ref().and_then(|o| o.as_deref())),
    )
}

/// The removed keys to send: all but those holding NUL, which PostgreSQL refuses in a `text[]`
/// and no stored session can hold, as the memory store ignores the removal of a key it does not
/// hold.
fn removable(changes: &ChangeSet) -> Vec<&str> {
    changes
        .removed
        .iter()
        .map(String::as_str)
        .filter(|key| !key.contains('\0'))
        .collect()
}

/// Decodes a `load` row. The inner `Err` is a row whose content is unusable (the caller logs it and
/// reads it as "no session").
fn record_from_row(row: &PgRow) -> Result<Result<Record, &'static str>, sqlx::Error> {
    let version: i32 = row.try_get("version")?;
    let Ok(version) = u32::try_from(version) else {
        return Ok(Err("negative record version"));
    };
    if version > RECORD_VERSION {
        return Ok(Err("record format version newer than this crate"));
    }
    let data = match row.try_get::<Json<Map<String, Value>>, _>("data") {
        Ok(Json(data)) => data,
        Err(e) if is_corrupt_content(&e) => return Ok(Err("data is not a JSON object")),
        Err(e) => return Err(e),
    };
    let expiry = match row.try_get::<Json<Expiry>, _>("expiry") {
        Ok(Json(expiry)) => expiry,
        Err(e) if is_corrupt_content(&e) => return Ok(Err("unreadable expiry")),
        Err(e) => return Err(e),
    };
    // NULL past `time`'s years (see `in_range`); a missing absolute deadline is NULL too, and
    // one out of range, later than year 9999 or `infinity`, amounts to none.
    let (Some(created_at), Some(idle_deadline)) =
        (row.try_get("created_at")?, row.try_get("idle_deadline")?)
    else {
        return Ok(Err("a timestamp out of range"));
    };
    Ok(Ok(Record {
        version,
        data,
        created_at,
        idle_deadline,
        absolute_deadline: row.try_get("absolute_deadline")?,
        expiry,
        owner: row.try_get("owner")?,
    }))
}

/// The column `column`, or NULL where it lies outside the years 1 to 9999 (`infinity`, say,
/// which an operator may write to make a session last): sqlx decodes a `timestamptz` into
/// `time`'s types by adding to an epoch, which panics past `time`'s range. A session row with
/// such a timestamp then reads as unreadable rather than end the request in a panic.
fn in_range(column: &str) -> String {
    format!(
        "CASE WHEN {column} >= '0001-01-01 00:00:00+00' AND {column} < '10000-01-01 00:00:00+00' \
         THEN {column} END AS {column}"
    )
}

/// Whether a JSON value holds a NUL character in a string or an object key.
fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Whether a row decoding error is bad *content* (JSON that is not the expected shape), which the
/// contract treats as "no session", rather than a column of the wrong type (a configuration error).
fn is_corrupt_content(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::ColumnDecode { source, .. } | sqlx::Error::Decode(source) => {
            let source: &(dyn StdError + 'static) = source.as_ref();
            source.is::<serde_json::Error>()
        }
        _ => false,
    }
}

impl SessionStore for PostgresStore {
    async fn load(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> Result<Option<Record>, StoreError> {
        let row = self
            .on_conn("load", async |conn| {
                sqlx::query(stmt(&self.sql.load))
                    .bind(key.as_bytes().as_slice())
                    .bind(now)
                    .fetch_optional(conn)
                    .await
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        match record_from_row(&row).map_err(|e| self.error("load", e))? {
            Ok(record) => Ok(Some(record)),
            Err(problem) => {
                tracing::warn!(session = %key.log_tag(), problem, "unreadable session row; treated as no session");
                Ok(None)
            }
        }
    }

    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        check_depth(record.data.values())?;
        check_nul(
            record.data.values(),
            record
                .data
                .keys()
                .map(String::as_str)
                .chain(record.owner.as_deref()),
        )?;
        let version = i32::try_from(record.version).map_err(|e| {
            StoreError::new(StoreErrorKind::Encoding, "record version out of range").with_source(e)
        })?;
        let result = self
            .on_conn("create", async |conn| {
                sqlx::query(stmt(&self.sql.create))
                    .bind(key.as_bytes().as_slice())
                    .bind(version)
                    .bind(Json(&record.data))
                    .bind(record.created_at)
                    .bind(deadline_up(record.idle_deadline))
                    .bind(record.absolute_deadline.map(deadline_up))
                    .bind(Json(record.expiry))
                    .bind(record.owner.as_deref())
                    .bind(now)
                    .execute(conn)
                    .await
            })
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        check_changes(changes)?;
        let applied = self
            .on_conn("save", async |conn| {
                let query = sqlx::query(stmt(&self.sql.save)).bind(key.as_bytes().as_slice());
                let row = bind_changes(query, changes, now)
                    .fetch_optional(conn)
                    .await?;
                row.map(|row| row.try_get::<bool, _>(0)).transpose()
            })
            .await?;
        Ok(saved_from(applied))
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: OffsetDateTime,
        basis: Expiry,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        let applied = self
            .on_conn("touch", async |conn| {
                sqlx::query_scalar::<_, bool>(stmt(&self.sql.touch))
                    .bind(key.as_bytes().as_slice())
                    .bind(deadline_up(idle_deadline))
                    .bind(now)
                    .bind(Json(basis))
                    .fetch_optional(conn)
                    .await
            })
            .await?;
        Ok(saved_from(applied))
    }

    async fn rename(
        &self,
        from: &SessionKey,
        to: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Renamed, StoreError> {
        check_changes(changes)?;
        if from == to {
            // The row would match itself and move nowhere: the key is taken, by the session
            // itself, as every store answers (the layer always draws a fresh ID).
            return Ok(match self.load(from, now).await? {
                Some(_) => Renamed::Taken,
                None => Renamed::Gone,
            });
        }
        let rename = async |conn: &mut PgConnection| {
            let query = sqlx::query(stmt(&self.sql.rename))
                .bind(from.as_bytes().as_slice())
                .bind(to.as_bytes().as_slice());
            bind_changes(query, changes, now).execute(conn).await
        };
        // A row under `to` that is expired gives way (as to `create`), once; a live one, or one
        // that a concurrent operation put there meanwhile, makes the key taken.
        for attempt in 0..2 {
            let moved = self
                .on_conn("rename", async |conn| match rename(conn).await {
                    Ok(done) => Ok(Some(done.rows_affected() > 0)),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
                    Err(e) => Err(e),
                })
                .await?;
            match moved {
                Some(true) => return Ok(Renamed::Applied),
                Some(false) => return Ok(Renamed::Gone),
                None if attempt > 0 => break,
                None => {}
            }
            let cleared = self
                .on_conn("rename", async |conn| {
                    sqlx::query(stmt(&self.sql.clear_expired))
                        .bind(to.as_bytes().as_slice())
                        .bind(now)
                        .execute(conn)
                        .await
                })
                .await?;
            if cleared.rows_affected() == 0 {
                break;
            }
        }
        Ok(Renamed::Taken)
    }

    async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.on_conn("delete", async |conn| {
            sqlx::query(stmt(&self.sql.delete))
                .bind(key.as_bytes().as_slice())
                .execute(conn)
                .await
        })
        .await?;
        Ok(())
    }

    async fn delete_expired(&self, now: OffsetDateTime, limit: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let result = self
            .on_conn("delete_expired", async |conn| {
                sqlx::query(stmt(&self.sql.delete_expired))
                    .bind(now)
                    .bind(limit)
                    .execute(conn)
                    .await
            })
            .await?;
        Ok(usize::try_from(result.rows_affected()).unwrap_or(usize::MAX))
    }

    async fn list_owner(
        &self,
        owner: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        if owner.contains('\0') {
            // No stored owner can contain NUL (the column is text), so none matches.
            return Ok(Vec::new());
        }
        let rows = self
            .on_conn("list_owner", async |conn| {
                sqlx::query(stmt(&self.sql.list_owner))
                    .bind(owner)
                    .bind(now)
                    .fetch_all(conn)
                    .await
            })
            .await?;
        let mut sessions = Vec::with_capacity(rows.len());
        for row in rows {
            let id: Vec<u8> = row.try_get("id").map_err(|e| self.error("list_owner", e))?;
            let Ok(bytes) = <[u8; 32]>::try_from(id.as_slice()) else {
                tracing::warn!("session row with a malformed id skipped");
                continue;
            };
            let created_at: Option<OffsetDateTime> = row
                .try_get("created_at")
                .map_err(|e| self.error("list_owner", e))?;
            let deadline: Option<OffsetDateTime> = row
                .try_get("expires_at")
                .map_err(|e| self.error("list_owner", e))?;
            let (Some(created_at), Some(deadline)) = (created_at, deadline) else {
                tracing::warn!(
                    session = %SessionKey::from_bytes(bytes).log_tag(),
                    "session row with a timestamp out of range left out of its owner's list"
                );
                continue;
            };
            sessions.push(SessionInfo {
                key: SessionKey::from_bytes(bytes),
                created_at,
                deadline,
            });
        }
        Ok(sessions)
    }

    async fn delete_owner(&self, owner: &str) -> Result<usize, StoreError> {
        if owner.contains('\0') {
            return Ok(0);
        }
        let result = self
            .on_conn("delete_owner", async |conn| {
                sqlx::query(stmt(&self.sql.delete_owner))
                    .bind(owner)
                    .execute(conn)
                    .await
            })
            .await?;
        Ok(usize::try_from(result.rows_affected()).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_characters_are_found_anywhere() {
        assert!(!contains_nul(&json!({"a": ["b", {"c": 1}]})));
        assert!(contains_nul(&json!({"a": ["b", {"c": "x\u{0}"}]})));
        assert!(contains_nul(&json!({"a\u{0}": 1})));
    }

    #[test]
    fn nul_checks_cover_keys_values_and_owners() {
        assert!(check_nul([&json!(1)], ["a", "owner"]).is_ok());
        let error = check_nul([&json!("x\u{0}")], []).unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Encoding);
        assert!(check_nul([], ["own\u{0}er"]).is_err());
    }
}
