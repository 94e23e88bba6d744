//! Login, logout and "log out everywhere".
//!
//! - `POST /login` (form field `username`) rotates the session ID and stores the user;
//! - `GET /me` answers 200 with the username, or 401;
//! - `POST /logout` destroys the session;
//! - `POST /logout-everywhere` revokes every session of the user.
//!
//! ```text
//! cargo run --example login
//! curl -c jar -d username=alice localhost:3000/login; curl -b jar localhost:3000/me
//! ```

mod support;

use axum::Router;
use axum::extract::Form;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use tower_satchel::{Arrival, Session, SessionError};

#[derive(Deserialize)]
struct Login {
    username: String,
}

/// Logs in: a new session ID on every change of privilege, then the user and the owner index.
async fn login(
    session: Session,
    Form(form): Form<Login>,
) -> Result<impl IntoResponse, SessionError> {
    let username = form.username.trim();
    if username.is_empty() {
        return Ok((StatusCode::BAD_REQUEST, "username required".to_owned()));
    }
    session.cycle_id();
    session.insert("user", username)?;
    session.set_owner(username);
    Ok((StatusCode::OK, format!("logged in as {username}")))
}

/// Who is logged in. Tells a timed-out user apart from one who never logged in.
async fn me(session: Session) -> Result<impl IntoResponse, SessionError> {
    match session.get::<String>("user")? {
        Some(user) => Ok((StatusCode::OK, user)),
        None if session.arrival() == Arrival::Expired => {
            Ok((StatusCode::UNAUTHORIZED, "session expired".to_owned()))
        }
        None => Ok((StatusCode::UNAUTHORIZED, "not logged in".to_owned())),
    }
}

/// Logs out this browser.
async fn logout(session: Session) -> StatusCode {
    session.destroy();
    StatusCode::NO_CONTENT
}

/// Logs the user out of every session they have.
async fn logout_everywhere(session: Session) -> Result<impl IntoResponse, SessionError> {
    if session.owner().is_none() {
        return Ok((StatusCode::UNAUTHORIZED, "not logged in".to_owned()));
    }
    // A server-side store reports how many sessions it deleted; the cookie store cannot count
    // cookies it never sees, so only the fact is reported.
    session.revoke_owner().await?;
    Ok((StatusCode::OK, "logged out everywhere".to_owned()))
}

#[tokio::main]
async fn main() -> Result<(), support::BoxError> {
    support::init_tracing();
    let app = Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .layer(support::layer_from_env().await?);
    let addr = support::addr();
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!("login example listening on http://{addr}");
    axum::serve(listener, app).await?;
    Ok(())
}
