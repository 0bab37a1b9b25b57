//! The calls gateways make to order ACME certificates for the fleet: take
//! and release a lock (`/v1/locks`), publish HTTP-01 answers
//! (`/v1/challenges`), read one back, and store the certificate issued
//! (`/v1/certificates`). See `crate::lock`.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};

use super::{ClientError, RegistryClient};
use crate::certificate::CertificateSummary;
use crate::lock::{Challenge, Lock};

/// The answer to [`RegistryClient::take_lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAnswer {
    /// The caller holds it until `expires_unix_ms`.
    Held(Lock),
    /// Another holder has it, until `expires_unix_ms` unless renewed.
    HeldBy {
        /// Who.
        holder: String,
        /// Unix milliseconds at which it lapses unless renewed.
        expires_unix_ms: u64,
    },
}

#[derive(serde::Deserialize)]
struct HeldBody {
    holder: String,
    expires_unix_ms: u64,
}

fn body(value: &serde_json::Value) -> Option<Bytes> {
    Some(Bytes::from(value.to_string()))
}

/// `"1500ms"`: exact, and what the registry's duration parser reads.
fn ttl(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl RegistryClient {
    /// Takes (or, when `holder` has it, renews) lock `name` for `ttl`.
    pub async fn take_lock(
        &self,
        name: &str,
        holder: &str,
        ttl_: Duration,
    ) -> Result<LockAnswer, ClientError> {
        let req = body(&serde_json::json!({"holder": holder, "ttl": ttl(ttl_)}));
        let (status, answer) = self
            .call(Method::PUT, &format!("/v1/locks/{name}"), req)
            .await?;
        if status == StatusCode::CONFLICT {
            let held: HeldBody =
                serde_json::from_slice(&answer).map_err(|e| ClientError::Decode(e.to_string()))?;
            return Ok(LockAnswer::HeldBy {
                holder: held.holder,
                expires_unix_ms: held.expires_unix_ms,
            });
        }
        Self::expect_ok(status, &answer).map(LockAnswer::Held)
    }

    /// Releases lock `name` held by `holder`; succeeds when it is gone
    /// already.
    pub async fn release_lock(&self, name: &str, holder: &str) -> Result<(), ClientError> {
        let path = format!("/v1/locks/{name}?holder={holder}");
        match self.call(Method::DELETE, &path, None).await? {
            (StatusCode::NOT_FOUND, _) => Ok(()),
            (status, answer) => Self::expect_ok::<serde_json::Value>(status, &answer).map(|_| ()),
        }
    }

    /// Publishes the HTTP-01 answer to `token` for `ttl`.
    pub async fn put_challenge(
        &self,
        token: &str,
        key_authorization: &str,
        ttl_: Duration,
    ) -> Result<(), ClientError> {
        let req = body(&serde_json::json!({
            "key_authorization": key_authorization,
            "ttl": ttl(ttl_),
        }));
        let (status, answer) = self
            .call(Method::PUT, &format!("/v1/challenges/{token}"), req)
            .await?;
        Self::expect_ok::<Challenge>(status, &answer).map(|_| ())
    }

    /// Withdraws the answer to `token`; succeeds when it is gone already.
    pub async fn delete_challenge(&self, token: &str) -> Result<(), ClientError> {
        match self
            .call(Method::DELETE, &format!("/v1/challenges/{token}"), None)
            .await?
        {
            (StatusCode::NOT_FOUND, _) => Ok(()),
            (status, answer) => Self::expect_ok::<serde_json::Value>(status, &answer).map(|_| ()),
        }
    }

    /// The answer to `token`, if one is published and not lapsed.
    pub async fn challenge(&self, token: &str) -> Result<Option<String>, ClientError> {
        match self
            .call(Method::GET, &format!("/v1/challenges/{token}"), None)
            .await?
        {
            (StatusCode::NOT_FOUND, _) => Ok(None),
            (status, answer) => {
                Self::expect_ok::<Challenge>(status, &answer).map(|c| Some(c.key_authorization))
            }
        }
    }

    /// Stores a certificate and its key as `name`.
    pub async fn put_certificate(
        &self,
        name: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<CertificateSummary, ClientError> {
        let req = body(&serde_json::json!({"cert_pem": cert_pem, "key_pem": key_pem}));
        let (status, answer) = self
            .call(Method::PUT, &format!("/v1/certificates/{name}"), req)
            .await?;
        Self::expect_ok(status, &answer)
    }

    /// Certificate `name`'s summary, if there is one.
    pub async fn certificate(&self, name: &str) -> Result<Option<CertificateSummary>, ClientError> {
        match self
            .call(Method::GET, &format!("/v1/certificates/{name}"), None)
            .await?
        {
            (StatusCode::NOT_FOUND, _) => Ok(None),
            (status, answer) => Self::expect_ok(status, &answer).map(Some),
        }
    }
}

impl RegistryClient {
    /// Registers or renews this gateway's record (a write with a fresh
    /// lease). A registry that lost the record (lapsed, restarted without
    /// it) simply takes it again.
    pub async fn put_gateway(
        &self,
        id: &str,
        spec: &crate::gateway::GatewaySpec,
    ) -> Result<crate::gateway::GatewayRecord, ClientError> {
        let req = Some(Bytes::from(
            serde_json::to_vec(spec).expect("gateway specs serialise"),
        ));
        let (status, answer) = self
            .call(Method::PUT, &format!("/v1/gateways/{id}"), req)
            .await?;
        Self::expect_ok(status, &answer)
    }

    /// Removes this gateway's record (a clean shutdown); succeeds when it
    /// is gone already.
    pub async fn delete_gateway(&self, id: &str) -> Result<(), ClientError> {
        let (status, answer) = self
            .call(Method::DELETE, &format!("/v1/gateways/{id}"), None)
            .await?;
        Self::expect_ok::<serde_json::Value>(status, &answer).map(|_| ())
    }

    /// Every live gateway.
    pub async fn gateways(&self) -> Result<crate::gateway::GatewayList, ClientError> {
        let (status, answer) = self.call(Method::GET, "/v1/gateways", None).await?;
        Self::expect_ok(status, &answer)
    }
}
