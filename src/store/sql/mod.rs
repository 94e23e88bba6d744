//! SQL stores through sqlx: [`PostgresStore`] and [`SqliteStore`].
//!
//! Both keep one row per session in one table, keyed by the 32-byte [`SessionKey`], with the data
//! as a JSON object and the deadlines in their own columns, so that liveness is a plain `WHERE` on an
//! indexed column judged against the layer's `now`. The table and its indexes are created by
//! `migrate()`; `schema_sql()` gives the same statements for apps that run their own migration
//! tool. The two stores share the identifier rules and the error mapping below.

use crate::layer::ConfigError;
use crate::store::{Saved, StoreError, StoreErrorKind};

mod handoff;
#[cfg(feature = "postgres-store")]
mod postgres;
#[cfg(feature = "sqlite-store")]
mod sqlite;

#[cfg(feature = "postgres-store")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite-store")]
pub use sqlite::SqliteStore;

/// The table both stores use unless told otherwise.
pub(crate) const DEFAULT_TABLE: &str = "tower_satchel_sessions";

/// The longest table or schema name accepted: PostgreSQL cuts identifiers at 63 bytes, and index
/// names append up to 15 bytes to the table name.
const MAX_IDENT: usize = 48;

/// What a save or touch reports from its statement's `RETURNING`: no row when the session is
/// gone, else whether the idle deadline moved (see [`ChangeSet::deadline_basis`]).
///
/// [`ChangeSet::deadline_basis`]: crate::ChangeSet::deadline_basis
fn saved_from(deadline_moved: Option<bool>) -> Saved {
    match deadline_moved {
        None => Saved::Gone,
        Some(true) => Saved::Applied,
        Some(false) => Saved::PolicyChanged,
    }
}

/// `at` rounded up to a whole microsecond, the precision of both databases' time columns (sqlx
/// drops the rest): stored rounded down, a deadline could end before the cookie's `Max-Age`,
/// worked out from the exact deadline, does (SECURITY.md 15). Every store keeps deadlines
/// rounded up (see [`Record::encode`](crate::Record::encode)).
fn deadline_up(at: time::OffsetDateTime) -> time::OffsetDateTime {
    crate::record::deadline_rounded_up(at, 1_000)
}

/// Checks a table or schema name and returns it double-quoted for SQL.
///
/// Names are spliced into statements (they cannot be bind parameters), so only
/// `[A-Za-z_][A-Za-z0-9_]*` of at most 48 bytes is accepted; nothing else can reach the SQL text.
/// The name is quoted, so it is used exactly as written (case-sensitive).
fn quote_ident(what: &str, name: &str) -> Result<String, ConfigError> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_IDENT
        && !bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if valid {
        Ok(format!("\"{name}\""))
    } else {
        Err(ConfigError::new(format!(
            "the SQL {what} name {name:?} must be 1 to {MAX_IDENT} ASCII letters, digits or \
             underscores, not starting with a digit"
        )))
    }
}

/// Refuses a name starting with `prefix`, which the database keeps for itself (`sqlite_` for
/// SQLite's tables, in any case; `pg_` for PostgreSQL's schemas, in lower case: the names are
/// quoted, so `PG_x` is another name): such a name would only fail at `migrate`, with the
/// database's message.
fn reserved_prefix<'n>(
    what: &str,
    name: &'n str,
    prefix: &str,
    any_case: bool,
) -> Result<&'n str, ConfigError> {
    let reserved = name.get(..prefix.len()).is_some_and(|start| {
        if any_case {
            start.eq_ignore_ascii_case(prefix)
        } else {
            start == prefix
        }
    });
    if reserved {
        return Err(ConfigError::new(format!(
            "the SQL {what} name {name:?} starts with {prefix:?}, which the database reserves"
        )));
    }
    Ok(name)
}

/// What went wrong, as far as a SQL store can tell from a sqlx error.
enum Failure {
    /// The table (or its schema) does not exist.
    MissingTable,
    /// The table exists but lacks a column this version uses, or has another type.
    WrongColumns,
    /// The database role lacks a privilege the operation needs (SQLite has no roles).
    #[cfg_attr(not(feature = "postgres-store"), allow(dead_code))]
    Denied,
    /// Anything else the database or the connection reported.
    Other,
}

/// Turns a sqlx error into a [`StoreError`], keeping it as the source. `store` names the type
/// (`"PostgresStore"`), `table` the table as the user configured it, `op` the operation.
fn store_error(
    store: &str,
    table: &str,
    op: &str,
    failure: Failure,
    error: sqlx::Error,
) -> StoreError {
    match failure {
        Failure::MissingTable => StoreError::new(
            StoreErrorKind::Config,
            format!(
                "the session table {table} does not exist: call {store}::migrate() once at \
                 start-up (or apply {store}::schema_sql() with your migration tool)"
            ),
        )
        .with_source(error),
        Failure::WrongColumns => StoreError::new(
            StoreErrorKind::Config,
            format!(
                "the session table {table} does not have the columns {store} expects: was it \
                 created by {store}::migrate()?"
            ),
        )
        .with_source(error),
        Failure::Denied if op == "migrate" => StoreError::new(
            StoreErrorKind::Config,
            format!(
                "the database role may not create or inspect the session table {table}: \
                 migrate() needs USAGE and CREATE on its schema, CREATE on the database when a \
                 schema is set (even one that exists), and to own the table to add a missing \
                 index; or an administrator applies {store}::schema_sql(), after which \
                 migrate() only checks that it is there"
            ),
        )
        .with_source(error),
        Failure::Denied => StoreError::new(
            StoreErrorKind::Config,
            format!(
                "the database role may not use the session table {table} ({store} {op}): grant \
                 it USAGE on the schema and SELECT, INSERT, UPDATE, DELETE on the table"
            ),
        )
        .with_source(error),
        Failure::Other => {
            let kind = match &error {
                sqlx::Error::Configuration(_) => StoreErrorKind::Config,
                sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::Decode(_)
                | sqlx::Error::Encode(_) => StoreErrorKind::Encoding,
                _ => StoreErrorKind::Backend,
            };
            StoreError::new(kind, format!("{store} {op} failed")).with_source(error)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plain_names_are_quoted() {
        assert_eq!(quote_ident("table", "sessions").unwrap(), "\"sessions\"");
        assert_eq!(
            quote_ident("table", "App_Sessions_2").unwrap(),
            "\"App_Sessions_2\""
        );
    }

    #[test]
    fn names_that_could_smuggle_sql_are_refused() {
        for bad in [
            "",
            "1sessions",
            "sessions; DROP TABLE users",
            "a\"b",
            "a.b",
            "séance",
            "a b",
            &"x".repeat(MAX_IDENT + 1),
        ] {
            assert!(quote_ident("table", bad).is_err(), "{bad:?} accepted");
        }
        for reserved in ["sqlite_sessions", "SQLite_x", "sqlite_"] {
            assert!(
                reserved_prefix("table", reserved, "sqlite_", true).is_err(),
                "{reserved}"
            );
        }
        for fine in ["sqlit", "my_sqlite_sessions", "pg"] {
            assert_eq!(
                reserved_prefix("table", fine, "sqlite_", true).unwrap(),
                fine
            );
        }
        assert!(reserved_prefix("schema", "pg_sessions", "pg_", false).is_err());
        assert!(reserved_prefix("schema", "PG_sessions", "pg_", false).is_ok());
    }
}
