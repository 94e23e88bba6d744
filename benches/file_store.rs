//! File store latency with 100 and with 100,000 session files in the folder: load, save (one key,
//! flushed to disk), touch (modification time only), and create + delete. The point is that the
//! cost does not grow with the number of sessions. A cleanup sweep, which walks the folder, is
//! measured too.
//!
//! ```text
//! cargo bench --bench file_store --features file-store
//! FILE_STORE_BENCH_DIR=/var/lib/bench cargo bench --bench file_store --features file-store
//! ```
//!
//! Folders are seeded once per size under `$FILE_STORE_BENCH_DIR` (default: the system's temporary
//! folder; use a folder on the disk you will deploy to, since `fsync` on tmpfs costs nothing) and
//! removed at the end. Seeding writes the files directly in the store's documented layout
//! (`<key hex>.json`, the encoded record, the deadline as modification time) rather than through
//! `create`, which would spend minutes flushing 100,000 files; the first seeded key is loaded back
//! through the store to check the layout. The seeded files are then flushed (`sync`) so that no
//! measurement waits on their write-back.
//!
//! Each iteration is one store call on a current-thread Tokio runtime, so the figures include the
//! hop to the blocking thread pool, as in a server.
//!
//! `load`, `save_one_key`, `touch` and `create_then_delete` work on the same 100 sessions in both
//! folders, so the only difference is how many files sit beside them. `load_spread` and
//! `touch_spread` pick any session of the folder instead: with 100,000 that also measures colder
//! caches (and, for touch, a different inode made dirty each time), which is the cost of many
//! *active* sessions rather than of many files.

// A benchmark that cannot set up its folder must stop with the reason.
#![allow(clippy::panic)]

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration as StdDuration, UNIX_EPOCH};

use divan::Bencher;
use serde_json::json;
use time::{Duration, OffsetDateTime};
use tokio::runtime::Runtime;
use tower_satchel::{
    ChangeSet, Expiry, FileStore, Record, Saved, SessionId, SessionKey, SessionStore,
};

const SIZES: [usize; 2] = [100, 100_000];
/// Sessions the main benchmarks work on, in either folder.
const WORKING_SET: usize = 100;

fn main() {
    divan::main();
    let _ = fs::remove_dir_all(root());
}

fn root() -> PathBuf {
    let base = std::env::var_os("FILE_STORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("tower-satchel-file-bench-{}", std::process::id()))
}

struct Fixture {
    runtime: Runtime,
    store: FileStore,
    keys: Vec<SessionKey>,
    next: AtomicUsize,
    now: OffsetDateTime,
}

impl Fixture {
    /// One of the first 100 seeded keys, a different one each call.
    fn key(&self) -> SessionKey {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.keys.len().min(WORKING_SET);
        self.keys[i]
    }

    /// Any seeded key, spread over the whole folder.
    fn any_key(&self) -> SessionKey {
        let i = self.next.fetch_add(7919, Ordering::Relaxed) % self.keys.len();
        self.keys[i]
    }
}

/// The expiry policy of every benchmarked session.
const POLICY: Expiry = Expiry::OnInactivity(Duration::days(1));

fn sample_record(now: OffsetDateTime) -> Record {
    let mut record = Record::new(
        now,
        now + Duration::days(1),
        Some(now + Duration::days(30)),
        POLICY,
    );
    record
        .data
        .insert("user".into(), json!("alice@example.com"));
    record.data.insert("visits".into(), json!(42));
    record.data.insert(
        "cart".into(),
        json!({"items": ["a", "b", "c"], "total": 1999}),
    );
    record
}

fn fixture(size: usize) -> &'static Fixture {
    static SMALL: OnceLock<Fixture> = OnceLock::new();
    static LARGE: OnceLock<Fixture> = OnceLock::new();
    let cell = if size <= SIZES[0] { &SMALL } else { &LARGE };
    cell.get_or_init(|| seed(size))
}

fn seed(size: usize) -> Fixture {
    let dir = root().join(size.to_string());
    let store = FileStore::new(&dir).unwrap_or_else(|e| panic!("cannot open {dir:?}: {e}"));
    let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let record = sample_record(now);
    let bytes = record.encode().unwrap_or_default();
    let deadline =
        UNIX_EPOCH + StdDuration::from_secs(record.deadline().unix_timestamp().unsigned_abs());
    let mut keys = Vec::with_capacity(size);
    for _ in 0..size {
        let Ok(id) = SessionId::generate() else {
            panic!("no OS randomness");
        };
        let key = id.key();
        let path = store.path_of(&key);
        let written = fs::write(&path, &bytes).and_then(|()| {
            fs::File::options()
                .write(true)
                .open(&path)?
                .set_modified(deadline)
        });
        if let Err(e) = written {
            panic!("cannot seed {path:?}: {e}");
        }
        keys.push(key);
    }
    // Flush the seeded files now, so that no measurement waits on their write-back.
    let _ = std::process::Command::new("sync").status();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("no runtime: {e}"));
    let loaded = runtime.block_on(store.load(&keys[0], now));
    assert!(
        matches!(loaded, Ok(Some(ref r)) if r.data == record.data),
        "the seeded layout does not load: {loaded:?}"
    );
    Fixture {
        runtime,
        store,
        keys,
        next: AtomicUsize::new(0),
        now,
    }
}

#[divan::bench(args = SIZES, sample_count = 200)]
fn load(bencher: Bencher, size: usize) {
    let f = fixture(size);
    bencher.bench(|| {
        let loaded = f.runtime.block_on(f.store.load(&f.key(), f.now));
        assert!(matches!(loaded, Ok(Some(_))));
    });
}

#[divan::bench(args = SIZES, sample_count = 100)]
fn save_one_key(bencher: Bencher, size: usize) {
    let f = fixture(size);
    let counter = AtomicUsize::new(0);
    bencher.bench(|| {
        let mut changes = ChangeSet::default();
        changes.set.insert(
            "visits".into(),
            json!(counter.fetch_add(1, Ordering::Relaxed)),
        );
        let saved = f.runtime.block_on(f.store.save(&f.key(), &changes, f.now));
        assert!(matches!(saved, Ok(Saved::Applied)));
    });
}

#[divan::bench(args = SIZES, sample_count = 200)]
fn touch(bencher: Bencher, size: usize) {
    let f = fixture(size);
    let counter = AtomicUsize::new(0);
    bencher.bench(|| {
        // A different deadline each time, so the modification time really changes.
        let step = i64::try_from(counter.fetch_add(1, Ordering::Relaxed) % 1000).unwrap_or(0);
        let deadline = f.now + Duration::hours(2) + Duration::seconds(step);
        let touched = f
            .runtime
            .block_on(f.store.touch(&f.key(), deadline, POLICY, f.now));
        assert!(matches!(touched, Ok(Saved::Applied)));
    });
}

#[divan::bench(args = SIZES, sample_count = 100)]
fn create_then_delete(bencher: Bencher, size: usize) {
    let f = fixture(size);
    let record = sample_record(f.now);
    bencher
        .with_inputs(|| SessionId::generate().map(|id| id.key()))
        .bench_values(|key| {
            let Ok(key) = key else { return };
            let done = f.runtime.block_on(async {
                let created = f.store.create(&key, &record, f.now).await?;
                f.store.delete(&key).await?;
                Ok::<_, tower_satchel::StoreError>(created)
            });
            assert!(matches!(done, Ok(true)));
        });
}

#[divan::bench(args = SIZES, sample_count = 200)]
fn load_spread(bencher: Bencher, size: usize) {
    let f = fixture(size);
    bencher.bench(|| {
        let loaded = f.runtime.block_on(f.store.load(&f.any_key(), f.now));
        assert!(matches!(loaded, Ok(Some(_))));
    });
}

#[divan::bench(args = SIZES, sample_count = 200)]
fn touch_spread(bencher: Bencher, size: usize) {
    let f = fixture(size);
    let counter = AtomicUsize::new(0);
    bencher.bench(|| {
        let step = i64::try_from(counter.fetch_add(1, Ordering::Relaxed) % 1000).unwrap_or(0);
        let deadline = f.now + Duration::hours(3) + Duration::seconds(step);
        let touched = f
            .runtime
            .block_on(f.store.touch(&f.any_key(), deadline, POLICY, f.now));
        assert!(matches!(touched, Ok(Saved::Applied)));
    });
}

/// One cleanup call when nothing has expired: it lists the whole folder and reads each file's
/// metadata (not its contents). This one does grow with the folder, by design.
#[divan::bench(args = SIZES, sample_count = 10)]
fn sweep_with_nothing_expired(bencher: Bencher, size: usize) {
    let f = fixture(size);
    bencher.bench(|| {
        let deleted = f.runtime.block_on(f.store.delete_expired(f.now, 1000));
        assert!(matches!(deleted, Ok(0)));
    });
}
