//! `SESSION_STORE=redis`: a [`RedisStore`] on `$REDIS_URL` (default `redis://127.0.0.1:6379/`).
//!
//! A `rediss://` URL needs a TLS feature of the `redis` crate (see `RedisStore`'s deployment notes). Several URLs
//! separated by commas are taken as the seed nodes of a Redis Cluster.

use tower_satchel::{Backend, IntoBackend, RedisStore};

use super::BoxError;

pub(super) async fn backend() -> Result<Backend, BoxError> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    let store = if url.contains(',') {
        RedisStore::open_cluster(url.split(',').map(str::trim)).await?
    } else {
        RedisStore::open(&url).await?
    };
    tracing::info!(store = ?store, "sessions in Redis");
    Ok(store.into_backend())
}
