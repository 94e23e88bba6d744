//! Session IDs: generation, strict parsing, and the hashes stores and logs see.
//!
//! A [`SessionId`] is 256 bits from the operating system's CSPRNG, written as 43 characters of
//! unpadded base64url (SECURITY.md 1). It only ever travels in the cookie (or the configured header).
//! Stores never see it: they are handed a [`SessionKey`], the SHA-256 of the ID, so a dump of any store
//! yields no usable cookie (SECURITY.md 6). Logs see a [`LogTag`], a short hash keyed with a secret
//! drawn once per process, so log lines of one session can be correlated but never turned back into
//! the ID or the store key (SECURITY.md 29).

use std::cell::RefCell;
use std::fmt;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Length of an encoded session ID in characters.
pub(crate) const ENCODED_LEN: usize = 43;

/// A session ID: 256 random bits. `Debug` is redacted.
///
/// The only way to obtain one is [`SessionId::generate`] or [`SessionId::parse`]; the raw value is
/// available through [`SessionId::expose`], which is what the layer writes into the cookie.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId {
    bytes: [u8; 32],
    /// Computed once: every request of a returning visitor needs it.
    key: SessionKey,
}

impl SessionId {
    /// Draws a fresh ID from the operating system's CSPRNG.
    ///
    /// # Errors
    ///
    /// Returns the OS error when the random source is unavailable; the layer turns it into an error
    /// response rather than falling back to a weaker source.
    ///
    /// The bytes come from the OS in batches of 32 IDs per system call, kept in a per-thread pool
    /// that zeroes each ID's bytes as it hands them out: a `getrandom` call costs about as much for
    /// 1 KiB as for 32 bytes. After a `fork()`, parent and child may repeat up to 32 IDs; stores
    /// never create a record under a key that is taken, so the layer retries such an ID rather
    /// than share a session.
    pub fn generate() -> Result<Self, getrandom::Error> {
        random_bytes().map(Self::from_bytes)
    }

    /// Parses an ID from its cookie form, strictly: exactly 43 characters of the base64url alphabet
    /// that decode to 32 bytes. Anything else (empty, short, long, `/`, `\`, `..`, NUL, non-ASCII) is
    /// `None` (SECURITY.md 4). Runs before any store is asked.
    ///
    /// # Examples
    ///
    /// ```
    /// use tower_satchel::SessionId;
    /// assert!(SessionId::parse("../../etc/passwd").is_none());
    /// assert!(SessionId::parse("").is_none());
    /// ```
    pub fn parse(value: &str) -> Option<Self> {
        let bytes = value.as_bytes();
        if bytes.len() != ENCODED_LEN
            || !bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        let mut out = [0u8; 32];
        // The decoder also rejects non-canonical trailing bits, so each ID has one spelling.
        match URL_SAFE_NO_PAD.decode_slice(bytes, &mut out) {
            Ok(32) => Some(Self::from_bytes(out)),
            _ => None,
        }
    }

    fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            bytes,
            key: SessionKey(Sha256::digest(bytes).into()),
        }
    }

    /// The cookie form of the ID. This is the secret bearer token: do not log it.
    pub fn expose(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.bytes)
    }

    /// The key stores keep the session under: SHA-256 of the ID.
    pub fn key(&self) -> SessionKey {
        self.key
    }

    /// A short keyed hash for log lines.
    pub fn log_tag(&self) -> LogTag {
        self.key().log_tag()
    }
}

/// How many IDs' worth of OS randomness one `getrandom` call fetches.
pub(crate) const POOL_IDS: usize = 32;

thread_local! {
    /// OS random bytes not yet handed out, per thread; `next` is the first unused byte.
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool { bytes: [0; 32 * POOL_IDS], next: 32 * POOL_IDS })
    };
}

struct Pool {
    bytes: [u8; 32 * POOL_IDS],
    next: usize,
}

/// 32 bytes from the operating system's CSPRNG, through a per-thread pool refilled 1 KiB at a
/// time. Every byte is handed out once and zeroed in the pool as it is taken, so the pool never
/// holds a byte of an ID already issued.
///
/// A `fork()` copies the forking thread's pool, so parent and child could draw the same few IDs
/// (at most [`POOL_IDS`]) until their pools refill. Stores create records only under keys that are
/// free (`create` never overwrites), so such a repeat is a collision the layer retries with the
/// next ID, never two visitors sharing a session. Nothing else in this crate draws from the pool;
/// the cookie store's nonces come straight from the OS.
fn random_bytes() -> Result<[u8; 32], getrandom::Error> {
    POOL.with_borrow_mut(|pool| {
        if pool.next >= pool.bytes.len() {
            getrandom::fill(&mut pool.bytes)?;
            pool.next = 0;
        }
        let mut out = [0u8; 32];
        if let Some(chunk) = pool.bytes.get_mut(pool.next..pool.next + 32) {
            out.copy_from_slice(chunk);
            chunk.fill(0);
        }
        pool.next += 32;
        Ok(out)
    })
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(REDACTED)")
    }
}

/// What a store keeps a session under: the SHA-256 of its [`SessionId`].
///
/// A store key cannot be turned back into a cookie, so it is safe to keep in a database column, a
/// Redis key or a file name. [`SessionKey::to_hex`] gives a 64-character lowercase form that is valid
/// in all of those.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// The key from its raw 32 bytes (for stores that keep it in binary form).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters: only `0-9a-f`, safe in paths, keys and SQL.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        out
    }

    /// Parses the form written by [`SessionKey::to_hex`] (lowercase only).
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Self(out))
    }

    /// A short keyed hash for log lines (see [`LogTag`]).
    pub fn log_tag(&self) -> LogTag {
        let mut hasher = Sha256::new();
        hasher.update(log_secret());
        hasher.update(self.0);
        let digest = hasher.finalize();
        let mut tag = [0u8; 6];
        tag.copy_from_slice(&digest[..6]);
        LogTag(tag)
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is not a usable cookie, but a store dump could be matched with it: show the tag.
        write!(f, "SessionKey({})", self.log_tag())
    }
}

/// A 12-hex-digit tag that names a session in logs: a hash of the store key, keyed with a secret
/// drawn once per process. Equal tags within one process mean the same session; nothing about the ID
/// or store key can be learned from it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogTag([u8; 6]);

impl fmt::Display for LogTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for LogTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn log_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut secret = [0u8; 32];
        // Without OS randomness the tag is still a one-way hash of the store key, which itself is a
        // one-way hash of the ID: correlation across processes is the only thing lost.
        let _ = getrandom::fill(&mut secret);
        secret
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_pool_hands_out_distinct_ids_across_refills_and_keeps_no_copy() {
        let ids: std::collections::HashSet<[u8; 32]> = (0..POOL_IDS * 3 + 5)
            .map(|_| random_bytes().unwrap())
            .collect();
        assert_eq!(ids.len(), POOL_IDS * 3 + 5);
        assert!(!ids.contains(&[0u8; 32]));
        POOL.with_borrow(|pool| {
            // Everything handed out since the last refill is zeroed; the rest is still random.
            assert!(pool.bytes[..pool.next].iter().all(|b| *b == 0));
            assert!(pool.bytes[pool.next..].iter().any(|b| *b != 0));
        });
    }

    #[test]
    fn generated_ids_are_43_base64url_chars_and_parse_back() {
        let id = SessionId::generate().unwrap();
        let text = id.expose();
        assert_eq!(text.len(), ENCODED_LEN);
        assert_eq!(SessionId::parse(&text), Some(id));
    }

    #[test]
    fn two_generated_ids_differ() {
        assert_ne!(
            SessionId::generate().unwrap(),
            SessionId::generate().unwrap()
        );
    }

    #[test]
    fn malformed_values_do_not_parse() {
        let good = SessionId::generate().unwrap().expose();
        let long = format!("{good}A");
        let short = &good[..42];
        let slash = format!("{}/", &good[..42]);
        let backslash = format!("{}\\", &good[..42]);
        let dots = format!("..{}", &good[..41]);
        let nul = format!("{}\0", &good[..42]);
        let plus = format!("{}+", &good[..42]);
        let non_ascii = format!("{}é", &good[..41]);
        for bad in [
            "", short, &long, &slash, &backslash, &dots, &nul, &plus, &non_ascii,
        ] {
            assert!(SessionId::parse(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn non_canonical_trailing_bits_are_rejected() {
        let good = SessionId::generate().unwrap().expose();
        // The last character carries 2 padding bits; flipping them gives a second spelling.
        let last = good.as_bytes()[42];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let pos = alphabet.iter().position(|c| *c == last).unwrap();
        let twin = alphabet[pos ^ 1];
        let mut other = good[..42].to_string();
        other.push(char::from(twin));
        assert!(SessionId::parse(&other).is_none());
    }

    #[test]
    fn debug_never_shows_the_id() {
        let id = SessionId::generate().unwrap();
        let shown = format!("{id:?} {:?}", id.key());
        assert!(!shown.contains(&id.expose()));
        assert!(!shown.contains(&id.key().to_hex()));
    }

    #[test]
    fn key_hex_round_trips_and_is_not_the_id() {
        let id = SessionId::generate().unwrap();
        let key = id.key();
        assert_eq!(SessionKey::from_hex(&key.to_hex()), Some(key));
        assert_ne!(key.as_bytes(), &id.bytes);
        assert!(SessionKey::from_hex("zz").is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_32_bytes_round_trip(bytes in proptest::array::uniform32(proptest::prelude::any::<u8>())) {
            let id = SessionId::from_bytes(bytes);
            proptest::prop_assert_eq!(SessionId::parse(&id.expose()), Some(id));
        }

        #[test]
        fn parsing_any_string_never_panics_and_accepts_only_canonical_ids(text in "\\PC{0,64}") {
            if let Some(id) = SessionId::parse(&text) {
                proptest::prop_assert_eq!(id.expose(), text);
            }
        }

        #[test]
        fn parsing_base64url_shaped_strings_accepts_only_canonical_ids(text in "[A-Za-z0-9_-]{40,46}") {
            if let Some(id) = SessionId::parse(&text) {
                proptest::prop_assert_eq!(id.expose(), text);
            }
        }
    }

    #[test]
    fn log_tags_are_stable_within_a_process() {
        let id = SessionId::generate().unwrap();
        assert_eq!(id.log_tag(), id.log_tag());
        assert_eq!(id.log_tag().to_string().len(), 12);
    }
}
