//! The etcd store over TLS with client certificates (issue 12): a registry
//! given the CA and a client certificate works over an etcd member that
//! requires one; a registry without the client certificate is refused at
//! startup with an error that names the TLS problem.

#![cfg(feature = "etcd")]

mod support;

use std::time::Duration;

use support::etcd::EtcdCluster;
use support::tls::{TestCa, run};
use support::*;

/// `portico registry` on `--store etcd:{endpoint}` with these extra flags.
fn registry_args(endpoint: &str, control: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "registry".to_string(),
        "--control".into(),
        control.into(),
        "--store".into(),
        format!("etcd:{endpoint}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_works_over_etcd_tls_and_is_refused_without_a_client_certificate() {
    let ca = TestCa::new();
    let server = ca.write("etcd", &["localhost", "127.0.0.1"]);
    let client = ca.write_client("portico-registry");
    let cluster = EtcdCluster::start_tls(&server.cert, &server.key, &ca.path).await;
    let endpoint = cluster.tls_endpoint();
    let ca_path = ca.path.to_str().unwrap();

    // Without the client certificate: refused at startup, saying why.
    let control = format!("127.0.0.1:{}", free_port());
    let args = registry_args(&endpoint, &control, &["--etcd-ca", ca_path]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = run(
        env!("CARGO_BIN_EXE_portico"),
        &args,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        !ok,
        "a registry without the client certificate must not start"
    );
    assert!(
        err.contains("etcd refused this registry's TLS connection"),
        "the startup error should name the TLS problem: {err}"
    );

    // A CA file that is not one: refused, naming the file.
    let bogus = ca.dir.join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let args = registry_args(&endpoint, &control, &["--etcd-ca", bogus.to_str().unwrap()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = run(
        env!("CARGO_BIN_EXE_portico"),
        &args,
        Duration::from_secs(60),
    )
    .await;
    assert!(!ok && err.contains("bogus.pem"), "{err}");

    // With it: the registry serves, over etcd's TLS port.
    let mut registry = ChildProcess::spawn(&[
        "registry",
        "--control",
        &control,
        "--store",
        &format!("etcd:{endpoint}"),
        "--etcd-ca",
        ca_path,
        "--etcd-cert",
        client.cert.to_str().unwrap(),
        "--etcd-key",
        client.key.to_str().unwrap(),
    ]);
    let url = format!("http://{control}");
    wait_healthy(&url).await;
    let sdk = portico_registry::client::RegistryClient::new(&[url.as_str()]).unwrap();
    let echo = TestEcho::start("e1").await;
    sdk.register_once("echo", "e1", &echo.spec()).await.unwrap();
    let listed = sdk.instances("echo").await.unwrap();
    assert_eq!(listed.instances.len(), 1, "{listed:?}");
    // The write reached etcd (read back through the member's cleartext
    // port, which only the harness uses).
    let keys: Vec<String> = cluster
        .range(b"/portico/")
        .await
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    assert!(keys.iter().any(|k| k.contains("e1")), "{keys:?}");
    registry.kill9();
}
