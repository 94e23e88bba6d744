//! The session layer on a plain Tower service served by hyper, without axum.
//!
//! ```text
//! cargo run --example tower_plain        # GET http://127.0.0.1:3000/ counts visits
//! ```
//!
//! Without axum's extractor, the layer puts a [`Session`] handle into the request's extensions.
//! Call [`Session::load`] once (one store round trip), then use it synchronously; the layer saves
//! what changed after the service returns.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;
use tower_satchel::{MemoryStore, Session, SessionLayer};

async fn count(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(session) = request.extensions().get::<Session>() else {
        return Ok(status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no session layer",
        ));
    };
    // A store failure must not run the handler with an empty session.
    if session.load().await.is_err() {
        return Ok(status(
            StatusCode::SERVICE_UNAVAILABLE,
            "session store unavailable",
        ));
    }
    let visits = match session.update("visits", |n: &mut u64| {
        *n += 1;
        *n
    }) {
        Ok(visits) => visits,
        Err(_) => {
            return Ok(status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bad session data",
            ));
        }
    };
    Ok(Response::new(Full::new(Bytes::from(visits.to_string()))))
}

fn status(code: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(message.as_bytes())));
    *response.status_mut() = code;
    response
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Plain HTTP on loopback: `Secure` off so the browser sends the cookie back. Never in production.
    let layer = SessionLayer::builder(MemoryStore::new())
        .secure(false)
        .build()?;
    let service = ServiceBuilder::new().layer(layer).service_fn(count);
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("tower_plain listening on http://{addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            if let Err(error) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {error}");
            }
        });
    }
}
