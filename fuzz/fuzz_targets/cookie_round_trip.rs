//! Fuzzes `CookieStore::seal` and `open` together: any session either seals into a cookie of at
//! most 4096 bytes (name + value) that opens to the same record, or is refused as too large.
//!
//! ```text
//! cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run cookie_round_trip -- -max_total_time=300
//! ```
#![no_main]

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower_satchel::time::{Duration, OffsetDateTime};
use tower_satchel::{CookieStore, Expiry, Key, Record, StoreErrorKind, Unsealed};

fuzz_target!(|data: &[u8]| {
    let Some((&settings, rest)) = data.split_first() else {
        return;
    };
    let store = CookieStore::new(Key::from_bytes(&[7; 32]).expect("a 32-byte key"))
        .compression_level(u32::from(settings % 10));
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a valid time");
    let mut record = Record::new(
        now,
        now + Duration::minutes(i64::from(settings) + 1),
        (settings & 0x80 != 0).then(|| now + Duration::days(1)),
        Expiry::OnInactivity(Duration::minutes(i64::from(settings) + 1)),
    );
    // Key/value pairs separated by 0xFF bytes; an odd field out becomes the owner.
    let mut fields = rest.split(|b| *b == 0xFF);
    while let Some(key) = fields.next() {
        let key = String::from_utf8_lossy(key).into_owned();
        match fields.next() {
            Some(value) => {
                let value = String::from_utf8_lossy(value).into_owned();
                record.data.insert(key, Value::String(value));
            }
            None => record.owner = Some(key),
        }
    }
    let name = if settings & 0x40 != 0 {
        "__Host-session"
    } else {
        "id"
    };
    match store.seal(name, &record, now) {
        Ok(value) => {
            assert!(name.len() + value.len() <= CookieStore::MAX_SIZE);
            let mut future = pin!(store.open(name, &value, now));
            let Poll::Ready(result) = future
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
            else {
                panic!("open without a hook never waits");
            };
            match result {
                Ok(Unsealed::Live {
                    record: opened,
                    stale_key,
                }) => {
                    assert!(!stale_key);
                    assert_eq!(opened, record);
                }
                other => panic!("a fresh seal did not open: {other:?}"),
            }
        }
        Err(error) => assert_eq!(error.kind(), StoreErrorKind::TooLarge, "{error}"),
    }
});
