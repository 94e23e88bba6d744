//! Login, logout and "log out everywhere".
//!
//! - `POST /login` (form field `username`) rotates the session ID and stores the user (dropping
//!   the session's data first if another user was logged in);
//! - `GET /me` answers 200 with the username, or 401;
//! - `POST /logout` destroys the session;
//! - `POST /logout-everywhere` revokes every session of the user.
//!
//! ```text
//! cargo run --example login
//! curl -c jar -d username=alice localhost:3000/login; curl -b jar localhost:3000/me
//! ```
//!
//! **No credential check.** `/login` accepts any username, with no password: whoever posts a name
//! is logged in as that user. This example shows the session calls around a login, not how to
//! authenticate; a real app verifies credentials where [`login`] marks the spot.
//!
//! **CSRF.** The default `SameSite=Lax` keeps modern browsers from sending the cookie with a
//! cross-site POST, but it stops neither login CSRF (a cross-site form that logs the victim into
//! the attacker's account) nor forms posted from a sibling sub-domain, which is the same site.
//! Give every state-changing form, login included, a CSRF token or check `Origin` /
//! `Sec-Fetch-Site`; with `SameSite=None` that is a must. This example has neither.

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
    // A real app verifies the credentials here (a password hash, a one-time code) and, when they
    // fail, answers one generic failure (401, "wrong username or password") that tells neither
    // which part was wrong nor whether the account exists.
    session.cycle_id();
    // `cycle_id` keeps the data: when another user was logged in over this session, start from
    // an empty one, so that nothing of theirs carries over. An anonymous visitor's data is kept.
    if session
        .get::<String>("user")?
        .is_some_and(|user| user != username)
    {
        session.clear();
    }
    session.insert("user", username)?;
    // A real app passes a stable user ID (the account's key), not a name that can change or be
    // taken by someone else later.
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
    // With `SESSION_STORE=cookie` this only replaces the cookie in this browser: a copy of the old
    // one stays valid until its deadline. Only `/logout-everywhere` can void it, through the
    // cookie store's revocation hook (`CookieStore::revocation`, see `support/cookie.rs`).
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
