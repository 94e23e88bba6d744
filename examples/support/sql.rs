//! `SESSION_STORE=postgres`: a [`PostgresStore`] on `$DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`).
//! `SESSION_STORE=sqlite`: a [`SqliteStore`] in the file named by `$DATABASE_URL`, a path or a
//! `sqlite:` URL (default `sessions.sqlite3` in the working folder).
//!
//! Both create their table at start-up with `migrate()` and run the cleanup task for as long as the
//! example runs.

#[cfg(feature = "postgres-store")]
use tower_satchel::PostgresStore;
#[cfg(feature = "sqlite-store")]
use tower_satchel::SqliteStore;
use tower_satchel::{Backend, CleanupConfig, IntoBackend, SessionStore, spawn_cleanup};

use super::BoxError;

fn database_url(default: &str) -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => default.to_owned(),
    }
}

/// Keeps a cleanup task running until the runtime shuts down.
fn keep_cleaning<S: SessionStore + Clone>(store: &S) {
    let task = spawn_cleanup(store.clone(), CleanupConfig::default());
    tokio::spawn(async move {
        let _task = task;
        std::future::pending::<()>().await
    });
}

#[cfg(feature = "postgres-store")]
pub(super) async fn postgres() -> Result<Backend, BoxError> {
    let url = database_url("postgres://postgres@127.0.0.1:5432/test");
    let store = PostgresStore::connect(&url).await?;
    store.migrate().await?;
    keep_cleaning(&store);
    tracing::info!(store = ?store, "sessions in PostgreSQL");
    Ok(store.into_backend())
}

#[cfg(feature = "sqlite-store")]
pub(super) async fn sqlite() -> Result<Backend, BoxError> {
    let target = database_url("sessions.sqlite3");
    let store = SqliteStore::connect(&target).await?;
    store.migrate().await?;
    keep_cleaning(&store);
    tracing::info!(store = ?store, "sessions in SQLite");
    Ok(store.into_backend())
}
