//! Session values at the edges, through the layer: a value nested deeper than a store could read
//! back is refused at `insert` for every store (no session is lost), and an error about a value
//! of the wrong type never repeats the value.
#![allow(clippy::unwrap_used)]

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use axum::routing::get;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_satchel::{IntoBackend, MemoryStore, Session, SessionLayer};

async fn send(router: &Router, path: &str, cookie: Option<&str>) -> Response<Body> {
    let mut request = Request::get(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// `name=value` of the response's session cookie.
fn cookie_of(response: &Response<Body>) -> String {
    let value = response.headers().get(header::SET_COOKIE).unwrap();
    let cookie = cookie::Cookie::parse(value.to_str().unwrap().to_owned()).unwrap();
    format!("{}={}", cookie.name(), cookie.value())
}

/// A value nested `levels` deep in arrays.
fn nested(levels: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..levels {
        value = Value::Array(vec![value]);
    }
    value
}

/// `/start` writes `n = 1`; `/deep` writes a value nested 200 levels deep; `/n` reads `n`.
fn deep_value_app(layer: SessionLayer) -> Router {
    Router::new()
        .route(
            "/start",
            get(|session: Session| async move {
                session.insert("n", 1).unwrap();
                "started"
            }),
        )
        .route(
            "/deep",
            get(|session: Session| async move {
                match session.insert("tree", nested(200)) {
                    Ok(()) => "written",
                    Err(_) => "refused",
                }
            }),
        )
        .route(
            "/n",
            get(
                |session: Session| async move { format!("{:?}", session.get::<i64>("n").unwrap()) },
            ),
        )
        .layer(layer)
}

/// Writes a deeply nested value into a live session, then checks the session is still there.
async fn a_deep_value_never_costs_the_session(layer: SessionLayer) {
    let app = deep_value_app(layer);
    let started = send(&app, "/start", None).await;
    let cookie = cookie_of(&started);
    let deep = send(&app, "/deep", Some(&cookie)).await;
    // Every store gets the same limit, at `insert`: the handler learns it, and nothing is lost.
    assert_eq!(deep.status(), StatusCode::OK);
    assert_eq!(text(deep).await, "refused");
    let read = text(send(&app, "/n", Some(&cookie)).await).await;
    assert_eq!(read, "Some(1)", "the session was lost after /deep");
}

#[tokio::test]
async fn the_memory_store_keeps_a_session_with_a_deep_value() {
    a_deep_value_never_costs_the_session(
        SessionLayer::builder(MemoryStore::new().into_backend())
            .secure(false)
            .build()
            .unwrap(),
    )
    .await;
}

/// Fixed in `Record::encode` (src/record.rs): before, the file store wrote a record nested deeper
/// than `serde_json` reads back, the next load found the file "corrupt", deleted it, and the user
/// lost the session without any error.
#[cfg(feature = "file-store")]
#[tokio::test]
async fn the_file_store_keeps_a_session_with_a_deep_value() {
    let dir = std::env::temp_dir().join(format!(
        "satchel-review-core-{}-{}",
        std::process::id(),
        line!()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let store = tower_satchel::FileStore::new(&dir).unwrap();
    a_deep_value_never_costs_the_session(
        SessionLayer::builder(store).secure(false).build().unwrap(),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "cookie-store")]
#[tokio::test]

async fn the_cookie_store_keeps_a_session_with_a_deep_value() {
    use tower_satchel::{CookieStore, Key};
    let store = CookieStore::new(Key::from_bytes(&[7; 32]).unwrap());
    a_deep_value_never_costs_the_session(
        SessionLayer::builder(store).secure(false).build().unwrap(),
    )
    .await;
}

#[cfg(feature = "sqlite-store")]
#[tokio::test]

async fn the_sqlite_store_keeps_a_session_with_a_deep_value() {
    let path = std::env::temp_dir().join(format!(
        "satchel-review-core-{}-{}.sqlite3",
        std::process::id(),
        line!()
    ));
    let _ = std::fs::remove_file(&path);
    let store = tower_satchel::SqliteStore::connect(path.to_str().unwrap())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    a_deep_value_never_costs_the_session(
        SessionLayer::builder(store).secure(false).build().unwrap(),
    )
    .await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_type_mismatch_error_does_not_repeat_the_stored_value() {
    let app = Router::new()
        .route(
            "/",
            get(|session: Session| async move {
                session.insert("token", "secret-value-123").unwrap();
                session.insert("number", 987_654_321).unwrap();
                let mut shown = String::new();
                for error in [
                    session.get::<u64>("token").unwrap_err(),
                    session.get::<String>("number").unwrap_err(),
                    session.remove::<u64>("token").unwrap_err(),
                    session
                        .update("number", |s: &mut String| s.len())
                        .unwrap_err(),
                ] {
                    shown.push_str(&format!("{error} {error:?}\n"));
                }
                shown
            }),
        )
        .layer(
            SessionLayer::builder(MemoryStore::new())
                .secure(false)
                .build()
                .unwrap(),
        );
    let shown = text(send(&app, "/", None).await).await;
    assert!(shown.contains("unexpected type"), "{shown}");
    for secret in ["secret-value-123", "987654321"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}
