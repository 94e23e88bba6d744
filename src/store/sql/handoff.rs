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

    /// Queues an operation waiting for a connection.
    ///
    /// First drops the places of operations that stopped waiting (they got a connection from the
    /// pool, timed out, or were cancelled with their request): otherwise, while the database does
    /// not answer and no operation hands a connection on, every operation in that time would
    /// leave its place behind. Those at the head go at once; the rest whenever the queue is full,
    /// so that each push looks at a bounded number of places on average.
    fn enqueue(&self, waiter: oneshot::Sender<Held<DB>>) {
        let mut waiting = self.waiting();
        while waiting.front().is_some_and(oneshot::Sender::is_closed) {
            waiting.pop_front();
        }
        if waiting.len() == waiting.capacity() {
            waiting.retain(|w| !w.is_closed());
            // Unless that freed half the room, grow now, so that the next pass comes no sooner
            // than after as many pushes as this one looked at places.
            let live = waiting.len();
            if live > waiting.capacity() / 2 {
                waiting.reserve(live);
            }
        }
        waiting.push_back(waiter);
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
    handoff.enqueue(tx);
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

/// Runs `f` on a connection from [`checkout`], then [`checkin`]s it. (PostgreSQL times the
/// checkout and the statement apart, so it calls the two itself.)
#[cfg(feature = "sqlite-store")]
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

#[cfg(all(test, feature = "sqlite-store"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sqlx::sqlite::SqlitePoolOptions;

    /// Operations that stop waiting for a connection (their timeout fired, their request was
    /// dropped) while the pool is exhausted, as they all do while the database does not answer,
    /// must not leave their place in the queue behind: the queue would grow for as long as the
    /// outage lasts.
    #[tokio::test]
    async fn waiters_that_gave_up_do_not_pile_up() {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let handoff = Handoff::new(&pool);
        let held = checkout(&pool, Some(&handoff)).await.unwrap();
        assert_eq!(pool.num_idle(), 0);
        // One operation that keeps waiting, at the head of the queue.
        let mut patient = Box::pin(checkout(&pool, Some(&handoff)));
        assert!(futures_poll_once(patient.as_mut()).await.is_none());
        for _ in 0..200 {
            let gave_up =
                tokio::time::timeout(Duration::from_millis(1), checkout(&pool, Some(&handoff)))
                    .await;
            assert!(gave_up.is_err());
        }
        let queued = handoff.waiting().len();
        assert!(queued < 16, "{queued} waiters queued, 1 still waiting");
        checkin(&pool, Some(&handoff), held, true);
        assert!(
            patient.await.is_ok(),
            "the patient waiter got the connection"
        );
    }

    /// Polls `future` once.
    async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut future).poll(cx) {
                Poll::Ready(output) => Some(output),
                Poll::Pending => None,
            })
        })
        .await
    }
}
