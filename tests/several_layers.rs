//! Several session layers on one app when an outer layer's commit fails: the writes inner layers
//! committed stand, so their session headers go out with the outer layer's error response.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use axum::routing::get;
use http_body_util::BodyExt;
use time::OffsetDateTime;
use tower::ServiceExt;
use tower_satchel::{
    ChangeSet, MemoryStore, Record, Saved, ScopedSession, Session, SessionInfo, SessionKey,
    SessionLayer, SessionStore, StoreError,
};

/// A memory store whose writes fail while `fail` is set. Reads always work.
#[derive(Clone, Default)]
struct Breakable {
    inner: MemoryStore,
    fail: Arc<AtomicBool>,
}

impl Breakable {
    fn check(&self) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            Err(StoreError::backend(
                "injected failure",
                std::io::Error::other("backend down"),
            ))
        } else {
            Ok(())
        }
    }
}

impl SessionStore for Breakable {
    async fn load(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> Result<Option<Record>, StoreError> {
        self.inner.load(key, now).await
    }
    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.create(key, record, now).await
    }
    async fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        self.check()?;
        self.inner.save(key, changes, now).await
    }
    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        self.check()?;
        self.inner.touch(key, idle_deadline, now).await
    }
    async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.check()?;
        self.inner.delete(key).await
    }
    async fn delete_expired(&self, now: OffsetDateTime, limit: usize) -> Result<usize, StoreError> {
        self.check()?;
        self.inner.delete_expired(now, limit).await
    }
    async fn list_owner(
        &self,
        owner: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        self.inner.list_owner(owner, now).await
    }
    async fn delete_owner(&self, owner: &str) -> Result<usize, StoreError> {
        self.check()?;
        self.inner.delete_owner(owner).await
    }
}

/// The session shared across sub-domains (the outer layer).
struct Shared;

/// A third layer, between the app-local one and [`Shared`].
struct Middle;

const X_SESSION: HeaderName = HeaderName::from_static("x-session");

/// The app-local (inner) layer: cookie `id`, or the `x-session` header.
fn local_layer(store: &MemoryStore, header: bool) -> SessionLayer {
    let builder = SessionLayer::builder(store.clone());
    let builder = if header {
        builder.header_transport(X_SESSION)
    } else {
        builder
    };
    builder.build().unwrap()
}

/// `/start` writes to both sessions; `/login` rotates the local session's ID, writes to the shared
/// one and breaks the shared store (so the outer commit fails after the inner one took), and sets
/// an unrelated header; `/whoami` reads the local session.
fn two_layer_app(local: &MemoryStore, shared: &Breakable, header: bool) -> Router {
    let fail = shared.fail.clone();
    Router::new()
        .route(
            "/start",
            get(|local: Session, shared: ScopedSession<Shared>| async move {
                local.insert("user", "alice").unwrap();
                shared.insert("visits", 1).unwrap();
                "started"
            }),
        )
        .route(
            "/login",
            get(
                move |local: Session, shared: ScopedSession<Shared>| async move {
                    local.cycle_id();
                    shared.insert("visits", 2).unwrap();
                    fail.store(true, Ordering::SeqCst);
                    ([("x-handler", "yes")], "logged in")
                },
            ),
        )
        .route(
            "/whoami",
            get(|local: Session| async move {
                local
                    .get::<String>("user")
                    .unwrap()
                    .unwrap_or_else(|| "nobody".to_owned())
            }),
        )
        .layer(local_layer(local, header))
        .layer(
            SessionLayer::builder(shared.clone())
                .cookie_name("shared")
                .scope::<Shared>()
                .build()
                .unwrap(),
        )
}

/// The `name` cookies the response sets, by value.
fn set_cookies(resp: &Response<Body>, name: &str) -> Vec<String> {
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| cookie::Cookie::parse(v.to_str().unwrap().to_owned()).unwrap())
        .filter(|c| c.name() == name)
        .map(|c| c.value().to_owned())
        .collect()
}

fn one_cookie(resp: &Response<Body>, name: &str) -> String {
    let values = set_cookies(resp, name);
    assert_eq!(values.len(), 1, "one {name} cookie: {:?}", resp.headers());
    values[0].clone()
}

fn vary_has(resp: &Response<Body>, name: &str) -> bool {
    resp.headers().get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .unwrap()
            .split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(name))
    })
}

async fn send(router: &Router, path: &str, headers: &[(HeaderName, String)]) -> Response<Body> {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn body_text(resp: Response<Body>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn an_outer_layer_failing_keeps_the_cookie_an_inner_layer_rotated() {
    let local = MemoryStore::new();
    let shared = Breakable::default();
    let router = two_layer_app(&local, &shared, false);

    let resp = send(&router, "/start", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let old_id = one_cookie(&resp, "id");
    let shared_id = one_cookie(&resp, "shared");
    let cookies = |id: &str| vec![(header::COOKIE, format!("id={id}; shared={shared_id}"))];

    let resp = send(&router, "/login", &cookies(&old_id)).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let new_id = one_cookie(&resp, "id");
    assert_ne!(new_id, old_id, "the rotated ID goes out");
    assert!(
        set_cookies(&resp, "shared").is_empty(),
        "the failed write sets nothing"
    );
    assert_eq!(
        resp.headers().get(header::CACHE_CONTROL),
        Some(&HeaderValue::from_static("no-store"))
    );
    assert!(vary_has(&resp, "cookie"));
    assert_eq!(
        resp.headers().get("x-handler"),
        None,
        "the failed response's own headers are not carried over"
    );

    shared.fail.store(false, Ordering::SeqCst);
    let resp = send(&router, "/whoami", &cookies(&new_id)).await;
    assert_eq!(body_text(resp).await, "alice", "the login survives");
    let resp = send(&router, "/whoami", &cookies(&old_id)).await;
    assert_eq!(body_text(resp).await, "nobody", "the old ID is gone");
}

#[tokio::test]
async fn an_outer_layer_failing_keeps_the_token_header_an_inner_layer_rotated() {
    let local = MemoryStore::new();
    let shared = Breakable::default();
    let router = two_layer_app(&local, &shared, true);

    let resp = send(&router, "/start", &[]).await;
    let token = |resp: &Response<Body>| {
        resp.headers()
            .get(&X_SESSION)
            .expect("a token header")
            .to_str()
            .unwrap()
            .to_owned()
    };
    let old_token = token(&resp);
    let shared_id = one_cookie(&resp, "shared");
    let headers = |token: &str| {
        vec![
            (X_SESSION, token.to_owned()),
            (header::COOKIE, format!("shared={shared_id}")),
        ]
    };

    let resp = send(&router, "/login", &headers(&old_token)).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let new_token = token(&resp);
    assert_ne!(new_token, old_token);
    assert_eq!(
        resp.headers().get(header::CACHE_CONTROL),
        Some(&HeaderValue::from_static("no-store"))
    );
    assert!(vary_has(&resp, "x-session"));

    shared.fail.store(false, Ordering::SeqCst);
    let resp = send(&router, "/whoami", &headers(&new_token)).await;
    assert_eq!(body_text(resp).await, "alice");
}

/// Three layers: the middle one fails, and so does the outer one (which persists on 5xx, so it
/// commits after the middle one's error response). The inner layer's cookie outlives both.
#[tokio::test]
async fn the_inner_cookie_survives_two_failing_layers() {
    let local = MemoryStore::new();
    let broken = Breakable::default();
    let fail = broken.fail.clone();
    let router =
        Router::new()
            .route(
                "/start",
                get(
                    |local: Session,
                     middle: ScopedSession<Middle>,
                     shared: ScopedSession<Shared>| async move {
                        local.insert("user", "alice").unwrap();
                        middle.insert("n", 1).unwrap();
                        shared.insert("n", 1).unwrap();
                    },
                ),
            )
            .route(
                "/login",
                get(
                    move |local: Session,
                          middle: ScopedSession<Middle>,
                          shared: ScopedSession<Shared>| async move {
                        local.cycle_id();
                        middle.insert("n", 2).unwrap();
                        shared.insert("n", 2).unwrap();
                        fail.store(true, Ordering::SeqCst);
                    },
                ),
            )
            .route(
                "/whoami",
                get(|local: Session| async move { local.get::<String>("user").unwrap().unwrap() }),
            )
            .layer(SessionLayer::new(local.clone()))
            .layer(
                SessionLayer::builder(broken.clone())
                    .cookie_name("middle")
                    .scope::<Middle>()
                    .build()
                    .unwrap(),
            )
            .layer(
                SessionLayer::builder(broken.clone())
                    .cookie_name("shared")
                    .persist_on_server_error(true)
                    .scope::<Shared>()
                    .build()
                    .unwrap(),
            );

    let resp = send(&router, "/start", &[]).await;
    let old_id = one_cookie(&resp, "id");
    let others = format!(
        "middle={}; shared={}",
        one_cookie(&resp, "middle"),
        one_cookie(&resp, "shared")
    );

    let resp = send(
        &router,
        "/login",
        &[(header::COOKIE, format!("id={old_id}; {others}"))],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let new_id = one_cookie(&resp, "id");
    assert_ne!(new_id, old_id);
    assert!(set_cookies(&resp, "middle").is_empty());
    assert!(set_cookies(&resp, "shared").is_empty());

    broken.fail.store(false, Ordering::SeqCst);
    let resp = send(
        &router,
        "/whoami",
        &[(header::COOKIE, format!("id={new_id}; {others}"))],
    )
    .await;
    assert_eq!(body_text(resp).await, "alice");
}
