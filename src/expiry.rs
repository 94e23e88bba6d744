//! Expiry: per-session policies, the two server-side deadlines, and the clock.
//!
//! Every session has two deadlines, both kept in its record and checked by the middleware on every
//! load (SECURITY.md 13), whatever TTL the store also applies:
//!
//! - the **idle deadline**, which activity moves forward (per the session's [`Expiry`]);
//! - the **absolute deadline**, fixed at creation from the layer's absolute lifetime, which no
//!   activity, touch or ID rotation extends (SECURITY.md 9).
//!
//! The session is live while `now` is before both.

use std::cell::Cell;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime, UtcOffset};

/// The longest `Max-Age` a cookie may carry (RFC 6265bis caps it at 400 days).
pub const MAX_COOKIE_AGE: Duration = Duration::days(400);

/// When a session expires.
///
/// # Examples
///
/// ```
/// use tower_satchel::Expiry;
/// use time::Duration;
///
/// // "Remember me": a persistent cookie, 30 days of inactivity.
/// let remember = Expiry::OnInactivity(Duration::days(30));
/// // Ends when the browser closes (the server still drops it after the layer's idle timeout).
/// let browser = Expiry::OnSessionEnd;
/// # let _ = (remember, browser);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Expiry {
    /// A browser-session cookie (no `Max-Age`). The server keeps the record for the layer's
    /// [`session_end_idle_timeout`](crate::SessionLayerBuilder::session_end_idle_timeout) of
    /// inactivity, since browsers that restore tabs keep such cookies for weeks.
    OnSessionEnd,
    /// A sliding window: the session lives this long after its last activity.
    ///
    /// With the cookie transport, a window longer than [`MAX_COOKIE_AGE`] acts as
    /// `MAX_COOKIE_AGE`: browsers drop a cookie that long after it was last sent, whatever its
    /// `Max-Age` asked for, so the server ends the session then too.
    OnInactivity(#[serde(with = "duration_secs")] Duration),
    /// A fixed point in time; activity does not extend it.
    ///
    /// With the cookie transport, a date further away than [`MAX_COOKIE_AGE`] is reached by
    /// activity: the session's idle deadline is `MAX_COOKIE_AGE` after the cookie was last
    /// sent, and it is sent again on the touch schedule (like an
    /// [`OnInactivity`](Expiry::OnInactivity) window of that length) until the date is nearer
    /// than that. A session left idle that long ends with its cookie.
    AtDateTime(#[serde(with = "time::serde::timestamp")] OffsetDateTime),
}

impl Expiry {
    /// The idle deadline this policy gives for activity at `now`; `session_end_idle` is the
    /// server-side window of [`Expiry::OnSessionEnd`]. The layer holds a persistent cookie's
    /// deadline to [`MAX_COOKIE_AGE`] from `now` besides (see the variants).
    pub fn idle_deadline(&self, now: OffsetDateTime, session_end_idle: Duration) -> OffsetDateTime {
        match self {
            Expiry::OnSessionEnd => now.saturating_add(session_end_idle),
            Expiry::OnInactivity(window) => now.saturating_add(*window),
            Expiry::AtDateTime(at) => *at,
        }
    }

    /// Whether the cookie is persistent (carries `Max-Age`).
    pub fn is_persistent(&self) -> bool {
        !matches!(self, Expiry::OnSessionEnd)
    }

    /// The policy as stores keep it: a window in whole seconds rounded up, a date in whole
    /// seconds rounded down. The layer takes policies in this form, so that the one a request
    /// holds compares equal to the one it stored (the file, Redis, SQL and cookie stores keep
    /// whole seconds; the memory store keeps what it is given).
    pub(crate) fn stored(self) -> Self {
        match self {
            Expiry::OnSessionEnd => Expiry::OnSessionEnd,
            Expiry::OnInactivity(window) => {
                Expiry::OnInactivity(Duration::seconds(window_seconds(window)))
            }
            Expiry::AtDateTime(at) => Expiry::AtDateTime(
                OffsetDateTime::from_unix_timestamp(at.unix_timestamp()).unwrap_or(at),
            ),
        }
    }

    /// The sliding window, if this policy has one.
    pub(crate) fn window(&self, session_end_idle: Duration) -> Option<Duration> {
        match self {
            Expiry::OnSessionEnd => Some(session_end_idle),
            Expiry::OnInactivity(window) => Some(*window),
            Expiry::AtDateTime(_) => None,
        }
    }
}

/// An [`Expiry::OnInactivity`] window as stores keep it: whole seconds, rounded up like the
/// deadlines of a stored record, so that a window of half a second does not come back as no
/// window at all (a session dead on its next refresh).
pub(crate) fn window_seconds(window: Duration) -> i64 {
    let whole = window.whole_seconds();
    if window.subsec_nanoseconds() > 0 {
        whole.saturating_add(1)
    } else {
        whole
    }
}

mod duration_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(super::window_seconds(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        i64::deserialize(d).map(Duration::seconds)
    }
}

/// The source of "now" for every deadline the layer computes.
///
/// The default is [`SystemClock`]; tests inject a [`ManualClock`] to move time without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> OffsetDateTime;
}

/// The system's wall clock, in UTC.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

thread_local! {
    /// The last whole second [`SystemClock`] turned into a date and time on this thread.
    static LAST_SECOND: Cell<Option<(u64, OffsetDateTime)>> = const { Cell::new(None) };
}

impl Clock for SystemClock {
    /// The same instant as [`OffsetDateTime::now_utc`], which works out the calendar date and time
    /// of day on every call. Within one second only the nanoseconds differ, so each thread keeps
    /// its last second worked out and sets the nanoseconds on it. The layer reads the clock twice
    /// per request; this way a read takes about 130 instructions instead of 210.
    fn now(&self) -> OffsetDateTime {
        let Ok(since_epoch) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) else {
            // A system clock before 1970.
            return OffsetDateTime::now_utc();
        };
        let seconds = since_epoch.as_secs();
        let second = match LAST_SECOND.get() {
            Some((cached, at)) if cached == seconds => at,
            _ => {
                let Ok(at) = i64::try_from(seconds)
                    .map_err(drop)
                    .and_then(|s| OffsetDateTime::from_unix_timestamp(s).map_err(drop))
                else {
                    return OffsetDateTime::now_utc();
                };
                LAST_SECOND.set(Some((seconds, at)));
                at
            }
        };
        second
            .replace_nanosecond(since_epoch.subsec_nanos())
            .unwrap_or(second)
    }
}

/// A clock that only moves when told to. Cheap to clone; clones share the time.
///
/// It holds any date [`OffsetDateTime`] can, and moving it saturates at the ends of that range.
///
/// # Examples
///
/// ```
/// use tower_satchel::ManualClock;
/// use time::Duration;
///
/// let clock = ManualClock::new(time::OffsetDateTime::UNIX_EPOCH);
/// let before = tower_satchel::Clock::now(&clock);
/// clock.advance(Duration::minutes(5));
/// assert_eq!(tower_satchel::Clock::now(&clock) - before, Duration::minutes(5));
/// ```
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<Mutex<OffsetDateTime>>,
}

impl ManualClock {
    /// A clock stopped at `start`, which it tells in UTC like [`SystemClock`].
    pub fn new(start: OffsetDateTime) -> Self {
        // Only a date at the very end of the range cannot be told in UTC: kept as it is.
        let start = start.checked_to_offset(UtcOffset::UTC).unwrap_or(start);
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// A clock stopped at the current system time.
    pub fn starting_now() -> Self {
        Self::new(OffsetDateTime::now_utc())
    }

    /// Moves the clock forward (or back, for a negative duration), stopping at the first or last
    /// date [`OffsetDateTime`] can hold.
    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        *now = now.saturating_add(by);
    }

    fn lock(&self) -> MutexGuard<'_, OffsetDateTime> {
        // Nothing can panic while the lock is held, and the time is always valid.
        self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.lock()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.now()).finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_system_clock_tells_the_time_of_now_utc() {
        // Until the clock has passed a whole second, so the cached second is replaced once.
        let start = OffsetDateTime::now_utc().unix_timestamp();
        let mut checked = 0;
        loop {
            let before = OffsetDateTime::now_utc();
            let now = SystemClock.now();
            let after = OffsetDateTime::now_utc();
            assert!(before <= now && now <= after, "{before} {now} {after}");
            assert_eq!(now.offset(), time::UtcOffset::UTC);
            checked += 1;
            if now.unix_timestamp() > start && checked > 1000 {
                break;
            }
        }
    }

    #[test]
    fn stored_windows_are_whole_seconds_rounded_up() {
        let stored = |window: Duration| {
            let json = serde_json::to_string(&Expiry::OnInactivity(window)).unwrap();
            serde_json::from_str::<Expiry>(&json).unwrap()
        };
        for (window, back) in [
            (Duration::milliseconds(500), Duration::seconds(1)),
            (Duration::milliseconds(1500), Duration::seconds(2)),
            (Duration::seconds(90), Duration::seconds(90)),
            (Duration::MAX, Duration::seconds(i64::MAX)),
        ] {
            assert_eq!(stored(window), Expiry::OnInactivity(back), "{window}");
        }
    }

    #[test]
    fn inactivity_deadline_slides_with_activity() {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let expiry = Expiry::OnInactivity(Duration::minutes(10));
        let idle = Duration::hours(1);
        assert_eq!(expiry.idle_deadline(t0, idle), t0 + Duration::minutes(10));
        assert_eq!(
            expiry.idle_deadline(t0 + Duration::minutes(5), idle),
            t0 + Duration::minutes(15)
        );
    }

    #[test]
    fn fixed_deadline_does_not_slide() {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let at = t0 + Duration::days(2);
        let expiry = Expiry::AtDateTime(at);
        assert_eq!(
            expiry.idle_deadline(t0 + Duration::days(1), Duration::hours(1)),
            at
        );
        assert!(expiry.is_persistent());
        assert!(!Expiry::OnSessionEnd.is_persistent());
    }

    #[test]
    fn expiry_round_trips_through_json() {
        for expiry in [
            Expiry::OnSessionEnd,
            Expiry::OnInactivity(Duration::seconds(90)),
            Expiry::AtDateTime(OffsetDateTime::UNIX_EPOCH + Duration::days(3)),
        ] {
            let json = serde_json::to_string(&expiry).expect("an expiry serializes");
            let back: Expiry = serde_json::from_str(&json).expect("and reads back");
            assert_eq!(back, expiry, "{json}");
        }
    }

    #[test]
    fn a_manual_clock_moved_past_the_nanosecond_range_does_not_wrap_around() {
        let start = OffsetDateTime::from_unix_timestamp(1_800_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        for step in [Duration::days(365 * 1000), Duration::MAX] {
            let clock = ManualClock::new(start);
            clock.advance(step);
            assert!(
                clock.now() > start + Duration::days(365 * 200),
                "{step} went to {}",
                clock.now()
            );
        }
        let clock = ManualClock::new(start);
        clock.advance(Duration::MIN);
        assert!(
            clock.now() < start,
            "back by Duration::MIN went to {}",
            clock.now()
        );
    }

    #[test]
    fn a_manual_clock_starts_where_it_is_told_to() {
        for seconds in [-11_000_000_000_i64, 10_413_792_000, 1_800_000_000] {
            let start =
                OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            assert_eq!(ManualClock::new(start).now(), start);
        }
        let east = OffsetDateTime::UNIX_EPOCH
            .checked_to_offset(UtcOffset::from_hms(5, 0, 0).unwrap_or(UtcOffset::UTC))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let now = ManualClock::new(east).now();
        assert_eq!((now, now.offset()), (east, UtcOffset::UTC));
    }

    #[test]
    fn manual_clock_clones_share_time() {
        let clock = ManualClock::new(OffsetDateTime::UNIX_EPOCH);
        let other = clock.clone();
        clock.advance(Duration::seconds(7));
        assert_eq!(
            other.now(),
            OffsetDateTime::UNIX_EPOCH + Duration::seconds(7)
        );
    }
}
