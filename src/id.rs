//! Session IDs: generation, strict parsing, and the hashes stores and logs see.
//!
//! A [`SessionId`] is 256 bits from the operating system's CSPRNG, written as 43 characters of
//! unpadded base64url (SECURITY.md 1). It only ever travels in the cookie (or the configured header).
//! Stores never see it: they are handed a [`SessionKey`], the SHA-256 of the ID, so a dump of any store
//! yields no usable cookie (SECURITY.md 6). Logs see a [`LogTag`], a short hash keyed with a secret
//! drawn once per process, so log lines of one session can be correlated but never turned back into
//! the ID or the store key (SECURITY.md 29).

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
    /// The bytes come from the OS a kilobyte per system call, through a per-thread pool that
    /// hands each byte out once and is discarded in a forked child.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        crate::random::fill(&mut bytes)?;
        Ok(Self::from_bytes(bytes))
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
        if bytes.len() != ENCODED_LEN {
            return None;
        }
        let mut out = [0u8; 32];
        // The decoder is the syntax check: it rejects any byte outside the URL-safe alphabet
        // (padding included) and non-canonical trailing bits, so each ID has one spelling.
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
        // `encode_string` into an exact buffer: `encode` would zero a buffer first.
        let mut out = String::with_capacity(ENCODED_LEN);
        URL_SAFE_NO_PAD.encode_string(self.bytes, &mut out);
        out
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
        // Hex digits are ASCII, so this never falls back to the empty string.
        std::str::from_utf8(&self.hex_digits())
            .unwrap_or_default()
            .to_owned()
    }

    /// [`SessionKey::to_hex`]'s digits, as ASCII bytes.
    pub(crate) fn hex_digits(&self) -> [u8; 64] {
        // Arithmetic rather than a table lookup per nibble, so the compiler can do many at once.
        fn digit(nibble: u8) -> u8 {
            nibble + if nibble < 10 { b'0' } else { b'a' - 10 }
        }
        let mut digits = [0u8; 64];
        for (pair, b) in digits.chunks_exact_mut(2).zip(self.0) {
            pair[0] = digit(b >> 4);
            pair[1] = digit(b & 0x0f);
        }
        digits
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

    /// A short keyed hash for log lines (see [`LogTag`]). All zeros while the OS gives no
    /// randomness for the key (then no ID can be made either).
    pub fn log_tag(&self) -> LogTag {
        let Some(secret) = log_secret() else {
            return LogTag([0; 6]);
        };
        let mut hasher = Sha256::new();
        hasher.update(secret);
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

/// The process's key for [`LogTag`]s, drawn from the OS on first use; `None` while the OS gives
/// no randomness (tried again next time). A fixed fallback key would let anyone holding a store
/// dump compute the tags and match log lines to records.
fn log_secret() -> Option<&'static [u8; 32]> {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    if let Some(secret) = SECRET.get() {
        return Some(secret);
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).ok()?;
    Some(SECRET.get_or_init(|| secret))
}

/// Whether `text` holds only characters of the URL-safe base64 alphabet (`A-Z a-z 0-9 - _`), as
/// every session token does: session IDs, and the cookie store's sealed values.
pub(crate) fn is_base64url(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_ids_are_43_base64url_chars_and_parse_back() {
        let id = SessionId::generate().unwrap();
        let text = id.expose();
        assert_eq!(text.len(), ENCODED_LEN);
        assert_eq!(SessionId::parse(&text), Some(id));
    }

    /// Every one of the 32 bytes is random (SECURITY.md 1): a generator that filled only half
    /// of them, or counted, would leave byte positions that barely vary. 256 draws of a uniform
    /// byte give about 162 distinct values (standard deviation under 5); the bound is over 12
    /// of those below.
    #[test]
    fn every_byte_of_generated_ids_varies() {
        let ids: Vec<[u8; 32]> = (0..256)
            .map(|_| SessionId::generate().unwrap().bytes)
            .collect();
        for at in 0..32 {
            let distinct: std::collections::HashSet<u8> = ids.iter().map(|id| id[at]).collect();
            assert!(
                distinct.len() > 100,
                "byte {at} took only {} values",
                distinct.len()
            );
        }
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
    fn any_ascii_byte_outside_the_alphabet_is_rejected_at_any_position() {
        let good = SessionId::generate().unwrap().expose();
        for byte in (0u8..0x80).filter(|b| !is_base64url(&char::from(*b).to_string())) {
            for at in 0..ENCODED_LEN {
                let mut bad = good.clone().into_bytes();
                bad[at] = byte;
                let bad = String::from_utf8(bad).unwrap();
                assert!(SessionId::parse(&bad).is_none(), "{bad:?} parsed");
            }
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
        let mut bytes = [0u8; 32];
        bytes[0] = 0x01;
        bytes[1] = 0xab;
        bytes[31] = 0xf0;
        assert_eq!(
            SessionKey::from_bytes(bytes).to_hex(),
            format!("01ab{}f0", "0".repeat(58))
        );
        // Every byte value, against the standard formatter.
        for start in (0..=224u8).step_by(32) {
            let bytes: [u8; 32] = std::array::from_fn(|i| start + u8::try_from(i).unwrap());
            let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(SessionKey::from_bytes(bytes).to_hex(), expected);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_32_bytes_round_trip(bytes in proptest::array::uniform32(proptest::prelude::any::<u8>())) {
            let id = SessionId::from_bytes(bytes);
            proptest::prop_assert_eq!(SessionId::parse(&id.expose()), Some(id));
        }

        #[test]
        fn parsing_any_string_never_panics(text in "\\PC{0,64}") {
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

    /// SECURITY.md 29: a tag tells sessions apart, and is keyed: neither a piece of the store
    /// key nor a plain hash of it, so logs cannot be joined with a store's contents.
    #[test]
    fn log_tags_are_keyed_and_tell_sessions_apart() {
        let (a, b) = (
            SessionId::generate().unwrap(),
            SessionId::generate().unwrap(),
        );
        assert_ne!(a.log_tag(), b.log_tag());
        let tag = a.log_tag().to_string();
        let key = a.key();
        assert!(!key.to_hex().contains(&tag), "a piece of the key");
        let plain: String = Sha256::digest(key.as_bytes())[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(tag, plain, "an unkeyed hash of the key");
    }

    /// SECURITY.md 6: the store key is the SHA-256 of the ID's 32 bytes, computed here apart
    /// from the code under test.
    #[test]
    fn the_store_key_is_the_sha256_of_the_id() {
        use base64::Engine as _;
        let id = SessionId::generate().unwrap();
        let token = id.expose();
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token)
            .unwrap();
        assert_eq!(decoded.len(), 32);
        let expected: [u8; 32] = Sha256::digest(&decoded).into();
        assert_eq!(id.key().as_bytes(), &expected);
        assert_eq!(
            SessionId::parse(&token).unwrap().key().as_bytes(),
            &expected
        );
    }
}
