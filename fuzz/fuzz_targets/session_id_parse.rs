//! Fuzzes `SessionId::parse`, which every cookie value meets before any store does (SECURITY.md 4):
//! no input may panic, and whatever parses must be the one canonical spelling of its ID.
//!
//! ```text
//! cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run session_id_parse -- -max_total_time=60
//! ```
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_satchel::SessionId;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(id) = SessionId::parse(text) {
        assert_eq!(id.expose(), text, "a second spelling of an ID parsed");
        assert_eq!(SessionId::parse(&id.expose()), Some(id));
    }
});
