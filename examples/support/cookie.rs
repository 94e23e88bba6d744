//! `SESSION_STORE=cookie`: the session sealed in the cookie.
//!
//! `$SESSION_KEY` holds the key as base64 of at least 32 bytes (`openssl rand -base64 32`); a
//! comma-separated list rotates keys: the first seals, all open. Unset, a random key is generated,
//! so sessions do not survive a restart and are not shared with other processes.

use tower_satchel::{Backend, CookieStore, IntoBackend, Key, KeyRing, MemoryRevocations};

use super::BoxError;

pub(super) async fn backend() -> Result<Backend, BoxError> {
    let ring = match std::env::var("SESSION_KEY") {
        Ok(keys) if keys.trim().is_empty() => return Err("SESSION_KEY is set but empty".into()),
        Ok(keys) => {
            let mut keys = keys.split(',').map(Key::from_base64);
            let primary = keys.next().ok_or("SESSION_KEY is empty")??;
            let mut ring = KeyRing::new(primary);
            for key in keys {
                ring = ring.with_previous(key?);
            }
            ring
        }
        Err(_) => {
            tracing::warn!(
                "SESSION_KEY is not set: using a random demo key; sessions end when the process \
                 does (set SESSION_KEY to base64 of 32 random bytes: openssl rand -base64 32)"
            );
            KeyRing::new(Key::generate()?)
        }
    };
    tracing::info!(keys = ?ring, "cookie store ready");
    // "Log out everywhere" in the login example needs a revocation hook. This one lives in
    // process memory, which is enough for a demo; a real app keeps the times with its users, or
    // revoked cookies come back to life after a restart.
    let store = CookieStore::new(ring).revocation(MemoryRevocations::new());
    Ok(store.into_backend())
}
