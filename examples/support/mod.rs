//! Shared by the examples: picks the store from `$SESSION_STORE` and builds the layer.
//!
//! Each store's set-up lives in its own file here, compiled only with that store's feature.

use std::error::Error;

use tower_satchel::{Backend, IntoBackend, MemoryStore, SessionLayer};

#[cfg(feature = "cookie-store")]
mod cookie;
#[cfg(feature = "file-store")]
mod file;
#[cfg(feature = "redis-store")]
mod redis;
#[cfg(any(feature = "postgres-store", feature = "sqlite-store"))]
mod sql;

/// The error type of the examples' set-up.
pub(crate) type BoxError = Box<dyn Error + Send + Sync>;

/// The store named by `$SESSION_STORE` (`memory` when unset or empty).
pub(crate) async fn backend_from_env() -> Result<Backend, BoxError> {
    let kind = std::env::var("SESSION_STORE")
        .ok()
        .filter(|kind| !kind.is_empty())
        .unwrap_or_else(|| "memory".to_owned());
    match kind.as_str() {
        "memory" => Ok(MemoryStore::new().into_backend()),
        #[cfg(feature = "file-store")]
        "file" => file::backend().await,
        #[cfg(feature = "redis-store")]
        "redis" => redis::backend().await,
        #[cfg(feature = "postgres-store")]
        "postgres" => sql::postgres().await,
        #[cfg(feature = "sqlite-store")]
        "sqlite" => sql::sqlite().await,
        #[cfg(feature = "cookie-store")]
        "cookie" => cookie::backend().await,
        other => Err(format!(
            "SESSION_STORE={other:?} is unknown or its feature is not compiled in \
             (memory, file, redis, postgres, sqlite, cookie; build with --features full)"
        )
        .into()),
    }
}

/// The layer both examples use. They serve plain HTTP on loopback, so `Secure` is turned off
/// explicitly: browsers would not send a `Secure` cookie back over `http://`. Never do this in
/// production.
pub(crate) async fn layer_from_env() -> Result<SessionLayer, BoxError> {
    let backend = backend_from_env().await?;
    Ok(SessionLayer::builder(backend).secure(false).build()?)
}

/// The address from `$ADDR` (default `127.0.0.1:3000`).
pub(crate) fn addr() -> String {
    std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
}

/// Logs to stderr, filtered by `$RUST_LOG` (default `info`).
pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
