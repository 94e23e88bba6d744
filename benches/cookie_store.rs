//! Micro-benchmarks of the cookie store: sealing and opening sessions of about 100 B, 1 KB and
//! 3 KB (the record's JSON), plain and compressed; and one request of the counter app through the
//! layer with the cookie store, next to the same route without the layer (in process, no network).
//!
//! ```text
//! cargo bench --bench cookie_store --features cookie-store
//! ```
//!
//! Opening runs the whole input path (size check, base64, AES-256-GCM, JSON, deadlines); sealing
//! the whole output path (JSON, a nonce from the OS, AES-256-GCM, base64). Compressed cookies are
//! made of repetitive text here, which flatters deflate; real sessions compress less.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use divan::Bencher;
use http::{Request, header};
use serde_json::json;
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;
use tower_satchel::{
    CookieStore, Expiry, Key, Record, Session, SessionError, SessionLayer, Unsealed,
};

fn main() {
    divan::main();
}

const SIZES: [usize; 3] = [100, 1000, 3000];

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a valid timestamp")
}

/// A record whose JSON is `size` bytes (the deadlines and policy take about 90 of them).
fn record(size: usize) -> Record {
    let mut record = Record::new(
        now(),
        now() + Duration::hours(24),
        Some(now() + Duration::days(30)),
        Expiry::OnInactivity(Duration::hours(24)),
    );
    record.data.insert("visits".into(), json!(7));
    let base = record.encode().expect("encodable").len();
    let pad = size.saturating_sub(base + 10);
    // Varied text, so that the uncompressed case is not trivially compressible either.
    let text: String = (0..pad)
        .map(|i| char::from(b'a' + ((i * 7 + i / 13) % 26) as u8))
        .collect();
    record.data.insert("note".into(), json!(text));
    record
}

fn store(compressed: bool) -> CookieStore {
    let store = CookieStore::new(Key::from_bytes(&[42u8; 32]).expect("a 32-byte key"));
    if compressed {
        store.compression_level(1)
    } else {
        store
    }
}

fn open_now(store: &CookieStore, value: &str) -> bool {
    let mut future = pin!(store.open("id", value, now()));
    matches!(
        future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop())),
        Poll::Ready(Ok(Unsealed::Live { .. }))
    )
}

#[divan::bench(args = SIZES)]
fn seal(bencher: Bencher, size: usize) {
    let store = store(false);
    let record = record(size);
    bencher.bench(|| store.seal("id", &record, now()).expect("fits"));
}

#[divan::bench(args = SIZES)]
fn open(bencher: Bencher, size: usize) {
    let store = store(false);
    let value = store.seal("id", &record(size), now()).expect("fits");
    assert!(open_now(&store, &value));
    bencher.bench(|| open_now(&store, divan::black_box(&value)));
}

#[divan::bench(args = SIZES)]
fn seal_compressed(bencher: Bencher, size: usize) {
    let store = store(true);
    let record = record(size);
    bencher.bench(|| store.seal("id", &record, now()).expect("fits"));
}

#[divan::bench(args = SIZES)]
fn open_compressed(bencher: Bencher, size: usize) {
    let store = store(true);
    let value = store.seal("id", &record(size), now()).expect("fits");
    assert!(open_now(&store, &value));
    bencher.bench(|| open_now(&store, divan::black_box(&value)));
}

/// The cost of rejecting a forged value (authentication fails after base64 and AES-GCM).
#[divan::bench]
fn reject_forged(bencher: Bencher) {
    let store = store(false);
    let mut value = store.seal("id", &record(1000), now()).expect("fits");
    value.replace_range(40..41, if &value[40..41] == "A" { "B" } else { "A" });
    assert!(!open_now(&store, &value));
    bencher.bench(|| open_now(&store, divan::black_box(&value)));
}

async fn counter(session: Session) -> Result<String, SessionError> {
    let visits = session.update("visits", |n: &mut u64| {
        *n += 1;
        *n
    })?;
    Ok(visits.to_string())
}

async fn reader(session: Session) -> Result<String, SessionError> {
    Ok(session.get::<u64>("visits")?.unwrap_or(0).to_string())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

fn get_request(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut request = Request::get(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    request.body(Body::empty()).expect("a valid request")
}

/// The counter's route without any session layer: the baseline of the two below.
#[divan::bench]
fn request_bare_route(bencher: Bencher) {
    let rt = runtime();
    let app: Router = Router::new().route("/", get(|| async { "1" }));
    bencher.bench_local(|| rt.block_on(app.clone().oneshot(get_request("/", None))));
}

/// A returning visitor of the counter: open, increment, seal, `Set-Cookie` on every request.
#[divan::bench]
fn request_returning_visitor(bencher: Bencher) {
    returning(bencher, "/");
}

/// A returning visitor whose handler only reads: open only (no seal until a touch is due).
#[divan::bench]
fn request_returning_reader(bencher: Bencher) {
    returning(bencher, "/read");
}

fn returning(bencher: Bencher, path: &str) {
    let rt = runtime();
    let app: Router = Router::new()
        .route("/", get(counter))
        .route("/read", get(reader))
        .layer(SessionLayer::new(store(false)));
    let response = rt
        .block_on(app.clone().oneshot(get_request("/", None)))
        .expect("a response");
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    bencher.bench_local(|| rt.block_on(app.clone().oneshot(get_request(path, Some(&cookie)))));
}
