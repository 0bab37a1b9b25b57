//! A real etcd cluster on loopback for the etcd-backed store tests: `n`
//! members (`/usr/bin/etcd`, Debian's `etcd-server` 3.4), each with its own
//! temp dir, client and peer ports. Members are driven and observed through
//! etcd's HTTP JSON gateway (`/v3/...`, 64-bit numbers as JSON strings, keys
//! and values base64). Every wait polls with a deadline; Drop kills every
//! member, and prints each member's log path and tail if the test is
//! panicking (so a failed wait shows why etcd did not come up).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use super::{DEADLINE, free_port, http, send};

/// The etcd binary: `$ETCD_BIN` if set, else `etcd` on `PATH`.
fn etcd_bin() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_string())
}

/// How long one gateway call may take before a poll counts it as failed
/// (a member without a leader holds writes until its own request timeout).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// One member: its identity and ports never change, across restarts too.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Holds `data/` (etcd's data dir) and `etcd.log`.
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// etcd's member id (decimal, as the gateway writes it), learned from
    /// the member's own status.
    id: Option<String>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }
}

/// What one member's `/v3/maintenance/status` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// This member's id (decimal string).
    pub member_id: String,
    /// The leader's id as this member sees it; None while it knows none.
    pub leader: Option<String>,
    /// The member's local store revision.
    pub revision: i64,
    pub raft_term: u64,
}

/// An etcd cluster of real `etcd` processes on 127.0.0.1.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl EtcdCluster {
    /// Starts `n` members (`m0..m{n-1}`) and waits until every one answers
    /// and they agree on a leader.
    pub async fn start(n: usize) -> EtcdCluster {
        assert!(n > 0, "an etcd cluster needs at least one member");
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let token = format!(
            "portico-test-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        // Two ports per member, all distinct (free_port may hand one out twice).
        let mut ports = Vec::with_capacity(2 * n);
        while ports.len() < 2 * n {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                dir: tempfile::tempdir().unwrap(),
                child: None,
                id: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            token,
            http: http(),
        };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        cluster.wait_healthy("the cluster to start").await;
        cluster
    }

    /// Launches member `i` (its ports, name and data dir are fixed).
    fn spawn(&mut self, i: usize, state: &str) {
        let m = &self.members[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(m.log_path())
            .expect("open etcd log");
        let mut cmd = Command::new(etcd_bin());
        // Flags only: no ETCD_* from the environment (or /etc/default/etcd).
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        if let Some(arch) = unsupported_arch() {
            cmd.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.data_dir())
            .arg("--listen-client-urls")
            .arg(m.client_url())
            .arg("--advertise-client-urls")
            .arg(m.client_url())
            .arg("--listen-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .args(["--heartbeat-interval", "100"])
            .args(["--election-timeout", "1000"])
            .args(["--snapshot-count", "10000"])
            .args(["--quota-backend-bytes", &(256u64 << 20).to_string()])
            .arg("--enable-v2=false")
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone etcd log"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "spawn {}: {e} (install Debian's etcd-server, or set ETCD_BIN)",
                etcd_bin()
            )
        });
        self.members[i].child = Some(child);
    }

    /// Client URLs of the members currently running.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::client_url)
            .collect()
    }

    /// Client URLs of every member, stopped ones included (index = member).
    pub fn all_endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Process ids (None for a stopped member), index = member.
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.members
            .iter()
            .map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// Where member `i` logs (stdout and stderr, across restarts).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.members[i].log_path()
    }

    /// Index of the current leader: polls until every running member
    /// answers and they all name the same running member as leader.
    pub async fn leader(&mut self) -> usize {
        self.wait_healthy("a leader").await
    }

    /// SIGKILL member `i` and reap it (no-op if it is not running).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            child.wait().expect("reap etcd");
        }
    }

    /// Starts member `i` again (same data dir, name and ports) and waits
    /// until it, and every other running member, agree on a running leader.
    pub async fn restart(&mut self, i: usize) {
        assert!(!self.is_running(i), "m{i} is already running");
        self.spawn(i, "existing");
        self.wait_healthy(&format!("m{i} to rejoin")).await;
    }

    /// Member `i`'s own status, if it answers.
    pub async fn status(&self, i: usize) -> Result<MemberStatus, String> {
        let v = self.post(i, "/v3/maintenance/status", "{}").await?;
        let member_id = v["header"]["member_id"]
            .as_str()
            .ok_or_else(|| format!("no header.member_id in {v}"))?
            .to_string();
        let leader = v["leader"]
            .as_str()
            .filter(|l| !l.is_empty() && *l != "0")
            .map(str::to_string);
        Ok(MemberStatus {
            member_id,
            leader,
            revision: json_i64(&v["header"]["revision"]),
            raft_term: json_i64(&v["header"]["raft_term"]) as u64,
        })
    }

    /// The cluster's current revision (a linearizable range through any
    /// running member, retried until one answers).
    pub async fn current_revision(&self) -> i64 {
        // Key "\0", limit 1: only the header matters.
        let body = r#"{"key":"AA==","limit":1}"#;
        let v = self
            .retry("the current revision", |i| {
                self.post(i, "/v3/kv/range", body)
            })
            .await;
        json_i64(&v["header"]["revision"])
    }

    /// Compacts the key space up to `revision` (physically) through any
    /// running member. Err if etcd refuses (e.g. already compacted, or a
    /// revision from the future).
    pub async fn compact(&self, revision: i64) -> Result<(), String> {
        let body = serde_json::json!({ "revision": revision, "physical": true }).to_string();
        let mut last = String::from("no member is running");
        for i in self.running() {
            match self.post(i, "/v3/kv/compaction", &body).await {
                Ok(_) => return Ok(()),
                Err(e) if e.starts_with("HTTP") => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Writes `key` = `value` through member `i`; the revision of the write.
    pub async fn put_on(&self, i: usize, key: &[u8], value: &[u8]) -> Result<i64, String> {
        let body = serde_json::json!({ "key": b64(key), "value": b64(value) }).to_string();
        let v = self.post(i, "/v3/kv/put", &body).await?;
        Ok(json_i64(&v["header"]["revision"]))
    }

    /// Reads `key` through member `i` (linearizable).
    pub async fn get_on(&self, i: usize, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let body = serde_json::json!({ "key": b64(key) }).to_string();
        let v = self.post(i, "/v3/kv/range", &body).await?;
        match v["kvs"].as_array().and_then(|kvs| kvs.first()) {
            None => Ok(None),
            Some(kv) => unb64(kv["value"].as_str().unwrap_or_default()).map(Some),
        }
    }

    /// Writes through any running member, retrying (e.g. during an
    /// election) until one accepts; the revision of the write.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> i64 {
        self.retry("a put", |i| self.put_on(i, key, value)).await
    }

    /// Indices of the running members.
    fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.is_running(i))
            .collect()
    }

    /// POSTs `body` to member `i`'s gateway: the JSON answer of a 200,
    /// else Err (an HTTP error starts with "HTTP").
    async fn post(&self, i: usize, path: &str, body: &str) -> Result<serde_json::Value, String> {
        let url = format!("{}{path}", self.members[i].client_url());
        let reply = tokio::time::timeout(
            CALL_TIMEOUT,
            send(
                &self.http,
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                Bytes::from(body.to_string()),
            ),
        )
        .await
        .map_err(|_| format!("POST {url}: timed out"))??;
        if reply.status != StatusCode::OK {
            return Err(format!(
                "HTTP {} from POST {url}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ));
        }
        serde_json::from_slice(&reply.body).map_err(|e| format!("POST {url}: not JSON: {e}"))
    }

    /// Tries `call` on each running member in turn until one succeeds,
    /// for at most `DEADLINE`.
    async fn retry<T, F, Fut>(&self, what: &str, mut call: F) -> T
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let mut last = String::from("no member is running");
            for i in self.running() {
                match call(i).await {
                    Ok(v) => return v,
                    Err(e) => last = e,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out after {DEADLINE:?} waiting for {what}; last error: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One look at the cluster: Ok(leader index) when every running member
    /// answers and all name the same running member as leader.
    async fn probe(&mut self) -> Result<usize, String> {
        let running = self.running();
        let mut statuses = Vec::with_capacity(running.len());
        for &i in &running {
            let s = self.status(i).await.map_err(|e| format!("m{i}: {e}"))?;
            self.members[i].id = Some(s.member_id.clone());
            statuses.push(s);
        }
        let leader = statuses[0]
            .leader
            .clone()
            .ok_or_else(|| format!("m{} knows no leader", running[0]))?;
        if let Some((i, s)) = running
            .iter()
            .zip(&statuses)
            .find(|(_, s)| s.leader.as_ref() != Some(&leader))
        {
            return Err(format!(
                "members disagree on the leader: m{} says {leader}, m{i} says {:?}",
                running[0], s.leader
            ));
        }
        running
            .iter()
            .copied()
            .find(|&i| self.members[i].id.as_ref() == Some(&leader))
            .ok_or_else(|| format!("leader {leader} is not a running member"))
    }

    /// Polls `probe` until it succeeds; panics (with log tails) after `DEADLINE`.
    async fn wait_healthy(&mut self, what: &str) -> usize {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let last = match self.probe().await {
                Ok(leader) => return leader,
                Err(e) => e,
            };
            if let Some((i, status)) = self.exited() {
                panic!("etcd m{i} exited ({status}) while waiting for {what}; last: {last}");
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out after {DEADLINE:?} waiting for {what}; last: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A member that was started and has since exited on its own.
    fn exited(&mut self) -> Option<(usize, std::process::ExitStatus)> {
        self.members.iter_mut().enumerate().find_map(|(i, m)| {
            let status = m.child.as_mut()?.try_wait().ok()??;
            Some((i, status))
        })
    }

    /// Prints each member's log path and last lines to stderr.
    pub fn dump_logs(&self) {
        for m in &self.members {
            let path = m.log_path();
            eprintln!("---- etcd {} log ({}), last lines:", m.name, path.display());
            eprintln!("{}", tail(&path, 25));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// The last `n` lines of a file (empty if unreadable).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// etcd 3.4 refuses to start on architectures other than amd64, arm64,
/// ppc64le and s390x unless `ETCD_UNSUPPORTED_ARCH` names the (Go) arch.
fn unsupported_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" | "aarch64" | "powerpc64" | "s390x" => None,
        "x86" => Some("386"),
        "arm" => Some("arm"),
        "riscv64" => Some("riscv64"),
        "mips64" => Some("mips64le"),
        "loongarch64" => Some("loong64"),
        other => Some(other),
    }
}

/// A gateway int64 (a JSON string; a number is accepted too; absent = 0).
fn json_i64(v: &serde_json::Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
        .unwrap_or(0)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (the gateway's encoding of bytes fields).
pub fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional).
pub fn unb64(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = B64
            .iter()
            .position(|&x| x == c)
            .ok_or_else(|| format!("not base64: {text:?}"))?;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
