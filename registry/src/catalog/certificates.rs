//! Certificate operations: put, get, list, delete under `certificates/`.
//!
//! A certificate has no lease (it stays until deleted) and no cross-key
//! rule, so a write is one store put: on etcd as on the embedded store.

use bytes::Bytes;

use super::{Catalog, CatalogError};
use crate::certificate::{Certificate, CertificateSpec, CertificateSummary};
use crate::model::Revision;
use crate::store::KeyValue;

/// Key prefix of every certificate.
pub const CERTIFICATES: &str = "certificates/";

/// `certificates/{name}`.
pub fn certificate_key(name: &str) -> String {
    format!("{CERTIFICATES}{name}")
}

/// Reads a certificate record, stamping the revision it was written at.
pub fn decode_certificate(kv: &KeyValue) -> Option<Certificate> {
    match serde_json::from_slice::<Certificate>(&kv.value) {
        Ok(mut cert) => {
            cert.summary.revision = kv.mod_revision;
            Some(cert)
        }
        Err(e) => {
            tracing::error!(key = %kv.key, error = %e, "skipping undecodable certificate record");
            None
        }
    }
}

/// Every certificate's summary, in name order.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CertificateList {
    /// The summaries (never a key).
    pub certificates: Vec<CertificateSummary>,
    /// Revision the list reflects.
    pub revision: Revision,
}

impl Catalog {
    /// Checks and stores a certificate (created or replaced); answers its
    /// summary at the revision of the write. A refused one changes nothing.
    pub async fn put_certificate(
        &self,
        name: &str,
        spec: CertificateSpec,
        now_s: i64,
    ) -> Result<CertificateSummary, CatalogError> {
        let mut cert = Certificate::check(name, spec, now_s).map_err(CatalogError::Invalid)?;
        let value = Bytes::from(serde_json::to_vec(&cert).expect("a Certificate serialises"));
        let revision = self
            .store()
            .put(&certificate_key(name), value, None)
            .await?;
        cert.summary.revision = revision;
        Ok(cert.summary)
    }

    /// One certificate's summary and the revision of the read.
    pub async fn certificate(
        &self,
        name: &str,
    ) -> Result<(CertificateSummary, Revision), CatalogError> {
        // A range over the one key gives the store's revision with it.
        let range = self.store().range(&certificate_key(name)).await?;
        let key = certificate_key(name);
        range
            .kvs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(decode_certificate)
            .map(|c| (c.summary, range.revision))
            .ok_or_else(|| CatalogError::NotFound {
                kind: "certificate",
                id: name.to_string(),
            })
    }

    /// Every certificate's summary.
    pub async fn certificates(&self) -> Result<CertificateList, CatalogError> {
        let range = self.store().range(CERTIFICATES).await?;
        Ok(CertificateList {
            certificates: range
                .kvs
                .iter()
                .filter_map(decode_certificate)
                .map(|c| c.summary)
                .collect(),
            revision: range.revision,
        })
    }

    /// Deletes a certificate; `NotFound` when there is none of that name.
    pub async fn delete_certificate(&self, name: &str) -> Result<Revision, CatalogError> {
        self.store()
            .delete(&certificate_key(name))
            .await?
            .ok_or_else(|| CatalogError::NotFound {
                kind: "certificate",
                id: name.to_string(),
            })
    }
}
