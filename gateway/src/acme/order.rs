//! One ACME order, from account to certificate (RFC 8555 §7), with
//! instant-acme.
//!
//! The account is created once and kept in the state directory. An order
//! covers every configured name; each pending authorization is answered
//! with the configured challenge kind, published before the server is told
//! it is ready and withdrawn when the order ends, whatever its outcome.
//! With a registry ([`Fleet`]), answers of either kind are published there
//! too, so any gateway the CA reaches answers, and withdrawn there as well.
//! The key is a fresh ECDSA P-256 key per order (instant-acme builds the
//! CSR with rcgen), so a renewal never reuses a key.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};

use super::challenge::Http01Answers;
use super::fleet::{CHALLENGE_TTL, Fleet};
use super::state::{IssuedPem, StateDir};
use super::{AcmeError, AcmeSettings, ChallengeKind};
use crate::tls::alpn::alpn_certificate;
use crate::tls::store::CertStore;

/// How long an order may wait for validation, then for the certificate,
/// before it counts as failed (retried with backoff).
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);

/// Where challenge answers are published.
#[derive(Debug, Clone)]
pub struct Responders {
    /// HTTP-01, read by the proxy on the cleartext listener.
    pub http01: Arc<Http01Answers>,
    /// TLS-ALPN-01 certificates, served by the TLS listener.
    pub store: Arc<CertStore>,
    /// With a registry: answers published there for every gateway.
    pub fleet: Option<Fleet>,
}

/// The answers one order published, withdrawn when it is dropped: when
/// the order ends, fails, or is abandoned mid-way (its lock lost), so no
/// answer outlives it here. Registry copies are withdrawn by [`issue`]
/// and lapse by themselves if it never gets to.
struct Published<'a> {
    responders: &'a Responders,
    answers: Vec<(String, String)>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for (name, token) in &self.answers {
            self.responders.http01.withdraw(token);
            self.responders.store.set_alpn_challenge(name, None);
        }
    }
}

/// The account: the saved one for this directory, else a new one (saved).
pub async fn account(settings: &AcmeSettings, state: &StateDir) -> Result<Account, AcmeError> {
    let builder = match &settings.ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    }
    .map_err(AcmeError::from_acme("HTTP client"))?;
    if let Some(credentials) = state.account(&settings.directory)? {
        return builder
            .from_credentials(credentials)
            .await
            .map_err(AcmeError::from_acme("account"));
    }
    let contact = settings.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .map_err(AcmeError::from_acme("new account"))?;
    state.save_account(&settings.directory, credentials)?;
    tracing::info!(directory = %settings.directory, "ACME account created");
    Ok(account)
}

/// Orders a certificate for `settings.domains` and returns it with its
/// key. Challenge answers are withdrawn before returning.
pub async fn issue(
    account: &Account,
    settings: &AcmeSettings,
    responders: &Responders,
) -> Result<IssuedPem, AcmeError> {
    let mut published = Published {
        responders,
        answers: Vec::new(),
    };
    let result = run_order(account, settings, responders, &mut published.answers).await;
    if let Some(fleet) = &responders.fleet {
        for (name, token) in &published.answers {
            let token = registry_token(settings.challenge, name, token);
            if let Err(e) = fleet.client.delete_challenge(&token).await {
                tracing::warn!(token, error = %e, "challenge answer not withdrawn from the registry; it lapses by itself");
            }
        }
    }
    result
}

/// Where the registry keeps the answer for `name` / `token`: HTTP-01 by
/// the token the CA fetches, TLS-ALPN-01 by the name its handshake sends.
fn registry_token(kind: ChallengeKind, name: &str, token: &str) -> String {
    match kind {
        ChallengeKind::Http01 => token.to_string(),
        ChallengeKind::TlsAlpn01 => portico_registry::lock::alpn_token(name),
    }
}

async fn run_order(
    account: &Account,
    settings: &AcmeSettings,
    responders: &Responders,
    published: &mut Vec<(String, String)>,
) -> Result<IssuedPem, AcmeError> {
    let identifiers: Vec<Identifier> = settings
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(AcmeError::from_acme("new order"))?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(AcmeError::from_acme("authorization"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(AcmeError::Order(format!("authorization is {other:?}"))),
        }
        let kind = match settings.challenge {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut challenge = authz
            .challenge(kind.clone())
            .ok_or_else(|| AcmeError::Order(format!("the server offers no {kind:?} challenge")))?;
        let name = challenge.identifier().to_string();
        let key_auth = challenge.key_authorization();
        published.push((name.clone(), challenge.token.clone()));
        match settings.challenge {
            ChallengeKind::Http01 => {
                responders
                    .http01
                    .publish(&challenge.token, key_auth.as_str());
            }
            ChallengeKind::TlsAlpn01 => {
                let cert = alpn_certificate(&name, key_auth.digest().as_ref())
                    .map_err(|e| AcmeError::Order(e.to_string()))?;
                responders.store.set_alpn_challenge(&name, Some(cert));
            }
        }
        if let Some(fleet) = &responders.fleet {
            let token = registry_token(settings.challenge, &name, &challenge.token);
            fleet
                .client
                .put_challenge(&token, key_auth.as_str(), CHALLENGE_TTL)
                .await
                .map_err(|e| AcmeError::Order(format!("challenge answer to the registry: {e}")))?;
        }
        challenge
            .set_ready()
            .await
            .map_err(AcmeError::from_acme("challenge ready"))?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(ORDER_TIMEOUT);
    match order.poll_ready(&retry).await {
        Ok(OrderStatus::Ready) => {}
        Ok(status) => return Err(AcmeError::Order(format!("order is {status:?}"))),
        Err(e) => return Err(AcmeError::from_acme("validation")(e)),
    }
    let key = order
        .finalize()
        .await
        .map_err(AcmeError::from_acme("finalize"))?;
    let cert = order
        .poll_certificate(&retry)
        .await
        .map_err(AcmeError::from_acme("certificate"))?;
    Ok(IssuedPem { cert, key })
}
