//! TLS for the end-to-end tests: a test CA issuing certificates (rcgen), a
//! rustls client that reports which certificate the server chose, and the
//! real command-line clients (curl, openssl, python's ssl, h2load).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_gateway::tls::cert::CertFiles;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// A certificate authority of the test's own.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
    /// Where it is written (for `--cacert`, `cafile=` and the like).
    pub path: PathBuf,
    /// Directory certificates are written to.
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let tmp = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Portico test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let path = tmp.path().join("ca.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        TestCa {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
            path,
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
        }
    }

    /// A leaf for `names` whose subject CN is `cn` (tests tell
    /// certificates apart by it).
    pub fn issue(&self, cn: &str, names: &[&str]) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Issues a leaf and writes it as `{stem}.pem` and `{stem}-key.pem`.
    pub fn write(&self, stem: &str, names: &[&str]) -> CertFiles {
        let issued = self.issue(stem, names);
        let files = CertFiles {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}-key.pem")),
        };
        std::fs::write(&files.cert, issued.cert).unwrap();
        std::fs::write(&files.key, issued.key).unwrap();
        files
    }

    /// A rustls client config trusting this CA, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// [`TestCa::client`] without session resumption: every connection a
    /// full handshake (a resumed session keeps the certificate it was
    /// first authenticated with).
    pub fn client_full(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut config = (*self.client(alpn)).clone();
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

use rustls::pki_types::pem::PemObject;

/// Writes `contents` to `path` the way a deploy tool swaps a file: to a
/// temporary name beside it, then renamed over it.
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The subject CN of the leaf a TLS session got.
fn leaf_cn(conn: &rustls::ClientConnection) -> String {
    let leaf = &conn.peer_certificates().expect("a server certificate")[0];
    let text = String::from_utf8_lossy(leaf.as_ref()).into_owned();
    // Good enough for test certificates: the CN is the printable string
    // after the commonName OID's encoding (55 04 03).
    let der = leaf.as_ref();
    let oid = [0x55, 0x04, 0x03];
    let at = der
        .windows(3)
        .rposition(|w| w == oid)
        .unwrap_or_else(|| panic!("no CN in {text:?}"));
    let len = der[at + 4] as usize;
    String::from_utf8_lossy(&der[at + 5..at + 5 + len]).into_owned()
}

/// What one HTTPS exchange over a fresh connection saw.
#[derive(Debug)]
pub struct TlsReply {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: http::HeaderMap,
    /// The CN of the certificate the server presented.
    pub cn: String,
    /// The ALPN protocol agreed.
    pub alpn: Option<Vec<u8>>,
    pub resumed: bool,
}

/// One GET over a new TLS connection to `addr`, asking for `sni`.
pub async fn get_tls(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: &str,
    path: &str,
) -> Result<TlsReply, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    let cn = leaf_cn(session);
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let req = Request::get(path)
        .header(http::header::HOST, sni)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let io = TokioIo::new(tls);
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = format!("https://{sni}{path}").parse().unwrap();
        req.headers_mut().remove(http::header::HOST);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(TlsReply {
        status,
        body,
        headers,
        cn,
        alpn,
        resumed,
    })
}

/// Runs a command to its end (bounded by `timeout`), returning its exit
/// status success, stdout and stderr.
pub async fn run(program: &str, args: &[&str], timeout: Duration) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {timeout:?}"))
        .unwrap_or_else(|e| panic!("{program}: {e} (is it installed? .ci/run installs it)"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl TestCa {
    /// A client certificate (extended key usage clientAuth) whose subject
    /// CN is `cn`, written as `{cn}.pem` and `{cn}-key.pem`.
    pub fn write_client(&self, cn: &str) -> CertFiles {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![format!("{cn}.test")]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let files = CertFiles {
            cert: self.dir.join(format!("{cn}.pem")),
            key: self.dir.join(format!("{cn}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }
}

/// An HTTPS server (HTTP/1.1) that requires a client certificate issued by
/// `ca` and answers every request `200 client certificate verified`: an
/// upstream for mTLS from the gateway.
pub struct MtlsServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MtlsServer {
    pub async fn start(ca: &TestCa, name: &str) -> MtlsServer {
        let issued = ca.issue("mtls-upstream", &[name]);
        let chain = CertificateDer::pem_slice_iter(issued.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"client certificate verified"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        MtlsServer { addr, task }
    }
}

impl Drop for MtlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
