//! Throwaway `redis-server` processes for the Redis store's tests: one server or a 3-master cluster
//! (optionally with replicas), on free ports, with no persistence (`--save "" --appendonly no`).
//!
//! Each server runs under a small shell watchdog that kills it (and removes its folder) as soon as
//! the test process is gone, so servers kept in a `static` for the whole test binary do not outlive
//! it even though statics are never dropped. A [`RedisServer`] that is dropped kills its server at
//! once.
//!
//! `$REDIS_URL`, when set, names an existing Redis for the single-server cases (each store gets its
//! own key prefix); the fault test and the cluster always start their own servers.
#![allow(dead_code, clippy::unwrap_used, clippy::panic, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tower_satchel::RedisStore;

const WATCHDOG: &str = r#"
redis-server "$@" &
R=$!
echo "$R"
while kill -0 "$TEST_PID" 2>/dev/null && kill -0 "$R" 2>/dev/null; do sleep 0.3; done
kill -9 "$R" 2>/dev/null
wait "$R" 2>/dev/null
rm -rf "$SERVER_DIR"
"#;

/// Fails the test with a clear message when a needed binary is missing (never a silent skip).
fn require(binary: &str) {
    let found = Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{binary}` is needed by the Redis store tests and was not found on PATH \
         (Debian/Ubuntu: apt-get install redis-server; it provides redis-server and redis-cli)"
    );
}

/// The cluster nodes get their bus port with `--cluster-port`, which needs Redis 7.
fn require_cluster_port_support() {
    require("redis-server");
    let out = Command::new("redis-server")
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let major: u32 = text
        .split("v=")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 7,
        "the Redis Cluster tests need redis-server 7 or newer (for --cluster-port); found: {text}"
    );
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller retries if it is taken meanwhile).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    redis_pid: u32,
    watchdog: Child,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// A standalone server on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A standalone server on a free port, with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        for _ in 0..10 {
            if let Some(server) = Self::try_start(free_port(), extra, None) {
                return server;
            }
        }
        panic!("could not start redis-server on a free port after 10 attempts");
    }

    /// A cluster-enabled server on a free port, with its bus on another free port. It counts
    /// another node as failed after `node_timeout_ms` without an answer.
    pub fn start_cluster_node(node_timeout_ms: u32) -> Self {
        let timeout = node_timeout_ms.to_string();
        for _ in 0..10 {
            let bus = free_port().to_string();
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                &timeout,
            ];
            if let Some(server) = Self::try_start(free_port(), &extra, None) {
                return server;
            }
        }
        panic!("could not start a cluster redis-server after 10 attempts");
    }

    /// Starts a server on `port`; `seed` is a file (name, contents) put in its folder first.
    fn try_start(port: u16, extra: &[&str], seed: Option<(&str, &[u8])>) -> Option<Self> {
        require("redis-server");
        let dir = std::env::temp_dir().join(format!(
            "satchel-redis-{}-{port}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some((name, contents)) = seed {
            std::fs::write(dir.join(name), contents).unwrap();
        }
        let port_arg = port.to_string();
        let dir_arg = dir.to_string_lossy().into_owned();
        let log = dir.join("redis.log").to_string_lossy().into_owned();
        let mut args: Vec<&str> = vec![
            "--port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            &dir_arg,
            "--logfile",
            &log,
        ];
        args.extend_from_slice(extra);
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .args(&args)
            .env("TEST_PID", std::process::id().to_string())
            .env("SERVER_DIR", &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh is needed to run redis-server under a watchdog");
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let redis_pid: u32 = line.trim().parse().unwrap();
        let server = Self {
            port,
            redis_pid,
            watchdog,
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(port) {
                // The one answering may be another test's server, which took the port between
                // `free_port` and this start (ours then exits): use it only if it is ours.
                return (server_pid(port) == Some(server.redis_pid)).then_some(server);
            }
            if !server.is_running() {
                // Most likely the port was taken meanwhile: the caller tries another.
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn is_running(&self) -> bool {
        Command::new("kill")
            .arg("-0")
            .arg(self.redis_pid.to_string())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Kills the server abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.redis_pid.to_string())
            .stderr(Stdio::null())
            .status();
        let _ = self.watchdog.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while ping(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is answered, as with a
    /// Redis stuck in a slow command or swapping.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server run again (SIGCONT); it then answers what it was sent meanwhile.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.redis_pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} failed");
    }

    /// Starts a fresh server on the same port (its data is gone: no persistence).
    pub fn restart(&mut self) {
        self.restart_with(None);
    }

    /// Kills a cluster node abruptly, as a crash would, and returns its cluster configuration
    /// (`nodes.conf`: its node ID and slots) for [`RedisServer::rejoin`].
    pub fn crash(&mut self) -> Vec<u8> {
        let config =
            std::fs::read(self.dir.join("nodes.conf")).expect("a cluster node's nodes.conf");
        self.kill();
        config
    }

    /// Starts a crashed cluster node again on the same ports with its old configuration: it
    /// rejoins the cluster with its slots, holding no keys (no persistence).
    pub fn rejoin(&mut self, config: &[u8]) {
        self.restart_with(Some(("nodes.conf", config)));
    }

    fn restart_with(&mut self, seed: Option<(&str, &[u8])>) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(new) = Self::try_start(self.port, &extra, seed) {
                let old = std::mem::replace(self, new);
                drop(old);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "could not restart redis-server on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `master` or `slave`, as `ROLE` answers.
    pub fn role(&self) -> String {
        self.cli(&["role"]).lines().next().unwrap_or("").to_owned()
    }

    /// Runs `redis-cli -p <port> args...` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        require("redis-cli");
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.redis_pid.to_string())
            .stderr(Stdio::null())
            .status();
        // The watchdog notices, reaps the server and removes the folder.
        let _ = self.watchdog.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// PING over plain TCP.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// The process ID of the server listening on `port` (`INFO server`).
fn server_pid(port: u16) -> Option<u32> {
    let stream = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(200),
    )
    .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    (&stream).write_all(b"INFO server\r\n").ok()?;
    let mut reader = BufReader::new(&stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    let len: usize = header.trim().strip_prefix('$')?.parse().ok()?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8(body)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()
}

/// A Redis Cluster of 3 masters, each with `replicas` replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// 3 masters, no replicas.
    pub fn start() -> Self {
        Self::start_with(0, 5000)
    }

    /// 3 masters with `replicas` replicas each; nodes count another as failed after
    /// `node_timeout_ms`. `redis-cli --cluster create` makes the first three nodes the masters.
    pub fn start_with(replicas: usize, node_timeout_ms: u32) -> Self {
        require("redis-cli");
        require_cluster_port_support();
        let count = 3 * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| RedisServer::start_cluster_node(node_timeout_ms))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let known = format!("cluster_known_nodes:{count}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = nodes.iter().all(|n| {
                let info = n.cli(&["cluster", "info"]);
                info.contains("cluster_state:ok")
                    && info.contains(&known)
                    && (n.role() == "master"
                        || n.cli(&["info", "replication"])
                            .contains("master_link_status:up"))
            });
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A key prefix no other store uses, of this run or another on the same server (a process ID
/// alone repeats across containers).
pub fn unique_prefix() -> String {
    let random = tower_satchel::SessionId::generate().unwrap().key().to_hex();
    format!(
        "satchel-test:{}-{}-{}:",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        &random[..8]
    )
}

enum Shared {
    External(String),
    Own(RedisServer),
}

static SINGLE: OnceLock<Shared> = OnceLock::new();
static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();

/// The URL of the Redis shared by this test binary: `$REDIS_URL`, or a server started once.
pub fn single_url() -> String {
    match SINGLE.get_or_init(|| match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Shared::External(url),
        _ => Shared::Own(RedisServer::start()),
    }) {
        Shared::External(url) => url.clone(),
        Shared::Own(server) => server.url(),
    }
}

/// The cluster shared by this test binary, started once.
pub fn cluster() -> &'static RedisCluster {
    CLUSTER.get_or_init(RedisCluster::start)
}

/// A fresh, empty store on the shared Redis (its own prefix).
pub async fn single_store() -> RedisStore {
    RedisStore::open(&single_url())
        .await
        .unwrap()
        .with_prefix(unique_prefix())
        .unwrap()
}

/// A fresh, empty store on the shared cluster (its own prefix).
pub async fn cluster_store() -> RedisStore {
    let urls = cluster().urls();
    RedisStore::open_cluster(urls.iter().map(String::as_str))
        .await
        .unwrap()
        .with_prefix(unique_prefix())
        .unwrap()
}
