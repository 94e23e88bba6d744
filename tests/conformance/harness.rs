//! An axum app with one route per session operation, driven through `tower::ServiceExt::oneshot`.

use std::sync::Arc;

use axum::extract::{Extension, Path};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::routing::get;
use axum::{Router, body::Body};
use http_body_util::BodyExt;
use time::Duration;
use tokio::sync::{Barrier, Notify};
use tower::ServiceExt;
use tower_satchel::{
    Backend, Expiry, ManualClock, Session, SessionError, SessionLayer, SessionLayerBuilder,
};

/// Rendezvous points for the concurrency cases.
pub struct Signals {
    /// Both requests have loaded the session.
    pub barrier: Barrier,
    /// Request A has loaded.
    pub loaded: Notify,
    /// Request A may go on.
    pub go: Notify,
}

/// The app under test and its clock.
#[derive(Clone)]
pub struct App {
    router: Router,
    pub clock: ManualClock,
    pub signals: Arc<Signals>,
    pub cookie_name: String,
}

/// A response, collected.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub body: String,
    pub headers: HeaderMap,
}

impl Resp {
    /// The `Set-Cookie` header, if exactly one.
    pub fn set_cookie(&self) -> Option<cookie::Cookie<'static>> {
        let mut all = self.headers.get_all(header::SET_COOKIE).iter();
        let first = all.next()?;
        assert!(all.next().is_none(), "more than one Set-Cookie");
        Some(cookie::Cookie::parse(first.to_str().unwrap().to_owned()).unwrap())
    }

    /// The new token the response sets (non-empty cookie value).
    pub fn token(&self) -> Option<String> {
        self.set_cookie()
            .map(|c| c.value().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// The token, which the response must set.
    pub fn expect_token(&self) -> String {
        self.token()
            .unwrap_or_else(|| panic!("expected a session cookie in {self:?}"))
    }

    pub fn vary(&self) -> Vec<String> {
        self.headers
            .get_all(header::VARY)
            .iter()
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .collect()
    }

    pub fn cache_control(&self) -> Option<&str> {
        self.headers
            .get(header::CACHE_CONTROL)
            .map(|v| v.to_str().unwrap())
    }
}

/// Builds the app over `backend`, with a manual clock and whatever `configure` changes.
pub fn app(
    backend: Backend,
    configure: impl FnOnce(SessionLayerBuilder) -> SessionLayerBuilder,
) -> App {
    let clock = ManualClock::starting_now();
    let builder = SessionLayer::builder(backend).clock(clock.clone());
    let layer = configure(builder).build().unwrap();
    let cookie_name = layer.cookie_name().to_owned();
    let signals = Arc::new(Signals {
        barrier: Barrier::new(2),
        loaded: Notify::new(),
        go: Notify::new(),
    });
    let router = routes().layer(Extension(signals.clone())).layer(layer);
    App {
        router,
        clock,
        signals,
        cookie_name,
    }
}

/// The default app.
pub fn default_app(backend: Backend) -> App {
    app(backend, |b| b)
}

type R = Result<String, SessionError>;

fn routes() -> Router {
    Router::new()
        .route("/noop", get(|| async { "noop" }))
        .route("/read", get(|s: Session| async move { s.len().to_string() }))
        .route(
            "/get/{key}",
            get(|s: Session, Path(key): Path<String>| async move {
                Ok::<_, SessionError>(
                    s.get_value(&key)?
                        .map_or_else(|| "null".to_owned(), |v| v.to_string()),
                )
            }),
        )
        .route(
            "/set/{key}/{value}",
            get(
                |s: Session, Path((key, value)): Path<(String, String)>| async move {
                    s.insert(&key, value)?;
                    Ok::<_, SessionError>("ok".to_owned())
                },
            ),
        )
        .route(
            "/incr/{key}",
            get(|s: Session, Path(key): Path<String>| async move {
                let n = s.update(&key, |n: &mut u64| {
                    *n += 1;
                    *n
                })?;
                Ok::<_, SessionError>(n.to_string())
            }),
        )
        .route(
            "/remove/{key}",
            get(|s: Session, Path(key): Path<String>| async move {
                let old: Option<u64> = s.remove(&key)?;
                Ok::<_, SessionError>(format!("{old:?}"))
            }),
        )
        .route(
            "/keys",
            get(|s: Session| async move { s.keys().join(",") }),
        )
        .route(
            "/clear",
            get(|s: Session| async move {
                s.clear();
                "cleared"
            }),
        )
        .route(
            "/cycle",
            get(|s: Session| async move {
                s.cycle_id();
                "cycled"
            }),
        )
        .route(
            "/cycle-fail",
            get(|s: Session| async move {
                s.cycle_id();
                s.insert("after-cycle", true)?;
                Ok::<_, SessionError>((StatusCode::INTERNAL_SERVER_ERROR, "failed".to_owned()))
            }),
        )
        .route(
            "/destroy",
            get(|s: Session| async move {
                s.destroy();
                "destroyed"
            }),
        )
        .route(
            "/destroy-then-flash",
            get(|s: Session| async move {
                s.destroy();
                s.insert("flash", "logged out")?;
                Ok::<_, SessionError>("ok".to_owned())
            }),
        )
        .route(
            "/fail/{key}/{value}",
            get(
                |s: Session, Path((key, value)): Path<(String, u64)>| async move {
                    s.insert(&key, value)?;
                    Ok::<_, SessionError>((StatusCode::INTERNAL_SERVER_ERROR, "failed".to_owned()))
                },
            ),
        )
        .route(
            "/owner/{name}",
            get(|s: Session, Path(name): Path<String>| async move {
                s.set_owner(name);
                s.insert("logged-in", true)?;
                Ok::<_, SessionError>("ok".to_owned())
            }),
        )
        .route(
            "/whose",
            get(|s: Session| async move { s.owner().unwrap_or_default() }),
        )
        .route(
            "/revoke",
            get(|s: Session| async move {
                let n = s.revoke_owner().await?;
                Ok::<_, SessionError>(n.to_string())
            }),
        )
        .route(
            // The owner's sessions, one store key (hex) a line, the current one marked `*`.
            "/devices",
            get(|s: Session| async move {
                let this = s.id().map(|id| id.key());
                let lines: Vec<String> = s
                    .owner_sessions()
                    .await?
                    .iter()
                    .map(|info| {
                        let mark = if Some(info.key) == this { "*" } else { "" };
                        format!("{}{mark}", info.key.to_hex())
                    })
                    .collect();
                Ok::<_, SessionError>(lines.join("\n"))
            }),
        )
        .route(
            "/end-device/{key}",
            get(|s: Session, Path(key): Path<String>| async move {
                let Some(key) = tower_satchel::SessionKey::from_hex(&key) else {
                    return Ok::<_, SessionError>("malformed".to_owned());
                };
                Ok(s.revoke_owner_session(&key).await?.to_string())
            }),
        )
        .route(
            "/arrival",
            get(|s: Session| async move { format!("{:?}", s.arrival()) }),
        )
        .route(
            "/expiry/{secs}",
            get(|s: Session, Path(secs): Path<i64>| async move {
                let expiry = if secs == 0 {
                    Expiry::OnSessionEnd
                } else {
                    Expiry::OnInactivity(Duration::seconds(secs))
                };
                s.set_expiry(expiry);
                s.insert("expiry-set", true)?;
                Ok::<_, SessionError>("ok".to_owned())
            }),
        )
        .route(
            "/expiry-saved-ms/{ms}",
            get(|s: Session, Path(ms): Path<i64>| async move {
                s.set_expiry(Expiry::OnInactivity(Duration::milliseconds(ms)));
                s.save().await?;
                Ok::<_, SessionError>("saved".to_owned())
            }),
        )
        .route(
            "/expire-at/{unix}",
            get(|s: Session, Path(unix): Path<i64>| async move {
                let at = time::OffsetDateTime::from_unix_timestamp(unix).unwrap();
                s.set_expiry(Expiry::AtDateTime(at));
                let n = s.update("n", |n: &mut u64| {
                    *n += 1;
                    *n
                })?;
                Ok::<_, SessionError>(n.to_string())
            }),
        )
        .route(
            "/save/{key}",
            get(|s: Session, Path(key): Path<String>| async move {
                // Saved now, then one more change left to the layer; answers whether the session
                // had an ID once saved.
                s.insert(&key, "saved")?;
                s.save().await?;
                s.insert(&format!("{key}-after"), true)?;
                Ok::<_, SessionError>(s.id().is_some().to_string())
            }),
        )
        .route(
            "/save-then-fail/{key}",
            get(|s: Session, Path(key): Path<String>| async move {
                s.insert(&key, "saved")?;
                s.save().await?;
                s.insert(&format!("{key}-after"), true)?;
                Ok::<_, SessionError>((StatusCode::INTERNAL_SERVER_ERROR, "failed".to_owned()))
            }),
        )
        .route(
            "/cycle-save-fail",
            get(|s: Session| async move {
                s.cycle_id();
                s.save().await?;
                Ok::<_, SessionError>((StatusCode::INTERNAL_SERVER_ERROR, "failed".to_owned()))
            }),
        )
        .route(
            "/destroy-save",
            get(|s: Session| async move {
                s.destroy();
                s.save().await?;
                Ok::<_, SessionError>(format!("{:?}", s.id()))
            }),
        )
        .route(
            "/save-and-wait/{key}",
            get(
                |s: Session, Extension(sig): Extension<Arc<Signals>>, Path(key): Path<String>| async move {
                    s.insert(&key, true)?;
                    s.save().await?;
                    sig.loaded.notify_one();
                    sig.go.notified().await;
                    Ok::<_, SessionError>("ok".to_owned())
                },
            ),
        )
        .route(
            "/wait-save/{key}",
            get(
                |s: Session, Extension(sig): Extension<Arc<Signals>>, Path(key): Path<String>| async move {
                    sig.loaded.notify_one();
                    sig.go.notified().await;
                    s.insert(&key, true)?;
                    Ok::<_, SessionError>(match s.save().await {
                        Ok(()) => "ok".to_owned(),
                        Err(error) => format!("{:?}", error.kind()),
                    })
                },
            ),
        )
        .route(
            "/barrier-set/{key}",
            get(
                |s: Session, Extension(sig): Extension<Arc<Signals>>, Path(key): Path<String>| async move {
                    sig.barrier.wait().await;
                    s.insert(&key, true)?;
                    Ok::<_, SessionError>("ok".to_owned())
                },
            ),
        )
        .route(
            "/wait-cycle",
            get(
                |s: Session, Extension(sig): Extension<Arc<Signals>>| async move {
                    sig.loaded.notify_one();
                    sig.go.notified().await;
                    s.cycle_id();
                    "cycled"
                },
            ),
        )
        .route(
            "/wait-read",
            get(
                |s: Session, Extension(sig): Extension<Arc<Signals>>| async move {
                    let len = s.len();
                    sig.loaded.notify_one();
                    sig.go.notified().await;
                    len.to_string()
                },
            ),
        )
        .route(
            "/wait-owner/{name}",
            get(
                |s: Session, Extension(sig): Extension<Arc<Signals>>, Path(name): Path<String>| async move {
                    s.len();
                    sig.loaded.notify_one();
                    sig.go.notified().await;
                    s.set_owner(name);
                    s.insert("logged-in", true)?;
                    Ok::<_, SessionError>("ok".to_owned())
                },
            ),
        )
        .route(
            "/wait-set/{key}",
            get(
                |s: Session, Extension(sig): Extension<Arc<Signals>>, Path(key): Path<String>| async move {
                    sig.loaded.notify_one();
                    sig.go.notified().await;
                    s.insert(&key, true)?;
                    Ok::<_, SessionError>("ok".to_owned())
                },
            ),
        )
}

impl App {
    /// Sends `GET path` with the session token in the cookie (if any).
    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        let mut request = Request::get(path);
        if let Some(token) = token {
            request = request.header(header::COOKIE, format!("{}={token}", self.cookie_name));
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    /// Sends `GET path` with a raw `Cookie` header value.
    pub async fn get_raw_cookie(&self, path: &str, cookie: HeaderValue) -> Resp {
        let request = Request::get(path)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap();
        self.send(request).await
    }

    /// Sends any request.
    pub async fn send(&self, request: Request<Body>) -> Resp {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            headers,
        }
    }

    /// A new session with `key` incremented once; returns its token.
    pub async fn start(&self) -> String {
        let resp = self.get("/incr/n", None).await;
        assert_eq!(resp.body, "1");
        resp.expect_token()
    }
}
