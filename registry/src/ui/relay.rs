//! A gateway's admin answers, fetched by the registry from the admin address
//! the gateway wrote in its record:
//!
//! - `GET /v1/explain?gateway=ID&method=&host=&path=&header=...`: its
//!   `/explain` (which route a request would take, and why);
//! - `GET /v1/endpoints?gateway=ID`: its `/endpoints` (per route, each
//!   endpoint in rotation or why not);
//! - `GET /v1/gateway-routes?gateway=ID`: its `/routes` (every route it
//!   routes by, marked `file`, `registry` or `implicit`): a gateway's route
//!   file is seen nowhere else.
//!
//! Why the registry and not the browser: the dashboard is served by the
//! registry under a CSP that allows connections to its own origin only, and
//! a gateway's admin listener (no auth, meant for loopback or an operator
//! network) answers no CORS. Relaying one read-only GET keeps both as they
//! are, and the caller needs only a registry read token. The registry
//! connects only to addresses gateways wrote, and writing a gateway record
//! needs a `gateway` or `admin` token.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use crate::api_error::ApiError;
use crate::catalog::Catalog;
use crate::gateway::validate_gateway_id;
use crate::model::Invalid;

/// How long the whole relay (connect, ask, read) may take: the admin
/// listener answers from memory, so longer means the gateway is not there.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer relayed (`/endpoints` of a large table is the biggest).
pub const MAX_ANSWER: usize = 8 << 20;

/// The `/v1/explain`, `/v1/endpoints` and `/v1/gateway-routes` routes over
/// `catalog`.
pub fn router(catalog: Arc<Catalog>) -> axum::Router {
    axum::Router::new()
        .route(
            "/v1/explain",
            get(|s: State<Arc<Catalog>>, q: RawQuery| relay(s, q, "/explain")),
        )
        .route(
            "/v1/endpoints",
            get(|s: State<Arc<Catalog>>, q: RawQuery| relay(s, q, "/endpoints")),
        )
        .route(
            "/v1/gateway-routes",
            get(|s: State<Arc<Catalog>>, q: RawQuery| relay(s, q, "/routes")),
        )
        .with_state(catalog)
}

/// Splits the `gateway` parameter from the rest of the query, which is
/// passed on as written (the gateway checks it and names a bad field).
pub fn split_query(raw: Option<&str>) -> Result<(String, String), ApiError> {
    let mut gateway = None;
    let mut rest = Vec::new();
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("gateway=") {
            Some(id) if gateway.is_none() => gateway = Some(id.to_string()),
            Some(_) => return Err(Invalid::field("gateway", "given twice").into()),
            None => rest.push(pair),
        }
    }
    let gateway =
        gateway.ok_or_else(|| Invalid::field("gateway", "is required: the id of a gateway"))?;
    validate_gateway_id(&gateway)?;
    Ok((gateway, rest.join("&")))
}

/// Asks the gateway named in the query for `path` with the rest of the query.
async fn relay(
    State(catalog): State<Arc<Catalog>>,
    RawQuery(raw): RawQuery,
    path: &'static str,
) -> Result<Response, ApiError> {
    let (id, query) = split_query(raw.as_deref())?;
    let (record, _) = catalog.gateway(&id).await?;
    let Some(admin) = record.spec.admin else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_admin_address",
            format!(
                "gateway {id:?} reports no admin listener (started with --no-admin, or older than this registry)"
            ),
        ));
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, ask(&admin, path, &query))
        .await
        .map_err(|_| unreachable_gateway(&id, &admin, "no answer within 3s"))?
        .map_err(|e| unreachable_gateway(&id, &admin, &e))?;
    Ok((
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

fn unreachable_gateway(id: &str, admin: &str, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "gateway_unreachable",
        format!("gateway {id:?} admin listener {admin}: {why}"),
    )
}

/// One `GET path?query` on a fresh HTTP/1 connection to `admin`.
async fn ask(admin: &str, path: &str, query: &str) -> Result<(StatusCode, bytes::Bytes), String> {
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let target = match query {
        "" => path.to_string(),
        q => format!("{path}?{q}"),
    };
    let request = Request::get(target)
        .header(header::HOST, admin)
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("query: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("answer: {e}"))?
        .to_bytes();
    conn.abort();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_taken_out_and_the_rest_kept_in_order() {
        let (id, rest) =
            split_query(Some("method=GET&gateway=edge-1&path=%2Fa&header=x:1")).unwrap();
        assert_eq!(id, "edge-1");
        assert_eq!(rest, "method=GET&path=%2Fa&header=x:1");
    }

    #[test]
    fn missing_or_bad_gateway_is_refused_by_field() {
        for q in [
            None,
            Some("path=/"),
            Some("gateway=a&gateway=b"),
            Some("gateway=a%2Fb"),
        ] {
            let e = format!("{:?}", split_query(q).unwrap_err());
            assert!(e.contains("gateway"), "{q:?}: {e}");
        }
    }
}
