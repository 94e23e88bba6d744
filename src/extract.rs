//! The axum extractors: [`Session`], `Option<Session>` and [`ScopedSession`], and their rejection.

use std::fmt;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use crate::layer::ErrorHandler;
use crate::session::{ScopedSession, Session, SessionError, SessionErrorKind};

/// Why the [`Session`] extractor refused: the layer is missing, or the store failed to load the
/// session. The handler does not run, so an empty session never overwrites the real one
/// (SECURITY.md 28).
///
/// Renders through the layer's [`error_handler`](crate::SessionLayerBuilder::error_handler) when one
/// is set; otherwise as `500` with a short plain-text message (backend details stay in the logs).
pub struct SessionRejection {
    error: SessionError,
    handler: Option<ErrorHandler>,
}

impl SessionRejection {
    /// The underlying error.
    pub fn error(&self) -> &SessionError {
        &self.error
    }
}

impl fmt::Debug for SessionRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRejection")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SessionRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for SessionRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        let mut response = match &self.handler {
            Some(handler) => handler(&self.error).map(axum_core::body::Body::from),
            None => self.error.clone().into_response(),
        };
        response.extensions_mut().insert(self.error);
        response
    }
}

impl IntoResponse for SessionError {
    /// A store failure returned by a [`Session`] method (`load`, `save`, `revoke_owner`) renders
    /// through its layer's [`error_handler`](crate::SessionLayerBuilder::error_handler) when one
    /// is set, like a failure on load or in the layer's own save. Otherwise: the error's
    /// [`status`](SessionError::status) with a short plain-text message (`text/plain`, so a
    /// browser shows it rather than offering a download) that names no backend detail. The error
    /// itself goes into the response's extensions either way.
    fn into_response(self) -> Response {
        if let Some(handler) = self.hook() {
            let mut response = handler(&self).map(axum_core::body::Body::from);
            response.extensions_mut().insert(self);
            return response;
        }
        let message: &'static str = match self.kind() {
            SessionErrorKind::Store => "session store unavailable",
            SessionErrorKind::MissingLayer => "session layer missing",
            SessionErrorKind::NoOwner => "session has no owner",
            SessionErrorKind::Ended => "session ended elsewhere",
            _ => "session error",
        };
        let mut response = (self.status(), message).into_response();
        response.extensions_mut().insert(self);
        response
    }
}

async fn extract(session: Option<Session>) -> Result<Session, SessionRejection> {
    let Some(session) = session else {
        tracing::error!("Session extracted on a route without SessionLayer");
        return Err(SessionRejection {
            error: SessionError::new(
                SessionErrorKind::MissingLayer,
                "no SessionLayer on this route (or it is scoped: use ScopedSession)",
            ),
            handler: None,
        });
    };
    match session.load().await {
        Ok(()) => Ok(session),
        Err(error) => Err(SessionRejection {
            handler: session.error_handler(),
            error,
        }),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        extract(parts.extensions.get::<Session>().cloned()).await
    }
}

/// `Option<Session>` never rejects: `None` when the route has no layer or the store failed (logged).
impl<S: Send + Sync> OptionalFromRequestParts<S> for Session {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        let Some(session) = parts.extensions.get::<Session>().cloned() else {
            return Ok(None);
        };
        Ok(session.load().await.ok().map(|()| session))
    }
}

impl<S: Send + Sync, M: Send + Sync + 'static> FromRequestParts<S> for ScopedSession<M> {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let session = parts
            .extensions
            .get::<ScopedSession<M>>()
            .map(|scoped| Session::clone(scoped));
        extract(session).await.map(ScopedSession::new)
    }
}
