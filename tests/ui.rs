//! The dashboard at `/ui/` in a real headless browser: each test starts the
//! `portico` binary (`portico up`), then runs `tests/ui/dashboard.py`
//! (Selenium driving Debian's `chromium` through `chromedriver`) against it.
//! The script polls every condition with a deadline and exits non-zero
//! naming the check that failed.
//!
//! Needs `chromium`, `chromium-driver` and `python3-selenium` (`.ci/run`
//! installs them). Without them the tests fail saying so: a skipped
//! browser check must not read as a passed one.
//! `PORTICO_UI_SCREENSHOTS=docs` makes the first test refresh the
//! screenshots in `docs/` (see `docs/screenshots.sh`).

mod support;

use std::path::Path;
use std::process::Command;

use http::StatusCode;
use support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui/dashboard.py");
const PYTHON: &str = "/usr/bin/python3";

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

/// Panics saying what is missing when the browser tools are not here.
fn require_browser() {
    let missing: Vec<&str> = [
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
    ]
    .into_iter()
    .filter(|(path, _)| !Path::new(path).exists())
    .map(|(_, package)| package)
    .chain(
        (!Command::new(PYTHON)
            .args(["-c", "import selenium"])
            .status()
            .is_ok_and(|s| s.success()))
        .then_some("python3-selenium"),
    )
    .collect();
    assert!(
        missing.is_empty(),
        "the dashboard tests need {missing:?} (apt-get install chromium chromium-driver python3-selenium; .ci/run does)"
    );
}

/// Runs the script with `args`; fails with its output when it fails.
async fn run_script(args: Vec<String>) {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(PYTHON)
            .arg(SCRIPT)
            .args(&args)
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
        "dashboard.py failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("all ok"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_registry_live_in_a_browser() {
    require_browser();
    let up = Up::start(&[]).await;
    let mut args = vec![
        "--control".to_string(),
        up.control.clone(),
        "--scenario".to_string(),
        "open".to_string(),
    ];
    if let Some(dir) = std::env::var_os("PORTICO_UI_SCREENSHOTS") {
        args.push("--screenshots".to_string());
        args.push(dir.to_string_lossy().into_owned());
    }
    run_script(args).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_asks_for_a_token_and_then_shows_data() {
    require_browser();
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
    run_script(vec![
        "--control".into(),
        up.control.clone(),
        "--scenario".into(),
        "token".into(),
        "--read-token".into(),
        read.into(),
        "--admin-token".into(),
        admin.into(),
    ])
    .await;
}

/// The registry killed and started again under an open page: the page says
/// it is disconnected, reconnects by itself and shows what came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_reconnects_when_the_registry_restarts() {
    require_browser();
    let up = Up::start(&[]).await;
    run_script(vec![
        "--control".into(),
        up.control.clone(),
        "--scenario".into(),
        "restart".into(),
        "--pid".into(),
        up.process.child.id().to_string(),
        "--restart".into(),
        serde_json::to_string(&up.args).unwrap(),
    ])
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
