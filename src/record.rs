//! The stored record, the change set a request produces, and their encoding.
//!
//! A [`Record`] is what every server-side store keeps per session: the data map, created-at, the two
//! deadlines, the [`Expiry`] policy, the owner, and a format version. A [`ChangeSet`] is what one
//! request did to it: keys set, keys removed, or "cleared", plus the new deadlines. Stores apply a
//! change set to whatever is stored *now* ([`ChangeSet::apply_to`]), not to what the request loaded,
//! which is why two concurrent requests that write different keys both keep their writes.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::Expiry;
use crate::store::Saved;

/// The current record format version, written into every encoded record.
pub const RECORD_VERSION: u32 = 1;

/// How deep a session value may nest arrays and objects in an encoded record. `serde_json` reads
/// at most 127 nested levels, and the record and its data map take two of them; a record holding
/// a deeper value would encode, then fail to decode, and its session be lost on the next load.
pub(crate) const MAX_VALUE_DEPTH: usize = 125;

/// Whether `value` nests arrays and objects more than `levels` deep. Looks no deeper than that,
/// so the recursion is bounded whatever the value.
pub(crate) fn nests_deeper_than(value: &Value, levels: usize) -> bool {
    match value {
        Value::Array(items) => {
            levels == 0 || items.iter().any(|v| nests_deeper_than(v, levels - 1))
        }
        Value::Object(map) => levels == 0 || map.values().any(|v| nests_deeper_than(v, levels - 1)),
        _ => false,
    }
}

/// For stores: an [`Encoding`](crate::StoreErrorKind::Encoding) error when a value of `values`
/// nests deeper than [`MAX_VALUE_DEPTH`]. Written, such a value could not be read back, and its
/// whole session would be lost on the next load. The layer refuses such values at `insert`; this
/// guards a store called directly ([`Record::encode`] makes the same check).
pub(crate) fn check_depth<'a>(
    values: impl IntoIterator<Item = &'a Value>,
) -> Result<(), crate::StoreError> {
    if values
        .into_iter()
        .any(|value| nests_deeper_than(value, MAX_VALUE_DEPTH))
    {
        return Err(crate::StoreError::new(
            crate::StoreErrorKind::Encoding,
            format!(
                "a session value nests arrays and objects more than {MAX_VALUE_DEPTH} levels deep"
            ),
        ));
    }
    Ok(())
}

/// One session as a store keeps it.
///
/// Stores that keep the record as one blob use [`Record::encode`] and [`Record::decode`]; stores with
/// columns read and write the fields.
///
/// `Debug` shows the metadata and how many values there are, never the values or the owner.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Record {
    /// Format version ([`RECORD_VERSION`] when written by this crate).
    #[serde(rename = "v")]
    pub version: u32,
    /// The session's values.
    #[serde(rename = "d", default)]
    pub data: Map<String, Value>,
    /// When the session was created; never changed by ID rotation.
    #[serde(rename = "c", with = "time::serde::timestamp")]
    pub created_at: OffsetDateTime,
    /// The idle deadline: the session expires then unless activity moves it.
    #[serde(rename = "i", with = "deadline")]
    pub idle_deadline: OffsetDateTime,
    /// The absolute deadline, fixed at creation; `None` when the layer sets no absolute lifetime.
    #[serde(rename = "a", with = "deadline::option", default)]
    pub absolute_deadline: Option<OffsetDateTime>,
    /// The session's expiry policy.
    #[serde(rename = "e")]
    pub expiry: Expiry,
    /// The account this session belongs to, if any (see [`Session::set_owner`](crate::Session::set_owner)).
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl Record {
    /// An empty record created at `created_at`.
    pub fn new(
        created_at: OffsetDateTime,
        idle_deadline: OffsetDateTime,
        absolute_deadline: Option<OffsetDateTime>,
        expiry: Expiry,
    ) -> Self {
        Self {
            version: RECORD_VERSION,
            data: Map::new(),
            created_at,
            idle_deadline,
            absolute_deadline,
            expiry,
            owner: None,
        }
    }

    /// The earlier of the two deadlines: the session is dead from this instant on.
    pub fn deadline(&self) -> OffsetDateTime {
        earlier_deadline(self.idle_deadline, self.absolute_deadline)
    }

    /// Whether the session is still live at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        now < self.deadline()
    }

    /// Encodes the record as compact JSON. Times are whole Unix seconds: the creation time
    /// rounded down, the deadlines rounded up (a cookie's `Max-Age`, worked out from the exact
    /// deadline, must not outlast the stored one), and so is an
    /// [`OnInactivity`](Expiry::OnInactivity) window.
    ///
    /// # Errors
    ///
    /// When a value nests arrays and objects more than 125 levels deep: [`Record::decode`] could
    /// not read the result back (`serde_json` refuses deeper input), so the session would be lost
    /// on its next load. Otherwise only if a value cannot be serialized, which cannot happen for
    /// values that came through the [`Session`](crate::Session) API (they are already JSON values).
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        check_depth(self.data.values()).map_err(serde::ser::Error::custom)?;
        serde_json::to_vec(self)
    }

    /// Decodes a record written by [`Record::encode`].
    ///
    /// # Errors
    ///
    /// Malformed input or a format version newer than this crate knows; stores treat either as "no
    /// session" and log it.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let record: Record = serde_json::from_slice(bytes)?;
        if record.version > RECORD_VERSION {
            return Err(serde::de::Error::custom(format_args!(
                "record format version {} is newer than {}",
                record.version, RECORD_VERSION
            )));
        }
        Ok(record)
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("version", &self.version)
            .field("values", &self.data.len())
            .field("created_at", &self.created_at)
            .field("idle_deadline", &self.idle_deadline)
            .field("absolute_deadline", &self.absolute_deadline)
            .field("expiry", &self.expiry)
            .field("owner", &self.owner.as_ref().map(|_| Redacted))
            .finish()
    }
}

/// Shown in `Debug` output in place of a session's values and owner.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("REDACTED")
    }
}

/// A deadline in whole Unix seconds, rounded up unless that would leave the range of dates a
/// record can hold. Stores that keep whole seconds (the JSON form, the file store's modification
/// times, the cookie store's sealed form) round deadlines up: the cookie's `Max-Age`, worked out
/// from the exact deadline, must not outlast the stored one (SECURITY.md 15), which rounding down
/// would let it do by the fraction cut off.
pub(crate) fn deadline_seconds(at: OffsetDateTime) -> i64 {
    let seconds = at.unix_timestamp();
    if at.nanosecond() > 0 && OffsetDateTime::from_unix_timestamp(seconds + 1).is_ok() {
        seconds + 1
    } else {
        seconds
    }
}

/// `at` rounded up to a whole number of `unit_nanos` (a divisor of a second), for stores that
/// keep deadlines in milliseconds or microseconds, for the reason [`deadline_seconds`] gives.
/// Left as it is at the very end of the range of dates.
#[cfg_attr(
    not(any(
        feature = "redis-store",
        feature = "postgres-store",
        feature = "sqlite-store"
    )),
    allow(dead_code)
)]
pub(crate) fn deadline_rounded_up(at: OffsetDateTime, unit_nanos: u32) -> OffsetDateTime {
    match at.nanosecond() % unit_nanos {
        0 => at,
        part => at
            .checked_add(time::Duration::nanoseconds(i64::from(unit_nanos - part)))
            .unwrap_or(at),
    }
}

/// Deadlines in the JSON form: whole seconds, rounded up ([`deadline_seconds`]).
mod deadline {
    use serde::{Deserializer, Serializer};
    use time::OffsetDateTime;

    pub(super) fn serialize<S: Serializer>(at: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(super::deadline_seconds(*at))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        time::serde::timestamp::deserialize(d)
    }

    pub(super) mod option {
        use serde::{Deserializer, Serializer};
        use time::OffsetDateTime;

        pub(in crate::record) fn serialize<S: Serializer>(
            at: &Option<OffsetDateTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => s.serialize_some(&super::super::deadline_seconds(*at)),
                None => s.serialize_none(),
            }
        }

        pub(in crate::record) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<OffsetDateTime>, D::Error> {
            time::serde::timestamp::option::deserialize(d)
        }
    }
}

/// The earlier of an idle and an optional absolute deadline.
pub(crate) fn earlier_deadline(
    idle: OffsetDateTime,
    absolute: Option<OffsetDateTime>,
) -> OffsetDateTime {
    match absolute {
        Some(absolute) if absolute < idle => absolute,
        _ => idle,
    }
}

/// What one request changed in a session, applied by a store to the record it holds now.
///
/// Order of application: if `cleared`, the stored data is emptied first; then `removed` keys are
/// deleted; then `set` keys are written. The expiry policy and the owner are replaced when set;
/// so is the idle deadline, unless [`deadline_basis`](ChangeSet::deadline_basis) names a policy
/// the record no longer has. Same-key writes from concurrent requests are last-writer-wins.
///
/// `Debug` shows how many keys are set and removed, never the values or the owner.
#[derive(Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ChangeSet {
    /// Start from an empty map (the handler called [`Session::clear`](crate::Session::clear)).
    pub cleared: bool,
    /// Keys written by this request, with their new values.
    pub set: Map<String, Value>,
    /// Keys removed by this request (never also in `set`).
    pub removed: Vec<String>,
    /// The new idle deadline.
    pub idle_deadline: Option<OffsetDateTime>,
    /// The expiry policy `idle_deadline` was worked out from, when this request did not change
    /// the policy (`expiry` is `None`). The store moves the deadline only while the stored policy
    /// is still this one: otherwise another request changed the policy since this one loaded the
    /// session, and set a deadline to go with it, which a deadline worked out from the old policy
    /// must not replace (a date the app fixed must hold). `None` moves it whatever the stored
    /// policy. See [`deadline_applies`](ChangeSet::deadline_applies).
    pub deadline_basis: Option<Expiry>,
    /// The new expiry policy, when the request changed it.
    pub expiry: Option<Expiry>,
    /// The new owner, when the request changed it (`Some(None)` removes it).
    pub owner: Option<Option<String>>,
}

impl ChangeSet {
    /// Whether the data map is touched at all (as opposed to deadlines or metadata only).
    pub fn changes_data(&self) -> bool {
        self.cleared || !self.set.is_empty() || !self.removed.is_empty()
    }

    /// Whether `idle_deadline` may replace the deadline of a stored record whose expiry policy is
    /// `stored`: the request sets a policy of its own, or worked out the deadline from `stored`
    /// (see [`deadline_basis`](ChangeSet::deadline_basis)).
    pub fn deadline_applies(&self, stored: &Expiry) -> bool {
        self.expiry.is_some() || self.deadline_basis.is_none_or(|basis| basis == *stored)
    }

    /// What a save of these changes to a record whose expiry policy is `stored` reports:
    /// [`Saved::PolicyChanged`] when it has an idle deadline that
    /// [`deadline_applies`](ChangeSet::deadline_applies) refuses, else [`Saved::Applied`].
    pub fn outcome_for(&self, stored: &Expiry) -> Saved {
        if self.idle_deadline.is_some() && !self.deadline_applies(stored) {
            Saved::PolicyChanged
        } else {
            Saved::Applied
        }
    }

    /// Applies the change to `record`, in the documented order, and returns what a save reports
    /// (see [`outcome_for`](ChangeSet::outcome_for)): the idle deadline is left as stored when
    /// the record's policy is no longer [`deadline_basis`](ChangeSet::deadline_basis). The
    /// absolute deadline and created-at are never changed.
    pub fn apply_to(&self, record: &mut Record) -> Saved {
        let outcome = self.outcome_for(&record.expiry);
        if self.cleared {
            record.data.clear();
        }
        for key in &self.removed {
            record.data.remove(key);
        }
        for (key, value) in &self.set {
            match record.data.get_mut(key) {
                Some(slot) => slot.clone_from(value),
                None => {
                    record.data.insert(key.clone(), value.clone());
                }
            }
        }
        if let Some(idle) = self.idle_deadline
            && outcome == Saved::Applied
        {
            record.idle_deadline = idle;
        }
        if let Some(expiry) = self.expiry {
            record.expiry = expiry;
        }
        if let Some(owner) = &self.owner {
            record.owner.clone_from(owner);
        }
        outcome
    }
}

impl fmt::Debug for ChangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeSet")
            .field("cleared", &self.cleared)
            .field("set", &self.set.len())
            .field("removed", &self.removed.len())
            .field("idle_deadline", &self.idle_deadline)
            .field("deadline_basis", &self.deadline_basis)
            .field("expiry", &self.expiry)
            .field(
                "owner",
                &self
                    .owner
                    .as_ref()
                    .map(|owner| owner.as_ref().map(|_| Redacted)),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use time::Duration;

    fn sample() -> Record {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut record = Record::new(
            t0,
            t0 + Duration::hours(1),
            Some(t0 + Duration::days(1)),
            Expiry::OnInactivity(Duration::hours(1)),
        );
        record.data.insert("a".into(), json!(1));
        record.data.insert("b".into(), json!({"x": [1, 2]}));
        record.owner = Some("alice".into());
        record
    }

    #[test]
    fn records_round_trip() {
        let record = sample();
        assert_eq!(Record::decode(&record.encode().unwrap()).unwrap(), record);
    }

    #[test]
    fn newer_format_versions_are_refused() {
        let mut record = sample();
        record.version = RECORD_VERSION + 1;
        assert!(Record::decode(&record.encode().unwrap()).is_err());
    }

    #[test]
    fn deadline_is_the_earlier_of_idle_and_absolute() {
        let mut record = sample();
        assert_eq!(record.deadline(), record.idle_deadline);
        record.idle_deadline = record.created_at + Duration::days(5);
        assert_eq!(record.deadline(), record.absolute_deadline.unwrap());
        assert!(!record.is_live(record.created_at + Duration::days(1)));
        assert!(record.is_live(record.created_at + Duration::hours(23)));
    }

    #[test]
    fn change_sets_touch_only_their_keys() {
        let mut stored = sample();
        stored
            .data
            .insert("other".into(), json!("written meanwhile"));
        let mut change = ChangeSet::default();
        change.set.insert("a".into(), json!(2));
        change.removed.push("b".into());
        change.apply_to(&mut stored);
        assert_eq!(stored.data.get("a"), Some(&json!(2)));
        assert_eq!(stored.data.get("b"), None);
        assert_eq!(stored.data.get("other"), Some(&json!("written meanwhile")));
    }

    #[test]
    fn cleared_change_sets_start_from_empty() {
        let mut stored = sample();
        let mut change = ChangeSet {
            cleared: true,
            ..ChangeSet::default()
        };
        change.set.insert("fresh".into(), json!(true));
        change.apply_to(&mut stored);
        assert_eq!(stored.data.len(), 1);
        assert_eq!(stored.data.get("fresh"), Some(&json!(true)));
    }

    #[test]
    fn debug_output_shows_no_session_values() {
        let mut record = sample();
        record
            .data
            .insert("token".into(), json!("secret-value-123"));
        let mut change = ChangeSet::default();
        change.set.insert("token".into(), json!("secret-value-456"));
        change.owner = Some(Some("bob@example.com".into()));
        let shown = format!("{record:?} {record:#?} {change:?} {change:#?}");
        for secret in ["secret-value", "alice", "bob@example.com"] {
            assert!(!shown.contains(secret), "{secret:?} in {shown}");
        }
    }

    /// A value nested `levels` deep in arrays.
    fn nested(levels: usize) -> Value {
        let mut value = json!(1);
        for _ in 0..levels {
            value = Value::Array(vec![value]);
        }
        value
    }

    #[test]
    fn a_record_that_encodes_also_decodes_however_deep_its_values() {
        for levels in [100, 126, 127, 128, 200, 1000] {
            let mut record = sample();
            record.data.insert("tree".into(), nested(levels));
            // Refusing to encode is fine (the store reports an error and keeps what it had);
            // encoding what cannot be read back loses the session on its next load. Up to the
            // limit it must encode; past it, it must be refused.
            match record.encode() {
                Ok(bytes) => {
                    assert!(levels <= MAX_VALUE_DEPTH, "{levels} levels encoded");
                    let back = Record::decode(&bytes);
                    assert!(back.is_ok(), "{levels} levels: encoded, but {back:?}");
                }
                Err(_) => assert!(levels > MAX_VALUE_DEPTH, "{levels} levels refused"),
            }
        }
    }

    #[test]
    fn values_nested_up_to_the_limit_round_trip() {
        let mut record = sample();
        record.data.insert("tree".into(), nested(MAX_VALUE_DEPTH));
        record
            .data
            .insert("wide".into(), json!({"a": [{"b": nested(10)}]}));
        assert_eq!(Record::decode(&record.encode().unwrap()).unwrap(), record);
        record
            .data
            .insert("tree".into(), nested(MAX_VALUE_DEPTH + 1));
        assert!(record.encode().is_err());
    }

    proptest! {
        #[test]
        fn any_record_round_trips(
            keys in proptest::collection::btree_map("[a-z]{1,8}", any::<i64>(), 0..8),
            created in 0i64..4_000_000_000,
            idle in 1i64..1_000_000,
            owner in proptest::option::of("[a-z0-9@.]{1,20}"),
        ) {
            let t0 = OffsetDateTime::from_unix_timestamp(created).unwrap();
            let mut record = Record::new(t0, t0 + Duration::seconds(idle), None, Expiry::OnSessionEnd);
            for (k, v) in keys {
                record.data.insert(k, json!(v));
            }
            record.owner = owner;
            prop_assert_eq!(Record::decode(&record.encode().unwrap()).unwrap(), record);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Record::decode(&bytes);
        }
    }
}
