//! The store contract (DESIGN.md §5), called directly on the store.
//!
//! Times are whole seconds near the real clock, so backends with their own TTLs (Redis, SQL) agree.

use std::sync::Arc;

use serde_json::json;
use time::{Duration, OffsetDateTime};
use tower_satchel::{ChangeSet, Expiry, Record, Saved, SessionId, SessionKey, SessionStore};

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
    let record = owned(now, "alice");
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
    let mut changes = set(&[("x", json!(1))]);
    changes.idle_deadline = Some(later + Duration::hours(1));
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
        store.touch(&k, deadline, later).await.unwrap(),
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

pub async fn touch_of_a_missing_record_is_gone<S: SessionStore>(store: S) {
    let now = now();
    let k = key();
    assert_eq!(
        store
            .touch(&k, now + Duration::hours(1), now)
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
