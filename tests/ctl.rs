//! `portico ctl` as operators run it: the built binary against a real
//! `portico up` (or `portico registry`) on loopback ports, its output read
//! as text and as JSON, its exit codes checked (docs/ctl.md).

mod support;

use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use support::*;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

/// Longest one `ctl` command may take (it makes a few loopback calls).
const CTL_TIMEOUT: Duration = Duration::from_secs(30);

/// `portico up` as a child process: registry, gateway and admin listener.
struct Up {
    child: ChildProcess,
    _dir: tempfile::TempDir,
    args: Vec<String>,
    registry: String,
    listen: String,
    admin: String,
}

impl Up {
    async fn start() -> Up {
        let (dir, data) = data_dir();
        let control = format!("127.0.0.1:{}", free_port());
        let listen = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let args: Vec<String> = [
            "up",
            "--control",
            &control,
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--data-dir",
            data.to_str().unwrap(),
        ]
        .map(str::to_string)
        .to_vec();
        let child = ChildProcess::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let registry = format!("http://{control}");
        wait_healthy(&registry).await;
        Up {
            child,
            _dir: dir,
            args,
            registry,
            listen,
            admin: format!("http://{admin}"),
        }
    }

    /// `kill -9`, then the same command again (same ports, same data).
    async fn restart(&mut self) {
        self.child.kill9();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.child = ChildProcess::spawn(&args);
        wait_healthy(&self.registry).await;
    }

    /// Registers `service/id` at `port` through the API.
    async fn register(&self, service: &str, id: &str, port: u16) {
        let r = put_json(
            &format!("{}/v1/services/{service}/instances/{id}", self.registry),
            json!({"address": "127.0.0.1", "port": port, "ttl": "60s", "zone": "z1", "tags": ["blue"]}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }

    async fn route_names(&self) -> Vec<String> {
        let list = get(&format!("{}/v1/routes", self.registry)).await.json();
        list["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    }

    async fn ctl(&self, args: &[&str]) -> Ran {
        ctl(&self.registry, args, None).await
    }
}

/// A finished `ctl` run.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(self) -> Ran {
        assert_eq!(self.code, 0, "ctl failed: {self:?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

fn ctl_command(registry: &str, args: &[&str], token: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
    cmd.arg("ctl")
        .args(args)
        .env("PORTICO_REGISTRY", registry)
        .env_remove("PORTICO_TOKEN")
        .stdin(Stdio::null());
    if let Some(t) = token {
        cmd.env("PORTICO_TOKEN", t);
    }
    cmd
}

async fn ctl(registry: &str, args: &[&str], token: Option<&str>) -> Ran {
    let run = ctl_command(registry, args, token).output();
    let out: Output = tokio::time::timeout(CTL_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("ctl {args:?} did not finish"))
        .expect("run portico ctl");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether a line of `text` starts with these words (columns are padded
/// to their widest cell, so spacing varies).
fn has_row(text: &str, words: &[&str]) -> bool {
    text.lines().any(|l| {
        l.split_whitespace()
            .take(words.len())
            .eq(words.iter().copied())
    })
}

fn route_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_instances_as_tables_and_json() {
    let up = Up::start().await;
    up.register("web", "web-1", 8081).await;
    up.register("web", "web-2", 8082).await;

    let services = up.ctl(&["services"]).await.ok();
    let line = services
        .stdout
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        ["web", "2", "0", "0", "0"]
    );
    assert!(!services.stdout.contains('\x1b'), "colour in piped output");
    let json = up.ctl(&["-o", "json", "services"]).await.ok().json();
    assert_eq!(json["services"][0]["name"], "web");

    let instances = up.ctl(&["instances", "web"]).await.ok();
    assert!(instances.stdout.starts_with("ID "), "{}", instances.stdout);
    let row = instances
        .stdout
        .lines()
        .find(|l| l.starts_with("web-2"))
        .unwrap();
    for cell in ["127.0.0.1:8082", "passing", "z1", "100", "blue", "ttl 1m ("] {
        assert!(row.contains(cell), "{cell:?} missing from {row:?}");
    }
    assert!(row.contains("s left)"), "the lease's time left: {row:?}");
    let json = up
        .ctl(&["instances", "web", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(json["instances"].as_array().unwrap().len(), 2);

    // A refused argument: exit 1 (the API refused), the field named on stderr.
    let bad = up.ctl(&["instances", "Not_A_Name"]).await;
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("service"), "{bad:?}");
    assert!(bad.stdout.is_empty(), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_dry_run_then_apply_change_and_prune() {
    let up = Up::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = route_file(
        &dir,
        "[[route]]\nname = \"a\"\npath_prefix = \"/a\"\nservice = \"web\"\n\n\
         [[route]]\nname = \"b\"\npath = \"/b\"\nupstreams = [\"127.0.0.1:9\"]\n",
    );

    let dry = up.ctl(&["apply", "-f", &file, "--dry-run"]).await.ok();
    assert!(has_row(&dry.stdout, &["+", "added", "a"]), "{}", dry.stdout);
    assert!(has_row(&dry.stdout, &["+", "added", "b"]), "{}", dry.stdout);
    assert!(dry.stdout.contains("nothing written"), "{}", dry.stdout);
    assert!(up.route_names().await.is_empty(), "a dry run wrote");

    up.ctl(&["apply", "-f", &file]).await.ok();
    assert_eq!(up.route_names().await, ["a", "b"]);
    let again = up.ctl(&["apply", "-f", &file]).await.ok();
    assert!(again.stdout.starts_with("no changes"), "{}", again.stdout);

    // `route get`: the route as a route-file table, or the API's JSON.
    let toml = up.ctl(&["route", "get", "a"]).await.ok().stdout;
    assert!(
        toml.contains("[[route]]") && toml.contains("name = \"a\""),
        "{toml}"
    );
    assert_eq!(
        up.ctl(&["route", "get", "a", "-o", "json"])
            .await
            .ok()
            .json()["service"],
        "web"
    );
    let routes = up.ctl(&["routes"]).await.ok().stdout;
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("a ") && l.contains("service web")),
        "{routes}"
    );

    // a changes, b leaves the file, c arrives: b is kept until --prune.
    let file = route_file(
        &dir,
        "[[route]]\nname = \"a\"\npath_prefix = \"/a\"\nservice = \"api\"\nstrip_prefix = true\n\n\
         [[route]]\nname = \"c\"\npath = \"/c\"\nservice = \"web\"\n",
    );
    let changed = up.ctl(&["apply", "-f", &file]).await.ok();
    let line = changed
        .stdout
        .lines()
        .find(|l| l.contains("~ changed"))
        .unwrap();
    assert!(line.contains("service, strip_prefix"), "{line}");
    assert!(
        has_row(&changed.stdout, &["=", "kept", "b"]),
        "{}",
        changed.stdout
    );
    assert_eq!(up.route_names().await, ["a", "b", "c"]);
    let a = get(&format!("{}/v1/routes/a", up.registry)).await.json();
    assert_eq!(a["service"], "api");

    let pruned = up
        .ctl(&["apply", "-f", &file, "--prune", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(pruned["removed"], json!(["b"]));
    assert_eq!(up.route_names().await, ["a", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_exits_2_naming_the_field_and_writes_nothing() {
    let up = Up::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The first route is fine; the second is not: neither is written.
    let file = route_file(
        &dir,
        "[[route]]\nname = \"good\"\npath_prefix = \"/g\"\nservice = \"web\"\n\n\
         [[route]]\nname = \"bad\"\npath_prefix = \"nope\"\nservice = \"web\"\n",
    );
    let ran = up.ctl(&["apply", "-f", &file]).await;
    assert_eq!(ran.code, 2, "{ran:?}");
    for part in [file.as_str(), "route[1]", "\"bad\"", "path_prefix"] {
        assert!(
            ran.stderr.contains(part),
            "{part:?} not named: {}",
            ran.stderr
        );
    }
    assert!(up.route_names().await.is_empty(), "a bad file wrote");

    // An unknown key, named with its route.
    let file = route_file(
        &dir,
        "[[route]]\nname = \"x\"\npathprefix = \"/x\"\nservice = \"web\"\n",
    );
    let ran = up.ctl(&["apply", "-f", &file]).await;
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains("pathprefix") && ran.stderr.contains("route[0]"),
        "{}",
        ran.stderr
    );

    // A route taking the match of one the registry keeps: refused before
    // anything is written, the other route named.
    put_json(
        &format!("{}/v1/routes/old", up.registry),
        json!({"path": "/same", "service": "web"}),
    )
    .await;
    let file = route_file(
        &dir,
        "[[route]]\nname = \"fresh\"\npath_prefix = \"/f\"\nservice = \"web\"\n\n\
         [[route]]\nname = \"new\"\npath = \"/same\"\nservice = \"web\"\n",
    );
    let ran = up.ctl(&["apply", "-f", &file]).await;
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains("\"old\"") && ran.stderr.contains("route[1]"),
        "{}",
        ran.stderr
    );
    assert_eq!(up.route_names().await, ["old"]);
    // With --prune the old route goes first, and the file applies.
    up.ctl(&["apply", "-f", &file, "--prune"]).await.ok();
    assert_eq!(up.route_names().await, ["fresh", "new"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_deregister_change_the_registry_and_missing_is_exit_3() {
    let up = Up::start().await;
    up.register("web", "web-1", 8081).await;
    let instance = format!("{}/v1/services/web/instances", up.registry);

    up.ctl(&["drain", "web", "web-1"]).await.ok();
    assert_eq!(
        get(&instance).await.json()["instances"][0]["status"],
        "draining"
    );
    up.ctl(&["deregister", "web", "web-1"]).await.ok();
    assert!(
        get(&instance).await.json()["instances"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let gone = up.ctl(&["deregister", "web", "web-1"]).await;
    assert_eq!(gone.code, 3, "{gone:?}");
    assert!(gone.stderr.contains("web/web-1"), "{gone:?}");
    let gone = up.ctl(&["drain", "web", "web-1"]).await;
    assert_eq!(gone.code, 3, "{gone:?}");
    let gone = up.ctl(&["route", "get", "nothing"]).await;
    assert_eq!(gone.code, 3, "{gone:?}");
    // A usage error (clap's): exit 2.
    assert_eq!(up.ctl(&["drain", "web"]).await.code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_registrations_across_a_registry_restart_and_ctrl_c_ends_it() {
    let up = Up::start().await;
    let mut child = ctl_command(&up.registry, &["watch"], None)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut reader = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let sink = lines.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let has = |needle: &'static str| {
        let lines = lines.clone();
        move || {
            let found = lines.lock().unwrap().iter().any(|l| l.contains(needle));
            async move { found }
        }
    };
    eventually("the watch's snapshot line", has("snapshot at revision")).await;
    up.register("web", "w-9", 8089).await;
    eventually(
        "the registration's line",
        has("registered web/w-9 127.0.0.1:8089 passing"),
    )
    .await;
    let line = lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("w-9"))
        .cloned()
        .unwrap();
    // `HH:MM:SS registered ...`
    assert_eq!(line.as_bytes()[2], b':', "{line}");

    // The registry restarts: the watch reconnects by itself and resumes.
    let mut up = up;
    up.restart().await;
    up.register("web", "w-10", 8090).await;
    eventually(
        "a registration after the restart",
        has("registered web/w-10"),
    )
    .await;
    assert_eq!(
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("registered web/w-9"))
            .count(),
        1,
        "the resumed stream repeated what was printed"
    );

    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("watch did not end on SIGINT")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_asks_a_real_gateway() {
    let up = Up::start().await;
    let echo = TestEcho::start("e1").await;
    up.register("web", "e1", echo.addr.port()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = route_file(
        &dir,
        "[[route]]\nname = \"web\"\npath_prefix = \"/web\"\nservice = \"web\"\n",
    );
    up.ctl(&["apply", "-f", &file]).await.ok();

    let args = [
        "explain",
        "--gateway",
        &up.admin,
        "GET",
        "http://x.test/web/a?q=1",
        "-H",
        "x-a: 1",
    ];
    let verdict = format!("proxied to {}", echo.addr);
    eventually("the gateway to route /web to the echo", || {
        let args = args.map(str::to_string);
        let (registry, verdict) = (up.registry.clone(), verdict.clone());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ctl(&registry, &args, None).await.stdout.contains(&verdict)
        }
    })
    .await;
    let text = up.ctl(&args).await.ok().stdout;
    assert!(text.starts_with("verdict: proxied to"), "{text}");
    assert!(text.contains("route:   web"), "{text}");
    let mut json_args = args.to_vec();
    json_args.extend(["-o", "json"]);
    let json = up.ctl(&json_args).await.ok().json();
    assert_eq!(json["route"]["name"], "web");
    assert_eq!(json["request"]["host"], "x.test");
    assert!(
        json["request"]["headers"][0]
            .as_str()
            .unwrap()
            .starts_with("x-a"),
        "{json}"
    );

    let none = up
        .ctl(&["explain", "--gateway", &up.admin, "GET", "/elsewhere"])
        .await
        .ok();
    assert!(none.stdout.contains("404 no_route"), "{}", none.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_protected_registry_needs_portico_token() {
    let (_dir, data) = data_dir();
    let control = format!("127.0.0.1:{}", free_port());
    let _registry = ChildProcess::spawn(&[
        "registry",
        "--control",
        &control,
        "--data-dir",
        data.to_str().unwrap(),
        "--token",
        "admin:ctl-test-secret-1",
    ]);
    let url = format!("http://{control}");
    wait_healthy(&url).await;

    let refused = ctl(&url, &["services"], None).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("401"), "{refused:?}");
    assert!(refused.stderr.contains("PORTICO_TOKEN"), "{refused:?}");
    let wrong = ctl(&url, &["services"], Some("not-the-secret")).await;
    assert_eq!(wrong.code, 1, "{wrong:?}");
    let ok = ctl(&url, &["services", "-o", "json"], Some("ctl-test-secret-1"))
        .await
        .ok();
    assert!(ok.json()["services"].is_array());
    // `watch` refuses at once rather than retrying in silence.
    let watch = ctl(&url, &["watch"], None).await;
    assert_eq!(watch.code, 1, "{watch:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_lists_the_running_gateway() {
    let up = Up::start().await;
    eventually("the gateway to register itself", || {
        let (registry, listen) = (up.registry.clone(), up.listen.clone());
        async move {
            ctl(&registry, &["gateways"], None)
                .await
                .stdout
                .lines()
                .any(|l| l.contains(&listen))
        }
    })
    .await;
    let table = up.ctl(&["gateways"]).await.ok().stdout;
    assert!(table.starts_with("ID "), "{table}");
    for column in ["VERSION", "APPLIED", "LAG"] {
        assert!(table.lines().next().unwrap().contains(column), "{table}");
    }
    let json = up.ctl(&["gateways", "-o", "json"]).await.ok().json();
    assert_eq!(json["gateways"][0]["addresses"][0], up.listen);
    assert_eq!(json["gateways"][0]["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_is_exit_1() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let ran = ctl(&url, &["routes"], None).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("unreachable"), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_registry_with_its_ca() {
    let ca = support::tls::TestCa::new();
    let files = ca.write("registry", &["localhost"]);
    let (_dir, data) = data_dir();
    let port = free_port();
    let _registry = ChildProcess::spawn(&[
        "registry",
        "--control",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        data.to_str().unwrap(),
        "--control-tls-cert",
        files.cert.to_str().unwrap(),
        "--control-tls-key",
        files.key.to_str().unwrap(),
    ]);
    let url = format!("https://localhost:{port}");
    let ca_path = ca.path.to_str().unwrap().to_string();
    eventually("ctl to list services over HTTPS", || {
        let (url, ca_path) = (url.clone(), ca_path.clone());
        async move { ctl(&url, &["--ca", &ca_path, "services"], None).await.code == 0 }
    })
    .await;
    // Without the CA the certificate is not trusted: a network error.
    let refused = ctl(&url, &["services"], None).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("certificate"), "{refused:?}");
    // A CA file that does not load is a usage error naming the flag.
    let missing = ctl(&url, &["--ca", "/nonexistent/ca.pem", "services"], None).await;
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(missing.stderr.contains("--ca"), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_get_prints_a_file_that_applies_as_no_change() {
    let up = Up::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = route_file(
        &dir,
        r#"
[[route]]
name = "api"
path_prefix = "/api"
service = "api"
methods = ["GET"]
headers = [{ name = "x-canary", exact = "1" }]

[route.retry]
attempts = 3
on = ["502", "503"]

[[route.filters]]
type = "rate_limit"
key = "client_ip"
rate = 100

[[route.filters]]
type = "request_headers"
set = { "x-env" = "prod" }
"#,
    );
    up.ctl(&["apply", "-f", &file]).await.ok();
    let printed = up.ctl(&["route", "get", "api"]).await.ok().stdout;
    let back = dir.path().join("back.toml");
    std::fs::write(&back, &printed).unwrap();
    let again = up.ctl(&["apply", "-f", back.to_str().unwrap()]).await.ok();
    assert!(
        again.stdout.starts_with("no changes"),
        "{printed}\n{}",
        again.stdout
    );
}
