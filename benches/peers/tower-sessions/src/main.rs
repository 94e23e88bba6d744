//! The HTTP surface of `examples/counter.rs` (`GET /` counts visits in the session), served with
//! tower-sessions instead of tower-satchel, so that `benches/peers.sh` can measure both with the
//! same load script. `SESSION_STORE` picks the store as in the counter example: `memory` (the
//! default, tower-sessions' `MemoryStore`), `redis` (`tower-sessions-redis-store` on `$REDIS_URL`)
//! or `none` (the bare route). Settings match the counter example's: a plain-HTTP cookie (no
//! `Secure`), the default expiry of each library.

use axum::Router;
use axum::routing::get;
use tower_sessions::{MemoryStore, Session, SessionManagerLayer, SessionStore};
use tower_sessions_redis_store::RedisStore;
use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};

async fn count(session: Session) -> Result<String, String> {
    let visits: u64 = session
        .get("visits")
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or(0)
        + 1;
    session
        .insert("visits", visits)
        .await
        .map_err(|e| e.to_string())?;
    Ok(visits.to_string())
}

fn counter<S: SessionStore + Clone>(store: S) -> Router {
    let layer = SessionManagerLayer::new(store).with_secure(false);
    Router::new().route("/", get(count)).layer(layer)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = match std::env::var("SESSION_STORE").as_deref() {
        Ok("none") => Router::new().route("/", get(|| async { "1" })),
        Ok("redis") => {
            let url = std::env::var("REDIS_URL")?;
            // The pool size of the store's README; $REDIS_POOL changes it.
            let size = std::env::var("REDIS_POOL").map_or(Ok(6), |n| n.parse())?;
            let pool = Pool::new(Config::from_url(&url)?, None, None, None, size)?;
            pool.init().await?;
            counter(RedisStore::new(pool))
        }
        _ => counter(MemoryStore::default()),
    };
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
