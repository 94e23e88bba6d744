//! The HTTP suite: every case drives the real `SessionLayer` over the store under test.
//!
//! Tokens are followed the way a browser does: each response that sets the cookie replaces the
//! token (for the cookie store, every write is a new sealed value).

use axum::http::{HeaderValue, StatusCode};
use cookie::SameSite;
use time::Duration;
use tower_satchel::{Backend, Expiry, SessionId};

use super::Side;
use super::harness::{App, Resp, app, default_app};

/// The token after `resp`: the one it sets, or the one we had.
fn follow(resp: &Resp, token: &str) -> String {
    resp.token().unwrap_or_else(|| token.to_owned())
}

/// A request whose handler never touches the session sends no cookie and writes nothing. The
/// suite sees a store only through the layer, so what it checks here is what HTTP shows: no
/// cookie, no `Vary`, and no store write to a live session (a touch would have moved its idle
/// deadline). That a new visitor's untouched request leaves no record behind (which no response
/// can show) is counted at the store by `tests/layer.rs`
/// (`untouched_and_read_only_requests_do_not_write`) and `tests/store_file.rs`
/// (`an_unknown_id_writes_nothing`).
pub async fn untouched_requests_get_no_cookie_and_no_store_record(b: Backend, _: Side) {
    // Every read touches (`touch_after(0.0)`), so a store write would show in the deadline.
    let app = app(b, |l| {
        l.expiry(Expiry::OnInactivity(Duration::minutes(10)))
            .touch_after(0.0)
    });
    let resp = app.get("/noop", None).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.set_cookie().is_none());
    assert!(
        resp.vary().is_empty(),
        "no Vary when the session was not read"
    );
    // An untouched request with a live session's token changes nothing either.
    let token = app.start().await;
    app.clock.advance(Duration::minutes(9));
    let resp = app.get("/noop", Some(&token)).await;
    assert_eq!(resp.body, "noop");
    assert!(resp.set_cookie().is_none());
    assert!(resp.vary().is_empty());
    // Had it touched the session (as a read at minute 9 does, see `idle_timeout_is_enforced`),
    // the session would live to minute 19: it ends at minute 10 as if the request never came.
    app.clock.advance(Duration::minutes(2));
    assert_eq!(app.get("/arrival", Some(&token)).await.body, "Expired");
    assert_eq!(app.get("/get/n", Some(&token)).await.body, "null");
}

pub async fn reading_a_new_session_sets_vary_but_no_cookie(b: Backend, _: Side) {
    let app = default_app(b);
    let resp = app.get("/read", None).await;
    assert_eq!(resp.body, "0");
    assert!(
        resp.set_cookie().is_none(),
        "reading must not create a session"
    );
    assert_eq!(resp.vary(), vec!["cookie"]);
    assert!(resp.cache_control().is_none());
}

/// SECURITY.md 17 (the defaults) and 19 (`no-store` with `Set-Cookie`).
pub async fn first_write_sets_a_cookie_with_secure_defaults(b: Backend, side: Side) {
    let app = default_app(b);
    let resp = app.get("/incr/n", None).await;
    assert_eq!(resp.body, "1");
    let cookie = resp.set_cookie().expect("a session cookie");
    assert_eq!(cookie.name(), "id");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(cookie.same_site(), Some(SameSite::Lax));
    assert_eq!(cookie.path(), Some("/"));
    assert_eq!(cookie.domain(), None);
    // Default expiry: 24 h of inactivity.
    assert_eq!(cookie.max_age(), Some(Duration::hours(24)));
    assert_eq!(resp.cache_control(), Some("no-store"));
    assert_eq!(resp.vary(), vec!["cookie"]);
    if side == Side::Server {
        assert!(SessionId::parse(cookie.value()).is_some(), "a 256-bit ID");
    }
}

pub async fn returning_visitors_see_their_data(b: Backend, _: Side) {
    let app = default_app(b);
    let token = app.start().await;
    let resp = app.get("/arrival", Some(&token)).await;
    assert_eq!(resp.body, "Returning");
    let resp = app.get("/incr/n", Some(&token)).await;
    assert_eq!(resp.body, "2");
    let token = follow(&resp, &token);
    assert_eq!(app.get("/get/n", Some(&token)).await.body, "2");
}

pub async fn an_unknown_token_is_not_adopted(b: Backend, side: Side) {
    let app = default_app(b);
    // An attacker-chosen, well-formed token (SECURITY.md 2).
    let planted = match side {
        Side::Server => SessionId::generate().unwrap().expose(),
        Side::Client => {
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                .to_owned()
        }
    };
    let resp = app.get("/arrival", Some(&planted)).await;
    let expected = match side {
        Side::Server => "Expired",
        Side::Client => "Invalid",
    };
    assert_eq!(resp.body, expected);
    // The answer depended on the cookie, though it named no session (SECURITY.md 19).
    assert_eq!(resp.vary(), vec!["cookie"]);
    assert!(resp.set_cookie().is_none(), "reading creates nothing");
    let resp = app.get("/incr/n", Some(&planted)).await;
    assert_eq!(resp.body, "1");
    assert_eq!(resp.vary(), vec!["cookie"]);
    let issued = resp.expect_token();
    assert_ne!(issued, planted, "the planted token must not be adopted");
    // Nothing was stored under the planted value (SECURITY.md 3), not even an empty session.
    let resp = app.get("/get/n", Some(&planted)).await;
    assert_eq!(resp.body, "null");
    assert_eq!(app.get("/arrival", Some(&planted)).await.body, expected);
    assert_eq!(app.get("/get/n", Some(&issued)).await.body, "1");
}

pub async fn garbled_tokens_get_a_fresh_session(b: Backend, side: Side) {
    let app = default_app(b);
    let long = "A".repeat(5000);
    let mut issued = std::collections::HashSet::new();
    let values: Vec<&[u8]> = vec![
        b"",
        b"abc",
        b"../../../../etc/passwd",
        b"a/b",
        b"a\\b",
        b"/tmp/x",
        b"%00",
        b"\xc3\xa9\xc3\xa9\xc3\xa9",
        b"\"\"",
        long.as_bytes(),
    ];
    for value in values {
        let mut cookie = b"id=".to_vec();
        cookie.extend_from_slice(value);
        let header = HeaderValue::from_bytes(&cookie).unwrap();
        let resp = app.get_raw_cookie("/arrival", header.clone()).await;
        assert_eq!(resp.status, StatusCode::OK, "{value:?}");
        // An empty value, quoted or not, is no token at all.
        let empty = value.is_empty() || value == b"\"\"";
        let arrival = if empty { "New" } else { "Invalid" };
        assert!(resp.body == arrival, "{value:?} gave {}", resp.body);
        // Read, so the answer depends on the cookie (SECURITY.md 19); nothing to set.
        assert_eq!(resp.vary(), vec!["cookie"], "{value:?}");
        assert!(resp.set_cookie().is_none(), "{value:?}");
        let resp = app.get_raw_cookie("/incr/n", header.clone()).await;
        assert_eq!(resp.body, "1", "{value:?}");
        assert_eq!(resp.vary(), vec!["cookie"], "{value:?}");
        assert_eq!(resp.cache_control(), Some("no-store"), "{value:?}");
        let token = resp.expect_token();
        // A session of its own, that its new token opens (a server store's token is an ID it
        // issued), while the garbled value still opens nothing: nothing was stored under it.
        if side == Side::Server {
            assert!(SessionId::parse(&token).is_some(), "{value:?} gave {token}");
        }
        assert!(
            issued.insert(token.clone()),
            "{value:?}: a token given before"
        );
        assert_eq!(app.get("/get/n", Some(&token)).await.body, "1", "{value:?}");
        let again = app.get_raw_cookie("/arrival", header.clone()).await;
        assert_eq!(again.body, arrival, "{value:?} adopted");
        assert_eq!(
            app.get_raw_cookie("/get/n", header).await.body,
            "null",
            "{value:?}"
        );
    }
}

pub async fn cycle_id_keeps_data_and_retires_the_old_token(b: Backend, side: Side) {
    let app = default_app(b);
    let old = app.start().await;
    let resp = app.get("/cycle", Some(&old)).await;
    let new = resp.expect_token();
    assert_ne!(new, old);
    assert_eq!(resp.cache_control(), Some("no-store"));
    let resp = app.get("/incr/n", Some(&new)).await;
    assert_eq!(resp.body, "2", "data survives rotation");
    // Replaying the old token (SECURITY.md 8).
    let replay = app.get("/get/n", Some(&old)).await;
    match side {
        Side::Server => assert_eq!(replay.body, "null", "the old ID must be dead"),
        // Documented exception: a sealed cookie cannot be retired server-side.
        Side::Client => assert_eq!(replay.body, "1"),
    }
}

pub async fn cycle_id_then_server_error_keeps_the_old_session(b: Backend, _: Side) {
    let app = default_app(b);
    let old = app.start().await;
    let resp = app.get("/cycle-fail", Some(&old)).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(resp.set_cookie().is_none(), "a 5xx must not rotate");
    assert_eq!(resp.vary(), vec!["cookie"], "the session was read");
    let resp = app.get("/incr/n", Some(&old)).await;
    assert_eq!(resp.body, "2", "the old session still works");
    let token = follow(&resp, &old);
    assert_eq!(app.get("/get/after-cycle", Some(&token)).await.body, "null");
}

pub async fn destroy_sends_a_matching_removal_cookie(b: Backend, side: Side) {
    let app = app(b, |l| {
        l.cookie_name("__Secure-sid")
            .domain("example.com")
            .path("/")
            .same_site(Some(SameSite::Strict))
    });
    let token = app.start().await;
    let resp = app.get("/destroy", Some(&token)).await;
    let cookie = resp.set_cookie().expect("a removal cookie");
    assert_eq!(cookie.name(), "__Secure-sid");
    assert_eq!(cookie.value(), "");
    assert_eq!(cookie.max_age(), Some(Duration::ZERO));
    assert_eq!(cookie.path(), Some("/"));
    assert_eq!(cookie.domain(), Some("example.com"));
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site(), Some(SameSite::Strict));
    assert_eq!(resp.cache_control(), Some("no-store"));
    assert_replay_after_destroy(&app, &token, side).await;
}

/// The removal cookie mirrors attributes set away from their defaults too (SECURITY.md 10): one
/// on another path, or `Secure` where the cookie is not, would leave the browser's cookie.
pub async fn destroy_mirrors_attributes_away_from_their_defaults(b: Backend, side: Side) {
    let app = app(b, |l| {
        l.cookie_name("sid")
            .path("/app")
            .secure(false)
            .http_only(false)
            .same_site(None)
    });
    let token = app.start().await;
    let resp = app.get("/destroy", Some(&token)).await;
    let cookie = resp.set_cookie().expect("a removal cookie");
    assert_eq!((cookie.name(), cookie.value()), ("sid", ""));
    assert_eq!(cookie.max_age(), Some(Duration::ZERO));
    assert_eq!(cookie.path(), Some("/app"));
    assert_eq!(cookie.domain(), None);
    assert_eq!(cookie.secure(), None);
    assert_eq!(cookie.same_site(), None);
    assert_replay_after_destroy(&app, &token, side).await;
}

/// Replaying the token of a destroyed session that held `n` = 1 (SECURITY.md 10).
async fn assert_replay_after_destroy(app: &App, token: &str, side: Side) {
    let replay = app.get("/get/n", Some(token)).await;
    match side {
        Side::Server => {
            assert_eq!(replay.body, "null");
            assert_eq!(app.get("/arrival", Some(token)).await.body, "Expired");
        }
        // Documented exception: without server state a copied cookie stays valid until its
        // deadline (the browser drops it; a thief's copy does not).
        Side::Client => assert_eq!(replay.body, "1"),
    }
}

/// SECURITY.md 20 as HTTP shows it; that nothing reaches the store is counted there, in
/// `tests/layer.rs` (`server_errors_reach_the_store_with_no_write_touch_or_rename`).
pub async fn server_errors_persist_nothing(b: Backend, _: Side) {
    let app = default_app(b);
    let token = app.start().await;
    let resp = app.get("/fail/n/100", Some(&token)).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(resp.set_cookie().is_none());
    // The failed handler read the session: its answer may depend on it (SECURITY.md 19).
    assert_eq!(resp.vary(), vec!["cookie"]);
    assert_eq!(app.get("/get/n", Some(&token)).await.body, "1");
    // A new visitor whose first request fails gets no session at all.
    let resp = app.get("/fail/n/100", None).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(resp.set_cookie().is_none());
    assert_eq!(resp.vary(), vec!["cookie"]);
}

pub async fn server_errors_persist_when_configured(b: Backend, _: Side) {
    let app = app(b, |l| l.persist_on_server_error(true));
    let token = app.start().await;
    let resp = app.get("/fail/n/100", Some(&token)).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    let token = follow(&resp, &token);
    assert_eq!(app.get("/get/n", Some(&token)).await.body, "100");
}

pub async fn idle_timeout_is_enforced(b: Backend, _: Side) {
    let app = app(b, |l| {
        l.expiry(Expiry::OnInactivity(Duration::minutes(10)))
            .touch_after(0.0)
    });
    let token = app.start().await;
    app.clock.advance(Duration::minutes(9));
    let resp = app.get("/get/n", Some(&token)).await;
    assert_eq!(resp.body, "1", "alive before the idle deadline");
    let token = follow(&resp, &token);
    // The read refreshed the deadline (touch_after 0): 9 more minutes are fine.
    app.clock.advance(Duration::minutes(9));
    let resp = app.get("/get/n", Some(&token)).await;
    assert_eq!(resp.body, "1", "activity slides the idle deadline");
    let token = follow(&resp, &token);
    app.clock.advance(Duration::minutes(11));
    assert_eq!(app.get("/arrival", Some(&token)).await.body, "Expired");
    assert_eq!(app.get("/get/n", Some(&token)).await.body, "null");
}

/// A write that comes with the token of an expired or destroyed session starts a new session
/// under a new ID; the old ID is never brought back (SECURITY.md 2).
pub async fn a_write_with_an_ended_token_gets_a_new_id(b: Backend, side: Side) {
    let app = app(b, |l| l.expiry(Expiry::OnInactivity(Duration::minutes(10))));
    let expired = app.start().await;
    app.clock.advance(Duration::minutes(11));
    let resp = app.get("/incr/n", Some(&expired)).await;
    assert_eq!(resp.body, "1", "a fresh session");
    assert_ne!(resp.expect_token(), expired);
    assert_eq!(app.get("/get/n", Some(&expired)).await.body, "null");
    assert_eq!(app.get("/arrival", Some(&expired)).await.body, "Expired");

    let destroyed = app.start().await;
    app.get("/destroy", Some(&destroyed)).await;
    let resp = app.get("/incr/n", Some(&destroyed)).await;
    match side {
        Side::Server => {
            assert_eq!(resp.body, "1", "a fresh session");
            assert_ne!(resp.expect_token(), destroyed);
            assert_eq!(app.get("/get/n", Some(&destroyed)).await.body, "null");
            assert_eq!(app.get("/arrival", Some(&destroyed)).await.body, "Expired");
        }
        // Documented exception: a copy of a destroyed sealed session stays valid.
        Side::Client => assert_eq!(resp.body, "2"),
    }
}

pub async fn absolute_lifetime_is_enforced_despite_activity(b: Backend, side: Side) {
    let app = app(b, |l| {
        l.expiry(Expiry::OnInactivity(Duration::minutes(30)))
            .absolute_lifetime(Some(Duration::hours(1)))
            .touch_after(0.0)
    });
    let mut token = app.start().await;
    for step in 1..=3 {
        app.clock.advance(Duration::minutes(19));
        let resp = app.get("/incr/n", Some(&token)).await;
        assert_eq!(resp.body, (step + 1).to_string(), "still the same session");
        token = follow(&resp, &token);
        // Touched while the idle deadline (30 minutes ahead) came before the absolute one: at
        // minutes 19 and 38. From minute 38 on it reaches minute 68, past the absolute deadline,
        // and no touch could make the session last longer. (A sealed session is resealed into
        // its cookie whenever it changes, as `/incr` changes it.)
        let cookie = resp.set_cookie();
        let refreshed = step < 3 || side == Side::Client;
        assert_eq!(cookie.is_some(), refreshed, "refreshed at step {step}");
        if let Some(cookie) = cookie {
            let left = Duration::minutes(60 - 19 * step);
            assert!(
                cookie.max_age().unwrap() <= left,
                "Max-Age beyond the absolute deadline"
            );
        }
    }
    app.clock.advance(Duration::minutes(4)); // 61 minutes after creation
    assert_eq!(app.get("/arrival", Some(&token)).await.body, "Expired");
}

/// An absolute lifetime shortened after a session began ends it once it is older than that
/// (SECURITY.md 9): what an operator does after a suspected theft.
pub async fn a_shortened_absolute_lifetime_holds_for_existing_sessions(b: Backend, side: Side) {
    let expiry = Expiry::OnInactivity(Duration::days(1));
    let before = app(b.clone(), |l| l.expiry(expiry));
    let token = before.start().await;
    let after = app(b, |l| {
        l.expiry(expiry).absolute_lifetime(Some(Duration::hours(1)))
    });
    after.clock.advance(Duration::minutes(30));
    let resp = after.get("/incr/n", Some(&token)).await;
    assert_eq!(resp.body, "2", "alive within the new lifetime");
    // The cookie store reseals on every write; a server store sends a cookie only when a touch
    // is due, but whenever it does, its Max-Age must follow the new lifetime.
    if side == Side::Client {
        let max_age = resp.set_cookie().and_then(|c| c.max_age());
        assert!(
            max_age.is_some(),
            "the cookie store resealed, with a Max-Age"
        );
    }
    if let Some(max_age) = resp.set_cookie().and_then(|c| c.max_age()) {
        // Stores keep whole seconds: the lifetime is held to the second, with one to spare.
        assert!(
            max_age <= Duration::minutes(30) + Duration::seconds(2),
            "Max-Age {max_age}"
        );
    }
    let token = follow(&resp, &token);
    after.clock.advance(Duration::minutes(31));
    assert_eq!(after.get("/arrival", Some(&token)).await.body, "Expired");
    assert_eq!(after.get("/get/n", Some(&token)).await.body, "null");
}

pub async fn cycle_id_does_not_extend_the_absolute_lifetime(b: Backend, _: Side) {
    let app = app(b, |l| {
        l.expiry(Expiry::OnInactivity(Duration::minutes(50)))
            .absolute_lifetime(Some(Duration::hours(1)))
    });
    let token = app.start().await;
    app.clock.advance(Duration::minutes(40));
    let resp = app.get("/cycle", Some(&token)).await;
    let rotated = resp.expect_token();
    let max_age = resp.set_cookie().unwrap().max_age().unwrap();
    assert!(
        max_age <= Duration::minutes(20),
        "Max-Age {max_age} after rotation"
    );
    app.clock.advance(Duration::minutes(21));
    assert_eq!(app.get("/get/n", Some(&rotated)).await.body, "null");
}

pub async fn touch_is_throttled(b: Backend, _: Side) {
    let app = app(b, |l| {
        l.expiry(Expiry::OnInactivity(Duration::minutes(10)))
            .touch_after(0.5)
    });
    let token = app.start().await;
    app.clock.advance(Duration::minutes(2));
    let resp = app.get("/get/n", Some(&token)).await;
    assert_eq!(resp.body, "1");
    assert!(
        resp.set_cookie().is_none(),
        "no touch before half the window"
    );
    assert_eq!(resp.vary(), vec!["cookie"]);
    app.clock.advance(Duration::minutes(4)); // 6 minutes since the write
    let resp = app.get("/get/n", Some(&token)).await;
    let cookie = resp.set_cookie().expect("touched: the cookie is refreshed");
    assert_eq!(cookie.max_age(), Some(Duration::minutes(10)));
    assert_eq!(resp.cache_control(), Some("no-store"));
    let token = follow(&resp, &token);
    app.clock.advance(Duration::minutes(8)); // 14 minutes since the write, 8 since the touch
    assert_eq!(
        app.get("/get/n", Some(&token)).await.body,
        "1",
        "the touch moved the deadline"
    );
}

/// Once a touch has carried the idle deadline to the absolute one, no further touch can make the
/// session (or its cookie) last longer: none is made, however often the session is used.
pub async fn no_touch_once_the_idle_deadline_reaches_the_absolute_one(b: Backend, _: Side) {
    let app = app(b, |l| {
        l.expiry(Expiry::OnInactivity(Duration::minutes(10)))
            .absolute_lifetime(Some(Duration::minutes(15)))
            .touch_after(0.5)
    });
    let token = app.start().await;
    app.clock.advance(Duration::minutes(6));
    let resp = app.get("/get/n", Some(&token)).await;
    let cookie = resp.set_cookie().expect("touched");
    assert_eq!(
        cookie.max_age(),
        Some(Duration::minutes(9)),
        "held to the absolute deadline"
    );
    let token = follow(&resp, &token);
    app.clock.advance(Duration::minutes(5));
    for minute in 12..=14 {
        app.clock.advance(Duration::minutes(1));
        let resp = app.get("/get/n", Some(&token)).await;
        assert_eq!(resp.body, "1");
        assert!(resp.set_cookie().is_none(), "no touch at minute {minute}");
    }
    app.clock
        .advance(Duration::minutes(1) + Duration::seconds(2));
    assert_eq!(
        app.get("/get/n", Some(&token)).await.body,
        "null",
        "ended at the absolute deadline"
    );
}

pub async fn concurrent_requests_writing_different_keys(b: Backend, side: Side) {
    let app = default_app(b);
    let token = app.start().await;
    let (a, b) = tokio::join!(
        app.get("/barrier-set/a", Some(&token)),
        app.get("/barrier-set/b", Some(&token)),
    );
    assert_eq!((a.body.as_str(), b.body.as_str()), ("ok", "ok"));
    match side {
        Side::Server => {
            let keys = app.get("/keys", Some(&token)).await.body;
            assert_eq!(keys, "a,b,n", "both writes kept");
        }
        Side::Client => {
            // Documented exception: each response carries the whole session; the last cookie the
            // browser stores wins.
            let keys_a = app.get("/keys", Some(&a.expect_token())).await.body;
            let keys_b = app.get("/keys", Some(&b.expect_token())).await.body;
            assert_eq!((keys_a.as_str(), keys_b.as_str()), ("a,n", "b,n"));
        }
    }
}

pub async fn a_save_after_a_concurrent_destroy_does_not_resurrect(b: Backend, side: Side) {
    let app = default_app(b);
    let token = app.start().await;
    let slow = {
        let app: App = app.clone();
        let token = token.clone();
        tokio::spawn(async move { app.get("/wait-set/late", Some(&token)).await })
    };
    app.signals.loaded.notified().await;
    let resp = app.get("/destroy", Some(&token)).await;
    assert_eq!(resp.body, "destroyed");
    app.signals.go.notify_one();
    let late = slow.await.unwrap();
    assert_eq!(late.status, StatusCode::OK);
    match side {
        Side::Server => {
            assert!(
                late.token().is_none(),
                "no cookie for a session that is gone"
            );
            assert_eq!(app.get("/get/late", Some(&token)).await.body, "null");
            assert_eq!(app.get("/arrival", Some(&token)).await.body, "Expired");
        }
        Side::Client => {
            // Documented exception: the late response reseals its own copy.
            let resealed = late.expect_token();
            assert_eq!(app.get("/get/late", Some(&resealed)).await.body, "true");
        }
    }
}

/// A rotation keeps the owner a concurrent request gave the session while it ran: revoking
/// that owner's sessions reaches the rotated one.
pub async fn cycle_id_keeps_an_owner_set_concurrently(b: Backend, side: Side) {
    let app = default_app(b);
    let token = app.get("/owner/alice", None).await.expect_token();
    let other = app.get("/owner/bob", None).await.expect_token();
    let rotating = {
        let app: App = app.clone();
        let token = token.clone();
        tokio::spawn(async move { app.get("/wait-cycle", Some(&token)).await })
    };
    app.signals.loaded.notified().await;
    let handed = app.get("/owner/bob", Some(&token)).await;
    assert_eq!(handed.body, "ok");
    app.signals.go.notify_one();
    let rotated = rotating.await.unwrap().expect_token();
    assert_ne!(rotated, token);
    match side {
        Side::Server => {
            assert_eq!(app.get("/whose", Some(&rotated)).await.body, "bob");
            assert_eq!(app.get("/revoke", Some(&rotated)).await.body, "2");
            assert_eq!(app.get("/get/logged-in", Some(&rotated)).await.body, "null");
            assert_eq!(app.get("/get/logged-in", Some(&other)).await.body, "null");
        }
        Side::Client => {
            // Documented exception: each response seals its own copy, so the rotated cookie
            // carries what the rotating request loaded, not the other response's change.
            assert_eq!(app.get("/whose", Some(&rotated)).await.body, "alice");
        }
    }
}

/// A read-only request that loaded the session before another one shortened its expiry does
/// not stretch it again with its touch, nor send a cookie for the old expiry.
pub async fn a_touch_keeps_the_expiry_a_concurrent_request_set(b: Backend, side: Side) {
    let app = app(b, |l| l.expiry(Expiry::OnInactivity(Duration::hours(1))));
    let token = app.start().await;
    // A tenth of the window has passed: a read is due to touch the session.
    app.clock.advance(Duration::minutes(10));
    let reading = {
        let app: App = app.clone();
        let token = token.clone();
        tokio::spawn(async move { app.get("/wait-read", Some(&token)).await })
    };
    app.signals.loaded.notified().await;
    let shortened = app.get("/expiry/600", Some(&token)).await;
    assert_eq!(
        shortened.set_cookie().unwrap().max_age(),
        Some(Duration::minutes(10))
    );
    let token = follow(&shortened, &token);
    app.signals.go.notify_one();
    let read = reading.await.unwrap();
    assert_eq!(read.body, "1");
    match side {
        Side::Server => assert!(
            read.set_cookie().is_none(),
            "the touch sent a cookie for the old expiry (Max-Age {:?})",
            read.set_cookie().and_then(|c| c.max_age())
        ),
        // Documented exception: each response seals its own copy, the one the read loaded.
        Side::Client => assert_eq!(
            read.set_cookie().unwrap().max_age(),
            Some(Duration::hours(1))
        ),
    }
    app.clock.advance(Duration::minutes(11));
    assert_eq!(
        app.get("/get/n", Some(&token)).await.body,
        "null",
        "the session outlived its shortened expiry"
    );
}

pub async fn owner_sessions_can_be_revoked(b: Backend, side: Side) {
    let app = default_app(b);
    let alice_1 = app.get("/owner/alice", None).await.expect_token();
    let alice_2 = app.get("/owner/alice", None).await.expect_token();
    let bob = app.get("/owner/bob", None).await.expect_token();
    let resp = app.get("/revoke", Some(&alice_1)).await;
    match side {
        Side::Server => {
            assert_eq!(resp.status, StatusCode::OK);
            assert_eq!(resp.body, "2");
            assert_eq!(
                resp.set_cookie().map(|c| c.value().to_owned()),
                Some(String::new())
            );
            for token in [&alice_1, &alice_2] {
                assert_eq!(app.get("/get/logged-in", Some(token)).await.body, "null");
            }
        }
        Side::Client => {
            // Documented exception: without a revocation hook the cookie store cannot revoke.
            assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(app.get("/get/logged-in", Some(&alice_2)).await.body, "true");
        }
    }
    assert_eq!(app.get("/get/logged-in", Some(&bob)).await.body, "true");
}

/// Whether a store lists sessions, from the answer to `/devices`: every server store does; the
/// cookie store keeps no list (documented exception), which the answer must show.
fn lists_sessions(resp: &Resp, side: Side) -> bool {
    if side == Side::Client {
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
        return false;
    }
    true
}

/// The store key (hex) of a session ID, as `/devices` lists it.
fn key_of(token: &str) -> String {
    SessionId::parse(token).unwrap().key().to_hex()
}

/// A "devices" page: the owner's sessions are listed, oldest first, the current one findable;
/// one of them is ended by its key, and a key of another owner's session ends nothing.
pub async fn one_session_of_the_owner_can_be_listed_and_ended(b: Backend, side: Side) {
    let app = default_app(b);
    let phone = app.get("/owner/alice", None).await.expect_token();
    app.clock.advance(Duration::seconds(2));
    let laptop = app.get("/owner/alice", None).await.expect_token();
    let bob = app.get("/owner/bob", None).await.expect_token();
    let resp = app.get("/devices", Some(&laptop)).await;
    if !lists_sessions(&resp, side) {
        return;
    }
    assert_eq!(
        resp.body,
        format!("{}\n{}*", key_of(&phone), key_of(&laptop)),
        "oldest first, the current one marked"
    );
    assert_eq!(
        app.get("/devices", Some(&bob)).await.body,
        format!("{}*", key_of(&bob))
    );
    let no_owner = app.start().await;
    assert_eq!(
        app.get("/devices", Some(&no_owner)).await.status,
        StatusCode::BAD_REQUEST,
        "a session without owner has no devices"
    );
    // Bob cannot end Alice's phone, nor can a made-up or malformed key end anything.
    let path = |token: &str| format!("/end-device/{}", key_of(token));
    assert_eq!(app.get(&path(&phone), Some(&bob)).await.body, "false");
    let made_up = SessionId::generate().unwrap().key().to_hex();
    assert_eq!(
        app.get(&format!("/end-device/{made_up}"), Some(&laptop))
            .await
            .body,
        "false"
    );
    assert_eq!(
        app.get("/end-device/zz", Some(&laptop)).await.body,
        "malformed"
    );
    assert_eq!(app.get("/get/logged-in", Some(&phone)).await.body, "true");
    // A session that has moved from Alice to Bob is Bob's: Alice cannot end it any more.
    let tablet = app.get("/owner/alice", None).await.expect_token();
    let resp = app.get("/owner/bob", Some(&tablet)).await;
    let tablet = follow(&resp, &tablet);
    assert_eq!(app.get(&path(&tablet), Some(&laptop)).await.body, "false");
    assert_eq!(app.get("/whose", Some(&tablet)).await.body, "bob");
    // Alice ends her phone from her laptop.
    assert_eq!(app.get(&path(&phone), Some(&laptop)).await.body, "true");
    assert_eq!(app.get("/get/logged-in", Some(&phone)).await.body, "null");
    assert_eq!(app.get("/get/logged-in", Some(&laptop)).await.body, "true");
    assert_eq!(
        app.get("/devices", Some(&laptop)).await.body,
        format!("{}*", key_of(&laptop))
    );
    // Ending the current session ends it as `destroy` does: a removal cookie, then no session.
    let resp = app.get(&path(&laptop), Some(&laptop)).await;
    assert_eq!(resp.body, "true");
    assert_eq!(
        resp.set_cookie().map(|c| c.value().to_owned()),
        Some(String::new())
    );
    assert_eq!(app.get("/get/logged-in", Some(&laptop)).await.body, "null");
    assert_eq!(app.get("/get/logged-in", Some(&bob)).await.body, "true");
}

/// The owner's sessions are listed as loads see them: after the absolute lifetime is shortened,
/// a session past it (which would be refused if presented) is not listed, while the stored
/// record still says it lives for a day.
pub async fn owner_sessions_follow_a_shortened_absolute_lifetime(b: Backend, side: Side) {
    let expiry = Expiry::OnInactivity(Duration::days(1));
    let before = app(b.clone(), |l| l.expiry(expiry));
    let old = before.get("/owner/alice", None).await.expect_token();
    before.clock.advance(Duration::hours(2));
    let young = before.get("/owner/alice", None).await.expect_token();
    let after = app(b, |l| {
        l.expiry(expiry).absolute_lifetime(Some(Duration::hours(1)))
    });
    after
        .clock
        .advance(Duration::hours(2) + Duration::minutes(30));
    let resp = after.get("/devices", Some(&young)).await;
    if !lists_sessions(&resp, side) {
        return;
    }
    assert_eq!(
        resp.body,
        format!("{}*", key_of(&young)),
        "only the young one"
    );
    assert_eq!(after.get("/arrival", Some(&old)).await.body, "Expired");
}

pub async fn remove_returns_the_old_value(b: Backend, _: Side) {
    let app = default_app(b);
    let token = app.start().await;
    let resp = app.get("/remove/n", Some(&token)).await;
    assert_eq!(resp.body, "Some(1)");
    let token = follow(&resp, &token);
    assert_eq!(app.get("/get/n", Some(&token)).await.body, "null");
    assert_eq!(app.get("/remove/n", Some(&token)).await.body, "None");
}

pub async fn clear_empties_the_session(b: Backend, _: Side) {
    let app = default_app(b);
    let token = app.start().await;
    let resp = app.get("/set/x/y", Some(&token)).await;
    let token = follow(&resp, &token);
    let resp = app.get("/clear", Some(&token)).await;
    let token = follow(&resp, &token);
    assert_eq!(app.get("/keys", Some(&token)).await.body, "");
}

pub async fn remember_me_expiry_persists(b: Backend, _: Side) {
    let app = app(b, |l| l.expiry(Expiry::OnInactivity(Duration::minutes(10))));
    let token = app.start().await;
    let resp = app.get("/expiry/7200", Some(&token)).await;
    assert_eq!(
        resp.set_cookie().unwrap().max_age(),
        Some(Duration::hours(2))
    );
    let token = follow(&resp, &token);
    app.clock.advance(Duration::minutes(90));
    assert_eq!(
        app.get("/get/n", Some(&token)).await.body,
        "1",
        "the longer expiry was kept"
    );
}

pub async fn browser_session_cookies_have_no_max_age(b: Backend, _: Side) {
    let app = app(b, |l| {
        l.expiry(Expiry::OnSessionEnd)
            .session_end_idle_timeout(Duration::minutes(30))
    });
    let resp = app.get("/incr/n", None).await;
    let cookie = resp.set_cookie().unwrap();
    assert_eq!(cookie.max_age(), None);
    assert_eq!(cookie.expires(), None);
    let token = resp.expect_token();
    // The server still drops it after the idle timeout.
    app.clock.advance(Duration::minutes(31));
    assert_eq!(app.get("/get/n", Some(&token)).await.body, "null");
}

pub async fn max_age_is_capped_at_400_days(b: Backend, _: Side) {
    let app = app(b, |l| {
        l.expiry(Expiry::OnInactivity(Duration::days(1000)))
            .absolute_lifetime(None)
    });
    let resp = app.get("/incr/n", None).await;
    assert_eq!(
        resp.set_cookie().unwrap().max_age(),
        Some(Duration::days(400))
    );
}

/// An expiry date further away than a cookie lives (400 days): the cookie is sent again on the
/// touch schedule, so an active session reaches the date, and an idle one ends with its cookie.
pub async fn a_far_expiry_date_is_reached_by_refreshing_the_cookie(b: Backend, _: Side) {
    use tower_satchel::Clock as _;
    let header = axum::http::HeaderName::from_static("x-session");
    let api = app(b.clone(), |l| {
        l.absolute_lifetime(None).header_transport(header.clone())
    });
    let app = app(b, |l| l.absolute_lifetime(None));
    let start = app.clock.now();
    let at = start + Duration::days(1000);
    let set_at = format!("/expire-at/{}", at.unix_timestamp());
    let days = |d: Duration| (d + Duration::minutes(1)).whole_days();
    let resp = app.get(&set_at, None).await;
    assert_eq!(days(resp.set_cookie().unwrap().max_age().unwrap()), 400);
    let mut token = resp.expect_token();
    let idle = app.get(&set_at, None).await.expect_token();
    // Within the first tenth of the 400 days, reads send nothing.
    app.clock.advance(Duration::days(30));
    let resp = app.get("/get/n", Some(&token)).await;
    assert_eq!(resp.body, "1");
    assert!(resp.set_cookie().is_none());
    // Past it, the cookie comes again with its full 400 days, until the date is nearer than that.
    let mut ages = Vec::new();
    while app.clock.now() < at - Duration::days(1) {
        app.clock
            .advance(Duration::days(100).min(at - app.clock.now() - Duration::days(1)));
        let resp = app.get("/get/n", Some(&token)).await;
        let elapsed = app.clock.now() - start;
        assert_eq!(resp.body, "1", "alive after {elapsed}");
        if let Some(cookie) = resp.set_cookie() {
            ages.push(days(cookie.max_age().unwrap()));
            assert!(app.clock.now() + cookie.max_age().unwrap() <= at);
        }
        token = follow(&resp, &token);
        if days(elapsed) == 430 {
            // The session left idle ended with its cookie, 400 days after it was sent.
            assert_eq!(app.get("/get/n", Some(&idle)).await.body, "null");
        }
    }
    assert_eq!(ages, [400, 400, 400, 400, 400, 370]);
    app.clock.advance(Duration::days(2));
    assert_eq!(
        app.get("/get/n", Some(&token)).await.body,
        "null",
        "past the date"
    );

    // A date a little over 400 days away: one touch brings the deadline to the date.
    let near_at = app.clock.now() + Duration::days(439);
    let near_at = format!("/expire-at/{}", near_at.unix_timestamp());
    let token = app.get(&near_at, None).await.expect_token();
    app.clock.advance(Duration::days(45));
    let token = follow(&app.get("/get/n", Some(&token)).await, &token);
    app.clock.advance(Duration::days(390));
    assert_eq!(
        app.get("/get/n", Some(&token)).await.body,
        "1",
        "ended before its date"
    );

    // A token in a header has no such limit: idle for 500 days, it lives to the date.
    let request = axum::http::Request::get(&set_at);
    let resp = api
        .send(request.body(axum::body::Body::empty()).unwrap())
        .await;
    let token = resp.headers.get(&header).unwrap().to_str().unwrap();
    api.clock.advance(Duration::days(500));
    let request = axum::http::Request::get("/get/n").header(&header, token);
    let resp = api
        .send(request.body(axum::body::Body::empty()).unwrap())
        .await;
    assert_eq!(resp.body, "1");
}

/// Until its `Max-Age` runs out the browser sends the cookie, so the session must still be
/// there: a store that keeps deadlines in whole seconds must not leave the cookie the fraction of
/// a second it drops (SECURITY.md 15).
pub async fn a_cookie_the_browser_still_sends_still_opens(b: Backend, _: Side) {
    use tower_satchel::Clock as _;
    // The idle deadline first, then the absolute one (which the layer also holds loaded
    // sessions to, from their creation time as the store kept it).
    let settings = [
        (Duration::hours(1), Some(Duration::days(30))),
        (Duration::days(1), Some(Duration::hours(1))),
    ];
    for (idle, absolute) in settings {
        let app = app(b.clone(), |l| {
            l.expiry(Expiry::OnInactivity(idle))
                .absolute_lifetime(absolute)
        });
        // 0.7000005 s into a second: a store that keeps times in whole seconds, milliseconds
        // or microseconds must round deadlines up, not down.
        let into = i64::from(app.clock.now().nanosecond());
        app.clock.advance(Duration::nanoseconds(
            (1_700_000_500 - into) % 1_000_000_000,
        ));
        let resp = app.get("/incr/n", None).await;
        let max_age = resp.set_cookie().unwrap().max_age().unwrap();
        assert_eq!(max_age, Duration::hours(1));
        let token = resp.expect_token();
        // The last moment the browser still sends the cookie.
        app.clock.advance(max_age - Duration::nanoseconds(1));
        assert_eq!(
            app.get("/get/n", Some(&token)).await.body,
            "1",
            "gone before the cookie's Max-Age ({max_age}) ran out (idle {idle})"
        );
    }
}

/// `set_expiry` with a fraction of a second, then `save`: the response carries the cookie with
/// the new `Max-Age` (the window in whole seconds, rounded up, as every store keeps it), on every
/// store alike. (A policy kept to other precision than the request's once made the layer take
/// it for another request's, and withhold the cookie.)
pub async fn a_fractional_expiry_saved_sends_its_cookie(b: Backend, _: Side) {
    let app = app(b, |l| l);
    let token = app.get("/incr/n", None).await.expect_token();
    let week = 7 * 86_400;
    let resp = app
        .get(
            &format!("/expiry-saved-ms/{}", week * 1000 + 250),
            Some(&token),
        )
        .await;
    assert_eq!(resp.body, "saved");
    assert_eq!(
        resp.set_cookie().and_then(|c| c.max_age()),
        Some(Duration::seconds(week + 1))
    );
    assert_eq!(app.get("/get/n", Some(&token)).await.body, "1");
}

pub async fn max_age_never_exceeds_the_server_deadline(b: Backend, _: Side) {
    let app = app(b, |l| {
        l.expiry(Expiry::OnInactivity(Duration::days(7)))
            .absolute_lifetime(Some(Duration::hours(1)))
    });
    let resp = app.get("/incr/n", None).await;
    assert_eq!(
        resp.set_cookie().unwrap().max_age(),
        Some(Duration::hours(1))
    );
}

pub async fn header_transport_ignores_cookies(b: Backend, _: Side) {
    use axum::body::Body;
    use axum::http::Request;
    let app = app(b, |l| {
        l.header_transport(axum::http::HeaderName::from_static("x-session"))
    });
    let request = Request::get("/incr/n").body(Body::empty()).unwrap();
    let resp = app.send(request).await;
    assert_eq!(resp.body, "1");
    assert!(
        resp.set_cookie().is_none(),
        "no cookie with the header transport"
    );
    assert_eq!(resp.vary(), vec!["x-session"]);
    let token = resp
        .headers
        .get("x-session")
        .expect("the token in the header")
        .to_str()
        .unwrap()
        .to_owned();
    let request = Request::get("/incr/n")
        .header("x-session", &token)
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(request).await.body, "2");
    // The same token in a cookie is not read (SECURITY.md 7).
    let resp = app.get("/get/n", Some(&token)).await;
    assert_eq!(resp.body, "null");
    // `destroy` answers an empty header. A client that sends it back is a new visitor, not one
    // with an invalid token.
    let request = Request::get("/destroy")
        .header("x-session", &token)
        .body(Body::empty())
        .unwrap();
    let resp = app.send(request).await;
    assert_eq!(resp.headers.get("x-session").unwrap(), "");
    let request = Request::get("/arrival")
        .header("x-session", "")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(request).await.body, "New");
}

pub async fn destroy_then_insert_starts_a_new_session(b: Backend, side: Side) {
    let app = default_app(b);
    let token = app.start().await;
    let resp = app.get("/destroy-then-flash", Some(&token)).await;
    let fresh = resp.expect_token();
    assert_ne!(fresh, token);
    assert_eq!(
        app.get("/get/flash", Some(&fresh)).await.body,
        "\"logged out\""
    );
    assert_eq!(app.get("/get/n", Some(&fresh)).await.body, "null");
    if side == Side::Server {
        assert_eq!(app.get("/get/n", Some(&token)).await.body, "null");
    }
}

pub async fn save_writes_a_new_session_before_the_response(b: Backend, side: Side) {
    let app = default_app(b);
    let resp = app.get("/save/k", None).await;
    assert_eq!(resp.status, StatusCode::OK);
    // A server store gives the session its ID at the save; the cookie store has no ID.
    assert_eq!(resp.body, (side == Side::Server).to_string());
    let token = resp.expect_token();
    assert_eq!(resp.cache_control(), Some("no-store"));
    // The saved value and the one changed after the save are both kept.
    assert_eq!(app.get("/get/k", Some(&token)).await.body, "\"saved\"");
    assert_eq!(app.get("/get/k-after", Some(&token)).await.body, "true");
    // A returning visitor's save merges into the stored session.
    let resp = app.get("/save/m", Some(&token)).await;
    assert_eq!(resp.body, (side == Side::Server).to_string());
    if side == Side::Server {
        assert!(resp.token().is_none(), "the same ID needs no new cookie");
    }
    let token = follow(&resp, &token);
    assert_eq!(
        app.get("/keys", Some(&token)).await.body,
        "k,k-after,m,m-after"
    );
}

pub async fn saved_changes_are_visible_to_other_requests_before_the_response(
    b: Backend,
    side: Side,
) {
    let app = default_app(b);
    let token = app.start().await;
    let slow = {
        let app: App = app.clone();
        let token = token.clone();
        tokio::spawn(async move { app.get("/save-and-wait/early", Some(&token)).await })
    };
    app.signals.loaded.notified().await;
    let seen = app.get("/get/early", Some(&token)).await.body;
    match side {
        Side::Server => assert_eq!(seen, "true", "saved before its response"),
        // Documented exception: the cookie store writes only into the response's cookie.
        Side::Client => assert_eq!(seen, "null"),
    }
    app.signals.go.notify_one();
    let resp = slow.await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    let token = follow(&resp, &token);
    assert_eq!(app.get("/get/early", Some(&token)).await.body, "true");
    assert_eq!(app.get("/get/n", Some(&token)).await.body, "1");
}

pub async fn a_saved_write_stands_despite_a_server_error(b: Backend, side: Side) {
    let app = default_app(b);
    // A new visitor: the save created the session, so its cookie goes out with the 5xx.
    let resp = app.get("/save-then-fail/k", None).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    match side {
        Side::Server => {
            let token = resp.expect_token();
            assert_eq!(app.get("/get/k", Some(&token)).await.body, "\"saved\"");
            // What changed after the save was left to the layer, which drops it on a 5xx.
            assert_eq!(app.get("/get/k-after", Some(&token)).await.body, "null");
        }
        // Documented exception: nothing is written before the response, and a 5xx writes
        // nothing.
        Side::Client => assert!(resp.set_cookie().is_none()),
    }
    // A returning visitor.
    let token = app.start().await;
    let resp = app.get("/save-then-fail/k", Some(&token)).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(resp.set_cookie().is_none(), "same ID, nothing to send");
    let expected = match side {
        Side::Server => "\"saved\"",
        Side::Client => "null",
    };
    assert_eq!(app.get("/get/k", Some(&token)).await.body, expected);
    assert_eq!(app.get("/get/k-after", Some(&token)).await.body, "null");
    assert_eq!(app.get("/get/n", Some(&token)).await.body, "1");
}

pub async fn cycle_id_saved_then_a_server_error_moves_to_the_new_id(b: Backend, side: Side) {
    let app = default_app(b);
    let old = app.start().await;
    let resp = app.get("/cycle-save-fail", Some(&old)).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    match side {
        Side::Server => {
            // The rotation was saved, so the old ID is gone: the new one must reach the client
            // even on a 5xx.
            let new = resp.expect_token();
            assert_ne!(new, old);
            assert_eq!(resp.cache_control(), Some("no-store"));
            assert_eq!(app.get("/arrival", Some(&old)).await.body, "Expired");
            assert_eq!(app.get("/get/n", Some(&new)).await.body, "1");
        }
        Side::Client => {
            assert!(resp.set_cookie().is_none());
            assert_eq!(app.get("/get/n", Some(&old)).await.body, "1");
        }
    }
}

pub async fn destroy_saved_ends_the_session_before_the_response(b: Backend, side: Side) {
    let app = default_app(b);
    let token = app.start().await;
    let resp = app.get("/destroy-save", Some(&token)).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body, "None");
    let cookie = resp.set_cookie().expect("a removal cookie");
    assert_eq!(cookie.value(), "");
    assert_eq!(cookie.max_age(), Some(Duration::ZERO));
    assert_replay_after_destroy(&app, &token, side).await;
}

pub async fn save_after_a_concurrent_destroy_reports_the_end(b: Backend, side: Side) {
    let app = default_app(b);
    let token = app.start().await;
    let slow = {
        let app: App = app.clone();
        let token = token.clone();
        tokio::spawn(async move { app.get("/wait-save/late", Some(&token)).await })
    };
    app.signals.loaded.notified().await;
    assert_eq!(app.get("/destroy", Some(&token)).await.body, "destroyed");
    app.signals.go.notify_one();
    let late = slow.await.unwrap();
    assert_eq!(late.status, StatusCode::OK);
    match side {
        Side::Server => {
            assert_eq!(late.body, "Ended");
            assert!(
                late.token().is_none(),
                "no cookie for a session that is gone"
            );
            assert_eq!(app.get("/get/late", Some(&token)).await.body, "null");
            assert_eq!(app.get("/arrival", Some(&token)).await.body, "Expired");
        }
        // Documented exception: nothing is written before the response.
        Side::Client => assert_eq!(late.body, "ok"),
    }
}

/// A request that loaded the session before another request rotated its ID (a login in another
/// tab), and writes after: its write finds the old ID gone, says so, and neither brings the old ID
/// back nor reaches the new one (DESIGN.md §3). The rotated session goes on under its new ID.
pub async fn a_write_after_a_concurrent_rotation_does_not_revive_the_old_id(
    b: Backend,
    side: Side,
) {
    let app = default_app(b);
    let old = app.start().await;
    let slow = {
        let app: App = app.clone();
        let old = old.clone();
        tokio::spawn(async move { app.get("/wait-save/late", Some(&old)).await })
    };
    app.signals.loaded.notified().await;
    let rotated = app.get("/cycle", Some(&old)).await;
    let new = follow(&rotated, &old);
    assert_ne!(new, old);
    app.signals.go.notify_one();
    let late = slow.await.unwrap();
    assert_eq!(late.status, StatusCode::OK);
    match side {
        Side::Server => {
            assert_eq!(late.body, "Ended");
            assert!(late.token().is_none(), "no cookie for the old ID");
            assert_eq!(app.get("/arrival", Some(&old)).await.body, "Expired");
            assert_eq!(app.get("/get/late", Some(&old)).await.body, "null");
            assert_eq!(app.get("/get/late", Some(&new)).await.body, "null");
            assert_eq!(app.get("/get/n", Some(&new)).await.body, "1");
        }
        // Documented exception: a sealed session is written into the response only, so the
        // late request's cookie is a session of its own.
        Side::Client => assert_eq!(late.body, "ok"),
    }
}
