//! The store contract (DESIGN.md §5), called directly on the store.
//!
//! Times are whole seconds near the real clock, so backends with their own TTLs (Redis, SQL) agree.

use std::sync::Arc;

use serde_json::json;
use time::{Duration, OffsetDateTime};
use tower_satchel::{
    ChangeSet, Expiry, Record, Renamed, Saved, SessionId, SessionKey, SessionStore, StoreErrorKind,
};

/// Now, truncated to whole seconds.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    OffsetDateTime::from_unix_timestamp(now.unix_timestamp()).unwrap()
}

pub fn key() -> SessionKey {
    SessionId::generate().unwrap().key()
}

/// A record created at `now`, idle for an hour, absolute a day.
pub fn record(now: OffsetDateTime) -> Record {
    let mut record = Record::new(
        now,
        now + Duration::hours(1),
        Some(now + Duration::days(1)),
        Expiry::OnInactivity(Duration::hours(1)),
    );
    record.data.insert("a".into(), json!(1));
    record.data.insert("b".into(), json!({"nested": [1, 2, 3]}));
    record
}

pub fn owned(now: OffsetDateTime, owner: &str) -> Record {
    let mut record = record(now);
    record.owner = Some(owner.to_owned());
    record
}

fn set(pairs: &[(&str, serde_json::Value)]) -> ChangeSet {
    let mut changes = ChangeSet::default();
    for (k, v) in pairs {
        changes.set.insert((*k).to_owned(), v.clone());
    }
    changes
}

pub async fn load_of_a_missing_key_is_none<S: SessionStore>(store: S) {
    assert_eq!(store.load(&key(), now()).await.unwrap(), None);
}

pub async fn create_then_load_round_trips<S: SessionStore>(store: S) {
    let now = now();
    let k = key();
    let mut record = owned(now, "alice");
    // Decimals come back as the same `f64`, not one a step off.
    let ratios: Vec<f64> = (1..200)
        .map(|n| f64::from(n) / 11.0 + 1e-9 * f64::from(n))
        .collect();
    record.data.insert("ratios".into(), json!(ratios));
    assert!(store.create(&k, &record, now).await.unwrap());
    let loaded = store.load(&k, now).await.unwrap().expect("the record");
    assert_eq!(loaded, record);
}

pub async fn create_refuses_an_existing_key<S: SessionStore>(store: S) {
    let now = now();
    let k = key();
    assert!(store.create(&k, &record(now), now).await.unwrap());
    let mut other = record(now);
    other.data.insert("intruder".into(), json!(true));
    assert!(
        !store.create(&k, &other, now).await.unwrap(),
        "create must not overwrite"
    );
    let loaded = store.load(&k, now).await.unwrap().unwrap();
    assert!(!loaded.data.contains_key("intruder"));
}

pub async fn create_replaces_an_expired_record_entirely<S: SessionStore>(store: S) {
    let now = now();
    let k = key();
    // Expired by the injected time only: a store with its own expiry may still hold it.
    let mut old = owned(now, "alice");
    old.idle_deadline = now + Duration::seconds(30);
    old.data.insert("stale".into(), json!("old"));
    assert!(store.create(&k, &old, now).await.unwrap());
    let later = now + Duration::seconds(31);
    let mut new = Record::new(
        later,
        later + Duration::hours(1),
        None,
        Expiry::OnInactivity(Duration::hours(1)),
    );
    new.data.insert("fresh".into(), json!(1));
    assert!(
        store.create(&k, &new, later).await.unwrap(),
        "an expired record does not block the key"
    );
    let loaded = store
        .load(&k, later)
        .await
        .unwrap()
        .expect("the new record");
    assert_eq!(loaded, new, "nothing of the expired record is left");
    assert!(
        store.list_owner("alice", later).await.unwrap().is_empty(),
        "the old owner no longer lists it"
    );
}

pub async fn save_applies_only_the_change_set<S: SessionStore>(store: S) {
    let now = now();
    let k = key();
    assert!(store.create(&k, &record(now), now).await.unwrap());
    let mut changes = set(&[("c", json!("new")), ("a", json!(10))]);
    changes.removed.push("b".into());
    changes.idle_deadline = Some(now + Duration::hours(2));
    assert_eq!(store.save(&k, &changes, now).await.unwrap(), Saved::Applied);
    let loaded = store.load(&k, now).await.unwrap().unwrap();
    assert_eq!(loaded.data.get("a"), Some(&json!(10)));
    assert_eq!(loaded.data.get("b"), None);
    assert_eq!(loaded.data.get("c"), Some(&json!("new")));
    assert_eq!(loaded.idle_deadline, now + Duration::hours(2));
    assert_eq!(loaded.created_at, now, "created-at never changes");
    assert_eq!(loaded.absolute_deadline, Some(now + Duration::days(1)));

    // Expiry and owner travel in the change set too.
    let mut changes = ChangeSet::default();
    changes.expiry = Some(Expiry::OnInactivity(Duration::days(30)));
    changes.owner = Some(Some("carol".into()));
    assert_eq!(store.save(&k, &changes, now).await.unwrap(), Saved::Applied);
    let loaded = store.load(&k, now).await.unwrap().unwrap();
    assert_eq!(loaded.expiry, Expiry::OnInactivity(Duration::days(30)));
    assert_eq!(loaded.owner.as_deref(), Some("carol"));
    assert_eq!(loaded.data.get("c"), Some(&json!("new")));
}

pub async fn save_of_a_cleared_change_set_replaces_the_data<S: SessionStore>(store: S) {
    let now = now();
    let k = key();
    assert!(store.create(&k, &record(now), now).await.unwrap());
    let mut changes = set(&[("only", json!(true))]);
    changes.cleared = true;
    assert_eq!(store.save(&k, &changes, now).await.unwrap(), Saved::Applied);
    let loaded = store.load(&k, now).await.unwrap().unwrap();
    assert_eq!(loaded.data.len(), 1);
    assert_eq!(loaded.data.get("only"), Some(&json!(true)));
}

pub async fn save_of_a_missing_record_is_gone_and_creates_nothing<S: SessionStore>(store: S) {
    let now = now();
    let k = key();
    let changes = set(&[("x", json!(1))]);
    assert_eq!(store.save(&k, &changes, now).await.unwrap(), Saved::Gone);
    assert_eq!(store.load(&k, now).await.unwrap(), None);
    // Deleted records stay deleted (SECURITY.md 11).
    assert!(store.create(&k, &record(now), now).await.unwrap());
    store.delete(&k).await.unwrap();
    assert_eq!(store.save(&k, &changes, now).await.unwrap(), Saved::Gone);
    assert_eq!(store.load(&k, now).await.unwrap(), None);
}

pub async fn save_of_an_expired_record_is_gone<S: SessionStore>(store: S) {
    let now = now();
    let k = key();
    let mut short = record(now);
    short.idle_deadline = now + Duration::seconds(30);
    assert!(store.create(&k, &short, now).await.unwrap());
    let later = now + Duration::seconds(31);
    // Expired by the caller's clock only (a Redis record's TTL follows the real one, so it is
    // still stored there): a touch or a save that only moves the deadline must not revive it.
    let revived = later + Duration::hours(1);
    assert_eq!(
        store.touch(&k, revived, short.expiry, later).await.unwrap(),
        Saved::Gone
    );
    let mut deadline_only = ChangeSet::default();
    deadline_only.idle_deadline = Some(revived);
    assert_eq!(
        store.save(&k, &deadline_only, later).await.unwrap(),
        Saved::Gone
    );
    let mut changes = set(&[("x", json!(1))]);
    changes.idle_deadline = Some(revived);
    assert_eq!(store.save(&k, &changes, later).await.unwrap(), Saved::Gone);
    assert_eq!(store.load(&k, later).await.unwrap(), None);
}

pub async fn load_of_an_expired_record_is_none<S: SessionStore>(store: S) {
    let now = now();
    let idle = key();
    let mut short = record(now);
    short.idle_deadline = now + Duration::seconds(30);
    assert!(store.create(&idle, &short, now).await.unwrap());
    assert!(
        store
            .load(&idle, now + Duration::seconds(29))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store
            .load(&idle, now + Duration::seconds(30))
            .await
            .unwrap(),
        None
    );

    // The absolute deadline counts even when the idle one is later.
    let absolute = key();
    let mut capped = record(now);
    capped.absolute_deadline = Some(now + Duration::seconds(20));
    assert!(store.create(&absolute, &capped, now).await.unwrap());
    assert_eq!(
        store
            .load(&absolute, now + Duration::seconds(21))
            .await
            .unwrap(),
        None
    );
}

pub async fn touch_moves_only_the_idle_deadline<S: SessionStore>(store: S) {
    let now = now();
    let k = key();
    let original = owned(now, "alice");
    assert!(store.create(&k, &original, now).await.unwrap());
    let later = now + Duration::minutes(50);
    let deadline = later + Duration::hours(1);
    assert_eq!(
        store
            .touch(&k, deadline, original.expiry, later)
            .await
            .unwrap(),
        Saved::Applied
    );
    // Alive past the original idle deadline.
    let loaded = store
        .load(&k, now + Duration::minutes(90))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.idle_deadline, deadline);
    assert_eq!(loaded.data, original.data);
    assert_eq!(loaded.owner, original.owner);
    assert_eq!(loaded.absolute_deadline, original.absolute_deadline);
}

/// A deadline worked out from an expiry policy another request has replaced since does not
/// overwrite the one that came with the new policy: a touch writes nothing, a save applies the
/// rest of its changes. Both answer `Saved::PolicyChanged`.
pub async fn a_deadline_from_a_replaced_policy_is_not_applied<S: SessionStore>(store: S) {
    let now = now();
    let k = key();
    let original = owned(now, "alice");
    let old = original.expiry;
    assert!(store.create(&k, &original, now).await.unwrap());
    // Another request fixes the end: 90 minutes from now.
    let date = now + Duration::minutes(90);
    let mut fixed = ChangeSet::default();
    fixed.expiry = Some(Expiry::AtDateTime(date));
    fixed.idle_deadline = Some(date);
    assert_eq!(store.save(&k, &fixed, now).await.unwrap(), Saved::Applied);

    // Requests that loaded the old policy, 50 minutes later, want an hour from then.
    let later = now + Duration::minutes(50);
    let stale = later + Duration::hours(1);
    assert!(stale > date);
    assert_eq!(
        store.touch(&k, stale, old, later).await.unwrap(),
        Saved::PolicyChanged
    );
    let mut values = set(&[("x", json!(1))]);
    values.idle_deadline = Some(stale);
    values.deadline_basis = Some(old);
    assert_eq!(
        store.save(&k, &values, later).await.unwrap(),
        Saved::PolicyChanged
    );
    let mut metadata = ChangeSet::default();
    metadata.owner = Some(Some("bob".into()));
    metadata.idle_deadline = Some(stale);
    metadata.deadline_basis = Some(old);
    assert_eq!(
        store.save(&k, &metadata, later).await.unwrap(),
        Saved::PolicyChanged
    );
    let loaded = store.load(&k, later).await.unwrap().unwrap();
    assert_eq!(loaded.idle_deadline, date, "the fixed date was moved");
    assert_eq!(loaded.expiry, Expiry::AtDateTime(date));
    assert_eq!(
        loaded.data.get("x"),
        Some(&json!(1)),
        "the values were dropped"
    );
    assert_eq!(
        loaded.owner.as_deref(),
        Some("bob"),
        "the owner was dropped"
    );

    // Worked out from the policy now stored, or with no basis, the deadline moves.
    let earlier = date - Duration::minutes(5);
    assert_eq!(
        store
            .touch(&k, earlier, Expiry::AtDateTime(date), later)
            .await
            .unwrap(),
        Saved::Applied
    );
    assert_eq!(
        store.load(&k, later).await.unwrap().unwrap().idle_deadline,
        earlier
    );
    let mut current = set(&[("y", json!(2))]);
    current.idle_deadline = Some(date);
    current.deadline_basis = Some(Expiry::AtDateTime(date));
    assert_eq!(
        store.save(&k, &current, later).await.unwrap(),
        Saved::Applied
    );
    assert_eq!(
        store.load(&k, later).await.unwrap().unwrap().idle_deadline,
        date
    );
    let mut unconditional = set(&[("z", json!(3))]);
    unconditional.idle_deadline = Some(earlier);
    assert_eq!(
        store.save(&k, &unconditional, later).await.unwrap(),
        Saved::Applied
    );
    assert_eq!(
        store.load(&k, later).await.unwrap().unwrap().idle_deadline,
        earlier
    );
    // A save that sets a policy of its own sets its deadline whatever the basis says.
    let mut own = ChangeSet::default();
    own.expiry = Some(old);
    own.idle_deadline = Some(stale);
    own.deadline_basis = Some(Expiry::OnSessionEnd);
    assert_eq!(store.save(&k, &own, later).await.unwrap(), Saved::Applied);
    let loaded = store.load(&k, later).await.unwrap().unwrap();
    assert_eq!((loaded.expiry, loaded.idle_deadline), (old, stale));
}

pub async fn touch_of_a_missing_record_is_gone<S: SessionStore>(store: S) {
    let now = now();
    let k = key();
    assert_eq!(
        store
            .touch(&k, now + Duration::hours(1), Expiry::OnSessionEnd, now)
            .await
            .unwrap(),
        Saved::Gone
    );
    assert_eq!(store.load(&k, now).await.unwrap(), None);
}

pub async fn delete_is_idempotent<S: SessionStore>(store: S) {
    let now = now();
    let k = key();
    store.delete(&k).await.unwrap();
    assert!(store.create(&k, &record(now), now).await.unwrap());
    store.delete(&k).await.unwrap();
    store.delete(&k).await.unwrap();
    assert_eq!(store.load(&k, now).await.unwrap(), None);
}

pub async fn delete_expired_is_bounded_and_spares_live_records<S: SessionStore>(store: S) {
    let now = now();
    let mut live = Vec::new();
    for _ in 0..5 {
        let k = key();
        let mut short = owned(now, "expiring");
        short.idle_deadline = now + Duration::seconds(30);
        assert!(store.create(&k, &short, now).await.unwrap());
    }
    for _ in 0..2 {
        let k = key();
        assert!(store.create(&k, &record(now), now).await.unwrap());
        live.push(k);
    }
    let later = now + Duration::minutes(5);
    assert_eq!(store.delete_expired(later, 3).await.unwrap(), 3);
    assert_eq!(store.delete_expired(later, 3).await.unwrap(), 2);
    assert_eq!(store.delete_expired(later, 3).await.unwrap(), 0);
    for k in &live {
        assert!(store.load(k, later).await.unwrap().is_some());
    }
    assert!(store.list_owner("expiring", now).await.unwrap().is_empty());
}

/// A value nested deeper than can be read back is refused by every write with an encoding
/// error, and the stored session is left as it was: written, it would make the whole session
/// unreadable on its next load. (The layer refuses such values at `insert` already; this is a
/// store called directly.)
pub async fn a_value_too_deep_to_read_back_is_refused<S: SessionStore>(store: S) {
    let now = now();
    let deep = (0..130).fold(json!(1), |value, _| json!([value]));
    let (k, to) = (key(), key());
    let mut too_deep = record(now);
    too_deep.data.insert("deep".into(), deep.clone());
    let refused = |error: tower_satchel::StoreError| error.kind() == StoreErrorKind::Encoding;
    assert!(refused(store.create(&k, &too_deep, now).await.unwrap_err()));
    assert_eq!(store.load(&k, now).await.unwrap(), None);
    let stored = record(now);
    assert!(store.create(&k, &stored, now).await.unwrap());
    let changes = set(&[("deep", deep)]);
    assert!(refused(store.save(&k, &changes, now).await.unwrap_err()));
    assert!(refused(
        store.rename(&k, &to, &changes, now).await.unwrap_err()
    ));
    assert_eq!(store.load(&k, now).await.unwrap(), Some(stored));
    assert_eq!(store.load(&to, now).await.unwrap(), None);
}

pub async fn owner_index_lists_and_revokes<S: SessionStore>(store: S) {
    let now = now();
    let (a1, a2, b1) = (key(), key(), key());
    assert!(store.create(&a1, &owned(now, "alice"), now).await.unwrap());
    assert!(
        store
            .create(&a2, &owned(now + Duration::seconds(1), "alice"), now)
            .await
            .unwrap()
    );
    assert!(store.create(&b1, &owned(now, "bob"), now).await.unwrap());
    let listed = store.list_owner("alice", now).await.unwrap();
    let mut keys: Vec<SessionKey> = listed.iter().map(|s| s.key).collect();
    keys.sort();
    let mut expected = vec![a1, a2];
    expected.sort();
    assert_eq!(keys, expected);
    assert!(listed.iter().all(|s| s.deadline == now + Duration::hours(1)
        || s.deadline == now + Duration::seconds(1) + Duration::hours(1)));
    assert_eq!(store.delete_owner("alice").await.unwrap(), 2);
    assert_eq!(store.load(&a1, now).await.unwrap(), None);
    assert_eq!(store.load(&a2, now).await.unwrap(), None);
    assert!(store.load(&b1, now).await.unwrap().is_some());
    assert!(store.list_owner("alice", now).await.unwrap().is_empty());
    assert_eq!(store.delete_owner("nobody").await.unwrap(), 0);
}

/// A listing by a host whose clock runs ahead (here: an hour and a minute) leaves out a session
/// that is past its idle deadline by that clock, but must not drop it from the owner index: a
/// host whose clock is right still serves the session and moves its deadline, and a revocation
/// must then still find it (SECURITY.md 12).
pub async fn a_listing_from_a_clock_ahead_keeps_the_owner_index<S: SessionStore>(store: S) {
    let now = now();
    let k = key();
    assert!(store.create(&k, &owned(now, "alice"), now).await.unwrap());
    let ahead = now + Duration::hours(1) + Duration::minutes(1);
    assert!(store.list_owner("alice", ahead).await.unwrap().is_empty());
    let later = now + Duration::minutes(30);
    assert_eq!(
        store
            .touch(
                &k,
                later + Duration::hours(1),
                Expiry::OnInactivity(Duration::hours(1)),
                later,
            )
            .await
            .unwrap(),
        Saved::Applied
    );
    assert_eq!(store.list_owner("alice", later).await.unwrap().len(), 1);
    assert_eq!(store.delete_owner("alice").await.unwrap(), 1);
    assert_eq!(store.load(&k, later).await.unwrap(), None);
}

pub async fn owner_index_follows_owner_changes_and_deletes<S: SessionStore>(store: S) {
    let now = now();
    let (k1, k2) = (key(), key());
    assert!(store.create(&k1, &owned(now, "alice"), now).await.unwrap());
    assert!(store.create(&k2, &record(now), now).await.unwrap());
    // k1 moves to bob, k2 (no owner) joins bob.
    let mut to_bob = ChangeSet::default();
    to_bob.owner = Some(Some("bob".into()));
    assert_eq!(store.save(&k1, &to_bob, now).await.unwrap(), Saved::Applied);
    assert_eq!(store.save(&k2, &to_bob, now).await.unwrap(), Saved::Applied);
    assert!(store.list_owner("alice", now).await.unwrap().is_empty());
    assert_eq!(store.list_owner("bob", now).await.unwrap().len(), 2);
    // Deleting one and clearing the owner of the other empties bob's list.
    store.delete(&k1).await.unwrap();
    let mut no_owner = ChangeSet::default();
    no_owner.owner = Some(None);
    assert_eq!(
        store.save(&k2, &no_owner, now).await.unwrap(),
        Saved::Applied
    );
    assert!(store.list_owner("bob", now).await.unwrap().is_empty());
    assert_eq!(store.delete_owner("bob").await.unwrap(), 0);
    assert!(
        store.load(&k2, now).await.unwrap().is_some(),
        "k2 left bob, so it survives"
    );
}

pub async fn concurrent_saves_of_different_keys_all_persist<S: SessionStore>(store: S) {
    let store = Arc::new(store);
    let now = now();
    let k = key();
    assert!(store.create(&k, &record(now), now).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let changes = set(&[(&format!("k{i}"), json!(i))]);
            store.save(&k, &changes, now).await.unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), Saved::Applied);
    }
    let loaded = store.load(&k, now).await.unwrap().unwrap();
    for i in 0..50 {
        assert_eq!(
            loaded.data.get(&format!("k{i}")),
            Some(&json!(i)),
            "k{i} lost"
        );
    }
    assert_eq!(loaded.data.get("a"), Some(&json!(1)));
}

pub async fn keys_are_isolated_between_sessions<S: SessionStore>(store: S) {
    let now = now();
    let (k1, k2) = (key(), key());
    assert!(store.create(&k1, &record(now), now).await.unwrap());
    assert!(store.create(&k2, &record(now), now).await.unwrap());
    assert_eq!(
        store
            .save(&k1, &set(&[("only-k1", json!(true))]), now)
            .await
            .unwrap(),
        Saved::Applied
    );
    let other = store.load(&k2, now).await.unwrap().unwrap();
    assert!(!other.data.contains_key("only-k1"));
}

/// The change set `cycle_id` hands to `rename`: the request's writes plus the new idle deadline,
/// expiry policy and owner.
fn rotation(now: OffsetDateTime, owner: Option<&str>) -> ChangeSet {
    let mut changes = set(&[("c", json!("new"))]);
    changes.removed.push("a".into());
    changes.idle_deadline = Some(now + Duration::hours(2));
    changes.expiry = Some(Expiry::OnInactivity(Duration::hours(2)));
    changes.owner = Some(owner.map(str::to_owned));
    changes
}

pub async fn rename_keeps_what_the_changes_leave_alone<S: SessionStore>(store: S) {
    let now = now();
    let (from, to) = (key(), key());
    let before = owned(now, "alice");
    assert!(store.create(&from, &before, now).await.unwrap());
    let mut changes = set(&[("c", json!("new"))]);
    changes.idle_deadline = Some(now + Duration::hours(2));
    assert_eq!(
        store.rename(&from, &to, &changes, now).await.unwrap(),
        Renamed::Applied
    );
    let moved = store
        .load(&to, now)
        .await
        .unwrap()
        .expect("the moved record");
    assert_eq!(moved.owner.as_deref(), Some("alice"));
    assert_eq!(moved.expiry, before.expiry);
    assert_eq!(moved.idle_deadline, now + Duration::hours(2));
    let alices: Vec<SessionKey> = store
        .list_owner("alice", now)
        .await
        .unwrap()
        .iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(alices, vec![to], "the owner index follows the record");
    assert_eq!(store.delete_owner("alice").await.unwrap(), 1);
    assert_eq!(store.load(&to, now).await.unwrap(), None);
}

pub async fn rename_moves_the_record_with_the_changes<S: SessionStore>(store: S) {
    let now = now();
    let (from, to) = (key(), key());
    let before = owned(now, "alice");
    assert!(store.create(&from, &before, now).await.unwrap());
    let later = now + Duration::seconds(5);
    let changes = rotation(later, Some("bob"));
    assert_eq!(
        store.rename(&from, &to, &changes, later).await.unwrap(),
        Renamed::Applied
    );
    assert_eq!(store.load(&from, later).await.unwrap(), None);
    let mut expected = before;
    changes.apply_to(&mut expected);
    let moved = store
        .load(&to, later)
        .await
        .unwrap()
        .expect("the moved record");
    assert_eq!(moved, expected);
    assert_eq!(moved.created_at, now, "SECURITY.md 9: creation time kept");
    assert_eq!(moved.absolute_deadline, Some(now + Duration::days(1)));
    assert!(store.list_owner("alice", later).await.unwrap().is_empty());
    let bobs: Vec<SessionKey> = store
        .list_owner("bob", later)
        .await
        .unwrap()
        .iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(bobs, vec![to]);
    // The old key is gone for every operation.
    assert_eq!(
        store
            .save(&from, &set(&[("x", json!(1))]), later)
            .await
            .unwrap(),
        Saved::Gone
    );
    assert_eq!(store.load(&from, later).await.unwrap(), None);
}

pub async fn rename_of_a_missing_or_expired_record_is_gone<S: SessionStore>(store: S) {
    let now = now();
    let (missing, expired, to) = (key(), key(), key());
    assert_eq!(
        store
            .rename(&missing, &to, &rotation(now, None), now)
            .await
            .unwrap(),
        Renamed::Gone
    );
    let mut short = owned(now, "alice");
    short.idle_deadline = now + Duration::seconds(30);
    assert!(store.create(&expired, &short, now).await.unwrap());
    let later = now + Duration::seconds(31);
    assert_eq!(
        store
            .rename(&expired, &to, &rotation(later, Some("alice")), later)
            .await
            .unwrap(),
        Renamed::Gone
    );
    assert_eq!(
        store.load(&to, later).await.unwrap(),
        None,
        "nothing written"
    );
    assert!(store.list_owner("alice", later).await.unwrap().is_empty());
}

pub async fn rename_onto_a_live_record_is_taken_and_changes_nothing<S: SessionStore>(store: S) {
    let now = now();
    let (from, to) = (key(), key());
    let (mine, theirs) = (owned(now, "alice"), owned(now, "bob"));
    assert!(store.create(&from, &mine, now).await.unwrap());
    assert!(store.create(&to, &theirs, now).await.unwrap());
    assert_eq!(
        store
            .rename(&from, &to, &rotation(now, Some("alice")), now)
            .await
            .unwrap(),
        Renamed::Taken
    );
    assert_eq!(store.load(&from, now).await.unwrap(), Some(mine.clone()));
    assert_eq!(store.load(&to, now).await.unwrap(), Some(theirs));
    assert_eq!(store.list_owner("alice", now).await.unwrap().len(), 1);
    // Onto its own key: that key is taken too, by the session itself.
    assert_eq!(
        store
            .rename(&from, &from, &rotation(now, Some("alice")), now)
            .await
            .unwrap(),
        Renamed::Taken
    );
    assert_eq!(store.load(&from, now).await.unwrap(), Some(mine));
}

pub async fn rename_onto_an_expired_record_replaces_it<S: SessionStore>(store: S) {
    let now = now();
    let (from, to) = (key(), key());
    let mut dead = owned(now, "bob");
    dead.idle_deadline = now + Duration::seconds(30);
    dead.data.insert("stale".into(), json!(true));
    assert!(store.create(&to, &dead, now).await.unwrap());
    let later = now + Duration::seconds(31);
    assert!(store.create(&from, &record(now), later).await.unwrap());
    assert_eq!(
        store
            .rename(&from, &to, &rotation(later, None), later)
            .await
            .unwrap(),
        Renamed::Applied
    );
    let moved = store.load(&to, later).await.unwrap().unwrap();
    assert!(!moved.data.contains_key("stale"));
    assert_eq!(moved.data.get("c"), Some(&json!("new")));
    assert_eq!(moved.owner, None);
    assert!(store.list_owner("bob", later).await.unwrap().is_empty());
}

/// Rounds of the races below: enough for two tasks on two threads to overlap in some of them
/// on every store, few enough for a networked store to finish in about a second.
const RACES: usize = 100;

pub async fn rename_is_one_step_for_a_concurrent_save<S: SessionStore>(store: S) {
    let store = Arc::new(store);
    let now = now();
    // Which way each round goes depends on the store and the scheduler (on a current-thread
    // runtime an immediate store's save always comes second): each round checks that the
    // outcome it got is whole, whichever it is.
    for _ in 0..RACES {
        let (from, to) = (key(), key());
        assert!(store.create(&from, &record(now), now).await.unwrap());
        let saving = {
            let store = store.clone();
            tokio::spawn(async move {
                let changes = set(&[("x", json!("concurrent"))]);
                store.save(&from, &changes, now).await.unwrap()
            })
        };
        let renamed = store
            .rename(&from, &to, &rotation(now, None), now)
            .await
            .unwrap();
        assert_eq!(renamed, Renamed::Applied);
        let moved = store.load(&to, now).await.unwrap().unwrap();
        match saving.await.unwrap() {
            // Before the rename: carried to the new key.
            Saved::Applied => {
                assert_eq!(
                    moved.data.get("x"),
                    Some(&json!("concurrent")),
                    "a save answered Applied was lost by the rename"
                );
            }
            // After it: refused, and not written anywhere.
            Saved::Gone => {
                assert!(!moved.data.contains_key("x"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(store.load(&from, now).await.unwrap(), None);
    }
}

pub async fn rename_is_one_step_for_a_concurrent_revocation<S: SessionStore>(store: S) {
    let store = Arc::new(store);
    let now = now();
    for round in 0..RACES {
        let owner = format!("revoked-{round}-{}", key().log_tag());
        let (from, to) = (key(), key());
        assert!(store.create(&from, &owned(now, &owner), now).await.unwrap());
        let revoking = {
            let (store, owner) = (store.clone(), owner.clone());
            tokio::spawn(async move { store.delete_owner(&owner).await.unwrap() })
        };
        let renamed = store
            .rename(&from, &to, &rotation(now, Some(&owner)), now)
            .await
            .unwrap();
        assert_eq!(
            revoking.await.unwrap(),
            1,
            "one session revoked, under either key"
        );
        // Either the revocation came first and the rename found nothing, or the rename came
        // first and the revocation found the moved session: no session of the owner is left.
        assert!(matches!(renamed, Renamed::Applied | Renamed::Gone));
        assert_eq!(
            store.load(&to, now).await.unwrap(),
            None,
            "SECURITY.md 11, 12: a revoked session came back under its new key ({renamed:?})"
        );
        assert_eq!(store.load(&from, now).await.unwrap(), None);
        assert!(store.list_owner(&owner, now).await.unwrap().is_empty());
    }
}
