//! Fuzzes `CookieStore::open`, the path every cookie value a client sends goes through: no input
//! may panic, and none but the genuine sealed value may open.
//!
//! The first byte picks what the rest is: an arbitrary cookie value; an XOR mask over a genuine
//! sealed value; a cut-and-append of a genuine value; or another cookie name for a genuine value.
//!
//! ```text
//! cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run cookie_open -- -max_total_time=300
//! ```
#![no_main]

use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tower_satchel::time::{Duration, OffsetDateTime};
use tower_satchel::{CookieStore, Expiry, Key, KeyRing, MemoryRevocations, Record, Unsealed};

struct Fixture {
    store: CookieStore,
    now: OffsetDateTime,
    value: String,
    bytes: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let ring = KeyRing::new(Key::from_bytes(&[1; 32]).expect("a 32-byte key"))
            .with_previous(Key::from_bytes(&[2; 48]).expect("a 48-byte key"));
        let store = CookieStore::new(ring)
            .compression_level(6)
            .revocation(MemoryRevocations::new());
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a valid time");
        let mut record = Record::new(
            now,
            now + Duration::hours(1),
            Some(now + Duration::days(1)),
            Expiry::OnInactivity(Duration::hours(1)),
        );
        record.data.insert("user".into(), json!("alice"));
        record.data.insert(
            "history".into(),
            json!(["/a", "/b", "/a", "/b", "/a", "/b"]),
        );
        record.owner = Some("alice".into());
        let value = store.seal("id", &record, now).expect("a small record fits");
        let bytes = URL_SAFE_NO_PAD.decode(&value).expect("our own encoding");
        Fixture {
            store,
            now,
            value,
            bytes,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (name, value): (String, String) = match mode % 4 {
        0 => ("id".into(), String::from_utf8_lossy(rest).into_owned()),
        1 => {
            let mut bytes = f.bytes.clone();
            let len = bytes.len();
            for (i, mask) in rest.iter().enumerate() {
                bytes[i % len] ^= mask;
            }
            ("id".into(), URL_SAFE_NO_PAD.encode(&bytes))
        }
        2 => {
            let mut bytes = f.bytes.clone();
            let cut = rest
                .first()
                .map_or(bytes.len(), |c| usize::from(*c) % (bytes.len() + 1));
            bytes.truncate(cut);
            bytes.extend_from_slice(rest.get(1..).unwrap_or_default());
            ("id".into(), URL_SAFE_NO_PAD.encode(&bytes))
        }
        _ => (String::from_utf8_lossy(rest).into_owned(), f.value.clone()),
    };
    let mut future = pin!(f.store.open(&name, &value, f.now));
    let Poll::Ready(result) = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    else {
        panic!("the in-memory revocation hook never waits");
    };
    if let Ok(Unsealed::Live { .. }) = result {
        assert!(
            name == "id" && value == f.value,
            "a value other than the genuine one opened"
        );
    }
});
