//! Fuzzes `Record::decode`, which every server-side store runs on what it reads back (a file, a
//! Redis value, a row): no input may panic, and whatever decodes must encode and decode to itself.
//!
//! ```text
//! cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run record_decode -- -max_total_time=60
//! ```
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_satchel::Record;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = Record::decode(data) {
        let encoded = record.encode().expect("a decoded record encodes");
        let again = Record::decode(&encoded).expect("an encoded record decodes");
        assert_eq!(again, record);
    }
});
