//! The counter app: `GET /` returns how many times this session has visited, `GET /pages/{name}`
//! records a visit to a page and returns how many distinct pages this session has seen.
//!
//! ```text
//! cargo run --example counter                                  # memory store on 127.0.0.1:3000
//! SESSION_STORE=redis REDIS_URL=redis://127.0.0.1/ cargo run --example counter --features redis-store
//! ```
//!
//! `$ADDR` sets the address; `$SESSION_STORE` picks the store (memory, file, redis, postgres,
//! sqlite, cookie), see `examples/support`.
//!
//! Benchmark-only extras, not part of the example's documented surface (the routes and variables
//! above) and free to change: `SESSION_STORE=none` serves the same routes with no session layer
//! and no counting (every answer is `1`), the baseline of `benches/load.sh`; with it,
//! `$BARE_SPIN_NS` adds a busy-wait to `GET /`, for that script's calibration.

mod support;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use tower_satchel::{Session, SessionError};

/// Counts visits in this session.
async fn count(session: Session) -> Result<String, SessionError> {
    let visits = session.update("visits", |n: &mut u64| {
        *n += 1;
        *n
    })?;
    Ok(visits.to_string())
}

/// Records a visit to page `name` under its own key, so concurrent requests for different pages
/// never overwrite each other (they are saved as change sets), and counts the pages seen.
async fn page(session: Session, Path(name): Path<String>) -> Result<String, SessionError> {
    session.insert(&format!("page:{name}"), true)?;
    let pages = session
        .keys()
        .iter()
        .filter(|k| k.starts_with("page:"))
        .count();
    Ok(pages.to_string())
}

/// `$BARE_SPIN_NS`: with `SESSION_STORE=none`, `GET /` busy-waits this many nanoseconds. It is
/// the calibration of `benches/load.sh` (store `spin:NS`): what a fixed cost per request, and
/// nothing else, does to the throughput ratio on the machine at hand.
fn bare_spin() -> Option<std::time::Duration> {
    let ns: u64 = std::env::var("BARE_SPIN_NS").ok()?.parse().ok()?;
    (ns > 0).then(|| std::time::Duration::from_nanos(ns))
}

#[tokio::main]
async fn main() -> Result<(), support::BoxError> {
    support::init_tracing();
    let app = if std::env::var("SESSION_STORE").as_deref() == Ok("none") {
        // The baseline of benches/load.sh: the same routes with no session layer at all.
        let root = match bare_spin() {
            None => get(|| async { "1" }),
            Some(spin) => get(move || async move {
                let start = std::time::Instant::now();
                while start.elapsed() < spin {
                    std::hint::spin_loop();
                }
                "1"
            }),
        };
        Router::new()
            .route("/", root)
            .route("/pages/{name}", get(|| async { "1" }))
    } else {
        Router::new()
            .route("/", get(count))
            .route("/pages/{name}", get(page))
            .layer(support::layer_from_env().await?)
    };
    let addr = support::addr();
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!("counter listening on http://{addr}");
    axum::serve(listener, app).await?;
    Ok(())
}
