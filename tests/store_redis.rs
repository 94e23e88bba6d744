//! The Redis store against the conformance suite (a single Redis and a 3-master Redis Cluster,
//! both started by the tests on free ports), plus what is specific to Redis: TTLs, key layout,
//! script reloading, outages and their recovery (a standalone server killed and restarted, or
//! frozen and let run again, or out of memory; a cluster master crashed and rejoined, or replaced
//! by its replica), and 100 concurrent requests of one session.
//!
//! Needs `redis-server` and `redis-cli` on PATH. `$REDIS_URL` replaces the single server (not the
//! cluster, nor the server the fault test kills).
#![cfg(feature = "redis-store")]
#![allow(clippy::unwrap_used)]

#[macro_use]
mod conformance;
mod support_redis;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use http_body_util::BodyExt;
use redis::AsyncCommands;
use serde_json::json;
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;
use tower_satchel::{
    ChangeSet, Expiry, Record, RedisStore, Renamed, Saved, Session, SessionError, SessionErrorKind,
    SessionId, SessionKey, SessionLayer, SessionStore, StoreErrorKind,
};

use support_redis::{RedisCluster, RedisServer, cluster, single_store, single_url, unique_prefix};

mod single {
    server_store_conformance!(|| async { crate::support_redis::single_store().await });
}

mod cluster {
    server_store_conformance!(|| async { crate::support_redis::cluster_store().await });
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap()
}

fn record(now: OffsetDateTime, idle: Duration, absolute: Option<Duration>) -> Record {
    let mut record = Record::new(
        now,
        now + idle,
        absolute.map(|a| now + a),
        Expiry::OnInactivity(idle),
    );
    record.data.insert("a".into(), json!(1));
    record
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Where a test that looks at raw keys runs: the Redis shared by this binary, or its shared
/// 3-master cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Single,
    Cluster,
}

/// A connection past the store, to read and plant raw keys: to the single Redis, or a cluster
/// connection that sends each command to the master holding its key's slot.
enum Raw {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Raw {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Target {
    /// A fresh store on the target under a prefix of its own, and that prefix.
    async fn store(self) -> (RedisStore, String) {
        match self {
            Self::Single => store_with_prefix(&single_url()).await,
            Self::Cluster => {
                let store = support_redis::cluster_store().await;
                assert!(store.is_cluster());
                let prefix = store.prefix().to_owned();
                (store, prefix)
            }
        }
    }

    /// A raw connection to the target.
    async fn conn(self) -> Raw {
        match self {
            Self::Single => Raw::Single(raw(&single_url()).await),
            Self::Cluster => Raw::Cluster(
                redis::cluster::ClusterClient::new(cluster().urls())
                    .unwrap()
                    .get_async_connection()
                    .await
                    .unwrap(),
            ),
        }
    }

    /// The URL of every server that holds keys: the single Redis, or every master of the cluster.
    fn servers(self) -> Vec<String> {
        match self {
            Self::Single => vec![single_url()],
            Self::Cluster => cluster_master_urls(),
        }
    }

    /// The keys matching `pattern` on each server that holds keys (each master of the cluster
    /// asked on its own: `KEYS` on a cluster node answers for that node only), sorted.
    async fn keys_by_server(self, pattern: &str) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for url in self.servers() {
            let mut keys: Vec<String> = raw(&url).await.keys(pattern).await.unwrap();
            keys.sort();
            out.push((url, keys));
        }
        out
    }

    /// The keys matching `pattern` on all servers together, sorted.
    async fn keys(self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .keys_by_server(pattern)
            .await
            .into_iter()
            .flat_map(|(_, keys)| keys)
            .collect();
        keys.sort();
        keys
    }

    /// Fails the test if a key matching `pattern` is on any server.
    async fn assert_no_key(self, pattern: &str) {
        for (server, keys) in self.keys_by_server(pattern).await {
            assert!(keys.is_empty(), "`{pattern}` on {server}: {keys:?}");
        }
    }

    /// The URL of the server that must hold `key_name`: the single Redis, or the cluster master
    /// holding its slot.
    fn server_of(self, key_name: &str) -> String {
        match self {
            Self::Single => single_url(),
            Self::Cluster => format!(
                "redis://127.0.0.1:{}/",
                master_port_of(&cluster().nodes[0], key_name)
            ),
        }
    }
}

/// The URL of every master of the shared cluster, as the cluster lists them (`CLUSTER NODES`),
/// checked to be every node the tests started (it has no replicas): a key written on any node is
/// seen by [`Target::keys_by_server`].
fn cluster_master_urls() -> Vec<String> {
    let cluster = cluster();
    let mut masters: Vec<u16> = cluster.nodes[0]
        .cli(&["cluster", "nodes"])
        .lines()
        .filter_map(|line| {
            // <id> <ip:port@bus> <flags> ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 2 && fields[2].contains("master")).then(|| {
                let address = fields[1].split('@').next().unwrap();
                address.rsplit(':').next().unwrap().parse().unwrap()
            })
        })
        .collect();
    masters.sort_unstable();
    let mut started: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    started.sort_unstable();
    assert_eq!(
        masters, started,
        "the shared cluster's nodes are its masters"
    );
    masters
        .iter()
        .map(|port| format!("redis://127.0.0.1:{port}/"))
        .collect()
}

/// Runs `$test` (an `async fn(Target)`) as the test `$single` on the single Redis and as the test
/// `$cluster` on the cluster.
macro_rules! single_and_cluster {
    ($test:ident: $single:ident, $cluster:ident) => {
        #[tokio::test]
        async fn $single() {
            $test(Target::Single).await;
        }

        #[tokio::test]
        async fn $cluster() {
            $test(Target::Cluster).await;
        }
    };
}

single_and_cluster!(
    an_unknown_id_writes_nothing_on: an_unknown_id_writes_nothing,
    an_unknown_id_writes_nothing_in_a_cluster
);

/// A request naming an ID nobody issued writes nothing to Redis (SECURITY.md 3): no key under the
/// store's prefix, nor any key naming the ID's hash, on the server or on any cluster master.
async fn an_unknown_id_writes_nothing_on(target: Target) {
    let (store, prefix) = target.store().await;
    let app = Router::new()
        .route("/", get(|s: Session| async move { s.len().to_string() }))
        .layer(SessionLayer::new(store.clone()));
    let planted = SessionId::generate().unwrap();
    let token = planted.expose();
    let response = app
        .oneshot(
            Request::get("/")
                .header(header::COOKIE, format!("id={token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    target.assert_no_key(&format!("{prefix}*")).await;
    target
        .assert_no_key(&format!("*{}*", planted.key().to_hex()))
        .await;

    // The same look finds what the store does write, on the server that must hold it.
    let now = now();
    let key = fresh_key();
    let rec = record(now, Duration::hours(1), None);
    assert!(store.create(&key, &rec, now).await.unwrap());
    let name = session_key_name(&prefix, &key);
    let found: Vec<(String, Vec<String>)> = target
        .keys_by_server(&format!("{prefix}*"))
        .await
        .into_iter()
        .filter(|(_, keys)| !keys.is_empty())
        .collect();
    assert_eq!(found, vec![(target.server_of(&name), vec![name])]);
}

fn session_key_name(prefix: &str, key: &SessionKey) -> String {
    format!("{prefix}s:{{{}}}", key.to_hex())
}

/// The ID's own 32 bytes in hex (not their hash): what no key may hold (SECURITY.md 6).
fn id_hex(id: &SessionId) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(id.expose())
        .unwrap();
    assert_eq!(bytes.len(), 32);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A store on `url` under a prefix of its own, and that prefix.
async fn store_with_prefix(url: &str) -> (RedisStore, String) {
    let prefix = unique_prefix();
    let store = RedisStore::open(url)
        .await
        .unwrap()
        .with_prefix(&prefix)
        .unwrap();
    (store, prefix)
}

/// Asserts `pttl` (milliseconds) is `expected`, give or take the time the test took.
fn assert_ttl(pttl: i64, expected: Duration) {
    let expected = expected.whole_milliseconds() as i64;
    assert!(
        // Up to 30 s spent since `now` (a loaded machine, a cluster's round trips): the TTLs
        // checked are hours long, so that still tells a wrong deadline.
        (expected - 30_000..=expected).contains(&pttl),
        "Redis TTL {pttl} ms, session deadline in {expected} ms"
    );
}

single_and_cluster!(
    redis_ttl_always_matches_the_session_deadline_on:
        redis_ttl_always_matches_the_session_deadline,
        redis_ttl_always_matches_the_session_deadline_in_a_cluster
);

async fn redis_ttl_always_matches_the_session_deadline_on(target: Target) {
    let (store, prefix) = target.store().await;
    let mut conn = target.conn().await;
    let now = now();
    let key = SessionId::generate().unwrap().key();
    let name = session_key_name(&prefix, &key);

    // Created: idle deadline (1 h) before the absolute one (1 day).
    let rec = record(now, Duration::hours(1), Some(Duration::days(1)));
    assert!(store.create(&key, &rec, now).await.unwrap());
    assert_ttl(conn.pttl(&name).await.unwrap(), Duration::hours(1));

    // Touched: the TTL follows the new idle deadline.
    let touched = now + Duration::hours(3);
    assert_eq!(
        store.touch(&key, touched, rec.expiry, now).await.unwrap(),
        Saved::Applied
    );
    assert_ttl(conn.pttl(&name).await.unwrap(), Duration::hours(3));

    // Saved with an idle deadline past the absolute one: the absolute deadline wins.
    let mut changes = ChangeSet::default();
    changes.set.insert("b".into(), json!(2));
    changes.idle_deadline = Some(now + Duration::days(5));
    assert_eq!(
        store.save(&key, &changes, now).await.unwrap(),
        Saved::Applied
    );
    assert_ttl(conn.pttl(&name).await.unwrap(), Duration::days(1));

    // Saved without moving the deadline: the TTL is left as it is, and still matches.
    let mut changes = ChangeSet::default();
    changes.set.insert("c".into(), json!(3));
    assert_eq!(
        store.save(&key, &changes, now).await.unwrap(),
        Saved::Applied
    );
    assert_ttl(conn.pttl(&name).await.unwrap(), Duration::days(1));

    // TTLs are relative to the layer's clock, not Redis' own: a layer clock an hour ahead.
    let key2 = SessionId::generate().unwrap().key();
    let ahead = now + Duration::hours(1);
    let rec = record(ahead, Duration::minutes(30), None);
    assert!(store.create(&key2, &rec, ahead).await.unwrap());
    assert_ttl(
        conn.pttl(session_key_name(&prefix, &key2)).await.unwrap(),
        Duration::minutes(30),
    );
}

single_and_cluster!(
    keys_are_namespaced_hashes_and_never_hold_the_id_on:
        keys_are_namespaced_hashes_and_never_hold_the_id,
        keys_are_namespaced_hashes_and_never_hold_the_id_in_a_cluster
);

/// Every key a login writes is `<prefix><kind>:{<hash>}` (SECURITY.md 6), on the server or on
/// whichever cluster masters hold them; no key on any of them names the ID or the owner, and
/// neither the session's fields nor the owner index's entries hold the ID.
async fn keys_are_namespaced_hashes_and_never_hold_the_id_on(target: Target) {
    let (store, prefix) = target.store().await;
    let owner = format!("alice-{}@example.com", &fresh_key().to_hex()[..8]);
    let app = Router::new()
        .route(
            "/",
            get({
                let owner = owner.clone();
                move |s: Session| {
                    let owner = owner.clone();
                    async move {
                        s.insert("x", "y")?;
                        s.set_owner(owner);
                        Ok::<_, SessionError>("ok")
                    }
                }
            }),
        )
        .layer(SessionLayer::new(store));
    let response = app
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    let token = cookie.split(';').next().unwrap().split_once('=').unwrap().1;
    let id = SessionId::parse(token).unwrap();
    let session = session_key_name(&prefix, &id.key());

    let mut conn = target.conn().await;
    let keys = target.keys(&format!("{prefix}*")).await;
    assert_eq!(keys.len(), 2, "the session and its owner index: {keys:?}");
    assert!(keys.contains(&session));
    let index = keys
        .iter()
        .find(|k| k.starts_with(&format!("{prefix}o:{{")))
        .expect("the owner index");
    for key in &keys {
        // The hash (SHA-256: 64 lowercase hex digits) in braces: it alone picks the cluster slot.
        let rest = key.strip_prefix(&prefix).unwrap();
        let hash = rest
            .strip_prefix("s:{")
            .or_else(|| rest.strip_prefix("o:{"))
            .and_then(|r| r.strip_suffix('}'));
        assert!(
            hash.is_some_and(|h| h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))),
            "not <prefix><kind>:{{<hash>}}: {key}"
        );
        assert!(!key.contains(token), "a Redis key holds the session ID");
        assert!(!key.contains("alice"), "a Redis key holds the owner");
    }
    // Under any prefix, on every server: no key holds the ID (its bytes rather than their hash)
    // or the owner.
    target.assert_no_key(&format!("*{}*", id_hex(&id))).await;
    target.assert_no_key(&format!("*{owner}*")).await;

    let fields: Vec<(String, String)> = conn.hgetall(&session).await.unwrap();
    assert!(
        fields
            .iter()
            .all(|(f, v)| !f.contains(token) && !v.contains(token))
    );
    assert!(fields.contains(&("d:x".to_owned(), "\"y\"".to_owned())));
    let entries: Vec<String> = conn.zrange(index, 0, -1).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].starts_with(&id.key().to_hex()), "{entries:?}");
    assert!(!entries[0].contains(token), "the owner index holds the ID");
}

single_and_cluster!(
    saves_never_recreate_a_key_deleted_behind_the_store_on:
        saves_never_recreate_a_key_deleted_behind_the_store,
        saves_never_recreate_a_key_deleted_behind_the_store_in_a_cluster
);

/// A session deleted behind the store's back (SECURITY.md 11): a save or a touch answers `Gone`
/// and writes nothing, under the session's key or any other of the store's, on any server.
async fn saves_never_recreate_a_key_deleted_behind_the_store_on(target: Target) {
    let (store, prefix) = target.store().await;
    let mut conn = target.conn().await;
    let now = now();
    let key = SessionId::generate().unwrap().key();
    assert!(
        store
            .create(&key, &record(now, Duration::hours(1), None), now)
            .await
            .unwrap()
    );
    let name = session_key_name(&prefix, &key);
    assert_eq!(target.keys(&format!("{prefix}*")).await, vec![name.clone()]);
    let deleted: usize = conn.del(&name).await.unwrap();
    assert_eq!(deleted, 1);
    let mut changes = ChangeSet::default();
    changes.set.insert("x".into(), json!(1));
    changes.idle_deadline = Some(now + Duration::hours(1));
    assert_eq!(store.save(&key, &changes, now).await.unwrap(), Saved::Gone);
    assert_eq!(
        store
            .touch(
                &key,
                now + Duration::hours(1),
                Expiry::OnInactivity(Duration::hours(1)),
                now
            )
            .await
            .unwrap(),
        Saved::Gone
    );
    let exists: bool = conn.exists(&name).await.unwrap();
    assert!(!exists, "a save or touch brought a deleted session back");
    target.assert_no_key(&format!("{prefix}*")).await;
    target.assert_no_key(&format!("*{}*", key.to_hex())).await;
}

#[tokio::test]
async fn scripts_are_sent_again_after_a_script_flush() {
    // A server of its own: on the shared one, another test's script call between the flush and
    // the save would load the script again, and the reload path would go untested (and a flush
    // of `$REDIS_URL`'s server would touch someone else's).
    let server = RedisServer::start();
    let url = server.url();
    let store = RedisStore::open(&url).await.unwrap();
    let mut conn = raw(&url).await;
    let now = now();
    let key = SessionId::generate().unwrap().key();
    assert!(
        store
            .create(&key, &record(now, Duration::hours(1), None), now)
            .await
            .unwrap()
    );
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut changes = ChangeSet::default();
    changes.set.insert("after-flush".into(), json!(true));
    assert_eq!(
        store.save(&key, &changes, now).await.unwrap(),
        Saved::Applied
    );
    let loaded = store.load(&key, now).await.unwrap().unwrap();
    assert_eq!(loaded.data.get("after-flush"), Some(&json!(true)));
}

single_and_cluster!(unreadable_records_are_no_session_not_an_error_on: unreadable_records_are_no_session_not_an_error, unreadable_records_are_no_session_not_an_error_in_a_cluster);

async fn unreadable_records_are_no_session_not_an_error_on(target: Target) {
    let (store, prefix) = target.store().await;
    let mut conn = target.conn().await;
    let key = SessionId::generate().unwrap().key();
    let _: () = conn
        .hset_multiple(
            session_key_name(&prefix, &key),
            &[("v", "1"), ("i", "soon"), ("d:x", "{"), ("junk", "1")],
        )
        .await
        .unwrap();
    let now = now();
    assert_eq!(store.load(&key, now).await.unwrap(), None);
    // A new session under that key replaces every field of the unreadable one.
    let record = record(now, Duration::hours(1), None);
    assert!(store.create(&key, &record, now).await.unwrap());
    assert_eq!(store.load(&key, now).await.unwrap(), Some(record));
}

/// Owners and value names holding newlines, `=`, the `d:` prefix or nothing at all come back
/// unchanged.
#[tokio::test]
async fn records_with_awkward_owners_and_names_load_back_unchanged() {
    let (store, _) = store_with_prefix(&single_url()).await;
    let now = now();
    for owner in [Some("a\nb=c\n"), Some(""), Some("=\n="), None] {
        let key = SessionId::generate().unwrap().key();
        let mut record = record(now, Duration::hours(1), None);
        record.owner = owner.map(str::to_owned);
        record.data.insert("d:x\n=".into(), json!({"k": "v\n"}));
        record.data.insert("é".into(), json!(null));
        assert!(store.create(&key, &record, now).await.unwrap());
        assert_eq!(store.load(&key, now).await.unwrap(), Some(record));
    }
}

single_and_cluster!(the_owner_index_expires_with_the_last_absolute_deadline_and_is_pruned_safely_on: the_owner_index_expires_with_the_last_absolute_deadline_and_is_pruned_safely, the_owner_index_expires_with_the_last_absolute_deadline_and_is_pruned_safely_in_a_cluster);

async fn the_owner_index_expires_with_the_last_absolute_deadline_and_is_pruned_safely_on(
    target: Target,
) {
    let (store, prefix) = target.store().await;
    let mut conn = target.conn().await;
    let now = now();
    let (k1, k2) = (
        SessionId::generate().unwrap().key(),
        SessionId::generate().unwrap().key(),
    );
    let mut r1 = record(now, Duration::hours(1), Some(Duration::days(1)));
    r1.owner = Some("bob".into());
    let mut r2 = record(now, Duration::hours(1), Some(Duration::days(2)));
    r2.owner = Some("bob".into());
    assert!(store.create(&k1, &r1, now).await.unwrap());
    assert!(store.create(&k2, &r2, now).await.unwrap());
    let index: Vec<String> = target.keys(&format!("{prefix}o:*")).await;
    assert_eq!(index.len(), 1);
    assert_ttl(conn.pttl(&index[0]).await.unwrap(), Duration::days(2));

    // An entry naming a session that is long gone is pruned when the index is listed...
    let long_gone = format!("{}:0", SessionId::generate().unwrap().key().to_hex());
    let _: () = conn.zadd(&index[0], &long_gone, "+inf").await.unwrap();
    // ...but one written moments ago may be a session on its way (a login writes the index entry
    // just before the session), so a concurrent revoke-all must not drop it.
    let k3 = SessionId::generate().unwrap().key();
    let wall = OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let on_its_way = format!("{}:{wall}", k3.to_hex());
    let _: () = conn.zadd(&index[0], &on_its_way, "+inf").await.unwrap();
    assert_eq!(store.list_owner("bob", now).await.unwrap().len(), 2);
    let long_gone_score: Option<f64> = conn.zscore(&index[0], &long_gone).await.unwrap();
    assert_eq!(long_gone_score, None, "a long-gone session stays indexed");

    assert_eq!(store.delete_owner("bob").await.unwrap(), 2);
    let on_its_way_score: Option<f64> = conn.zscore(&index[0], &on_its_way).await.unwrap();
    assert!(
        on_its_way_score.is_some(),
        "revoke-all dropped the entry of a session being created"
    );
    let members: usize = conn.zcard(&index[0]).await.unwrap();
    assert_eq!(members, 1, "revoke-all leaves only the entry on its way");
}

/// Creates a session of `owner` whose absolute deadline is a day away, and returns the key of the
/// owner's index (the only one under `prefix`).
async fn owned_session_index(
    store: &RedisStore,
    target: Target,
    prefix: &str,
    owner: &str,
    now: OffsetDateTime,
) -> String {
    let mut owned = record(now, Duration::hours(1), Some(Duration::days(1)));
    owned.owner = Some(owner.into());
    let key = SessionId::generate().unwrap().key();
    assert!(store.create(&key, &owned, now).await.unwrap());
    let index: Vec<String> = target.keys(&format!("{prefix}o:*")).await;
    assert_eq!(index.len(), 1);
    index.into_iter().next().unwrap()
}

single_and_cluster!(a_login_saved_to_an_ended_session_leaves_the_owner_index_expiring_on: a_login_saved_to_an_ended_session_leaves_the_owner_index_expiring, a_login_saved_to_an_ended_session_leaves_the_owner_index_expiring_in_a_cluster);

async fn a_login_saved_to_an_ended_session_leaves_the_owner_index_expiring_on(target: Target) {
    let (store, prefix) = target.store().await;
    let mut conn = target.conn().await;
    let now = now();
    let index = owned_session_index(&store, target, &prefix, "alice", now).await;

    // A logout wins the race against a login of the same session.
    let k2 = SessionId::generate().unwrap().key();
    let r2 = record(now, Duration::hours(1), Some(Duration::days(1)));
    assert!(store.create(&k2, &r2, now).await.unwrap());
    store.delete(&k2).await.unwrap();
    let mut login = ChangeSet::default();
    login.owner = Some(Some("alice".into()));
    assert_eq!(store.save(&k2, &login, now).await.unwrap(), Saved::Gone);

    let members: Vec<String> = conn.zrange(&index, 0, -1).await.unwrap();
    assert!(
        !members.iter().any(|m| m.starts_with(&k2.to_hex())),
        "the ended session's entry is removed: {members:?}"
    );
    assert_ttl(conn.pttl(&index).await.unwrap(), Duration::days(1));
}

single_and_cluster!(pruning_the_last_entry_without_a_deadline_lets_the_owner_index_expire_on: pruning_the_last_entry_without_a_deadline_lets_the_owner_index_expire, pruning_the_last_entry_without_a_deadline_lets_the_owner_index_expire_in_a_cluster);

async fn pruning_the_last_entry_without_a_deadline_lets_the_owner_index_expire_on(target: Target) {
    let (store, prefix) = target.store().await;
    let mut conn = target.conn().await;
    let now = now();
    let index = owned_session_index(&store, target, &prefix, "carol", now).await;
    // An entry with no deadline, of a session long gone (as a crashed login leaves): the index
    // cannot expire while it is there.
    let long_gone = format!("{}:0", SessionId::generate().unwrap().key().to_hex());
    let _: () = conn.zadd(&index, &long_gone, "+inf").await.unwrap();
    let _: () = conn.persist(&index).await.unwrap();
    assert_eq!(store.list_owner("carol", now).await.unwrap().len(), 1);
    let left: usize = conn.zcard(&index).await.unwrap();
    assert_eq!(left, 1, "the long-gone entry is pruned");
    assert_ttl(conn.pttl(&index).await.unwrap(), Duration::days(1));
}

#[tokio::test]
async fn prefixes_that_would_change_the_cluster_slot_are_refused() {
    let store = single_store().await;
    let error = store.with_prefix("app{1}:").unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Config);
    let error = RedisStore::open("not a url").await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Config);
}

#[tokio::test]
async fn cluster_sessions_are_spread_over_all_masters() {
    let store = support_redis::cluster_store().await;
    assert!(store.is_cluster());
    let now = now();
    let mut keys = Vec::new();
    for _ in 0..30 {
        let key = SessionId::generate().unwrap().key();
        assert!(
            store
                .create(&key, &record(now, Duration::hours(1), None), now)
                .await
                .unwrap()
        );
        keys.push(key);
    }
    for node in &cluster().nodes {
        let count = node.cli(&["--scan", "--pattern", &format!("{}s:*", store.prefix())]);
        assert!(
            count.lines().count() > 0,
            "no session on the master at port {}",
            node.port
        );
    }
    for key in &keys {
        assert!(store.load(key, now).await.unwrap().is_some());
    }
}

/// The counter app over `store`, with `/set/{key}` for the concurrency test.
fn app(store: RedisStore) -> Router {
    Router::new()
        .route(
            "/",
            get(|s: Session| async move {
                let n = s.update("visits", |n: &mut u64| {
                    *n += 1;
                    *n
                })?;
                Ok::<_, SessionError>(n.to_string())
            }),
        )
        .route(
            "/set/{key}",
            get(|s: Session, Path(key): Path<String>| async move {
                s.insert(&key, true)?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            "/keys",
            get(|s: Session| async move { s.keys().len().to_string() }),
        )
        .layer(SessionLayer::builder(store).build().unwrap())
}

struct Reply {
    status: StatusCode,
    body: String,
    token: Option<String>,
    store_error: bool,
}

async fn send(app: &Router, path: &str, token: Option<&str>) -> Reply {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header(header::COOKIE, format!("id={token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let store_error = response
        .extensions()
        .get::<SessionError>()
        .is_some_and(|e| e.kind() == SessionErrorKind::Store);
    let token = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .and_then(|c| c.split_once('='))
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty());
    let body = String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes())
        .into_owned();
    Reply {
        status,
        body,
        token,
        store_error,
    }
}

async fn hundred_concurrent_keys(store: RedisStore) {
    let app = app(store);
    let first = send(&app, "/set/start", None).await;
    assert_eq!(first.status, StatusCode::OK);
    let token = Arc::new(first.token.unwrap());
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (app, token) = (app.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            send(&app, &format!("/set/k{i}"), Some(&token)).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let keys = send(&app, "/keys", Some(&token)).await;
    assert_eq!(
        keys.body, "101",
        "every concurrent request's key must persist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_of_one_session_all_keep_their_key() {
    hundred_concurrent_keys(single_store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_of_one_session_all_keep_their_key_in_a_cluster() {
    hundred_concurrent_keys(support_redis::cluster_store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_gives_error_responses_and_the_store_recovers_by_itself() {
    // Its own server: this test kills it.
    let mut server = RedisServer::start();
    let store = RedisStore::open(&server.url())
        .await
        .unwrap()
        .with_prefix(unique_prefix())
        .unwrap();
    let app = app(store);
    let first = send(&app, "/", None).await;
    assert_eq!(first.body, "1");
    let token = first.token.unwrap();
    assert_eq!(send(&app, "/", Some(&token)).await.body, "2");

    // Requests keep running while the server dies.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (app, token, stop) = (app.clone(), token.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = send(&app, "/", Some(&token)).await;
                statuses.push((reply.status, reply.store_error));
            }
            statuses
        }));
    }
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    server.kill();
    tokio::time::sleep(StdDuration::from_millis(500)).await;

    // While Redis is down: clear error responses, carrying the store error; no panic.
    for _ in 0..3 {
        assert_store_error(&send_in_time(&app, &token).await);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        // A panic in a request would surface here as a join error.
        let statuses = task.await.expect("a request panicked during the outage");
        assert!(
            statuses
                .iter()
                .all(|(s, e)| *s == StatusCode::OK
                    || (*s == StatusCode::INTERNAL_SERVER_ERROR && *e)),
            "only successes and store-error responses: {statuses:?}"
        );
    }

    // Redis comes back (empty: no persistence); the same app, with no restart, works again.
    server.restart();
    let deadline = std::time::Instant::now() + StdDuration::from_secs(15);
    recovers_with_a_fresh_session(&app, &token, deadline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_times_out_into_error_responses_and_never_mixes_up_replies() {
    // Its own server: this test stops it.
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).await.unwrap();
    let app = app(store);
    // Two sessions with different counts, so that a reply given to the wrong request shows.
    let a = send(&app, "/", None).await.token.unwrap();
    let b = send(&app, "/", None).await.token.unwrap();
    for _ in 0..4 {
        send(&app, "/", Some(&b)).await;
    }

    // Redis stops answering while requests of both sessions arrive: each ends in a store error
    // within the response timeout, with no cookie.
    server.freeze();
    let mut waiting = Vec::new();
    for token in [&a, &b, &a, &b] {
        let (app, token) = (app.clone(), token.clone());
        waiting.push(tokio::spawn(
            async move { send_in_time(&app, &token).await },
        ));
    }
    for reply in waiting {
        assert_store_error(&reply.await.unwrap());
    }

    // Redis answers again, first the commands it was sent while frozen; every request after that
    // gets its own session's reply.
    server.thaw();
    let deadline = std::time::Instant::now() + StdDuration::from_secs(15);
    let first = until_ok(&app, &a, deadline).await;
    assert_eq!(first.body, "2");
    let (mut count_a, mut count_b) = (2, 5);
    for _ in 0..10 {
        let (ra, rb) = tokio::join!(send(&app, "/", Some(&a)), send(&app, "/", Some(&b)));
        count_a += 1;
        count_b += 1;
        assert_eq!(
            (ra.body, rb.body),
            (count_a.to_string(), count_b.to_string())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_gives_error_responses_and_loses_nothing() {
    // Its own server, with the recommended policy: refuse writes when full.
    let server = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let store = RedisStore::open(&server.url()).await.unwrap();
    let app = app(store);
    let first = send(&app, "/", None).await;
    let token = first.token.unwrap();
    assert_eq!(send(&app, "/", Some(&token)).await.body, "2");

    // Fill it up: 2 MB of other data, then a memory limit below what is in use.
    let mut conn = raw(&server.url()).await;
    let filler = vec![b'x'; 64 * 1024];
    for n in 0..32 {
        conn.set::<_, _, ()>(format!("filler:{n}"), &filler[..])
            .await
            .unwrap();
    }
    let config = |value: &str| {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET").arg("maxmemory").arg(value);
        cmd
    };
    config("1mb").query_async::<()>(&mut conn).await.unwrap();
    let error = conn.set::<_, _, ()>("probe", 1).await.unwrap_err();
    assert!(error.to_string().contains("OOM"), "{error}");

    // Writes fail as store errors with no cookie; the session still reads as it was.
    assert_store_error(&send_in_time(&app, &token).await);
    assert_store_error(&send(&app, "/", None).await);
    let keys = send(&app, "/keys", Some(&token)).await;
    assert_eq!((keys.status, keys.body.as_str()), (StatusCode::OK, "1"));

    // Memory again: the session was neither emptied nor lost, and counts on.
    config("0").query_async::<()>(&mut conn).await.unwrap();
    assert_eq!(send(&app, "/", Some(&token)).await.body, "3");
}

/// Sends `/` with `token` until it succeeds, failing the test at `deadline`; the session was lost
/// with the server's memory, so a fresh one starts at 1 and counts on.
async fn recovers_with_a_fresh_session(app: &Router, token: &str, deadline: std::time::Instant) {
    let reply = until_ok(app, token, deadline).await;
    assert_eq!(reply.body, "1");
    let fresh = reply.token.expect("a new session cookie");
    assert_eq!(send(app, "/", Some(&fresh)).await.body, "2");
}

/// Sends `/` with `token` until the answer is a success, and returns it; every failure before must
/// be a store error, each in time, and the success must come before `deadline`.
async fn until_ok(app: &Router, token: &str, deadline: std::time::Instant) -> Reply {
    loop {
        let reply = send_in_time(app, token).await;
        if reply.status == StatusCode::OK {
            return reply;
        }
        assert_store_error(&reply);
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not recover in time"
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
}

/// Sends `/` with `token` and checks the answer came within bounds: an outage must fail requests,
/// not hang them.
async fn send_in_time(app: &Router, token: &str) -> Reply {
    let started = std::time::Instant::now();
    let reply = send(app, "/", Some(token)).await;
    assert!(
        started.elapsed() < StdDuration::from_secs(10),
        "a request took {:?} during an outage",
        started.elapsed()
    );
    reply
}

/// The answer to a request whose store failed: a 500 carrying the store error and no cookie,
/// never a fresh empty session.
fn assert_store_error(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        reply.store_error,
        "the store error is in the response extensions"
    );
    assert!(
        reply.token.is_none(),
        "no cookie is set when the store failed"
    );
}

fn cluster_ok(cluster: &RedisCluster) -> bool {
    cluster
        .nodes
        .iter()
        .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
}

/// The counter app over a store on `cluster` (with a prefix of its own), and the cookies of two
/// sessions counted to 2: one whose key lives on `cluster.nodes[0]`, one on another master.
async fn sessions_on_and_off_the_first_master(cluster: &RedisCluster) -> (Router, String, String) {
    let urls = cluster.urls();
    let store = RedisStore::open_cluster(urls.iter().map(String::as_str))
        .await
        .unwrap()
        .with_prefix(unique_prefix())
        .unwrap();
    let app = app(store);
    let dbsize = |node: &RedisServer| node.cli(&["dbsize"]).trim().parse::<u64>().unwrap();
    let (mut on_first, mut elsewhere) = (None, None);
    for _ in 0..200 {
        let before = dbsize(&cluster.nodes[0]);
        let token = send(&app, "/", None).await.token.unwrap();
        if dbsize(&cluster.nodes[0]) > before {
            on_first.get_or_insert(token);
        } else {
            elsewhere.get_or_insert(token);
        }
        if on_first.is_some() && elsewhere.is_some() {
            break;
        }
    }
    let (on_first, elsewhere) = (on_first.unwrap(), elsewhere.unwrap());
    assert_eq!(send(&app, "/", Some(&on_first)).await.body, "2");
    assert_eq!(send(&app, "/", Some(&elsewhere)).await.body, "2");
    (app, on_first, elsewhere)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_crash_gives_error_responses_and_the_store_recovers_by_itself() {
    // Its own cluster: this test crashes one of its masters.
    let mut cluster = RedisCluster::start();
    // One session whose key lives on the master about to crash, one on another master.
    let (app, on_crashed, elsewhere) = sessions_on_and_off_the_first_master(&cluster).await;

    let config = cluster.nodes[0].crash();
    // Its sessions fail with a store error and no cookie, never a fresh empty session; the other
    // master's sessions work until the cluster declares itself down, then fail the same way.
    assert_store_error(&send_in_time(&app, &on_crashed).await);
    let reply = send_in_time(&app, &elsewhere).await;
    assert!(
        reply.status == StatusCode::OK
            || (reply.status == StatusCode::INTERNAL_SERVER_ERROR && reply.store_error),
        "a success or a store error, got {}",
        reply.status
    );

    // The master comes back (with its slots, without its keys); the same app, with no restart,
    // works again.
    cluster.nodes[0].rejoin(&config);
    let deadline = std::time::Instant::now() + StdDuration::from_secs(60);
    while !cluster_ok(&cluster) {
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster did not recover"
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    recovers_with_a_fresh_session(&app, &on_crashed, deadline).await;
    // The other master kept its session throughout.
    let reply = send(&app, "/", Some(&elsewhere)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let visits: u64 = reply.body.parse().unwrap();
    assert!(
        visits >= 3,
        "the other master's session kept its count: {visits}"
    );
}

/// Whether every write `master` has taken has reached its replica.
fn replicated(master: &RedisServer) -> bool {
    let info = master.cli(&["info", "replication"]);
    let field = |prefix: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
    };
    let Some(offset) = field("master_repl_offset:") else {
        return false;
    };
    // slave0:ip=127.0.0.1,port=6380,state=online,offset=1234,lag=0
    field("slave0:").is_some_and(|replica| {
        replica.contains("state=online") && replica.contains(&format!("offset={offset},"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_failover_keeps_its_sessions_without_an_app_restart() {
    // Its own cluster, with a replica per master and a short node timeout: this test crashes a
    // master and waits for its replica to take over.
    let mut cluster = RedisCluster::start_with(1, 1000);
    assert_eq!(cluster.nodes[0].role(), "master");
    // One session on the master about to crash, one on another master, each counted to 2.
    let (app, on_crashed, elsewhere) = sessions_on_and_off_the_first_master(&cluster).await;
    // Replication is asynchronous: crash only once the replica has the session.
    let deadline = std::time::Instant::now() + StdDuration::from_secs(10);
    while !replicated(&cluster.nodes[0]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not catch up"
        );
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }

    cluster.nodes[0].crash();
    // Until the replica takes over, the session fails with a store error and no cookie; then the
    // same app, with no restart, finds the session on the new master with its count.
    let deadline = std::time::Instant::now() + StdDuration::from_secs(60);
    let reply = until_ok(&app, &on_crashed, deadline).await;
    assert_eq!(reply.body, "3", "the session survived the failover");
    assert!(reply.token.is_none(), "the same session, not a new one");
    assert_eq!(send(&app, "/", Some(&on_crashed)).await.body, "4");
    assert!(
        cluster.nodes[3..].iter().any(|n| n.role() == "master"),
        "a replica was promoted"
    );
    // The other master's session kept its count too.
    assert_eq!(send(&app, "/", Some(&elsewhere)).await.body, "3");
}

/// Sessions with more values than one script call is given arguments for (the scripts write in
/// chunks of 800) keep every value through create, save (with new metadata) and clear.
#[tokio::test]
async fn sessions_with_thousands_of_values_are_written_whole() {
    let store = single_store().await;
    let now = now();
    let key = SessionId::generate().unwrap().key();
    let mut created = record(now, Duration::hours(1), Some(Duration::days(1)));
    for n in 0..1500 {
        created.data.insert(format!("k{n}"), json!(n));
    }
    assert!(store.create(&key, &created, now).await.unwrap());
    assert_eq!(store.load(&key, now).await.unwrap(), Some(created.clone()));

    let mut changes = ChangeSet::default();
    changes.idle_deadline = Some(now + Duration::hours(2));
    changes.expiry = Some(Expiry::OnInactivity(Duration::hours(2)));
    for n in 0..1200 {
        changes.set.insert(format!("k{n}"), json!(n * 2));
    }
    changes.removed = (1200..1300).map(|n| format!("k{n}")).collect();
    assert_eq!(
        store.save(&key, &changes, now).await.unwrap(),
        Saved::Applied
    );
    let loaded = store.load(&key, now).await.unwrap().unwrap();
    assert_eq!(loaded.data.len(), 1401, "1500 + a - 100 removed");
    assert_eq!(loaded.data["k1199"], json!(2398));
    assert!(!loaded.data.contains_key("k1250"));
    assert_eq!(loaded.data["k1499"], json!(1499));
    assert_eq!(loaded.idle_deadline, now + Duration::hours(2));
    assert_eq!(loaded.expiry, Expiry::OnInactivity(Duration::hours(2)));
    assert_eq!(loaded.absolute_deadline, created.absolute_deadline);
    assert_eq!(loaded.created_at, created.created_at);

    let mut cleared = ChangeSet::default();
    cleared.cleared = true;
    for n in 0..900 {
        cleared.set.insert(format!("n{n}"), json!(n));
    }
    assert_eq!(
        store.save(&key, &cleared, now).await.unwrap(),
        Saved::Applied
    );
    let loaded = store.load(&key, now).await.unwrap().unwrap();
    assert_eq!(loaded.data, cleared.set);
    assert_eq!(loaded.idle_deadline, now + Duration::hours(2), "unchanged");
}

/// A key no session has.
fn fresh_key() -> SessionKey {
    SessionId::generate().unwrap().key()
}

/// A change set writing one value.
fn setting(name: &str, value: serde_json::Value) -> ChangeSet {
    let mut changes = ChangeSet::default();
    changes.set.insert(name.into(), value);
    changes
}

/// The fence a rename to `to` sets on the session it moves (the field `f`), running out at
/// `until`.
fn rename_fence(until: OffsetDateTime, to: &SessionKey) -> String {
    let ms = until.unix_timestamp() * 1000 + i64::from(until.millisecond());
    format!("{ms}:{}", to.to_hex())
}

single_and_cluster!(writes_during_a_rename_are_gone_while_reads_work_and_a_revocation_counts_it_once_on: writes_during_a_rename_are_gone_while_reads_work_and_a_revocation_counts_it_once, writes_during_a_rename_are_gone_while_reads_work_and_a_revocation_counts_it_once_in_a_cluster);

/// A session whose rename has not completed (its fence on the old key and its copy under the new
/// key, written here as the rename writes them): writes are refused, reads work, the owner's
/// listing shows it once, and a revocation deletes both and counts one session.
async fn writes_during_a_rename_are_gone_while_reads_work_and_a_revocation_counts_it_once_on(
    target: Target,
) {
    let (store, prefix) = target.store().await;
    let mut conn = target.conn().await;
    let now = now();
    let (from, to) = (fresh_key(), fresh_key());
    let mut stored = record(now, Duration::hours(1), Some(Duration::days(1)));
    stored.owner = Some("dora".into());
    assert!(store.create(&from, &stored, now).await.unwrap());
    let _: () = conn
        .hset(
            session_key_name(&prefix, &from),
            "f",
            rename_fence(now + Duration::seconds(5), &to),
        )
        .await
        .unwrap();
    let mut copy = stored.clone();
    copy.data.insert("copied".into(), json!(true));
    assert!(store.create(&to, &copy, now).await.unwrap());

    // Writers find the session gone, as they will once it has moved; nothing is written.
    assert_eq!(
        store
            .save(&from, &setting("x", json!(1)), now)
            .await
            .unwrap(),
        Saved::Gone
    );
    assert_eq!(
        store
            .touch(&from, now + Duration::hours(2), stored.expiry, now)
            .await
            .unwrap(),
        Saved::Gone
    );
    assert_eq!(
        store
            .rename(&from, &fresh_key(), &setting("y", json!(1)), now)
            .await
            .unwrap(),
        Renamed::Gone,
        "a second rename of a session being renamed"
    );
    // Readers still see it, unchanged.
    assert_eq!(store.load(&from, now).await.unwrap(), Some(stored.clone()));
    // Listed once, under the key it is at until the rename completes.
    let listed: Vec<SessionKey> = store
        .list_owner("dora", now)
        .await
        .unwrap()
        .iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(listed, vec![from]);
    // Revoked: the session and the rename's copy both go, counted as the one session they are.
    assert_eq!(store.delete_owner("dora").await.unwrap(), 1);
    assert_eq!(store.load(&from, now).await.unwrap(), None);
    assert_eq!(store.load(&to, now).await.unwrap(), None);
}

single_and_cluster!(an_abandoned_rename_fence_runs_out_on: an_abandoned_rename_fence_runs_out, an_abandoned_rename_fence_runs_out_in_a_cluster);

/// A rename that died after setting its fence (the process crashed) blocks the session's
/// writes only until the fence runs out; then the next write removes it, or a new rename
/// replaces it.
async fn an_abandoned_rename_fence_runs_out_on(target: Target) {
    let (store, prefix) = target.store().await;
    let mut conn = target.conn().await;
    let now = now();
    let later = now + Duration::seconds(6);
    let (written, renamed) = (fresh_key(), fresh_key());
    for key in [&written, &renamed] {
        let stored = record(now, Duration::hours(1), None);
        assert!(store.create(key, &stored, now).await.unwrap());
        let _: () = conn
            .hset(
                session_key_name(&prefix, key),
                "f",
                rename_fence(now + Duration::seconds(5), &fresh_key()),
            )
            .await
            .unwrap();
    }

    assert_eq!(
        store
            .save(&written, &setting("x", json!(1)), now)
            .await
            .unwrap(),
        Saved::Gone
    );
    assert_eq!(
        store
            .save(&written, &setting("x", json!(2)), later)
            .await
            .unwrap(),
        Saved::Applied
    );
    let fenced: bool = conn
        .hexists(session_key_name(&prefix, &written), "f")
        .await
        .unwrap();
    assert!(!fenced, "the write removed the stale fence");
    let loaded = store.load(&written, later).await.unwrap().unwrap();
    assert_eq!(loaded.data.get("x"), Some(&json!(2)));
    assert_eq!(
        store
            .touch(&written, later + Duration::hours(1), loaded.expiry, later)
            .await
            .unwrap(),
        Saved::Applied
    );

    let to = fresh_key();
    assert_eq!(
        store
            .rename(&renamed, &to, &setting("y", json!(1)), later)
            .await
            .unwrap(),
        Renamed::Applied
    );
    assert_eq!(store.load(&renamed, later).await.unwrap(), None);
    let moved = store.load(&to, later).await.unwrap().unwrap();
    assert_eq!(moved.data.get("y"), Some(&json!(1)));
    let fenced: bool = conn
        .hexists(session_key_name(&prefix, &to), "f")
        .await
        .unwrap();
    assert!(!fenced, "the moved record carries no fence");
}

/// A create sent twice (see `a_rename_finding_its_own_fence_goes_on`) reports what its first run
/// did; a different record under the key is still refused.
#[tokio::test]
async fn a_create_finding_its_own_record_reports_it_made() {
    let url = single_url();
    let (store, _prefix) = store_with_prefix(&url).await;
    let now = now();
    let key = fresh_key();
    let mut stored = record(now, Duration::hours(1), None);
    stored.data.insert("a".into(), json!(1));
    assert!(store.create(&key, &stored, now).await.unwrap());
    assert!(
        store.create(&key, &stored, now).await.unwrap(),
        "the same record"
    );
    let mut other = stored.clone();
    other.data.insert("b".into(), json!(2));
    assert!(
        !store.create(&key, &other, now).await.unwrap(),
        "more fields"
    );
    other.data.remove("a");
    other.data.remove("b");
    other.data.insert("a".into(), json!(2));
    assert!(
        !store.create(&key, &other, now).await.unwrap(),
        "another value"
    );
    assert_eq!(store.load(&key, now).await.unwrap(), Some(stored));
}

single_and_cluster!(a_rename_finding_its_own_fence_goes_on_on: a_rename_finding_its_own_fence_goes_on, a_rename_finding_its_own_fence_goes_on_in_a_cluster);

/// The first step of a rename sent twice (the cluster client sends a script again when the
/// connection dropped before its reply): the fence the first run set is this rename's own, and
/// the rename goes on.
async fn a_rename_finding_its_own_fence_goes_on_on(target: Target) {
    let (store, prefix) = target.store().await;
    let mut conn = target.conn().await;
    let now = now();
    // A new session, fenced as if a rename to `to` had made its first step.
    let mut fenced_for = async |to: &SessionKey| {
        let from = fresh_key();
        let stored = record(now, Duration::hours(1), None);
        assert!(store.create(&from, &stored, now).await.unwrap());
        let fence = rename_fence(now + Duration::seconds(5), to);
        let _: () = conn
            .hset(session_key_name(&prefix, &from), "f", fence)
            .await
            .unwrap();
        from
    };
    let to = fresh_key();
    let from = fenced_for(&to).await;
    let moving = setting("y", json!(1));
    let renamed = store.rename(&from, &to, &moving, now).await.unwrap();
    assert_eq!(renamed, Renamed::Applied);
    assert_eq!(store.load(&from, now).await.unwrap(), None);
    let moved = store.load(&to, now).await.unwrap().unwrap();
    assert_eq!(moved.data.get("y"), Some(&json!(1)));
    // Another rename's fence still holds it off.
    let from = fenced_for(&fresh_key()).await;
    let renamed = store
        .rename(&from, &fresh_key(), &moving, now)
        .await
        .unwrap();
    assert_eq!(renamed, Renamed::Gone);
}

single_and_cluster!(a_rename_that_fails_midway_leaves_the_session_under_its_old_key_on: a_rename_that_fails_midway_leaves_the_session_under_its_old_key, a_rename_that_fails_midway_leaves_the_session_under_its_old_key_in_a_cluster);

/// A rename that fails after fencing the session (the new key cannot be written, or the owner
/// index cannot) releases the fence and leaves the session under its old key, unchanged and
/// writable at once.
async fn a_rename_that_fails_midway_leaves_the_session_under_its_old_key_on(target: Target) {
    let (store, prefix) = target.store().await;
    let mut conn = target.conn().await;
    let now = now();
    let from = fresh_key();
    let mut stored = record(now, Duration::hours(1), Some(Duration::days(1)));
    stored.owner = Some("erin".into());
    assert!(store.create(&from, &stored, now).await.unwrap());
    let from_name = session_key_name(&prefix, &from);

    // The new key holds a value of another type: writing the copy fails.
    let to = fresh_key();
    let _: () = conn
        .set(session_key_name(&prefix, &to), "not a session")
        .await
        .unwrap();
    let error = store
        .rename(&from, &to, &setting("lost", json!(1)), now)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Backend);
    assert_eq!(store.load(&from, now).await.unwrap(), Some(stored.clone()));
    let fenced: bool = conn.hexists(&from_name, "f").await.unwrap();
    assert!(!fenced, "the fence is released");
    assert_eq!(
        store
            .save(&from, &setting("kept", json!(1)), now)
            .await
            .unwrap(),
        Saved::Applied
    );

    // The owner index cannot be written: the rename fails the same way.
    let index: Vec<String> = target.keys(&format!("{prefix}o:*")).await;
    assert_eq!(index.len(), 1);
    let _: () = conn.del(&index[0]).await.unwrap();
    let _: () = conn.set(&index[0], "not an index").await.unwrap();
    let mut login = setting("lost", json!(2));
    login.owner = Some(Some("erin".into()));
    assert!(
        store
            .rename(&from, &fresh_key(), &login, now)
            .await
            .is_err()
    );
    let kept = store.load(&from, now).await.unwrap().unwrap();
    assert_eq!(kept.data.get("kept"), Some(&json!(1)));
    assert!(!kept.data.contains_key("lost"));
    let fenced: bool = conn.hexists(&from_name, "f").await.unwrap();
    assert!(!fenced, "the fence is released");
    assert_eq!(
        store
            .save(&from, &setting("again", json!(1)), now)
            .await
            .unwrap(),
        Saved::Applied
    );
}

single_and_cluster!(
    a_done_rename_leaves_the_new_key_and_a_marker_that_runs_out_on:
        a_done_rename_leaves_the_new_key_and_a_marker_that_runs_out,
        a_done_rename_leaves_the_new_key_and_a_marker_that_runs_out_in_a_cluster
);

/// A done rename leaves, under the store's prefix on all servers together, the session under its
/// new key and the marker `<prefix>r:{<old key>}` (in the old key's cluster slot) holding the
/// rename's fence, for a minute at most; nothing under the old key, and no key holding either ID.
async fn a_done_rename_leaves_the_new_key_and_a_marker_that_runs_out_on(target: Target) {
    let (store, prefix) = target.store().await;
    let mut conn = target.conn().await;
    let now = now();
    let (old_id, new_id) = (
        SessionId::generate().unwrap(),
        SessionId::generate().unwrap(),
    );
    let (from, to) = (old_id.key(), new_id.key());
    let stored = record(now, Duration::hours(1), None);
    assert!(store.create(&from, &stored, now).await.unwrap());
    assert_eq!(
        store
            .rename(&from, &to, &setting("moved", json!(true)), now)
            .await
            .unwrap(),
        Renamed::Applied
    );

    let marker = format!("{prefix}r:{{{}}}", from.to_hex());
    let mut expected = vec![marker.clone(), session_key_name(&prefix, &to)];
    expected.sort();
    assert_eq!(target.keys(&format!("{prefix}*")).await, expected);
    let fence: String = conn.get(&marker).await.unwrap();
    assert_eq!(fence, rename_fence(now + Duration::seconds(5), &to));
    let pttl: i64 = conn.pttl(&marker).await.unwrap();
    assert!(
        (1..=60_000).contains(&pttl),
        "the marker must run out within a minute: PTTL {pttl} ms"
    );
    if target == Target::Cluster {
        let slot = |name: &str| {
            let answer = cluster().nodes[0].cli(&["cluster", "keyslot", name]);
            answer.trim().parse::<u16>().unwrap()
        };
        assert_eq!(slot(&marker), slot(&session_key_name(&prefix, &from)));
    }
    for id in [&old_id, &new_id] {
        target.assert_no_key(&format!("*{}*", id_hex(id))).await;
    }
}

/// The port of the cluster master that holds `key_name`'s slot, as `node` sees it.
fn master_port_of(node: &RedisServer, key_name: &str) -> u16 {
    let slot: u16 = node
        .cli(&["cluster", "keyslot", key_name])
        .trim()
        .parse()
        .unwrap();
    let holds_slot = |range: &&str| {
        let (low, high) = range.split_once('-').unwrap_or((range, range));
        matches!(
            (low.parse::<u16>(), high.parse::<u16>()),
            (Ok(low), Ok(high)) if (low..=high).contains(&slot)
        )
    };
    node.cli(&["cluster", "nodes"])
        .lines()
        .find_map(|line| {
            // <id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slots>...
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") {
                return None;
            }
            fields[8..].iter().any(holds_slot).then(|| {
                let address = fields[1].split('@').next().unwrap();
                address.rsplit(':').next().unwrap().parse().unwrap()
            })
        })
        .expect("a master holds every slot")
}

/// A store on `cluster` under `prefix` that gives up on a node after `timeout`, with no retry.
async fn cluster_store_with_timeout(
    cluster: &RedisCluster,
    prefix: &str,
    timeout: StdDuration,
) -> RedisStore {
    let client = redis::cluster::ClusterClient::builder(cluster.urls())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(0)
        .build()
        .unwrap();
    RedisStore::from_cluster_client(client)
        .await
        .unwrap()
        .with_prefix(prefix)
        .unwrap()
}

/// A rename in a cluster whose new key is on a master that stops answering: while the rename
/// waits, the session's writes are refused and its reads work; when the rename fails, the session
/// is still under its old key, and writable again at once. A rename that resumes after its fence
/// ran out and a write came fails too, and the write stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_rename_stalled_on_the_new_keys_master_fails_cleanly() {
    // Its own cluster: this test freezes one of its masters, for 3 s and more on a loaded
    // machine; a node timeout well past that, so that the others never mark it failed.
    let cluster = RedisCluster::start_with(0, 30_000);
    let prefix = unique_prefix();
    let (frozen, asked) = (&cluster.nodes[0], &cluster.nodes[1]);
    // Picked before the freeze, by asking another node.
    let on_frozen = |on: bool| loop {
        let key = fresh_key();
        if (master_port_of(asked, &session_key_name(&prefix, &key)) == frozen.port) == on {
            return key;
        }
    };
    let (from, first_to, second_to) = (on_frozen(false), on_frozen(true), on_frozen(true));
    let now = now();
    let stored = record(now, Duration::hours(1), None);
    let mut rotation = setting("moved", json!(true));
    rotation.idle_deadline = Some(now + Duration::hours(2));
    rotation.owner = Some(None);

    // The old key's master (not frozen), to see when a rename has fenced the session.
    let from_name = session_key_name(&prefix, &from);
    let from_url = format!("redis://127.0.0.1:{}/", master_port_of(asked, &from_name));
    let fenced = || async {
        let mut conn = raw(&from_url).await;
        let mut tries = 0;
        while !conn.hexists::<_, _, bool>(&from_name, "f").await.unwrap() {
            tries += 1;
            assert!(
                tries < 1000,
                "the rename did not fence the session within 5 s"
            );
            tokio::time::sleep(StdDuration::from_millis(5)).await;
        }
    };

    // Frozen past the response timeout: the rename fails. The save and load below must run
    // while it waits: 3 s leaves them room on a loaded machine.
    let quick = cluster_store_with_timeout(&cluster, &prefix, StdDuration::from_secs(3)).await;
    assert!(quick.create(&from, &stored, now).await.unwrap());
    frozen.freeze();
    let renaming = {
        let (store, rotation) = (quick.clone(), rotation.clone());
        tokio::spawn(async move { store.rename(&from, &first_to, &rotation, now).await })
    };
    fenced().await;
    assert_eq!(
        quick
            .save(&from, &setting("during", json!(1)), now)
            .await
            .unwrap(),
        Saved::Gone,
        "a write while the rename holds the session"
    );
    assert_eq!(quick.load(&from, now).await.unwrap(), Some(stored.clone()));
    let error = renaming.await.unwrap().unwrap_err();
    frozen.thaw();
    assert_eq!(error.kind(), StoreErrorKind::Backend);
    assert_eq!(quick.load(&from, now).await.unwrap(), Some(stored.clone()));
    assert_eq!(
        quick
            .save(&from, &setting("after", json!(1)), now)
            .await
            .unwrap(),
        Saved::Applied,
        "the fence was released"
    );

    // Frozen for a moment only, while a write comes after the fence ran out: the rename fails
    // when it resumes, and the write stands.
    let patient = cluster_store_with_timeout(&cluster, &prefix, StdDuration::from_secs(5)).await;
    frozen.freeze();
    let renaming = {
        let (store, rotation) = (patient.clone(), rotation.clone());
        tokio::spawn(async move { store.rename(&from, &second_to, &rotation, now).await })
    };
    fenced().await;
    let later = now + Duration::seconds(6);
    assert_eq!(
        patient
            .save(&from, &setting("late", json!(1)), later)
            .await
            .unwrap(),
        Saved::Applied,
        "a write once the fence ran out"
    );
    frozen.thaw();
    let error = renaming.await.unwrap().unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Backend);
    let kept = patient.load(&from, later).await.unwrap().unwrap();
    assert_eq!(kept.data.get("late"), Some(&json!(1)));
    assert!(!kept.data.contains_key("moved"));
    assert_eq!(patient.load(&second_to, later).await.unwrap(), None);
}

/// A TCP proxy to Redis on `upstream` that relays both ways until the client sends the `nth`
/// command holding `trigger`. Then, once: with `deliver`, that command goes through to Redis and the
/// client's connection is cut before the answer comes back (a connection that drops after
/// Redis ran a command); without, the connection is cut before the command goes through. Later
/// connections are relayed as usual. Returns the proxy's port.
async fn cutting_proxy(upstream: u16, trigger: Vec<u8>, nth: usize, deliver: bool) -> u16 {
    cutting_proxy_at(upstream, trigger, &[(nth, deliver)])
        .await
        .0
}

/// [`cutting_proxy`] cutting more than once: at each `(nth, deliver)` of `cuts`, counting the
/// commands holding `trigger` over all the connections the proxy relays (the client reconnects
/// after each cut). Returns the proxy's port and the count of commands holding `trigger` seen
/// so far.
async fn cutting_proxy_at(
    upstream: u16,
    trigger: Vec<u8>,
    cuts: &[(usize, bool)],
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let cuts = cuts.to_vec();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                .await
                .unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let cut = Arc::new(AtomicBool::new(false));
            let (hits, trigger, cut_up) = (hits.clone(), trigger.clone(), cut.clone());
            let cuts = cuts.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = client_read.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let chunk = &buf[..n];
                    let hit = chunk
                        .windows(trigger.len())
                        .any(|w| w == trigger.as_slice());
                    let cut_here = if hit {
                        let nth = hits.fetch_add(1, Ordering::SeqCst) + 1;
                        cuts.iter()
                            .find(|(at, _)| *at == nth)
                            .map(|&(_, deliver)| deliver)
                    } else {
                        None
                    };
                    if let Some(deliver) = cut_here {
                        // No answer reaches the client from here on.
                        cut_up.store(true, Ordering::SeqCst);
                        if deliver {
                            let _ = server_write.write_all(chunk).await;
                            // Time for Redis to run it before the connection goes.
                            tokio::time::sleep(StdDuration::from_millis(100)).await;
                        }
                        return; // drops both halves this task holds
                    }
                    if server_write.write_all(chunk).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0 || cut.load(Ordering::SeqCst) {
                        return;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// A rename whose last step Redis runs but whose answer is lost (the connection drops): the
/// rename asks whether it ran, finds that it did, and answers `Applied`, the session whole under
/// its new key. Before, it took the rename back, deleting the new record: the session was lost.
/// A last step that never reached Redis is taken back as before: the session stays under its
/// old key, writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_whose_last_answer_is_lost_keeps_the_session() {
    let server = RedisServer::start();
    let direct = RedisStore::open(&server.url()).await.unwrap();
    let now = now();
    let stored = record(now, Duration::hours(1), None);
    // Load the scripts into the server first, as a running app has: a cut `EVALSHA` must be one
    // that runs.
    let (a, b) = (fresh_key(), fresh_key());
    assert!(direct.create(&a, &stored, now).await.unwrap());
    let warm = direct.rename(&a, &b, &setting("warm", json!(1)), now).await;
    assert_eq!(warm.unwrap(), Renamed::Applied);

    for deliver in [true, false] {
        let (from, to) = (fresh_key(), fresh_key());
        assert!(direct.create(&from, &stored, now).await.unwrap());
        // The session's key goes in the first step (the fence) and the last: cut at the last.
        let trigger = format!("s:{{{}}}", from.to_hex()).into_bytes();
        let port = cutting_proxy(server.port, trigger, 2, deliver).await;
        let cut = RedisStore::open(&format!("redis://127.0.0.1:{port}/"))
            .await
            .unwrap();
        let renamed = cut
            .rename(&from, &to, &setting("moved", json!(true)), now)
            .await;
        if deliver {
            assert_eq!(renamed.unwrap(), Renamed::Applied, "the rename was done");
            let moved = direct
                .load(&to, now)
                .await
                .unwrap()
                .expect("the session, moved");
            assert_eq!(moved.data.get("moved"), Some(&json!(true)));
            assert_eq!(direct.load(&from, now).await.unwrap(), None);
        } else {
            assert!(renamed.is_err(), "{renamed:?}");
            assert_eq!(direct.load(&to, now).await.unwrap(), None, "taken back");
            assert_eq!(direct.load(&from, now).await.unwrap(), Some(stored.clone()));
            assert_eq!(
                direct
                    .save(&from, &setting("after", json!(1)), now)
                    .await
                    .unwrap(),
                Saved::Applied,
                "the fence was released"
            );
        }
    }
}

/// The step of a rename at which [`a_rotation_cut_at_any_step_then_a_server_error_never_logs_out`]
/// cuts the connection (see "Renaming" on `RedisStore`).
#[derive(Clone, Copy, Debug)]
enum RenameStep {
    /// Step 1, the fence set on the old key.
    Fence,
    /// Step 2, the copy written under the new key.
    Copy,
    /// Step 3, the commit on the old key, which leaves the marker.
    Commit,
    /// Step 3, then the question the rename asks when the commit went unanswered
    /// (`LUA_RENAME_SETTLE`): the rename cannot tell whether it was done, and the layer looks.
    CommitThenSettle,
}

/// A login through the layer (`cycle_id`, a value, `save`, and a 500 if the save fails) whose
/// rename loses its connection at each step in turn, Redis having run the step or not. Each case
/// ends in one of two consistent states, and which one is fixed: the session moved, with user
/// alice, its new cookie sent (with the 500 too, when the rename could not tell and the layer
/// found the move made) and the old ID naming nothing; or the session left under the old ID as it
/// was, no cookie sent, and nothing else of it in Redis. Never no cookie and no session under the
/// old ID (the user logged out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_cut_at_any_step_then_a_server_error_never_logs_out() {
    use RenameStep::{Commit, CommitThenSettle, Copy, Fence};
    use std::sync::atomic::Ordering;
    use tower_satchel::ManualClock;

    let server = RedisServer::start();
    let now = now();
    let mut conn = raw(&server.url()).await;
    // Load the scripts into the server first, as a running app has: a cut `EVALSHA` must be one
    // that runs.
    let warm = RedisStore::open(&server.url()).await.unwrap();
    let (a, b) = (fresh_key(), fresh_key());
    let stored = record(now, Duration::hours(1), None);
    assert!(warm.create(&a, &stored, now).await.unwrap());
    let warmed = warm.rename(&a, &b, &setting("warm", json!(1)), now).await;
    assert_eq!(warmed.unwrap(), Renamed::Applied);

    // (where, whether Redis gets each cut command, whether the session moves, the status, whether
    // the fence is left to run out). In this order: the first cases make the rename release its
    // fence and ask after its commit, loading those scripts into the server, so the cut question
    // of the last ones is an `EVALSHA` that runs.
    let cases: [(RenameStep, &[bool], bool, StatusCode, bool); 10] = [
        (
            Fence,
            &[true],
            false,
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
        ),
        (
            Fence,
            &[false],
            false,
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
        ),
        (
            Copy,
            &[true],
            false,
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
        ),
        (
            Copy,
            &[false],
            false,
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
        ),
        // The rename asks, finds the marker, and answers `Applied`: the save worked.
        (Commit, &[true], true, StatusCode::OK, false),
        (
            Commit,
            &[false],
            false,
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
        ),
        // The rename cannot tell: the layer's commit looks (`Session::settle_rotation`).
        (
            CommitThenSettle,
            &[true, true],
            true,
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
        ),
        (
            CommitThenSettle,
            &[true, false],
            true,
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
        ),
        (
            CommitThenSettle,
            &[false, true],
            false,
            StatusCode::INTERNAL_SERVER_ERROR,
            false,
        ),
        // Nothing released the fence: the old ID is read at once, written once it runs out.
        (
            CommitThenSettle,
            &[false, false],
            false,
            StatusCode::INTERNAL_SERVER_ERROR,
            true,
        ),
    ];
    for (step, delivers, moves, status, fence_left) in cases {
        let case = format!("{step:?}, Redis got the cut commands: {delivers:?}");
        let prefix = unique_prefix();
        let direct = RedisStore::open(&server.url())
            .await
            .unwrap()
            .with_prefix(&prefix)
            .unwrap();
        let old_id = SessionId::generate().unwrap();
        let from = old_id.key();
        assert!(direct.create(&from, &stored, now).await.unwrap());
        // Each trigger is held by its step's command first: the fence (`<until>:<new key>`, by
        // the layer's clock, stopped at `now`) by step 1 only, the value by the copy only, the
        // marker's name by the commit, then by the question that follows it.
        let trigger = match step {
            Fence => format!("{}:", now.unix_timestamp() * 1000 + 5_000),
            Copy => "d:user".to_owned(),
            Commit | CommitThenSettle => format!("{prefix}r:{{{}}}", from.to_hex()),
        };
        let cuts: Vec<(usize, bool)> = (1..).zip(delivers.iter().copied()).collect();
        let (port, seen) = cutting_proxy_at(server.port, trigger.into_bytes(), &cuts).await;
        let proxied = RedisStore::open(&format!("redis://127.0.0.1:{port}/"))
            .await
            .unwrap()
            .with_prefix(&prefix)
            .unwrap();
        let app = Router::new()
            .route(
                "/login",
                get(|s: Session| async move {
                    s.cycle_id();
                    s.insert("user", "alice").unwrap();
                    match s.save().await {
                        Ok(()) => StatusCode::OK,
                        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    }
                }),
            )
            .layer(
                SessionLayer::builder(proxied)
                    .clock(ManualClock::new(now))
                    .build()
                    .unwrap(),
            );
        let response = app
            .oneshot(
                Request::get("/login")
                    .header(header::COOKIE, format!("id={}", old_id.expose()))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        // Every cut made (later commands may hold the trigger too: the fence's release, the
        // commit's question).
        let hits = seen.load(Ordering::SeqCst);
        assert!(
            hits >= cuts.len(),
            "{case}: {hits} commands held the trigger"
        );
        let cookies: Vec<String> = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|c| c.to_str().unwrap().to_owned())
            .collect();
        let mut keys: Vec<String> = conn.keys(format!("{prefix}*")).await.unwrap();
        keys.sort();
        let old_session = direct.load(&from, now).await.unwrap();
        let moved = if let [cookie] = cookies.as_slice() {
            // Moved: the new ID opens the session with the login's value, the old one nothing.
            let (name, token) = cookie.split(';').next().unwrap().split_once('=').unwrap();
            assert_eq!(name, "id", "{case}: {cookie}");
            let new_id = SessionId::parse(token).expect("a new session ID");
            assert_ne!(new_id.expose(), old_id.expose(), "{case}");
            let to = new_id.key();
            let session = direct.load(&to, now).await.unwrap();
            assert!(session.is_some(), "{case}: the new cookie opens nothing");
            let session = session.unwrap();
            assert_eq!(session.data.get("user"), Some(&json!("alice")), "{case}");
            assert_eq!(session.data.get("a"), Some(&json!(1)), "{case}");
            assert_eq!(
                old_session, None,
                "{case}: the old cookie still opens the session"
            );
            let mut expected = vec![
                format!("{prefix}r:{{{}}}", from.to_hex()),
                session_key_name(&prefix, &to),
            ];
            expected.sort();
            assert_eq!(keys, expected, "{case}");
            true
        } else {
            // Kept: the old ID opens the session as it was, and nothing else of it is left.
            assert!(cookies.is_empty(), "{case}: {cookies:?}");
            assert_eq!(
                old_session,
                Some(stored.clone()),
                "{case}: no cookie, and the old one does not open the session as it was"
            );
            assert_eq!(keys, vec![session_key_name(&prefix, &from)], "{case}");
            let at = if fence_left {
                now + Duration::seconds(6)
            } else {
                now
            };
            assert_eq!(
                direct
                    .save(&from, &setting("after", json!(1)), at)
                    .await
                    .unwrap(),
                Saved::Applied,
                "{case}: the old session is writable"
            );
            false
        };
        assert_eq!(moved, moves, "{case}: moved");
        assert_eq!(response.status(), status, "{case}");
    }
}

/// The owner index is kept by the layer's clock, which may run behind the wall clock (a host
/// whose clock is late, or a test's): pruning it by the wall clock dropped the entries of live
/// sessions whose absolute deadline, by the layer's clock still ahead, had passed by the wall's,
/// and "log out everywhere" then missed them (SECURITY.md 12).
#[tokio::test]
async fn the_owner_index_is_pruned_by_the_layers_clock() {
    let store = single_store().await;
    let behind = now() - Duration::days(1);
    let live = fresh_key();
    let mut record = record(behind, Duration::hours(1), Some(Duration::hours(2)));
    record.owner = Some("alice".into());
    assert!(store.create(&live, &record, behind).await.unwrap());
    // A save that names the owner for a session that is gone prunes the index on its way out.
    let mut owned = ChangeSet::default();
    owned.owner = Some(Some("alice".into()));
    assert_eq!(
        store.save(&fresh_key(), &owned, behind).await.unwrap(),
        Saved::Gone
    );
    assert_eq!(store.delete_owner("alice").await.unwrap(), 1);
    assert_eq!(store.load(&live, behind).await.unwrap(), None);
}

/// A save that sets the owner of a session whose absolute deadline is far off (past the year
/// 5138, when its milliseconds reach 15 digits) is applied and answered so: the save script
/// gave the deadline back in exponent form (`2.53402300799e+14`), which the store refused
/// although Redis had written the change.
#[tokio::test]
async fn a_save_naming_the_owner_of_a_far_off_session_is_applied() {
    let store = single_store().await;
    let now = now();
    let key = fresh_key();
    let far = OffsetDateTime::new_utc(
        time::Date::from_calendar_date(9999, time::Month::December, 1).unwrap(),
        time::Time::MIDNIGHT,
    );
    let record = record(now, Duration::hours(1), Some(far - now));
    assert!(store.create(&key, &record, now).await.unwrap());
    let mut owned = setting("n", json!(1));
    owned.owner = Some(Some("alice".into()));
    assert_eq!(store.save(&key, &owned, now).await.unwrap(), Saved::Applied);
    let listed = store.list_owner("alice", now).await.unwrap();
    assert_eq!(listed.len(), 1);
}

single_and_cluster!(
    a_key_the_sweep_cannot_read_does_not_stop_it_on: a_key_the_sweep_cannot_read_does_not_stop_it,
    a_key_the_sweep_cannot_read_does_not_stop_it_in_a_cluster
);

/// A key under the store's prefix that is no session (not a hash: another program's, sharing the
/// prefix) makes the sweep's script fail on it. The sweep logs it and goes on, rather than stop
/// there on every run (the trait's rule: one record it cannot delete must not spare the others);
/// a sweep that removed nothing reports the failure.
async fn a_key_the_sweep_cannot_read_does_not_stop_it_on(target: Target) {
    use redis::AsyncCommands as _;
    let (store, prefix) = target.store().await;
    let mut conn = target.conn().await;
    let now = now();
    let stray = format!("{prefix}s:{{zz}}");
    conn.set::<_, _, ()>(&stray, "x").await.unwrap();
    let mut keys = Vec::new();
    for _ in 0..5 {
        let key = fresh_key();
        assert!(
            store
                .create(&key, &record(now, Duration::minutes(1), None), now)
                .await
                .unwrap()
        );
        keys.push(key);
    }
    let later = now + Duration::minutes(2);
    assert_eq!(store.delete_expired(later, 10).await.unwrap(), 5);
    for key in &keys {
        let name = session_key_name(&prefix, key);
        assert!(!conn.exists::<_, bool>(&name).await.unwrap(), "{name} left");
    }
    // Only the stray key is left: the failure is reported.
    let error = store.delete_expired(later, 10).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Backend);
    assert!(conn.exists::<_, bool>(&stray).await.unwrap());
}
