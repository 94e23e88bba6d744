//! `SESSION_STORE=file`: a [`FileStore`] in the folder named by `$SESSION_DIR` (default
//! `./sessions`), created with owner-only permissions if needed.
//!
//! Several processes may share the folder (they lock each session's file while they change it).
//! The cleanup task runs for as long as the example runs.

use std::path::PathBuf;

use tower_satchel::{Backend, CleanupConfig, FileStore, IntoBackend, spawn_cleanup};

use super::BoxError;

pub(super) async fn backend() -> Result<Backend, BoxError> {
    let dir = std::env::var_os("SESSION_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("./sessions"), PathBuf::from);
    let store = FileStore::new(dir)?;
    // Keep the cleanup running until the runtime shuts down.
    let task = spawn_cleanup(store.clone(), CleanupConfig::default());
    tokio::spawn(async move {
        let _task = task;
        std::future::pending::<()>().await
    });
    tracing::info!(store = ?store, "sessions in files");
    Ok(store.into_backend())
}
