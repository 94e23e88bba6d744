//! The HTTP surface of `examples/counter.rs` (`GET /` counts visits in the session), served with
//! tower-sessions and its `MemoryStore` instead of tower-satchel, so that `benches/peers.sh` can
//! measure both with the same load script. `SESSION_STORE=none` serves the bare route, as the
//! counter example does. Settings match the counter example's: a plain-HTTP cookie (no `Secure`),
//! the default expiry of each library.

use axum::Router;
use axum::routing::get;
use tower_sessions::{MemoryStore, Session, SessionManagerLayer};

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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = if std::env::var("SESSION_STORE").as_deref() == Ok("none") {
        Router::new().route("/", get(|| async { "1" }))
    } else {
        let layer = SessionManagerLayer::new(MemoryStore::default()).with_secure(false);
        Router::new().route("/", get(count)).layer(layer)
    };
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
