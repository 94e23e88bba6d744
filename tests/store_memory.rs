//! The memory store against the conformance suite, and its limit on sessions.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod conformance;

mod memory {
    server_store_conformance!(|| async { tower_satchel::MemoryStore::new() });
}

mod memory_one_shard {
    // One shard: every session contends for the same lock; the contract must still hold.
    server_store_conformance!(|| async { tower_satchel::MemoryStore::with_shards(1) });
}

use axum::http::StatusCode;
use conformance::contract::{key, now, record};
use conformance::harness;
use time::Duration;
use tower_satchel::{ChangeSet, IntoBackend, MemoryStore, Saved, SessionStore, StoreErrorKind};

#[tokio::test]
async fn a_full_store_refuses_new_sessions_and_keeps_serving_the_others() {
    let now = now();
    // A limit counted over both shards.
    let store = MemoryStore::with_shards(2).with_max_sessions(4);
    let mut kept = Vec::new();
    let refused = loop {
        let k = key();
        match store.create(&k, &record(now), now).await {
            Ok(created) => {
                assert!(created);
                kept.push(k);
            }
            Err(error) => break error,
        }
        assert!(kept.len() <= 4, "more sessions than the limit");
    };
    assert_eq!(refused.kind(), StoreErrorKind::Backend);
    assert!(refused.to_string().contains("full"), "{refused}");
    assert_eq!(
        kept.len(),
        4,
        "the limit counts the sessions of every shard"
    );

    // The sessions it holds work as before.
    let mut changes = ChangeSet::default();
    changes.set.insert("x".into(), serde_json::json!(1));
    for k in &kept {
        assert_eq!(store.save(k, &changes, now).await.unwrap(), Saved::Applied);
        assert!(store.load(k, now).await.unwrap().is_some());
    }
    // Deleting them makes room again.
    for k in &kept {
        store.delete(k).await.unwrap();
    }
    assert!(store.create(&key(), &record(now), now).await.unwrap());
}

#[tokio::test]
async fn a_full_store_makes_room_by_dropping_expired_sessions() {
    let now = now();
    let store = MemoryStore::with_shards(1).with_max_sessions(3);
    let mut short = record(now);
    short.idle_deadline = now + Duration::seconds(30);
    for _ in 0..3 {
        assert!(store.create(&key(), &short, now).await.unwrap());
    }
    assert!(store.create(&key(), &record(now), now).await.is_err());
    // Two minutes on, the three have expired: a new session takes the place of one.
    let later = now + Duration::minutes(2);
    assert!(store.create(&key(), &record(later), later).await.unwrap());
    assert_eq!(store.len(), 1, "the expired sessions were dropped");
}

#[tokio::test]
async fn through_the_layer_a_full_store_gives_new_visitors_an_error_and_no_cookie() {
    let store = MemoryStore::with_shards(1).with_max_sessions(1);
    let app = harness::default_app(store.clone().into_backend());
    let token = app.start().await;
    let resp = app.get("/incr/n", None).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(resp.token().is_none());
    // The visitor who has a session keeps it, and can rotate its ID: the record moves to the
    // new ID, taking no second place.
    assert_eq!(app.get("/incr/n", Some(&token)).await.body, "2");
    let resp = app.get("/cycle", Some(&token)).await;
    assert_eq!(resp.status, StatusCode::OK);
    let rotated = resp.expect_token();
    assert_eq!(app.get("/incr/n", Some(&rotated)).await.body, "3");
    assert_eq!(store.len(), 1);
    let resp = app.get("/incr/n", None).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR, "still full");
    assert!(format!("{store:?}").contains("max_sessions: Some(1)"));
}
