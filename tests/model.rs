//! Model-based test of what a session holds after a sequence of requests: random requests, each a
//! random list of operations (`insert`, `remove`, `clear`, `destroy`, `cycle_id`, `save`) ending
//! in a 200 or a 500, run through the real layer, with the browser's cookie followed. After every
//! request, what the next request would read is compared with a small model of the documented
//! rules:
//!
//! - a 2xx response persists the session as the handler left it;
//! - a 5xx response persists nothing the layer would have saved after the handler, but a
//!   [`Session::save`] made during the request stands (server stores), with its cookie;
//! - the cookie store writes only into the response, so for it `save` changes nothing.
//!
//! Data-wise `destroy` empties the session like `clear` (values set after it start a new one), and
//! `cycle_id` keeps the data under a new ID, so the model is a map and the last saved copy of it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::ServiceExt;
use tower_satchel::{Backend, IntoBackend, MemoryStore, Session, SessionError, SessionLayer};

#[derive(Clone, Debug)]
enum Op {
    Insert(&'static str, u8),
    Remove(&'static str),
    Clear,
    Destroy,
    Cycle,
    Save,
}

/// One request: its operations and whether it ends in a 500.
#[derive(Clone, Debug)]
struct Step {
    ops: Vec<Op>,
    fails: bool,
}

fn op() -> impl Strategy<Value = Op> {
    let key = prop::sample::select(vec!["a", "b", "c"]);
    prop_oneof![
        4 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => key.prop_map(Op::Remove),
        1 => Just(Op::Clear),
        1 => Just(Op::Destroy),
        1 => Just(Op::Cycle),
        3 => Just(Op::Save),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (prop::collection::vec(op(), 0..6), prop::bool::weighted(0.3))
        .prop_map(|(ops, fails)| Step { ops, fails });
    prop::collection::vec(step, 1..6)
}

type Data = BTreeMap<String, u8>;

/// What the session holds after `step`, starting from `stored`.
fn model(stored: &Data, step: &Step, saves_count: bool) -> Data {
    let mut data = stored.clone();
    let mut saved = None;
    for op in &step.ops {
        match op {
            Op::Insert(key, value) => {
                data.insert((*key).to_owned(), *value);
            }
            Op::Remove(key) => {
                data.remove(*key);
            }
            Op::Clear | Op::Destroy => data.clear(),
            Op::Cycle => {}
            Op::Save => saved = Some(data.clone()),
        }
    }
    match (step.fails, saved) {
        (false, _) => data,
        (true, Some(saved)) if saves_count => saved,
        (true, _) => stored.clone(),
    }
}

fn router(backend: Backend) -> Router {
    let layer = SessionLayer::builder(backend)
        .secure(false)
        .build()
        .unwrap();
    Router::new()
        .route(
            "/step",
            get(
                |session: Session, Extension(step): Extension<Step>| async move {
                    for op in &step.ops {
                        match op {
                            Op::Insert(key, value) => session.insert(key, value)?,
                            Op::Remove(key) => {
                                session.remove::<u8>(key)?;
                            }
                            Op::Clear => session.clear(),
                            Op::Destroy => session.destroy(),
                            Op::Cycle => session.cycle_id(),
                            Op::Save => session.save().await?,
                        }
                    }
                    let status = if step.fails {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    };
                    Ok::<_, SessionError>((status, "done"))
                },
            ),
        )
        .route(
            "/dump",
            get(|session: Session| async move {
                let mut data = Data::new();
                for key in session.keys() {
                    data.insert(key.clone(), session.get(&key).unwrap().unwrap());
                }
                serde_json::to_string(&data).unwrap()
            }),
        )
        .layer(layer)
}

/// Sends `GET path` with the browser's cookie, and updates it from the response as a browser
/// would. Returns the status and the body.
async fn send(
    router: &Router,
    path: &str,
    step: Option<Step>,
    cookie: &mut Option<String>,
) -> (StatusCode, String) {
    let mut request = Request::get(path);
    if let Some(value) = cookie.as_deref() {
        request = request.header(header::COOKIE, format!("id={value}"));
    }
    if let Some(step) = step {
        request = request.extension(step);
    }
    let resp = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    for set in resp.headers().get_all(header::SET_COOKIE) {
        let set = cookie::Cookie::parse(set.to_str().unwrap().to_owned()).unwrap();
        let removal = set.value().is_empty() || set.max_age() == Some(time::Duration::ZERO);
        *cookie = (!removal).then(|| set.value().to_owned());
    }
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Runs `steps` against the layer over `backend` and the model; fails at the first difference.
fn check(backend: Backend, steps: &[Step], saves_count: bool) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let router = router(backend);
        let mut cookie = None;
        let mut expected = Data::new();
        for (n, step) in steps.iter().enumerate() {
            let (status, _) = send(&router, "/step", Some(step.clone()), &mut cookie).await;
            let wanted = if step.fails { 500 } else { 200 };
            prop_assert_eq!(status.as_u16(), wanted, "request {}", n);
            expected = model(&expected, step, saves_count);
            let (_, body) = send(&router, "/dump", None, &mut cookie).await;
            prop_assert_eq!(
                body,
                serde_json::to_string(&expected).unwrap(),
                "after request {}",
                n
            );
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The memory store, which the layer reaches without a boxed future.
    #[test]
    fn memory_store_sessions_follow_the_model(steps in steps()) {
        check(MemoryStore::new().into_backend(), &steps, true)?;
    }

    /// The file store, through the layer's boxed store futures.
    #[cfg(feature = "file-store")]
    #[test]
    fn file_store_sessions_follow_the_model(steps in steps()) {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("model")
            .join(tower_satchel::SessionId::generate().unwrap().key().to_hex());
        let store = tower_satchel::FileStore::new(&dir).unwrap();
        let outcome = check(store.into_backend(), &steps, true);
        let _ = std::fs::remove_dir_all(&dir);
        outcome?;
    }

    /// The cookie store: `save` writes nothing before the response, so a 5xx keeps nothing.
    #[cfg(feature = "cookie-store")]
    #[test]
    fn cookie_store_sessions_follow_the_model(steps in steps()) {
        let store = tower_satchel::CookieStore::new(tower_satchel::Key::generate().unwrap());
        check(store.into_backend(), &steps, false)?;
    }
}
