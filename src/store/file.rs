//! [`FileStore`]: one file per session in a folder, safe across processes on one machine.
//!
//! The public documentation (layout, locking, durability, limits) is on the type; see
//! [`FileStore`].

use std::collections::HashSet;
use std::error::Error as StdError;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration as StdDuration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::Expiry;
use crate::id::SessionKey;
use crate::record::{ChangeSet, RECORD_VERSION, Record};
use crate::store::{Renamed, Saved, SessionInfo, SessionStore, StoreError, StoreErrorKind};

/// Folder (inside the store's folder) of the lock files.
const LOCK_DIR: &str = ".locks";
/// Folder (inside the store's folder) of the owner index.
const OWNER_DIR: &str = ".owners";
/// Name prefix of temporary files; followed by `<unix seconds>-<process id>-<counter>`.
const TEMP_PREFIX: &str = ".tmp-";
/// Hex digits of the key that name its lock file: 3 digits, 4096 lock files. Part of the on-disk
/// format: every process sharing a folder must agree on it.
const STRIPE_HEX: usize = 3;
const STRIPES: usize = 1 << (4 * STRIPE_HEX);
/// A temporary file older than this (by the system clock) was left by a crashed writer.
const STALE_TEMP: StdDuration = StdDuration::from_secs(3600);
/// Longest accepted file name prefix or suffix.
const MAX_AFFIX: usize = 32;
/// Default of [`FileStoreBuilder::lock_timeout`].
const DEFAULT_LOCK_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// Largest session file written or read: a larger session is refused when saved
/// ([`StoreErrorKind::TooLarge`]), and a larger file found at a session's path (put there by
/// hand) is a read error, never read whole into memory.
const MAX_FILE: u64 = 16 << 20;
/// Longest pause between two attempts to take a lock held elsewhere.
const MAX_LOCK_PAUSE: StdDuration = StdDuration::from_millis(5);

/// Sessions kept as one file per session in a folder: they survive restarts, and several processes
/// on one machine can share the folder.
///
/// The embedded, dependency-free store: no server to run, nothing to migrate. Choose it for a
/// single-machine deployment that must keep sessions across restarts and deploys (one process or a
/// few behind a local load balancer). Choose Redis or PostgreSQL instead when the app runs on
/// several machines, and the memory store when losing sessions on restart is fine.
///
/// # Examples
///
/// ```no_run
/// use tower_satchel::{CleanupConfig, FileStore, SessionLayer, spawn_cleanup};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = FileStore::new("/var/lib/myapp/sessions")?;
/// let cleanup = spawn_cleanup(store.clone(), CleanupConfig::default());
/// let layer = SessionLayer::new(store);
/// # let _ = (layer, cleanup);
/// # Ok(()) }
/// ```
///
/// # Layout
///
/// ```text
/// <folder>/                         mode 0700, created by FileStore::new
///   <prefix><key hex><suffix>       one session: the record as JSON, mode 0600
///   .tmp-<secs>-<pid>-<n>           a write in progress (renamed over the session file)
///   .locks/<3 hex digits>           4096 lock files, never deleted
///   .owners/<SHA-256 of prefix, suffix and owner>/<key hex>   owner index: one empty marker per session
/// ```
///
/// Anything else in the folder is ignored. The lock files must stay while any process uses the
/// folder (deleting one lets two writers in at once); everything else may be deleted by hand,
/// which deletes sessions.
///
/// Every name is built from the [`SessionKey`] (the SHA-256 of the session ID) or from a hash of
/// the owner: nothing that came from a client ever reaches a path (SECURITY.md 5), and a listing of
/// the folder yields no usable cookie (SECURITY.md 6). The prefix and suffix (default: none and
/// `.json`) are set with [`FileStoreBuilder::prefix`] and [`FileStoreBuilder::suffix`] and are
/// checked when the store is opened.
///
/// # Writes, locks and crashes
///
/// - A write goes to a temporary file in the same folder, which is flushed to disk (`fsync`) and
///   renamed over the session file. A crash at any point leaves the old record or the new one,
///   never a torn one. With [`FileStoreBuilder::sync_folder`] the folder is flushed too, so the
///   rename (and a deletion) also survives a power failure.
/// - Every read-modify-write (create, save, touch, rename, delete, cleanup, owner index) holds an
///   advisory lock (`flock`) on the session's lock file for its duration. Lock files are shared by
///   the sessions whose keys start with the same three hex digits; they live in their own folder
///   and are never renamed or deleted, so a lock always guards the current file. Together with a
///   lock per lock file inside the process, this makes a change-set save safe when several
///   processes (or several `FileStore` values) share the folder: concurrent saves of different
///   keys of one session all persist, and a save never recreates a session deleted meanwhile
///   (SECURITY.md 11).
/// - A [`rename`](SessionStore::rename) (what [`Session::cycle_id`](crate::Session::cycle_id)
///   does) holds the locks of both keys, the lower-numbered lock file first; nothing else holds
///   two, so no two operations in any processes wait for each other in a circle. It is one step
///   for every other read-modify-write of either key: a concurrent save is carried to the new key
///   or finds the session gone, and a concurrent delete or revocation finds the session under one
///   key or the other. It writes the record under the new key (as any write: temporary file,
///   `fsync`, rename) before it deletes the old file. A crash in between (or, with `sync_folder`,
///   a power failure) leaves the old record as it was, under the ID the client still holds, and a
///   copy under the new key that no client was told of (it expires, and is revoked with its
///   owner's sessions); never neither. A failure before the old file is deleted (disk full,
///   read-only folder) is a [`StoreError`], and the new file is deleted again: the session stays
///   under its old key, unchanged.
/// - A lock is waited for at most [`FileStoreBuilder::lock_timeout`] (default 10 s). Longer, and
///   the operation fails with a [`StoreError`] (the request gets an error response) rather than
///   hang: a process sharing the folder that was stopped (`SIGSTOP`, `docker pause`, a debugger)
///   or is stuck on a stalled disk while holding a lock blocks nothing for good. The cleanup does
///   not wait at all: it skips a session whose lock is held, and the next sweep removes it.
/// - Loads take no lock: a file rename is atomic, so a load sees the old record or the new one.
/// - A file that cannot be decoded (truncated, random bytes) reads as "no session", is logged at
///   `warn` and removed. A record written by a newer version of this crate is logged and left
///   alone. A failure to read or write (permission denied, disk full, read-only folder) is a
///   [`StoreError`], which the layer turns into an error response, never an empty session.
/// - Temporary files left by a crashed writer are removed by
///   [`delete_expired`](SessionStore::delete_expired) once they are an hour old.
///
/// # Deadlines in the file's modification time
///
/// A session file's modification time *is* its deadline (the earlier of the idle and absolute
/// deadlines, in whole seconds). This is what makes [`touch`](SessionStore::touch) cheap: it
/// checks the record and sets the modification time, without rewriting the data or flushing
/// anything (a touch lost in a power failure only means the session ends at its previous
/// deadline). It also lets the cleanup find expired sessions from the folder listing and file
/// metadata alone. One consequence: after a touch that moves the idle deadline past the absolute
/// one, a load reports the absolute deadline as the idle deadline, which is when the session ends
/// anyway. Copying the folder without keeping modification times (`cp -r` rather than `cp -a` or
/// `rsync -a`) ends every session at the time of the copy: it fails safe.
///
/// # Owner index
///
/// `.owners/<SHA-256 of the prefix, the suffix and the owner>/` holds an empty file per session of
/// that owner, named by the session's key. Stores with different prefixes or suffixes in one folder
/// (two apps, or a change of suffix) keep separate indexes, so neither takes the other's markers
/// for stale ones. The marker is written *before* the record that names the owner and removed
/// *after* it, under the session's lock, so a crash can leave a stale marker but never a session
/// missing from its owner's list: [`delete_owner`](SessionStore::delete_owner) ("log out
/// everywhere") cannot miss one (SECURITY.md 12). A rename likewise writes the new key's marker
/// before the new file and removes the old key's after deleting the old file. `delete_owner` lists
/// the index again after its pass, until a listing shows no key it has not tried, so a session
/// renamed while it runs is deleted under its new key. [`list_owner`](SessionStore::list_owner)
/// checks each marker against the record and drops stale ones under the lock; it takes one
/// listing, so a session renamed at that very moment may show under either key, both or neither.
///
/// # Limitations
///
/// - **One machine.** The folder must be on a local file system. Network file systems (NFS, SMB)
///   differ in how they implement `flock`, rename and modification times; do not share a folder
///   across machines.
/// - The file system must keep modification times to the second at least (ext4, XFS, Btrfs,
///   ZFS, APFS, tmpfs all do; FAT does not).
/// - Processes sharing a folder must run as the same user (files are `0600`, and setting a file's
///   modification time needs its owner).
/// - Each save costs a file write and an `fsync` (two with `sync_folder`); on a typical SSD that
///   is a fraction of a millisecond to a few milliseconds, done on Tokio's blocking thread pool,
///   never on the async workers. A rename costs the same plus a deletion (and a third `fsync`
///   with `sync_folder`).
/// - The cleanup lists the whole folder on each sweep and reads the metadata of every session
///   file (not its contents): a few microseconds per session, about half a second for 100,000
///   sessions, on a blocking thread and without holding any lock except while deleting. Each batch
///   lists the folder, but one that reaches its limit leaves a place to resume from, so a sweep
///   reads each file's metadata about once, however many batches it takes. Run it every minute or
///   so ([`CleanupConfig`](crate::CleanupConfig)'s default), not more often.
/// - A session file holds at most 16 MiB; a larger session is refused when saved
///   ([`StoreErrorKind::TooLarge`]).
///
/// # Performance
///
/// Load, save and touch open one file by name; the folder's size does not enter into it (modern
/// file systems index directory entries). `benches/file_store.rs` measures them with 100 and with
/// 100,000 sessions in the folder: on the development machine (ext4 on a virtual disk) a load
/// took about 15–20 µs and a touch about 20–30 µs with either count; a save or a create is
/// dominated by its `fsync` (0.3 ms to a few ms depending on the disk's other traffic).
///
/// # Deployment notes
///
/// Keep the folder out of any web root, out of backups that do not keep modification times, and
/// out of reach of temporary-file cleaners (`systemd-tmpfiles` ages out files under `/tmp` and
/// `/var/tmp`): lock files are never modified, so a cleaner that removes them lets two writers in
/// at once (a warning is logged when a lock file this process has used is found missing). Several
/// processes may share it (e.g. a zero-downtime restart that overlaps the old and new process).
/// Run [`spawn_cleanup`](crate::spawn_cleanup) in one or more of them; concurrent sweeps are safe.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    prefix: String,
    suffix: String,
    sync_folder: bool,
    lock_timeout: StdDuration,
    /// One lock per lock file, so threads of this process take turns here (trying again after
    /// growing pauses, up to the lock timeout) rather than relying on how a file system
    /// implements `flock` between threads of one process.
    stripes: Box<[Mutex<()>]>,
    /// One bit per lock file this process has opened: one found missing after that was removed
    /// by someone else, which is worth a warning.
    opened: Box<[AtomicU64]>,
    /// Where the next batch of a sweep resumes: entries of the folder listing the previous batch
    /// passed over without deleting them.
    sweep_resume: AtomicUsize,
}

/// Settings for a [`FileStore`], from [`FileStore::builder`].
#[derive(Clone, Debug)]
#[must_use = "call open() to create the store"]
pub struct FileStoreBuilder {
    dir: PathBuf,
    prefix: String,
    suffix: String,
    sync_folder: bool,
    lock_timeout: StdDuration,
}

impl FileStoreBuilder {
    /// The text before the key in each session file's name. Default: none.
    ///
    /// At most 32 characters of `A-Z a-z 0-9 _ - .`, not starting with `.` (names starting with
    /// a dot are the store's own); checked by [`open`](Self::open).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The text after the key in each session file's name. Default: `.json`.
    ///
    /// At most 32 characters of `A-Z a-z 0-9 _ - .`; checked by [`open`](Self::open).
    pub fn suffix(mut self, suffix: impl Into<String>) -> Self {
        self.suffix = suffix.into();
        self
    }

    /// Whether to flush the folder to disk after each rename and deletion. Default: `false`.
    ///
    /// Session files are always flushed before they are renamed into place, so a crash never
    /// leaves a torn record. Flushing the folder as well makes the rename itself durable: without
    /// it, a power failure (not a process crash) can undo the renames and deletions of the last
    /// few seconds, e.g. bring back a session logged out just before. Should that flush fail
    /// once the rename or deletion is made, the change is still reported as made (other
    /// requests already see it) and the failure is logged as a warning.
    ///
    /// # Performance impact
    ///
    /// One more `fsync` per save, create and delete, two more per rename.
    pub fn sync_folder(mut self, sync: bool) -> Self {
        self.sync_folder = sync;
        self
    }

    /// How long an operation waits for a session's lock before it fails. Default: 10 seconds.
    ///
    /// A lock is held for one read-modify-write (a few milliseconds with its `fsync`), so a long
    /// wait means a process sharing the folder is stopped or stuck while holding it. Without a
    /// limit, every request of the sessions behind that lock would hang with it, each holding one
    /// of Tokio's blocking threads. Past the limit the operation fails with a
    /// [`StoreErrorKind::Backend`] error, which the layer turns into an error response.
    pub fn lock_timeout(mut self, timeout: StdDuration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Creates the folder (and its parents) if needed, with owner-only permissions (`0700`), and
    /// opens the store. An existing folder is used as it is; a warning is logged if other users
    /// can access it or it belongs to a user other than the app's (or root), and one that every
    /// user may write to (such as `/tmp` itself) is refused: any local user could plant session
    /// files there. Blocks briefly on the file system: call it
    /// at start-up.
    ///
    /// # Errors
    ///
    /// A [`StoreErrorKind::Config`] error for an invalid prefix or suffix, or when the folder
    /// cannot be created, is not a folder, or is writable by every user.
    pub fn open(self) -> Result<FileStore, StoreError> {
        check_affix("prefix", &self.prefix)?;
        check_affix("suffix", &self.suffix)?;
        if self.prefix.starts_with('.') {
            return Err(StoreError::new(
                StoreErrorKind::Config,
                "file store: the file name prefix must not start with '.'",
            ));
        }
        let config = |message: &str, error: io::Error| {
            StoreError::new(StoreErrorKind::Config, format!("file store: {message}"))
                .with_source(error)
        };
        create_private_dir(&self.dir).map_err(|e| config("cannot create the folder", e))?;
        let meta = fs::metadata(&self.dir).map_err(|e| config("cannot read the folder", e))?;
        if !meta.is_dir() {
            return Err(StoreError::new(
                StoreErrorKind::Config,
                "file store: the path is not a folder",
            ));
        }
        refuse_if_world_writable(&meta)?;
        warn_if_shared(&meta);
        create_private_dir(&self.dir.join(LOCK_DIR))
            .map_err(|e| config("cannot create the lock folder", e))?;
        create_private_dir(&self.dir.join(OWNER_DIR))
            .map_err(|e| config("cannot create the owner index folder", e))?;
        let inner = Inner {
            dir: self.dir,
            prefix: self.prefix,
            suffix: self.suffix,
            sync_folder: self.sync_folder,
            lock_timeout: self.lock_timeout,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            opened: (0..STRIPES.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            sweep_resume: AtomicUsize::new(0),
        };
        warn_if_foreign(&inner, &meta);
        Ok(FileStore {
            inner: Arc::new(inner),
        })
    }
}

fn check_affix(what: &str, value: &str) -> Result<(), StoreError> {
    let valid = value.len() <= MAX_AFFIX
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::new(
            StoreErrorKind::Config,
            format!(
                "file store: the file name {what} must be at most {MAX_AFFIX} characters of \
                 A-Z a-z 0-9 _ - ."
            ),
        ))
    }
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.inner.dir)
            .field("prefix", &self.inner.prefix)
            .field("suffix", &self.inner.suffix)
            .field("sync_folder", &self.inner.sync_folder)
            .field("lock_timeout", &self.inner.lock_timeout)
            .finish()
    }
}

impl FileStore {
    /// Opens the store in `dir` with the default settings, creating the folder with owner-only
    /// permissions if needed. See [`FileStoreBuilder::open`].
    ///
    /// # Errors
    ///
    /// A [`StoreErrorKind::Config`] error when the folder cannot be created, is not a folder, or
    /// is writable by every user.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::builder(dir).open()
    }

    /// Settings for a store in `dir`: file name prefix and suffix, folder flushing.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tower_satchel::FileStore;
    /// # fn main() -> Result<(), tower_satchel::StoreError> {
    /// let store = FileStore::builder("./sessions")
    ///     .prefix("sess_")
    ///     .suffix("")
    ///     .sync_folder(true)
    ///     .open()?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub fn builder(dir: impl Into<PathBuf>) -> FileStoreBuilder {
        FileStoreBuilder {
            dir: dir.into(),
            prefix: String::new(),
            suffix: ".json".to_owned(),
            sync_folder: false,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The file the session under `key` is kept in (whether or not it exists): the folder joined
    /// with prefix, the key's 64 hex digits, and suffix. For operators and tests.
    pub fn path_of(&self, key: &SessionKey) -> PathBuf {
        self.inner.record_path(key)
    }
}

/// What was found at a session's path.
enum Found {
    Missing,
    Record {
        record: Record,
        file: File,
        /// The file's modification time in Unix seconds: the session's deadline.
        mtime: i64,
    },
    /// Not a record: truncated, random bytes, or a bad modification time.
    Corrupt(Box<dyn StdError + Send + Sync>),
    /// A record written by a newer version of this crate.
    Newer(u32),
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// Holds a session's lock: the in-process stripe lock and the `flock` on its lock file (released
/// when the file is closed).
struct Locked<'a> {
    _file: File,
    _stripe: MutexGuard<'a, ()>,
}

/// Pauses between attempts to take a lock: from 50 µs, doubling up to [`MAX_LOCK_PAUSE`].
#[derive(Default)]
struct Pause(StdDuration);

impl Pause {
    /// Sleeps before the next attempt (never past `deadline`); `false`, without sleeping, once
    /// `deadline` has passed.
    fn wait(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        self.0 = (self.0 * 2).clamp(StdDuration::from_micros(50), MAX_LOCK_PAUSE);
        std::thread::sleep(self.0.min(deadline - now));
        true
    }
}

/// The lock file guarding `key`: the number its first [`STRIPE_HEX`] hex digits spell.
fn stripe_of(key: &SessionKey) -> usize {
    let [a, b, ..] = *key.as_bytes();
    (usize::from(a) << 4) | usize::from(b >> 4)
}

fn io_error(context: &str, error: io::Error) -> StoreError {
    StoreError::backend(format!("file store: {context}"), error)
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl Inner {
    fn file_name(&self, key: &SessionKey) -> String {
        format!("{}{}{}", self.prefix, key.to_hex(), self.suffix)
    }

    fn record_path(&self, key: &SessionKey) -> PathBuf {
        self.dir.join(self.file_name(key))
    }

    /// The key a session file's name stands for, if `name` is one.
    fn key_of(&self, name: &str) -> Option<SessionKey> {
        let hex = name
            .strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())?;
        SessionKey::from_hex(hex)
    }

    fn owner_dir(&self, owner: &str) -> PathBuf {
        // The prefix and suffix (at most 32 bytes each, so one length byte each keeps them
        // apart) go in too: a store of another configuration sharing the folder has its own
        // index, and never takes this one's markers for stale ones (its sessions' files have
        // other names).
        let mut hasher = Sha256::new();
        for affix in [&self.prefix, &self.suffix] {
            hasher.update([u8::try_from(affix.len()).unwrap_or(u8::MAX)]);
            hasher.update(affix.as_bytes());
        }
        hasher.update(owner.as_bytes());
        let digest: [u8; 32] = hasher.finalize().into();
        self.dir
            .join(OWNER_DIR)
            .join(SessionKey::from_bytes(digest).to_hex())
    }

    fn lock(&self, key: &SessionKey) -> Result<Locked<'_>, StoreError> {
        self.lock_stripe(stripe_of(key), self.lock_deadline())
    }

    /// Locks the sessions under `a` and `b` together, for a rename: the lock with the lower
    /// number first, and only once when both keys share a lock file. Nothing else holds two
    /// locks at once, so this order (the same in every process) cannot deadlock.
    fn lock_two(
        &self,
        a: &SessionKey,
        b: &SessionKey,
    ) -> Result<(Locked<'_>, Option<Locked<'_>>), StoreError> {
        let deadline = self.lock_deadline();
        let (a, b) = (stripe_of(a), stripe_of(b));
        let first = self.lock_stripe(a.min(b), deadline)?;
        let second = if a == b {
            None
        } else {
            Some(self.lock_stripe(a.max(b), deadline)?)
        };
        Ok((first, second))
    }

    /// When a lock wait that starts now gives up: the lock timeout from now (a timeout too long
    /// for the clock to add is a year).
    fn lock_deadline(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.lock_timeout)
            .or_else(|| now.checked_add(StdDuration::from_secs(365 * 86_400)))
            .unwrap_or(now)
    }

    /// [`try_lock_stripe`](Self::try_lock_stripe), with running out of time an error.
    fn lock_stripe(&self, stripe: usize, deadline: Instant) -> Result<Locked<'_>, StoreError> {
        self.try_lock_stripe(stripe, deadline)?.ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Backend,
                format!(
                    "file store: a session's lock stayed held past the lock timeout ({:?}); \
                     is a process sharing the folder stopped or stuck?",
                    self.lock_timeout
                ),
            )
        })
    }

    /// Takes the stripe's lock inside this process, then the `flock` on its lock file, trying
    /// again after a short pause while either is held elsewhere; `None` once `deadline` passes
    /// first. (Neither `Mutex` nor `flock` can wait with a limit, and an unlimited wait would
    /// hang with a stopped process that holds the lock.)
    fn try_lock_stripe(
        &self,
        stripe: usize,
        deadline: Instant,
    ) -> Result<Option<Locked<'_>>, StoreError> {
        let Some(mutex) = self.stripes.get(stripe) else {
            return Err(StoreError::new(
                StoreErrorKind::Backend,
                "file store: lock index out of range",
            ));
        };
        let mut pause = Pause::default();
        let guard = loop {
            match mutex.try_lock() {
                Ok(guard) => break guard,
                Err(TryLockError::Poisoned(poisoned)) => break poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    if !pause.wait(deadline) {
                        return Ok(None);
                    }
                }
            }
        };
        let file = self.open_lock_file(stripe)?;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    if !pause.wait(deadline) {
                        return Ok(None);
                    }
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(io_error("cannot lock a lock file", e));
                }
            }
        }
        Ok(Some(Locked {
            _file: file,
            _stripe: guard,
        }))
    }

    /// Opens the lock file of `stripe`, creating it (and its folder) when missing.
    fn open_lock_file(&self, stripe: usize) -> Result<File, StoreError> {
        let dir = self.dir.join(LOCK_DIR);
        let path = dir.join(format!("{stripe:03x}"));
        let open = |create: bool| {
            let mut options = OpenOptions::new();
            options
                .read(true)
                .write(true)
                .create(create)
                .truncate(false);
            private_file(&mut options);
            options.open(&path)
        };
        let (word, bit) = (stripe / 64, 1u64 << (stripe % 64));
        let seen = self.opened.get(word);
        let file = match open(false) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if seen.is_some_and(|seen| seen.load(Ordering::Relaxed) & bit != 0) {
                    // This process used it before: someone removed it (a temporary-file
                    // cleaner, or a clean-up by hand). Another process may still hold a lock
                    // on the removed file, which no longer excludes anyone.
                    tracing::warn!(
                        folder = %self.dir.display(),
                        "a lock file of the session folder was removed while in use, and is \
                         created again; keep the folder away from temporary-file cleaners"
                    );
                }
                // Created again, with the lock folder (and the session folder) if they went
                // too, so that writes work again.
                create_private_dir(&dir)
                    .map_err(|e| io_error("cannot create the lock folder", e))?;
                open(true)
            }
            other => other,
        }
        .map_err(|e| io_error("cannot open a lock file", e))?;
        if let Some(seen) = seen {
            seen.fetch_or(bit, Ordering::Relaxed);
        }
        Ok(file)
    }

    /// Reads the session file at `path`. Takes no lock: files are only ever replaced by rename.
    fn read(&self, path: &Path) -> Result<Found, StoreError> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Missing),
            Err(e) => return Err(io_error("cannot open a session file", e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| io_error("cannot read a session file's metadata", e))?;
        // No session file this store writes is larger than `MAX_FILE`: a larger one was put
        // there by hand, and is not read into memory (nor deleted as corrupt: it may be a
        // misplaced file someone wants back).
        let too_large = || {
            StoreError::new(
                StoreErrorKind::Backend,
                format!(
                    "file store: a file at a session's path is larger than {} MiB",
                    MAX_FILE >> 20
                ),
            )
        };
        if meta.len() > MAX_FILE {
            return Err(too_large());
        }
        let expected = usize::try_from(meta.len()).unwrap_or(0);
        let mut bytes = Vec::with_capacity(expected + 1);
        (&mut file)
            .take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io_error("cannot read a session file", e))?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(too_large()); // grew after the metadata was read
        }
        let mut record = match Record::decode(&bytes) {
            Ok(record) => record,
            Err(error) => {
                if let Ok(VersionOnly { v }) = serde_json::from_slice::<VersionOnly>(&bytes)
                    && v > RECORD_VERSION
                {
                    return Ok(Found::Newer(v));
                }
                return Ok(Found::Corrupt(Box::new(error)));
            }
        };
        let modified = match meta.modified() {
            Ok(modified) => modified,
            Err(e) => return Err(io_error("the file system keeps no modification times", e)),
        };
        let mtime = unix_secs(modified);
        if mtime != record.deadline().unix_timestamp() {
            // Touched since it was written: the modification time is the deadline.
            match OffsetDateTime::from_unix_timestamp(mtime) {
                Ok(idle) => record.idle_deadline = idle,
                Err(e) => return Ok(Found::Corrupt(Box::new(e))),
            }
        }
        Ok(Found::Record {
            record,
            file,
            mtime,
        })
    }

    /// Writes `record` to `path` atomically: temporary file, flush, modification time, rename.
    /// On error, `path` is as it was. The folder is flushed after (see [`tidy`](Self::tidy)).
    fn put(&self, path: &Path, record: &Record) -> Result<(), StoreError> {
        let bytes = record.encode().map_err(|e| {
            StoreError::new(
                StoreErrorKind::Encoding,
                "file store: cannot encode the record",
            )
            .with_source(e)
        })?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(StoreError::new(
                StoreErrorKind::TooLarge,
                format!(
                    "file store: the session is larger than {} MiB",
                    MAX_FILE >> 20
                ),
            ));
        }
        let deadline = to_system_time(record.deadline()).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Encoding,
                "file store: the deadline is out of range",
            )
        })?;
        let (temp, mut file) = self.temp_file()?;
        let written = (|| {
            file.write_all(&bytes)?;
            // After the last write, which would move it again.
            file.set_modified(deadline)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&temp, path)
        })();
        if let Err(error) = written {
            let _ = fs::remove_file(&temp);
            return Err(io_error("cannot write a session file", error));
        }
        Ok(())
    }

    fn temp_file(&self) -> Result<(PathBuf, File), StoreError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let secs = unix_secs(SystemTime::now());
        let pid = std::process::id();
        let mut last = None;
        for _ in 0..64 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.join(format!("{TEMP_PREFIX}{secs}-{pid}-{n}"));
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            private_file(&mut options);
            match options.open(&path) {
                Ok(file) => return Ok((path, file)),
                // Left by a crashed process that had our process id: take the next number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(io_error("cannot create a temporary file", e)),
            }
        }
        Err(io_error(
            "cannot create a temporary file",
            last.unwrap_or_else(|| io::Error::other("retries exhausted")),
        ))
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), StoreError> {
        if self.sync_folder {
            sync_dir(dir).map_err(|e| io_error("cannot flush the folder", e))?;
        }
        Ok(())
    }

    /// What follows a change once it is in place: flushing the folder (with `sync_folder`),
    /// then `tidy_index` (dropping an owner marker that no longer applies). A failure there is
    /// logged, not returned: the change stands and other requests see it, so reporting it as
    /// failed would make the layer answer with an error for a write that was made. A marker
    /// left behind is dropped by the next `list_owner` or `delete_owner` of its owner.
    fn tidy(&self, key: &SessionKey, tidy_index: impl FnOnce() -> Result<(), StoreError>) {
        if let Err(error) = self.sync_dir(&self.dir).and_then(|()| tidy_index()) {
            tracing::warn!(
                session = %key.log_tag(),
                %error,
                "session changed, but the folder could not be flushed or the owner index tidied"
            );
        }
    }

    /// Deletes the session file of `key` at `path`, then [`tidy`](Self::tidy)s: once the file is
    /// gone, a failure to flush the folder or run `tidy_index` is only logged.
    fn remove(
        &self,
        key: &SessionKey,
        path: &Path,
        tidy_index: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        ignore_missing(fs::remove_file(path))
            .map_err(|e| io_error("cannot delete a session file", e))?;
        self.tidy(key, tidy_index);
        Ok(())
    }

    fn add_marker(&self, owner: &str, key: &SessionKey) -> Result<(), StoreError> {
        let dir = self.owner_dir(owner);
        let path = dir.join(key.to_hex());
        let mut last = None;
        // A concurrent removal of the (then empty) owner folder can get between creating it and
        // creating the marker: try again.
        for _ in 0..8 {
            let mut options = OpenOptions::new();
            options.write(true).create(true).truncate(false);
            private_file(&mut options);
            match options.open(&path) {
                Ok(_) => {
                    // Durable before the record that names the owner is written.
                    self.sync_dir(&dir)?;
                    return self.sync_dir(&self.dir.join(OWNER_DIR));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    create_private_dir(&dir)
                        .map_err(|e| io_error("cannot create an owner index folder", e))?;
                    last = Some(e);
                }
                Err(e) => return Err(io_error("cannot write an owner index entry", e)),
            }
        }
        Err(io_error(
            "cannot write an owner index entry",
            last.unwrap_or_else(|| io::Error::other("retries exhausted")),
        ))
    }

    fn remove_marker(&self, owner: &str, key: &SessionKey) -> Result<(), StoreError> {
        let dir = self.owner_dir(owner);
        ignore_missing(fs::remove_file(dir.join(key.to_hex())))
            .map_err(|e| io_error("cannot remove an owner index entry", e))?;
        // Drop the owner's folder once it is empty; fails harmlessly while it is not. Not
        // flushed: a marker that comes back after a power failure is stale, which is harmless.
        let _ = fs::remove_dir(&dir);
        Ok(())
    }

    /// Removes a corrupt session file after checking, under the lock, that it still is.
    fn discard_corrupt(&self, key: &SessionKey, error: &(dyn StdError + Send + Sync)) {
        tracing::warn!(
            session = %key.log_tag(),
            error = %error,
            "corrupt session file; it reads as no session and is removed"
        );
        let path = self.record_path(key);
        let removed = self.lock(key).and_then(|_locked| match self.read(&path)? {
            Found::Corrupt(_) => self.remove(key, &path, || Ok(())),
            _ => Ok(()),
        });
        if let Err(error) = removed {
            tracing::warn!(session = %key.log_tag(), %error, "could not remove a corrupt session file");
        }
    }

    fn load(&self, key: &SessionKey, now: OffsetDateTime) -> Result<Option<Record>, StoreError> {
        match self.read(&self.record_path(key))? {
            Found::Record { record, .. } => Ok(record.is_live(now).then_some(record)),
            Found::Missing => Ok(None),
            Found::Corrupt(error) => {
                self.discard_corrupt(key, error.as_ref());
                Ok(None)
            }
            Found::Newer(version) => {
                tracing::warn!(
                    session = %key.log_tag(),
                    version,
                    "session file written by a newer version; it reads as no session"
                );
                Ok(None)
            }
        }
    }

    fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let path = self.record_path(key);
        let _locked = self.lock(key)?;
        let old_owner = match self.read(&path)? {
            Found::Record { record: old, .. } if old.is_live(now) => return Ok(false),
            Found::Newer(_) => return Ok(false),
            Found::Record { record: old, .. } => old.owner,
            Found::Missing | Found::Corrupt(_) => None,
        };
        let new_owner = record.owner.as_deref();
        if let Some(owner) = new_owner
            && old_owner.as_deref() != Some(owner)
        {
            self.add_marker(owner, key)?;
        }
        self.put(&path, record)?;
        self.tidy(key, || match old_owner.as_deref() {
            Some(old) if Some(old) != new_owner => self.remove_marker(old, key),
            _ => Ok(()),
        });
        Ok(true)
    }

    fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        let path = self.record_path(key);
        let locked = self.lock(key)?;
        let mut record = match self.read(&path)? {
            Found::Record { record, .. } if record.is_live(now) => record,
            Found::Corrupt(error) => {
                drop(locked);
                self.discard_corrupt(key, error.as_ref());
                return Ok(Saved::Gone);
            }
            _ => return Ok(Saved::Gone),
        };
        let old_owner = record.owner.clone();
        let outcome = changes.apply_to(&mut record);
        let owner_changed = record.owner != old_owner;
        if owner_changed && let Some(new) = record.owner.as_deref() {
            self.add_marker(new, key)?;
        }
        self.put(&path, &record)?;
        self.tidy(key, || match old_owner.as_deref() {
            Some(old) if owner_changed => self.remove_marker(old, key),
            _ => Ok(()),
        });
        Ok(outcome)
    }

    fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: OffsetDateTime,
        basis: Expiry,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        let path = self.record_path(key);
        let _locked = self.lock(key)?;
        let Found::Record {
            mut record,
            file,
            mtime,
        } = self.read(&path)?
        else {
            return Ok(Saved::Gone);
        };
        if !record.is_live(now) {
            return Ok(Saved::Gone);
        }
        if record.expiry != basis {
            return Ok(Saved::PolicyChanged);
        }
        record.idle_deadline = idle_deadline;
        let deadline = record.deadline();
        if crate::record::deadline_seconds(deadline) != mtime {
            let at = to_system_time(deadline).ok_or_else(|| {
                StoreError::new(
                    StoreErrorKind::Encoding,
                    "file store: the deadline is out of range",
                )
            })?;
            file.set_modified(at)
                .map_err(|e| io_error("cannot set a session file's deadline", e))?;
        }
        Ok(Saved::Applied)
    }

    fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        let path = self.record_path(key);
        let _locked = self.lock(key)?;
        let owner = match self.read(&path) {
            Ok(Found::Record { record, .. }) => record.owner,
            // Delete what cannot be read too: deleting is what was asked.
            _ => None,
        };
        self.remove(key, &path, || match owner.as_deref() {
            Some(owner) => self.remove_marker(owner, key),
            None => Ok(()),
        })
    }

    /// Moves the live record under `from` to `to` with `changes` applied, under both keys'
    /// locks, so that every other read-modify-write of either key (in any process) comes
    /// wholly before or wholly after it.
    ///
    /// The steps, each of which a crash may follow:
    ///
    /// 1. the new owner's marker for `to` (flushed: before the record that names it);
    /// 2. the moved record written to a temporary file and renamed to `to`, then the folder
    ///    flushed (with `sync_folder`), so that `to` is durable before `from` goes;
    /// 3. `from` deleted, and the folder flushed again;
    /// 4. the old owner's marker for `from` (and a replaced record's for `to`) removed.
    ///
    /// A crash between 2 and 3 leaves two records: `from` as it was, which the client still
    /// holds, and `to` with a marker, which no client was told of and which expires or is
    /// revoked with its owner. A crash at 4 leaves stale markers. A failure up to and including
    /// the deletion of `from` is an error and undoes step 2 (deletes `to` again), so `from` is
    /// left as it was; past it, the session has moved and the rename is `Applied`, with a
    /// warning if the last folder flush or a marker removal failed.
    fn rename(
        &self,
        from: &SessionKey,
        to: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Renamed, StoreError> {
        let (from_path, to_path) = (self.record_path(from), self.record_path(to));
        let locked = self.lock_two(from, to)?;
        let mut record = match self.read(&from_path)? {
            Found::Record { record, .. } if record.is_live(now) => record,
            Found::Corrupt(error) => {
                drop(locked);
                self.discard_corrupt(from, error.as_ref());
                return Ok(Renamed::Gone);
            }
            _ => return Ok(Renamed::Gone),
        };
        // (When `to` is `from`, this finds the live record just read: `Taken`.)
        let replaced_owner = match self.read(&to_path)? {
            Found::Record { record: old, .. } if old.is_live(now) => return Ok(Renamed::Taken),
            Found::Newer(_) => return Ok(Renamed::Taken),
            // An expired record is replaced, a corrupt file overwritten.
            Found::Record { record: old, .. } => old.owner,
            Found::Missing | Found::Corrupt(_) => None,
        };
        let old_owner = record.owner.clone();
        changes.apply_to(&mut record);
        let new_owner = record.owner.as_deref();

        if let Some(owner) = new_owner {
            self.add_marker(owner, to)?;
        }
        if let Err(error) = self.put(&to_path, &record) {
            // `to` is as it was: the marker just added is stale unless `to` still names that
            // owner. Left behind if this fails too, which readers tolerate.
            if let Some(owner) = new_owner
                && replaced_owner.as_deref() != Some(owner)
            {
                let _ = self.remove_marker(owner, to);
            }
            return Err(error);
        }
        let moved = self.sync_dir(&self.dir).and_then(|()| {
            ignore_missing(fs::remove_file(&from_path))
                .map_err(|e| io_error("cannot delete a session file", e))
        });
        if let Err(error) = moved {
            self.undo_put(to, &to_path, [new_owner, replaced_owner.as_deref()]);
            return Err(error);
        }
        // The session has moved: what is left to do only makes it durable or tidies the index.
        let tidied = self.sync_dir(&self.dir).and_then(|()| {
            if let Some(old) = old_owner.as_deref() {
                self.remove_marker(old, from)?;
            }
            match replaced_owner.as_deref() {
                Some(dead) if Some(dead) != new_owner => self.remove_marker(dead, to),
                _ => Ok(()),
            }
        });
        if let Err(error) = tidied {
            tracing::warn!(
                from = %from.log_tag(),
                to = %to.log_tag(),
                %error,
                "session renamed, but the folder could not be flushed or the owner index tidied"
            );
        }
        Ok(Renamed::Applied)
    }

    /// Undoes the write of `to` by a rename that cannot delete its old key: deletes `to` again,
    /// then the markers that named it. If `to` cannot be deleted either, the session is left
    /// under both keys, each with its marker, and this is logged.
    fn undo_put(&self, to: &SessionKey, to_path: &Path, owners: [Option<&str>; 2]) {
        if let Err(error) = ignore_missing(fs::remove_file(to_path)) {
            tracing::error!(
                session = %to.log_tag(),
                %error,
                "a failed rename could not delete its new session file; the session is stored \
                 under both its old and its new key"
            );
            return;
        }
        for owner in owners.into_iter().flatten() {
            let _ = self.remove_marker(owner, to);
        }
    }

    fn delete_expired(&self, now: OffsetDateTime, limit: usize) -> Result<usize, StoreError> {
        let mut deleted = 0;
        let mut failed = None;
        if limit == 0 {
            return Ok(0);
        }
        let now_secs = now.unix_timestamp();
        let stale_before = unix_secs(SystemTime::now())
            .saturating_sub(i64::try_from(STALE_TEMP.as_secs()).unwrap_or(i64::MAX));
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error("cannot list the folder", e))?;
        // The previous batch stopped at its limit: resume where it did, rather than reading the
        // metadata of every live file it passed again (which made a sweep of many batches cost
        // the square of the backlog). Positions are counted in the listing, less the files the
        // batch removed. Files other requests create or delete meanwhile move positions a
        // little: a few files are looked at twice, or left to the next sweep.
        let resume = self.sweep_resume.swap(0, Ordering::Relaxed);
        let mut removed = 0;
        for (position, entry) in entries.enumerate() {
            if position < resume {
                continue;
            }
            if deleted >= limit {
                self.sweep_resume
                    .store(position - removed, Ordering::Relaxed);
                break;
            }
            let entry = entry.map_err(|e| io_error("cannot list the folder", e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if let Some(rest) = name.strip_prefix(TEMP_PREFIX) {
                let started = rest.split('-').next().and_then(|s| s.parse::<i64>().ok());
                if started.is_some_and(|s| s < stale_before) {
                    match ignore_missing(fs::remove_file(entry.path())) {
                        Ok(()) => {
                            removed += 1;
                            tracing::debug!("stale temporary session file removed");
                        }
                        Err(e) => {
                            let error = io_error("cannot remove a stale temporary file", e);
                            tracing::warn!(%error, "stale temporary session file not removed");
                            failed.get_or_insert(error);
                        }
                    }
                }
                continue;
            }
            let Some(key) = self.key_of(name) else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    let error = io_error("cannot read a session file's metadata", e);
                    tracing::warn!(session = %key.log_tag(), %error, "session file skipped by the cleanup");
                    failed.get_or_insert(error);
                    continue;
                }
            };
            let Ok(modified) = meta.modified() else {
                continue;
            };
            if !meta.is_file() || unix_secs(modified) > now_secs {
                continue; // live: its deadline is still ahead
            }
            // One file that cannot be read or removed (left by another user, say) must not stop
            // the sweep at it for good: it is logged and skipped, and the sweep goes on.
            match self.sweep_one(&key, &entry.path(), now) {
                Ok(true) => {
                    deleted += 1;
                    removed += 1;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(session = %key.log_tag(), %error, "expired session file not removed by the cleanup");
                    failed.get_or_insert(error);
                }
            }
        }
        // Nothing removed and something failed: the folder itself may be the problem, and the
        // caller (the cleanup task) learns of it.
        match failed {
            Some(error) if deleted == 0 => Err(error),
            _ => Ok(deleted),
        }
    }

    /// Removes the session file `path` of `key` if it is expired at `now` (or corrupt): whether it
    /// did. A session whose lock is held right now is left to the next sweep: the cleanup never
    /// waits for a lock (a process holding one may be stuck, and `CleanupTask::stop` would wait
    /// with it).
    fn sweep_one(
        &self,
        key: &SessionKey,
        path: &Path,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let Some(_locked) = self.try_lock_stripe(stripe_of(key), Instant::now())? else {
            tracing::debug!(session = %key.log_tag(), "session locked; left to the next sweep");
            return Ok(false);
        };
        match self.read(path)? {
            Found::Record { record, .. } if !record.is_live(now) => {
                // Once the file is gone, the session is removed whatever becomes of its marker
                // (a stale one is dropped by its owner's next listing).
                self.remove(key, path, || {
                    record
                        .owner
                        .as_deref()
                        .map_or(Ok(()), |owner| self.remove_marker(owner, key))
                })?;
                Ok(true)
            }
            Found::Corrupt(error) => {
                tracing::warn!(
                    session = %key.log_tag(),
                    error = %error,
                    "corrupt session file removed by the cleanup"
                );
                self.remove(key, path, || Ok(()))?;
                Ok(true)
            }
            // Refreshed meanwhile, deleted meanwhile, or another version's to clean up.
            Found::Record { .. } | Found::Missing | Found::Newer(_) => Ok(false),
        }
    }

    /// Keys in the owner index of `owner` (unchecked).
    fn marked(&self, owner: &str) -> Result<Vec<SessionKey>, StoreError> {
        let entries = match fs::read_dir(self.owner_dir(owner)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("cannot list an owner's sessions", e)),
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot list an owner's sessions", e))?;
            if let Some(key) = entry.file_name().to_str().and_then(SessionKey::from_hex) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Whether what is at `path` is a record owned by `owner`.
    fn owned_by(found: &Found, owner: &str) -> bool {
        matches!(found, Found::Record { record, .. } if record.owner.as_deref() == Some(owner))
    }

    fn list_owner(&self, owner: &str, now: OffsetDateTime) -> Result<Vec<SessionInfo>, StoreError> {
        let mut sessions = Vec::new();
        for key in self.marked(owner)? {
            let path = self.record_path(&key);
            let found = match self.read(&path) {
                Ok(found) => found,
                Err(error) => {
                    // One unreadable file leaves one session out, not the whole list.
                    tracing::warn!(session = %key.log_tag(), %error, "session file not readable; left out of its owner's list");
                    continue;
                }
            };
            if let Found::Record { record, .. } = &found
                && record.owner.as_deref() == Some(owner)
            {
                if record.is_live(now) {
                    sessions.push(SessionInfo::from_record(key, record));
                }
                continue;
            }
            if matches!(found, Found::Missing | Found::Record { .. })
                && let Err(error) = self.drop_stale_marker(owner, &key, &path)
            {
                tracing::warn!(session = %key.log_tag(), %error, "stale owner marker not removed");
            }
        }
        sessions.sort_by_key(|s| s.created_at);
        Ok(sessions)
    }

    /// Removes `owner`'s marker of `key` if the session at `path` is not `owner`'s (a crash
    /// between the two writes left it), checking under the lock that no write is adding this
    /// owner right now.
    fn drop_stale_marker(
        &self,
        owner: &str,
        key: &SessionKey,
        path: &Path,
    ) -> Result<(), StoreError> {
        let _locked = self.lock(key)?;
        let now_found = self.read(path)?;
        if !Self::owned_by(&now_found, owner) && !matches!(now_found, Found::Newer(_)) {
            self.remove_marker(owner, key)?;
        }
        Ok(())
    }

    fn delete_owner(&self, owner: &str) -> Result<usize, StoreError> {
        // A session renamed while this runs (`cycle_id`) has moved to a key the first listing
        // may not show. A rename writes the new key's marker before it lets go of the old key's
        // lock, so once the old key is found empty under its lock, a new listing shows the new
        // key: list again until a listing shows no key not tried yet. Each further round needs
        // a session of this owner created or renamed since the last listing.
        let mut tried = HashSet::new();
        let mut deleted = 0;
        let mut failed = None;
        loop {
            let keys: Vec<SessionKey> = self
                .marked(owner)?
                .into_iter()
                .filter(|key| !tried.contains(key))
                .collect();
            if keys.is_empty() {
                return failed.map_or(Ok(deleted), Err);
            }
            for key in keys {
                tried.insert(key);
                // One session that cannot be revoked must not spare the others: each is tried,
                // and the first failure is returned once all have been.
                match self.revoke_one(owner, &key) {
                    Ok(true) => deleted += 1,
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(session = %key.log_tag(), %error, "session of a revoked owner not removed");
                        failed.get_or_insert(error);
                    }
                }
            }
        }
    }

    /// Removes the session `key` if it is `owner`'s, and its marker in `owner`'s index: whether
    /// it removed a session.
    fn revoke_one(&self, owner: &str, key: &SessionKey) -> Result<bool, StoreError> {
        let path = self.record_path(key);
        let _locked = self.lock(key)?;
        // A file that cannot be read is kept, and so is its marker: a marker can be stale (its
        // session moved to another owner), so the file may be someone else's session. The
        // error makes the revocation fail, and a retry finds the marker again.
        let found = self.read(&path)?;
        // A record in a newer format (written by a newer version sharing the folder) cannot be
        // checked here; its marker says it is, or was, this owner's, and revocation must not
        // miss it (SECURITY.md 12).
        let removed = Self::owned_by(&found, owner) || matches!(found, Found::Newer(_));
        if removed {
            self.remove(key, &path, || Ok(()))?;
        }
        self.remove_marker(owner, key)?;
        Ok(removed)
    }
}

/// Runs `work` on Tokio's blocking pool, keeping the caller's tracing subscriber and span.
async fn blocking<T, F>(work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    let span = tracing::Span::current();
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let task = tokio::task::spawn_blocking(move || {
        tracing::dispatcher::with_default(&dispatch, || span.in_scope(work))
    });
    match task.await {
        Ok(result) => result,
        Err(error) => Err(StoreError::backend(
            "file store: the file system task failed",
            error,
        )),
    }
}

impl SessionStore for FileStore {
    async fn load(
        &self,
        key: &SessionKey,
        now: OffsetDateTime,
    ) -> Result<Option<Record>, StoreError> {
        let (inner, key) = (self.inner.clone(), *key);
        blocking(move || inner.load(&key, now)).await
    }

    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let (inner, key, record) = (self.inner.clone(), *key, record.clone());
        blocking(move || inner.create(&key, &record, now)).await
    }

    async fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        let (inner, key, changes) = (self.inner.clone(), *key, changes.clone());
        blocking(move || inner.save(&key, &changes, now)).await
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: OffsetDateTime,
        basis: Expiry,
        now: OffsetDateTime,
    ) -> Result<Saved, StoreError> {
        let (inner, key) = (self.inner.clone(), *key);
        blocking(move || inner.touch(&key, idle_deadline, basis, now)).await
    }

    async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        let (inner, key) = (self.inner.clone(), *key);
        blocking(move || inner.delete(&key)).await
    }

    async fn rename(
        &self,
        from: &SessionKey,
        to: &SessionKey,
        changes: &ChangeSet,
        now: OffsetDateTime,
    ) -> Result<Renamed, StoreError> {
        let (inner, from, to, changes) = (self.inner.clone(), *from, *to, changes.clone());
        blocking(move || inner.rename(&from, &to, &changes, now)).await
    }

    async fn delete_expired(&self, now: OffsetDateTime, limit: usize) -> Result<usize, StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.delete_expired(now, limit)).await
    }

    async fn list_owner(
        &self,
        owner: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        let (inner, owner) = (self.inner.clone(), owner.to_owned());
        blocking(move || inner.list_owner(&owner, now)).await
    }

    async fn delete_owner(&self, owner: &str) -> Result<usize, StoreError> {
        let (inner, owner) = (self.inner.clone(), owner.to_owned());
        blocking(move || inner.delete_owner(&owner)).await
    }
}

/// Whole Unix seconds of `at`, rounded down.
fn unix_secs(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            let partial = i64::from(before.subsec_nanos() > 0);
            secs.saturating_add(partial).saturating_neg()
        }
    }
}

/// `at` as a file's modification time: whole seconds, rounded up like every deadline a store
/// keeps in whole seconds (see `deadline_seconds` in the record module).
fn to_system_time(at: OffsetDateTime) -> Option<SystemTime> {
    let secs = crate::record::deadline_seconds(at);
    match u64::try_from(secs) {
        Ok(after) => UNIX_EPOCH.checked_add(StdDuration::from_secs(after)),
        Err(_) => UNIX_EPOCH.checked_sub(StdDuration::from_secs(secs.unsigned_abs())),
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).create(dir)
}

#[cfg(unix)]
fn private_file(options: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(0o600);
}

#[cfg(not(unix))]
fn private_file(_options: &mut OpenOptions) {}

/// A folder every user may write to (`/tmp` itself, or one another user made with mode 0777
/// before the app ran) would let any local user plant a session file, under a key whose ID they
/// know, with whatever data and owner they like: refused.
#[cfg(unix)]
fn refuse_if_world_writable(meta: &fs::Metadata) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 {
        return Err(StoreError::new(
            StoreErrorKind::Config,
            format!(
                "file store: every user may write to the session folder (mode {:o}): use a \
                 folder of the app's own (chmod 700)",
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_if_world_writable(_meta: &fs::Metadata) -> Result<(), StoreError> {
    Ok(())
}

#[cfg(unix)]
fn warn_if_shared(meta: &fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "the session folder is accessible to other users; chmod 700 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_meta: &fs::Metadata) {}

/// A folder that belongs to another user (other than root) is that user's to fill: they can
/// plant a session file, under a key whose ID they know, with whatever data and owner they
/// like, whatever its mode says. That is harmless when the other user is trusted (one that
/// deploys the app, say), so it is a warning, not an error. The app's own user is whoever owns
/// a file it creates: a temporary file, removed again at once (if it cannot be created, the
/// first write will say why, and there is nothing to compare).
#[cfg(unix)]
fn warn_if_foreign(inner: &Inner, folder: &fs::Metadata) {
    use std::os::unix::fs::MetadataExt;
    let Ok((path, file)) = inner.temp_file() else {
        return;
    };
    let ours = file.metadata().map(|meta| meta.uid());
    drop(file);
    let _ = fs::remove_file(&path);
    if let Ok(ours) = ours
        && foreign(folder.uid(), ours)
    {
        tracing::warn!(
            folder_owner = folder.uid(),
            app_user = ours,
            "the session folder belongs to another user, who can plant and read session files \
             in it; chown it to the app's user"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_foreign(_inner: &Inner, _folder: &fs::Metadata) {}

/// Whether a folder owned by `folder_owner` belongs to another user than the app's (`app_user`):
/// neither the app's own user nor root, who can do anything anyway.
#[cfg(unix)]
fn foreign(folder_owner: u32, app_user: u32) -> bool {
    folder_owner != app_user && folder_owner != 0
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Folders cannot be opened as files here; renames are flushed by the file system.
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Expiry, SessionId};
    use time::Duration;

    #[cfg(unix)]
    #[test]
    fn a_folder_is_foreign_when_another_user_than_root_owns_it() {
        assert!(!foreign(1000, 1000), "the app's own");
        assert!(!foreign(0, 1000), "root's");
        assert!(foreign(1001, 1000), "another user's");
        assert!(foreign(65534, 0), "another user's, the app running as root");
        assert!(!foreign(0, 0));
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tower-satchel-file-unit-{name}-{}-{}",
            std::process::id(),
            unix_secs(SystemTime::now())
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn prefixes_and_suffixes_that_could_leave_the_folder_are_refused() {
        let dir = temp_dir("affix");
        for bad in ["../", "a/b", "a\\b", "/abs", "x\0", "é", &"x".repeat(33)] {
            assert!(
                FileStore::builder(&dir).prefix(bad).open().is_err(),
                "{bad:?}"
            );
            assert!(
                FileStore::builder(&dir).suffix(bad).open().is_err(),
                "{bad:?}"
            );
        }
        let err = FileStore::builder(&dir)
            .prefix(".hidden")
            .open()
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Config);
        assert!(
            FileStore::builder(&dir)
                .prefix("sess_")
                .suffix(".s")
                .open()
                .is_ok()
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_names_are_prefix_key_hex_suffix_inside_the_folder() {
        let dir = temp_dir("names");
        let store = FileStore::builder(&dir)
            .prefix("sess_")
            .suffix(".s")
            .open()
            .unwrap();
        let key = SessionId::generate().unwrap().key();
        let path = store.path_of(&key);
        assert_eq!(path.parent(), Some(dir.as_path()));
        assert_eq!(
            path.file_name().and_then(|n| n.to_str()),
            Some(format!("sess_{}.s", key.to_hex()).as_str())
        );
        assert_eq!(
            store.inner.key_of(&format!("sess_{}.s", key.to_hex())),
            Some(key)
        );
        assert_eq!(store.inner.key_of(&format!("{}.s", key.to_hex())), None);
        assert_eq!(store.inner.key_of(".locks"), None);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn public_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<FileStore>();
        assert_send_sync::<FileStoreBuilder>();
    }

    #[test]
    fn times_round_trip_through_system_time() {
        for secs in [0, 1, 1_700_000_000, -1, -86_401] {
            let at = OffsetDateTime::from_unix_timestamp(secs).unwrap();
            assert_eq!(unix_secs(to_system_time(at).unwrap()), secs);
        }
        let fractional =
            OffsetDateTime::from_unix_timestamp(100).unwrap() + Duration::milliseconds(700);
        assert_eq!(
            unix_secs(to_system_time(fractional).unwrap()),
            101,
            "rounded up"
        );
    }

    #[tokio::test]
    async fn the_modification_time_is_the_deadline_and_touch_moves_only_it() {
        let dir = temp_dir("mtime");
        let store = FileStore::new(&dir).unwrap();
        let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
            .unwrap();
        let key = SessionId::generate().unwrap().key();
        let record = Record::new(
            now,
            now + Duration::hours(1),
            Some(now + Duration::hours(3)),
            Expiry::OnInactivity(Duration::hours(1)),
        );
        assert!(store.create(&key, &record, now).await.unwrap());
        let path = store.path_of(&key);
        let mtime = || unix_secs(fs::metadata(&path).unwrap().modified().unwrap());
        assert_eq!(mtime(), (now + Duration::hours(1)).unix_timestamp());
        let bytes = fs::read(&path).unwrap();

        // Beyond the absolute deadline: the file's deadline stops there.
        let far = now + Duration::hours(5);
        assert_eq!(
            store.touch(&key, far, record.expiry, now).await.unwrap(),
            Saved::Applied
        );
        assert_eq!(mtime(), (now + Duration::hours(3)).unix_timestamp());
        assert_eq!(fs::read(&path).unwrap(), bytes, "touch rewrote the data");
        let loaded = store.load(&key, now).await.unwrap().unwrap();
        assert_eq!(loaded.deadline(), now + Duration::hours(3));
        assert!(
            store
                .load(&key, now + Duration::hours(3))
                .await
                .unwrap()
                .is_none()
        );
        let _ = fs::remove_dir_all(&dir);
    }

    fn whole_seconds_now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap()
    }

    /// A record created at `now` that ends at `now + hours`, owned by `owner` if given.
    fn record_until(now: OffsetDateTime, hours: i64, owner: Option<&str>) -> Record {
        let mut record = Record::new(
            now,
            now + Duration::hours(hours),
            None,
            Expiry::OnInactivity(Duration::hours(hours)),
        );
        record.owner = owner.map(str::to_owned);
        record
    }

    /// A session stored under a fresh key, created at `now`, ending `hours` later: its key.
    async fn stored_session(
        store: &FileStore,
        now: OffsetDateTime,
        hours: i64,
        owner: Option<&str>,
    ) -> SessionKey {
        let key = SessionId::generate().unwrap().key();
        assert!(
            store
                .create(&key, &record_until(now, hours, owner), now)
                .await
                .unwrap()
        );
        key
    }

    #[tokio::test]
    async fn stores_with_other_file_names_keep_owner_indexes_of_their_own() {
        let dir = temp_dir("owner-affix");
        let a = FileStore::builder(&dir).prefix("a_").open().unwrap();
        let b = FileStore::builder(&dir).prefix("b_").open().unwrap();
        let c = FileStore::builder(&dir)
            .prefix("b_")
            .suffix(".s")
            .open()
            .unwrap();
        let now = whole_seconds_now();
        let key = stored_session(&b, now, 1, Some("alice")).await;
        // The other configurations neither list it nor take its marker for a stale one.
        for other in [&a, &c] {
            assert!(other.list_owner("alice", now).await.unwrap().is_empty());
            assert_eq!(other.delete_owner("alice").await.unwrap(), 0);
        }
        assert_eq!(b.list_owner("alice", now).await.unwrap().len(), 1);
        assert_eq!(
            b.delete_owner("alice").await.unwrap(),
            1,
            "log out everywhere"
        );
        assert!(b.load(&key, now).await.unwrap().is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_lock_held_elsewhere_fails_after_the_timeout_and_the_cleanup_skips_it() {
        let dir = temp_dir("lock-timeout");
        let store = FileStore::builder(&dir)
            .lock_timeout(StdDuration::from_millis(200))
            .open()
            .unwrap();
        let now = whole_seconds_now();
        let key = stored_session(&store, now, 1, None).await;
        // What a stopped process sharing the folder leaves: its `flock` on the lock file (an
        // open file of its own, so it excludes this process's too).
        let lock_file = dir.join(LOCK_DIR).join(format!("{:03x}", stripe_of(&key)));
        let holder = OpenOptions::new().write(true).open(&lock_file).unwrap();
        holder.lock().unwrap();
        let error = tokio::time::timeout(StdDuration::from_secs(10), store.delete(&key))
            .await
            .expect("a delete still waits for the lock after 10 s")
            .unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Backend);
        assert!(error.to_string().contains("lock timeout"), "{error}");
        assert!(store.path_of(&key).exists(), "deleted without its lock");
        // The cleanup does not wait at all: the expired session is left to a later sweep.
        let later = now + Duration::hours(2);
        let swept =
            tokio::time::timeout(StdDuration::from_secs(10), store.delete_expired(later, 10))
                .await
                .expect("the cleanup still waits for the lock after 10 s");
        assert_eq!(swept.unwrap(), 0);
        assert!(store.path_of(&key).exists());
        drop(holder);
        assert_eq!(store.delete_expired(later, 10).await.unwrap(), 1);
        assert!(!store.path_of(&key).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_lock_timeout_too_long_to_add_to_the_clock_still_works() {
        let dir = temp_dir("lock-forever");
        let store = FileStore::builder(&dir)
            .lock_timeout(StdDuration::MAX)
            .open()
            .unwrap();
        let now = whole_seconds_now();
        let key = SessionId::generate().unwrap().key();
        let record = record_until(now, 1, None);
        assert!(store.create(&key, &record, now).await.unwrap());
        store.delete(&key).await.unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_sweep_of_several_batches_resumes_where_the_last_one_stopped() {
        let dir = temp_dir("sweep-resume");
        let store = FileStore::new(&dir).unwrap();
        let now = whole_seconds_now();
        let mut live = Vec::new();
        for i in 0..60 {
            let hours = if i % 2 == 0 { 1 } else { 3 };
            let key = stored_session(&store, now, hours, None).await;
            if hours == 3 {
                live.push(key);
            }
        }
        let later = now + Duration::hours(2);
        let mut batches = Vec::new();
        loop {
            let deleted = store.delete_expired(later, 7).await.unwrap();
            batches.push(deleted);
            let resume = store.inner.sweep_resume.load(Ordering::Relaxed);
            if deleted < 7 {
                assert_eq!(resume, 0, "a sweep that reached the end starts over");
                break;
            }
            // Past the files this batch looked at, less the ones it removed (the lock folder,
            // the owner index and the live files it passed stay in the listing).
            assert!(
                resume > 0,
                "batch {} left no place to resume from",
                batches.len()
            );
        }
        assert_eq!(batches, [7, 7, 7, 7, 2]);
        for key in &live {
            assert!(store.load(key, later).await.unwrap().is_some());
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_sweep_counts_a_deleted_session_whose_marker_stays() {
        let dir = temp_dir("sweep-marker");
        let store = FileStore::new(&dir).unwrap();
        let now = whole_seconds_now();
        let key = stored_session(&store, now, 1, Some("alice")).await;
        // A marker that cannot be removed (a folder in its place: no `unlink`, even for root).
        let marker = store.inner.owner_dir("alice").join(key.to_hex());
        fs::remove_file(&marker).unwrap();
        fs::create_dir_all(marker.join("x")).unwrap();
        let later = now + Duration::hours(2);
        assert_eq!(store.delete_expired(later, 10).await.unwrap(), 1);
        assert!(!store.path_of(&key).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn sessions_over_the_size_limit_are_refused_and_such_files_not_read() {
        let dir = temp_dir("size");
        let store = FileStore::new(&dir).unwrap();
        let now = whole_seconds_now();
        let key = SessionId::generate().unwrap().key();
        let mut big = record_until(now, 1, None);
        let length = usize::try_from(MAX_FILE).unwrap();
        big.data.insert("x".to_owned(), "a".repeat(length).into());
        let error = store.create(&key, &big, now).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::TooLarge);
        assert!(!store.path_of(&key).exists());
        // A file that large at a session's path (put there by hand): an error, and kept.
        fs::write(store.path_of(&key), vec![b' '; length + 1]).unwrap();
        let error = store.load(&key, now).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Backend);
        assert!(store.path_of(&key).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_lock_file_removed_while_in_use_is_created_again_with_a_warning() {
        use std::sync::Arc;
        #[derive(Clone, Default)]
        struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Lines {
            fn write(&mut self, data: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let dir = temp_dir("lock-removed");
        let store = FileStore::new(&dir).unwrap();
        let now = whole_seconds_now();
        let key = stored_session(&store, now, 1, None).await;
        let logged = || String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(!logged().contains("lock file"), "{}", logged());
        fs::remove_dir_all(dir.join(LOCK_DIR)).unwrap();
        store.delete(&key).await.unwrap();
        assert!(logged().contains("lock file"), "no warning: {}", logged());
        assert!(dir.join(LOCK_DIR).is_dir());
        let _ = fs::remove_dir_all(&dir);
    }
}
