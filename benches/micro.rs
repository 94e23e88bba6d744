//! Micro-benchmarks: ID generation and parsing, record encode/decode, and one request through the
//! layer against the same route without it.
//!
//! ```text
//! cargo bench --bench micro
//! ```

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use divan::Bencher;
use http::{Request, Response, header};
use serde_json::json;
use std::convert::Infallible;
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;
use tower::{Layer, Service};
use tower_satchel::{Expiry, MemoryStore, Record, Session, SessionError, SessionId, SessionLayer};

fn main() {
    divan::main();
}

#[divan::bench]
fn id_generate() -> SessionId {
    SessionId::generate().unwrap_or_else(|_| unreachable_id())
}

#[divan::bench]
fn id_parse_and_hash(bencher: Bencher) {
    let token = SessionId::generate()
        .map(|id| id.expose())
        .unwrap_or_default();
    bencher.bench(|| SessionId::parse(divan::black_box(&token)).map(|id| id.key()));
}

fn unreachable_id() -> SessionId {
    SessionId::parse("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .unwrap_or_else(|| unreachable!())
}

fn sample_record() -> Record {
    let now = OffsetDateTime::now_utc();
    let mut record = Record::new(
        now,
        now + Duration::hours(1),
        Some(now + Duration::days(30)),
        Expiry::OnInactivity(Duration::hours(1)),
    );
    record
        .data
        .insert("user".into(), json!("alice@example.com"));
    record.data.insert("visits".into(), json!(42));
    record.data.insert(
        "cart".into(),
        json!({"items": ["a", "b", "c"], "total": 1999}),
    );
    record.owner = Some("user-1234".into());
    record
}

#[divan::bench]
fn record_encode(bencher: Bencher) {
    let record = sample_record();
    bencher.bench(|| divan::black_box(&record).encode());
}

#[divan::bench]
fn record_decode(bencher: Bencher) {
    let bytes = sample_record().encode().unwrap_or_default();
    bencher.bench(|| Record::decode(divan::black_box(&bytes)));
}

async fn counter(session: Session) -> Result<String, SessionError> {
    let visits = session.update("visits", |n: &mut u64| {
        *n += 1;
        *n
    })?;
    Ok(visits.to_string())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

#[divan::bench]
fn request_bare_route(bencher: Bencher) {
    let rt = runtime();
    let app: Router = Router::new().route("/", get(|| async { "1" }));
    bencher.bench_local(|| {
        rt.block_on(
            app.clone()
                .oneshot(Request::get("/").body(Body::empty()).unwrap_or_default()),
        )
    });
}

#[divan::bench]
fn request_new_visitor(bencher: Bencher) {
    let rt = runtime();
    let app: Router = Router::new()
        .route("/", get(counter))
        .layer(SessionLayer::new(MemoryStore::new()));
    bencher.bench_local(|| {
        rt.block_on(
            app.clone()
                .oneshot(Request::get("/").body(Body::empty()).unwrap_or_default()),
        )
    });
}

#[divan::bench]
fn request_returning_visitor(bencher: Bencher) {
    returning(
        bencher,
        "/",
        routes().layer(SessionLayer::new(MemoryStore::new())),
    );
}

/// A returning visitor whose handler only reads the session: no store write.
#[divan::bench]
fn request_returning_reader(bencher: Bencher) {
    returning(
        bencher,
        "/read",
        routes().layer(SessionLayer::new(MemoryStore::new())),
    );
}

/// As `request_returning_visitor`, with the layer wrapped around the whole router instead of
/// added with `Router::layer` (which wraps, and clones per request, each route).
#[divan::bench]
fn request_returning_visitor_router_wrapped(bencher: Bencher) {
    returning(
        bencher,
        "/",
        SessionLayer::new(MemoryStore::new()).layer(routes()),
    );
}

fn routes() -> Router {
    Router::new().route("/", get(counter)).route(
        "/read",
        get(|session: Session| async move {
            session
                .get::<u64>("visits")
                .ok()
                .flatten()
                .unwrap_or(0)
                .to_string()
        }),
    )
}

fn returning<S>(bencher: Bencher, path: &'static str, app: S)
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    let rt = runtime();
    let token = rt
        .block_on(
            app.clone()
                .oneshot(Request::get("/").body(Body::empty()).unwrap_or_default()),
        )
        .ok()
        .and_then(|r| r.headers().get(header::SET_COOKIE).cloned())
        .and_then(|v| v.to_str().ok().map(str::to_owned))
        .and_then(|v| v.split(';').next().map(str::to_owned))
        .unwrap_or_default();
    bencher.bench_local(|| {
        let request = Request::get(path)
            .header(header::COOKIE, &token)
            .body(Body::empty())
            .unwrap_or_default();
        rt.block_on(app.clone().oneshot(request))
    });
}

/// A `delete_expired` call on a memory store of 1,000,000 live sessions: the deadline index means
/// a sweep costs what it deletes, not what the store holds.
#[divan::bench(sample_count = 10)]
fn memory_sweep_of_a_million_sessions(bencher: Bencher) {
    use tower_satchel::SessionStore;
    let rt = runtime();
    let store = MemoryStore::new();
    let now = OffsetDateTime::now_utc();
    let record = Record::new(now, now + Duration::hours(1), None, Expiry::OnSessionEnd);
    rt.block_on(async {
        for _ in 0..1_000_000 {
            if let Ok(id) = SessionId::generate() {
                let _ = store.create(&id.key(), &record, now).await;
            }
        }
    });
    bencher.bench_local(|| rt.block_on(store.delete_expired(now, 1000)));
}
