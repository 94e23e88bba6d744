//! The request side as an app sees it: the axum extractors and their rejections, the error
//! responses a handler's `?` on a [`SessionError`] produces, nested routers against a wrapped
//! router, and the session cookie among others in the forms browsers and proxies send.
#![allow(clippy::unwrap_used)]

mod support_faulty;

use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use axum::middleware::{self, Next};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::BodyExt;
use support_faulty::Faulty;
use tower::ServiceExt;
use tower_satchel::{MemoryStore, Session, SessionError, SessionId, SessionLayer};

async fn send(router: &Router, request: Request<Body>) -> Response<Body> {
    router.clone().oneshot(request).await.unwrap()
}

async fn text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn get_req(path: &str, headers: &[(HeaderName, &str)]) -> Request<Body> {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    request.body(Body::empty()).unwrap()
}

fn set_cookie_value(response: &Response<Body>) -> Option<String> {
    let header = response.headers().get(header::SET_COOKIE)?;
    let cookie = cookie::Cookie::parse(header.to_str().unwrap().to_owned()).unwrap();
    Some(cookie.value().to_owned())
}

/// The layer's error hook renders store failures as `503` JSON.
fn layer_with_json_error_hook(store: &Faulty) -> SessionLayer {
    SessionLayer::builder(store.clone())
        .error_handler(|_| {
            let mut response = http::Response::new(Bytes::from_static(br#"{"error":"store"}"#));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
        })
        .build()
        .unwrap()
}

/// DESIGN.md §7: "An error hook lets the app render its own response for a store failure": on
/// load (the extractor's rejection), on the layer's save, and for a store failure the handler
/// returns with `?` from `Session::save` (the usage `save`'s own docs show).
#[tokio::test]
async fn a_store_failure_a_handler_returns_renders_through_the_error_hook() {
    let store = Faulty::default();
    let router = Router::new()
        .route(
            "/save",
            get(|s: Session| async move {
                s.insert("cart", vec!["tea"])?;
                s.save().await?;
                Ok::<_, SessionError>("saved")
            }),
        )
        .route(
            "/incr",
            get(|s: Session| async move {
                let n = s.update("n", |n: &mut u64| {
                    *n += 1;
                    *n
                })?;
                Ok::<_, SessionError>(n.to_string())
            }),
        )
        .layer(layer_with_json_error_hook(&store));
    let token = set_cookie_value(&send(&router, get_req("/incr", &[])).await).unwrap();
    let cookie = format!("id={token}");
    store.fail_writes.store(true, Ordering::SeqCst);

    // The layer's own save failing: the hook renders it.
    let resp = send(&router, get_req("/incr", &[(header::COOKIE, &cookie)])).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(text(resp).await, r#"{"error":"store"}"#);

    // The same failure through `save().await?`: rendered the same way.
    for headers in [vec![], vec![(header::COOKIE, cookie.as_str())]] {
        let resp = send(&router, get_req("/save", &headers)).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(text(resp).await, r#"{"error":"store"}"#);
    }
}

/// The default rejection (no error hook) and a `SessionError` a handler returns are documented as
/// "a short plain-text message"; sent as `application/octet-stream`, a browser navigating to the
/// page offers the error message as a file download instead of showing it.
#[tokio::test]
async fn default_session_error_responses_are_plain_text() {
    let store = Faulty::default();
    let layered = Router::new()
        .route(
            "/read",
            get(|s: Session| async move { s.len().to_string() }),
        )
        .route(
            "/save",
            get(|s: Session| async move {
                s.insert("k", 1)?;
                s.save().await?;
                Ok::<_, SessionError>("saved")
            }),
        )
        .layer(SessionLayer::new(store.clone()));
    let bare = Router::new().route(
        "/read",
        get(|s: Session| async move { s.len().to_string() }),
    );
    let token = SessionId::generate().unwrap().expose();
    let cookie = format!("id={token}");

    let mut responses = Vec::new();
    store.fail.store(true, Ordering::SeqCst);
    // The extractor's rejection: the store fails on load.
    responses.push(send(&layered, get_req("/read", &[(header::COOKIE, &cookie)])).await);
    // The extractor's rejection: no layer on the route.
    responses.push(send(&bare, get_req("/read", &[])).await);
    // A handler's `?` on a store failure.
    responses.push(send(&layered, get_req("/save", &[])).await);
    for resp in responses {
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        assert!(
            content_type
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/plain")),
            "{content_type:?}"
        );
        assert!(!text(resp).await.is_empty());
    }
}

/// Counts visits; a middleware inside the layer and the handler (twice) extract the same handle.
fn nested_counter() -> Router {
    async fn mark(session: Session, request: Request<Body>, next: Next) -> Response<Body> {
        session.insert_transient("seen-by-middleware", true);
        next.run(request).await
    }
    let api = Router::new().route(
        "/count",
        get(|a: Session, b: Session, c: Option<Session>| async move {
            let n = a.update("n", |n: &mut u64| {
                *n += 1;
                *n
            })?;
            let same = b.get::<u64>("n")? == Some(n)
                && c.and_then(|c| c.get::<u64>("n").ok().flatten()) == Some(n)
                && b.get_transient::<bool>("seen-by-middleware") == Some(true);
            Ok::<_, SessionError>(format!("{n} {same}"))
        }),
    );
    Router::new()
        .nest("/api", api)
        .layer(middleware::from_fn(mark))
}

/// `Router::layer` on a router with a nested one, and the same router wrapped by the layer (the
/// README's faster form): one handle per request, one cookie, the same counts.
#[tokio::test]
async fn nested_and_wrapped_routers_share_one_handle_per_request() {
    let store = MemoryStore::new();
    let layered = nested_counter().layer(SessionLayer::new(store.clone()));
    let wrapped = tower_layer::Layer::layer(&SessionLayer::new(store.clone()), nested_counter());
    let resp = send(&layered, get_req("/api/count", &[])).await;
    assert_eq!(resp.headers().get_all(header::SET_COOKIE).iter().count(), 1);
    let cookie = format!("id={}", set_cookie_value(&resp).unwrap());
    assert_eq!(text(resp).await, "1 true");
    let resp = wrapped
        .clone()
        .oneshot(get_req("/api/count", &[(header::COOKIE, &cookie)]))
        .await
        .unwrap();
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    assert_eq!(text(resp).await, "2 true");
    let resp = send(
        &layered,
        get_req("/api/count", &[(header::COOKIE, &cookie)]),
    )
    .await;
    assert_eq!(text(resp).await, "3 true");
    assert_eq!(store.len(), 1);
}

/// The session cookie quoted, padded with spaces and tabs, in a second `Cookie` header after one
/// that is not UTF-8, among cookies whose names contain ours: found every time.
#[tokio::test]
async fn the_session_cookie_is_found_in_every_form_a_client_sends_it() {
    let store = MemoryStore::new();
    let router = nested_counter().layer(SessionLayer::new(store.clone()));
    let token = set_cookie_value(&send(&router, get_req("/api/count", &[])).await).unwrap();
    let forms = [
        vec![format!("id=\"{token}\"").into_bytes()],
        vec![format!("a=1;id = {token} ;b=2").into_bytes()],
        vec![format!("xid=x; idx=y;\tid=\t{token}").into_bytes()],
        vec![b"a=\xff\xfe".to_vec(), format!("id={token}").into_bytes()],
        vec![[b"a=\xff; id=".as_slice(), token.as_bytes()].concat()],
    ];
    for (i, form) in forms.into_iter().enumerate() {
        let mut request = Request::get("/api/count");
        for value in form {
            request = request.header(header::COOKIE, HeaderValue::from_bytes(&value).unwrap());
        }
        let resp = send(&router, request.body(Body::empty()).unwrap()).await;
        assert_eq!(text(resp).await, format!("{} true", i + 2), "form {i}");
    }
    assert_eq!(store.len(), 1);
}
