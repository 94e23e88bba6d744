//! A disk that fills up: a small tmpfs, for the tests of what stores do when writes fail with
//! "no space left on device".
#![allow(clippy::unwrap_used, clippy::panic, unreachable_pub)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` mounted on `dir` until dropped, so that the disk can really fill up.
/// `None` when not running as root (mounting needs it); as root, a failed mount fails the test.
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    pub fn mount(dir: &Path, size: &str) -> Option<Self> {
        let uid = Command::new("id").arg("-u").output().unwrap();
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return None;
        }
        fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("tmpfs")
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "cannot mount a tmpfs as root");
        Some(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes a filler file until the disk is full.
    pub fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = fs::File::create(&path).unwrap();
        let chunk = [0u8; 4096];
        loop {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return path,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Reports a test that cannot run without root (mounting a tmpfs, `chattr`). CI runs as root and
/// sets `TOWER_SATCHEL_CI` (`.ci/run`): there a test that cannot run fails instead of passing
/// without having checked anything.
pub fn skip_without_root(what: &str) {
    assert!(
        std::env::var_os("TOWER_SATCHEL_CI").is_none(),
        "{what} needs root, and CI (TOWER_SATCHEL_CI) must run this test"
    );
    eprintln!("skipped: {what} needs root (CI runs as root)");
}
