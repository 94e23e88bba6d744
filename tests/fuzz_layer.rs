//! Property-based fuzzing of the request path (SECURITY.md 27): arbitrary `Cookie` headers and
//! arbitrary session-header values never panic, never reach the store when malformed, and always
//! end in a fresh session; among several cookies of the session's name, the live session is found
//! exactly when it is among the first three.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod conformance;
mod support_faulty;

use axum::body::Body;
use axum::http::{HeaderValue, Request, header};
use conformance::harness;
use proptest::prelude::*;
use support_faulty::Faulty;
use tower_satchel::{IntoBackend, MemoryStore, SessionId};

/// Bytes a header value may hold (tab, visible ASCII and space, and any byte from 0x80), so that
/// every generated case reaches the layer rather than being refused by `HeaderValue`.
fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff];
    proptest::collection::vec(byte, 0..max)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_cookie_header_gets_a_fresh_session(bytes in header_bytes(300)) {
        let value = HeaderValue::from_bytes(&bytes).unwrap();
        let rt = runtime();
        let store = Faulty::default();
        let app = harness::default_app(store.clone().into_backend());
        let resp = rt.block_on(app.get_raw_cookie("/incr/n", value));
        prop_assert_eq!(resp.status.as_u16(), 200);
        prop_assert_eq!(resp.body.as_str(), "1");
        prop_assert_eq!(store.calls().0, 0, "no load: no well-formed ID in random bytes");
        prop_assert_eq!(store.inner.len(), 1, "exactly the new session is stored");
    }

    /// An `id` cookie among others, its value ID-shaped (a quarter of the 43-character ones are
    /// well-formed IDs, of sessions that do not exist) or not: a fresh session either way, and
    /// exactly the well-formed ones cost a store load.
    #[test]
    fn cookie_headers_with_an_id_shaped_value_get_a_fresh_session(
        value in prop_oneof!["[A-Za-z0-9_-]{43}", "[A-Za-z0-9_./\\\\%-]{0,60}"],
        prefix in "([a-z]{1,5}=[a-z0-9]{0,5}; ){0,3}",
    ) {
        let rt = runtime();
        let store = Faulty::default();
        let app = harness::default_app(store.clone().into_backend());
        let header = HeaderValue::from_str(&format!("{prefix}id={value}")).unwrap();
        let resp = rt.block_on(app.get_raw_cookie("/incr/n", header));
        prop_assert_eq!(resp.body.as_str(), "1");
        prop_assert_ne!(resp.token(), Some(value.clone()));
        let well_formed = SessionId::parse(&value).is_some();
        prop_assert_eq!(store.calls().0, usize::from(well_formed), "loads for {:?}", value);
    }

    /// Several `id` cookies, each the live session's token, an unknown ID or garbage: the live
    /// session is found exactly when it is among the first three distinct well-formed ones
    /// (empty, malformed and repeated values take no place), and nothing else is adopted.
    #[test]
    fn the_live_session_is_found_among_the_first_three_same_name_cookies(
        cookies in proptest::collection::vec(0u8..3, 0..6),
        garbage in "[A-Za-z0-9_./-]{0,50}",
    ) {
        let rt = runtime();
        let store = MemoryStore::new();
        let app = harness::default_app(store.clone().into_backend());
        let live = rt.block_on(app.start());
        let values: Vec<String> = cookies
            .iter()
            .map(|kind| match kind {
                0 => live.clone(),
                1 => SessionId::generate().unwrap().expose(),
                _ => garbage.clone(),
            })
            .collect();
        let header = values.iter().map(|v| format!("id={v}")).collect::<Vec<_>>().join("; ");
        let resp = rt.block_on(app.get_raw_cookie("/get/n", HeaderValue::from_str(&header).unwrap()));
        let mut looked_at: Vec<&String> = Vec::new();
        for value in &values {
            if SessionId::parse(value).is_some() && !looked_at.contains(&value) {
                looked_at.push(value);
            }
        }
        let found = looked_at.iter().take(3).any(|v| **v == live);
        prop_assert_eq!(resp.body.as_str(), if found { "1" } else { "null" });
        prop_assert_eq!(store.len(), 1, "nothing stored but the live session");
    }

    #[test]
    fn any_session_header_value_gets_a_fresh_session(bytes in header_bytes(120)) {
        let value = HeaderValue::from_bytes(&bytes).unwrap();
        let rt = runtime();
        let store = Faulty::default();
        let app = harness::app(store.clone().into_backend(), |l| {
            l.header_transport(header::HeaderName::from_static("x-session"))
        });
        let request = Request::get("/incr/n").header("x-session", value).body(Body::empty()).unwrap();
        let resp = rt.block_on(app.send(request));
        prop_assert_eq!(resp.body, "1");
        prop_assert_eq!(store.calls().0, 0, "no load: no well-formed ID in random bytes");
    }
}
