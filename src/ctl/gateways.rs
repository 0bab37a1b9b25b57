//! `gateways`: the gateways that registered themselves, and how far each
//! one's routing table is behind the registry.

use portico_registry::gateway::GatewayList;

use super::table::Table;
use super::{Ctl, CtlError};

/// `GET /v1/gateways`. LAG is the registry's revision minus the one the
/// gateway last reported applied. A gateway reports it when it renews its
/// record (every third of its TTL), and that renewal is itself a change,
/// so a gateway that is keeping up shows a lag of a few revisions; one
/// that is stuck shows a lag that grows.
pub async fn list(ctl: &Ctl) -> Result<(), CtlError> {
    let (list, raw): (GatewayList, _) = ctl.get("/v1/gateways", "gateways").await?;
    if ctl.json() {
        Ctl::print_raw(&raw);
        return Ok(());
    }
    let now = now_ms();
    let mut table = Table::new(&[
        "ID", "ADDRESS", "VERSION", "APPLIED", "REGISTRY", "LAG", "RENEWED",
    ]);
    for g in &list.gateways {
        let renewed = now.saturating_sub(g.renewed_at_ms) / 1000;
        table.row(vec![
            g.id.clone(),
            g.spec.addresses.join(","),
            g.spec.version.clone(),
            g.spec.applied_revision.to_string(),
            list.revision.to_string(),
            list.revision
                .saturating_sub(g.spec.applied_revision)
                .to_string(),
            format!("{renewed}s ago"),
        ]);
    }
    print!("{}", table.render(ctl.colour));
    Ok(())
}

/// Unix milliseconds now (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
