//! Log events: what happened is logged, session IDs and store keys never are (SECURITY.md 29).
//!
//! In its own test binary because it installs a global subscriber.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod conformance;

use std::io::Write;
use std::sync::{Arc, Mutex};

use conformance::harness;
use tower_satchel::{MemoryStore, SessionId};

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

#[tokio::test]
async fn logs_name_events_but_never_the_session_id() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let app = harness::default_app(tower_satchel::IntoBackend::into_backend(MemoryStore::new()));
    let token = app.start().await;
    let rotated = app.get("/cycle", Some(&token)).await.expect_token();
    app.get("/read", Some(&token)).await; // unknown now
    app.get("/read", Some("garbage")).await;
    app.get("/destroy", Some(&rotated)).await;

    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    for needle in [
        "session ID cycled",
        "unknown or expired session",
        "malformed session token",
        "session destroyed",
    ] {
        assert!(logs.contains(needle), "missing event {needle:?} in\n{logs}");
    }
    for secret in [&token, &rotated] {
        assert!(
            !logs.contains(secret.as_str()),
            "a session ID leaked into the logs"
        );
        let key = SessionId::parse(secret).unwrap().key().to_hex();
        assert!(!logs.contains(&key), "a store key leaked into the logs");
        // The tag that is logged is the keyed one.
        let tag = SessionId::parse(secret).unwrap().log_tag().to_string();
        assert!(logs.contains(&tag), "events name the session by its tag");
    }
}
