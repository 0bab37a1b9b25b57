//! `forward_auth`: ask an auth service about each request, as Traefik's
//! ForwardAuth does.
//!
//! The service gets a `GET` to its `url` with no body, carrying the
//! request's headers (all but hop-by-hop ones, or only those the route
//! lists) and where the request was going: `X-Forwarded-Method`, `-Proto`,
//! `-Host`, `-Uri` (path and query) and `-For` (the client's address, the
//! one the gateway trusts). A 2xx lets the request on, with the answer's
//! `copy_headers` set on it (a client's own copies of those are always
//! removed first, so an upstream can trust them). Any other answer is sent
//! to the client as it is: status, headers (less hop-by-hop ones) and body,
//! read up to [`MAX_ANSWER_BYTES`]. A service that cannot be reached, does
//! not answer within `timeout`, or sends a larger body lets nothing
//! through: the client gets 503 `auth_unavailable` (a dependency that is
//! down, as a 503 says, rather than a fault of the gateway's own).
//!
//! The client is hyper-util's pooled client with the registry SDK's
//! connector (the one the `jwt` filter fetches key sets with): keep-alive
//! connections to the service are reused, and `https` works with the web
//! PKI roots. The gateway's upstream pool is not used: it serves
//! endpoints of routes (with their breakers and outlier ejection), and an
//! auth service is not one.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use portico_registry::filter::ForwardAuth;

use super::RequestHead;

/// Largest body of an auth service's refusal passed to the client.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

type Client =
    hyper_util::client::legacy::Client<portico_registry::client::tls::Connector, Empty<Bytes>>;

/// Why a request was not let through.
#[derive(Debug)]
pub enum Denied {
    /// The auth service's own answer, for the client.
    Answer(Response<Full<Bytes>>),
    /// The auth service could not be asked (what went wrong).
    Unavailable(String),
}

/// One `forward_auth` filter, built with its route's chain.
pub struct ForwardAuthFilter {
    config: ForwardAuth,
    client: Client,
}

impl std::fmt::Debug for ForwardAuthFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardAuthFilter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

static FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

impl ForwardAuthFilter {
    /// The filter for `config`.
    pub fn new(config: &ForwardAuth) -> ForwardAuthFilter {
        let tls = portico_registry::client::tls::client_config(&[])
            .expect("the web PKI roots alone always make a client config");
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(portico_registry::client::tls::connector(tls));
        ForwardAuthFilter {
            config: config.clone(),
            client,
        }
    }

    /// Asks the service about the request in `head`; on a 2xx, copies the
    /// chosen headers of its answer onto the request.
    pub async fn authorize(&self, head: &mut RequestHead<'_>) -> Result<(), Denied> {
        for name in &self.config.copy_headers {
            head.headers.remove(name);
        }
        let ask = self.question(head);
        let answer = match tokio::time::timeout(self.config.timeout, self.ask(ask)).await {
            Ok(result) => result.map_err(Denied::Unavailable)?,
            Err(_) => {
                return Err(Denied::Unavailable(format!(
                    "no answer within {:?}",
                    self.config.timeout
                )));
            }
        };
        if !answer.status().is_success() {
            return Err(Denied::Answer(answer));
        }
        for name in &self.config.copy_headers {
            for value in answer.headers().get_all(name) {
                head.headers.append(name.clone(), value.clone());
            }
        }
        Ok(())
    }

    /// The request to the auth service.
    fn question(&self, head: &RequestHead<'_>) -> Request<Empty<Bytes>> {
        let mut req = Request::get(self.config.url.clone())
            .body(Empty::new())
            .expect("a checked URL makes a request");
        let headers = req.headers_mut();
        match &self.config.forward_headers {
            Some(names) => {
                for name in names {
                    for value in head.headers.get_all(name) {
                        headers.append(name.clone(), value.clone());
                    }
                }
            }
            None => {
                for (name, value) in head.headers.iter() {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        strip_hop_by_hop(headers);
        headers.remove(header::HOST);
        headers.remove(header::CONTENT_LENGTH);
        let host = head
            .headers
            .get(header::HOST)
            .cloned()
            .or_else(|| head.uri.authority().and_then(|a| a.as_str().parse().ok()));
        let uri = head.uri.path_and_query().map_or("/", |p| p.as_str());
        let forwarded = [
            (
                &FORWARDED_METHOD,
                HeaderValue::from_str(head.method.as_str()).ok(),
            ),
            (
                &FORWARDED_PROTO,
                Some(HeaderValue::from_static(if head.secure {
                    "https"
                } else {
                    "http"
                })),
            ),
            (&FORWARDED_HOST, host),
            (&FORWARDED_URI, HeaderValue::from_str(uri).ok()),
            (
                &FORWARDED_FOR,
                HeaderValue::from_str(&head.client.to_string()).ok(),
            ),
        ];
        for (name, value) in forwarded {
            headers.remove(name);
            if let Some(v) = value {
                headers.insert(name.clone(), v);
            }
        }
        req
    }

    async fn ask(&self, req: Request<Empty<Bytes>>) -> Result<Response<Full<Bytes>>, String> {
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let (mut parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading its answer: {e}"))?
            .to_bytes();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Ok(Response::from_parts(parts, Full::new(body)))
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), and those `Connection` names:
/// they describe one connection, not the request.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}
