//! Bytes from the operating system's CSPRNG, fetched a kilobyte at a time.
//!
//! A `getrandom` system call costs about as much for 1 KiB as for 32 bytes (on the development
//! machine 245 ns for 32 bytes, 59 ns per 32 bytes when fetched as 1 KiB), and every new session
//! needs an ID and every cookie-store seal a nonce. So each thread keeps a pool of OS random
//! bytes: every byte is handed out once and zeroed in the pool as it is taken, so the pool never
//! holds a byte already used.
//!
//! A `fork()` copies the forking thread's pool into the child, and parent and child must never
//! draw the same bytes (a repeated AES-GCM nonce under one key gives away the key's
//! authentication). The pool therefore remembers the process ID it was filled in and is thrown
//! away when a draw happens in another process. Reading the process ID is a system call too, but
//! a cheaper one (about 100 ns here): a draw costs about 110 ns instead of 245.
//!
//! The process ID does not tell apart copies that keep it: a virtual machine or Firecracker
//! snapshot restored more than once, a CRIU checkpoint restored twice, or a forked child that is
//! PID 1 of a new PID namespace while its parent was PID 1 of its own. Each copy would hand out
//! the same (at most 1 KiB of) pooled bytes: the same session IDs, the same nonces. Restore such a
//! snapshot only once, or start the app after the restore.

use std::cell::RefCell;

/// Bytes fetched per refill.
const POOL_LEN: usize = 1024;

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool { bytes: [0; POOL_LEN], next: POOL_LEN, pid: 0 })
    };
}

struct Pool {
    bytes: [u8; POOL_LEN],
    /// The first byte not handed out yet.
    next: usize,
    /// The process the pool was filled in.
    pid: u32,
}

/// Fills `out` with bytes from the OS CSPRNG (through this thread's pool when `out` is at most
/// 64 bytes).
pub(crate) fn fill(out: &mut [u8]) -> Result<(), getrandom::Error> {
    if out.len() > 64 {
        return getrandom::fill(out);
    }
    let pid = std::process::id();
    POOL.with_borrow_mut(|pool| {
        if pool.pid != pid || POOL_LEN - pool.next < out.len() {
            // A failed refill leaves the pool marked empty, so the next draw tries again.
            pool.next = POOL_LEN;
            getrandom::fill(&mut pool.bytes)?;
            pool.next = 0;
            pool.pid = pid;
        }
        let end = pool.next + out.len();
        let Some(taken) = pool.bytes.get_mut(pool.next..end) else {
            // Cannot happen (the refill above leaves room); never hand out `out` unfilled.
            return getrandom::fill(out);
        };
        out.copy_from_slice(taken);
        taken.fill(0);
        pool.next = end;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn draws_are_distinct_across_refills_and_leave_no_copy_behind() {
        let draws = POOL_LEN / 32 * 3 + 5;
        let seen: HashSet<[u8; 32]> = (0..draws)
            .map(|_| {
                let mut out = [0u8; 32];
                fill(&mut out).unwrap();
                out
            })
            .collect();
        assert_eq!(seen.len(), draws);
        assert!(!seen.contains(&[0u8; 32]));
        POOL.with_borrow(|pool| {
            assert!(pool.bytes[..pool.next].iter().all(|b| *b == 0));
            assert!(pool.bytes[pool.next..].iter().any(|b| *b != 0));
        });
    }

    #[test]
    fn a_pool_filled_in_another_process_is_thrown_away() {
        let mut out = [0u8; 12];
        fill(&mut out).unwrap();
        let left = POOL.with_borrow_mut(|pool| {
            // As after fork(): the same bytes, another process.
            pool.pid = pool.pid.wrapping_add(1);
            pool.bytes[pool.next..].to_vec()
        });
        fill(&mut out).unwrap();
        assert_ne!(out[..], left[..12], "the copied bytes are not handed out");
        POOL.with_borrow(|pool| {
            assert_eq!(pool.pid, std::process::id());
            assert_eq!(pool.next, 12);
        });
    }

    #[test]
    fn large_requests_go_straight_to_the_os() {
        let mut out = [0u8; 100];
        fill(&mut out).unwrap();
        assert!(out.iter().any(|b| *b != 0));
    }
}
