//! The file store against the conformance suite, and what only a file store can get wrong:
//! several processes on one folder (saving, renaming and revoking at once), paths built from
//! client input, damaged and leftover files, a read-only folder, a full disk, restarts.
//!
//! Folders are created under Cargo's `CARGO_TARGET_TMPDIR` (inside the target folder, on the
//! same disk as the build, so `fsync` is real).
// Unix only: the tests check permission bits, inodes and `chattr`.
#![cfg(all(feature = "file-store", unix))]
#![allow(clippy::unwrap_used, clippy::panic)]

#[macro_use]
mod conformance;
mod support_disk;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, StatusCode};
use conformance::contract::{key, now, owned, record};
use conformance::harness;
use serde_json::json;
use sha2::{Digest, Sha256};
use time::Duration;
use tower_satchel::{
    ChangeSet, CleanupConfig, FileStore, IntoBackend, ManualClock, Renamed, Saved, SessionId,
    SessionKey, SessionStore, StoreErrorKind, spawn_cleanup_with_clock,
};

/// A new, not yet existing folder for one store.
fn fresh_dir(tag: &str) -> PathBuf {
    let unique = &SessionId::generate().unwrap().key().to_hex()[..16];
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("store_file")
        .join(format!("{tag}-{unique}"))
}

mod file {
    server_store_conformance!(|| async {
        tower_satchel::FileStore::new(crate::fresh_dir("conformance")).unwrap()
    });
}

mod file_with_prefix_and_folder_sync {
    // Another naming scheme (the sweep must parse it) and the folder flushed after each rename.
    server_store_conformance!(|| async {
        tower_satchel::FileStore::builder(crate::fresh_dir("conformance-sync"))
            .prefix("sess_")
            .suffix("")
            .sync_folder(true)
            .open()
            .unwrap()
    });
}

fn set(key: &str, value: serde_json::Value) -> ChangeSet {
    let mut changes = ChangeSet::default();
    changes.set.insert(key.to_owned(), value);
    changes
}

// ---------------------------------------------------------------------------------------------
// Several processes on one folder
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_folder_keep_every_concurrent_change() {
    let dir = fresh_dir("two-stores");
    // Two values opened separately share nothing in memory: only the file locks order them, as
    // between two processes.
    let a = Arc::new(FileStore::new(&dir).unwrap());
    let b = Arc::new(FileStore::new(&dir).unwrap());
    let now = now();
    let k = key();
    assert!(a.create(&k, &record(now), now).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .save(&k, &set(&format!("k{i}"), json!(i)), now)
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), Saved::Applied);
    }
    for store in [&a, &b] {
        let loaded = store.load(&k, now).await.unwrap().unwrap();
        for i in 0..64 {
            assert_eq!(
                loaded.data.get(&format!("k{i}")),
                Some(&json!(i)),
                "k{i} lost"
            );
        }
        assert_eq!(
            loaded.data.get("a"),
            Some(&json!(1)),
            "the original data kept"
        );
    }
}

/// Carries the parent test's arguments to a child process, `|`-separated.
const CHILD_ENV: &str = "TOWER_SATCHEL_FILE_STORE_CHILD";
const CHILD_SAVES: usize = 40;

/// Runs this binary's ignored test `name` as a child process, handing it `args`.
fn spawn_child(name: &str, args: &[&str]) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--test-threads=1"])
        .env(CHILD_ENV, args.join("|"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// In a child test, the arguments its parent handed it: refuses to run on its own.
fn child_args<const N: usize>() -> [String; N] {
    let spec = std::env::var(CHILD_ENV)
        .unwrap_or_else(|_| panic!("run only as a child process by another test of this file"));
    let args: Vec<String> = spec.split('|').map(str::to_owned).collect();
    args.try_into().unwrap()
}

/// Waits for `child` and fails the test unless its one test passed.
fn expect_child_passed(child: std::process::Child, what: &str) {
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The writer half of `two_processes_on_one_folder_keep_every_concurrent_change`, run by it as a
/// child process (`--ignored --exact`); it refuses to run on its own.
#[test]
#[ignore = "run as a child process by two_processes_on_one_folder_keep_every_concurrent_change"]
fn child_process_writer() {
    let [dir, hex, tag, now] = child_args();
    let key = SessionKey::from_hex(&hex).unwrap();
    let now = time::OffsetDateTime::from_unix_timestamp(now.parse().unwrap()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(FileStore::new(&dir).unwrap());
        let mut tasks = Vec::new();
        for i in 0..CHILD_SAVES {
            let store = store.clone();
            let name = format!("{tag}-{i}");
            tasks.push(tokio::spawn(async move {
                store.save(&key, &set(&name, json!(i)), now).await.unwrap()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), Saved::Applied);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_folder_keep_every_concurrent_change() {
    let dir = fresh_dir("two-processes");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let k = key();
    assert!(store.create(&k, &record(now), now).await.unwrap());
    let (dir_arg, hex, at) = (
        dir.display().to_string(),
        k.to_hex(),
        now.unix_timestamp().to_string(),
    );
    let children: Vec<_> = ["p1", "p2"]
        .into_iter()
        .map(|tag| spawn_child("child_process_writer", &[&dir_arg, &hex, tag, &at]))
        .collect();
    // This process writes too, meanwhile.
    for i in 0..CHILD_SAVES {
        assert_eq!(
            store
                .save(&k, &set(&format!("p0-{i}"), json!(i)), now)
                .await
                .unwrap(),
            Saved::Applied
        );
    }
    for child in children {
        expect_child_passed(child, "child writer");
    }
    let loaded = store.load(&k, now).await.unwrap().unwrap();
    for tag in ["p0", "p1", "p2"] {
        for i in 0..CHILD_SAVES {
            assert_eq!(
                loaded.data.get(&format!("{tag}-{i}")),
                Some(&json!(i)),
                "{tag}-{i} lost"
            );
        }
    }
}

#[tokio::test]
async fn the_owner_index_is_shared_by_stores_on_one_folder() {
    let dir = fresh_dir("owners");
    let a = FileStore::new(&dir).unwrap();
    let b = FileStore::new(&dir).unwrap();
    let now = now();
    let (k1, k2) = (key(), key());
    assert!(a.create(&k1, &owned(now, "alice"), now).await.unwrap());
    assert!(a.create(&k2, &owned(now, "alice"), now).await.unwrap());
    assert_eq!(b.list_owner("alice", now).await.unwrap().len(), 2);

    // A marker whose record is gone (a crash between the two writes) is dropped by a listing.
    let owner_dir = owner_dir(&dir, "alice");
    let stale = key();
    fs::write(owner_dir.join(stale.to_hex()), b"").unwrap();
    let listed = b.list_owner("alice", now).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        !owner_dir.join(stale.to_hex()).exists(),
        "stale marker kept"
    );

    assert_eq!(b.delete_owner("alice").await.unwrap(), 2);
    assert_eq!(a.load(&k1, now).await.unwrap(), None);
    assert_eq!(a.load(&k2, now).await.unwrap(), None);
    assert!(!owner_dir.exists(), "the empty owner folder is removed");
}

#[tokio::test]
async fn owner_names_never_reach_a_path() {
    let dir = fresh_dir("owner-names");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let k = key();
    let hostile = "../../../escape/\0\\x";
    assert!(store.create(&k, &owned(now, hostile), now).await.unwrap());
    assert_eq!(store.list_owner(hostile, now).await.unwrap().len(), 1);
    let owners: Vec<String> = fs::read_dir(dir.join(".owners"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(owners.len(), 1);
    assert_eq!(SessionKey::from_hex(&owners[0]).map(|_| ()), Some(()));
    assert!(!dir.parent().unwrap().join("escape").exists());
    assert_eq!(store.delete_owner(hostile).await.unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------
// Rename (`cycle_id`) across stores and processes, and when it cannot finish
// ---------------------------------------------------------------------------------------------

/// Rounds of the two-store rename races: each a few milliseconds of `fsync`s.
const RENAME_ROUNDS: usize = 100;

/// A rotation's change set, as `cycle_id` hands it to `rename`, giving the session to `owner`.
fn rotation(now: time::OffsetDateTime, owner: Option<&str>) -> ChangeSet {
    let mut changes = set("rotated", json!(true));
    changes.idle_deadline = Some(now + Duration::hours(2));
    changes.owner = Some(owner.map(str::to_owned));
    changes
}

/// The owner index folder of `owner` in the store folder `dir`, for a store with the default
/// prefix (none) and suffix (`.json`): named by the SHA-256 of the prefix and the suffix, each
/// after its length in one byte, then the owner.
fn owner_dir(dir: &Path, owner: &str) -> PathBuf {
    let mut hasher = Sha256::new();
    hasher.update(b"\x00\x05.json");
    hasher.update(owner.as_bytes());
    dir.join(".owners")
        .join(SessionKey::from_bytes(hasher.finalize().into()).to_hex())
}

/// The keys `owner`'s index folder holds markers for, sorted.
fn markers(dir: &Path, owner: &str) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(owner_dir(dir, owner)) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{e}"),
    };
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_folder_see_a_rename_as_one_step() {
    let dir = fresh_dir("two-stores-rename");
    let a = Arc::new(FileStore::new(&dir).unwrap());
    let b = Arc::new(FileStore::new(&dir).unwrap());
    let now = now();
    let (mut carried, mut refused) = (0, 0);
    for _ in 0..RENAME_ROUNDS {
        let (from, to) = (key(), key());
        assert!(a.create(&from, &owned(now, "alice"), now).await.unwrap());
        // Saves through the other store, racing a rename through this one.
        let saves: Vec<_> = (0..3)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move {
                    b.save(&from, &set(&format!("x{i}"), json!(i)), now)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let renamed = a
            .rename(&from, &to, &rotation(now, Some("alice")), now)
            .await
            .unwrap();
        assert_eq!(renamed, Renamed::Applied);
        let moved = b.load(&to, now).await.unwrap().unwrap();
        assert_eq!(moved.data.get("rotated"), Some(&json!(true)));
        for (i, save) in saves.into_iter().enumerate() {
            match save.await.unwrap() {
                Saved::Applied => {
                    assert_eq!(
                        moved.data.get(&format!("x{i}")),
                        Some(&json!(i)),
                        "a save answered Applied was lost by the rename"
                    );
                    carried += 1;
                }
                Saved::Gone => {
                    assert!(!moved.data.contains_key(&format!("x{i}")));
                    refused += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(b.load(&from, now).await.unwrap(), None);
        assert!(!a.path_of(&from).exists());
    }
    assert_eq!(carried + refused, 3 * RENAME_ROUNDS);
    // One marker per session, each under its new key.
    assert_eq!(markers(&dir, "alice").len(), RENAME_ROUNDS);
    assert_eq!(
        a.list_owner("alice", now).await.unwrap().len(),
        RENAME_ROUNDS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_folder_never_let_a_rename_escape_a_revocation() {
    let dir = fresh_dir("two-stores-revoke");
    let a = Arc::new(FileStore::new(&dir).unwrap());
    let b = Arc::new(FileStore::new(&dir).unwrap());
    let now = now();
    for round in 0..RENAME_ROUNDS {
        let owner = format!("user-{round}");
        let (from, to) = (key(), key());
        assert!(a.create(&from, &owned(now, &owner), now).await.unwrap());
        let revoking = {
            let (b, owner) = (b.clone(), owner.clone());
            tokio::spawn(async move { b.delete_owner(&owner).await.unwrap() })
        };
        let renamed = a
            .rename(&from, &to, &rotation(now, Some(&owner)), now)
            .await
            .unwrap();
        assert!(matches!(renamed, Renamed::Applied | Renamed::Gone));
        assert_eq!(revoking.await.unwrap(), 1, "one session, under either key");
        assert_eq!(a.load(&to, now).await.unwrap(), None, "{renamed:?}");
        assert_eq!(a.load(&from, now).await.unwrap(), None);
        assert!(
            markers(&dir, &owner).is_empty(),
            "markers left: {renamed:?}"
        );
        assert!(!owner_dir(&dir, &owner).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_renaming_one_session_at_once_move_it_once() {
    let dir = fresh_dir("two-renames");
    let a = Arc::new(FileStore::new(&dir).unwrap());
    let b = Arc::new(FileStore::new(&dir).unwrap());
    let now = now();
    for _ in 0..RENAME_ROUNDS {
        let (from, to_a, to_b) = (key(), key(), key());
        assert!(a.create(&from, &owned(now, "alice"), now).await.unwrap());
        let other = {
            let b = b.clone();
            tokio::spawn(async move {
                b.rename(&from, &to_b, &rotation(now, Some("bob")), now)
                    .await
                    .unwrap()
            })
        };
        let mine = a
            .rename(&from, &to_a, &rotation(now, Some("bob")), now)
            .await
            .unwrap();
        let theirs = other.await.unwrap();
        let mut outcomes = [mine, theirs];
        outcomes.sort_by_key(|r| *r == Renamed::Applied);
        assert_eq!(outcomes, [Renamed::Gone, Renamed::Applied]);
        let (winner, loser) = if mine == Renamed::Applied {
            (to_a, to_b)
        } else {
            (to_b, to_a)
        };
        assert!(a.load(&winner, now).await.unwrap().is_some());
        assert!(!a.path_of(&loser).exists());
        assert!(!a.path_of(&from).exists());
    }
    assert!(markers(&dir, "alice").is_empty());
    assert_eq!(markers(&dir, "bob").len(), RENAME_ROUNDS);
}

/// A key whose lock file is `stripe` (its first three hex digits), the rest random.
fn key_in_stripe(stripe: u16) -> SessionKey {
    let mut bytes = *key().as_bytes();
    let [high, low] = (stripe << 4).to_be_bytes();
    bytes[0] = high;
    bytes[1] = (bytes[1] & 0x0f) | low;
    SessionKey::from_bytes(bytes)
}

#[test]
fn crossing_renames_on_two_stores_do_not_deadlock() {
    let dir = fresh_dir("crossing");
    let a = Arc::new(FileStore::new(&dir).unwrap());
    let b = Arc::new(FileStore::new(&dir).unwrap());
    let now = now();
    let rounds = async {
        for _ in 0..RENAME_ROUNDS {
            // One rename from the low lock file to the high one, the other the other way: locked
            // in the order of the keys, they would each hold one lock and wait for the other.
            let (low_a, high_a) = (key_in_stripe(0x001), key_in_stripe(0xffe));
            let (low_b, high_b) = (key_in_stripe(0x001), key_in_stripe(0xffe));
            assert!(low_a.to_hex().starts_with("001") && high_b.to_hex().starts_with("ffe"));
            assert!(a.create(&low_a, &record(now), now).await.unwrap());
            assert!(b.create(&high_b, &record(now), now).await.unwrap());
            let up = {
                let a = a.clone();
                tokio::spawn(async move {
                    a.rename(&low_a, &high_a, &rotation(now, None), now)
                        .await
                        .unwrap()
                })
            };
            let down = b
                .rename(&high_b, &low_b, &rotation(now, None), now)
                .await
                .unwrap();
            assert_eq!(
                (up.await.unwrap(), down),
                (Renamed::Applied, Renamed::Applied)
            );
        }
    };
    // A runtime of its own, shut down without waiting, so that a deadlock (threads stuck in
    // `flock` for good) fails the test rather than hanging it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let finished =
        runtime.block_on(async { tokio::time::timeout(StdDuration::from_secs(120), rounds).await });
    runtime.shutdown_timeout(StdDuration::from_millis(100));
    assert!(finished.is_ok(), "crossing renames deadlocked");
}

#[tokio::test]
async fn a_rename_moves_the_owner_markers_and_drops_a_replaced_records() {
    let dir = fresh_dir("rename-markers");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let (from, to) = (key(), key());
    let mut dead = owned(now, "carol");
    dead.idle_deadline = now + Duration::seconds(30);
    assert!(store.create(&to, &dead, now).await.unwrap());
    let later = now + Duration::seconds(31);
    assert!(
        store
            .create(&from, &owned(now, "alice"), later)
            .await
            .unwrap()
    );
    assert_eq!(markers(&dir, "carol"), vec![to.to_hex()]);
    assert_eq!(markers(&dir, "alice"), vec![from.to_hex()]);

    assert_eq!(
        store
            .rename(&from, &to, &rotation(later, Some("bob")), later)
            .await
            .unwrap(),
        Renamed::Applied
    );
    assert_eq!(markers(&dir, "bob"), vec![to.to_hex()]);
    assert!(
        !owner_dir(&dir, "alice").exists(),
        "the old owner's marker kept"
    );
    assert!(
        !owner_dir(&dir, "carol").exists(),
        "the replaced record's marker kept"
    );
    assert!(!store.path_of(&from).exists());
    let moved = store.load(&to, later).await.unwrap().unwrap();
    assert_eq!(moved.owner.as_deref(), Some("bob"));
    assert_eq!(moved.deadline(), later + Duration::hours(2));
    let mtime = fs::metadata(store.path_of(&to))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        mtime,
        moved.deadline().unix_timestamp().unsigned_abs(),
        "the moved file's modification time is its new deadline"
    );
    assert!(
        fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".tmp-")),
        "temporary files left"
    );
    // Owned by the same user before and after: one marker, moved.
    let next = key();
    assert_eq!(
        store
            .rename(&to, &next, &rotation(later, Some("bob")), later)
            .await
            .unwrap(),
        Renamed::Applied
    );
    assert_eq!(markers(&dir, "bob"), vec![next.to_hex()]);
}

#[tokio::test]
async fn a_rename_on_a_full_disk_is_an_error_and_leaves_the_session_as_it_was() {
    let dir = fresh_dir("rename-full-disk");
    let Some(disk) = support_disk::SmallDisk::mount(&dir, "256k") else {
        support_disk::skip_without_root("mounting a small tmpfs");
        return;
    };
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let (from, to) = (key(), key());
    let before = owned(now, "alice");
    assert!(store.create(&from, &before, now).await.unwrap());
    let filler = disk.fill();

    let err = store
        .rename(&from, &to, &rotation(now, Some("bob")), now)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Backend);
    let io = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("the io::Error is kept");
    assert_eq!(io.kind(), std::io::ErrorKind::StorageFull, "{io:?}");
    assert_eq!(store.load(&from, now).await.unwrap(), Some(before.clone()));
    assert_eq!(store.load(&to, now).await.unwrap(), None);
    assert!(!store.path_of(&to).exists());
    assert_eq!(markers(&dir, "alice"), vec![from.to_hex()]);
    assert!(markers(&dir, "bob").is_empty(), "a marker for nothing left");
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".tmp-")),
        "temporary files left: {names:?}"
    );

    // Space again: the same rename goes through.
    fs::remove_file(filler).unwrap();
    assert_eq!(
        store
            .rename(&from, &to, &rotation(now, Some("bob")), now)
            .await
            .unwrap(),
        Renamed::Applied
    );
    assert_eq!(store.load(&from, now).await.unwrap(), None);
    let moved = store.load(&to, now).await.unwrap().unwrap();
    assert_eq!(moved.data.get("a"), Some(&json!(1)));
    assert_eq!(markers(&dir, "bob"), vec![to.to_hex()]);
    drop(disk);
}

#[tokio::test]
async fn a_rename_in_a_read_only_folder_is_an_error_and_leaves_the_session_as_it_was() {
    let dir = fresh_dir("rename-read-only");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let (from, to) = (key(), key());
    let before = record(now);
    assert!(store.create(&from, &before, now).await.unwrap());
    {
        let _read_only = ReadOnly::new(&dir);
        let err = store
            .rename(&from, &to, &rotation(now, None), now)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Backend);
        assert_eq!(store.load(&from, now).await.unwrap(), Some(before.clone()));
        assert_eq!(store.load(&to, now).await.unwrap(), None);
    }
    assert_eq!(
        store
            .rename(&from, &to, &rotation(now, None), now)
            .await
            .unwrap(),
        Renamed::Applied
    );
}

#[tokio::test]
async fn a_rename_that_cannot_delete_the_old_file_takes_back_the_new_one() {
    let dir = fresh_dir("rename-undo");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let (from, to) = (key(), key());
    let before = owned(now, "alice");
    assert!(store.create(&from, &before, now).await.unwrap());
    // An immutable file cannot be deleted, while the folder stays writable.
    let old = store.path_of(&from);
    let immutable = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&old)
        .status()
        .is_ok_and(|s| s.success());
    if !immutable {
        support_disk::skip_without_root("`chattr +i`");
        return;
    }
    let renamed = store
        .rename(&from, &to, &rotation(now, Some("bob")), now)
        .await;
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&old)
        .status();
    let err = renamed.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Backend);
    assert_eq!(store.load(&from, now).await.unwrap(), Some(before));
    assert!(
        !store.path_of(&to).exists(),
        "the session kept under two keys"
    );
    assert_eq!(markers(&dir, "alice"), vec![from.to_hex()]);
    assert!(markers(&dir, "bob").is_empty(), "a marker for nothing left");
    assert_eq!(
        store
            .rename(&from, &to, &rotation(now, Some("bob")), now)
            .await
            .unwrap(),
        Renamed::Applied
    );
}

/// More saves than the child can make before the parent renames the session away.
const RENAME_CHILD_SAVES: usize = 100_000;

/// The saving half of `a_rename_in_another_process_carries_or_refuses_each_save`, run by it as
/// a child process (`--ignored --exact`): saves one key after another until the session is gone,
/// then writes how many were applied to the result file.
#[test]
#[ignore = "run as a child process by a_rename_in_another_process_carries_or_refuses_each_save"]
fn child_process_saver() {
    let [dir, hex, now, result] = child_args();
    let key = SessionKey::from_hex(&hex).unwrap();
    let now = time::OffsetDateTime::from_unix_timestamp(now.parse().unwrap()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let applied = runtime.block_on(async {
        let store = FileStore::new(&dir).unwrap();
        for i in 0..RENAME_CHILD_SAVES {
            match store
                .save(&key, &set(&format!("s{i}"), json!(i)), now)
                .await
            {
                Ok(Saved::Applied) => {}
                Ok(Saved::Gone) => {
                    // Gone for good: the old key never comes back.
                    let again = store.save(&key, &set("late", json!(0)), now).await;
                    assert_eq!(again.unwrap(), Saved::Gone);
                    return i;
                }
                other => panic!("save {i}: {other:?}"),
            }
        }
        RENAME_CHILD_SAVES
    });
    fs::write(result, applied.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_in_another_process_carries_or_refuses_each_save() {
    let dir = fresh_dir("rename-process");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let (from, to) = (key(), key());
    assert!(
        store
            .create(&from, &owned(now, "alice"), now)
            .await
            .unwrap()
    );
    let result = dir.join("child-result");
    let child = spawn_child(
        "child_process_saver",
        &[
            &dir.display().to_string(),
            &from.to_hex(),
            &now.unix_timestamp().to_string(),
            &result.display().to_string(),
        ],
    );
    // Rename once the child is saving, so that the rename lands between two of its saves.
    let mut started = false;
    for _ in 0..1000 {
        let loaded = store.load(&from, now).await.unwrap().unwrap();
        if loaded.data.contains_key("s20") {
            started = true;
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    assert!(started, "the child process did not start saving");
    assert_eq!(
        store
            .rename(&from, &to, &rotation(now, Some("alice")), now)
            .await
            .unwrap(),
        Renamed::Applied
    );
    expect_child_passed(child, "child saver");
    let applied: usize = fs::read_to_string(&result).unwrap().parse().unwrap();
    assert!(
        (21..RENAME_CHILD_SAVES).contains(&applied),
        "{applied} saves applied"
    );
    let moved = store.load(&to, now).await.unwrap().unwrap();
    for i in 0..applied {
        assert_eq!(
            moved.data.get(&format!("s{i}")),
            Some(&json!(i)),
            "save {i}, answered Applied, lost by the rename"
        );
    }
    assert!(
        !moved.data.contains_key(&format!("s{applied}")),
        "a save answered Gone was written"
    );
    assert!(!moved.data.contains_key("late"));
    assert_eq!(store.load(&from, now).await.unwrap(), None);
    assert_eq!(markers(&dir, "alice"), vec![to.to_hex()]);
}

// ---------------------------------------------------------------------------------------------
// Paths from client input (SECURITY.md 4, 5)
// ---------------------------------------------------------------------------------------------

/// Every file under `root` except those under `skip`, with its size and modification time.
fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if path.starts_with(skip) {
                continue;
            }
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.insert(path, (meta.len(), meta.modified().unwrap()));
        }
    }
    out
}

#[tokio::test]
async fn cookies_shaped_like_paths_never_read_or_write_outside_the_folder() {
    let root = fresh_dir("paths");
    let folder = root.join("store");
    let store = FileStore::new(&folder).unwrap();
    // Bait outside the folder: a valid record, which must never be loaded.
    let now = now();
    let mut bait = record(now + Duration::hours(1));
    bait.data.insert("n".into(), json!(41));
    fs::write(root.join("x"), bait.encode().unwrap()).unwrap();
    fs::write(root.join("x.json"), bait.encode().unwrap()).unwrap();
    fs::create_dir_all(root.join("a")).unwrap();
    fs::write(root.join("a").join("b"), bait.encode().unwrap()).unwrap();
    let before = snapshot(&root, &folder);

    let app = harness::default_app(store.clone().into_backend());
    let pad = |s: &str| format!("{s}{}", "A".repeat(43usize.saturating_sub(s.len())));
    let abs = root.join("x").display().to_string();
    let shapes = [
        "../x".to_owned(),
        "a/b".to_owned(),
        "a\\b".to_owned(),
        "..\\x".to_owned(),
        abs.clone(),
        "/etc/passwd".to_owned(),
        "C:\\Windows\\win.ini".to_owned(),
        "x%00".to_owned(),
        "..%2fx".to_owned(),
        // The ID's exact length, so only the alphabet check stands in the way.
        pad("../x"),
        pad("../../x.json"),
        pad("a/b"),
        pad("a\\b"),
        pad("/"),
        pad(&abs),
        pad("%2e%2e%2fx"),
    ];
    let mut issued = Vec::new();
    for shape in &shapes {
        let cookie = HeaderValue::from_str(&format!("{}={shape}", app.cookie_name)).unwrap();
        let resp = app.get_raw_cookie("/incr/n", cookie).await;
        assert_eq!(resp.status, StatusCode::OK, "{shape:?}");
        assert_eq!(resp.body, "1", "{shape:?} loaded something");
        let token = resp.expect_token();
        assert_ne!(&token, shape);
        issued.push(SessionId::parse(&token).unwrap().key());
    }
    // NUL cannot even travel in a header; were it decoded from one, it would not parse.
    assert!(HeaderValue::from_bytes(b"id=..\0x").is_err());
    assert!(SessionId::parse(&pad("\0")).is_none());

    assert_eq!(
        snapshot(&root, &folder),
        before,
        "something changed outside the folder"
    );
    // Inside, every session file is named by a key the layer issued.
    let mut names: Vec<String> = fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut expected: Vec<String> = issued
        .iter()
        .map(|k| format!("{}.json", k.to_hex()))
        .collect();
    expected.sort();
    assert_eq!(names, expected);
}

// ---------------------------------------------------------------------------------------------
// Damaged and leftover files
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Bytes no decoder would accept: a fixed pseudo-random sequence, invalid UTF-8 included.
fn random_bytes() -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..700)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[tokio::test]
async fn damaged_files_read_as_no_session_are_logged_and_removed() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = fresh_dir("damaged");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    type Damage = fn(Vec<u8>) -> Vec<u8>;
    let damages: [(&str, Damage); 4] = [
        ("truncated", |bytes| bytes[..bytes.len() / 2].to_vec()),
        ("random bytes", |_| random_bytes()),
        ("empty", |_| Vec::new()),
        ("not a record", |_| b"{\"v\":1,\"hello\":true}".to_vec()),
    ];
    for (what, damage) in damages {
        let k = key();
        assert!(store.create(&k, &record(now), now).await.unwrap());
        let path = store.path_of(&k);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, damage(bytes)).unwrap();

        assert_eq!(store.load(&k, now).await.unwrap(), None, "{what}");
        assert!(!path.exists(), "{what}: the damaged file was kept");
        let text = logs.text();
        assert!(text.contains("WARN"), "{what}: no warning in\n{text}");
        assert!(text.contains("corrupt session file"), "{what}: {text}");
        assert!(text.contains(&k.log_tag().to_string()), "{what}: untagged");
        assert!(
            !text.contains(&k.to_hex()),
            "{what}: the key leaked into logs"
        );
        // And nothing can be saved into it.
        assert_eq!(
            store.save(&k, &set("x", json!(1)), now).await.unwrap(),
            Saved::Gone
        );
    }

    // Through the layer: a fresh session rather than an error response.
    let app = harness::default_app(store.clone().into_backend());
    let token = app.start().await;
    let path = store.path_of(&SessionId::parse(&token).unwrap().key());
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let resp = app.get("/incr/n", Some(&token)).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body, "1");
    assert_ne!(
        resp.expect_token(),
        token,
        "the damaged session's ID is not adopted"
    );
}

#[tokio::test]
async fn a_record_from_a_newer_version_reads_as_no_session_and_is_kept() {
    let dir = fresh_dir("newer");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let k = key();
    let path = store.path_of(&k);
    fs::write(&path, br#"{"v":99,"future":"format"}"#).unwrap();
    assert_eq!(store.load(&k, now).await.unwrap(), None);
    assert!(
        !store.create(&k, &record(now), now).await.unwrap(),
        "not overwritten"
    );
    assert!(path.exists(), "another version's record was removed");
    // Marked as alice's by the version that wrote it, it goes when alice's sessions are revoked
    // (SECURITY.md 12): that version's process would let the cookie in.
    fs::create_dir_all(owner_dir(&dir, "alice")).unwrap();
    fs::write(owner_dir(&dir, "alice").join(k.to_hex()), b"").unwrap();
    assert_eq!(store.delete_owner("alice").await.unwrap(), 1);
    assert!(!path.exists(), "a revoked session kept");
    assert!(markers(&dir, "alice").is_empty());
}

#[tokio::test]
async fn leftover_temporary_files_are_removed_by_the_cleanup_once_stale() {
    let dir = fresh_dir("temp");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let k = key();
    assert!(store.create(&k, &record(now), now).await.unwrap());
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // As a crashed writer leaves them: part of a record, or all of one never renamed.
    let stale = dir.join(format!(".tmp-{}-4242-0", secs - 2 * 3600));
    let fresh = dir.join(format!(".tmp-{secs}-4242-1"));
    fs::write(&stale, &fs::read(store.path_of(&k)).unwrap()[..10]).unwrap();
    fs::write(&fresh, fs::read(store.path_of(&k)).unwrap()).unwrap();

    assert_eq!(
        store.delete_expired(now, 100).await.unwrap(),
        0,
        "temporary files are not sessions"
    );
    assert!(!stale.exists(), "a stale temporary file was kept");
    assert!(fresh.exists(), "a write in progress was removed");
    assert!(store.load(&k, now).await.unwrap().is_some());
}

// ---------------------------------------------------------------------------------------------
// A read-only folder (SECURITY.md 28)
// ---------------------------------------------------------------------------------------------

/// Makes a folder read-only until dropped: `chmod 500`, plus `chattr +i` when running as root
/// (root ignores permission bits). Fails the test when neither works.
struct ReadOnly {
    dir: PathBuf,
    immutable: bool,
}

impl ReadOnly {
    fn new(dir: &Path) -> Self {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o500)).unwrap();
        let mut guard = ReadOnly {
            dir: dir.to_path_buf(),
            immutable: false,
        };
        if guard.writable() {
            let status = std::process::Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .status();
            guard.immutable = matches!(status, Ok(s) if s.success());
            assert!(
                guard.immutable && !guard.writable(),
                "cannot make a folder read-only: running as root, and `chattr +i` is missing or \
                 not permitted (needs e2fsprogs and CAP_LINUX_IMMUTABLE); run as a normal user"
            );
        }
        guard
    }

    fn writable(&self) -> bool {
        let probe = self.dir.join("probe");
        let ok = fs::write(&probe, b"").is_ok();
        let _ = fs::remove_file(&probe);
        ok
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.immutable {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.dir)
                .status();
        }
        let _ = fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700));
    }
}

/// A write that is in place stands as made when what follows it fails: here, dropping the
/// previous owner's marker from an owner folder that cannot be changed.
#[tokio::test]
async fn a_change_in_place_is_reported_made_when_the_owner_index_cannot_be_tidied() {
    let dir = fresh_dir("untidy");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let k = key();
    assert!(store.create(&k, &owned(now, "alice"), now).await.unwrap());
    let mut changes = set("x", json!(1));
    changes.owner = Some(Some("bob".to_owned()));
    {
        let _frozen = ReadOnly::new(&owner_dir(&dir, "alice"));
        assert_eq!(store.save(&k, &changes, now).await.unwrap(), Saved::Applied);
    }
    let saved = store.load(&k, now).await.unwrap().unwrap();
    assert_eq!(saved.owner.as_deref(), Some("bob"));
    assert_eq!(saved.data.get("x"), Some(&json!(1)));
    {
        let _frozen = ReadOnly::new(&owner_dir(&dir, "bob"));
        store.delete(&k).await.unwrap();
    }
    assert_eq!(store.load(&k, now).await.unwrap(), None);
    // The markers left behind name nothing, and go at the next listing.
    assert!(store.list_owner("alice", now).await.unwrap().is_empty());
    assert!(store.list_owner("bob", now).await.unwrap().is_empty());
    assert!(markers(&dir, "alice").is_empty());
    assert!(markers(&dir, "bob").is_empty());
}

/// A request naming an ID nobody issued writes nothing to the folder (SECURITY.md 3): not a
/// session file, and nothing in `.locks/` or `.owners/` either (which exist from the start, so
/// only a listing of every level shows what appears in them), nor does any file change.
#[tokio::test]
async fn an_unknown_id_writes_nothing() {
    let dir = fresh_dir("unknown");
    let store = FileStore::new(&dir).unwrap();
    let app = harness::default_app(store.clone().into_backend());
    // A live session with an owner: the owner index and a lock file have something in them.
    let live = app.get("/owner/alice", None).await.expect_token();
    // Another fresh folder: nothing under `dir` is skipped.
    let nothing = fresh_dir("unknown-skip-nothing");
    let before = snapshot(&dir, &nothing);
    assert!(
        before.keys().any(|p| p.starts_with(dir.join(".locks")))
            && before.keys().any(|p| p.starts_with(dir.join(".owners"))),
        "the snapshot sees into the index folders: {before:?}"
    );
    let planted = SessionId::generate().unwrap();
    let token = planted.expose();
    for route in ["/read", "/get/n", "/arrival", "/noop"] {
        let resp = app.get(route, Some(&token)).await;
        assert_eq!(resp.status, StatusCode::OK, "{route}");
        assert!(resp.token().is_none(), "{route}");
    }
    // Untouched, a new visitor's request writes nothing either.
    assert!(app.get("/noop", None).await.token().is_none());
    assert_eq!(snapshot(&dir, &nothing), before);
    assert!(!store.path_of(&planted.key()).exists());
    assert_eq!(app.get("/whose", Some(&live)).await.body, "alice");
}

/// A session file that cannot be read fails the request (SECURITY.md 28): no empty session in
/// its place, which a write would then store over it. Root reads files whatever their mode, so
/// a folder stands in the file's place (opening it works, reading it does not).
#[tokio::test]
async fn an_unreadable_session_file_gives_an_error_response() {
    let dir = fresh_dir("unreadable");
    let store = FileStore::new(&dir).unwrap();
    let app = harness::default_app(store.clone().into_backend());
    let token = app.start().await;
    let path = store.path_of(&SessionId::parse(&token).unwrap().key());
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    for route in ["/get/n", "/incr/n"] {
        let resp = app.get(route, Some(&token)).await;
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "{route}");
        assert!(resp.set_cookie().is_none(), "{route}");
    }
    let err = store
        .load(&SessionId::parse(&token).unwrap().key(), now())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Backend);
    assert!(
        path.is_dir(),
        "what stands in the file's place is left alone"
    );
}

#[tokio::test]
async fn a_read_only_folder_gives_error_responses_and_loses_nothing() {
    let dir = fresh_dir("read-only");
    let store = FileStore::new(&dir).unwrap();
    let app = harness::default_app(store.clone().into_backend());
    let token = app.start().await;
    {
        let _read_only = ReadOnly::new(&dir);
        let resp = app.get("/incr/n", Some(&token)).await;
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "a save");
        let resp = app.get("/incr/n", None).await;
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "a create");
        assert!(resp.token().is_none());
        // Reading still works.
        assert_eq!(app.get("/get/n", Some(&token)).await.body, "1");
        // Directly: the error is a backend error with its cause.
        let now = now();
        let err = store.create(&key(), &record(now), now).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Backend);
        let source = std::error::Error::source(&err).expect("the I/O error is kept");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert!(
            matches!(
                io.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ),
            "{io:?}"
        );
    }
    // Writable again: the session was neither emptied nor lost.
    assert_eq!(app.get("/incr/n", Some(&token)).await.body, "2");
}

#[tokio::test]
async fn a_full_disk_gives_error_responses_and_loses_nothing() {
    let dir = fresh_dir("full-disk");
    let Some(disk) = support_disk::SmallDisk::mount(&dir, "256k") else {
        support_disk::skip_without_root("mounting a small tmpfs");
        return;
    };
    let store = FileStore::new(&dir).unwrap();
    let app = harness::default_app(store.clone().into_backend());
    let token = app.start().await;
    let filler = disk.fill();

    let resp = app.get("/incr/n", Some(&token)).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "a save");
    let resp = app.get("/incr/n", None).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "a create");
    assert!(resp.token().is_none(), "no cookie for a session not stored");
    // Reading still works, and shows the data from before the failed save.
    assert_eq!(app.get("/get/n", Some(&token)).await.body, "1");
    // Directly: a backend error carrying the I/O error.
    let now = now();
    let err = store.create(&key(), &record(now), now).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Backend);
    let io = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("the io::Error is kept");
    assert_eq!(io.kind(), std::io::ErrorKind::StorageFull, "{io:?}");
    // The failed writes left no temporary files behind.
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".tmp-")),
        "temporary files left: {names:?}"
    );

    // Space again: the session was neither emptied nor lost, and counts on.
    fs::remove_file(filler).unwrap();
    assert_eq!(app.get("/incr/n", Some(&token)).await.body, "2");
    drop(disk);
}

#[tokio::test]
async fn a_folder_removed_under_a_running_store_is_created_again() {
    use std::os::unix::fs::PermissionsExt;
    let dir = fresh_dir("removed");
    let store = FileStore::new(&dir).unwrap();
    let app = harness::default_app(store.clone().into_backend());
    let token = app.start().await;
    fs::remove_dir_all(&dir).unwrap();

    // A new visitor first: the write makes the folder again.
    assert_eq!(app.get("/incr/n", None).await.status, StatusCode::OK);
    fs::remove_dir_all(&dir).unwrap();
    // The sessions went with the folder: an old cookie starts a fresh session, which is stored.
    let resp = app.get("/incr/n", Some(&token)).await;
    assert_eq!((resp.status, resp.body.as_str()), (StatusCode::OK, "1"));
    let fresh = resp.token().expect("a new session");
    assert_eq!(app.get("/incr/n", Some(&fresh)).await.body, "2");
    // The folder is private again.
    let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn a_path_that_is_not_a_folder_is_a_configuration_error() {
    let dir = fresh_dir("not-a-folder");
    fs::create_dir_all(dir.parent().unwrap()).unwrap();
    fs::write(&dir, b"a file").unwrap();
    let err = FileStore::new(&dir).unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Config);
}

// ---------------------------------------------------------------------------------------------
// Restarts, touch, permissions, cleanup
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sessions_survive_a_restart() {
    let dir = fresh_dir("restart");
    let token = {
        let store = FileStore::new(&dir).unwrap();
        let app = harness::default_app(store.into_backend());
        let token = app.start().await;
        assert_eq!(app.get("/owner/alice", Some(&token)).await.body, "ok");
        assert_eq!(app.get("/incr/n", Some(&token)).await.body, "2");
        token
    };
    // Everything above is dropped: a new process opens the folder.
    let store = FileStore::new(&dir).unwrap();
    let app = harness::default_app(store.clone().into_backend());
    let resp = app.get("/incr/n", Some(&token)).await;
    assert_eq!(resp.body, "3");
    assert_eq!(app.get("/get/logged-in", Some(&token)).await.body, "true");
    let key = SessionId::parse(&token).unwrap().key();
    let listed = store.list_owner("alice", now()).await.unwrap();
    assert_eq!(listed.iter().map(|s| s.key).collect::<Vec<_>>(), vec![key]);
}

#[tokio::test]
async fn touch_moves_the_deadline_without_rewriting_the_file() {
    use std::os::unix::fs::MetadataExt;
    let dir = fresh_dir("touch");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let k = key();
    assert!(store.create(&k, &record(now), now).await.unwrap());
    let path = store.path_of(&k);
    let (inode, bytes) = (fs::metadata(&path).unwrap().ino(), fs::read(&path).unwrap());

    let later = now + Duration::minutes(30);
    let deadline = later + Duration::hours(1);
    assert_eq!(
        store
            .touch(&k, deadline, record(now).expiry, later)
            .await
            .unwrap(),
        Saved::Applied
    );
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.ino(), inode, "touch replaced the file");
    assert_eq!(fs::read(&path).unwrap(), bytes, "touch rewrote the data");
    let mtime = meta.modified().unwrap().duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(mtime.as_secs(), deadline.unix_timestamp().unsigned_abs());

    // Another store on the folder sees the new deadline, past the old one.
    let other = FileStore::new(&dir).unwrap();
    let loaded = other
        .load(&k, now + Duration::minutes(80))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.idle_deadline, deadline);
    // A later save keeps it and the data.
    assert_eq!(
        other
            .save(&k, &set("c", json!(3)), now + Duration::minutes(80))
            .await
            .unwrap(),
        Saved::Applied
    );
    let loaded = store
        .load(&k, now + Duration::minutes(85))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.idle_deadline, deadline);
    assert_eq!(loaded.data.get("a"), Some(&json!(1)));
    assert_eq!(loaded.data.get("c"), Some(&json!(3)));
}

#[tokio::test]
async fn the_folder_and_session_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = fresh_dir("modes").join("nested");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let k = key();
    assert!(store.create(&k, &owned(now, "alice"), now).await.unwrap());
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(".locks")), 0o700);
    assert_eq!(mode(&dir.join(".owners")), 0o700);
    assert_eq!(mode(&store.path_of(&k)), 0o600);
    for entry in fs::read_dir(dir.join(".locks")).unwrap() {
        assert_eq!(mode(&entry.unwrap().path()), 0o600);
    }
}

/// A folder every user may write to (made beforehand by someone else, or `/tmp` itself) is
/// refused: any local user could plant a session file there. One only the group may write to
/// is used, with a warning.
#[test]
fn a_folder_every_user_may_write_to_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = fresh_dir("world-writable");
    fs::create_dir_all(&dir).unwrap();
    for mode in [0o777, 0o1777, 0o702] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        let error = FileStore::new(&dir).unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Config, "mode {mode:o}");
        assert!(error.to_string().contains("every user"), "{error}");
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).unwrap();
    assert!(FileStore::new(&dir).is_ok());
}

/// A folder that belongs to another user (not root) is used, with a warning that names the two
/// user IDs; the app's own folder gets none. Needs root, to give the folder away.
#[test]
fn a_folder_of_another_user_is_used_with_a_warning() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let warning = "belongs to another user";

    let dir = fresh_dir("foreign");
    FileStore::new(&dir).unwrap();
    assert!(!logs.text().contains(warning), "{}", logs.text());

    // 65534 is `nobody` on Debian; any user but this one and root will do.
    if std::os::unix::fs::chown(&dir, Some(65534), None).is_err() {
        support_disk::skip_without_root("giving the folder to another user");
        return;
    }
    let store = FileStore::new(&dir).unwrap();
    let text = logs.text();
    assert!(text.contains("WARN") && text.contains(warning), "{text}");
    assert!(text.contains("folder_owner=65534"), "{text}");
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(".tmp-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "the probe file was removed: {leftovers:?}"
    );
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_task_removes_expired_session_files_and_their_owner_entries() {
    let dir = fresh_dir("cleanup");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let clock = ManualClock::new(now);
    let mut expiring = Vec::new();
    for _ in 0..5 {
        let k = key();
        let mut short = owned(now, "alice");
        short.idle_deadline = now + Duration::seconds(30);
        assert!(store.create(&k, &short, now).await.unwrap());
        expiring.push(k);
    }
    let live = key();
    assert!(store.create(&live, &record(now), now).await.unwrap());
    let task = spawn_cleanup_with_clock(
        store.clone(),
        CleanupConfig::default()
            .period(StdDuration::from_millis(20))
            .batch(2),
        Arc::new(clock.clone()),
    );
    clock.advance(Duration::minutes(5));
    let gone = || expiring.iter().all(|k| !store.path_of(k).exists());
    for _ in 0..250 {
        if gone() {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    task.stop().await;
    assert!(gone(), "expired session files remain");
    assert!(store.path_of(&live).exists());
    let owner_dir = owner_dir(&dir, "alice");
    assert!(
        !owner_dir.exists(),
        "owner entries of expired sessions remain"
    );
}

/// Sets or clears the immutable flag of `path` (`chattr`, root only); whether it worked.
fn set_immutable(path: &Path, on: bool) -> bool {
    std::process::Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

/// `N` new sessions of `owner`, created at `now`: their keys.
async fn sessions_of<const N: usize>(
    store: &FileStore,
    owner: &str,
    now: time::OffsetDateTime,
) -> [SessionKey; N] {
    let keys = [(); N].map(|()| key());
    for k in &keys {
        assert!(store.create(k, &owned(now, owner), now).await.unwrap());
    }
    keys
}

/// A session file that cannot be removed (immutable here; left by another user, say) does not
/// stop the cleanup at it, nor spare the owner's other sessions from a revocation: both go on
/// past it, log it, and a revocation still reports that it did not remove everything.
#[tokio::test]
async fn a_file_that_cannot_be_removed_stops_neither_cleanup_nor_revocation() {
    let dir = fresh_dir("stuck-file");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let [stuck, other] = sessions_of(&store, "alice", now).await;
    if !set_immutable(&store.path_of(&stuck), true) {
        support_disk::skip_without_root("`chattr +i`");
        return;
    }
    let later = now + Duration::days(2); // both expired
    let swept = store.delete_expired(later, 100).await;
    let swept_again = store.delete_expired(later, 100).await;
    // Revocation: the stuck session is still alice's (live at `now`), and so is a third.
    let third = key();
    assert!(
        store
            .create(&third, &owned(now, "alice"), now)
            .await
            .unwrap()
    );
    let revoked = store.delete_owner("alice").await;
    set_immutable(&store.path_of(&stuck), false);

    assert_eq!(swept.unwrap(), 1, "the other expired file was removed");
    assert!(!store.path_of(&other).exists());
    assert_eq!(
        swept_again.unwrap_err().kind(),
        StoreErrorKind::Backend,
        "a sweep that removes nothing but fails says so"
    );
    assert_eq!(revoked.unwrap_err().kind(), StoreErrorKind::Backend);
    assert_eq!(
        store.load(&third, now).await.unwrap(),
        None,
        "the other session revoked"
    );
    assert!(store.load(&stuck, now).await.unwrap().is_some());
    // Once the file can go, both finish.
    assert_eq!(store.delete_owner("alice").await.unwrap(), 1);
    assert_eq!(store.load(&stuck, now).await.unwrap(), None);
}

/// A session file that cannot be read (here a folder stands in its place) is left out of its
/// owner's list, and a revocation removes the owner's other sessions but keeps that path and its
/// marker, since a marker can be stale and the file someone else's: the revocation reports the
/// error, and a retry once the path is readable finds the marker again.
#[tokio::test]
async fn an_unreadable_session_file_is_kept_and_reported_by_a_revocation() {
    let dir = fresh_dir("unreadable-owned");
    let store = FileStore::new(&dir).unwrap();
    let now = now();
    let [unreadable, other] = sessions_of(&store, "alice", now).await;
    let path = store.path_of(&unreadable);
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();

    let listed = store.list_owner("alice", now).await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.key).collect::<Vec<_>>(),
        vec![other]
    );
    let error = store.delete_owner("alice").await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Backend);
    assert_eq!(
        store.load(&other, now).await.unwrap(),
        None,
        "the other session revoked"
    );
    assert!(path.is_dir(), "the unreadable path is kept");
    assert_eq!(markers(&dir, "alice"), vec![unreadable.to_hex()]);

    fs::remove_dir(&path).unwrap();
    assert_eq!(store.delete_owner("alice").await.unwrap(), 0);
    assert!(markers(&dir, "alice").is_empty());
}
