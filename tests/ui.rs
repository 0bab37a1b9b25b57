//! The dashboard at `/ui/` in real headless browsers: each test starts the
//! `portico` binary (`portico up`), then runs `tests/ui/dashboard.py`
//! (Selenium driving Debian's `chromium` through `chromedriver`, or
//! Debian's `firefox-esr` through `geckodriver`) against it. Every browser
//! scenario has one test per browser. The script polls every condition
//! with a deadline and exits non-zero naming the check that failed.
//!
//! Needs `chromium`, `chromium-driver`, `firefox-esr` and
//! `python3-selenium` (Debian) and `geckodriver` (`cargo install
//! geckodriver`, on `PATH` or in `~/.cargo/bin`); `.ci/run` installs them.
//! Without them the tests fail saying so: a skipped browser check must not
//! read as a passed one. Browser runs take turns ([`BROWSER`]): two
//! browsers and a registry at once on a 2-core machine would turn the
//! script's deadlines into a measure of the machine.
//! `PORTICO_UI_SCREENSHOTS=docs` makes the first Chromium test refresh the
//! screenshots in `docs/` (see `docs/screenshots.sh`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use http::StatusCode;
use support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui/dashboard.py");
const PYTHON: &str = "/usr/bin/python3";

/// Held while a browser runs: one browser at a time.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A route file for the gateway of `portico up`: one route the registry
/// never sees, which the dashboard must show under the gateway.
const ROUTE_FILE: &str = r#"
[[route]]
name = "from-file"
hosts = ["files.example.com"]
path_prefix = "/from-file"
methods = ["GET"]
service = "web"
filters = [{ type = "request_headers", set = { "x-from" = "file" } }]
"#;

#[derive(Clone, Copy, Debug)]
enum Browser {
    Chromium,
    Firefox,
}

impl Browser {
    fn name(self) -> &'static str {
        match self {
            Browser::Chromium => "chromium",
            Browser::Firefox => "firefox",
        }
    }
}

/// A `portico up` on free loopback ports, with its control URL.
struct Up {
    process: ChildProcess,
    _dir: tempfile::TempDir,
    control: String,
    /// The command line, to start it again in place.
    args: Vec<String>,
}

impl Up {
    async fn start(extra: &[&str]) -> Up {
        let (dir, data) = data_dir();
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let (control, listen, admin) = (addr(free_port()), addr(free_port()), addr(free_port()));
        let mut args: Vec<String> = [
            "up",
            "--control",
            &control,
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--data-dir",
            data.to_str().unwrap(),
            // Long enough that the lapsed instance stays listed (critical)
            // for the rest of the script.
            "--critical-grace",
            "10m",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        let process = ChildProcess::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let control = format!("http://{control}");
        wait_healthy(&control).await;
        args.insert(0, env!("CARGO_BIN_EXE_portico").to_string());
        Up {
            process,
            _dir: dir,
            control,
            args,
        }
    }
}

/// `geckodriver` on `PATH`, else where `cargo install` puts it.
fn geckodriver() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    on_path
        .into_iter()
        .chain(cargo_home.map(|c| c.join("bin")))
        .map(|dir| dir.join("geckodriver"))
        .find(|p| p.is_file())
}

/// Panics saying what is missing when `browser`'s tools are not here;
/// otherwise its driver's path.
fn require_browser(browser: Browser) -> PathBuf {
    let (binary, package) = match browser {
        Browser::Chromium => ("/usr/bin/chromium", "chromium"),
        Browser::Firefox => ("/usr/bin/firefox-esr", "firefox-esr"),
    };
    let driver = match browser {
        Browser::Chromium => Some(PathBuf::from("/usr/bin/chromedriver"))
            .filter(|p| p.exists())
            .ok_or("chromium-driver"),
        Browser::Firefox => geckodriver().ok_or("geckodriver (cargo install geckodriver --locked)"),
    };
    let selenium = Command::new(PYTHON)
        .args(["-c", "import selenium"])
        .status()
        .is_ok_and(|s| s.success());
    let missing: Vec<&str> = [
        (!Path::new(binary).exists()).then_some(package),
        driver.as_ref().err().copied(),
        (!selenium).then_some("python3-selenium"),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        missing.is_empty(),
        "the {} dashboard tests need {missing:?} (.ci/run installs them)",
        browser.name()
    );
    driver.unwrap()
}

/// Runs the script in `browser` with `args`; fails with its output when it
/// fails.
async fn run_script(browser: Browser, args: Vec<String>) {
    let driver = require_browser(browser);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(PYTHON)
            .arg(SCRIPT)
            .args(["--browser", browser.name()])
            .args(&args)
            .env("GECKODRIVER", driver)
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "dashboard.py ({}) failed ({}):\n{stdout}\n{stderr}",
        browser.name(),
        output.status
    );
    assert!(stdout.contains("all ok"), "{stdout}");
}

/// One `#[tokio::test]` per browser for a scenario.
macro_rules! per_browser {
    ($scenario:ident: $chromium:ident, $firefox:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $chromium() {
            $scenario(Browser::Chromium).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $firefox() {
            $scenario(Browser::Firefox).await
        }
    };
}

per_browser!(shows_the_registry_live:
    dashboard_shows_the_registry_live_in_chromium,
    dashboard_shows_the_registry_live_in_firefox);
per_browser!(asks_for_a_token:
    dashboard_asks_for_a_token_and_then_shows_data_in_chromium,
    dashboard_asks_for_a_token_and_then_shows_data_in_firefox);
per_browser!(reconnects_after_a_restart:
    dashboard_reconnects_when_the_registry_restarts_in_chromium,
    dashboard_reconnects_when_the_registry_restarts_in_firefox);

/// Everything a person sees, with the gateway routing by a route file too
/// (and its implicit routes on, which `--config` turns off by default).
async fn shows_the_registry_live(browser: Browser) {
    let _turn = BROWSER.lock().await;
    let routes = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(routes.path(), ROUTE_FILE).unwrap();
    let config = routes.path().to_str().unwrap();
    let up = Up::start(&["--config", config, "--auto-routes", "true"]).await;
    let mut args = vec![
        "--control".to_string(),
        up.control.clone(),
        "--scenario".to_string(),
        "open".to_string(),
        "--file-route".to_string(),
        "from-file".to_string(),
    ];
    if let (Browser::Chromium, Some(dir)) = (browser, std::env::var_os("PORTICO_UI_SCREENSHOTS")) {
        args.push("--screenshots".to_string());
        args.push(dir.to_string_lossy().into_owned());
    }
    run_script(browser, args).await;
}

async fn asks_for_a_token(browser: Browser) {
    let _turn = BROWSER.lock().await;
    let (read, admin) = (
        "read-secret-for-the-ui-test",
        "admin-secret-for-the-ui-test",
    );
    let up = Up::start(&[
        "--token",
        &format!("read:{read}"),
        "--token",
        &format!("admin:{admin}"),
    ])
    .await;
    // The page itself loads without a token; its data does not.
    assert_eq!(
        get(&format!("{}/ui/", up.control)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&format!("{}/v1/services", up.control)).await.status,
        StatusCode::UNAUTHORIZED
    );
    run_script(
        browser,
        vec![
            "--control".into(),
            up.control.clone(),
            "--scenario".into(),
            "token".into(),
            "--read-token".into(),
            read.into(),
            "--admin-token".into(),
            admin.into(),
        ],
    )
    .await;
}

/// The registry killed and started again under an open page: the page says
/// it is disconnected, reconnects by itself and shows what came after.
async fn reconnects_after_a_restart(browser: Browser) {
    let _turn = BROWSER.lock().await;
    let up = Up::start(&[]).await;
    run_script(
        browser,
        vec![
            "--control".into(),
            up.control.clone(),
            "--scenario".into(),
            "restart".into(),
            "--pid".into(),
            up.process.child.id().to_string(),
            "--restart".into(),
            serde_json::to_string(&up.args).unwrap(),
        ],
    )
    .await;
}

/// `/v1/explain` and `/v1/endpoints` relay the gateway's admin answers, and
/// refuse by field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_answer_for_a_live_gateway_and_name_bad_input() {
    let up = Up::start(&[]).await;
    let missing = get(&format!("{}/v1/explain?path=/", up.control)).await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(missing.json()["field"], "gateway");
    let unknown = get(&format!("{}/v1/explain?gateway=nope&path=/", up.control)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let gateways = format!("{}/v1/gateways", up.control);
    eventually("the gateway's record, with its admin address", || {
        let gateways = gateways.clone();
        async move { get(&gateways).await.json()["gateways"][0]["admin"].is_string() }
    })
    .await;
    let id = get(&gateways).await.json()["gateways"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = get(&format!(
        "{}/v1/explain?gateway={id}&method=GET&path=/nothing-here",
        up.control
    ))
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let verdict = answer.json()["verdict"].as_str().unwrap().to_string();
    assert!(verdict.contains("404"), "{verdict}");
    let bad = get(&format!("{}/v1/explain?gateway={id}&method=", up.control)).await;
    assert_eq!(
        bad.status,
        StatusCode::BAD_REQUEST,
        "the gateway's refusal is relayed"
    );
    let endpoints = get(&format!("{}/v1/endpoints?gateway={id}", up.control)).await;
    assert_eq!(endpoints.status, StatusCode::OK);
    assert!(
        endpoints.json()["routes"].is_array(),
        "{:?}",
        endpoints.body
    );
}

/// `/v1/gateway-routes` relays the gateway's `/routes`: its route-file
/// routes marked `file`, the registry's `registry`, implicit ones
/// `implicit`; bad input is refused by field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_routes_relay_marks_each_route_by_source() {
    let routes = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(routes.path(), ROUTE_FILE).unwrap();
    let config = routes.path().to_str().unwrap();
    let up = Up::start(&["--config", config, "--auto-routes", "true"]).await;
    let missing = get(&format!("{}/v1/gateway-routes", up.control)).await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(missing.json()["field"], "gateway");
    let unknown = get(&format!("{}/v1/gateway-routes?gateway=nope", up.control)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let control = up.control.clone();
    let body = serde_json::json!({"address": "127.0.0.1", "port": 9, "ttl": "10m"});
    let put = put_json(&format!("{control}/v1/services/web/instances/w1"), body).await;
    assert_eq!(put.status, StatusCode::OK, "{:?}", put.body);
    let route = serde_json::json!({"path_prefix": "/api", "service": "web"});
    let put = put_json(&format!("{control}/v1/routes/api"), route).await;
    assert!(put.status.is_success(), "{:?}", put.body);

    let gateways = format!("{control}/v1/gateways");
    eventually("the gateway's record, with its admin address", || {
        let gateways = gateways.clone();
        async move { get(&gateways).await.json()["gateways"][0]["admin"].is_string() }
    })
    .await;
    let id = get(&gateways).await.json()["gateways"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let listing = format!("{control}/v1/gateway-routes?gateway={id}");
    let source_of = |body: &serde_json::Value, name: &str| {
        body["routes"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == name))
            .map(|r| r["source"].as_str().unwrap_or_default().to_string())
    };
    eventually("the registry route and the implicit one applied", || {
        let listing = listing.clone();
        async move {
            let body = get(&listing).await.json();
            source_of(&body, "api").is_some() && source_of(&body, "auto:web").is_some()
        }
    })
    .await;
    let answer = get(&listing).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let body = answer.json();
    assert_eq!(source_of(&body, "from-file").as_deref(), Some("file"));
    assert_eq!(source_of(&body, "api").as_deref(), Some("registry"));
    assert_eq!(source_of(&body, "auto:web").as_deref(), Some("implicit"));
    let file = &body["routes"][0];
    assert_eq!(file["name"], "from-file", "file routes come first: {body}");
    assert_eq!(file["hosts"], serde_json::json!(["files.example.com"]));
    assert_eq!(file["path_prefix"], "/from-file");
    assert_eq!(file["service"], "web");
    assert_eq!(
        file["filters"],
        serde_json::json!([{"type": "request_headers"}])
    );
    assert!(
        !body.to_string().contains("x-from"),
        "filter settings stay on the gateway: {body}"
    );
}
