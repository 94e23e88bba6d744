//! Handing a pooled connection from one store operation straight to the next.
//!
//! sqlx tests a connection whenever it goes back to its pool, with a round trip to the server
//! (PostgreSQL: `Sync`, then waiting for `ReadyForQuery`; SQLite: a message to the connection's
//! worker thread and back), and has no option to turn that off. Under load, when operations
//! queue for the pool, that doubles the round trips of every store operation. So when an
//! operation ends while another operation of the same store waits for a connection, the
//! connection goes to that one directly, untested: it has just answered a statement.
//!
//! Any other time it goes back to the pool as usual: when nobody waits, when its statement
//! failed or was cancelled (dropped with the operation's future), and at the latest
//! [`HAND_ON_FOR`] after it left the pool. So the pool's tests, lifetime limits and fairness to
//! its other users still apply, and no connection is ever held idle outside the pool.
//!
//! An operation waits for a handed-on connection only when the pool is at its size limit with no
//! idle connection; otherwise it takes one from the pool, which opens more as needed. (Were it to
//! wait for a hand-on whenever it could, the pool would never grow: PostgreSQL commits the writes
//! of concurrent connections together, and a store held to two or three connections waited on
//! the disk at a tenth of the throughput.) Waiting, it takes whichever comes first, a connection
//! handed on or one from the pool.
//!
//! Used only for pools the stores made themselves (`connect`): an app's own pool may be shared in
//! ways the store cannot see.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use tokio::sync::oneshot;

/// A connection handed on from operation to operation goes back to the pool once it has been out
/// of it this long, so that other users of the pool get their turn.
const HAND_ON_FOR: Duration = Duration::from_millis(100);

/// The operations of one store waiting for a connection that another can hand on.
pub(super) struct Handoff<DB: Database> {
    /// The pool's size limit.
    max: u32,
    /// First come, first served.
    waiting: Mutex<VecDeque<oneshot::Sender<Held<DB>>>>,
    /// How many connections were handed on, shown by the stores' `Debug`.
    handed_on: AtomicU64,
}

/// A connection out of the pool, with when it left it.
pub(super) struct Held<DB: Database> {
    pub(super) conn: PoolConnection<DB>,
    since: Instant,
}

impl<DB: Database> Handoff<DB> {
    pub(super) fn new(pool: &Pool<DB>) -> Self {
        Self {
            max: pool.options().get_max_connections(),
            waiting: Mutex::default(),
            handed_on: AtomicU64::new(0),
        }
    }

    pub(super) fn handed_on(&self) -> u64 {
        self.handed_on.load(Ordering::Relaxed)
    }

    fn waiting(&self) -> MutexGuard<'_, VecDeque<oneshot::Sender<Held<DB>>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection for one operation: the pool's, or, when the pool is exhausted and `handoff` is
/// set, whichever comes first of the pool's and one another operation hands on.
pub(super) async fn checkout<DB: Database>(
    pool: &Pool<DB>,
    handoff: Option<&Handoff<DB>>,
) -> Result<Held<DB>, sqlx::Error> {
    let acquire = async {
        Ok(Held {
            conn: pool.acquire().await?,
            since: Instant::now(),
        })
    };
    let Some(handoff) = handoff else {
        return acquire.await;
    };
    if pool.num_idle() > 0 || pool.size() < handoff.max {
        return acquire.await;
    }
    let (tx, rx) = oneshot::channel();
    handoff.waiting().push_back(tx);
    // A connection handed on wins a tie. Should the pool win, a connection handed on later is
    // dropped with `rx` and so goes back to the pool.
    let mut rx = Some(rx);
    let mut acquire = std::pin::pin!(acquire);
    std::future::poll_fn(|cx| {
        if let Some(handed) = rx.as_mut() {
            match Pin::new(handed).poll(cx) {
                Poll::Ready(Ok(held)) => return Poll::Ready(Ok(held)),
                Poll::Ready(Err(_)) => rx = None,
                Poll::Pending => {}
            }
        }
        acquire.as_mut().poll(cx)
    })
    .await
}

/// Ends an operation on `held`: hands it on to an operation waiting for a connection if `ok` (its
/// statement succeeded) and one waits; otherwise it goes back to the pool (dropped).
pub(super) fn checkin<DB: Database>(
    pool: &Pool<DB>,
    handoff: Option<&Handoff<DB>>,
    mut held: Held<DB>,
    ok: bool,
) {
    let Some(handoff) = handoff else {
        return;
    };
    if !ok || held.since.elapsed() >= HAND_ON_FOR || pool.is_closed() {
        return;
    }
    let mut waiting = handoff.waiting();
    // The senders of operations that got a connection from the pool meanwhile are skipped.
    while let Some(waiter) = waiting.pop_front() {
        match waiter.send(held) {
            Ok(()) => {
                handoff.handed_on.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(back) => held = back,
        }
    }
}

/// Runs `f` on a connection from [`checkout`], then [`checkin`]s it.
pub(super) async fn with_connection<DB: Database, T>(
    pool: &Pool<DB>,
    handoff: Option<&Handoff<DB>>,
    f: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    let mut held = checkout(pool, handoff).await?;
    let result = f(&mut held.conn).await;
    checkin(pool, handoff, held, result.is_ok());
    result
}
