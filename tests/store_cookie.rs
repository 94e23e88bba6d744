//! The client-side cookie store: the conformance suite (with its documented exceptions), tampering,
//! key rotation, deadlines, revocation, size limits and bounded decompression.
//!
//! Byte offsets below follow the format documented in `src/store/cookie.rs`:
//! header (version, flags, key id: 6 bytes) | nonce (12) | ciphertext | tag (16).
#![cfg(feature = "cookie-store")]
#![allow(clippy::unwrap_used, clippy::panic)]

#[macro_use]
mod conformance;

use std::io::Write;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use conformance::harness::{App, Resp, app, default_app};
use serde_json::json;
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;
use tower_satchel::{
    CookieStore, Expiry, IntoBackend, Key, KeyRing, MemoryRevocations, Record, Rejection,
    Revocation, Session, SessionError, SessionLayer, StoreError, StoreErrorKind, Unsealed,
};

const HEADER: usize = 6;
const NONCE: usize = 12;
const TAG: usize = 16;

mod suite {
    use tower_satchel::{CookieStore, Key};
    client_store_conformance!(|| async { CookieStore::new(Key::generate().unwrap()) });
}

mod suite_compressed {
    // The same behaviour with compression on (small records stay uncompressed, larger ones not).
    use tower_satchel::{CookieStore, Key};
    client_store_conformance!(|| async {
        CookieStore::new(Key::generate().unwrap()).compression_level(6)
    });
}

// -------------------------------------------------------------------------------------------------
// Helpers
// -------------------------------------------------------------------------------------------------

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn key(byte: u8) -> Key {
    Key::from_bytes(&[byte; 32]).unwrap()
}

fn store() -> CookieStore {
    CookieStore::new(key(1))
}

fn record_at(created: OffsetDateTime) -> Record {
    let mut record = Record::new(
        created,
        created + Duration::hours(1),
        Some(created + Duration::hours(8)),
        Expiry::OnInactivity(Duration::hours(1)),
    );
    record.data.insert("user".into(), json!("alice"));
    record.data.insert("cart".into(), json!([1, 2, 3]));
    record.owner = Some("alice".into());
    record
}

fn record() -> Record {
    record_at(t0())
}

/// Opens without a revocation hook: completes on the first poll.
fn open_at(store: &CookieStore, name: &str, value: &str, now: OffsetDateTime) -> Unsealed {
    let mut future = pin!(store.open(name, value, now));
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(result) => result.unwrap(),
        Poll::Pending => panic!("open without a hook must not wait"),
    }
}

fn open(store: &CookieStore, name: &str, value: &str) -> Unsealed {
    open_at(store, name, value, t0())
}

fn rejection(unsealed: Unsealed) -> Rejection {
    match unsealed {
        Unsealed::Invalid(rejection) => rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn live(unsealed: Unsealed) -> (Record, bool) {
    match unsealed {
        Unsealed::Live { record, stale_key } => (record, stale_key),
        other => panic!("expected a live session, got {other:?}"),
    }
}

fn raw(value: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(value).unwrap()
}

fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

// -------------------------------------------------------------------------------------------------
// Tampering (SECURITY.md 21, 22, 24, 27)
// -------------------------------------------------------------------------------------------------

#[test]
fn every_bit_flip_is_rejected() {
    let store = store();
    let value = store.seal("id", &record(), t0()).unwrap();
    let bytes = raw(&value);
    // The regions the loop below tells apart: the header carries the sealing key's id at bytes
    // 2..6, and at least 40 bytes of ciphertext lie between the nonce and the tag, so every
    // region (header, nonce, ciphertext, tag) gets its bits flipped.
    let key_id: String = bytes[2..HEADER]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(key_id, key(1).id().to_string());
    assert!(bytes.len() >= HEADER + NONCE + 40 + TAG, "{}", bytes.len());
    for at in 0..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[at] ^= 1 << bit;
            let why = rejection(open(&store, "id", &encode(&flipped)));
            match at {
                0 => assert_eq!(why, Rejection::UnknownFormat, "version bit {bit}"),
                // The deflate flag is known, so flipping it reaches (and fails) authentication.
                1 if bit == 0 => assert_eq!(why, Rejection::Authentication),
                1 => assert_eq!(why, Rejection::UnknownFormat, "flag bit {bit}"),
                2..6 => assert_eq!(why, Rejection::UnknownKey, "key id byte {at}"),
                // Nonce, ciphertext and tag alike: the API does not tell them apart.
                _ => assert_eq!(why, Rejection::Authentication, "byte {at} bit {bit}"),
            }
        }
    }
}

#[test]
fn every_changed_character_is_rejected() {
    let store = store();
    let value = store.seal("id", &record(), t0()).unwrap();
    for (at, c) in value.char_indices() {
        for replacement in ['A', 'z', '0', '-', '_', '+', '/', '=', '.'] {
            if replacement == c {
                continue;
            }
            let mut changed = value.clone();
            changed.replace_range(at..at + 1, &replacement.to_string());
            assert!(
                matches!(open(&store, "id", &changed), Unsealed::Invalid(_)),
                "character {at} changed to {replacement:?} was accepted"
            );
        }
    }
}

#[test]
fn a_value_moved_to_another_cookie_name_is_rejected() {
    let store = store();
    let value = store.seal("id", &record(), t0()).unwrap();
    assert!(matches!(open(&store, "id", &value), Unsealed::Live { .. }));
    for other in ["ID", "id2", "csrf", "", "__Host-id"] {
        assert_eq!(
            rejection(open(&store, other, &value)),
            Rejection::Authentication,
            "{other:?}"
        );
    }
}

#[test]
fn a_value_for_another_purpose_is_rejected() {
    let shop = store().purpose("shop");
    let admin = store().purpose("admin");
    let value = shop.seal("id", &record(), t0()).unwrap();
    assert!(matches!(open(&shop, "id", &value), Unsealed::Live { .. }));
    assert_eq!(
        rejection(open(&admin, "id", &value)),
        Rejection::Authentication
    );
    assert_eq!(
        rejection(open(&store(), "id", &value)),
        Rejection::Authentication,
        "the default purpose differs too"
    );
}

#[test]
fn a_value_sealed_under_another_key_is_rejected() {
    let value = CookieStore::new(key(2))
        .seal("id", &record(), t0())
        .unwrap();
    assert_eq!(
        rejection(open(&store(), "id", &value)),
        Rejection::UnknownKey
    );
    // Even when the forger copies our key id into the header, the tag does not verify.
    let mut forged = raw(&value);
    forged[2..6].copy_from_slice(&raw(&store().seal("id", &record(), t0()).unwrap())[2..6]);
    assert_eq!(
        rejection(open(&store(), "id", &encode(&forged))),
        Rejection::Authentication
    );
}

#[test]
fn truncated_values_are_rejected_without_panics() {
    let store = store();
    let value = store.seal("id", &record(), t0()).unwrap();
    for len in 0..value.len() {
        let prefix = &value[..len];
        let why = rejection(open(&store, "id", prefix));
        assert!(
            matches!(
                why,
                Rejection::NotBase64 | Rejection::Truncated | Rejection::Authentication
            ),
            "{len}: {why:?}"
        );
    }
    // Bytes cut from the end of the decoded value (tag shortened).
    let bytes = raw(&value);
    for cut in 1..bytes.len() {
        assert!(matches!(
            open(&store, "id", &encode(&bytes[..bytes.len() - cut])),
            Unsealed::Invalid(_)
        ));
    }
}

#[test]
fn padded_and_decorated_values_are_rejected() {
    let store = store();
    let value = store.seal("id", &record(), t0()).unwrap();
    for padded in [
        format!("{value}="),
        format!("{value}=="),
        format!("{value}A"),
        format!("{value}AAAA"),
        format!("A{value}"),
        format!(" {value}"),
        format!("{value} "),
        format!("\"{value}\""),
        format!("{value}{value}"),
        STANDARD.encode(raw(&value)),
    ] {
        assert!(
            matches!(open(&store, "id", &padded), Unsealed::Invalid(_)),
            "{padded:?} was accepted"
        );
    }
    // Bytes appended after the tag.
    let mut bytes = raw(&value);
    bytes.extend_from_slice(&[0; 3]);
    assert_eq!(
        rejection(open(&store, "id", &encode(&bytes))),
        Rejection::Authentication
    );
}

#[test]
fn empty_and_garbage_values_are_rejected() {
    let store = store();
    assert_eq!(rejection(open(&store, "id", "")), Rejection::Truncated);
    assert_eq!(rejection(open(&store, "id", "A")), Rejection::NotBase64);
    assert_eq!(rejection(open(&store, "id", "AAAA")), Rejection::Truncated);
    assert_eq!(rejection(open(&store, "id", "%%%%")), Rejection::NotBase64);
    assert_eq!(rejection(open(&store, "id", "é")), Rejection::NotBase64);
    assert_eq!(
        rejection(open(&store, "id", &"A".repeat(80))),
        Rejection::UnknownFormat
    );
}

#[test]
fn oversize_values_are_rejected_before_decoding() {
    let store = store();
    // Not base64 at all: the size check must come first (SECURITY.md 24).
    let junk = "!".repeat(4097);
    assert_eq!(rejection(open(&store, "id", &junk)), Rejection::TooLong);
    // The limit is on name + value.
    let at_limit = "!".repeat(4096 - 2);
    assert_eq!(
        rejection(open(&store, "id", &at_limit)),
        Rejection::NotBase64
    );
    let over = "!".repeat(4096 - 1);
    assert_eq!(rejection(open(&store, "id", &over)), Rejection::TooLong);
    // A lower configured limit applies on input too.
    let small = store.clone().max_size(100);
    let value = store.seal("id", &record(), t0()).unwrap();
    assert!(value.len() + 2 > 100);
    assert_eq!(rejection(open(&small, "id", &value)), Rejection::TooLong);
    assert_eq!(
        rejection(open(&store, "id", &"A".repeat(1_000_000))),
        Rejection::TooLong
    );
}

// -------------------------------------------------------------------------------------------------
// Rotation (SECURITY.md 23)
// -------------------------------------------------------------------------------------------------

#[test]
fn a_cookie_under_an_old_key_opens_and_is_resealed_under_the_primary() {
    let old = CookieStore::new(key(1));
    let rotated = CookieStore::new(KeyRing::new(key(2)).with_previous(key(1)));
    let new_only = CookieStore::new(key(2));
    let value = old.seal("id", &record(), t0()).unwrap();

    let (opened, stale) = live(open(&rotated, "id", &value));
    assert!(stale, "opened with a previous key: must be re-sealed");
    assert_eq!(opened, record());

    let resealed = rotated.seal("id", &opened, t0()).unwrap();
    assert_eq!(
        u32::from_be_bytes(raw(&resealed)[2..6].try_into().unwrap()),
        u32::from_str_radix(&key(2).id().to_string(), 16).unwrap(),
        "the key id in the header is the primary's"
    );
    let (again, stale) = live(open(&rotated, "id", &resealed));
    assert!(!stale);
    assert_eq!(again, record());
    // The re-sealed cookie no longer needs the old key.
    assert!(matches!(
        open(&new_only, "id", &resealed),
        Unsealed::Live { .. }
    ));
    assert_eq!(
        rejection(open(&new_only, "id", &value)),
        Rejection::UnknownKey
    );
}

#[test]
fn a_cookie_under_a_removed_key_is_rejected() {
    let value = CookieStore::new(key(1))
        .seal("id", &record(), t0())
        .unwrap();
    let after_rotation = CookieStore::new(KeyRing::new(key(2)).with_previous(key(3)));
    assert_eq!(
        rejection(open(&after_rotation, "id", &value)),
        Rejection::UnknownKey
    );
}

#[test]
fn a_new_key_rolled_in_as_previous_opens_before_it_seals() {
    // Step 1 of a rolling rotation: servers that know the new key only as a previous one open
    // cookies that already-upgraded servers seal with it.
    let upgraded = CookieStore::new(KeyRing::new(key(2)).with_previous(key(1)));
    let lagging = CookieStore::new(KeyRing::new(key(1)).with_previous(key(2)));
    let value = upgraded.seal("id", &record(), t0()).unwrap();
    let (_, stale) = live(open(&lagging, "id", &value));
    assert!(stale, "the lagging server re-seals under its own primary");
}

#[tokio::test]
async fn the_layer_reseals_an_old_key_cookie_even_on_a_read_only_request() {
    let before = default_app(CookieStore::new(key(1)).into_backend());
    let token = before.start().await;
    let after =
        default_app(CookieStore::new(KeyRing::new(key(2)).with_previous(key(1))).into_backend());
    let resp = after.get("/get/n", Some(&token)).await;
    assert_eq!(resp.body, "1");
    let resealed = resp.expect_token();
    assert_ne!(resealed, token);
    assert_eq!(resp.cache_control(), Some("no-store"));
    // The re-sealed cookie opens where only the new key is known; the old one does not.
    let new_only = default_app(CookieStore::new(key(2)).into_backend());
    assert_eq!(new_only.get("/get/n", Some(&resealed)).await.body, "1");
    assert_eq!(new_only.get("/arrival", Some(&token)).await.body, "Invalid");
    // A cookie already under the primary is not re-sealed by a read.
    let resp = after.get("/get/n", Some(&resealed)).await;
    assert!(resp.set_cookie().is_none());
}

// -------------------------------------------------------------------------------------------------
// Deadlines (SECURITY.md 13, 14)
// -------------------------------------------------------------------------------------------------

#[test]
fn a_replayed_cookie_after_its_idle_deadline_is_rejected() {
    let store = store();
    let value = store.seal("id", &record(), t0()).unwrap();
    let just_before = t0() + Duration::hours(1) - Duration::seconds(1);
    assert!(matches!(
        open_at(&store, "id", &value, just_before),
        Unsealed::Live { .. }
    ));
    assert!(matches!(
        open_at(&store, "id", &value, t0() + Duration::hours(1)),
        Unsealed::Expired
    ));
    assert!(matches!(
        open_at(&store, "id", &value, t0() + Duration::days(400)),
        Unsealed::Expired
    ));
}

#[test]
fn the_absolute_deadline_holds_even_when_the_idle_one_is_later() {
    let store = store();
    let mut record = record();
    record.idle_deadline = t0() + Duration::days(30);
    let value = store.seal("id", &record, t0()).unwrap();
    assert!(matches!(
        open_at(&store, "id", &value, t0() + Duration::hours(7)),
        Unsealed::Live { .. }
    ));
    assert!(matches!(
        open_at(&store, "id", &value, t0() + Duration::hours(8)),
        Unsealed::Expired
    ));
}

#[tokio::test]
async fn arrival_tells_a_forged_cookie_from_an_expired_one() {
    let app = app(CookieStore::new(key(1)).into_backend(), |l| {
        l.expiry(Expiry::OnInactivity(Duration::minutes(10)))
    });
    let token = app.start().await;
    assert_eq!(app.get("/arrival", Some(&token)).await.body, "Returning");
    let mut flipped = raw(&token);
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(
        app.get("/arrival", Some(&encode(&flipped))).await.body,
        "Invalid"
    );
    app.clock.advance(Duration::minutes(11));
    assert_eq!(app.get("/arrival", Some(&token)).await.body, "Expired");
    assert_eq!(
        app.get("/arrival", Some(&encode(&flipped))).await.body,
        "Invalid"
    );
}

/// Several cookies of the session's name (one sealed under a key since removed, one forged, say):
/// the first that opens to a live session is used.
#[tokio::test]
async fn the_first_of_several_same_name_cookies_that_opens_is_used() {
    let site = app(CookieStore::new(key(1)).into_backend(), |l| l);
    let token = site.start().await;
    let mut forged = raw(&token);
    forged[20] ^= 1;
    let forged = encode(&forged);
    let other_key = app(CookieStore::new(key(2)).into_backend(), |l| l)
        .start()
        .await;
    for cookie in [
        format!("id={forged}; id={token}"),
        format!("id={other_key}; id={token}"),
        format!("id=; id={token}"),
        // Junk that could not be a sealed value (wrong alphabet, too short) takes no place among
        // the three cookies looked at: planted first, it cannot crowd out the real one.
        format!("id=x; id=a.b; id={}; id=\"\"; id={token}", "%".repeat(80)),
    ] {
        let resp = site
            .get_raw_cookie("/get/n", HeaderValue::from_str(&cookie).unwrap())
            .await;
        assert_eq!(resp.body, "1");
    }
    let cookie = HeaderValue::from_str(&format!("id={forged}; id={other_key}")).unwrap();
    assert_eq!(
        site.get_raw_cookie("/arrival", cookie).await.body,
        "Invalid"
    );
}

#[tokio::test]
async fn without_a_hook_a_pre_logout_cookie_replays_until_its_deadline() {
    let app = app(CookieStore::new(key(1)).into_backend(), |l| {
        l.expiry(Expiry::OnInactivity(Duration::minutes(10)))
    });
    let token = app.get("/owner/alice", None).await.expect_token();
    let resp = app.get("/destroy", Some(&token)).await;
    assert_eq!(
        resp.set_cookie().unwrap().value(),
        "",
        "the browser forgets it"
    );
    // A copy (a thief's, or a restored tab) still opens: the documented limit.
    app.clock.advance(Duration::minutes(9));
    assert_eq!(app.get("/get/logged-in", Some(&token)).await.body, "true");
    // ... until its idle deadline.
    app.clock.advance(Duration::minutes(2));
    assert_eq!(app.get("/get/logged-in", Some(&token)).await.body, "null");
    assert_eq!(app.get("/arrival", Some(&token)).await.body, "Expired");
}

// -------------------------------------------------------------------------------------------------
// Revocation hook
// -------------------------------------------------------------------------------------------------

fn revocable_app(hook: impl Revocation) -> App {
    default_app(CookieStore::new(key(1)).revocation(hook).into_backend())
}

#[tokio::test]
async fn with_a_hook_revoke_owner_rejects_every_earlier_cookie_of_that_owner() {
    let app = revocable_app(MemoryRevocations::new());
    let alice_1 = app.get("/owner/alice", None).await.expect_token();
    let alice_2 = app.get("/owner/alice", None).await.expect_token();
    let bob = app.get("/owner/bob", None).await.expect_token();
    app.clock.advance(Duration::seconds(1));

    let resp = app.get("/revoke", Some(&alice_1)).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        resp.body, "0",
        "a client-side store cannot count what it revoked"
    );
    assert_eq!(
        resp.set_cookie().map(|c| c.value().to_owned()),
        Some(String::new()),
        "this browser's cookie is removed"
    );
    // The replayed pre-logout cookie and the other device's cookie are refused.
    for token in [&alice_1, &alice_2] {
        assert_eq!(app.get("/arrival", Some(token)).await.body, "Expired");
        assert_eq!(app.get("/get/logged-in", Some(token)).await.body, "null");
    }
    assert_eq!(app.get("/get/logged-in", Some(&bob)).await.body, "true");
    // Logging in again, at the very instant of the revocation, works.
    let fresh = app.get("/owner/alice", None).await.expect_token();
    assert_eq!(app.get("/get/logged-in", Some(&fresh)).await.body, "true");
}

/// Sends `path` with `token`, and while it runs (its cookie opened), advances the clock a second
/// and revokes the owner of `revoking`'s session; returns the first request's response.
async fn during_a_revocation(app: &App, path: &str, token: &str, revoking: &str) -> Resp {
    let in_flight = {
        let (app, path, token) = (app.clone(), path.to_owned(), token.to_owned());
        tokio::spawn(async move { app.get(&path, Some(&token)).await })
    };
    app.signals.loaded.notified().await;
    app.clock.advance(Duration::seconds(1));
    assert_eq!(
        app.get("/revoke", Some(revoking)).await.status,
        StatusCode::OK
    );
    app.signals.go.notify_one();
    in_flight.await.unwrap()
}

/// A request already in flight when its owner's sessions are revoked (it opened its cookie
/// before) writes a cookie the revocation still refuses: the seal carries the time the cookie
/// was opened, not the time of the write. So does one that rotates the ID or sets the owner the
/// session already has (either used to seal afresh, which let a thief keeping one slow request
/// in flight outlast every revocation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_during_a_revocation_writes_a_refused_cookie() {
    for path in ["/wait-set/late", "/wait-cycle", "/wait-owner/alice"] {
        let app = revocable_app(MemoryRevocations::new());
        let token = app.get("/owner/alice", None).await.expect_token();
        let other_device = app.get("/owner/alice", None).await.expect_token();
        let written = during_a_revocation(&app, path, &token, &other_device)
            .await
            .expect_token();
        assert_eq!(
            app.get("/arrival", Some(&written)).await.body,
            "Expired",
            "{path}"
        );
        assert_eq!(
            app.get("/get/logged-in", Some(&written)).await.body,
            "null",
            "{path}"
        );
    }
}

/// A request that logs in starts afresh: its cookie is sealed when it is written, so a
/// revocation of that owner made while the request ran (the handler's own, on a password reset)
/// does not refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_during_a_revocation_of_its_owner_stands() {
    let app = revocable_app(MemoryRevocations::new());
    let anonymous = app.start().await;
    let other_device = app.get("/owner/bob", None).await.expect_token();
    let logged_in = during_a_revocation(&app, "/wait-owner/bob", &anonymous, &other_device)
        .await
        .expect_token();
    assert_eq!(app.get("/whose", Some(&logged_in)).await.body, "bob");
    assert_eq!(
        app.get("/arrival", Some(&other_device)).await.body,
        "Expired"
    );
}

/// `destroy` does not use the hook: it ends the session in this browser only, and a copy of the
/// cookie still opens until its deadline (documented on `CookieStore`).
#[tokio::test]
async fn with_a_hook_destroy_still_leaves_copies_valid() {
    let app = revocable_app(MemoryRevocations::new());
    let token = app.get("/owner/alice", None).await.expect_token();
    let resp = app.get("/destroy", Some(&token)).await;
    assert_eq!(
        resp.set_cookie().map(|c| c.value().to_owned()),
        Some(String::new())
    );
    assert_eq!(app.get("/get/logged-in", Some(&token)).await.body, "true");
}

#[tokio::test]
async fn a_session_that_logs_in_after_a_revocation_is_not_caught_by_it() {
    // The hook compares the time a cookie was sealed, not when its session began: an anonymous
    // session from before the revocation that logs in afterwards stays logged in.
    let app = revocable_app(MemoryRevocations::new());
    let anonymous = app.start().await;
    let other_device = app.get("/owner/alice", None).await.expect_token();
    app.clock.advance(Duration::seconds(1));
    app.get("/revoke", Some(&other_device)).await;
    app.clock.advance(Duration::seconds(1));
    let logged_in = app
        .get("/owner/alice", Some(&anonymous))
        .await
        .expect_token();
    assert_eq!(app.get("/get/n", Some(&logged_in)).await.body, "1");
    assert_eq!(
        app.get("/get/logged-in", Some(&logged_in)).await.body,
        "true"
    );
}

struct Failing;

impl Revocation for Failing {
    async fn revoked_before(&self, _: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        Err(StoreError::new(
            StoreErrorKind::Backend,
            "user database down",
        ))
    }
    async fn revoke(&self, _: &str, _: OffsetDateTime) -> Result<(), StoreError> {
        Err(StoreError::new(
            StoreErrorKind::Backend,
            "user database down",
        ))
    }
}

#[tokio::test]
async fn a_failing_hook_fails_closed() {
    let app = revocable_app(Failing);
    // Sessions without an owner never ask the hook.
    let anonymous = app.start().await;
    assert_eq!(app.get("/get/n", Some(&anonymous)).await.body, "1");
    let owned = app.get("/owner/alice", None).await.expect_token();
    let resp = app.get("/get/logged-in", Some(&owned)).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(resp.set_cookie().is_none());
}

/// A revocation hook whose database goes down and comes back: while `down`, both calls fail;
/// otherwise it is `inner`.
#[derive(Clone, Default)]
struct Flaky {
    down: Arc<AtomicBool>,
    inner: MemoryRevocations,
}

impl Flaky {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::new(
                StoreErrorKind::Backend,
                "user database down",
            ));
        }
        Ok(())
    }
}

impl Revocation for Flaky {
    async fn revoked_before(&self, owner: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        self.check()?;
        self.inner.revoked_before(owner).await
    }
    async fn revoke(&self, owner: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        self.check()?;
        self.inner.revoke(owner, now).await
    }
}

/// SECURITY.md 28 for the cookie store: while the hook fails, an owned session's requests get an
/// error response and no cookie (neither a fresh session nor a removal
/// of the real one), reads and writes alike; once the hook answers again, the very same cookie
/// carries on with its data, and a revocation works again.
#[tokio::test]
async fn a_failing_hook_fails_closed_then_recovers() {
    let hook = Flaky::default();
    let app = revocable_app(hook.clone());
    let owned = app.get("/owner/alice", None).await.expect_token();
    let counted = app.get("/incr/n", Some(&owned)).await;
    assert_eq!(counted.body, "1");
    let owned = counted.expect_token();

    hook.down.store(true, Ordering::SeqCst);
    for path in ["/get/logged-in", "/incr/n", "/set/x/1", "/revoke"] {
        let resp = app.get(path, Some(&owned)).await;
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert!(
            resp.headers.get(header::SET_COOKIE).is_none(),
            "{path}: {resp:?}"
        );
    }

    hook.down.store(false, Ordering::SeqCst);
    let resp = app.get("/get/logged-in", Some(&owned)).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body, "true");
    assert_eq!(app.get("/get/x", Some(&owned)).await.body, "null");
    let resp = app.get("/incr/n", Some(&owned)).await;
    assert_eq!(resp.body, "2", "the session's data is back as it was");
    let owned = resp.expect_token();
    // The hook works again end to end: revoking logs this cookie out.
    app.clock.advance(Duration::seconds(1));
    assert_eq!(
        app.get("/revoke", Some(&owned)).await.status,
        StatusCode::OK
    );
    assert_eq!(app.get("/get/logged-in", Some(&owned)).await.body, "null");
}

#[derive(Clone, Default)]
struct Counting {
    lookups: Arc<AtomicUsize>,
    inner: MemoryRevocations,
}

impl Revocation for Counting {
    async fn revoked_before(&self, owner: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.revoked_before(owner).await
    }
    async fn revoke(&self, owner: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        self.inner.revoke(owner, now).await
    }
}

#[tokio::test]
async fn the_hook_is_asked_only_for_sessions_with_an_owner() {
    let hook = Counting::default();
    let app = revocable_app(hook.clone());
    let anonymous = app.start().await;
    for _ in 0..3 {
        app.get("/get/n", Some(&anonymous)).await;
    }
    assert_eq!(hook.lookups.load(Ordering::SeqCst), 0);
    let owned = app.get("/owner/alice", None).await.expect_token();
    app.get("/get/logged-in", Some(&owned)).await;
    assert_eq!(hook.lookups.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn memory_revocations_keep_the_latest_time() {
    let hook = MemoryRevocations::new();
    hook.revoke("alice", t0() + Duration::hours(1))
        .await
        .unwrap();
    hook.revoke("alice", t0()).await.unwrap();
    assert_eq!(
        hook.revoked_before("alice").await.unwrap(),
        Some(t0() + Duration::hours(1))
    );
    assert_eq!(hook.revoked_before("bob").await.unwrap(), None);
    // Direct use: a cookie sealed before the time is revoked, one sealed at it is not.
    let store = store().revocation(hook);
    let before = store.seal("id", &record(), t0()).unwrap();
    let at = store
        .seal("id", &record(), t0() + Duration::hours(1))
        .unwrap();
    assert!(matches!(
        store.open("id", &before, t0()).await.unwrap(),
        Unsealed::Revoked
    ));
    assert!(matches!(
        store.open("id", &at, t0()).await.unwrap(),
        Unsealed::Live { .. }
    ));
}

// -------------------------------------------------------------------------------------------------
// Size (SECURITY.md 25)
// -------------------------------------------------------------------------------------------------

async fn put(session: Session, Path(size): Path<usize>) -> Result<&'static str, SessionError> {
    session.insert("blob", "x".repeat(size))?;
    Ok("stored")
}

struct Sent {
    status: StatusCode,
    body: String,
    token: Option<String>,
    kind: Option<StoreErrorKind>,
}

/// Sends `path` through a router with `layer`; reports the store error kind of a failed response.
async fn send(layer: SessionLayer, path: &str, token: Option<&str>) -> Sent {
    let router = Router::new()
        .route("/put/{size}", get(put))
        .route(
            "/put-and-save/{size}",
            get(|s: Session, Path(size): Path<usize>| async move {
                s.insert("blob", "x".repeat(size))?;
                // What a handler would check before acting on the write.
                Ok::<_, SessionError>(match s.save().await {
                    Ok(()) => "saved".to_owned(),
                    Err(error) => {
                        // Told in time: the handler takes the value back and says so.
                        s.remove::<String>("blob")?;
                        format!("{:?}", error.store_error().map(StoreError::kind))
                    }
                })
            }),
        )
        .route(
            "/len",
            get(|s: Session| async move {
                Ok::<_, SessionError>(s.get::<String>("blob")?.map_or(0, |b| b.len()).to_string())
            }),
        )
        .route(
            "/logout-then-put/{size}",
            get(|s: Session, Path(size): Path<usize>| async move {
                s.destroy();
                s.insert("blob", "x".repeat(size))?;
                Ok::<_, SessionError>("ok".to_owned())
            }),
        )
        .layer(layer);
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header(header::COOKIE, format!("id={token}"));
    }
    let response = router
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let kind = response
        .extensions()
        .get::<SessionError>()
        .and_then(|e| e.store_error())
        .map(StoreError::kind);
    let token = response.headers().get(header::SET_COOKIE).map(|v| {
        cookie::Cookie::parse(v.to_str().unwrap().to_owned())
            .unwrap()
            .value()
            .to_owned()
    });
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    Sent {
        status,
        body: String::from_utf8(body.to_vec()).unwrap(),
        token,
        kind,
    }
}

#[tokio::test]
async fn an_oversize_session_fails_the_request_and_writes_nothing() {
    let layer = SessionLayer::new(store());
    let sent = send(layer.clone(), "/put/100", None).await;
    assert_eq!(sent.status, StatusCode::OK);
    let token = sent.token.unwrap();

    let sent = send(layer.clone(), "/put/5000", Some(&token)).await;
    assert_eq!(sent.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(sent.kind, Some(StoreErrorKind::TooLarge));
    assert_eq!(
        sent.token, None,
        "no cookie the browser would drop, nothing half-written"
    );
    // The browser's cookie still holds the previous session.
    let sent = send(layer, "/len", Some(&token)).await;
    assert_eq!(sent.body, "100");
}

/// A logout whose new values do not fit the cookie still logs out: the error response removes
/// the cookie, which would otherwise keep the session it seals (nothing on the server ends it).
#[tokio::test]
async fn a_logout_whose_new_values_do_not_fit_still_removes_the_cookie() {
    let layer = SessionLayer::new(store());
    let token = send(layer.clone(), "/put/100", None).await.token.unwrap();
    let sent = send(layer.clone(), "/logout-then-put/5000", Some(&token)).await;
    assert_eq!(sent.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(sent.kind, Some(StoreErrorKind::TooLarge));
    assert_eq!(sent.token.as_deref(), Some(""), "a removal cookie");
    // Values that fit: the new session's cookie, as usual.
    let sent = send(layer, "/logout-then-put/10", Some(&token)).await;
    assert_eq!(sent.status, StatusCode::OK);
    assert!(sent.token.is_some_and(|t| !t.is_empty() && t != token));
}

/// `save` tells the handler that its session will not fit the cookie, before it acts on it.
#[tokio::test]
async fn save_reports_a_session_too_large_for_its_cookie() {
    let layer = SessionLayer::new(store());
    let sent = send(layer.clone(), "/put-and-save/100", None).await;
    assert_eq!((sent.status, sent.body.as_str()), (StatusCode::OK, "saved"));
    let sent = send(layer, "/put-and-save/5000", None).await;
    assert_eq!(
        (sent.status, sent.body.as_str()),
        (StatusCode::OK, "Some(TooLarge)")
    );
}

/// A request that changes nothing, whose refresh no longer fits the cookie (here: re-sealed
/// under a new primary key by a store without compression), keeps the cookie the browser holds
/// rather than failing, request after request.
#[tokio::test]
async fn a_refresh_that_no_longer_fits_keeps_the_cookie() {
    let compressed = SessionLayer::new(CookieStore::new(key(1)).compression_level(6));
    let sent = send(compressed, "/put/5000", None).await;
    assert_eq!(sent.status, StatusCode::OK);
    let token = sent.token.unwrap();
    let rotated = SessionLayer::new(CookieStore::new(KeyRing::new(key(2)).with_previous(key(1))));
    for _ in 0..2 {
        let sent = send(rotated.clone(), "/len", Some(&token)).await;
        assert_eq!((sent.status, sent.body.as_str()), (StatusCode::OK, "5000"));
        assert_eq!(sent.token, None, "the browser keeps its cookie");
    }
    // A change that does not fit still fails the request.
    let sent = send(rotated, "/put/5001", Some(&token)).await;
    assert_eq!(sent.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(sent.kind, Some(StoreErrorKind::TooLarge));
}

#[tokio::test]
async fn a_lower_configured_limit_is_enforced() {
    let layer = SessionLayer::new(store().max_size(1000));
    let sent = send(layer.clone(), "/put/400", None).await;
    assert_eq!(sent.status, StatusCode::OK);
    assert!(sent.token.unwrap().len() + 2 <= 1000);
    let sent = send(layer, "/put/900", None).await;
    assert_eq!(sent.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(sent.kind, Some(StoreErrorKind::TooLarge));
}

#[test]
fn seal_refuses_exactly_what_exceeds_4096_bytes_of_name_and_value() {
    let store = store();
    let mut record = record();
    let (mut largest, mut refused) = (0, false);
    for size in (2800..3200).step_by(1) {
        record.data.insert("blob".into(), json!("x".repeat(size)));
        match store.seal("session", &record, t0()) {
            Ok(value) => {
                assert!("session".len() + value.len() <= 4096);
                largest = largest.max("session".len() + value.len());
            }
            Err(error) => {
                assert_eq!(error.kind(), StoreErrorKind::TooLarge);
                assert!(error.to_string().contains("4096"), "{error}");
                // Anything larger fails too.
                record
                    .data
                    .insert("blob".into(), json!("x".repeat(size + 1)));
                assert!(store.seal("session", &record, t0()).is_err());
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "some size up to 3,200 bytes was refused");
    assert!(
        largest > 4090,
        "the limit is used up to its last bytes: {largest}"
    );
}

#[test]
fn compression_fits_a_compressible_session_that_would_not_fit_otherwise() {
    let mut record = record();
    record
        .data
        .insert("history".into(), json!(vec!["/products/shoes?page=2"; 400]));
    let plain = store();
    let error = plain.seal("id", &record, t0()).unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::TooLarge);
    let compressed = store().compression_level(6);
    let value = compressed.seal("id", &record, t0()).unwrap();
    assert!(value.len() < 1000, "{}", value.len());
    assert_eq!(raw(&value)[1] & 1, 1, "the deflate flag is set");
    assert_eq!(live(open(&compressed, "id", &value)).0, record);
    // Any store with the key opens it, whatever its own compression setting.
    assert_eq!(live(open(&plain, "id", &value)).0, record);
}

// -------------------------------------------------------------------------------------------------
// Bounded decompression (SECURITY.md 24)
// -------------------------------------------------------------------------------------------------

#[test]
fn a_compressed_bomb_inside_a_validly_sealed_cookie_is_capped() {
    // Sealed by a store configured to allow a 4 MB session: authentic, and under 4096 bytes.
    let lax = store().compression_level(9).max_inflated_size(4 << 20);
    let mut bomb = record();
    bomb.data.insert("pad".into(), json!("a".repeat(2_000_000)));
    let value = lax.seal("id", &bomb, t0()).unwrap();
    assert!(value.len() < 4096);
    assert_eq!(
        live(open(&lax, "id", &value)).0,
        bomb,
        "it is validly sealed"
    );
    // A store with the default cap (64 KiB) stops inflating at the cap and rejects it.
    assert_eq!(
        rejection(open(&store(), "id", &value)),
        Rejection::InflatedTooLarge
    );
    // And never seals what it could not open: over the cap, a session is sealed uncompressed,
    // which this one does not fit.
    let error = store()
        .compression_level(9)
        .seal("id", &bomb, t0())
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::TooLarge);
    // One that fits uncompressed is sealed so, and opens.
    let capped = store().compression_level(9).max_inflated_size(500);
    let mut fits = record();
    fits.data.insert("pad".into(), json!("a".repeat(1000)));
    let value = capped.seal("id", &fits, t0()).unwrap();
    assert!(value.len() > 1000, "not compressed");
    assert_eq!(live(open(&capped, "id", &value)).0, fits);
}

// -------------------------------------------------------------------------------------------------
// Keys (SECURITY.md 26)
// -------------------------------------------------------------------------------------------------

#[test]
fn short_keys_are_refused() {
    for len in [0, 1, 16, 31] {
        let error = Key::from_bytes(&vec![7; len]).unwrap_err();
        assert!(error.to_string().contains("32"), "{error}");
    }
    assert!(Key::from_bytes(&[7; 32]).is_ok());
    assert!(Key::from_bytes(&[7; 64]).is_ok());
    assert!(Key::from_base64(&STANDARD.encode([7u8; 31])).is_err());
}

#[test]
fn keys_parse_from_any_base64_flavour() {
    let bytes: Vec<u8> = (0u8..48).map(|b| b.wrapping_mul(37)).collect();
    let id = Key::from_bytes(&bytes).unwrap().id();
    for text in [
        STANDARD.encode(&bytes),
        URL_SAFE_NO_PAD.encode(&bytes),
        format!("  {}\n", STANDARD.encode(&bytes)),
    ] {
        assert_eq!(Key::from_base64(&text).unwrap().id(), id, "{text:?}");
    }
    let error = Key::from_base64("not base64 at all!").unwrap_err();
    assert!(!error.to_string().contains("not base64 at all"), "{error}");
}

#[test]
fn keys_never_appear_in_debug_output() {
    let secret = [0xA5u8; 32];
    let text = STANDARD.encode(secret);
    let key = Key::from_base64(&text).unwrap();
    let ring = KeyRing::new(key.clone()).with_previous(Key::from_bytes(&[0x5Au8; 32]).unwrap());
    let store = CookieStore::new(ring.clone()).revocation(MemoryRevocations::new());
    for shown in [
        format!("{key:?}"),
        format!("{key:#?}"),
        format!("{ring:?}"),
        format!("{store:?}"),
        format!("{store:#?}"),
    ] {
        assert!(!shown.contains(&text), "{shown}");
        assert!(!shown.contains("165"), "{shown}"); // 0xA5 as a decimal byte
        assert!(!shown.to_ascii_lowercase().contains("a5a5"), "{shown}");
        assert!(!shown.contains("90, 90"), "{shown}"); // 0x5A
    }
    assert!(format!("{key:?}").contains("REDACTED"));
    assert!(format!("{key:?}").contains(&key.id().to_string()));
}

#[test]
fn two_seals_of_one_record_differ() {
    // A fresh nonce per seal (SECURITY.md 21).
    let store = store();
    let a = raw(&store.seal("id", &record(), t0()).unwrap());
    let b = raw(&store.seal("id", &record(), t0()).unwrap());
    assert_ne!(a[HEADER..HEADER + NONCE], b[HEADER..HEADER + NONCE]);
    assert_ne!(a, b);
}

#[test]
fn every_byte_of_the_nonce_varies_across_seals() {
    // Random, not merely fresh (SECURITY.md 21): a counter or a timestamp leaves its high bytes
    // fixed, a nonce derived from the content all of them. 256 random bytes take about 162 of
    // the 256 values; fewer than 100 has a probability far below 1e-20.
    let store = store();
    let nonces: Vec<Vec<u8>> = (0..256)
        .map(|_| raw(&store.seal("id", &record(), t0()).unwrap())[HEADER..HEADER + NONCE].to_vec())
        .collect();
    for at in 0..NONCE {
        let distinct: std::collections::HashSet<u8> = nonces.iter().map(|n| n[at]).collect();
        assert!(
            distinct.len() > 100,
            "nonce byte {at} took only {} values",
            distinct.len()
        );
    }
}

#[tokio::test]
async fn without_a_hook_revoke_owner_is_unsupported() {
    let layer = SessionLayer::new(store());
    let router = Router::new()
        .route(
            "/login",
            get(|s: Session| async move {
                s.set_owner("alice");
                "ok"
            }),
        )
        .route(
            "/revoke",
            get(|s: Session| async move { s.revoke_owner().await.map(|n| n.to_string()) }),
        )
        .layer(layer);
    let response = router
        .clone()
        .oneshot(Request::get("/login").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap();
    let pair = cookie.split(';').next().unwrap().to_owned();
    let response = router
        .oneshot(
            Request::get("/revoke")
                .header(header::COOKIE, pair)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let error = response
        .extensions()
        .get::<tower_satchel::SessionError>()
        .expect("the error in the response's extensions");
    assert_eq!(
        error.store_error().map(tower_satchel::StoreError::kind),
        Some(StoreErrorKind::Unsupported),
        "{error}"
    );
}

// -------------------------------------------------------------------------------------------------
// Logs
// -------------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn rejections_are_logged_without_the_value_or_the_key() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let secret = [0x42u8; 32];
    let key_text = STANDARD.encode(secret);
    let app = default_app(CookieStore::new(Key::from_base64(&key_text).unwrap()).into_backend());
    let token = app.start().await;
    let mut forged = raw(&token);
    forged[HEADER + 1] ^= 0x10;
    let forged = encode(&forged);
    assert_eq!(app.get("/arrival", Some(&forged)).await.body, "Invalid");

    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("failed authentication"), "{logs}");
    for leaked in [&token, &forged, &key_text] {
        assert!(
            !logs.contains(leaked.as_str()),
            "leaked into the logs:\n{logs}"
        );
    }
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<CookieStore>();
    check::<Key>();
    check::<KeyRing>();
    check::<MemoryRevocations>();
    check::<Unsealed>();
}

// -------------------------------------------------------------------------------------------------
// Property tests over the open path (bounded; the cargo-fuzz targets in fuzz/ go further)
// -------------------------------------------------------------------------------------------------

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_values_never_panic_and_never_open(value in ".{0,600}") {
        let opened = open(&store(), "id", &value);
        proptest::prop_assert!(matches!(opened, Unsealed::Invalid(_)), "{:?}", opened);
    }

    #[test]
    fn base64url_values_never_open(value in "[A-Za-z0-9_-]{0,700}") {
        let opened = open(&store(), "id", &value);
        proptest::prop_assert!(matches!(opened, Unsealed::Invalid(_)), "{:?}", opened);
    }

    #[test]
    fn mutated_genuine_values_never_open(
        edits in proptest::collection::vec((0usize..400, 1u8..=255), 1..4),
        cut in proptest::option::of(0usize..400),
        tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
    ) {
        let store = store();
        let genuine = raw(&store.seal("id", &record(), t0()).unwrap());
        let mut bytes = genuine.clone();
        for (at, mask) in edits {
            let len = bytes.len();
            bytes[at % len] ^= mask;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (genuine.len() + 1));
        }
        bytes.extend_from_slice(&tail);
        proptest::prop_assume!(bytes != genuine);
        let opened = open(&store, "id", &encode(&bytes));
        proptest::prop_assert!(matches!(opened, Unsealed::Invalid(_)), "{:?}", opened);
    }
}

/// An app on a cookie store under key 1 with the header transport in the header `name`.
fn with_header(name: &'static str) -> conformance::harness::App {
    app(CookieStore::new(key(1)).into_backend(), move |l| {
        l.header_transport(axum::http::HeaderName::from_static(name))
    })
}

/// A GET of `path` carrying the header `name: value`.
fn get_with(path: &str, name: &str, value: &str) -> Request<Body> {
    Request::get(path)
        .header(name, value)
        .body(Body::empty())
        .unwrap()
}

/// Starts a session (`/incr/n`, n = 1) on an app with the header transport in `name`: its token.
async fn header_token(app: &conformance::harness::App, name: &str) -> String {
    let resp = app
        .send(Request::get("/incr/n").body(Body::empty()).unwrap())
        .await;
    resp.headers.get(name).unwrap().to_str().unwrap().to_owned()
}

/// With the header transport, a sealed token is bound to the header's name, as a cookie's is to
/// the cookie's: two layers of one app sharing a key (and the default cookie name, which the
/// header transport does not use) refuse each other's tokens.
#[tokio::test]
async fn a_header_token_is_bound_to_its_header_name() {
    let (a, b) = (with_header("x-a"), with_header("x-b"));
    let token = header_token(&a, "x-a").await;
    assert_eq!(a.send(get_with("/get/n", "x-a", &token)).await.body, "1");
    assert_eq!(
        b.send(get_with("/arrival", "x-b", &token)).await.body,
        "Invalid"
    );
}

/// A token sealed for a header is refused as a cookie of the same name, and a cookie's value as
/// that header: the store binds `header:` and the header's name, which no cookie name can spell.
#[tokio::test]
async fn a_token_does_not_move_between_a_header_and_a_cookie_of_one_name() {
    let by_header = with_header("x-a");
    let by_cookie = app(CookieStore::new(key(1)).into_backend(), |l| {
        l.cookie_name("x-a")
    });
    let header_token = header_token(&by_header, "x-a").await;
    assert_eq!(
        by_header
            .send(get_with("/get/n", "x-a", &header_token))
            .await
            .body,
        "1"
    );
    let as_cookie = format!("x-a={header_token}");
    assert_eq!(
        by_cookie
            .send(get_with("/arrival", "cookie", &as_cookie))
            .await
            .body,
        "Invalid"
    );
    let resp = by_cookie
        .send(Request::get("/incr/n").body(Body::empty()).unwrap())
        .await;
    let cookie = resp.headers.get("set-cookie").unwrap().to_str().unwrap();
    let cookie_token = cookie::Cookie::parse(cookie.to_owned())
        .unwrap()
        .value()
        .to_owned();
    assert_eq!(
        by_cookie
            .send(get_with("/get/n", "cookie", &format!("x-a={cookie_token}")))
            .await
            .body,
        "1"
    );
    assert_eq!(
        by_header
            .send(get_with("/arrival", "x-a", &cookie_token))
            .await
            .body,
        "Invalid"
    );
}
