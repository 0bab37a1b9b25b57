//! rustls' two crypto providers side by side: aws-lc-rs (what Portico ships)
//! and ring, on the work a TLS front door does per connection and per byte.
//!
//! Client and server run in this one process over in-memory buffers, so no
//! network or scheduler noise enters the figures; only the server side's
//! time is counted (the client's work is the load generator's, not the
//! proxy's). One ECDSA P-256 certificate, as in `bench/run.sh`'s TLS
//! scenarios. Run on a quiet core:
//!
//! ```text
//! cargo run --release -p portico-bench --features providers --bin tls_providers
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

#[derive(Parser, Debug)]
struct Args {
    /// Handshakes per provider and kind.
    #[arg(long, default_value_t = 3000)]
    handshakes: u32,
    /// MiB of application data sent client to server per provider.
    #[arg(long, default_value_t = 256)]
    mib: u32,
}

/// One certificate and key, shared by every configuration.
struct Identity {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

fn identity() -> Identity {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let params = rcgen::CertificateParams::new(vec!["bench.test".to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("self-signed");
    Identity {
        cert: cert.der().clone(),
        key: key.serialize_der(),
    }
}

fn configs(
    provider: &Arc<CryptoProvider>,
    id: &Identity,
    resume: bool,
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.clone()));
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![id.cert.clone()], key)
        .expect("server config");
    let mut roots = RootCertStore::empty();
    roots.add(id.cert.clone()).expect("root");
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        client.resumption = Resumption::disabled();
    }
    (Arc::new(server), Arc::new(client))
}

/// Moves every pending TLS record from one side to the other; returns the
/// time the server spent (its processing, when it is the receiver, or its
/// record writing, when it is the sender).
fn pump(client: &mut ClientConnection, server: &mut ServerConnection, server_time: &mut Duration) {
    let mut buf = Vec::new();
    loop {
        let mut moved = false;
        while client.wants_write() {
            buf.clear();
            client.write_tls(&mut buf).expect("client write");
            let t = Instant::now();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).expect("server read");
                server.process_new_packets().expect("server process");
            }
            *server_time += t.elapsed();
            moved = true;
        }
        while server.wants_write() {
            buf.clear();
            let t = Instant::now();
            server.write_tls(&mut buf).expect("server write");
            *server_time += t.elapsed();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).expect("client read");
                client.process_new_packets().expect("client process");
            }
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

/// Server-side microseconds per handshake.
fn handshakes(provider: &Arc<CryptoProvider>, id: &Identity, n: u32, resume: bool) -> f64 {
    let (server_cfg, client_cfg) = configs(provider, id, resume);
    let name = ServerName::try_from("bench.test").expect("name");
    let mut server_time = Duration::ZERO;
    let mut resumed = 0;
    for i in 0..=n {
        let mut client = ClientConnection::new(client_cfg.clone(), name.clone()).expect("client");
        let mut server = ServerConnection::new(server_cfg.clone()).expect("server");
        let mut spent = Duration::ZERO;
        pump(&mut client, &mut server, &mut spent);
        assert!(
            !client.is_handshaking() && !server.is_handshaking(),
            "handshake did not finish"
        );
        // Connection 0 only primes the client's session cache.
        if i > 0 {
            server_time += spent;
            if client.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                resumed += 1;
            }
        }
    }
    assert_eq!(
        resumed,
        if resume { n } else { 0 },
        "unexpected resumption count"
    );
    server_time.as_secs_f64() * 1e6 / f64::from(n)
}

/// Server-side MiB/s decrypting application data in 16 KiB writes.
fn bulk(provider: &Arc<CryptoProvider>, id: &Identity, mib: u32) -> (f64, String) {
    let (server_cfg, client_cfg) = configs(provider, id, false);
    let name = ServerName::try_from("bench.test").expect("name");
    let mut client = ClientConnection::new(client_cfg, name).expect("client");
    let mut server = ServerConnection::new(server_cfg).expect("server");
    let mut ignored = Duration::ZERO;
    pump(&mut client, &mut server, &mut ignored);
    let suite = format!("{:?}", server.negotiated_cipher_suite().map(|s| s.suite()));
    let chunk = vec![0x5a_u8; 16 * 1024];
    let mut sink = vec![0u8; 64 * 1024];
    let mut server_time = Duration::ZERO;
    for _ in 0..mib * 64 {
        std::io::Write::write_all(&mut client.writer(), &chunk).expect("write");
        pump(&mut client, &mut server, &mut server_time);
        let t = Instant::now();
        let mut got = 0;
        while got < chunk.len() {
            got += std::io::Read::read(&mut server.reader(), &mut sink).expect("read");
        }
        server_time += t.elapsed();
    }
    (f64::from(mib) / server_time.as_secs_f64(), suite)
}

fn main() {
    let args = Args::parse();
    let id = identity();
    let providers = [
        (
            "aws-lc-rs",
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        ),
        ("ring", Arc::new(rustls::crypto::ring::default_provider())),
    ];
    println!("server side only; ECDSA P-256 certificate; TLS 1.3 (rustls' defaults)");
    println!(
        "| provider | full handshake us | handshakes/s per core | resumed handshake us | resumed/s per core | decrypt MiB/s | suite |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    for (label, provider) in &providers {
        let full = handshakes(provider, &id, args.handshakes, false);
        let resumed = handshakes(provider, &id, args.handshakes, true);
        let (mibs, suite) = bulk(provider, &id, args.mib);
        println!(
            "| {label} | {full:.1} | {:.0} | {resumed:.1} | {:.0} | {mibs:.0} | {suite} |",
            1e6 / full,
            1e6 / resumed
        );
    }
}
