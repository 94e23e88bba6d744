//! [`CookieStore`]: the whole session sealed with AES-256-GCM into the cookie itself.
//!
//! The user-facing documentation (format, checks, keys, limits) is on [`CookieStore`], since this
//! module is private. The layer reaches the store through [`ClientStore`]; apps through the public
//! methods and the [`Revocation`] hook.
//!
//! The cipher is the `aes-gcm` crate at 0.10 (with `aes` 0.8), not 0.11: for cookie-sized
//! messages 0.11 is about twice as slow on CPUs with VAES, because its `aes` 0.9 picks a 512-bit
//! backend that broadcasts the round keys on every call (40 bytes: 0.25 µs with 0.10, 0.57 µs
//! with 0.11; the two meet near 1 KB). Both are the same RustCrypto implementation line and the
//! format does not depend on the version.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{AeadInPlace, KeyInit, Nonce, Tag};
use aes_gcm::{Aes256Gcm, Key as AesKey};
use base64::Engine as _;
use base64::engine::general_purpose::{
    STANDARD_PAD_INDIFFERENT, URL_SAFE_NO_PAD, URL_SAFE_PAD_INDIFFERENT,
};
use hkdf::Hkdf;
use sha2::Sha256;
use time::{Duration, OffsetDateTime};

use crate::Expiry;
use crate::backend::{Backend, ClientStore, IntoBackend, Kind, Opened};
use crate::layer::ConfigError;
use crate::record::{RECORD_VERSION, Record, deadline_seconds};
use crate::store::{BoxFuture, StoreError, StoreErrorKind};

/// The format version in every header; also bound into the associated data. Version 2 seals the
/// record's metadata in binary (version 1 sealed the whole record as JSON, about 60 bytes more).
const FORMAT_VERSION: u8 = 2;
/// Header flag: the plaintext after sealed-at is a raw deflate stream.
const FLAG_DEFLATE: u8 = 0b0000_0001;
const HEADER_LEN: usize = 6;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const SEALED_AT_LEN: usize = 8;
/// Where the encrypted part starts.
const BODY_START: usize = HEADER_LEN + NONCE_LEN;
/// Where the record (see [`encode_record`]; deflated if flagged) starts.
const RECORD_START: usize = BODY_START + SEALED_AT_LEN;
/// The smallest value that can be authentic: header, nonce, sealed-at and tag.
const MIN_SEALED_LEN: usize = RECORD_START + TAG_LEN;

const AAD_LABEL: &[u8] = b"tower-satchel/cookie-store";
const KDF_INFO_AES: &[u8] = b"tower-satchel/cookie-store v1 aes-256-gcm";
const KDF_INFO_ID: &[u8] = b"tower-satchel/cookie-store v1 key id";

const DEFAULT_PURPOSE: &str = "session";
const DEFAULT_MAX_INFLATED: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// A secret key for [`CookieStore`]: at least [`Key::MIN_LEN`] bytes.
///
/// The AES-256-GCM key and the key id are derived from it with HKDF-SHA256 (see the
/// [keys](CookieStore#keys)). `Debug` shows the id only.
///
/// # Examples
///
/// ```
/// use tower_satchel::Key;
///
/// # fn main() -> Result<(), tower_satchel::ConfigError> {
/// let key = Key::from_bytes(&[7u8; 32])?;
/// assert!(Key::from_bytes(&[7u8; 31]).is_err(), "short keys are refused");
/// assert!(!format!("{key:?}").contains("7, 7"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Key {
    id: KeyId,
    cipher: Aes256Gcm,
}

impl Key {
    /// The shortest key accepted, in bytes.
    pub const MIN_LEN: usize = 32;

    /// A key from secret bytes.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `secret` is shorter than [`Key::MIN_LEN`] bytes (SECURITY.md 26).
    pub fn from_bytes(secret: &[u8]) -> Result<Self, ConfigError> {
        if secret.len() < Self::MIN_LEN {
            return Err(ConfigError::new(format!(
                "a cookie store key must be at least {} bytes, got {}",
                Self::MIN_LEN,
                secret.len()
            )));
        }
        let kdf = Hkdf::<Sha256>::new(None, secret);
        let mut aes = [0u8; 32];
        let mut id = [0u8; 4];
        kdf.expand(KDF_INFO_AES, &mut aes)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        kdf.expand(KDF_INFO_ID, &mut id)
            .expect("4 bytes is a valid HKDF-SHA256 output length");
        let cipher = Aes256Gcm::new(&AesKey::<Aes256Gcm>::from(aes));
        aes.fill(0);
        std::hint::black_box(&aes);
        Ok(Self {
            id: KeyId(u32::from_be_bytes(id)),
            cipher,
        })
    }

    /// A key from base64 text, as kept in an environment variable or a secrets file: the standard
    /// or the URL-safe alphabet, with or without padding; surrounding whitespace is ignored.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the text is not base64 or decodes to fewer than [`Key::MIN_LEN`]
    /// bytes. The message never repeats the text.
    pub fn from_base64(text: &str) -> Result<Self, ConfigError> {
        let text = text.trim();
        let engine = if text.contains(['+', '/']) {
            &STANDARD_PAD_INDIFFERENT
        } else {
            &URL_SAFE_PAD_INDIFFERENT
        };
        let mut bytes = engine
            .decode(text)
            .map_err(|_| ConfigError::new("the cookie store key is not valid base64"))?;
        let key = Self::from_bytes(&bytes);
        bytes.fill(0);
        std::hint::black_box(&bytes);
        key
    }

    /// A random 32-byte key from the OS random source, for tests and demos. Cookies sealed under
    /// it cannot be opened by another process or after a restart.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the OS random source fails.
    pub fn generate() -> Result<Self, ConfigError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| {
            ConfigError::unavailable("no OS randomness to generate a cookie store key", e)
        })?;
        let key = Self::from_bytes(&bytes);
        bytes.fill(0);
        std::hint::black_box(&bytes);
        key
    }

    /// The key's id (not secret): derived from the key, carried in every cookie it seals.
    pub fn id(&self) -> KeyId {
        self.id
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("secret", &"REDACTED")
            .finish()
    }
}

/// The non-secret id of a [`Key`]: 32 bits derived from it, shown as 8 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The keys of a [`CookieStore`]: the primary seals, every key opens.
///
/// # Examples
///
/// ```
/// use tower_satchel::{CookieStore, Key, KeyRing};
///
/// # fn main() -> Result<(), tower_satchel::ConfigError> {
/// let new = Key::from_bytes(&[1u8; 32])?;
/// let old = Key::from_bytes(&[2u8; 32])?;
/// // Seals under `new`; cookies sealed under `old` still open, and are re-sealed under `new`.
/// let store = CookieStore::new(KeyRing::new(new).with_previous(old));
/// # let _ = store;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KeyRing {
    /// The primary first.
    keys: Vec<Key>,
}

impl KeyRing {
    /// A ring with one key, which seals and opens.
    pub fn new(primary: Key) -> Self {
        Self {
            keys: vec![primary],
        }
    }

    /// Adds a key that only opens (an older key being rotated out, or a newer one being rolled
    /// in). Keys are tried in the order given when ids collide.
    #[must_use]
    pub fn with_previous(mut self, key: Key) -> Self {
        self.keys.push(key);
        self
    }

    /// The key that seals.
    pub fn primary(&self) -> &Key {
        &self.keys[0]
    }

    /// The ids of all keys, the primary first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(Key::id).collect()
    }
}

impl From<Key> for KeyRing {
    fn from(key: Key) -> Self {
        Self::new(key)
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("primary", &self.primary().id)
            .field(
                "previous",
                &self.keys[1..].iter().map(Key::id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Revocation
// ---------------------------------------------------------------------------------------------

/// The app's hook that lets the cookie store revoke sessions ("log out everywhere").
///
/// A sealed cookie cannot be deleted from the server, but it can be refused: the hook keeps, per
/// owner, a time before which that owner's cookies are void. [`CookieStore`] calls
/// [`revoked_before`](Revocation::revoked_before) when it opens a live session that has an owner,
/// and refuses the cookie (as [`Arrival::Expired`](crate::Arrival::Expired)) when it was sealed
/// before that time. [`Session::revoke_owner`](crate::Session::revoke_owner) calls
/// [`revoke`](Revocation::revoke) with the layer's current time. A rewritten cookie keeps the time
/// its request opened the old one (see the limitations below), so "sealed before" means "not
/// opened by a request that started since"; a session in use on another device is refused on its
/// next request and gets a fresh session.
///
/// Keep the time where the app keeps its users (a `sessions_valid_after` column, a Redis key), so
/// that it is shared by every process and survives restarts. [`MemoryRevocations`] keeps it in
/// process memory, for tests and single-process apps.
///
/// A failing hook fails the request closed: the layer answers with its store-error response, it
/// never lets the cookie through.
///
/// # Limitations
///
/// - A request of a revoked session that is already in flight when the revocation lands (it
///   opened its cookie before) still answers, with its changes; the cookie it writes is sealed
///   as of when it opened the old one, so the revocation refuses it too, whether or not it
///   rotates the ID. Not when that request sets an owner other than the cookie's (a login) or
///   starts anew after `destroy` (which [`revoke_owner`](crate::Session::revoke_owner) does to
///   the current session, so call `set_owner` again after it to keep this browser signed in): those
///   are sealed when written, so a login, or a password change that revokes the owner's
///   sessions and signs this browser in again, keeps its own.
/// - Sealing times come from each server's clock: with clocks `s` seconds apart, a cookie sealed
///   up to `s` seconds before the revocation may pass, and one sealed up to `s` seconds after it
///   (a login right after "log out everywhere", on a server whose clock is behind) may be
///   refused. Keep clocks synchronised.
///
/// # Performance impact
///
/// One call per request that loads a session with an owner. Cache it if the lookup is slow; a
/// cache delays a revocation by its lifetime.
///
/// # Examples
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use tower_satchel::time::OffsetDateTime;
/// use tower_satchel::{CookieStore, Key, Revocation, StoreError, StoreErrorKind};
///
/// /// Stands in for the app's user table.
/// #[derive(Default)]
/// struct Users {
///     sessions_valid_after: Mutex<HashMap<String, OffsetDateTime>>,
/// }
///
/// impl Revocation for Users {
///     async fn revoked_before(&self, owner: &str) -> Result<Option<OffsetDateTime>, StoreError> {
///         let map = self.sessions_valid_after.lock().map_err(|_| poisoned())?;
///         Ok(map.get(owner).copied())
///     }
///
///     async fn revoke(&self, owner: &str, now: OffsetDateTime) -> Result<(), StoreError> {
///         let mut map = self.sessions_valid_after.lock().map_err(|_| poisoned())?;
///         let at = map.entry(owner.to_owned()).or_insert(now);
///         *at = (*at).max(now);
///         Ok(())
///     }
/// }
///
/// fn poisoned() -> StoreError {
///     StoreError::new(StoreErrorKind::Backend, "the user table's lock is poisoned")
/// }
///
/// # fn main() -> Result<(), tower_satchel::ConfigError> {
/// let store = CookieStore::new(Key::generate()?).revocation(Users::default());
/// # let _ = store;
/// # Ok(()) }
/// ```
pub trait Revocation: Send + Sync + 'static {
    /// The time before which cookies of `owner` are revoked, if any.
    fn revoked_before(
        &self,
        owner: &str,
    ) -> impl Future<Output = Result<Option<OffsetDateTime>, StoreError>> + Send;

    /// Revokes every cookie of `owner` sealed before `now`. Keep the later of `now` and any time
    /// already stored, so that a late call never revives revoked cookies.
    fn revoke(
        &self,
        owner: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The object-safe twin of [`Revocation`].
trait DynRevocation: Send + Sync + 'static {
    fn revoked_before<'a>(
        &'a self,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Option<OffsetDateTime>, StoreError>>;
    fn revoke<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

impl<R: Revocation> DynRevocation for R {
    fn revoked_before<'a>(
        &'a self,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<Option<OffsetDateTime>, StoreError>> {
        Box::pin(Revocation::revoked_before(self, owner))
    }
    fn revoke<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Revocation::revoke(self, owner, now))
    }
}

/// A [`Revocation`] hook that keeps the times in process memory.
///
/// # Limitations
///
/// One process only, and the times are lost on restart, which **revives** revoked cookies that
/// have not reached their deadline. Use it for tests and single-process demos; keep the times in
/// the app's database otherwise. One entry per owner ever revoked.
///
/// Cheap to clone: clones share the times.
#[derive(Clone, Default)]
pub struct MemoryRevocations {
    times: Arc<Mutex<HashMap<String, OffsetDateTime>>>,
}

impl MemoryRevocations {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    fn times(&self) -> std::sync::MutexGuard<'_, HashMap<String, OffsetDateTime>> {
        // Every critical section leaves the map consistent.
        self.times
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for MemoryRevocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRevocations")
            .field("owners", &self.times().len())
            .finish()
    }
}

impl Revocation for MemoryRevocations {
    async fn revoked_before(&self, owner: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        Ok(self.times().get(owner).copied())
    }

    async fn revoke(&self, owner: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        let mut times = self.times();
        let at = times.entry(owner.to_owned()).or_insert(now);
        *at = (*at).max(now);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

/// The client-side session store: the whole session sealed with AES-256-GCM in the cookie.
///
/// Give it to [`SessionLayer::new`](crate::SessionLayer::new) like any other store. Cheap to clone.
///
/// # When to choose it
///
/// Nothing is stored on the server, so there is nothing to run, back up, share between processes
/// or clean up: any number of processes and machines that share the key serve every session. It
/// fits small sessions (a user ID, a CSRF token, a few flags) on sites that do not need to revoke a
/// single session on the server. Choose a server-side store instead when sessions are large, when
/// logging out must kill every copy of a cookie at once without an app-provided hook, or when
/// concurrent requests of one session write different keys (see [Limits](#limits)).
///
/// Switching to it is one line; handler code does not change:
///
/// ```no_run
/// use tower_satchel::{CookieStore, Key, SessionLayer};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // 32 random bytes, base64: `openssl rand -base64 32` or `head -c 32 /dev/urandom | base64`.
/// let key = Key::from_base64(&std::env::var("SESSION_KEY")?)?;
/// let layer = SessionLayer::new(CookieStore::new(key));
/// # let _ = layer;
/// # Ok(()) }
/// ```
///
/// # What is in the cookie
///
/// ```text
/// value  = base64url-no-pad( header | nonce | ciphertext | tag )
/// header = format version (1 byte, = 2) | flags (1 byte: bit 0 = deflated) | key id (4 bytes)
/// nonce  = 12 random bytes from the OS, fresh for every seal
/// plain  = sealed-at (i64 big-endian, Unix nanoseconds) | record, deflated if flagged
/// record = version (1 byte) | created-at, idle deadline, absolute deadline (i64 BE Unix seconds;
///          i64::MIN = none) | expiry (1 byte: 0 at session end, 1 on inactivity, 2 at a date-time)
///          and its seconds (i64 BE) | owner length + 1 (u32 BE; 0 = none) | owner (UTF-8)
///          | the data as a JSON object
/// aad    = "tower-satchel/cookie-store" | len(purpose) (u32 BE) | purpose | header | binding
/// binding = the cookie name, or "header:" and the header's name with the header transport
/// ```
///
/// The [`Record`] carries created-at, the idle and absolute deadlines, the expiry policy, the owner
/// and the data, so every open checks both deadlines from the sealed record, whatever `Max-Age`
/// the browser was given (SECURITY.md 14). The associated data binds the value to the cookie name
/// (to `header:` and the header's name with the layer's header transport: a colon cannot appear
/// in a cookie name), the store's [`purpose`](CookieStore::purpose) and the format version (the
/// header is in it), so a value moved to another cookie, header or app is rejected (SECURITY.md
/// 22), and so is one moved between a header and a cookie of the same name.
///
/// # Checks on input
///
/// In this order, each step only on what passed the previous one (SECURITY.md 24):
///
/// 1. **size**: name + value at most [`max_size`](CookieStore::max_size) (4096 by default), before
///    any decoding;
/// 2. **decode**: strict unpadded base64url (no padding, no trailing bits), then the header
///    (format version, known flags, a key id in the ring);
/// 3. **authenticate**: AES-256-GCM with the key of that id; any flipped bit fails here;
/// 4. **inflate**, only if the authenticated header says so, reading at most
///    [`max_inflated_size`](CookieStore::max_inflated_size) bytes;
/// 5. **deserialize**: plain data only (the binary metadata, then the values as JSON through
///    serde);
/// 6. **deadlines**, then the [revocation hook](Revocation) if one is set and the session has an
///    owner.
///
/// A value that fails steps 1–5 opens as [`Arrival::Invalid`](crate::Arrival::Invalid) (logged at
/// `debug` with the [`Rejection`], never the value); one that fails step 6 as
/// [`Arrival::Expired`](crate::Arrival::Expired). Either way the request gets a fresh session.
///
/// # Keys
///
/// A [`Key`] is at least 32 bytes of secret (shorter keys are refused, SECURITY.md 26). The
/// AES-256 key is derived from it with HKDF-SHA256 (RFC 5869; no salt; info
/// `"tower-satchel/cookie-store v1 aes-256-gcm"`), and a non-secret 32-bit key id with info
/// `"tower-satchel/cookie-store v1 key id"`; the id travels in the header so that opening picks
/// the right key. Generate a key with `openssl rand -base64 32` (or
/// `head -c 32 /dev/urandom | base64`) and pass it in through the environment or a secret
/// manager; [`Key::generate`] makes a random one for tests and demos (sessions then die with the
/// process). Keys never appear in `Debug` output or logs.
///
/// A [`KeyRing`] holds the primary key, which seals, and previous keys, which only open. A cookie
/// opened under a previous key is re-sealed under the primary on the same response, even when the
/// handler changed nothing (SECURITY.md 23). To rotate across several servers:
///
/// 1. deploy the new key as a *previous* key everywhere (every server can now open it);
/// 2. deploy it as the primary, with the old key as previous (cookies move over as they are used;
///    while some servers still have the old key as primary, a visitor whose requests reach both
///    kinds has the cookie re-sealed back and forth, one `Set-Cookie` per request, until the
///    deployment is complete, so keep this step short);
/// 3. once the longest session lifetime has passed (the layer's absolute lifetime), remove the old
///    key: cookies still sealed under it are then rejected.
///
/// Rotate at least every 2³² seals per key: the nonce is 96 random bits, and NIST SP 800-38D bounds
/// random-nonce AES-GCM to 2³² messages per key (at a sustained 1,000 writes per second, about 50
/// days). Writes are handler changes, throttled touches and re-seals; read-only requests between
/// touches seal nothing.
///
/// # Limits
///
/// - **Size.** Browsers drop cookies over 4096 bytes (name + value) silently. A session that would
///   seal larger fails the request with a [`StoreError`] of kind
///   [`StoreErrorKind::TooLarge`](crate::StoreErrorKind::TooLarge): the response becomes a 500 (or
///   what the layer's [error handler](crate::SessionLayerBuilder::error_handler) renders, with the
///   error in the response's extensions), no `Set-Cookie` is sent, and the browser keeps its
///   previous cookie (except after [`destroy`](crate::Session::destroy): a logout whose new values
///   do not fit still sends the removal cookie). The sealed form costs 42 bytes (header, nonce,
///   sealing time, tag), 38 bytes of metadata (deadlines and policy), the owner and the data as
///   JSON, all grown by a third by base64: with the cookie name `id`, about 2.9 KB of session data
///   as JSON fit. A counter session (`{"visits":1}`) seals to a 123-character value. Test for it
///   with the largest session your app builds ([below](#testing-the-size-of-your-sessions)); if it
///   gets close, keep IDs rather than objects in the session, turn on
///   [compression](CookieStore::compression_level), or move to a server-side store.
/// - **No server-side revocation of one session.** [`Session::destroy`](crate::Session::destroy)
///   and [`Session::cycle_id`](crate::Session::cycle_id) only replace the cookie in *this*
///   browser, with or without a hook: **a copied cookie stays valid until its idle or absolute
///   deadline**. A [revocation hook](Revocation) ([`CookieStore::revocation`]) refuses every
///   cookie of an owner sealed before [`Session::revoke_owner`](crate::Session::revoke_owner)
///   (every device logged out); without one, `revoke_owner` fails with
///   [`StoreErrorKind::Unsupported`](crate::StoreErrorKind::Unsupported). Keep the idle timeout
///   and absolute lifetime short.
/// - **Last writer wins.** Every response carries the whole session; when two concurrent requests of
///   one session write, the cookie the browser stores last wins, including writes to different
///   keys.
/// - **No ID.** [`Session::id`](crate::Session::id) is always `None`.
///
/// # Testing the size of your sessions
///
/// Seal the largest session your app can build, in a unit test, with the cookie name your layer
/// uses:
///
/// ```
/// use tower_satchel::time::{Duration, OffsetDateTime};
/// use tower_satchel::{CookieStore, Expiry, Key, Record, StoreErrorKind};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = CookieStore::new(Key::generate()?);
/// let now = OffsetDateTime::now_utc();
/// let day = Duration::days(1);
/// let mut record = Record::new(now, now + day, Some(now + 30 * day), Expiry::OnInactivity(day));
/// record.data.insert("cart".into(), serde_json::json!(vec!["item-0123456789"; 100]));
/// assert!(store.seal("id", &record, now).is_ok(), "100 cart items fit");
///
/// record.data.insert("cart".into(), serde_json::json!(vec!["item-0123456789"; 200]));
/// let sealed = store.seal("id", &record, now);
/// assert!(matches!(sealed, Err(e) if e.kind() == StoreErrorKind::TooLarge), "200 do not");
/// # Ok(()) }
/// ```
///
/// # Performance impact
///
/// No I/O, but CPU work on every request that loads the session (open) and every one that writes
/// it (seal): on a 2-core Intel Xeon VM (AES-NI), about 1.0 µs to open and 0.8 µs to seal a
/// 100-byte session, 7.7 µs and 8.2 µs at 3 KB; compression adds about 1 to 10 µs to each (the
/// same code measured about half these times on an AMD EPYC machine). A small seal is mostly
/// AES-GCM, base64 and the fork check of the nonce pool; the 12 bytes of nonce come from a
/// per-thread pool of OS randomness, refilled a kilobyte at a time. Measure with
/// `cargo bench --bench cookie_store --features cookie-store`. Unlike a server-side store, whose
/// cookie only changes on login, every write also sends a `Set-Cookie` of the whole session, and
/// every request carries it. Opening a session with an owner also awaits the revocation hook, when
/// one is set.
///
/// # More settings
///
/// ```
/// use tower_satchel::{CookieStore, Key, MemoryRevocations, SessionLayer};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = CookieStore::new(Key::generate()?)
///     .purpose("shop")
///     .compression_level(6)
///     .revocation(MemoryRevocations::new());
/// let layer = SessionLayer::builder(store).cookie_name("__Host-shop").build()?;
/// # let _ = layer;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CookieStore {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    ring: KeyRing,
    purpose: String,
    /// `AAD_LABEL | len(purpose) | purpose`: the fixed start of every associated data.
    aad_prefix: Vec<u8>,
    max_size: usize,
    max_inflated: usize,
    compression: Option<flate2::Compression>,
    revocation: Option<Arc<dyn DynRevocation>>,
}

/// What [`CookieStore::open`] found in a cookie value.
#[derive(Debug)]
#[non_exhaustive]
pub enum Unsealed {
    /// Authentic and live.
    Live {
        /// The session.
        record: Record,
        /// Sealed under a previous key of the ring: re-seal it under the primary.
        stale_key: bool,
    },
    /// Authentic, but past its idle or absolute deadline.
    Expired,
    /// Authentic and within its deadlines, but revoked by the [`Revocation`] hook.
    Revoked,
    /// Not a value this store sealed (or no longer opens), for the reason given.
    Invalid(Rejection),
}

/// Why [`CookieStore::open`] refused a value; listed in the order the checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Name and value together exceed the size limit (checked before decoding).
    TooLong,
    /// Not strict unpadded base64url.
    NotBase64,
    /// Too short to hold a header, nonce, sealing time and tag.
    Truncated,
    /// An unknown format version or flag.
    UnknownFormat,
    /// Sealed under a key that is not in the ring (removed, or never ours).
    UnknownKey,
    /// The tag did not verify: tampered, forged, or sealed for another cookie name or purpose.
    Authentication,
    /// Authentic, but inflates beyond [`CookieStore::max_inflated_size`].
    InflatedTooLarge,
    /// Authentic, but its content could not be decoded (a record format newer than this crate).
    Undecodable,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rejection::TooLong => "too long",
            Rejection::NotBase64 => "not base64url",
            Rejection::Truncated => "truncated",
            Rejection::UnknownFormat => "unknown format",
            Rejection::UnknownKey => "unknown key",
            Rejection::Authentication => "failed authentication",
            Rejection::InflatedTooLarge => "inflates beyond the cap",
            Rejection::Undecodable => "undecodable content",
        })
    }
}

/// Room for the associated data on the stack: the label and a purpose of up to 64 bytes, the
/// header and a cookie name of up to 64 bytes.
const AAD_INLINE: usize = 192;

/// The associated data of one seal or open, on the stack unless it is unusually long.
enum Aad {
    Inline([u8; AAD_INLINE], usize),
    Heap(Vec<u8>),
}

impl Aad {
    fn as_slice(&self) -> &[u8] {
        match self {
            Aad::Inline(bytes, len) => bytes.get(..*len).unwrap_or(&[]),
            Aad::Heap(bytes) => bytes,
        }
    }
}

fn aad_prefix(purpose: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(AAD_LABEL.len() + 4 + purpose.len());
    prefix.extend_from_slice(AAD_LABEL);
    let len = u32::try_from(purpose.len()).unwrap_or(u32::MAX);
    prefix.extend_from_slice(&len.to_be_bytes());
    prefix.extend_from_slice(purpose.as_bytes());
    prefix
}

/// Length of the unpadded base64 form of `n` bytes.
fn base64_len(n: usize) -> usize {
    n / 3 * 4 + [0, 2, 3][n % 3]
}

thread_local! {
    /// A compressor per thread, reused: a fresh one allocates and clears about 300 KB of state,
    /// which costs far more than compressing a cookie.
    static DEFLATE: RefCell<Option<(u32, flate2::Compress)>> = const { RefCell::new(None) };
    /// A decompressor per thread, reused for the same reason (about 40 KB of state).
    static INFLATE: RefCell<Option<flate2::Decompress>> = const { RefCell::new(None) };
}

/// Raw deflate of `input`, or `None` if it does not come out smaller.
fn deflate(input: &[u8], level: flate2::Compression) -> Option<Vec<u8>> {
    DEFLATE.with(|cell| {
        let mut compressor = match cell.borrow_mut().take() {
            Some((cached, compressor)) if cached == level.level() => compressor,
            _ => flate2::Compress::new(level, false),
        };
        // Room for no more than the input: a longer result is not used anyway.
        let mut out = Vec::with_capacity(input.len());
        let status = compressor.compress_vec(input, &mut out, flate2::FlushCompress::Finish);
        compressor.reset();
        *cell.borrow_mut() = Some((level.level(), compressor));
        matches!(status, Ok(flate2::Status::StreamEnd)).then_some(out)
    })
}

/// Inflates a raw deflate stream, never holding more than `cap` + 1 bytes of output.
fn inflate(input: &[u8], cap: usize) -> Result<Vec<u8>, Rejection> {
    INFLATE.with(|cell| {
        let mut decompressor = cell
            .borrow_mut()
            .take()
            .unwrap_or_else(|| flate2::Decompress::new(false));
        let result = inflate_with(&mut decompressor, input, cap);
        decompressor.reset(false);
        *cell.borrow_mut() = Some(decompressor);
        result
    })
}

fn inflate_with(
    decompressor: &mut flate2::Decompress,
    input: &[u8],
    cap: usize,
) -> Result<Vec<u8>, Rejection> {
    let limit = cap.saturating_add(1);
    let mut out = Vec::with_capacity(input.len().saturating_mul(4).max(256).min(limit));
    loop {
        let (consumed, produced) = (decompressor.total_in(), decompressor.total_out());
        let rest = usize::try_from(consumed)
            .ok()
            .and_then(|at| input.get(at..))
            .unwrap_or(&[]);
        let status = decompressor
            .decompress_vec(rest, &mut out, flate2::FlushDecompress::None)
            .map_err(|_| Rejection::Undecodable)?;
        if out.len() > cap {
            return Err(Rejection::InflatedTooLarge);
        }
        if status == flate2::Status::StreamEnd {
            return Ok(out);
        }
        if out.len() == out.capacity() {
            if out.len() >= limit {
                return Err(Rejection::InflatedTooLarge);
            }
            let grow = out.len().saturating_mul(2).min(limit) - out.len();
            out.reserve_exact(grow.max(1));
        } else if decompressor.total_in() == consumed && decompressor.total_out() == produced {
            // No progress with room to spare: the stream is truncated.
            return Err(Rejection::Undecodable);
        }
    }
}

/// Length of the record's binary metadata: version, three times, expiry tag and seconds, owner
/// length.
const META_LEN: usize = 1 + 8 + 8 + 8 + 1 + 8 + 4;

/// Writes `record` in the sealed form: fixed-size metadata, then the owner, then the data as JSON.
///
/// ```text
/// version (u8) | created-at | idle deadline | absolute deadline (i64::MIN = none)
/// | expiry (u8: 0 at session end, 1 on inactivity, 2 at a date-time) | its seconds (i64)
/// | owner length + 1 (u32; 0 = no owner) | owner (UTF-8) | data (a JSON object)
/// ```
///
/// Times are whole Unix seconds and every integer is big-endian: what the JSON form (as in
/// [`Record::encode`]) kept, in 38 bytes instead of about 90. The two deadlines and an
/// inactivity window are rounded up to the second, the others down: the cookie's `Max-Age`, worked out from the exact deadline,
/// must not outlast the deadline sealed in it (SECURITY.md 15), which rounding down would let it
/// do by the fraction cut off.
fn encode_record(record: &Record, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    out.push(u8::try_from(record.version).unwrap_or(u8::MAX));
    out.extend_from_slice(&record.created_at.unix_timestamp().to_be_bytes());
    out.extend_from_slice(&deadline_seconds(record.idle_deadline).to_be_bytes());
    let absolute = record.absolute_deadline.map_or(i64::MIN, deadline_seconds);
    out.extend_from_slice(&absolute.to_be_bytes());
    let (tag, seconds) = match record.expiry {
        Expiry::OnSessionEnd => (0u8, 0),
        Expiry::OnInactivity(window) => (1, crate::expiry::window_seconds(window)),
        Expiry::AtDateTime(at) => (2, at.unix_timestamp()),
    };
    out.push(tag);
    out.extend_from_slice(&seconds.to_be_bytes());
    match &record.owner {
        Some(owner) => {
            // An owner of 4 GiB cannot fit a cookie; the size check refuses it right after.
            let len = u32::try_from(owner.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.saturating_add(1).to_be_bytes());
            out.extend_from_slice(owner.as_bytes());
        }
        None => out.extend_from_slice(&0u32.to_be_bytes()),
    }
    serde_json::to_writer(out, &record.data)
}

/// Reads what [`encode_record`] wrote. Any inconsistency (short input, a time out of range, an
/// unknown expiry tag, an owner that is not UTF-8, a data part that is not one JSON object, a
/// record version newer than this crate) is [`Rejection::Undecodable`].
fn decode_record(bytes: &[u8]) -> Result<Record, Rejection> {
    let (meta, rest) = bytes
        .split_first_chunk::<META_LEN>()
        .ok_or(Rejection::Undecodable)?;
    let int = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&meta[at..at + 8]);
        i64::from_be_bytes(word)
    };
    let time = |at: usize| {
        OffsetDateTime::from_unix_timestamp(int(at)).map_err(|_| Rejection::Undecodable)
    };
    let version = u32::from(meta[0]);
    if version > RECORD_VERSION {
        return Err(Rejection::Undecodable);
    }
    let created_at = time(1)?;
    let idle_deadline = time(9)?;
    let absolute_deadline = match int(17) {
        i64::MIN => None,
        _ => Some(time(17)?),
    };
    let expiry = match meta[25] {
        0 => Expiry::OnSessionEnd,
        1 => Expiry::OnInactivity(Duration::seconds(int(26))),
        2 => Expiry::AtDateTime(time(26)?),
        _ => return Err(Rejection::Undecodable),
    };
    let owner_len = u32::from_be_bytes([meta[34], meta[35], meta[36], meta[37]]);
    let (owner, data) = match usize::try_from(owner_len).map_err(|_| Rejection::Undecodable)? {
        0 => (None, rest),
        len => {
            let (owner, data) = rest
                .split_at_checked(len - 1)
                .ok_or(Rejection::Undecodable)?;
            let owner = std::str::from_utf8(owner).map_err(|_| Rejection::Undecodable)?;
            (Some(owner.to_owned()), data)
        }
    };
    let mut record = Record::new(created_at, idle_deadline, absolute_deadline, expiry);
    record.version = version;
    record.owner = owner;
    record.data = serde_json::from_slice(data).map_err(|_| Rejection::Undecodable)?;
    Ok(record)
}

fn sealed_at_nanos(now: OffsetDateTime) -> i64 {
    i64::try_from(now.unix_timestamp_nanos()).unwrap_or(if now.unix_timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

impl CookieStore {
    /// The browser's limit for one cookie, name and value together (RFC 6265bis).
    pub const MAX_SIZE: usize = 4096;

    /// A store sealing with `keys` (a [`Key`] or a [`KeyRing`]), purpose `"session"`, the 4096-byte
    /// limit, no compression and no revocation hook.
    pub fn new(keys: impl Into<KeyRing>) -> Self {
        Self {
            inner: Arc::new(Inner {
                ring: keys.into(),
                purpose: DEFAULT_PURPOSE.to_owned(),
                aad_prefix: aad_prefix(DEFAULT_PURPOSE),
                max_size: Self::MAX_SIZE,
                max_inflated: DEFAULT_MAX_INFLATED,
                compression: None,
                revocation: None,
            }),
        }
    }

    fn update(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        f(Arc::make_mut(&mut self.inner));
        self
    }

    /// Binds cookies to a purpose, so that apps (or layers of one app) sharing a key cannot open
    /// each other's cookies. Default: `"session"`.
    #[must_use]
    pub fn purpose(self, purpose: impl Into<String>) -> Self {
        let purpose = purpose.into();
        self.update(|inner| {
            inner.aad_prefix = aad_prefix(&purpose);
            inner.purpose = purpose;
        })
    }

    /// Lowers the size limit for a cookie (name + value), e.g. to leave room for other cookies
    /// under a per-domain budget. Values above [`CookieStore::MAX_SIZE`] are clamped to it, since
    /// browsers drop larger cookies. Default: 4096.
    #[must_use]
    pub fn max_size(self, bytes: usize) -> Self {
        self.update(|inner| inner.max_size = bytes.min(Self::MAX_SIZE))
    }

    /// Compresses the sealed record with raw deflate at `level` (1 = fastest, 9 = smallest; higher
    /// values are clamped to 9); 0 turns compression off. A record is stored compressed only when
    /// that makes it smaller. Default: off.
    ///
    /// # Security
    ///
    /// Compression makes the cookie's length depend on the session's content. If an attacker can
    /// put chosen text into a session next to a secret and watch the cookie's length, they can
    /// guess the secret a character at a time (as in CRIME). Leave it off for such sessions.
    #[must_use]
    pub fn compression_level(self, level: u32) -> Self {
        self.update(|inner| {
            inner.compression = (level > 0).then(|| flate2::Compression::new(level.min(9)));
        })
    }

    /// The most bytes a compressed cookie may inflate to; beyond it the cookie is rejected
    /// unread. A session larger than this is sealed uncompressed (the cap does not apply to it,
    /// but the cookie's size limit does). Default: 64 KiB.
    #[must_use]
    pub fn max_inflated_size(self, bytes: usize) -> Self {
        self.update(|inner| inner.max_inflated = bytes)
    }

    /// Sets the app's [`Revocation`] hook, which makes
    /// [`Session::revoke_owner`](crate::Session::revoke_owner) work with this store. Default: none
    /// (a copied cookie stays valid until its deadline).
    #[must_use]
    pub fn revocation(self, hook: impl Revocation) -> Self {
        let hook: Arc<dyn DynRevocation> = Arc::new(hook);
        self.update(|inner| inner.revocation = Some(hook))
    }

    /// The keys.
    pub fn keys(&self) -> &KeyRing {
        &self.inner.ring
    }

    fn aad(&self, header: &[u8], cookie_name: &str) -> Aad {
        let parts = [&self.inner.aad_prefix[..], header, cookie_name.as_bytes()];
        let len = parts.iter().map(|p| p.len()).sum();
        let mut inline = [0u8; AAD_INLINE];
        match inline.get_mut(..len) {
            Some(mut rest) => {
                for part in parts {
                    let (head, tail) = rest.split_at_mut(part.len());
                    head.copy_from_slice(part);
                    rest = tail;
                }
                Aad::Inline(inline, len)
            }
            None => Aad::Heap(parts.concat()),
        }
    }

    /// Seals `record` into a value for the cookie `cookie_name`, under the primary key, as of
    /// `now`: the sealing time a [`Revocation`] hook compares. The layer passes the time it opened
    /// the cookie the session came from (or the time of the write, for a new session, a login to an
    /// owner other than the cookie's, or a session started after `destroy`).
    /// The layer calls it; it is public for tests, tools and benchmarks.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::TooLarge`](crate::StoreErrorKind::TooLarge) when name and value would
    /// exceed the size limit;
    /// [`StoreErrorKind::Encoding`](crate::StoreErrorKind::Encoding) if the record cannot be
    /// serialized; [`StoreErrorKind::Backend`](crate::StoreErrorKind::Backend) if the OS random
    /// source fails.
    pub fn seal(
        &self,
        cookie_name: &str,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<String, StoreError> {
        let inner = &*self.inner;
        let key = inner.ring.primary();
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[FORMAT_VERSION, 0]);
        buf.extend_from_slice(&key.id.0.to_be_bytes());
        buf.extend_from_slice(&[0; NONCE_LEN]);
        buf.extend_from_slice(&sealed_at_nanos(now).to_be_bytes());
        encode_record(record, &mut buf).map_err(|e| {
            StoreError::new(StoreErrorKind::Encoding, "the session cannot be encoded")
                .with_source(e)
        })?;
        let record_len = buf.len() - RECORD_START;
        // A record over the inflate cap is not compressed: it could not be opened. Sealed as it
        // is, it may still fit the cookie (the size check below decides).
        if let Some(level) = inner.compression
            && record_len <= inner.max_inflated
            && let Some(compressed) = deflate(&buf[RECORD_START..], level)
            && compressed.len() < record_len
        {
            buf.truncate(RECORD_START);
            buf.extend_from_slice(&compressed);
            buf[1] |= FLAG_DEFLATE;
        }
        let size = cookie_name.len() + base64_len(buf.len() + TAG_LEN);
        if size > inner.max_size {
            return Err(StoreError::new(
                StoreErrorKind::TooLarge,
                format!(
                    "the sealed session cookie would be {size} bytes (name + value), over the \
                     limit of {}; keep less in the session or use a server-side store",
                    inner.max_size
                ),
            ));
        }
        let mut nonce = [0u8; NONCE_LEN];
        crate::random::fill(&mut nonce).map_err(|e| {
            StoreError::new(StoreErrorKind::Backend, "no OS randomness for a nonce").with_source(e)
        })?;
        buf[HEADER_LEN..BODY_START].copy_from_slice(&nonce);
        let aad = self.aad(&buf[..HEADER_LEN], cookie_name);
        let tag = key
            .cipher
            .encrypt_in_place_detached(
                &Nonce::<Aes256Gcm>::from(nonce),
                aad.as_slice(),
                &mut buf[BODY_START..],
            )
            .map_err(|_| {
                // Only for inputs of 64 GiB; a cookie is never near that.
                StoreError::new(StoreErrorKind::Encoding, "the session cannot be encrypted")
            })?;
        buf.extend_from_slice(&tag);
        // `encode_string` into an exact buffer: `encode` would zero a buffer first.
        let mut out = String::with_capacity(base64_len(buf.len()));
        URL_SAFE_NO_PAD.encode_string(&buf, &mut out);
        Ok(out)
    }

    /// Opens a value sent in the cookie `cookie_name` at `now`: size, decoding, authentication,
    /// bounded inflation and deserialization in that order, then the deadlines, then the
    /// revocation hook (for a session with an owner). The layer calls it; it is public for tests,
    /// tools and benchmarks.
    ///
    /// # Errors
    ///
    /// Only when the [`Revocation`] hook fails. Bad input is never an error: it is
    /// [`Unsealed::Invalid`].
    pub async fn open(
        &self,
        cookie_name: &str,
        value: &str,
        now: OffsetDateTime,
    ) -> Result<Unsealed, StoreError> {
        let (record, sealed_at, stale_key) = match self.unseal(cookie_name, value) {
            Ok(opened) => opened,
            Err(rejection) => return Ok(Unsealed::Invalid(rejection)),
        };
        if !record.is_live(now) {
            return Ok(Unsealed::Expired);
        }
        if let (Some(owner), Some(hook)) = (&record.owner, &self.inner.revocation)
            && let Some(before) = hook.revoked_before(owner).await?
            && sealed_at < before
        {
            return Ok(Unsealed::Revoked);
        }
        Ok(Unsealed::Live { record, stale_key })
    }

    /// Steps 1–5 of the checks: the record, when it was sealed, and whether under a previous key.
    fn unseal(
        &self,
        cookie_name: &str,
        value: &str,
    ) -> Result<(Record, OffsetDateTime, bool), Rejection> {
        let inner = &*self.inner;
        // 1. Size, before anything else looks at the value.
        if cookie_name.len().saturating_add(value.len()) > inner.max_size {
            return Err(Rejection::TooLong);
        }
        // 2. Decode, then read the header.
        let mut buf = URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| Rejection::NotBase64)?;
        if buf.len() < MIN_SEALED_LEN {
            return Err(Rejection::Truncated);
        }
        let flags = buf[1];
        if buf[0] != FORMAT_VERSION || flags & !FLAG_DEFLATE != 0 {
            return Err(Rejection::UnknownFormat);
        }
        let id = KeyId(u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]));
        // 3. Authenticate (and decrypt) with the key of that id.
        let aad = self.aad(&buf[..HEADER_LEN], cookie_name);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[HEADER_LEN..BODY_START]);
        let nonce = Nonce::<Aes256Gcm>::from(nonce);
        let tag_at = buf.len() - TAG_LEN;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&buf[tag_at..]);
        let tag = Tag::<Aes256Gcm>::from(tag);
        let mut known = false;
        let mut opened_with = None;
        for (index, key) in inner.ring.keys.iter().enumerate() {
            if key.id != id {
                continue;
            }
            known = true;
            // A failed check leaves the buffer untouched, so the next candidate sees the
            // ciphertext.
            if key
                .cipher
                .decrypt_in_place_detached(
                    &nonce,
                    aad.as_slice(),
                    &mut buf[BODY_START..tag_at],
                    &tag,
                )
                .is_ok()
            {
                opened_with = Some(index);
                break;
            }
        }
        let Some(index) = opened_with else {
            return Err(if known {
                Rejection::Authentication
            } else {
                Rejection::UnknownKey
            });
        };
        let plain = &buf[BODY_START..tag_at];
        let (sealed_at, body) = plain.split_at(SEALED_AT_LEN);
        let mut sealed_at_bytes = [0u8; SEALED_AT_LEN];
        sealed_at_bytes.copy_from_slice(sealed_at);
        let sealed_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(i64::from_be_bytes(
            sealed_at_bytes,
        )))
        .map_err(|_| Rejection::Undecodable)?;
        // 4. Inflate, bounded, only what authenticated as deflated.
        let inflated;
        let encoded = if flags & FLAG_DEFLATE != 0 {
            inflated = inflate(body, inner.max_inflated)?;
            &inflated[..]
        } else {
            body
        };
        // 5. Deserialize: plain data only.
        let record = decode_record(encoded)?;
        Ok((record, sealed_at, index != 0))
    }
}

impl fmt::Debug for CookieStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("CookieStore")
            .field("keys", &inner.ring)
            .field("purpose", &inner.purpose)
            .field("max_size", &inner.max_size)
            .field("max_inflated_size", &inner.max_inflated)
            .field("compression", &inner.compression.map(|c| c.level()))
            .field("revocation", &inner.revocation.is_some())
            .finish()
    }
}

impl IntoBackend for CookieStore {
    fn into_backend(self) -> Backend {
        Backend(Kind::Client(Arc::new(self)))
    }
}

impl ClientStore for CookieStore {
    fn plausible(&self, value: &str) -> bool {
        // Unpadded base64url of at least `MIN_SEALED_LEN` bytes.
        value.len() >= base64_len(MIN_SEALED_LEN) && crate::id::is_base64url(value)
    }

    fn open<'a>(
        &'a self,
        cookie_name: &'a str,
        value: &'a str,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Opened, StoreError>> {
        Box::pin(async move {
            Ok(
                match CookieStore::open(self, cookie_name, value, now).await? {
                    Unsealed::Live { record, stale_key } => Opened::Live {
                        record,
                        reseal: stale_key,
                    },
                    Unsealed::Expired => Opened::Expired,
                    Unsealed::Revoked => {
                        tracing::debug!("sealed session revoked by the revocation hook");
                        Opened::Expired
                    }
                    Unsealed::Invalid(rejection) => {
                        tracing::debug!(%rejection, "sealed session cookie rejected");
                        Opened::Invalid
                    }
                },
            )
        })
    }

    fn seal(
        &self,
        cookie_name: &str,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<String, StoreError> {
        CookieStore::seal(self, cookie_name, record, now)
    }

    fn revoke_owner<'a>(
        &'a self,
        owner: &'a str,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            match &self.inner.revocation {
                // Nothing is deleted: every cookie of the owner is refused from now on, and their
                // number is unknown to the server.
                Some(hook) => hook.revoke(owner, now).await.map(|()| 0),
                None => Err(StoreError::new(
                    StoreErrorKind::Unsupported,
                    "the cookie store cannot revoke sessions without a revocation hook \
                     (CookieStore::revocation); a copied cookie stays valid until its deadline",
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::Expiry;
    use serde_json::json;
    use std::io::Write as _;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use time::Duration;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn record() -> Record {
        let mut record = Record::new(
            t0(),
            t0() + Duration::hours(1),
            Some(t0() + Duration::days(1)),
            Expiry::OnInactivity(Duration::hours(1)),
        );
        record.data.insert("n".into(), json!(1));
        record
    }

    fn store() -> CookieStore {
        CookieStore::new(Key::from_bytes(&[9u8; 32]).unwrap())
    }

    /// Polls `open` once: without a revocation hook it never waits.
    fn open_now(store: &CookieStore, name: &str, value: &str) -> Unsealed {
        let mut future = pin!(store.open(name, value, t0()));
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(result) => result.unwrap(),
            Poll::Pending => panic!("open without a hook must not wait"),
        }
    }

    /// Seals arbitrary plaintext (after sealed-at) with the store's primary key, as a forger who
    /// holds the key could: for the checks that come after authentication.
    fn seal_raw(store: &CookieStore, name: &str, flags: u8, body: &[u8]) -> String {
        let key = store.keys().primary();
        let mut buf = vec![FORMAT_VERSION, flags];
        buf.extend_from_slice(&key.id.0.to_be_bytes());
        buf.extend_from_slice(&[3u8; NONCE_LEN]);
        buf.extend_from_slice(&sealed_at_nanos(t0()).to_be_bytes());
        buf.extend_from_slice(body);
        let aad = store.aad(&buf[..HEADER_LEN], name);
        let tag = key
            .cipher
            .encrypt_in_place_detached(
                &Nonce::<Aes256Gcm>::from([3u8; NONCE_LEN]),
                aad.as_slice(),
                &mut buf[BODY_START..],
            )
            .unwrap();
        buf.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(&buf)
    }

    #[test]
    fn long_purposes_and_cookie_names_bind_like_short_ones() {
        // Over the inline room for the associated data: built on the heap instead.
        let store = store().purpose("p".repeat(200));
        let name = "n".repeat(100);
        assert!(matches!(store.aad(&[0; HEADER_LEN], &name), Aad::Heap(_)));
        let value = store.seal(&name, &record(), t0()).unwrap();
        assert!(matches!(
            open_now(&store, &name, &value),
            Unsealed::Live { .. }
        ));
        let other = format!("{name}x");
        assert!(matches!(
            open_now(&store, &other, &value),
            Unsealed::Invalid(Rejection::Authentication)
        ));
        let short = store.aad(&[0; HEADER_LEN], "id");
        assert!(
            matches!(short, Aad::Heap(_)),
            "the 200-byte purpose alone is too long"
        );
        let plain = CookieStore::new(store.keys().clone());
        assert!(matches!(plain.aad(&[0; HEADER_LEN], "id"), Aad::Inline(..)));
        assert_eq!(
            plain.aad(&[7; HEADER_LEN], "id").as_slice(),
            [&aad_prefix(DEFAULT_PURPOSE)[..], &[7; HEADER_LEN], b"id"].concat()
        );
    }

    #[test]
    fn sealed_records_open_unchanged() {
        let store = store();
        let value = store.seal("id", &record(), t0()).unwrap();
        match open_now(&store, "id", &value) {
            Unsealed::Live {
                record: opened,
                stale_key,
            } => {
                assert_eq!(opened, record());
                assert!(!stale_key);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn base64_len_matches_the_encoder() {
        for n in 0..100 {
            assert_eq!(base64_len(n), URL_SAFE_NO_PAD.encode(vec![0u8; n]).len());
        }
    }

    #[test]
    fn the_sealed_size_is_predicted_exactly() {
        // The limit check runs before encryption on the predicted size; it must be exact.
        let store = store();
        let value = store.seal("id", &record(), t0()).unwrap();
        let limited = store.clone().max_size("id".len() + value.len());
        assert!(limited.seal("id", &record(), t0()).is_ok());
        let limited = store.max_size("id".len() + value.len() - 1);
        let error = limited.seal("id", &record(), t0()).unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::TooLarge);
    }

    #[test]
    fn authentic_but_undecodable_content_is_rejected_after_authentication() {
        let store = store();
        let value = seal_raw(&store, "id", 0, b"not json");
        assert!(matches!(
            open_now(&store, "id", &value),
            Unsealed::Invalid(Rejection::Undecodable)
        ));
        // A corrupt deflate stream flagged as deflated.
        let value = seal_raw(&store, "id", FLAG_DEFLATE, b"\xff\xff\xff\xff");
        assert!(matches!(
            open_now(&store, "id", &value),
            Unsealed::Invalid(Rejection::Undecodable)
        ));
        // A newer record format.
        let mut newer = record();
        newer.version = crate::RECORD_VERSION + 1;
        let mut body = Vec::new();
        encode_record(&newer, &mut body).unwrap();
        let value = seal_raw(&store, "id", 0, &body);
        assert!(matches!(
            open_now(&store, "id", &value),
            Unsealed::Invalid(Rejection::Undecodable)
        ));
        // A record of the earlier format (JSON) under the current header.
        let value = seal_raw(&store, "id", 0, &record().encode().unwrap());
        assert!(matches!(
            open_now(&store, "id", &value),
            Unsealed::Invalid(Rejection::Undecodable)
        ));
    }

    #[test]
    fn deadlines_are_sealed_rounded_up_within_the_range_of_dates() {
        let mut record = record();
        record.idle_deadline = t0() + Duration::milliseconds(3_600_300);
        record.absolute_deadline = Some(t0() + Duration::nanoseconds(1));
        let mut out = Vec::new();
        encode_record(&record, &mut out).unwrap();
        let decoded = decode_record(&out).unwrap();
        assert_eq!(decoded.idle_deadline, t0() + Duration::seconds(3601));
        assert_eq!(decoded.absolute_deadline, Some(t0() + Duration::seconds(1)));
        assert_eq!(decoded.created_at, t0(), "other times are rounded down");
        // The last representable instant cannot round up: it stays within range and decodes.
        let last = time::PrimitiveDateTime::MAX.assume_utc();
        record.idle_deadline = last;
        record.absolute_deadline = Some(last);
        let mut out = Vec::new();
        encode_record(&record, &mut out).unwrap();
        let decoded = decode_record(&out).unwrap();
        assert_eq!(
            decoded.idle_deadline.unix_timestamp(),
            last.unix_timestamp()
        );
    }

    #[test]
    fn records_round_trip_through_the_binary_form() {
        let t = t0();
        let mut records = vec![record()];
        for (expiry, absolute, owner) in [
            (Expiry::OnSessionEnd, None, None),
            (
                Expiry::AtDateTime(t + Duration::days(2)),
                Some(t + Duration::days(3)),
                Some(""),
            ),
            (
                Expiry::OnInactivity(Duration::minutes(5)),
                None,
                Some("ünïcode\n=owner"),
            ),
        ] {
            let mut r = Record::new(t, t + Duration::hours(1), absolute, expiry);
            r.owner = owner.map(str::to_owned);
            r.data
                .insert("k".into(), json!({"nested": [1, "two", null]}));
            records.push(r);
        }
        for r in records {
            let mut bytes = Vec::new();
            encode_record(&r, &mut bytes).unwrap();
            assert_eq!(decode_record(&bytes).unwrap(), r);
            // Every truncation is refused, never misread.
            for cut in 0..bytes.len() {
                assert!(decode_record(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        // An inactivity window comes back in whole seconds, rounded up: half a second is one.
        for (window, back) in [(500, 1), (1500, 2)] {
            let expiry = Expiry::OnInactivity(Duration::milliseconds(window));
            let mut bytes = Vec::new();
            encode_record(
                &Record::new(t, t + Duration::hours(1), None, expiry),
                &mut bytes,
            )
            .unwrap();
            let decoded = decode_record(&bytes).unwrap();
            assert_eq!(
                decoded.expiry,
                Expiry::OnInactivity(Duration::seconds(back))
            );
        }
    }

    #[test]
    fn inconsistent_binary_records_are_undecodable() {
        let mut good = Vec::new();
        encode_record(&record(), &mut good).unwrap();
        let with = |at: usize, byte: u8| {
            let mut bytes = good.clone();
            bytes[at] = byte;
            decode_record(&bytes)
        };
        assert!(with(25, 3).is_err(), "unknown expiry tag");
        assert!(with(1, 0x7f).is_err(), "created-at out of range");
        assert!(with(34, 0x7f).is_err(), "owner longer than the record");
        assert!(with(META_LEN, b'[').is_err(), "data that is not an object");
        assert!(decode_record(&[]).is_err());
    }

    #[test]
    fn a_deflate_bomb_is_capped_while_inflating() {
        // 2 MB of zeros deflates to about 2 KB, small enough for a cookie; sealed with the key,
        // it authenticates, and the cap stops the inflation at 64 KiB + 1 byte.
        let store = store();
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 2_000_000]).unwrap();
        let bomb = encoder.finish().unwrap();
        let value = seal_raw(&store, "id", FLAG_DEFLATE, &bomb);
        assert!(value.len() < 4000, "{}", value.len());
        assert!(matches!(
            open_now(&store, "id", &value),
            Unsealed::Invalid(Rejection::InflatedTooLarge)
        ));
    }

    fn deflated(data: &[u8]) -> Vec<u8> {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn inflation_stops_at_the_cap() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let stream = deflated(&data);
        assert_eq!(inflate(&stream, 10_000).unwrap(), data);
        assert_eq!(inflate(&stream, 1_000_000).unwrap(), data);
        assert_eq!(inflate(&stream, 9_999), Err(Rejection::InflatedTooLarge));
        assert_eq!(inflate(&stream, 0), Err(Rejection::InflatedTooLarge));
        // Truncated and corrupt streams, then a good one: the reused state is reset each time.
        assert_eq!(
            inflate(&stream[..stream.len() / 2], 1_000_000),
            Err(Rejection::Undecodable)
        );
        assert!(inflate(b"\xff\xff\xff", 1_000_000).is_err());
        assert_eq!(inflate(&[], 1_000_000), Err(Rejection::Undecodable));
        assert_eq!(inflate(&stream, 10_000).unwrap(), data);
    }

    #[test]
    fn deflate_reuses_its_state_across_levels_and_inputs() {
        let a = b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".repeat(20);
        let b = b"the quick brown fox jumps over the lazy dog ".repeat(30);
        for level in [1, 9, 1, 6] {
            for input in [&a, &b] {
                let out = deflate(input, flate2::Compression::new(level)).unwrap();
                assert_eq!(inflate(&out, 1 << 20).unwrap(), *input);
            }
        }
        // Incompressible input does not come out smaller, so it is not used.
        let noise: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(
            deflate(&noise, flate2::Compression::best()).is_none_or(|out| out.len() >= noise.len())
        );
    }

    #[test]
    fn unknown_versions_and_flags_are_rejected() {
        let store = store();
        let value = store.seal("id", &record(), t0()).unwrap();
        for (at, byte) in [(0, 1u8), (0, 3), (0, 0), (1, 0b10), (1, 0x80)] {
            let mut raw = URL_SAFE_NO_PAD.decode(&value).unwrap();
            raw[at] = byte;
            let forged = URL_SAFE_NO_PAD.encode(&raw);
            assert!(
                matches!(
                    open_now(&store, "id", &forged),
                    Unsealed::Invalid(Rejection::UnknownFormat)
                ),
                "byte {at} = {byte}"
            );
        }
    }

    #[test]
    fn keys_derive_distinct_ids_and_ciphers() {
        let a = Key::from_bytes(&[1u8; 32]).unwrap();
        let b = Key::from_bytes(&[2u8; 32]).unwrap();
        let long = Key::from_bytes(&[1u8; 64]).unwrap();
        assert_ne!(a.id(), b.id());
        assert_ne!(a.id(), long.id());
        assert_eq!(a.id(), Key::from_bytes(&[1u8; 32]).unwrap().id());
    }

    proptest::proptest! {
        /// What follows authentication (inflate, then JSON) sees only our own output in practice;
        /// it must still take any bytes without a panic, as if the key had leaked.
        #[test]
        fn authentic_garbage_never_panics(
            deflated in proptest::prelude::any::<bool>(),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        ) {
            let store = store();
            let flags = if deflated { FLAG_DEFLATE } else { 0 };
            let value = seal_raw(&store, "id", flags, &body);
            let opened = open_now(&store, "id", &value);
            proptest::prop_assert!(
                matches!(
                    opened,
                    Unsealed::Invalid(Rejection::Undecodable | Rejection::InflatedTooLarge)
                ),
                "{:?}",
                opened
            );
        }

        #[test]
        fn any_record_round_trips(
            keys in proptest::collection::btree_map("[a-z]{1,8}", proptest::prelude::any::<i64>(), 0..8),
            owner in proptest::option::of("[a-z0-9@.]{1,20}"),
            compress in 0u32..10,
        ) {
            let store = store().compression_level(compress);
            let mut record = record();
            for (k, v) in keys {
                record.data.insert(k, json!(v));
            }
            record.owner = owner;
            let value = store.seal("id", &record, t0()).unwrap();
            match open_now(&store, "id", &value) {
                Unsealed::Live { record: opened, .. } => proptest::prop_assert_eq!(opened, record),
                other => proptest::prop_assert!(false, "{:?}", other),
            }
        }
    }
}
