//! [`SqliteStore`]: sessions in a table of an SQLite file.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use serde_json::{Map, Value};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row, Sqlite, SqliteConnection};
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

/// Sessions in one table of an SQLite database file.
///
/// # When to choose it
///
/// One machine, sessions that must survive restarts, and no database server to run: the sessions
/// live in a file next to the app (or in the app's own SQLite database). Several processes on the
/// same machine may share the file; SQLite lets one of them write at a time, so the write rate of
/// all of them together is bounded by the disk (thousands of small transactions per second with
/// the settings [`SqliteStore::connect`] uses). For several machines, use
/// `PostgresStore` (feature `postgres-store`) or Redis.
///
/// - `load` is a primary-key lookup that ignores rows whose deadline has passed;
/// - `create` is an `INSERT … ON CONFLICT DO UPDATE … WHERE` that only replaces an *expired* row;
/// - `save` runs in a `BEGIN IMMEDIATE` transaction (which takes the write lock first): it reads
///   the live row, applies the [`ChangeSet`] with [`ChangeSet::apply_to`], and writes it back, so
///   two concurrent requests that write different keys both keep their writes and a session
///   deleted or expired meanwhile is reported as [`Saved::Gone`], never revived. A save that only
///   moves deadlines, expiry or owner is a single `UPDATE`;
/// - `rename` (a rotated session ID) is that same transaction, which then writes the row under
///   its new key: a concurrent save, touch or revocation of the session comes before it (and is
///   carried over or revoked) or after it (and finds nothing under the old key);
/// - `touch` updates the idle deadline only; it and a save move it only while the stored
///   `expiry` is the policy the deadline was worked out from (see [`Saved::PolicyChanged`]);
/// - `delete_expired` deletes at most `limit` rows.
///
/// Deadlines are judged by the `now` the layer passes in (its [`Clock`](crate::Clock)).
///
/// # Set-up
///
/// Build it from the pool the app already has ([`SqliteStore::new`]) or from a file
/// ([`SqliteStore::connect`]), then call [`SqliteStore::migrate`] once at start-up (or apply
/// [`SqliteStore::schema_sql`] with your own migration tool). The table is
/// `tower_satchel_sessions` unless [`with_table`](SqliteStore::with_table) says otherwise.
/// Times are stored as integers, microseconds since the Unix epoch (`datetime(expires_at /
/// 1000000, 'unixepoch')` reads one); `data` and `expiry` are JSON text; `id` is the 32-byte
/// SHA-256 of the session ID, never the ID (SECURITY.md 6).
///
/// # Deployment notes
///
/// - Use a file, not `:memory:`: every pooled connection to `:memory:` would see its own empty
///   database, and a shared in-memory one vanishes when the pool closes its idle connections.
///   [`SqliteStore::connect`] refuses both.
/// - Run [`spawn_cleanup`](crate::spawn_cleanup): expired rows are invisible but stay until
///   deleted.
/// - A pool of your own should use WAL journal mode and a busy timeout (as
///   [`SqliteStore::connect`] does), or concurrent requests fail with "database is locked".
/// - Keep the file on a local disk: SQLite's locking is unreliable on network file systems.
/// - There is no per-operation timeout as the PostgreSQL store has (`with_timeout`): an
///   operation waits at most for a pooled connection (10 seconds with
///   [`SqliteStore::connect`], the pool's `acquire_timeout` with your own) and for a lock held
///   by another connection (the busy timeout, 5 seconds with `connect`), but a disk that stops
///   answering holds it until the disk does. Put a timeout layer in front of the app if that
///   matters; its requests then get the timeout layer's error, and their commits run on (see
///   [`ResponseFuture`](crate::ResponseFuture)).
/// - A full disk makes new sessions and saves fail with store errors (error responses, no
///   cookie) while sessions still load; once there is space again, writes succeed with no restart.
///   A connection whose transaction failed is closed rather than reused, because SQLite may have
///   rolled the transaction back by itself and sqlx would then refuse every later transaction on
///   it. Tested on a 512 KiB tmpfs filled up and then freed.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = std::env::temp_dir().join(format!("satchel-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("sessions.sqlite3");
/// # let path = path.to_str().ok_or("path")?;
/// use tower_satchel::{CleanupConfig, SessionLayer, SqliteStore, spawn_cleanup};
///
/// let store = SqliteStore::connect(path).await?; // e.g. "sessions.sqlite3"
/// store.migrate().await?;
/// let cleanup = spawn_cleanup(store.clone(), CleanupConfig::default());
/// let layer = SessionLayer::new(store);
/// // ... serve with `layer` ...
/// cleanup.stop().await;
/// # drop(layer);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    sql: Arc<Statements>,
    /// For a pool [`SqliteStore::connect`] made: operations hand connections on to each other
    /// under load (see `handoff`).
    handoff: Option<Arc<Handoff<Sqlite>>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("table", &self.sql.table_name)
            .field("pool_size", &self.pool.size())
            .field(
                "connections_handed_on",
                &self.handoff.as_ref().map(|h| h.handed_on()),
            )
            .finish_non_exhaustive()
    }
}

/// The SQL text of every operation, built once from the (validated, quoted) table name.
struct Statements {
    /// The table, unquoted.
    table_name: String,
    /// The table, quoted.
    table: String,
    load: Arc<str>,
    create: Arc<str>,
    read_for_save: Arc<str>,
    write_back: Arc<str>,
    save_metadata: Arc<str>,
    touch: Arc<str>,
    clear_expired: Arc<str>,
    move_to: Arc<str>,
    delete: Arc<str>,
    delete_expired: Arc<str>,
    list_owner: Arc<str>,
    delete_owner: Arc<str>,
}

const COLUMNS: &str = "version, data, created_at, idle_deadline, absolute_deadline, expiry, owner";

impl Statements {
    fn new(table_name: &str) -> Result<Self, ConfigError> {
        let table = quote_ident(
            "table",
            reserved_prefix("table", table_name, "sqlite_", true)?,
        )?;
        let t = &table;
        Ok(Self {
            table_name: table_name.to_owned(),
            load: format!("SELECT {COLUMNS} FROM {t} WHERE id = ?1 AND expires_at > ?2").into(),
            create: format!(
                "INSERT INTO {t} \
                 (id, version, data, created_at, idle_deadline, absolute_deadline, expiry, owner) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version, data = excluded.data, \
                 created_at = excluded.created_at, idle_deadline = excluded.idle_deadline, \
                 absolute_deadline = excluded.absolute_deadline, expiry = excluded.expiry, \
                 owner = excluded.owner \
                 WHERE expires_at <= ?9"
            )
            .into(),
            read_for_save: format!("SELECT {COLUMNS} FROM {t} WHERE id = ?1 AND expires_at > ?2")
                .into(),
            write_back: format!(
                "UPDATE {t} SET data = ?2, idle_deadline = ?3, expiry = ?4, owner = ?5 \
                 WHERE id = ?1"
            )
            .into(),
            // ?2 idle deadline or null, ?3 expiry or null, ?4 owner changed, ?5 owner, ?6 now,
            // ?7 the policy ?2 was worked out from or null (`ChangeSet::deadline_basis`: the
            // deadline moves only while the stored policy is that one). SQLite evaluates every
            // SET expression on the row as it was; RETURNING sees it as written, where the
            // policy differs from the old one only when ?3 sets it.
            save_metadata: format!(
                "UPDATE {t} SET idle_deadline = CASE \
                 WHEN ?3 IS NOT NULL OR ?7 IS NULL OR expiry = ?7 \
                 THEN coalesce(?2, idle_deadline) ELSE idle_deadline END, \
                 expiry = coalesce(?3, expiry), \
                 owner = CASE WHEN ?4 THEN ?5 ELSE owner END \
                 WHERE id = ?1 AND expires_at > ?6 AND version <= {RECORD_VERSION} \
                 RETURNING ?2 IS NULL OR ?3 IS NOT NULL OR ?7 IS NULL OR expiry = ?7"
            )
            .into(),
            // ?2 idle deadline, ?3 now, ?4 the policy ?2 was worked out from.
            touch: format!(
                "UPDATE {t} SET idle_deadline = CASE WHEN expiry = ?4 THEN ?2 \
                 ELSE idle_deadline END \
                 WHERE id = ?1 AND expires_at > ?3 AND version <= {RECORD_VERSION} \
                 RETURNING expiry = ?4"
            )
            .into(),
            clear_expired: format!("DELETE FROM {t} WHERE id = ?1 AND expires_at <= ?2").into(),
            // `write_back` that also moves the row to the key ?6, unless a row is stored there.
            move_to: format!(
                "UPDATE {t} SET data = ?2, idle_deadline = ?3, expiry = ?4, owner = ?5, id = ?6 \
                 WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM {t} WHERE id = ?6)"
            )
            .into(),
            delete: format!("DELETE FROM {t} WHERE id = ?1").into(),
            delete_expired: format!(
                "DELETE FROM {t} WHERE id IN \
                 (SELECT id FROM {t} WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)"
            )
            .into(),
            list_owner: format!(
                "SELECT id, created_at, expires_at FROM {t} \
                 WHERE owner = ?1 AND expires_at > ?2 ORDER BY created_at, id"
            )
            .into(),
            delete_owner: format!("DELETE FROM {t} WHERE owner = ?1").into(),
            table,
        })
    }

    fn schema_sql(&self) -> String {
        let t = &self.table;
        let name = &self.table_name;
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (
    id BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 32),
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    idle_deadline INTEGER NOT NULL,
    absolute_deadline INTEGER,
    expires_at INTEGER GENERATED ALWAYS AS
        (min(idle_deadline, coalesce(absolute_deadline, idle_deadline))) STORED,
    expiry TEXT NOT NULL,
    owner TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS \"{name}_expires_at_idx\" ON {t} (expires_at);
CREATE INDEX IF NOT EXISTS \"{name}_owner_idx\" ON {t} (owner) WHERE owner IS NOT NULL;
"
        )
    }
}

fn stmt(sql: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    // Built only from validated identifiers (see `quote_ident`); every value is a bind parameter.
    AssertSqlSafe(Arc::clone(sql))
}

/// Microseconds since the Unix epoch, the unit of the time columns. Saturates outside the `i64`
/// range (about ±292,000 years), which `OffsetDateTime` cannot reach anyway.
fn micros(at: OffsetDateTime) -> i64 {
    let us = at.unix_timestamp_nanos() / 1000;
    i64::try_from(us).unwrap_or(if us < 0 { i64::MIN } else { i64::MAX })
}

/// A deadline in microseconds since the Unix epoch, rounded up (see [`deadline_up`]).
fn deadline_micros(at: OffsetDateTime) -> i64 {
    micros(deadline_up(at))
}

fn from_micros(us: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok()
}

fn encoding(what: &str, error: serde_json::Error) -> StoreError {
    StoreError::new(
        StoreErrorKind::Encoding,
        format!("could not encode the session {what}"),
    )
    .with_source(error)
}

/// Whether `target` (a path or a `sqlite:` URL) names a database that lives only as long as a
/// connection: `:memory:`, `sqlite::memory:`, a URL or `file:` URI with `mode=memory` (SQLite
/// opens every file name as a URI), or no file name at all (a private temporary database).
fn in_memory(target: &str) -> bool {
    let rest = target.strip_prefix("sqlite:").unwrap_or(target);
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (uri, rest) = match rest.strip_prefix("file:") {
        Some(rest) => (true, rest),
        None => (target.starts_with("sqlite:"), rest),
    };
    let (name, query) = match rest.split_once('?') {
        Some((name, query)) if uri => (name, query),
        _ => (rest, ""),
    };
    let name = name.trim_start_matches('/');
    name.is_empty() || name == ":memory:" || query.split('&').any(|pair| pair == "mode=memory")
}

/// What [`SqliteStore::connect`] checks once connected, on the file SQLite actually opened (the
/// name as given can hide an in-memory database behind percent-encoding, or `vfs=memdb`): that
/// there is one, that not every user may write to it (anyone could then plant a session, under
/// an ID they know, with any owner), and that only the app's user may read it (SQLite creates
/// it, and its `-wal` and `-shm` files, readable by all under the usual umask): mode `0600`, as
/// the file store's session files.
async fn private_file(pool: &SqlitePool) -> Result<(), StoreError> {
    let file: Option<String> =
        sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_optional(pool)
            .await
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Backend,
                    "could not read which file the SQLite database is",
                )
                .with_source(e)
            })?;
    let Some(file) = file.filter(|file| !file.is_empty()) else {
        return Err(StoreError::new(
            StoreErrorKind::Config,
            "an in-memory or temporary SQLite database is lost when the pool closes its \
             connections; use a file, or MemoryStore",
        ));
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let config = |message: &str, error: std::io::Error| {
            StoreError::new(StoreErrorKind::Config, format!("SQLite store: {message}"))
                .with_source(error)
        };
        let meta =
            std::fs::metadata(&file).map_err(|e| config("cannot read the database file", e))?;
        if meta.permissions().mode() & 0o002 != 0 {
            return Err(StoreError::new(
                StoreErrorKind::Config,
                "SQLite store: the database file is writable by every user (anyone could plant \
                 a session in it); make it 0600",
            ));
        }
        for path in [file.clone(), format!("{file}-wal"), format!("{file}-shm")] {
            match std::fs::metadata(&path) {
                Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| config("cannot make the database file private", e))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

impl SqliteStore {
    /// A store over `pool`, using the table `tower_satchel_sessions`. Call
    /// [`migrate`](Self::migrate) before first use.
    pub fn new(pool: SqlitePool) -> Self {
        let sql =
            Statements::new(DEFAULT_TABLE).expect("the default table name is a valid identifier");
        Self {
            pool,
            sql: Arc::new(sql),
            handoff: None,
        }
    }

    /// Opens (creating it if missing) the database at `target`: a file path such as
    /// `sessions.sqlite3`, or a `sqlite:` URL such as `sqlite://data/sessions.db?mode=rwc`. The
    /// connections use WAL journal mode, `synchronous = NORMAL` (a power loss may lose the last
    /// few committed sessions, never corrupt the file) and wait up to 5 seconds for a lock. The
    /// pool does not ping a connection before each use, as sqlx does by default: that is a round
    /// trip to the connection's worker thread per store operation, and a connection to a file
    /// does not drop. Under load, when the store's operations queue for a connection, one that
    /// has just answered goes straight to the next operation, skipping the test sqlx makes of
    /// every connection returned to its pool (the same round trip, and sqlx cannot skip it); it
    /// goes back to the pool when nobody waits, after an error, and at the latest 100 ms after it
    /// left it, so other users of [`pool`](Self::pool) get their turn. With the counter example
    /// under load (`benches/load.sh sqlite`), that raised returning-visitor throughput by 15 %
    /// and cut the app's CPU time per request from about 145 to 125 µs. A store over a pool of
    /// your own ([`new`](Self::new)) does neither.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Config`] for a URL of another database or a malformed one, for an
    /// in-memory or temporary database (`:memory:`, `sqlite::memory:`, `mode=memory`, no file
    /// name, however encoded), which would vanish with the pool's connections (use `MemoryStore`
    /// instead), and for a database file every user may write to; [`StoreErrorKind::Backend`]
    /// when the file cannot be opened or created.
    ///
    /// The database file and its `-wal` and `-shm` files are made private to the app's user
    /// (mode `0600`, on Unix): SQLite creates them readable by every user under the usual umask,
    /// and they hold every session's data.
    pub async fn connect(target: &str) -> Result<Self, StoreError> {
        let options = if target.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(target).map_err(|e| {
                StoreError::new(StoreErrorKind::Config, "invalid SQLite URL").with_source(e)
            })?
        } else if target.contains("://") {
            return Err(StoreError::new(
                StoreErrorKind::Config,
                "SqliteStore::connect takes a file path or a sqlite: URL",
            ));
        } else {
            SqliteConnectOptions::new().filename(target)
        };
        if in_memory(target) {
            return Err(StoreError::new(
                StoreErrorKind::Config,
                "an in-memory or temporary SQLite database is lost when the pool closes its \
                 connections; use a file, or MemoryStore",
            ));
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(StdDuration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .acquire_timeout(StdDuration::from_secs(10))
            // sqlx pings a pooled connection before each use by default: for SQLite, a round trip
            // to the connection's worker thread per store operation, guarding against nothing (a
            // connection to a file does not drop).
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Backend,
                    "could not open the SQLite database",
                )
                .with_source(e)
            })?;
        if let Err(error) = private_file(&pool).await {
            pool.close().await;
            return Err(error);
        }
        Ok(Self {
            handoff: Some(Arc::new(Handoff::new(&pool))),
            ..Self::new(pool)
        })
    }

    /// Uses the table `table` instead of `tower_satchel_sessions`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless the name is 1 to 48 ASCII letters, digits or underscores, not
    /// starting with a digit, nor with `sqlite_`, which SQLite reserves. Names are quoted as
    /// written, but SQLite compares them without regard to case: `Sessions` and `sessions` are
    /// one table.
    pub fn with_table(self, table: &str) -> Result<Self, ConfigError> {
        let sql = Statements::new(table)?;
        Ok(Self {
            sql: Arc::new(sql),
            ..self
        })
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The statements [`migrate`](Self::migrate) runs, for apps that apply schema changes with
    /// their own migration tool. Every statement is idempotent (`IF NOT EXISTS`).
    pub fn schema_sql(&self) -> String {
        self.sql.schema_sql()
    }

    /// Creates the table and its indexes where missing, in one transaction. Safe to call on every
    /// start-up and from several processes at once.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Backend`] when the database cannot be written.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.error("migrate", e))?;
        let migrated = async {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::raw_sql(AssertSqlSafe(self.schema_sql()))
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        discard_on_error(conn, migrated)
            .await
            .map_err(|e| self.error("migrate", e))
    }

    fn error(&self, op: &str, error: sqlx::Error) -> StoreError {
        let failure = match &error {
            sqlx::Error::Database(db) => {
                let message = db.message();
                if message.starts_with("no such table") {
                    Failure::MissingTable
                } else if message.starts_with("no such column")
                    || message.contains("has no column named")
                {
                    Failure::WrongColumns
                } else {
                    Failure::Other
                }
            }
            _ => Failure::Other,
        };
        store_error("SqliteStore", &self.sql.table, op, failure, error)
    }
}

/// Decodes a row of [`COLUMNS`]. The inner `Err` is a row whose content is unusable, a value of
/// the wrong type included (SQLite keeps whatever a column is given: text written by hand into
/// `version`, say).
fn record_from_row(row: &SqliteRow) -> Result<Result<Record, &'static str>, sqlx::Error> {
    const WRONG_TYPE: &str = "a column holds a value of the wrong type";
    let Some(version) = column::<i64>(row, "version")? else {
        return Ok(Err(WRONG_TYPE));
    };
    let Ok(version) = u32::try_from(version) else {
        return Ok(Err("record version out of range"));
    };
    if version > RECORD_VERSION {
        return Ok(Err("record format version newer than this crate"));
    }
    let (Some(data), Some(expiry), Some(created_at), Some(idle_deadline)) = (
        column::<String>(row, "data")?,
        column::<String>(row, "expiry")?,
        column::<i64>(row, "created_at")?,
        column::<i64>(row, "idle_deadline")?,
    ) else {
        return Ok(Err(WRONG_TYPE));
    };
    let (Some(absolute_deadline), Some(owner)) = (
        column::<Option<i64>>(row, "absolute_deadline")?,
        column::<Option<String>>(row, "owner")?,
    ) else {
        return Ok(Err(WRONG_TYPE));
    };
    let Ok(data) = serde_json::from_str::<Map<String, Value>>(&data) else {
        return Ok(Err("data is not a JSON object"));
    };
    let Ok(expiry) = serde_json::from_str::<Expiry>(&expiry) else {
        return Ok(Err("unreadable expiry"));
    };
    let (Some(created_at), Some(idle_deadline)) =
        (from_micros(created_at), from_micros(idle_deadline))
    else {
        return Ok(Err("time out of range"));
    };
    let absolute_deadline = match absolute_deadline.map(from_micros) {
        None => None,
        Some(Some(at)) => Some(at),
        Some(None) => return Ok(Err("time out of range")),
    };
    Ok(Ok(Record {
        version,
        data,
        created_at,
        idle_deadline,
        absolute_deadline,
        expiry,
        owner,
    }))
}

/// The column `name` of `row`, or `None` when it holds a value of another type.
fn column<'r, T>(row: &'r SqliteRow, name: &str) -> Result<Option<T>, sqlx::Error>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    match row.try_get(name) {
        Ok(value) => Ok(Some(value)),
        Err(sqlx::Error::ColumnDecode { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Returns `result`, closing `conn` instead of returning it to the pool when `result` is an error
/// from a transaction on it.
///
/// After some errors (a full disk, an I/O error, a busy database) SQLite rolls the transaction
/// back by itself. sqlx still counts it as open, as its own `ROLLBACK` then fails, and refuses
/// every later transaction on that connection (`InvalidSavePointStatement`), for as long as the
/// pool keeps it. A fresh connection replaces the closed one when needed.
async fn discard_on_error<T>(
    conn: PoolConnection<Sqlite>,
    result: Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    if result.is_err() {
        let _ = conn.close().await;
    }
    result
}

impl SqliteStore {
    /// A save that changes data, or a rename: read, apply, write back (under the new key, for a
    /// rename), in one transaction that holds the write lock from its start.
    async fn save_data(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        move_to: Option<&SessionKey>,
        now: OffsetDateTime,
    ) -> Result<(Renamed, Saved), sqlx::Error> {
        let handoff = self.handoff.as_deref();
        let mut held = handoff::checkout(&self.pool, handoff).await?;
        let saved = self
            .save_data_on(&mut held.conn, key, changes, move_to, now)
            .await;
        if saved.is_ok() {
            handoff::checkin(&self.pool, handoff, held, true);
            return saved;
        }
        discard_on_error(held.conn, saved).await
    }

    /// Runs one statement on a connection (from the pool, or handed on by another operation,
    /// see `handoff`).
    async fn on_conn<T>(
        &self,
        op: &'static str,
        f: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        handoff::with_connection(&self.pool, self.handoff.as_deref(), f)
            .await
            .map_err(|e| self.error(op, e))
    }

    async fn save_data_on(
        &self,
        conn: &mut SqliteConnection,
        key: &SessionKey,
        changes: &ChangeSet,
        move_to: Option<&SessionKey>,
        now: OffsetDateTime,
    ) -> Result<(Renamed, Saved), sqlx::Error> {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(stmt(&self.sql.read_for_save))
            .bind(key.as_bytes().as_slice())
            .bind(micros(now))
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok((Renamed::Gone, Saved::Gone));
        };
        let mut record = match record_from_row(&row)? {
            Ok(record) => record,
            Err(problem) => {
                // `load` reads such a row as "no session", so the save has nothing to apply to.
                tracing::warn!(session = %key.log_tag(), problem, "unreadable session row; save dropped");
                tx.rollback().await?;
                return Ok((Renamed::Gone, Saved::Gone));
            }
        };
        let outcome = changes.apply_to(&mut record);
        let data =
            serde_json::to_string(&record.data).map_err(|e| sqlx::Error::Encode(e.into()))?;
        let expiry =
            serde_json::to_string(&record.expiry).map_err(|e| sqlx::Error::Encode(e.into()))?;
        let write = match move_to {
            None => sqlx::query(stmt(&self.sql.write_back)),
            Some(to) => {
                // An expired row under the new key gives way, as to `create`.
                sqlx::query(stmt(&self.sql.clear_expired))
                    .bind(to.as_bytes().as_slice())
                    .bind(micros(now))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(stmt(&self.sql.move_to))
            }
        };
        let mut write = write
            .bind(key.as_bytes().as_slice())
            .bind(data)
            .bind(deadline_micros(record.idle_deadline))
            .bind(expiry)
            .bind(record.owner);
        if let Some(to) = move_to {
            write = write.bind(to.as_bytes().as_slice());
        }
        let written = write.execute(&mut *tx).await?;
        if written.rows_affected() == 0 {
            // Only `move_to` can match nothing here: a live row holds the new key.
            tx.rollback().await?;
            return Ok((Renamed::Taken, Saved::Gone));
        }
        tx.commit().await?;
        Ok((Renamed::Applied, outcome))
    }
}

impl SessionStore for SqliteStore {
    async fn load(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> Result<Option<Record>, StoreError> {
        let row = self
            .on_conn("load", async |conn| {
                sqlx::query(stmt(&self.sql.load))
                    .bind(key.as_bytes().as_slice())
                    .bind(micros(now))
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
        let data = serde_json::to_string(&record.data).map_err(|e| encoding("data", e))?;
        let expiry = serde_json::to_string(&record.expiry).map_err(|e| encoding("expiry", e))?;
        let result = self
            .on_conn("create", async |conn| {
                sqlx::query(stmt(&self.sql.create))
                    .bind(key.as_bytes().as_slice())
                    .bind(i64::from(record.version))
                    .bind(data)
                    .bind(micros(record.created_at))
                    .bind(deadline_micros(record.idle_deadline))
                    .bind(record.absolute_deadline.map(deadline_micros))
                    .bind(expiry)
                    .bind(record.owner.as_deref())
                    .bind(micros(now))
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
        check_depth(changes.set.values())?;
        if changes.changes_data() {
            // Never `Taken`: it moves nothing.
            return match self.save_data(key, changes, None, now).await {
                Ok((_, saved)) => Ok(saved),
                Err(e) => Err(self.error("save", e)),
            };
        }
        let expiry = changes
            .expiry
            .map(|e| serde_json::to_string(&e))
            .transpose()
            .map_err(|e| encoding("expiry", e))?;
        let basis = changes
            .deadline_basis
            .map(|e| serde_json::to_string(&e))
            .transpose()
            .map_err(|e| encoding("expiry", e))?;
        let owner = changes.owner.as_ref();
        let applied = self
            .on_conn("save", async |conn| {
                sqlx::query_scalar::<_, bool>(stmt(&self.sql.save_metadata))
                    .bind(key.as_bytes().as_slice())
                    .bind(changes.idle_deadline.map(deadline_micros))
                    .bind(expiry)
                    .bind(owner.is_some())
                    .bind(owner.and_then(|o| o.as_deref()))
                    .bind(micros(now))
                    .bind(basis)
                    // To the end, not `fetch_optional`: SQLite commits an `UPDATE … RETURNING`
                    // when the statement finishes, after its row, and sqlx drops the result of
                    // finishing a statement it stopped reading (a full disk would go unreported).
                    .fetch_all(conn)
                    .await
            })
            .await?;
        Ok(saved_from(applied.first().copied()))
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: OffsetDateTime,
        basis: Expiry,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        let basis = serde_json::to_string(&basis).map_err(|e| encoding("expiry", e))?;
        let applied = self
            .on_conn("touch", async |conn| {
                sqlx::query_scalar::<_, bool>(stmt(&self.sql.touch))
                    .bind(key.as_bytes().as_slice())
                    .bind(deadline_micros(idle_deadline))
                    .bind(micros(now))
                    .bind(basis)
                    .fetch_all(conn) // to the end: see `save`
                    .await
            })
            .await?;
        Ok(saved_from(applied.first().copied()))
    }

    async fn rename(
        &self,
        from: &SessionKey,
        to: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Renamed, StoreError> {
        check_depth(changes.set.values())?;
        self.save_data(from, changes, Some(to), now)
            .await
            .map(|(renamed, _)| renamed)
            .map_err(|e| self.error("rename", e))
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
                    .bind(micros(now))
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
        let rows = self
            .on_conn("list_owner", async |conn| {
                sqlx::query(stmt(&self.sql.list_owner))
                    .bind(owner)
                    .bind(micros(now))
                    .fetch_all(conn)
                    .await
            })
            .await?;
        let mut sessions = Vec::with_capacity(rows.len());
        for row in rows {
            // A value of another type than its column's (see `record_from_row`) is `None`.
            let read = |name: &str| -> Result<Option<i64>, StoreError> {
                column(&row, name).map_err(|e| self.error("list_owner", e))
            };
            let id: Vec<u8> = row.try_get("id").map_err(|e| self.error("list_owner", e))?;
            let (Ok(bytes), Some(created_at), Some(deadline)) = (
                <[u8; 32]>::try_from(id.as_slice()),
                read("created_at")?.and_then(from_micros),
                read("expires_at")?.and_then(from_micros),
            ) else {
                tracing::warn!("unreadable session row skipped in an owner listing");
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

    #[test]
    fn micros_round_trip_to_the_microsecond() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let back = from_micros(micros(at)).unwrap();
        assert_eq!(back.unix_timestamp_nanos(), 1_700_000_000_123_456_000);
        assert!(from_micros(i64::MAX).is_none());
    }

    #[test]
    fn deadlines_are_rounded_up_to_the_microsecond() {
        let at = |nanos: i128| OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
        assert_eq!(
            deadline_micros(at(1_700_000_000_123_456_789)),
            1_700_000_000_123_457
        );
        assert_eq!(
            deadline_micros(at(1_700_000_000_123_456_000)),
            1_700_000_000_123_456
        );
        assert_eq!(deadline_micros(at(-500)), 0);
        assert_eq!(deadline_micros(at(-1_500)), -1);
    }

    #[test]
    fn bad_table_names_are_refused() {
        assert!(Statements::new("sessions; DROP TABLE x").is_err());
        assert!(Statements::new("app_sessions").is_ok());
    }
}
