//! HTTP-level tests of the layer itself, with a fault-injecting, call-counting store.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod conformance;
mod support_faulty;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration as StdDuration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::routing::{MethodRouter, get};
use bytes::Bytes;
use conformance::harness;
use http_body_util::BodyExt;
use support_faulty::Faulty;
use time::{Duration, OffsetDateTime};
use tokio::sync::Notify;
use tower::{ServiceBuilder, ServiceExt};
use tower_satchel::{
    Arrival, ChangeSet, CleanupConfig, Expiry, ImmediateStore, ManualClock, MemoryStore, Record,
    Saved, ScopedSession, Session, SessionError, SessionErrorKind, SessionId, SessionInfo,
    SessionKey, SessionLayer, SessionStore, StoreError, StoreErrorKind, spawn_cleanup_with_clock,
};

mod faulty_store_conformance {
    // The wrapper itself must meet the contract, or the tests below prove nothing.
    server_store_conformance!(|| async { super::Faulty::default() });
}

mod faulty_immediate_store_conformance {
    // The same through the layer's immediate path.
    server_store_conformance!(|| async { super::faulty(true) });
}

fn app(store: &Faulty) -> harness::App {
    harness::default_app(tower_satchel::IntoBackend::into_backend(store.clone()))
}

/// A handler that changes the session without loading it (`destroy` on the handle from the
/// request's extensions), then fails with a 5xx: nothing is persisted, so the store is not even
/// read, and the handler's own error response goes out even while the store is down.
#[tokio::test]
async fn a_failed_request_that_never_loaded_its_session_costs_no_load() {
    let store = Faulty::default();
    let token = app(&store).start().await;
    let router = Router::new()
        .route(
            "/",
            get(
                |axum::Extension(session): axum::Extension<Session>| async move {
                    session.destroy();
                    (StatusCode::INTERNAL_SERVER_ERROR, "the handler failed")
                },
            ),
        )
        .layer(SessionLayer::new(store.clone()));
    store.fail.store(true, Ordering::SeqCst);
    let before = store.calls();
    let resp = router
        .oneshot(
            Request::get("/")
                .header(header::COOKIE, format!("id={token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"the handler failed");
    assert_eq!(store.calls(), before, "no store call");
    store.fail.store(false, Ordering::SeqCst);
    assert_eq!(app(&store).get("/get/n", Some(&token)).await.body, "1");
}

#[tokio::test]
async fn malformed_tokens_never_reach_the_store() {
    let store = Faulty::default();
    let app = app(&store);
    // Of the right length, too: the whole value is checked, not just its length.
    let good = SessionId::generate().unwrap().expose();
    let right_length = [
        format!("{}.", &good[..42]),
        format!("+{}", &good[1..]),
        format!("{}/{}", &good[..20], &good[21..]),
        format!("{}=", &good[..42]),
        format!("../{}", &good[3..]),
        // The last character's two spare bits set: a second spelling of some ID.
        format!("{}B", &good[..42]),
    ];
    for value in [
        "",
        "short",
        "../../etc/passwd",
        "a/b",
        "a\\b",
        &"A".repeat(44),
        &"A".repeat(42),
    ]
    .into_iter()
    .chain(right_length.iter().map(String::as_str))
    {
        assert!(
            value.len() != 43 || SessionId::parse(value).is_none(),
            "{value}"
        );
        let resp = app
            .get_raw_cookie(
                "/read",
                HeaderValue::from_str(&format!("id={value}")).unwrap(),
            )
            .await;
        assert_eq!(resp.status, StatusCode::OK);
    }
    let resp = app
        .get_raw_cookie("/read", HeaderValue::from_bytes(b"id=\xff\xfe").unwrap())
        .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        store.calls(),
        (0, 0, 0),
        "no store call for a malformed token (SECURITY.md 4)"
    );
}

#[tokio::test]
async fn an_unknown_id_costs_one_load_and_writes_nothing() {
    let store = Faulty::default();
    let app = app(&store);
    let planted = SessionId::generate().unwrap().expose();
    let resp = app.get("/read", Some(&planted)).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.set_cookie().is_none());
    assert_eq!(
        store.calls(),
        (1, 0, 0),
        "SECURITY.md 3: loading an unknown ID writes nothing"
    );
    assert!(store.inner.is_empty());
}

#[tokio::test]
async fn untouched_and_read_only_requests_do_not_write() {
    let store = Faulty::default();
    let app = app(&store);
    app.get("/noop", None).await;
    app.get("/read", None).await;
    assert_eq!(
        store.calls(),
        (0, 0, 0),
        "a new visitor who writes nothing costs nothing"
    );
    assert!(store.inner.is_empty(), "no record for anonymous traffic");
    let token = app.start().await;
    assert_eq!(store.calls(), (0, 1, 0));
    app.get("/noop", Some(&token)).await;
    assert_eq!(store.calls(), (0, 1, 0), "not extracted: not loaded");
    for _ in 0..5 {
        app.get("/read", Some(&token)).await;
    }
    assert_eq!(
        store.calls(),
        (5, 1, 0),
        "reads within the touch window write nothing"
    );
    app.clock.advance(Duration::hours(3)); // past 10 % of the 24 h window
    let resp = app.get("/read", Some(&token)).await;
    assert!(resp.set_cookie().is_some());
    assert_eq!(store.calls(), (6, 1, 1), "one touch once due");
}

/// SECURITY.md 20: a 5xx response persists nothing. Counted at the store, not seen from the
/// response: a session created, saved, rotated or touched without a cookie going out would pass
/// every check made over HTTP (an orphaned record, a deadline moved). Each request is then made
/// without the failure, to show that it does reach the store.
#[tokio::test]
async fn server_errors_reach_the_store_with_no_write_touch_or_rename() {
    for immediate in [false, true] {
        let store = faulty(immediate);
        let app = app(&store); // 24 h of inactivity, touch after 10 %
        // A read-only route that fails (the harness has none), on the same store and clock.
        let reading = Router::new()
            .route(
                "/read-fail",
                get(|session: Session| async move {
                    let len = session.len();
                    (StatusCode::INTERNAL_SERVER_ERROR, len.to_string())
                }),
            )
            .route("/read", read_keys())
            .layer(
                SessionLayer::builder(store.clone())
                    .clock(app.clock.clone())
                    .build()
                    .unwrap(),
            );
        let token = app.start().await;
        // Past 10 % of the window: each request below that loads the session is due a touch.
        app.clock.advance(Duration::hours(3));
        let cases = [
            ("a new visitor who inserts", "/fail/n/100", None),
            (
                "a returning visitor who inserts",
                "/fail/n/100",
                Some(&token),
            ),
            ("cycle_id, then a failure", "/cycle-fail", Some(&token)),
            ("a read-only request, touch due", "/read-fail", Some(&token)),
        ];
        for (case, path, token) in cases {
            let what = format!("{case} (immediate {immediate})");
            let (records, (loads, writes, touches)) = (store.inner.len(), store.calls());
            let status = if path == "/read-fail" {
                let resp = get_with_cookie(&reading, path, token.unwrap()).await;
                let status = resp.status();
                assert_eq!(body_text(resp).await, "1", "{what}: the session was read");
                status
            } else {
                app.get(path, token.map(String::as_str)).await.status
            };
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{what}");
            let (loads_after, writes_after, touches_after) = store.calls();
            assert_eq!(
                writes_after, writes,
                "{what}: a create, save, delete or rename"
            );
            assert_eq!(touches_after, touches, "{what}: a touch");
            assert_eq!(store.inner.len(), records, "{what}: the number of records");
            // A returning visitor's session was loaded: the request did get that far.
            assert_eq!(loads_after - loads, usize::from(token.is_some()), "{what}");
        }
        // The same requests without the failure reach the store: the touch that was due all
        // along (first, before any other read), a create, a save, a rename.
        let (records, (_, writes, touches)) = (store.inner.len(), store.calls());
        let resp = get_with_cookie(&reading, "/read", &token).await;
        assert!(resp.headers().get(header::SET_COOKIE).is_some(), "touched");
        assert_eq!(store.calls().2, touches + 1, "the touch was due");
        assert_eq!(body_text(resp).await, "n", "the session's keys, unchanged");
        assert_eq!(app.get("/get/n", Some(&token)).await.body, "1");
        assert_eq!(app.get("/incr/n", None).await.body, "1");
        assert_eq!(store.inner.len(), records + 1, "a new visitor's create");
        assert_eq!(app.get("/incr/n", Some(&token)).await.body, "2");
        let rotated = app.get("/cycle", Some(&token)).await.expect_token();
        assert_eq!(store.calls().1, writes + 3, "a create, a save, a rename");
        assert_eq!(store.inner.len(), records + 1, "the rename kept one record");
        assert_eq!(app.get("/get/n", Some(&rotated)).await.body, "2");
    }
}

#[tokio::test]
async fn a_failing_store_on_load_rejects_without_running_the_handler() {
    let store = Faulty::default();
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    let layer = SessionLayer::new(store.clone());
    let router = Router::new()
        .route(
            "/",
            get(move |session: Session| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    session.insert("x", 1).unwrap();
                    "ran"
                }
            }),
        )
        .layer(layer);
    let token = {
        let resp = router
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        cookie_value(&resp)
    };
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    store.fail.store(true, Ordering::SeqCst);
    let resp = get_with_cookie(&router, "/", &token).await;
    let error = assert_store_error(&resp);
    assert_eq!(
        error.store_error().map(StoreError::kind),
        Some(StoreErrorKind::Backend)
    );
    assert!(
        std::error::Error::source(error).is_some(),
        "the cause is kept"
    );
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "the handler must not run with an empty session"
    );
    // The store comes back: so does the session, intact (SECURITY.md 28).
    store.fail.store(false, Ordering::SeqCst);
    let resp = get_with_cookie(&router, "/", &token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(ran.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failing_store_on_save_turns_the_response_into_an_error() {
    let store = Faulty::default();
    let app = app(&store);
    let token = app.start().await;
    // The load works; the save of the incremented value fails.
    store.fail_writes.store(true, Ordering::SeqCst);
    let (loads, writes, _) = store.calls();
    let resp = app.get("/incr/n", Some(&token)).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(store.calls().0, loads + 1, "loaded");
    assert_eq!(store.calls().1, writes + 1, "the save was tried");
    assert!(resp.set_cookie().is_none());
    store.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(
        app.get("/get/n", Some(&token)).await.body,
        "1",
        "nothing lost"
    );
}

/// A route whose handler sets `x` to `value`, then makes `store` fail: the store dies between
/// load and save.
fn write_then_fail(store: &Faulty, value: i64) -> MethodRouter {
    let fail = store.fail.clone();
    get(move |session: Session| {
        let fail = fail.clone();
        async move {
            session.insert("x", value).unwrap();
            fail.store(true, Ordering::SeqCst);
            "handler ok"
        }
    })
}

#[tokio::test]
async fn save_failures_become_error_responses_with_the_error_attached() {
    let store = Faulty::default();
    let router = Router::new().route("/", write_then_fail(&store, 1)).layer(
        SessionLayer::builder(store.clone())
            .error_handler(|error| {
                let mut response =
                    Response::new(Bytes::from(format!("custom: {:?}", error.kind())));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                response
            })
            .build()
            .unwrap(),
    );
    let resp = router
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    // This session's error: no cache may give it to another visitor (SECURITY.md 19).
    assert_eq!(
        resp.headers().get(header::VARY),
        Some(&HeaderValue::from_static("cookie"))
    );
    assert!(resp.extensions().get::<SessionError>().is_some());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"custom: Store");
}

/// A route that writes `x = value` into the session.
fn write_x(value: i64) -> MethodRouter {
    get(move |session: Session| async move {
        session.insert("x", value).unwrap();
        "written"
    })
}

/// A route that answers the session's `x` (0 when it has none).
fn read_x() -> MethodRouter {
    get(|session: Session| async move { session.get::<i64>("x").unwrap().unwrap_or(0).to_string() })
}

/// A route that answers the session's keys, comma-separated.
fn read_keys() -> MethodRouter {
    get(|session: Session| async move { session.keys().join(",") })
}

/// A router whose `/` writes a new visitor's session and `/read` reads it back.
fn write_and_read(store: &Faulty) -> Router {
    Router::new()
        .route("/", write_x(7))
        .route("/read", read_x())
        .layer(SessionLayer::new(store.clone()))
}

/// A `Faulty` store that the layer reaches through boxed futures, or as an `ImmediateStore`.
fn faulty(immediate: bool) -> Faulty {
    Faulty {
        immediate,
        ..Faulty::default()
    }
}

/// A request from a new visitor (no cookie) to `/`.
async fn new_visitor(router: &Router) -> Response<Body> {
    router
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap()
}

/// The layer's answer to a store failure: 500, the error attached, no cookie.
/// Returns the error, attached to the response for outer layers.
fn assert_store_error(resp: &Response<Body>) -> &SessionError {
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    let error = resp.extensions().get::<SessionError>().expect("the error");
    assert_eq!(error.kind(), SessionErrorKind::Store);
    error
}

#[tokio::test]
async fn a_taken_id_is_drawn_again_and_three_in_a_row_are_an_error() {
    for immediate in [false, true] {
        let store = faulty(immediate);
        let router = write_and_read(&store);
        store.collisions.store(2, Ordering::SeqCst);
        let resp = new_visitor(&router).await;
        assert_eq!(resp.status(), StatusCode::OK, "immediate: {immediate}");
        assert_eq!(store.calls().1, 3, "two refused IDs, the third taken");
        let token = cookie_value(&resp);
        let resp = get_with_cookie(&router, "/read", &token).await;
        assert_eq!(body_text(resp).await, "7", "immediate: {immediate}");

        store.collisions.store(3, Ordering::SeqCst);
        assert_store_error(&new_visitor(&router).await);
        assert_eq!(store.calls().1, 6, "three more attempts, then no more");
        assert_eq!(store.inner.len(), 1, "only the first session was stored");
    }
}

#[tokio::test]
async fn a_store_failing_on_create_gives_an_error_response_and_no_cookie() {
    for immediate in [false, true] {
        let store = faulty(immediate);
        let router = write_and_read(&store);
        store.fail.store(true, Ordering::SeqCst);
        assert_store_error(&new_visitor(&router).await);
        assert_eq!(
            store.calls().1,
            1,
            "a failure is not retried as a collision"
        );
        assert!(store.inner.is_empty(), "immediate: {immediate}");
    }
}

#[tokio::test]
async fn an_immediate_store_failing_on_save_gives_an_error_response_and_loses_nothing() {
    let store = faulty(true);
    let router = Router::new()
        .route("/", write_x(1))
        .route("/write", write_then_fail(&store, 2))
        .route("/read", read_x())
        .layer(SessionLayer::new(store.clone()));
    let resp = router
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let token = cookie_value(&resp);
    let resp = get_with_cookie(&router, "/write", &token).await;
    assert_store_error(&resp);
    store.fail.store(false, Ordering::SeqCst);
    let resp = get_with_cookie(&router, "/read", &token).await;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"1", "the failed save changed nothing");
    assert_eq!(store.calls().2, 0, "no touch within the window");
}

#[tokio::test]
async fn an_immediate_store_failing_on_touch_still_answers_and_touches_next_time() {
    let store = faulty(true);
    let app = app(&store);
    let token = app.start().await;
    app.clock.advance(Duration::hours(3)); // past 10 % of the 24 h window: a touch is due
    store.fail_touches.store(true, Ordering::SeqCst);
    let resp = app.get("/read", Some(&token)).await;
    assert_eq!(resp.status, StatusCode::OK, "a failed touch loses nothing");
    assert!(
        resp.set_cookie().is_none(),
        "no refreshed cookie for a failed touch"
    );
    assert_eq!(store.calls().2, 1);
    store.fail_touches.store(false, Ordering::SeqCst);
    let resp = app.get("/read", Some(&token)).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        store.calls().2,
        2,
        "the deadline did not move, so the touch is still due"
    );
}

#[tokio::test]
async fn a_failed_rotation_keeps_the_old_session() {
    let store = Faulty::default();
    let app = app(&store);
    let token = app.start().await;
    store.fail_renames.store(1, Ordering::SeqCst);
    let resp = app.get("/cycle", Some(&token)).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(resp.set_cookie().is_none());
    assert_eq!(app.get("/get/n", Some(&token)).await.body, "1");
    assert_eq!(store.inner.len(), 1, "no second record");
}

#[tokio::test]
async fn a_rotation_draws_another_id_when_the_new_one_is_taken() {
    let store = Faulty::default();
    let app = app(&store);
    let token = app.start().await;
    store.collisions.store(2, Ordering::SeqCst);
    let resp = app.get("/cycle", Some(&token)).await;
    assert_eq!(resp.status, StatusCode::OK);
    let new = resp.expect_token();
    assert_ne!(new, token);
    assert_eq!(app.get("/get/n", Some(&new)).await.body, "1");
    assert_eq!(app.get("/get/n", Some(&token)).await.body, "null");
    store.collisions.store(3, Ordering::SeqCst);
    let resp = app.get("/cycle", Some(&new)).await;
    assert_eq!(
        resp.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "three taken IDs"
    );
    assert_eq!(app.get("/get/n", Some(&new)).await.body, "1");
}

#[tokio::test]
async fn option_session_never_rejects() {
    let store = Faulty::default();
    let layer = SessionLayer::new(store.clone());
    let handler = |session: Option<Session>| async move {
        match session {
            Some(_) => "some",
            None => "none",
        }
    };
    let with_layer = Router::new().route("/", get(handler)).layer(layer);
    let bare = Router::new().route("/", get(handler));
    let resp = bare
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(body_text(resp).await, "none");
    let resp = with_layer
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(body_text(resp).await, "some");
    store.fail.store(true, Ordering::SeqCst);
    let token = SessionId::generate().unwrap().expose();
    let resp = with_layer
        .oneshot(request_with_cookie("/", &token))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers().get(header::VARY),
        Some(&HeaderValue::from_static("cookie")),
        "the answer made without the session still depended on the cookie"
    );
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    assert_eq!(body_text(resp).await, "none");
}

#[tokio::test]
async fn extracting_a_session_without_the_layer_is_a_clear_500() {
    let router = Router::new().route("/", get(|_: Session| async { "unreachable" }));
    let resp = router
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        resp.extensions()
            .get::<SessionError>()
            .map(SessionError::kind),
        Some(SessionErrorKind::MissingLayer)
    );
    assert_eq!(body_text(resp).await, "session layer missing");
}

/// The app-local session and one shared across sub-domains, side by side.
struct Shared;

#[tokio::test]
async fn two_layers_with_their_own_cookies_serve_one_app() {
    let local = MemoryStore::new();
    let shared = MemoryStore::new();
    let router = Router::new()
        .route(
            "/",
            get(|local: Session, shared: ScopedSession<Shared>| async move {
                let a = local
                    .update("n", |n: &mut u32| {
                        *n += 1;
                        *n
                    })
                    .unwrap();
                let b = shared
                    .update("n", |n: &mut u32| {
                        *n += 10;
                        *n
                    })
                    .unwrap();
                format!("{a} {b}")
            }),
        )
        .layer(SessionLayer::new(local.clone()))
        .layer(
            SessionLayer::builder(shared.clone())
                .cookie_name("shared")
                .domain("example.com")
                .scope::<Shared>()
                .build()
                .unwrap(),
        );
    let resp = router
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let cookies: Vec<cookie::Cookie<'static>> = resp
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| cookie::Cookie::parse(v.to_str().unwrap().to_owned()).unwrap())
        .collect();
    assert_eq!(cookies.len(), 2);
    let local_cookie = cookies.iter().find(|c| c.name() == "id").unwrap();
    let shared_cookie = cookies.iter().find(|c| c.name() == "shared").unwrap();
    assert_eq!(shared_cookie.domain(), Some("example.com"));
    assert_eq!(local_cookie.domain(), None);
    assert_eq!(body_text(resp).await, "1 10");
    assert_eq!((local.len(), shared.len()), (1, 1));
    let request = Request::get("/")
        .header(
            header::COOKIE,
            format!(
                "id={}; shared={}",
                local_cookie.value(),
                shared_cookie.value()
            ),
        )
        .body(Body::empty())
        .unwrap();
    let resp = router.oneshot(request).await.unwrap();
    assert_eq!(body_text(resp).await, "2 20");
}

#[tokio::test]
async fn a_scoped_session_is_not_the_default_one() {
    let router = Router::new()
        .route("/", get(|_: Session| async { "unreachable" }))
        .layer(
            SessionLayer::builder(MemoryStore::new())
                .scope::<Shared>()
                .build()
                .unwrap(),
        );
    let resp = router
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn transient_values_live_for_the_request_only() {
    let store = MemoryStore::new();
    let router = Router::new()
        .route(
            "/",
            get(|session: Session| async move {
                let seen: Option<u32> = session.get_transient("user-id");
                session.insert_transient("user-id", 42u32);
                session.insert("persisted", true).unwrap();
                let now: Option<u32> = session.get_transient("user-id");
                let wrong_type: Option<String> = session.get_transient("user-id");
                format!("{seen:?} {now:?} {wrong_type:?}")
            }),
        )
        .layer(SessionLayer::new(store.clone()));
    let resp = router
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let token = cookie_value(&resp);
    assert_eq!(body_text(resp).await, "None Some(42) None");
    let resp = get_with_cookie(&router, "/", &token).await;
    assert_eq!(body_text(resp).await, "None Some(42) None", "not persisted");
    let key = SessionId::parse(&token).unwrap().key();
    let record = store
        .load(&key, OffsetDateTime::now_utc())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.data.len(), 1);
}

#[tokio::test]
async fn arrival_tells_new_returning_expired_and_invalid_apart() {
    let store = Faulty::default();
    let app = harness::app(
        tower_satchel::IntoBackend::into_backend(store.clone()),
        |l| l.expiry(tower_satchel::Expiry::OnInactivity(Duration::minutes(5))),
    );
    // `/arrival` answers `Session::arrival()` in `Debug` form: each answer is checked against the
    // variant itself.
    let arrival = |a: Arrival| format!("{a:?}");
    assert_eq!(app.get("/arrival", None).await.body, arrival(Arrival::New));
    let token = app.start().await;
    assert_eq!(
        app.get("/arrival", Some(&token)).await.body,
        arrival(Arrival::Returning)
    );
    assert_eq!(
        app.get("/arrival", Some("garbage")).await.body,
        arrival(Arrival::Invalid)
    );
    app.clock.advance(Duration::minutes(6));
    assert_eq!(
        app.get("/arrival", Some(&token)).await.body,
        arrival(Arrival::Expired)
    );
    // The four are told apart: no two answers alike.
    let all = [
        Arrival::New,
        Arrival::Returning,
        Arrival::Expired,
        Arrival::Invalid,
    ]
    .map(arrival);
    let distinct: std::collections::BTreeSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "{all:?}");
    assert_eq!(Arrival::default(), Arrival::New, "no token: a new visitor");
}

#[tokio::test]
async fn the_middleware_checks_deadlines_even_if_the_store_does_not() {
    /// A store that ignores `now` on load, like a backend trusting its own TTL.
    #[derive(Clone, Default)]
    struct Lenient(MemoryStore);
    impl SessionStore for Lenient {
        async fn load(
            &self,
            key: &SessionKey,
            _now: OffsetDateTime,
        ) -> Result<Option<Record>, StoreError> {
            self.0.load(key, OffsetDateTime::UNIX_EPOCH).await
        }
        async fn create(
            &self,
            k: &SessionKey,
            r: &Record,
            n: OffsetDateTime,
        ) -> Result<bool, StoreError> {
            self.0.create(k, r, n).await
        }
        async fn save(
            &self,
            k: &SessionKey,
            c: &ChangeSet,
            n: OffsetDateTime,
        ) -> Result<Saved, StoreError> {
            self.0.save(k, c, n).await
        }
        async fn touch(
            &self,
            k: &SessionKey,
            d: OffsetDateTime,
            b: Expiry,
            n: OffsetDateTime,
        ) -> Result<Saved, StoreError> {
            self.0.touch(k, d, b, n).await
        }
        async fn delete(&self, k: &SessionKey) -> Result<(), StoreError> {
            self.0.delete(k).await
        }
        async fn delete_expired(&self, n: OffsetDateTime, l: usize) -> Result<usize, StoreError> {
            self.0.delete_expired(n, l).await
        }
        async fn list_owner(
            &self,
            o: &str,
            n: OffsetDateTime,
        ) -> Result<Vec<SessionInfo>, StoreError> {
            self.0.list_owner(o, n).await
        }
        async fn delete_owner(&self, o: &str) -> Result<usize, StoreError> {
            self.0.delete_owner(o).await
        }
    }
    let store = Lenient::default();
    let app = harness::app(
        tower_satchel::IntoBackend::into_backend(store.clone()),
        |l| l.expiry(tower_satchel::Expiry::OnInactivity(Duration::minutes(5))),
    );
    let token = app.start().await;
    app.clock.advance(Duration::minutes(6));
    assert_eq!(app.get("/arrival", Some(&token)).await.body, "Expired");
    assert!(
        store.0.is_empty(),
        "the expired record found on load is deleted"
    );
}

#[tokio::test]
async fn handler_cache_headers_are_overridden_when_a_cookie_is_set() {
    let router = Router::new()
        .route(
            "/",
            get(|session: Session| async move {
                session.insert("x", 1).unwrap();
                ([(header::CACHE_CONTROL, "public, max-age=3600")], "cached?")
            }),
        )
        .layer(SessionLayer::new(MemoryStore::new()));
    let resp = router
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        resp.headers().get(header::CACHE_CONTROL).unwrap(),
        "no-store"
    );
}

#[tokio::test]
async fn concurrent_loads_of_one_request_read_the_store_once() {
    let store = Faulty {
        slow_loads: true,
        ..Faulty::default()
    };
    let router = Router::new()
        .route("/", write_x(7))
        .route(
            "/both",
            get(|request: Request<Body>| async move {
                let session = request.extensions().get::<Session>().unwrap().clone();
                let other = session.clone();
                // The first load waits in the store; the second waits for it, then reads its
                // result instead of loading again.
                let (a, b) = tokio::join!(session.load(), other.load());
                a.unwrap();
                b.unwrap();
                other.get::<i64>("x").unwrap().unwrap_or(0).to_string()
            }),
        )
        .layer(SessionLayer::new(store.clone()));
    let token = cookie_value(&new_visitor(&router).await);
    let resp = get_with_cookie(&router, "/both", &token).await;
    assert_eq!(body_text(resp).await, "7");
    assert_eq!(store.calls().0, 1, "one store load for both");
}

#[tokio::test]
async fn a_plain_tower_service_reaches_the_session_through_extensions() {
    #[derive(Debug)]
    struct MyError;
    let service = ServiceBuilder::new()
        .layer(SessionLayer::new(MemoryStore::new()))
        .service_fn(|request: Request<Body>| async move {
            let session = request
                .extensions()
                .get::<Session>()
                .cloned()
                .ok_or(MyError)?;
            session.load().await.map_err(|_| MyError)?;
            let n: u32 = session.get("n").map_err(|_| MyError)?.unwrap_or(0) + 1;
            session.insert("n", n).map_err(|_| MyError)?;
            Ok::<_, MyError>(Response::new(Body::from(n.to_string())))
        });
    // The inner service's error type is unchanged.
    fn error_type<S: tower::Service<Request<Body>, Error = MyError>>(_: &S) {}
    error_type(&service);
    let resp = service
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let token = cookie_value(&resp);
    assert_eq!(body_text(resp).await, "1");
    let resp = service
        .oneshot(request_with_cookie("/", &token))
        .await
        .unwrap();
    assert_eq!(body_text(resp).await, "2");
}

#[tokio::test]
async fn using_a_session_before_load_is_an_error_not_an_empty_session() {
    let service = ServiceBuilder::new()
        .layer(SessionLayer::new(MemoryStore::new()))
        .service_fn(|request: Request<Body>| async move {
            let session = request.extensions().get::<Session>().cloned().unwrap();
            let read = session.get::<u32>("n").map_err(|e| e.kind());
            let write = session.insert("n", 1).map_err(|e| e.kind());
            Ok::<_, Infallible>(Response::new(Body::from(format!("{read:?} {write:?}"))))
        });
    let resp = service
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    assert_eq!(body_text(resp).await, "Err(NotLoaded) Err(NotLoaded)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_of_one_session_keep_every_key() {
    let store = MemoryStore::new();
    let app = harness::default_app(tower_satchel::IntoBackend::into_backend(store.clone()));
    let token = app.start().await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let app = app.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            app.get(&format!("/set/key{i}/v"), Some(&token))
                .await
                .status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let keys = app.get("/keys", Some(&token)).await.body;
    assert_eq!(keys.split(',').count(), 101, "{keys}");
}

#[tokio::test]
async fn debug_output_is_redacted() {
    let id = SessionId::generate().unwrap();
    assert!(!format!("{id:?}").contains(&id.expose()));
    let router = Router::new()
        .route(
            "/",
            get(|session: Session| async move {
                session.insert("secret-value", "hunter2").unwrap();
                format!("{session:?} {:?}", session.id())
            }),
        )
        .layer(SessionLayer::new(MemoryStore::new()));
    let resp = router
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let token = cookie_value(&resp);
    let resp = get_with_cookie(&router, "/", &token).await;
    let shown = body_text(resp).await;
    assert!(shown.contains("REDACTED"), "{shown}");
    assert!(!shown.contains(&token));
    assert!(!shown.contains("hunter2"), "values are not printed");
}

/// Tokio's clock is paused: it jumps to the next timer whenever every task waits, so the
/// periods below pass in order however loaded the machine is.
#[tokio::test(start_paused = true)]
async fn cleanup_removes_expired_records_survives_errors_and_stops() {
    let store = Faulty::default();
    let clock = ManualClock::starting_now();
    let now = clock_now(&clock);
    for i in 0..25 {
        let id = SessionId::generate().unwrap();
        let mut record = Record::new(
            now,
            now + Duration::minutes(1),
            None,
            tower_satchel::Expiry::OnSessionEnd,
        );
        record.data.insert("i".into(), serde_json::json!(i));
        assert!(store.inner.create(&id.key(), &record, now).await.unwrap());
    }
    let live = SessionId::generate().unwrap().key();
    let record = Record::new(
        now,
        now + Duration::hours(2),
        None,
        tower_satchel::Expiry::OnSessionEnd,
    );
    store.inner.create(&live, &record, now).await.unwrap();
    clock.advance(Duration::minutes(5));

    store.fail.store(true, Ordering::SeqCst);
    let config = CleanupConfig::default()
        .period(StdDuration::from_millis(10))
        .batch(10);
    let task = spawn_cleanup_with_clock(store.clone(), config, Arc::new(clock.clone()));
    tokio::time::sleep(StdDuration::from_millis(60)).await;
    assert!(
        store.sweeps.load(Ordering::SeqCst) >= 2,
        "keeps running after errors"
    );
    assert_eq!(store.inner.len(), 26);
    store.fail.store(false, Ordering::SeqCst);
    for _ in 0..100 {
        if store.inner.len() == 1 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    assert_eq!(store.inner.len(), 1, "only the live record is left");
    task.stop().await;
    let after = store.sweeps.load(Ordering::SeqCst);
    tokio::time::sleep(StdDuration::from_millis(50)).await;
    assert_eq!(store.sweeps.load(Ordering::SeqCst), after, "stopped");
}

/// One sweep deletes at most `max_batches` batches, however much has expired (SECURITY.md 16):
/// the rest waits for the next period. Tokio's clock is paused, as above.
#[tokio::test(start_paused = true)]
async fn a_cleanup_sweep_is_bounded() {
    let store = MemoryStore::new();
    let clock = ManualClock::starting_now();
    let now = clock_now(&clock);
    for _ in 0..100 {
        let record = Record::new(now, now + Duration::minutes(1), None, Expiry::OnSessionEnd);
        let key = SessionId::generate().unwrap().key();
        assert!(store.create(&key, &record, now).await.unwrap());
    }
    clock.advance(Duration::minutes(5));
    let mut config = CleanupConfig::default()
        .period(StdDuration::from_secs(60))
        .batch(10);
    config.max_batches = 3;
    let task = spawn_cleanup_with_clock(store.clone(), config, Arc::new(clock.clone()));
    // Just after the first sweep, then just after the second.
    tokio::time::sleep(StdDuration::from_secs(61)).await;
    assert_eq!(store.len(), 70, "one sweep, three batches of ten");
    tokio::time::sleep(StdDuration::from_secs(60)).await;
    assert_eq!(store.len(), 40);
    task.stop().await;
}

fn clock_now(clock: &ManualClock) -> OffsetDateTime {
    tower_satchel::Clock::now(clock)
}

fn cookie_value(resp: &Response<Body>) -> String {
    let header = resp.headers().get(header::SET_COOKIE).expect("a cookie");
    cookie::Cookie::parse(header.to_str().unwrap().to_owned())
        .unwrap()
        .value()
        .to_owned()
}

fn request_with_cookie(path: &str, token: &str) -> Request<Body> {
    Request::get(path)
        .header(header::COOKIE, format!("id={token}"))
        .body(Body::empty())
        .unwrap()
}

/// `GET path` through `router` with the session cookie `token`.
async fn get_with_cookie(router: &Router, path: &str, token: &str) -> Response<Body> {
    router
        .clone()
        .oneshot(request_with_cookie(path, token))
        .await
        .unwrap()
}

async fn body_text(resp: Response<Body>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn saves_resend_the_cookie_only_when_its_max_age_falls_behind() {
    let store = Faulty::default();
    let app = app(&store); // 24 h of inactivity, touch after 10 %
    let token = app.start().await;
    let resp = app.get("/incr/n", Some(&token)).await;
    assert_eq!(resp.body, "2");
    assert!(
        resp.set_cookie().is_none(),
        "same ID, same Max-Age: nothing to send"
    );
    assert!(resp.cache_control().is_none());
    app.clock.advance(Duration::hours(3));
    let resp = app.get("/incr/n", Some(&token)).await;
    assert_eq!(resp.body, "3");
    let cookie = resp
        .set_cookie()
        .expect("the Max-Age is refreshed once it falls behind");
    assert_eq!(cookie.value(), token);
    assert_eq!(cookie.max_age(), Some(Duration::hours(24)));
    assert_eq!(resp.cache_control(), Some("no-store"));
    assert_eq!(
        store.calls(),
        (2, 3, 0),
        "every change is saved even when no cookie is sent"
    );
}

/// A save moves the idle deadline, like a touch does, only once a tenth of the window has passed
/// since it was set: the server-side deadline and the cookie's `Max-Age` move together, and a
/// write in between costs the store no deadline update.
#[tokio::test]
async fn saves_move_the_idle_deadline_only_when_a_touch_is_due() {
    let store = Faulty::default();
    let app = app(&store); // 24 h of inactivity, touch after 10 %
    let started = clock_now(&app.clock);
    let token = app.start().await;
    let key = SessionId::parse(&token).unwrap().key();
    let idle = || {
        store
            .inner
            .load_now(&key, clock_now(&app.clock))
            .unwrap()
            .unwrap()
            .idle_deadline
    };
    assert_eq!(idle(), started + Duration::hours(24));
    app.clock.advance(Duration::hours(2));
    assert_eq!(app.get("/incr/n", Some(&token)).await.body, "2");
    assert_eq!(idle(), started + Duration::hours(24), "not due yet");
    app.clock.advance(Duration::hours(1));
    let resp = app.get("/incr/n", Some(&token)).await;
    assert_eq!(resp.body, "3");
    assert_eq!(idle(), started + Duration::hours(27), "due after 2.4 h");
    assert_eq!(
        resp.set_cookie().unwrap().max_age(),
        Some(Duration::hours(24))
    );
    // A new expiry policy always sets the deadline it implies.
    app.clock.advance(Duration::minutes(10));
    app.get("/expiry/7200", Some(&token)).await;
    assert_eq!(idle(), started + Duration::hours(5) + Duration::minutes(10));
    assert_eq!(store.calls().1, 4, "every change is saved");
}

#[tokio::test]
async fn the_token_is_read_from_the_configured_cookie_only() {
    let store = Faulty::default();
    let app = app(&store);
    let token = app.start().await;
    assert_eq!(app.get("/get/n", Some(&token)).await.body, "1");
    // The same live token anywhere else is not a session (SECURITY.md 7).
    let elsewhere = [
        Request::get(format!("/get/n?id={token}"))
            .body(Body::empty())
            .unwrap(),
        Request::get("/get/n")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap(),
        Request::get("/get/n")
            .header("x-session", token.as_str())
            .body(Body::empty())
            .unwrap(),
        Request::get("/get/n")
            .header(
                header::COOKIE,
                format!("session={token}; idx={token}; xid={token}"),
            )
            .body(Body::empty())
            .unwrap(),
    ];
    for request in elsewhere {
        let resp = app.send(request).await;
        assert_eq!(resp.body, "null");
    }
}

/// Handles that handlers passed on, as a spawned task would keep them.
type Kept = Arc<std::sync::Mutex<Vec<Session>>>;

/// A route that keeps its session handle in `kept`, then runs `handler` with it.
fn keeping<F, Fut>(kept: &Kept, handler: F) -> MethodRouter
where
    F: Fn(Session) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let kept = kept.clone();
    get(move |session: Session| {
        kept.lock().unwrap().push(session.clone());
        handler(session)
    })
}

/// A handle kept past its response (by a spawned task, a streaming body) still reads what its
/// request left, and refuses changes, which could no longer be saved, instead of dropping them.
#[tokio::test]
async fn a_session_kept_past_its_response_reads_but_refuses_changes() {
    for immediate in [false, true] {
        let store = faulty(immediate);
        let kept = Kept::default();
        let router = Router::new()
            .route(
                "/",
                keeping(&kept, |session| async move {
                    let x = session.update("x", |x: &mut i64| {
                        *x += 1;
                        *x
                    });
                    x.unwrap().to_string()
                }),
            )
            .route("/read", read_x())
            .layer(SessionLayer::new(store.clone()));
        // A create (new visitor), then a save (returning visitor), each keeping its handle.
        let token = cookie_value(&new_visitor(&router).await);
        let resp = get_with_cookie(&router, "/", &token).await;
        assert_eq!(body_text(resp).await, "2");
        let writes = store.calls().1;
        let handles: Vec<Session> = kept.lock().unwrap().drain(..).collect();
        for (session, x) in handles.into_iter().zip([1, 2]) {
            assert_eq!(
                session.get::<i64>("x").unwrap(),
                Some(x),
                "reads what its request wrote"
            );
            assert!(session.contains("x") && session.keys() == ["x"]);
            let error = session.insert("x", 100).unwrap_err();
            assert_eq!(error.kind(), SessionErrorKind::Closed);
            assert_eq!(
                session.remove::<i64>("x").unwrap_err().kind(),
                SessionErrorKind::Closed
            );
            assert_eq!(
                session
                    .update("x", |x: &mut i64| *x = 0)
                    .unwrap_err()
                    .kind(),
                SessionErrorKind::Closed
            );
            // Changes without a result are ignored (with a warning), not half-applied.
            session.clear();
            session.destroy();
            session.cycle_id();
            session.set_owner("someone");
            assert_eq!(
                session.save().await.unwrap_err().kind(),
                SessionErrorKind::Closed
            );
            assert_eq!(session.get::<i64>("x").unwrap(), Some(x));
            assert_eq!(session.owner(), None);
        }
        assert_eq!(
            store.calls().1,
            writes,
            "nothing written after the responses"
        );
        let resp = get_with_cookie(&router, "/read", &token).await;
        assert_eq!(
            body_text(resp).await,
            "2",
            "the stored session is as the requests left it"
        );
    }
}

/// A request abandoned before its response (the client went away, a timeout dropped it) saves
/// nothing, and a handle that outlives it refuses changes the same way.
#[tokio::test]
async fn a_session_of_an_abandoned_request_refuses_changes() {
    let store = Faulty::default();
    let kept = Kept::default();
    let router = Router::new()
        .route(
            "/",
            keeping(&kept, |session| async move {
                session.insert("x", 1).unwrap();
                std::future::pending::<String>().await
            }),
        )
        .layer(SessionLayer::new(store.clone()));
    let abandoned = tokio::time::timeout(StdDuration::from_millis(50), new_visitor(&router)).await;
    assert!(abandoned.is_err(), "the handler never answers");
    let session = kept.lock().unwrap().pop().unwrap();
    assert_eq!(
        session.insert("x", 2).unwrap_err().kind(),
        SessionErrorKind::Closed
    );
    assert_eq!(store.calls(), (0, 0, 0), "nothing saved");
    assert!(store.inner.is_empty());
}

/// A browser holding cookies of the session's name for two domains or paths (after the app moved
/// its cookie, or one planted by a sibling sub-domain) sends them all, in an order the app does not
/// choose. The first that names a live session is used, so a stale or planted one sent first does
/// not lock the visitor out; malformed ones cost no store call, repeats are loaded once, and at most
/// three distinct well-formed cookies are looked at (malformed, empty and repeated ones take no
/// place, so junk sent first cannot crowd out the real one).
#[tokio::test]
async fn the_first_of_several_same_name_cookies_that_names_a_live_session_is_used() {
    let store = Faulty::default();
    let app = app(&store);
    let live = app.start().await;
    let unknown = || SessionId::generate().unwrap().expose();
    let (stale, other) = (unknown(), unknown());
    let cookie = |values: &[&str]| {
        let pairs: Vec<String> = values.iter().map(|v| format!("id={v}")).collect();
        HeaderValue::from_str(&pairs.join("; theme=dark; ")).unwrap()
    };
    // (cookies, whether the live session is found, loads made)
    let cases: [(&[&str], bool, usize); 11] = [
        (&[&live], true, 1),
        (&[&live, &stale], true, 1),
        (&[&stale, &live], true, 2),
        (&["garbage", &live], true, 1),
        (&[&stale, &stale, &live], true, 2),
        (&[&stale, "../x", &other], false, 2),
        (&[&stale, &other, &unknown(), &live], false, 3),
        (&["a", "../b", "c", "d", &live], true, 1),
        (&[&stale, &stale, &stale, &stale, &live], true, 2),
        (&["", "", "", &live], true, 1),
        (&[&stale, "x", &stale, "y", &other, &live], true, 3),
    ];
    for (case, (values, found, loads)) in cases.into_iter().enumerate() {
        let before = store.calls().0;
        let resp = app.get_raw_cookie("/get/n", cookie(values)).await;
        assert_eq!(resp.status, StatusCode::OK);
        let expected = if found { "1" } else { "null" };
        assert_eq!(resp.body, expected, "case {case}");
        assert_eq!(store.calls().0 - before, loads, "loads in case {case}");
    }
    // In separate `Cookie` headers (as HTTP/2 sends them) too, and a write goes to the session
    // that was found.
    let request = Request::get("/incr/n")
        .header(header::COOKIE, format!("id={stale}"))
        .header(header::COOKIE, format!("id={live}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.send(request).await;
    assert_eq!(resp.body, "2");
    assert_eq!(app.get("/get/n", Some(&live)).await.body, "2");
    assert_eq!(app.get("/arrival", Some(&stale)).await.body, "Expired");
    // An empty value is no token (what a removal leaves in a client that keeps it), not a
    // malformed one; alone or with junk after it.
    for values in [&[""][..], &["", ""]] {
        let resp = app.get_raw_cookie("/arrival", cookie(values)).await;
        assert_eq!(resp.body, "New", "{values:?}");
    }
    let resp = app.get_raw_cookie("/arrival", cookie(&["", "junk"])).await;
    assert_eq!(resp.body, "Invalid");
    let resp = app
        .get_raw_cookie("/arrival", cookie(&["junk", &stale]))
        .await;
    assert_eq!(
        resp.body, "Invalid",
        "the first value's arrival when none is live"
    );
    let resp = app
        .get_raw_cookie("/arrival", cookie(&[&stale, &live]))
        .await;
    assert_eq!(resp.body, "Returning");
    assert!(
        store
            .inner
            .load_now(
                &SessionId::parse(&stale).unwrap().key(),
                clock_now(&app.clock)
            )
            .unwrap()
            .is_none(),
        "nothing stored under the stale ID"
    );
}

/// `Session::save` writes at once: a new session gets its ID, and each save writes only what
/// changed since the last one, leaving the layer nothing (or only the rest) to write.
#[tokio::test]
async fn each_save_writes_what_changed_since_the_last() {
    for immediate in [false, true] {
        let store = faulty(immediate);
        let writes = store.writes.clone();
        let router = Router::new()
            .route(
                "/",
                get(move |session: Session| async move {
                    assert_eq!(session.id(), None, "no ID before the session is stored");
                    session.insert("a", 1)?;
                    session.save().await?;
                    let id = session.id().expect("an ID once saved");
                    assert_eq!(writes.load(Ordering::SeqCst), 1, "one create");
                    session.save().await?;
                    assert_eq!(writes.load(Ordering::SeqCst), 1, "nothing new to write");
                    session.insert("b", 2)?;
                    session.save().await?;
                    assert_eq!(writes.load(Ordering::SeqCst), 2, "one save, of b");
                    assert_eq!(session.id(), Some(id), "the same session");
                    Ok::<_, SessionError>(session.keys().join(","))
                }),
            )
            .route("/read", read_keys())
            .layer(SessionLayer::new(store.clone()));
        let resp = new_visitor(&router).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let token = cookie_value(&resp);
        assert_eq!(body_text(resp).await, "a,b");
        assert_eq!(store.calls().1, 2, "the layer had nothing left to write");
        let resp = get_with_cookie(&router, "/read", &token).await;
        assert_eq!(body_text(resp).await, "a,b");
    }
}

/// A save the store refuses is an error for the handler, and loses nothing: a handler that goes
/// on anyway has the layer write the same changes after it.
#[tokio::test]
async fn a_failed_save_leaves_its_changes_to_the_layer() {
    for immediate in [false, true] {
        for returning in [false, true] {
            let store = faulty(immediate);
            let fail = store.fail.clone();
            let router = Router::new()
                .route(
                    "/",
                    get(move |session: Session| async move {
                        session.insert("x", 5)?;
                        session.remove::<i64>("gone")?;
                        fail.store(true, Ordering::SeqCst);
                        let error = session.save().await.unwrap_err();
                        fail.store(false, Ordering::SeqCst);
                        assert_eq!(error.kind(), SessionErrorKind::Store);
                        assert!(error.store_error().is_some());
                        Ok::<_, SessionError>("went on")
                    }),
                )
                .route("/start", write_x(1))
                .route("/read", read_x())
                .layer(SessionLayer::new(store.clone()));
            let token = if returning {
                let start = router
                    .clone()
                    .oneshot(Request::get("/start").body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                Some(cookie_value(&start))
            } else {
                None
            };
            let mut request = Request::get("/");
            if let Some(token) = &token {
                request = request.header(header::COOKIE, format!("id={token}"));
            }
            let resp = router
                .clone()
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let token = match token {
                Some(token) => {
                    assert!(resp.headers().get(header::SET_COOKIE).is_none());
                    token
                }
                None => cookie_value(&resp),
            };
            let resp = get_with_cookie(&router, "/read", &token).await;
            assert_eq!(
                body_text(resp).await,
                "5",
                "immediate {immediate}, returning {returning}"
            );
        }
    }
}

/// A `Faulty` store whose async creates wait at the gate it returns (see `Faulty::create_gate`).
fn gated() -> (Faulty, Arc<(Notify, Notify)>) {
    let gate = Arc::new((Notify::new(), Notify::new()));
    let store = Faulty {
        create_gate: Some(gate.clone()),
        ..Faulty::default()
    };
    (store, gate)
}

/// `session.save()` in a task of its own, as a task a handler spawned would make it.
fn spawn_save(session: &Session) -> tokio::task::JoinHandle<Result<(), SessionError>> {
    let session = session.clone();
    tokio::spawn(async move { session.save().await })
}

/// A save still waiting for the store when the handler returns (made by a task the handler
/// spawned) is waited for: the layer neither creates the session a second time nor loses the
/// save's cookie.
#[tokio::test]
async fn the_layer_waits_for_a_save_in_flight() {
    let (store, gate) = gated();
    let saved = Arc::new(std::sync::Mutex::new(None));
    let router = {
        let (gate, saved) = (gate.clone(), saved.clone());
        Router::new()
            .route(
                "/",
                get(move |session: Session| async move {
                    session.insert("x", 1)?;
                    let task = spawn_save(&session);
                    *saved.lock().unwrap() = Some(task);
                    // The save has reached the store.
                    gate.0.notified().await;
                    Ok::<_, SessionError>("ok")
                }),
            )
            .route("/read", read_x())
            .layer(SessionLayer::new(store.clone()))
    };
    let request = tokio::spawn({
        let router = router.clone();
        async move { new_visitor(&router).await }
    });
    // The handler has returned, and the layer is waiting for the save.
    tokio::time::sleep(StdDuration::from_millis(20)).await;
    assert!(!request.is_finished(), "the response waits for the save");
    gate.1.notify_one();
    // A second create (the bug this guards against) would wait at the gate for ever.
    let resp = tokio::time::timeout(StdDuration::from_secs(5), request)
        .await
        .expect("the response, after one create")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let token = cookie_value(&resp);
    let task = saved.lock().unwrap().take().unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(store.calls().1, 1, "one create");
    assert_eq!(store.inner.len(), 1);
    let resp = get_with_cookie(&router, "/read", &token).await;
    assert_eq!(body_text(resp).await, "1");
}

/// What another handle changes while a save waits for the store is not taken for saved: the
/// layer writes it after the handler.
#[tokio::test]
async fn changes_made_while_a_save_waits_are_written_too() {
    let (store, gate) = gated();
    let router = {
        let gate = gate.clone();
        Router::new()
            .route(
                "/",
                get(move |session: Session| async move {
                    session.insert("a", 1)?;
                    let save = spawn_save(&session);
                    gate.0.notified().await;
                    session.insert("b", 2)?;
                    session.set_expiry(Expiry::OnInactivity(Duration::hours(2)));
                    gate.1.notify_one();
                    save.await.unwrap()?;
                    Ok::<_, SessionError>("ok")
                }),
            )
            .route(
                "/read",
                get(|session: Session| async move {
                    format!("{} {:?}", session.keys().join(","), session.expiry())
                }),
            )
            .layer(SessionLayer::new(store.clone()))
    };
    let resp = new_visitor(&router).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let token = cookie_value(&resp);
    assert_eq!(
        store.calls().1,
        2,
        "the save's create, then the layer's save"
    );
    let resp = get_with_cookie(&router, "/read", &token).await;
    assert_eq!(
        body_text(resp).await,
        format!("a,b {:?}", Expiry::OnInactivity(Duration::hours(2)))
    );
}

/// When the layer's own save fails after the handler saved a new session, the error response
/// still carries that session's cookie: the saved write stands, and the client must not lose it.
#[tokio::test]
async fn a_failed_commit_after_a_save_still_sends_the_saved_cookie() {
    for immediate in [false, true] {
        let store = faulty(immediate);
        let fail = store.fail.clone();
        let router = Router::new()
            .route(
                "/",
                get(move |session: Session| async move {
                    session.insert("a", 1)?;
                    session.save().await?;
                    session.insert("b", 2)?;
                    fail.store(true, Ordering::SeqCst);
                    Ok::<_, SessionError>("ok")
                }),
            )
            .route("/read", read_keys())
            .layer(SessionLayer::new(store.clone()));
        let resp = new_visitor(&router).await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            resp.extensions().get::<SessionError>().unwrap().kind(),
            SessionErrorKind::Store
        );
        assert_eq!(
            resp.headers()[header::CACHE_CONTROL],
            "no-store",
            "immediate {immediate}"
        );
        let token = cookie_value(&resp);
        store.fail.store(false, Ordering::SeqCst);
        let resp = get_with_cookie(&router, "/read", &token).await;
        assert_eq!(body_text(resp).await, "a", "the saved session, without b");
    }
}

/// When the inner service fails (no response), nothing is saved, and a handle it passed on
/// refuses changes from then on, even while the response future is still held.
#[tokio::test]
async fn an_inner_service_error_closes_the_session_at_once() {
    use tower::Layer;
    let kept: Arc<std::sync::Mutex<Option<Session>>> = Arc::default();
    let slot = kept.clone();
    let inner = tower::service_fn(move |request: Request<Body>| {
        let slot = slot.clone();
        async move {
            let session = request.extensions().get::<Session>().unwrap().clone();
            session.load().await.unwrap();
            session.insert("x", 1).unwrap();
            *slot.lock().unwrap() = Some(session);
            Err::<Response<Body>, _>(std::io::Error::other("inner failure"))
        }
    });
    let store = MemoryStore::new();
    let service = SessionLayer::new(store.clone()).layer(inner);
    let mut future =
        std::pin::pin!(service.oneshot(Request::get("/").body(Body::empty()).unwrap()));
    assert!((&mut future).await.is_err());
    let session = kept.lock().unwrap().take().unwrap();
    let error = session.insert("y", 2).unwrap_err();
    assert_eq!(error.kind(), SessionErrorKind::Closed);
    assert_eq!(store.len(), 0, "nothing saved");
}
