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

/// One key as etcd's range answers it.
#[derive(Debug, Clone)]
pub struct RawKv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Writes to the key since it was created (1 after the first).
    pub version: i64,
    pub mod_revision: i64,
}

/// An etcd cluster of real `etcd` processes on 127.0.0.1.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    http: Client<HttpConnector, Full<Bytes>>,
    /// `--quota-backend-bytes` of every member.
    quota: u64,
    /// A TLS client listener beside the cleartext one (one member only).
    tls: Option<EtcdTls>,
}

/// An etcd member's TLS client listener (`--cert-file --key-file
/// --trusted-ca-file --client-cert-auth`): an `https://` client URL on its own
/// port, beside the cleartext one the harness itself uses to watch the
/// member (so the harness needs no certificate, and the TLS port is the
/// only one the registry under test is given).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub port: u16,
}

impl EtcdCluster {
    /// Starts `n` members (`m0..m{n-1}`) and waits until every one answers
    /// and they agree on a leader.
    pub async fn start(n: usize) -> EtcdCluster {
        Self::start_with_quota(n, 256 << 20).await
    }

    /// [`EtcdCluster::start`] with a backend quota of `quota` bytes: etcd
    /// raises its NOSPACE alarm (and refuses writes) beyond it.
    pub async fn start_with_quota(n: usize, quota: u64) -> EtcdCluster {
        Self::launch(n, quota, None).await
    }

    async fn launch(n: usize, quota: u64, tls: Option<(&Path, &Path, &Path)>) -> EtcdCluster {
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
        // Two ports per member and the TLS one, all distinct (free_port may
        // hand one out twice).
        let mut ports = Vec::with_capacity(2 * n + 1);
        while ports.len() < 2 * n + 1 {
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
            quota,
            tls: tls.map(|(cert, key, ca)| EtcdTls {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                ca: ca.to_path_buf(),
                port: ports[2 * n],
            }),
        };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        cluster.wait_healthy("the cluster to start").await;
        cluster
    }

    /// One member that also serves `https://127.0.0.1:{port}` with the
    /// certificate and key given and requires a client certificate
    /// chaining to its CA there.
    pub async fn start_tls(cert: &Path, key: &Path, ca: &Path) -> EtcdCluster {
        Self::launch(1, 256 << 20, Some((cert, key, ca))).await
    }

    /// The member's `https://` client URL (after [`EtcdCluster::start_tls`]).
    pub fn tls_endpoint(&self) -> String {
        let tls = self.tls.as_ref().expect("started with start_tls");
        format!("https://127.0.0.1:{}", tls.port)
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
        let mut client_urls = m.client_url();
        if let Some(tls) = &self.tls {
            client_urls.push_str(&format!(",https://127.0.0.1:{}", tls.port));
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.data_dir())
            .arg("--listen-client-urls")
            .arg(client_urls)
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
            .args(["--quota-backend-bytes", &self.quota.to_string()])
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

    /// Every key under `prefix` with its value, version and mod revision,
    /// read (linearizably) through any running member.
    pub async fn range(&self, prefix: &[u8]) -> Vec<RawKv> {
        let mut end = prefix.to_vec();
        *end.last_mut().expect("a non-empty prefix") += 1;
        let body = serde_json::json!({ "key": b64(prefix), "range_end": b64(&end) }).to_string();
        let v = self
            .retry("a range", |i| self.post(i, "/v3/kv/range", &body))
            .await;
        v["kvs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|kv| RawKv {
                key: unb64(kv["key"].as_str().unwrap_or_default()).unwrap(),
                value: unb64(kv["value"].as_str().unwrap_or_default()).unwrap(),
                version: json_i64(&kv["version"]),
                mod_revision: json_i64(&kv["mod_revision"]),
            })
            .collect()
    }

    /// Requests etcd's own gRPC servers received, summed over the running
    /// members, by method (`Range`, `Txn`, `LeaseKeepAlive`, ...), from each
    /// member's Prometheus metrics. A stream counts each message.
    pub async fn grpc_messages(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for i in self.running() {
            let url = format!("{}/metrics", self.members[i].client_url());
            let reply = send(&self.http, Method::GET, &url, &[], Bytes::new())
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            let text = String::from_utf8_lossy(&reply.body);
            for line in text.lines() {
                let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
                    continue;
                };
                let method = rest
                    .split("grpc_method=\"")
                    .nth(1)
                    .and_then(|m| m.split('"').next())
                    .unwrap_or_default()
                    .to_string();
                let n: f64 = line
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0.0);
                *out.entry(method).or_insert(0) += n as u64;
            }
        }
        out
    }

    /// The alarms raised in the cluster (`NOSPACE`, `CORRUPT`), as etcd names them.
    pub async fn alarms(&self) -> Vec<String> {
        let body = r#"{"action":"GET"}"#;
        let v = self
            .retry("the alarm list", |i| {
                self.post(i, "/v3/maintenance/alarm", body)
            })
            .await;
        v["alarms"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|a| a["alarm"].as_str().unwrap_or("NONE").to_string())
            .collect()
    }

    /// Deletes every key under `prefix`, compacts, defragments every member
    /// and disarms every alarm: what an operator does after NOSPACE.
    pub async fn free_space(&self, prefix: &[u8]) {
        let mut end = prefix.to_vec();
        *end.last_mut().expect("a non-empty prefix") += 1;
        let body = serde_json::json!({ "key": b64(prefix), "range_end": b64(&end) }).to_string();
        self.retry("a delete", |i| self.post(i, "/v3/kv/deleterange", &body))
            .await;
        let now = self.current_revision().await;
        let _ = self.compact(now).await;
        for i in self.running() {
            self.post(i, "/v3/maintenance/defragment", "{}")
                .await
                .unwrap_or_else(|e| panic!("defragment m{i}: {e}"));
        }
        for i in self.running() {
            let id = self.members[i].id.clone().unwrap_or_default();
            let body = format!(r#"{{"action":"DEACTIVATE","memberID":"{id}","alarm":"NOSPACE"}}"#);
            self.post(i, "/v3/maintenance/alarm", &body)
                .await
                .unwrap_or_else(|e| panic!("disarm m{i}: {e}"));
        }
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

/// A TCP proxy on 127.0.0.1 in front of one etcd member whose answers can
/// be held back: requests still reach the member (a write is applied), but
/// nothing it answers reaches the client any more. That is what a client
/// sees when a member commits a write and then stops answering: the
/// request times out although it took effect.
pub struct HoldingProxy {
    /// `http://127.0.0.1:PORT`, to give a client instead of the member's URL.
    pub url: String,
    held: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldingProxy {
    /// Starts forwarding to `target` (`http://127.0.0.1:PORT`).
    pub async fn start(target: &str) -> HoldingProxy {
        Self::start_with(target, None).await
    }

    /// Like [`HoldingProxy::start`], and holds by itself from the first
    /// request whose bytes contain `trigger` (e.g. a key: gRPC sends it as
    /// is): that request reaches the member, its answer does not.
    pub async fn holding_from(target: &str, trigger: &[u8]) -> HoldingProxy {
        Self::start_with(target, Some(trigger.to_vec())).await
    }

    async fn start_with(target: &str, trigger: Option<Vec<u8>>) -> HoldingProxy {
        let target = target
            .strip_prefix("http://")
            .expect("an http:// member URL")
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (held, watch) = tokio::sync::watch::channel(false);
        let holder = held.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let trigger = trigger.clone().map(|t| (t, holder.clone()));
                conns.spawn(forward(client, server, watch.clone(), trigger));
                while conns.try_join_next().is_some() {}
            }
        });
        HoldingProxy { url, held, task }
    }

    /// From now on nothing the member answers is passed on.
    pub fn hold(&self) {
        let _ = self.held.send(true);
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways; answers stop at the first chunk read after `held`,
/// which a request chunk containing `trigger`'s bytes sets before it is
/// passed on.
async fn forward(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    mut held: tokio::sync::watch::Receiver<bool>,
    trigger: Option<(Vec<u8>, tokio::sync::watch::Sender<bool>)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if let Some((bytes, holder)) = &trigger
                && buf[..n].windows(bytes.len()).any(|w| w == bytes.as_slice())
            {
                let _ = holder.send(true);
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let answers = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if *held.borrow_and_update() {
                // Held for good: keep the connection open and silent.
                let _ = held.wait_for(|h| !*h).await;
                return;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(requests, answers);
}

/// `portico registry --store etcd:...` as a child process: the real binary,
/// so a test can `kill -9` it, or stop and continue it (SIGSTOP / SIGCONT).
pub struct RegistryProcess {
    pub url: String,
    child: super::ChildProcess,
}

impl RegistryProcess {
    /// Starts a replica over `endpoints` with fast sweeps and the given
    /// etcd session TTL, and waits until it answers `/readyz` 200.
    pub async fn start(endpoints: &[String], session_ttl: &str) -> RegistryProcess {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let store = format!("etcd:{}", endpoints.join(","));
        let control = format!("127.0.0.1:{port}");
        let child = super::ChildProcess::spawn(&[
            "registry",
            "--control",
            &control,
            "--store",
            &store,
            "--etcd-session-ttl",
            session_ttl,
            "--sweep-interval",
            "100ms",
            "--critical-grace",
            "60s",
        ]);
        let r = RegistryProcess { url, child };
        let readyz = format!("{}/readyz", r.url);
        let h = http();
        super::eventually(&format!("{readyz} to answer 200"), || {
            let (h, readyz) = (h.clone(), readyz.clone());
            async move {
                send(&h, Method::GET, &readyz, &[], Bytes::new())
                    .await
                    .is_ok_and(|r| r.status == StatusCode::OK)
            }
        })
        .await;
        r
    }

    pub fn pid(&self) -> u32 {
        self.child.child.id()
    }

    /// SIGKILL: nothing is flushed, nothing is handed over.
    pub fn kill9(&mut self) {
        self.child.kill9();
    }

    /// SIGTERM, then waits (within the tests' deadline) for the process to
    /// exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let deadline = std::time::Instant::now() + super::DEADLINE;
        loop {
            if let Some(status) = self.child.child.try_wait().expect("wait for the replica") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the replica did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGSTOP: the process stops where it is, sockets open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RegistryProcess::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {}", self.pid());
    }
}

/// What a [`Fleet`]'s heartbeats were answered.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Members registered (each once).
    pub registered: AtomicU64,
    pub ok: AtomicU64,
    /// 404: the registry no longer knows the instance (it expired).
    pub not_found: AtomicU64,
    /// Any other status (503 during a fault, ...).
    pub refused: AtomicU64,
    /// No answer: connection refused, reset, or the per-call timeout.
    pub failed: AtomicU64,
    /// The longest a member's turn came after its slot (ms): when the
    /// clients themselves fall a lease behind, expiries prove nothing.
    pub max_lag_ms: AtomicU64,
}

impl FleetStats {
    pub fn registered(&self) -> u64 {
        self.registered.load(Ordering::Relaxed)
    }
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
    pub fn not_found(&self) -> u64 {
        self.not_found.load(Ordering::Relaxed)
    }
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    pub fn max_lag(&self) -> Duration {
        Duration::from_millis(self.max_lag_ms.load(Ordering::Relaxed))
    }
}

/// One instance of a [`Fleet`].
#[derive(Debug, Clone)]
pub struct FleetMember {
    pub service: String,
    pub id: String,
    /// Index of the replica it registers with and heartbeats first.
    pub home: usize,
    /// How long it waits after a failed heartbeat before it tries the next
    /// replica (the SDK: at once).
    pub failover_after: Duration,
}

/// Instances heartbeating like the SDK: each registers with its home
/// replica at its first turn, then renews every `period`, sticking to the
/// replica that last answered and moving to the next one after an error, a
/// 5xx or the per-call timeout. Registering at the first turn, not all up
/// front, keeps the first leases from lapsing before their first renewal
/// on a slow machine. Bounded: `workers` tasks, until dropped or stopped.
pub struct Fleet {
    pub stats: std::sync::Arc<FleetStats>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

/// Registers every member with its home replica (`ttl`), 32 at a time.
pub async fn register_fleet(replicas: &[String], members: &[FleetMember], ttl: &str) {
    let h = http();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in members.chunks(members.len().div_ceil(32).max(1)) {
        let (h, chunk, replicas) = (h.clone(), chunk.to_vec(), replicas.to_vec());
        let ttl = ttl.to_string();
        tasks.spawn(async move {
            for m in chunk {
                let url = format!(
                    "{}/v1/services/{}/instances/{}",
                    replicas[m.home], m.service, m.id
                );
                let body = serde_json::json!({"address": "127.0.0.1", "port": 9, "ttl": ttl});
                let reply = send(
                    &h,
                    Method::PUT,
                    &url,
                    &[("content-type", "application/json")],
                    Bytes::from(body.to_string()),
                )
                .await
                .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
                assert_eq!(reply.status, StatusCode::OK, "PUT {url}: {:?}", reply.body);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

impl Fleet {
    /// Starts registering (lease `ttl`) and renewing `members` over
    /// `replicas`, each every `period`.
    pub fn start(
        replicas: &[String],
        members: &[FleetMember],
        ttl: &str,
        period: Duration,
        workers: usize,
        call_timeout: Duration,
    ) -> Fleet {
        let stats = std::sync::Arc::new(FleetStats::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let per = members.len().div_ceil(workers.max(1)).max(1);
        for chunk in members.chunks(per) {
            let worker = Worker {
                h: http(),
                replicas: replicas.to_vec(),
                at: chunk.iter().map(|m| m.home).collect(),
                quiet_until: vec![tokio::time::Instant::now(); chunk.len()],
                registered: vec![false; chunk.len()],
                ttl: ttl.to_string(),
                members: chunk.to_vec(),
                stats: stats.clone(),
                call_timeout,
            };
            tasks.spawn(worker.run(period, stopped.clone()));
        }
        Fleet { stats, stop, tasks }
    }

    /// Stops every heartbeat and waits for the workers.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

struct Worker {
    h: Client<HttpConnector, Full<Bytes>>,
    replicas: Vec<String>,
    members: Vec<FleetMember>,
    /// The replica each member uses now.
    at: Vec<usize>,
    /// A slow member stays silent until then after a failed heartbeat.
    quiet_until: Vec<tokio::time::Instant>,
    registered: Vec<bool>,
    ttl: String,
    stats: std::sync::Arc<FleetStats>,
    call_timeout: Duration,
}

/// The status one call of a member got: `None` when it got none (an
/// error, or not in time).
type Answer = Option<StatusCode>;

impl Worker {
    /// Each member's turn comes every `period`; calls overlap, so a replica
    /// that holds calls until they time out (a SIGSTOP) delays no other
    /// member's turn, as with independent SDK clients.
    async fn run(mut self, period: Duration, mut stopped: tokio::sync::watch::Receiver<bool>) {
        // Spread the members over the period, starting at a random offset.
        let gap = period / self.members.len().max(1) as u32;
        let mut next = tokio::time::Instant::now() + period.mul_f64(fastrand_unit());
        let mut calls: tokio::task::JoinSet<(usize, bool, Answer)> = tokio::task::JoinSet::new();
        let mut busy = vec![false; self.members.len()];
        let mut i = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    let lag = tokio::time::Instant::now().saturating_duration_since(next);
                    self.stats
                        .max_lag_ms
                        .fetch_max(lag.as_millis() as u64, Ordering::Relaxed);
                    next += gap;
                    if !busy[i] && tokio::time::Instant::now() >= self.quiet_until[i] {
                        busy[i] = true;
                        calls.spawn(self.call(i));
                    }
                    i = (i + 1) % self.members.len();
                }
                Some(done) = calls.join_next(), if !calls.is_empty() => {
                    let (j, registering, answer) = done.expect("a heartbeat call never panics");
                    busy[j] = false;
                    self.answered(j, registering, answer);
                }
                _ = stopped.changed() => return,
            }
        }
    }

    /// Member `i`'s call (a registration until one succeeded, then a
    /// heartbeat), bounded by the per-call timeout.
    fn call(&self, i: usize) -> impl std::future::Future<Output = (usize, bool, Answer)> + use<> {
        let m = &self.members[i];
        let base = format!(
            "{}/v1/services/{}/instances/{}",
            self.replicas[self.at[i]], m.service, m.id
        );
        let registering = !self.registered[i];
        let body = serde_json::json!({"address": "127.0.0.1", "port": 9, "ttl": self.ttl});
        let (h, timeout) = (self.h.clone(), self.call_timeout);
        async move {
            let call = async {
                if registering {
                    let json = [("content-type", "application/json")];
                    send(&h, Method::PUT, &base, &json, Bytes::from(body.to_string())).await
                } else {
                    let heartbeat = format!("{base}/heartbeat");
                    send(&h, Method::PUT, &heartbeat, &[], Bytes::new()).await
                }
            };
            let answer = match tokio::time::timeout(timeout, call).await {
                Ok(Ok(r)) => Some(r.status),
                Ok(Err(_)) | Err(_) => None,
            };
            (i, registering, answer)
        }
    }

    /// Counts member `i`'s answer; moves it to the next replica after an
    /// error, a 5xx or a timeout (after its `failover_after` of silence).
    fn answered(&mut self, i: usize, registering: bool, status: Answer) {
        if registering && status == Some(StatusCode::OK) {
            self.registered[i] = true;
            self.stats.registered.fetch_add(1, Ordering::Relaxed);
        }
        let counter = match status {
            Some(StatusCode::OK) => &self.stats.ok,
            Some(StatusCode::NOT_FOUND) => &self.stats.not_found,
            Some(_) => &self.stats.refused,
            None => &self.stats.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let answered = status.is_some_and(|s| s.is_success() || s == StatusCode::NOT_FOUND);
        if !answered {
            self.at[i] = (self.at[i] + 1) % self.replicas.len();
            self.quiet_until[i] = tokio::time::Instant::now() + self.members[i].failover_after;
        }
    }
}

/// A uniform number in [0, 1) without a dependency: the clock's low bits.
fn fastrand_unit() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    f64::from(nanos % 1000) / 1000.0
}
