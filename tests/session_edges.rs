//! HTTP-level tests of edge cases: a `save()` cut short, the deadline `expires_at` reports
//! between touches, enormous expiry windows, `Max-Age` against a deadline kept in whole seconds,
//! `cycle_id` racing other requests of the session, a request dropped during its commit, and
//! several layers on one app when an outer layer's commit fails (the writes inner layers
//! committed stand, so their session headers go out with the outer layer's error response).
#![allow(clippy::unwrap_used)]

mod support_faulty;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration as StdDuration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use axum::routing::get;
use http_body_util::BodyExt;
use support_faulty::Faulty;
use time::Duration;
use tower::ServiceExt;
use tower_satchel::{
    Arrival, Clock, Expiry, ManualClock, MemoryStore, ScopedSession, Session, SessionLayer,
    SessionStore,
};

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

fn set_cookie(response: &Response<Body>) -> Option<cookie::Cookie<'static>> {
    let value = response.headers().get(header::SET_COOKIE)?;
    Some(cookie::Cookie::parse(value.to_str().unwrap().to_owned()).unwrap())
}

async fn text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A layer over `store` whose sessions live an hour after their last use, on `clock`.
fn hourly_layer(store: &(impl SessionStore + Clone), clock: &ManualClock) -> SessionLayer {
    SessionLayer::builder(store.clone())
        .expiry(Expiry::OnInactivity(Duration::hours(1)))
        .clock(clock.clone())
        .build()
        .unwrap()
}

fn start_route() -> axum::routing::MethodRouter {
    get(|session: Session| async move {
        session.insert("n", 1).unwrap();
        "started"
    })
}

/// A `clear` a handler saved is not sent again by the layer because the handle changed while the
/// save waited (a value, or the owner): sent again, it would erase what other requests wrote in
/// between.
#[tokio::test]
async fn a_saved_clear_is_not_repeated_after_a_change_during_the_save() {
    saved_clear_then(|session| session.insert("b", 2).unwrap(), "a,b,other None").await;
    saved_clear_then(
        |session| session.set_owner("alice"),
        r#"a,other Some("alice")"#,
    )
    .await;
}

/// `/reset` clears the session, sets `a` and saves; `during` changes the handle while that save
/// waits; another request then writes `other` before the layer's commit. `expected` is what the
/// store holds afterwards (keys, then owner).
async fn saved_clear_then(during: fn(&Session), expected: &str) {
    let plain = Faulty::default();
    let gate = Arc::new((tokio::sync::Notify::new(), tokio::sync::Notify::new()));
    let gated = Faulty {
        inner: plain.inner.clone(),
        save_gate: Some(gate.clone()),
        ..Faulty::default()
    };
    let router = Router::new()
        .route("/start", start_route())
        .route(
            "/other",
            get(|session: Session| async move {
                session.insert("other", true).unwrap();
                "written"
            }),
        )
        .route(
            "/dump",
            get(|session: Session| async move {
                let mut keys = session.keys();
                keys.sort();
                format!("{} {:?}", keys.join(","), session.owner())
            }),
        )
        .layer(SessionLayer::new(plain.clone()));
    let response = send(&router, "/start", None).await;
    let cookie = format!("id={}", set_cookie(&response).unwrap().value());
    let (other, other_cookie) = (router.clone(), cookie.clone());
    let clearing = Router::new()
        .route(
            "/reset",
            get(move |session: Session| {
                let (gate, other, other_cookie) =
                    (gate.clone(), other.clone(), other_cookie.clone());
                async move {
                    session.clear();
                    session.insert("a", 1).unwrap();
                    let change = async {
                        gate.0.notified().await;
                        during(&session);
                        gate.1.notify_one();
                    };
                    let (saved, ()) = tokio::join!(session.save(), change);
                    saved.unwrap();
                    // Another request of the session writes after the save, before the commit.
                    let response = send(&other, "/other", Some(&other_cookie)).await;
                    assert_eq!(response.status(), StatusCode::OK);
                    // Lets the layer's own save through the gate.
                    gate.1.notify_one();
                    "reset"
                }
            }),
        )
        .layer(SessionLayer::new(gated));
    let response = send(&clearing, "/reset", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        text(send(&router, "/dump", Some(&cookie)).await).await,
        expected,
        "cleared once, then the saved key, what changed during the save, and the other write"
    );
}

/// `save` of a session only read, with its deadline due for a refresh, says how the touch went:
/// a store error or a session ended meanwhile is an error, as for a save of changes.
#[tokio::test]
async fn a_touching_save_reports_failures_and_ended_sessions() {
    let store = Faulty::default();
    let clock = ManualClock::starting_now();
    let fail = store.fail_touches.clone();
    let router = Router::new()
        .route("/start", start_route())
        .route(
            "/read-and-save",
            get(|session: Session| async move {
                assert_eq!(session.get::<i64>("n").unwrap(), Some(1));
                match session.save().await {
                    Ok(()) => "ok".to_owned(),
                    Err(error) => format!("{:?}", error.kind()),
                }
            }),
        )
        .route(
            "/end-then-save",
            get({
                let inner = store.inner.clone();
                move |session: Session| {
                    let inner = inner.clone();
                    async move {
                        assert_eq!(session.get::<i64>("n").unwrap(), Some(1));
                        let key = session.id().unwrap().key();
                        tower_satchel::SessionStore::delete(&inner, &key)
                            .await
                            .unwrap();
                        match session.save().await {
                            Ok(()) => "ok".to_owned(),
                            Err(error) => format!("{:?}", error.kind()),
                        }
                    }
                }
            }),
        )
        .layer(hourly_layer(&store, &clock));
    let response = send(&router, "/start", None).await;
    let cookie = format!("id={}", set_cookie(&response).unwrap().value());
    // A tenth of the window later, a read is due to refresh the deadline.
    clock.advance(Duration::minutes(7));
    fail.store(true, Ordering::SeqCst);
    let response = send(&router, "/read-and-save", Some(&cookie)).await;
    assert_eq!(text(response).await, "Store");
    fail.store(false, Ordering::SeqCst);
    let response = send(&router, "/read-and-save", Some(&cookie)).await;
    assert_eq!(text(response).await, "ok");
    clock.advance(Duration::minutes(7));
    let response = send(&router, "/end-then-save", Some(&cookie)).await;
    assert_eq!(text(response).await, "Ended");
}

/// A cookie a `save` left for the response is not sent once the layer finds the session ended
/// (here: rotated by a concurrent login): sent last, it would put the retired ID back in the
/// browser over the login's new one.
#[tokio::test]
async fn a_saved_cookie_is_not_sent_for_a_session_that_ended_meanwhile() {
    // Both ways a commit can run: at once (an immediate store), or in a future of its own.
    saved_cookie_of_an_ended_session(MemoryStore::new()).await;
    saved_cookie_of_an_ended_session(Faulty::default()).await;
}

async fn saved_cookie_of_an_ended_session(store: impl SessionStore + Clone) {
    let clock = ManualClock::starting_now();
    let layer = || hourly_layer(&store, &clock);
    let login = Router::new()
        .route("/start", start_route())
        .route(
            "/login",
            get(|session: Session| async move {
                session.cycle_id();
                "in"
            }),
        )
        .layer(layer());
    let response = send(&login, "/start", None).await;
    let cookie = format!("id={}", set_cookie(&response).unwrap().value());
    let (other, other_cookie) = (login.clone(), cookie.clone());
    let slow = Router::new()
        .route(
            "/",
            get(move |session: Session| {
                let (other, other_cookie) = (other.clone(), other_cookie.clone());
                async move {
                    assert_eq!(session.get::<i64>("n").unwrap(), Some(1));
                    // Due for a refresh: the save owes the response a cookie with a new Max-Age.
                    session.save().await.unwrap();
                    let rotated = send(&other, "/login", Some(&other_cookie)).await;
                    assert!(set_cookie(&rotated).is_some());
                    session.insert("late", true).unwrap();
                    "done"
                }
            }),
        )
        .route(
            "/alone",
            get(|session: Session| async move {
                session.save().await.unwrap();
                session.insert("late", true).unwrap();
                "done"
            }),
        )
        .layer(layer());
    // Without the concurrent login, the refresh cookie the save owes does go out.
    clock.advance(Duration::minutes(7));
    let response = send(&slow, "/alone", Some(&cookie)).await;
    let refreshed = set_cookie(&response).expect("the save's refresh cookie");
    assert_eq!(format!("id={}", refreshed.value()), cookie);
    assert_eq!(refreshed.max_age(), Some(Duration::hours(1)));
    clock.advance(Duration::minutes(7));
    let response = send(&slow, "/", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        set_cookie(&response).is_none(),
        "the retired ID was sent again: {:?} (old {cookie})",
        set_cookie(&response)
    );
}

/// A refresh cookie a `save` left is not sent once the layer's own save fails: whether the
/// session still stands is unknown then (another request may have rotated it). A new session's
/// cookie is still sent, as its session stands and only this response can give its ID.
#[tokio::test]
async fn a_saved_refresh_is_not_sent_after_a_failed_commit() {
    for immediate in [false, true] {
        let store = Faulty {
            immediate,
            ..Faulty::default()
        };
        let clock = ManualClock::starting_now();
        let fail = store.fail_writes.clone();
        let router = Router::new()
            .route("/start", start_route())
            .route(
                "/arrival",
                get(|session: Session| async move { format!("{:?}", session.arrival()) }),
            )
            .route(
                "/save-then-fail",
                get(move |session: Session| {
                    let fail = fail.clone();
                    async move {
                        session.insert("seen", true).unwrap();
                        session.save().await.unwrap();
                        fail.store(true, Ordering::SeqCst);
                        session.insert("n", 2).unwrap();
                        "done"
                    }
                }),
            )
            .layer(hourly_layer(&store, &clock));
        // A returning session, due for a refresh: the save leaves one, the commit fails.
        let response = send(&router, "/start", None).await;
        let cookie = format!("id={}", set_cookie(&response).unwrap().value());
        clock.advance(Duration::minutes(7));
        let response = send(&router, "/save-then-fail", Some(&cookie)).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(set_cookie(&response).is_none(), "immediate: {immediate}");
        // A new session: the save created it, and its cookie goes out with the error.
        store.fail_writes.store(false, Ordering::SeqCst);
        let response = send(&router, "/save-then-fail", None).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let created = set_cookie(&response).expect("the new session's cookie");
        store.fail_writes.store(false, Ordering::SeqCst);
        let back = format!("id={}", created.value());
        assert_eq!(
            text(send(&router, "/arrival", Some(&back)).await).await,
            "Returning"
        );
    }
}

/// `/start` (a session with `n` = 1), `/login` (`cycle_id`, `user` = alice, `save`, answering the
/// kind of the save's error) and `/who` (`n` and `user`) over `store`.
fn rotating_app(store: &Faulty) -> Router {
    Router::new()
        .route("/start", start_route())
        .route(
            "/login",
            get(|session: Session| async move {
                session.cycle_id();
                session.insert("user", "alice").unwrap();
                let saved = session.save().await;
                format!("{:?}", saved.err().map(|e| e.kind()))
            }),
        )
        .route(
            "/who",
            get(|session: Session| async move {
                let n = session.get::<i64>("n").unwrap();
                format!("{n:?} {:?}", session.get::<String>("user").unwrap())
            }),
        )
        .layer(SessionLayer::new(store.clone()))
}

/// Starts a session on `router`, arms the fault with `fault`, and logs in: the cookies before
/// and after the login, and the login's body (the error its `save` saw).
async fn start_then_login(router: &Router, fault: &AtomicUsize) -> (String, String, String) {
    let response = send(router, "/start", None).await;
    let old = format!("id={}", set_cookie(&response).unwrap().value());
    fault.store(1, Ordering::SeqCst);
    let response = send(router, "/login", Some(&old)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let new = format!("id={}", set_cookie(&response).expect("a new ID").value());
    assert_ne!(new, old);
    (old, new, text(response).await)
}

/// A rotation the store made but whose answer was lost (a store error after the fact) is
/// recognised when the layer tries again: the session goes on under the new ID, with the
/// request's changes, rather than being taken for ended (and the login lost).
#[tokio::test]
async fn a_rotation_whose_answer_was_lost_is_completed_on_the_retry() {
    let store = Faulty::default();
    let router = rotating_app(&store);
    let (old, new, login) = start_then_login(&router, &store.lose_rename_replies).await;
    assert_eq!(login, "Some(Store)", "the save saw the error");
    assert_eq!(
        text(send(&router, "/who", Some(&new)).await).await,
        r#"Some(1) Some("alice")"#
    );
    assert_eq!(
        text(send(&router, "/who", Some(&old)).await).await,
        "None None"
    );
    assert_eq!(store.inner.len(), 1, "one session, under the new ID");
}

/// A rotation cut short after writing the new ID but before removing the old one is not taken
/// for done on the retry: the old ID must stop working (SECURITY.md 8), so the copy goes and the
/// rotation is made again under a fresh ID.
#[tokio::test]
async fn a_rotation_cut_short_is_made_again_not_adopted() {
    let store = Faulty::default();
    let router = rotating_app(&store);
    let (old, new, login) = start_then_login(&router, &store.half_renames).await;
    assert_eq!(login, "Some(Store)");
    assert_eq!(
        text(send(&router, "/who", Some(&new)).await).await,
        r#"Some(1) Some("alice")"#
    );
    assert_eq!(
        text(send(&router, "/who", Some(&old)).await).await,
        "None None",
        "the old ID still works"
    );
    assert_eq!(store.inner.len(), 1, "no copy left under the abandoned ID");
}

#[tokio::test]
async fn a_save_cut_short_leaves_its_changes_to_the_layer() {
    let store = Faulty::default();
    let hang = store.hang_next_save.clone();
    let router = Router::new()
        .route("/start", start_route())
        .route(
            "/write",
            get(move |session: Session| {
                let hang = hang.clone();
                async move {
                    session.insert("x", 42).unwrap();
                    hang.store(true, Ordering::SeqCst);
                    let cut = tokio::time::timeout(StdDuration::from_millis(20), session.save());
                    assert!(cut.await.is_err(), "the save was cut short");
                    "written"
                }
            }),
        )
        .route(
            "/x",
            get(
                |session: Session| async move { format!("{:?}", session.get::<i64>("x").unwrap()) },
            ),
        )
        .layer(SessionLayer::new(store));
    let response = send(&router, "/start", None).await;
    let cookie = set_cookie(&response).unwrap();
    let cookie = format!("id={}", cookie.value());
    let response = send(&router, "/write", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = send(&router, "/x", Some(&cookie)).await;
    assert_eq!(
        text(response).await,
        "Some(42)",
        "the layer saves what the cut-short save did not"
    );
}

#[tokio::test]
async fn expires_at_between_touches_is_the_deadline_the_store_keeps() {
    let clock = ManualClock::starting_now();
    let layer = SessionLayer::builder(MemoryStore::new())
        .clock(clock.clone())
        .expiry(Expiry::OnInactivity(Duration::hours(24)))
        .touch_after(0.1)
        .build()
        .unwrap();
    let router = Router::new()
        .route("/start", start_route())
        .route(
            "/expires",
            get(
                |session: Session| async move { session.expires_at().unix_timestamp().to_string() },
            ),
        )
        .route(
            "/write",
            get(|session: Session| async move {
                session.insert("n", 2).unwrap();
                session.expires_at().unix_timestamp().to_string()
            }),
        )
        .route(
            "/arrival",
            get(|session: Session| async move { format!("{:?}", session.arrival()) }),
        )
        .layer(layer);
    let started = clock.now();
    let response = send(&router, "/start", None).await;
    let cookie = format!("id={}", set_cookie(&response).unwrap().value());
    let first_deadline = (started + Duration::hours(24)).unix_timestamp().to_string();

    // One hour in, under the touch fraction (2.4 h): neither a read nor a write moves it.
    clock.advance(Duration::hours(1));
    let read = text(send(&router, "/expires", Some(&cookie)).await).await;
    assert_eq!(read, first_deadline);
    let written = text(send(&router, "/write", Some(&cookie)).await).await;
    assert_eq!(written, first_deadline);

    // And that is when the session really ends.
    clock.advance(Duration::hours(23) - Duration::seconds(1));
    let arrival = text(send(&router, "/arrival", Some(&cookie)).await).await;
    assert_eq!(arrival, format!("{:?}", Arrival::Returning));

    // Past the touch fraction (checked by a new session), the deadline moves with the request.
    let response = send(&router, "/start", None).await;
    let cookie = format!("id={}", set_cookie(&response).unwrap().value());
    let started = clock.now();
    clock.advance(Duration::hours(3));
    let read = text(send(&router, "/expires", Some(&cookie)).await).await;
    assert_eq!(
        read,
        (started + Duration::hours(27)).unix_timestamp().to_string()
    );
}

#[tokio::test]
async fn enormous_idle_windows_do_not_overflow_the_touch_check() {
    for window in [Duration::MAX, Duration::seconds(i64::MAX)] {
        let layer = SessionLayer::builder(MemoryStore::new())
            .expiry(Expiry::OnSessionEnd)
            .session_end_idle_timeout(window)
            .touch_after(0.999)
            .build()
            .unwrap();
        let router = Router::new()
            .route("/start", start_route())
            .route(
                "/n",
                get(|session: Session| async move {
                    session.get::<i64>("n").unwrap().unwrap_or(0).to_string()
                }),
            )
            .layer(layer);
        let response = send(&router, "/start", None).await;
        let cookie = format!("id={}", set_cookie(&response).unwrap().value());
        let response = send(&router, "/n", Some(&cookie)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await, "1");
    }
}

#[cfg(feature = "cookie-store")]
#[tokio::test]
async fn a_cookie_store_cookie_never_outlives_its_sealed_deadline() {
    use time::OffsetDateTime;
    use tower_satchel::{CookieStore, Key};
    // A start 0.7 s into a second: the store seals deadlines in whole seconds.
    let start =
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap() + Duration::milliseconds(700);
    let clock = ManualClock::new(start);
    let layer = SessionLayer::builder(CookieStore::new(Key::from_bytes(&[1; 32]).unwrap()))
        .clock(clock.clone())
        .expiry(Expiry::OnInactivity(Duration::hours(1)))
        .build()
        .unwrap();
    let router = Router::new()
        .route("/start", start_route())
        .route(
            "/arrival",
            get(|session: Session| async move { format!("{:?}", session.arrival()) }),
        )
        .layer(layer);
    let sealed = set_cookie(&send(&router, "/start", None).await).unwrap();
    let max_age = sealed.max_age().unwrap();
    assert_eq!(max_age, Duration::seconds(3600));
    // Just before Max-Age runs out the browser still sends the cookie: it must still open.
    clock.advance(max_age - Duration::milliseconds(100));
    let cookie = format!("id={}", sealed.value());
    let arrival = text(send(&router, "/arrival", Some(&cookie)).await).await;
    assert_eq!(arrival, format!("{:?}", Arrival::Returning));
}

/// `save()` of a rotation while the handler writes another key: the rotation is done once, and
/// the key written meanwhile joins what it carried, the cleared session's new values included.
#[tokio::test]
async fn a_key_written_during_a_rotating_save_joins_the_rotated_session() {
    let plain = Faulty::default();
    let gate = Arc::new((tokio::sync::Notify::new(), tokio::sync::Notify::new()));
    let gated = Faulty {
        inner: plain.inner.clone(),
        create_gate: Some(gate.clone()),
        ..Faulty::default()
    };
    let dump = get(|session: Session| async move {
        let get = |key: &str| session.get::<serde_json::Value>(key).unwrap();
        format!("{:?} {:?} {:?}", get("n"), get("user"), get("x"))
    });
    let router = Router::new()
        .route("/start", start_route())
        .route("/dump", dump)
        .layer(SessionLayer::new(plain.clone()));
    let rotating = Router::new()
        .route(
            "/login",
            get(move |session: Session| {
                let gate = gate.clone();
                async move {
                    session.clear();
                    session.insert("user", "alice").unwrap();
                    session.cycle_id();
                    let during = async {
                        gate.0.notified().await;
                        session.insert("x", 1).unwrap();
                        gate.1.notify_one();
                    };
                    let (saved, ()) = tokio::join!(session.save(), during);
                    saved.unwrap();
                    "in"
                }
            }),
        )
        .layer(SessionLayer::new(gated.clone()));
    let response = send(&router, "/start", None).await;
    let old = format!("id={}", set_cookie(&response).unwrap().value());
    let writes = gated.writes.load(Ordering::SeqCst);
    // A second rotation would wait at the gate for good.
    let response = tokio::time::timeout(
        StdDuration::from_secs(10),
        send(&rotating, "/login", Some(&old)),
    )
    .await
    .expect("the ID rotated a second time");
    assert_eq!(response.status(), StatusCode::OK);
    let new = format!(
        "id={}",
        set_cookie(&response).expect("the rotated ID").value()
    );
    assert_ne!(new, old);
    assert_eq!(
        text(send(&router, "/dump", Some(&new)).await).await,
        r#"None Some(String("alice")) Some(Number(1))"#,
        "cleared, then both keys of the request"
    );
    assert_eq!(
        gated.writes.load(Ordering::SeqCst) - writes,
        2,
        "one rotation, then one save of the key written meanwhile"
    );
}

/// A handle kept past the response (a spawned task, a WebSocket) finds the ID the response's
/// cookie carries: a new session's, a rotated one's, and one started after `destroy`.
#[tokio::test]
async fn a_handle_kept_past_the_response_knows_the_id_the_cookie_carries() {
    type Kept = Arc<std::sync::Mutex<Option<Session>>>;
    for immediate in [false, true] {
        let store = Faulty {
            immediate,
            ..Faulty::default()
        };
        let kept: Kept = Arc::default();
        let keep = |change: fn(&Session)| {
            let kept = kept.clone();
            get(move |session: Session| {
                let kept = kept.clone();
                async move {
                    change(&session);
                    *kept.lock().unwrap() = Some(session);
                    "kept"
                }
            })
        };
        let router = Router::new()
            .route("/start", keep(|s| s.insert("n", 1).unwrap()))
            .route("/rotate", keep(Session::cycle_id))
            .route(
                "/relogin",
                keep(|s| {
                    s.destroy();
                    s.insert("n", 2).unwrap();
                }),
            )
            .layer(SessionLayer::new(store));
        let kept_id = || {
            let session = kept.lock().unwrap().take().unwrap();
            session.id().map(|id| id.expose())
        };
        let response = send(&router, "/start", None).await;
        let first = set_cookie(&response).unwrap().value().to_owned();
        assert_eq!(kept_id().as_deref(), Some(first.as_str()), "a new session");
        let response = send(&router, "/rotate", Some(&format!("id={first}"))).await;
        let rotated = set_cookie(&response).unwrap().value().to_owned();
        assert_ne!(rotated, first);
        assert_eq!(
            kept_id().as_deref(),
            Some(rotated.as_str()),
            "a rotated one"
        );
        let response = send(&router, "/relogin", Some(&format!("id={rotated}"))).await;
        let renewed = set_cookie(&response).unwrap().value().to_owned();
        assert_ne!(renewed, rotated);
        assert_eq!(
            kept_id().as_deref(),
            Some(renewed.as_str()),
            "one started after destroy"
        );
    }
}

/// A router whose `/rotate` handler loads the session, signals `loaded`, waits for `go`, then
/// calls `cycle_id` and writes `user`; meanwhile the test sends other requests of the session.
fn rotation_router(
    store: &MemoryStore,
    loaded: Arc<tokio::sync::Notify>,
    go: Arc<tokio::sync::Notify>,
) -> Router {
    Router::new()
        .route("/start", start_route())
        .route(
            "/rotate",
            get(move |session: Session| {
                let (loaded, go) = (loaded.clone(), go.clone());
                async move {
                    loaded.notify_one();
                    go.notified().await;
                    session.cycle_id();
                    session.insert("user", "alice").unwrap();
                    "rotated"
                }
            }),
        )
        .route(
            "/cart",
            get(|session: Session| async move {
                session.insert("cart", "tea").unwrap();
                "added"
            }),
        )
        .route(
            "/logout",
            get(|session: Session| async move {
                session.destroy();
                "bye"
            }),
        )
        .route(
            "/dump",
            get(|session: Session| async move {
                let get = |key: &str| session.get::<serde_json::Value>(key).unwrap();
                format!("{:?} {:?} {:?}", get("n"), get("cart"), get("user"))
            }),
        )
        .layer(SessionLayer::new(store.clone()))
}

/// Starts a session, then a `/rotate` request of it, and returns once that request has loaded
/// the session: the router, the session's cookie, the `Notify` that lets the rotation go on, and
/// the rotating request.
async fn start_rotation(
    store: &MemoryStore,
) -> (
    Router,
    String,
    Arc<tokio::sync::Notify>,
    tokio::task::JoinHandle<Response<Body>>,
) {
    let loaded = Arc::new(tokio::sync::Notify::new());
    let go = Arc::new(tokio::sync::Notify::new());
    let router = rotation_router(store, loaded.clone(), go.clone());
    let response = send(&router, "/start", None).await;
    let old = format!("id={}", set_cookie(&response).unwrap().value());
    let rotation = tokio::spawn({
        let (router, old) = (router.clone(), old.clone());
        async move { send(&router, "/rotate", Some(&old)).await }
    });
    loaded.notified().await;
    (router, old, go, rotation)
}

#[tokio::test]
async fn a_rotation_keeps_what_a_concurrent_request_saved() {
    let store = MemoryStore::new();
    let (router, old, go, rotation) = start_rotation(&store).await;
    // Saved while the rotating request runs, after it loaded the session.
    assert_eq!(
        send(&router, "/cart", Some(&old)).await.status(),
        StatusCode::OK
    );
    go.notify_one();
    let response = rotation.await.unwrap();
    let new = set_cookie(&response).expect("the rotated ID");
    let new = format!("id={}", new.value());
    assert_ne!(new, old);
    assert_eq!(
        text(send(&router, "/dump", Some(&new)).await).await,
        r#"Some(Number(1)) Some(String("tea")) Some(String("alice"))"#,
        "the new ID carries the old data, the concurrent write and the rotating request's own"
    );
    assert_eq!(
        text(send(&router, "/dump", Some(&old)).await).await,
        "None None None",
        "the old ID is gone"
    );
}

#[tokio::test]
async fn a_rotation_does_not_revive_a_session_ended_meanwhile() {
    let store = MemoryStore::new();
    let (router, old, go, rotation) = start_rotation(&store).await;
    // Logged out elsewhere while the rotating request runs.
    send(&router, "/logout", Some(&old)).await;
    go.notify_one();
    let response = rotation.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        set_cookie(&response).is_none(),
        "no new ID for a session that ended"
    );
    assert_eq!(
        text(send(&router, "/dump", Some(&old)).await).await,
        "None None None"
    );
    assert!(store.is_empty(), "no session under a new ID either");
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
fn two_layer_app(local: &MemoryStore, shared: &Faulty, header: bool) -> Router {
    let fail = shared.fail_writes.clone();
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

async fn send_with(
    router: &Router,
    path: &str,
    headers: &[(HeaderName, String)],
) -> Response<Body> {
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

#[tokio::test]
async fn an_outer_layer_failing_keeps_the_cookie_an_inner_layer_rotated() {
    let local = MemoryStore::new();
    let shared = Faulty::default();
    let router = two_layer_app(&local, &shared, false);

    let resp = send_with(&router, "/start", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let old_id = one_cookie(&resp, "id");
    let shared_id = one_cookie(&resp, "shared");
    let cookies = |id: &str| vec![(header::COOKIE, format!("id={id}; shared={shared_id}"))];

    let resp = send_with(&router, "/login", &cookies(&old_id)).await;
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

    shared.fail_writes.store(false, Ordering::SeqCst);
    let resp = send_with(&router, "/whoami", &cookies(&new_id)).await;
    assert_eq!(text(resp).await, "alice", "the login survives");
    let resp = send_with(&router, "/whoami", &cookies(&old_id)).await;
    assert_eq!(text(resp).await, "nobody", "the old ID is gone");
}

#[tokio::test]
async fn an_outer_layer_failing_keeps_the_token_header_an_inner_layer_rotated() {
    let local = MemoryStore::new();
    let shared = Faulty::default();
    let router = two_layer_app(&local, &shared, true);

    let resp = send_with(&router, "/start", &[]).await;
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

    let resp = send_with(&router, "/login", &headers(&old_token)).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let new_token = token(&resp);
    assert_ne!(new_token, old_token);
    assert_eq!(
        resp.headers().get(header::CACHE_CONTROL),
        Some(&HeaderValue::from_static("no-store"))
    );
    assert!(vary_has(&resp, "x-session"));

    shared.fail_writes.store(false, Ordering::SeqCst);
    let resp = send_with(&router, "/whoami", &headers(&new_token)).await;
    assert_eq!(text(resp).await, "alice");
}

/// Three layers: the middle one fails, and so does the outer one (which persists on 5xx, so it
/// commits after the middle one's error response). The inner layer's cookie outlives both.
#[tokio::test]
async fn the_inner_cookie_survives_two_failing_layers() {
    let local = MemoryStore::new();
    let broken = Faulty::default();
    let fail = broken.fail_writes.clone();
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

    let resp = send_with(&router, "/start", &[]).await;
    let old_id = one_cookie(&resp, "id");
    let others = format!(
        "middle={}; shared={}",
        one_cookie(&resp, "middle"),
        one_cookie(&resp, "shared")
    );

    let resp = send_with(
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

    broken.fail_writes.store(false, Ordering::SeqCst);
    let resp = send_with(
        &router,
        "/whoami",
        &[(header::COOKIE, format!("id={new_id}; {others}"))],
    )
    .await;
    assert_eq!(text(resp).await, "alice");
}

/// A router that starts a session (`/start`, n = 1) and reads `n` back (`/n`).
fn reading_router(store: Faulty) -> Router {
    Router::new()
        .route("/start", start_route())
        .route(
            "/n",
            get(|session: Session| async move {
                session
                    .get::<i64>("n")
                    .unwrap()
                    .map_or_else(|| "none".to_owned(), |n| n.to_string())
            }),
        )
        .layer(SessionLayer::new(store))
}

/// Two routers on one store: one whose saves wait at `gate` until let through (`/set`, n = 2),
/// and a [`reading_router`] that does not wait.
fn gated_pair(gate: &Gate) -> (Router, Router) {
    let plain = Faulty::default();
    let gated = Faulty {
        inner: plain.inner.clone(),
        save_gate: Some(gate.clone()),
        ..Faulty::default()
    };
    let read = reading_router(plain);
    let write = Router::new()
        .route(
            "/set",
            get(|session: Session| async move {
                session.insert("n", 2).unwrap();
                "set"
            }),
        )
        .layer(SessionLayer::new(gated));
    (read, write)
}

type Gate = Arc<(tokio::sync::Notify, tokio::sync::Notify)>;

/// Starts a session on `read`, sends `path` with its cookie to `gated`, and drops that request
/// once its store call waits at `gate` (the client walks away), then lets the call through.
/// Returns the session's cookie.
async fn walk_away_during_commit(read: &Router, gated: &Router, path: &str, gate: &Gate) -> String {
    let cookie = format!(
        "id={}",
        set_cookie(&send(read, "/start", None).await)
            .unwrap()
            .value()
    );
    {
        let request = send(gated, path, Some(&cookie));
        tokio::pin!(request);
        let waiting = tokio::select! {
            _ = &mut request => false,
            () = gate.0.notified() => true,
        };
        assert!(waiting, "the store call waits at the gate");
        // The request future is dropped here, its store call still waiting.
    }
    gate.1.notify_one();
    cookie
}

/// What `/n` of `read` answers for `cookie`, once it is `expected` (the background task that
/// finishes a commit runs when this one yields), or after a hundred tries.
async fn n_once_it_is(read: &Router, cookie: &str, expected: &str) -> String {
    let mut seen = String::new();
    for _ in 0..100 {
        seen = text(send(read, "/n", Some(cookie)).await).await;
        if seen == expected {
            break;
        }
        tokio::task::yield_now().await;
    }
    seen
}

/// A request dropped during its commit (the client went away after the handler answered, or a
/// timeout layer gave up) still has its changes written: the store calls finish in a task of
/// their own.
#[tokio::test]
async fn a_commit_the_client_walked_away_from_is_finished() {
    let gate: Gate = Arc::default();
    let (read, write) = gated_pair(&gate);
    let cookie = walk_away_during_commit(&read, &write, "/set", &gate).await;
    assert_eq!(
        n_once_it_is(&read, &cookie, "2").await,
        "2",
        "the dropped request's write was finished"
    );
}

/// Outside a Tokio runtime nothing can carry a dropped commit on: it is abandoned, without a
/// panic, and the stored session is left as it was.
#[test]
fn a_commit_dropped_outside_a_runtime_is_abandoned_cleanly() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let gate: Gate = Arc::default();
    let (read, write) = gated_pair(&gate);
    let response = runtime.block_on(send(&read, "/start", None));
    let cookie = format!("id={}", set_cookie(&response).unwrap().value());
    let mut request = Box::pin(send(&write, "/set", Some(&cookie)));
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        request.as_mut().poll(&mut context).is_pending(),
        "the save waits at the gate"
    );
    drop(request);
    gate.1.notify_one();
    let seen = runtime.block_on(async { text(send(&read, "/n", Some(&cookie)).await).await });
    assert_eq!(seen, "1", "nothing written, nothing lost");
}

/// A response future polled again after it completed (a wrapper breaking the `Future` contract)
/// answers with an error response of kind `Closed`, not a store error, and calls no store.
#[tokio::test]
async fn a_response_future_polled_again_answers_closed() {
    use tower::{Layer, Service};
    use tower_satchel::{SessionError, SessionErrorKind};
    let store = Faulty::default();
    let mut service = SessionLayer::new(store.clone()).layer(tower::service_fn(
        |request: Request<Body>| async move {
            let session = request.extensions().get::<Session>().unwrap().clone();
            session.load().await.unwrap();
            session.insert("n", 1).unwrap();
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        },
    ));
    let service = service.ready().await.unwrap();
    let mut future = Box::pin(service.call(Request::get("/").body(Body::empty()).unwrap()));
    let first = future.as_mut().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let calls = store.calls();
    let again = std::future::poll_fn(|cx| future.as_mut().poll(cx))
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let error = again.extensions().get::<SessionError>().unwrap();
    assert_eq!(error.kind(), SessionErrorKind::Closed);
    assert_eq!(store.calls(), calls);
}

/// A `tracing` writer that keeps what is logged, for the tests that check a log line.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    /// A subscriber writing here, the default on this thread while the guard lives.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish(),
        )
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Polls `request` once, until its save waits at the gate, and drops it there (the client walks
/// away during the commit).
fn drop_during_commit(request: impl std::future::Future) {
    let mut request = Box::pin(request);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        request.as_mut().poll(&mut context).is_pending(),
        "the save waits at the gate"
    );
}

/// Commits of dropped requests that the store keeps waiting are carried on up to a limit of
/// 1,024 a layer; the next one is abandoned, and said so, rather than pile up. Once the store
/// answers, they are all written, and the layer carries on dropped commits again.
#[tokio::test]
async fn dropped_commits_beyond_the_limit_are_abandoned_and_logged() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let gate: Gate = Arc::default();
    let (read, write) = gated_pair(&gate);
    let cookies: Vec<String> = {
        let mut cookies = Vec::new();
        for _ in 0..1025 {
            let response = send(&read, "/start", None).await;
            cookies.push(format!("id={}", set_cookie(&response).unwrap().value()));
        }
        cookies
    };
    for cookie in &cookies {
        drop_during_commit(send(&write, "/set", Some(cookie)));
    }
    let abandoned = "commits of dropped requests are still waiting for the store";
    assert_eq!(
        logs.text().matches(abandoned).count(),
        1,
        "the 1,025th is abandoned, and only it: {}",
        logs.text()
    );
    // Let the tasks reach the gate, then through it.
    tokio::task::yield_now().await;
    gate.1.notify_waiters();
    let last = cookies.last().unwrap();
    assert_eq!(
        n_once_it_is(&read, last, "1").await,
        "1",
        "the abandoned one wrote nothing"
    );
    for cookie in &cookies[..1024] {
        assert_eq!(n_once_it_is(&read, cookie, "2").await, "2", "carried on");
    }
    // The tasks are done, so the layer has room again.
    drop_during_commit(send(&write, "/set", Some(last)));
    tokio::task::yield_now().await;
    gate.1.notify_waiters();
    assert_eq!(n_once_it_is(&read, last, "2").await, "2");
    assert_eq!(logs.text().matches(abandoned).count(), 1);
    assert!(!logs.text().contains("ended before the store answered"));
}

/// A commit of a dropped request that the runtime drops (it shut down first) is logged as
/// abandoned, in the request's span and without naming the session.
#[test]
fn a_dropped_commit_the_runtime_shuts_down_on_is_logged() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let gate: Gate = Arc::default();
    let (read, write) = gated_pair(&gate);
    let cookie = runtime.block_on(async {
        let response = send(&read, "/start", None).await;
        let cookie = format!("id={}", set_cookie(&response).unwrap().value());
        drop_during_commit(send(&write, "/set", Some(&cookie)));
        cookie
    });
    assert!(!logs.text().contains("abandoned"), "{}", logs.text());
    drop(runtime);
    let text = logs.text();
    assert!(
        text.contains("WARN") && text.contains("ended before the store answered"),
        "{text}"
    );
    assert!(!text.contains(cookie.trim_start_matches("id=")), "{text}");
}

/// A rotation whose request is dropped during its commit is carried out too: the session moves
/// to the new ID with the request's changes, and the old ID, which the client still holds, names
/// no session any more (the client never saw the new cookie).
#[tokio::test]
async fn a_rotation_the_client_walked_away_from_is_finished() {
    let gate: Gate = Arc::default();
    let plain = Faulty::default();
    let gated = Faulty {
        inner: plain.inner.clone(),
        create_gate: Some(gate.clone()),
        ..Faulty::default()
    };
    let read = reading_router(plain.clone());
    let rotate = Router::new()
        .route(
            "/login",
            get(|session: Session| async move {
                session.cycle_id();
                session.insert("n", 2).unwrap();
                session.set_owner("walker");
                "rotated"
            }),
        )
        .layer(SessionLayer::new(gated));
    let cookie = walk_away_during_commit(&read, &rotate, "/login", &gate).await;
    assert_eq!(
        n_once_it_is(&read, &cookie, "none").await,
        "none",
        "the old ID names no session once the rotation is done"
    );
    assert_eq!(
        plain.inner.len(),
        1,
        "the session lives on under the new ID only"
    );
    // With the request's change: the owner it set finds it, and its `n` is 2.
    let now = time::OffsetDateTime::now_utc();
    let listed = SessionStore::list_owner(&plain.inner, "walker", now)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "one session of the owner: {listed:?}");
    let moved = &listed[0];
    let record = SessionStore::load(&plain.inner, &moved.key, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.data.get("n"), Some(&serde_json::json!(2)));
}

/// [`rotating_app`] whose `/login-or-fail` answers 500 when its `save` fails (the usual `?`).
fn failing_login_app(store: &Faulty) -> Router {
    Router::new()
        .route("/start", start_route())
        .route(
            "/who",
            get(|session: Session| async move {
                let n = session.get::<i64>("n").unwrap();
                format!("{n:?} {:?}", session.get::<String>("user").unwrap())
            }),
        )
        .route(
            "/login-or-fail",
            get(|session: Session| async move {
                session.cycle_id();
                session.insert("user", "alice").unwrap();
                match session.save().await {
                    Ok(()) => (StatusCode::OK, "in"),
                    Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "failed"),
                }
            }),
        )
        .layer(SessionLayer::new(store.clone()))
}

/// A rotation whose answer was lost, by a `save` whose handler then answers 500: the store made
/// the move, so the client gets the new ID's cookie with the error (its old cookie names no
/// session any more), rather than being logged out with the session left under an ID no one
/// holds.
#[tokio::test]
async fn a_lost_rotation_then_a_server_error_sends_the_new_cookie() {
    let store = Faulty::default();
    let router = failing_login_app(&store);
    let response = send(&router, "/start", None).await;
    let old = format!("id={}", set_cookie(&response).unwrap().value());
    store.lose_rename_replies.store(1, Ordering::SeqCst);
    let response = send(&router, "/login-or-fail", Some(&old)).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let new = format!(
        "id={}",
        set_cookie(&response)
            .expect("the moved session's cookie")
            .value()
    );
    assert_ne!(new, old);
    assert_eq!(
        text(send(&router, "/who", Some(&new)).await).await,
        r#"Some(1) Some("alice")"#
    );
    assert_eq!(store.inner.len(), 1);
}

/// A rotation cut short (a copy under the new ID, the old session still there), then a 500: the
/// old ID keeps working, as after any failed rotation, and the copy goes.
#[tokio::test]
async fn a_rotation_cut_short_then_a_server_error_keeps_the_old_session_alone() {
    let store = Faulty::default();
    let router = failing_login_app(&store);
    let response = send(&router, "/start", None).await;
    let old = format!("id={}", set_cookie(&response).unwrap().value());
    store.half_renames.store(1, Ordering::SeqCst);
    let response = send(&router, "/login-or-fail", Some(&old)).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(set_cookie(&response).is_none());
    assert_eq!(
        text(send(&router, "/who", Some(&old)).await).await,
        "Some(1) None"
    );
    assert_eq!(store.inner.len(), 1, "the copy under the new ID is gone");
}

/// A session a `save` created and `revoke_owner` then deleted, in a request that answers 500:
/// no cookie for the deleted session goes out.
#[tokio::test]
async fn a_saved_session_revoked_in_a_failing_request_sends_no_cookie() {
    for immediate in [false, true] {
        let store = Faulty {
            immediate,
            ..Faulty::default()
        };
        let router = Router::new()
            .route(
                "/",
                get(|session: Session| async move {
                    session.set_owner("u1");
                    session.insert("x", 1).unwrap();
                    session.save().await.unwrap();
                    session.revoke_owner().await.unwrap();
                    StatusCode::INTERNAL_SERVER_ERROR
                }),
            )
            .layer(SessionLayer::new(store.clone()));
        let response = send(&router, "/", None).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            set_cookie(&response).is_none(),
            "immediate: {immediate}: {:?}",
            set_cookie(&response)
        );
        assert_eq!(store.inner.len(), 0);
    }
}

/// After `destroy`, what the handler sets goes to a new session with the layer's expiry: the
/// handle reports that expiry and its deadline, not the destroyed session's.
#[tokio::test]
async fn after_destroy_the_handle_reports_the_new_sessions_expiry() {
    let clock = ManualClock::starting_now();
    let router = Router::new()
        .route(
            "/remember",
            get(|session: Session| async move {
                session.set_expiry(Expiry::OnInactivity(Duration::days(30)));
                session.insert("n", 1).unwrap();
                "remembered"
            }),
        )
        .route(
            "/logout",
            get(|session: Session| async move {
                session.load().await.unwrap();
                session.destroy();
                session.insert("flash", 1).unwrap();
                format!(
                    "{:?} {}",
                    session.expiry(),
                    session.expires_at().unix_timestamp()
                )
            }),
        )
        .layer(
            SessionLayer::builder(MemoryStore::new())
                .expiry(Expiry::OnInactivity(Duration::days(1)))
                .clock(clock.clone())
                .build()
                .unwrap(),
        );
    let response = send(&router, "/remember", None).await;
    let cookie = format!("id={}", set_cookie(&response).unwrap().value());
    let response = send(&router, "/logout", Some(&cookie)).await;
    let new = set_cookie(&response).unwrap();
    assert_eq!(new.max_age(), Some(Duration::days(1)));
    let window = Duration::days(1);
    let body = text(response).await;
    let (expiry, deadline) = body.rsplit_once(' ').unwrap();
    assert_eq!(expiry, format!("{:?}", Expiry::OnInactivity(window)));
    let deadline: i64 = deadline.parse().unwrap();
    assert!(
        ((clock.now() + window).unix_timestamp() - deadline).abs() <= 1,
        "{deadline}"
    );
}

/// A refresh cookie a `save` left (its `Max-Age` from the policy it loaded) is not sent when
/// another request set a new expiry meanwhile and sent its own cookie: SECURITY.md 15, `Max-Age`
/// no later than the server's deadline.
#[tokio::test]
async fn a_saved_refresh_is_not_sent_after_another_request_changed_the_expiry() {
    saved_refresh_after_a_new_expiry(MemoryStore::new()).await;
    saved_refresh_after_a_new_expiry(Faulty::default()).await;
}

async fn saved_refresh_after_a_new_expiry(store: impl SessionStore + Clone) {
    let clock = ManualClock::starting_now();
    let layer = || hourly_layer(&store, &clock);
    let at = clock.now() + Duration::minutes(40);
    let other = Router::new()
        .route("/start", start_route())
        .route(
            "/until",
            get(move |session: Session| async move {
                session.set_expiry(Expiry::AtDateTime(at));
                "fixed"
            }),
        )
        .layer(layer());
    let response = send(&other, "/start", None).await;
    let cookie = format!("id={}", set_cookie(&response).unwrap().value());
    let change = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow = {
        let (other, cookie, change) = (other.clone(), cookie.clone(), change.clone());
        Router::new()
            .route(
                "/",
                get(move |session: Session| {
                    let (other, cookie, change) = (other.clone(), cookie.clone(), change.clone());
                    async move {
                        // Due for a refresh: the save owes the response a cookie.
                        session.save().await.unwrap();
                        if change.load(Ordering::SeqCst) {
                            let fixed = send(&other, "/until", Some(&cookie)).await;
                            assert!(set_cookie(&fixed).is_some());
                        }
                        "done"
                    }
                }),
            )
            .layer(layer())
    };
    // Without the other request, the refresh goes out.
    clock.advance(Duration::minutes(7));
    let response = send(&slow, "/", Some(&cookie)).await;
    assert_eq!(
        set_cookie(&response).and_then(|c| c.max_age()),
        Some(Duration::hours(1))
    );
    clock.advance(Duration::minutes(7));
    change.store(true, Ordering::SeqCst);
    let response = send(&slow, "/", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        set_cookie(&response).is_none(),
        "a cookie worked out from the old expiry: {:?}",
        set_cookie(&response)
    );
}

/// An absolute lifetime as long as `Duration` goes: no arithmetic overflow (a panic in debug
/// builds) when loads are held to it.
#[tokio::test]
async fn an_enormous_absolute_lifetime_does_not_overflow() {
    let router = Router::new()
        .route("/start", start_route())
        .route(
            "/n",
            get(
                |session: Session| async move { format!("{:?}", session.get::<i64>("n").unwrap()) },
            ),
        )
        .layer(
            SessionLayer::builder(MemoryStore::new())
                .absolute_lifetime(Some(Duration::MAX))
                .build()
                .unwrap(),
        );
    let response = send(&router, "/start", None).await;
    let cookie = format!("id={}", set_cookie(&response).unwrap().value());
    let response = send(&router, "/n", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "Some(1)");
}
