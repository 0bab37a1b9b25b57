//! `watch`: the registry's event stream as one line per change, stamped
//! with the time it arrived (UTC):
//!
//! ```text
//! 12:00:01 registered web/web-1 10.0.0.1:8080 passing
//! ```
//!
//! The stream is the SDK's [`portico_registry::client::Watcher`] on its own
//! task: it reconnects by itself and resumes after the last revision it
//! saw, so a registry restart shows as a "disconnected" and a "resumed"
//! line, not a gap; a registry that lost that history sends a snapshot,
//! which is printed as its differences from what was seen. Ctrl-C ends the
//! command with exit code 0.

use std::collections::{HashMap, HashSet};

use http::Method;
use portico_registry::model::{Instance, Status, WatchEvent};

use super::routes::{describe_match, describe_target};
use super::{Ctl, CtlError};

/// What the lines said so far, to tell a registration from an update and a
/// gateway joining from its renewals.
#[derive(Debug, Default)]
struct Seen {
    instances: HashMap<(String, String), Status>,
    gateways: HashSet<String>,
    /// Snapshots received: the first sets the scene, later ones are diffed.
    snapshots: usize,
}

/// Follows `/v1/watch` from `index` (0: a snapshot first) until Ctrl-C.
pub async fn follow(ctl: &Ctl, index: u64) -> Result<(), CtlError> {
    // The watcher retries a refusal forever; ask once first, so a missing
    // token or a dead registry is an error and an exit code, not a hang.
    ctl.call(Method::GET, "/v1/services", None, "watch").await?;
    let mut feed = ctl.client.watch(index).spawn(256);
    let mut state = feed.state();
    let mut seen = Seen::default();
    let mut revision = index;
    let mut connected = true;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            event = feed.recv() => {
                let Some(event) = event else {
                    return Err(CtlError::Api("watch: the stream ended".into()));
                };
                revision = event.revision();
                if ctl.json() {
                    println!("{}", serde_json::to_string(&event).unwrap_or_default());
                } else {
                    for line in seen.describe(&event) {
                        println!("{} {line}", clock());
                    }
                }
            }
            changed = state.changed() => {
                if changed.is_err() {
                    return Err(CtlError::Api("watch: the stream ended".into()));
                }
                let s = state.borrow_and_update().clone();
                if s.connected != connected {
                    connected = s.connected;
                    let what = match connected {
                        true => "resumed".to_string(),
                        false => format!(
                            "disconnected ({}); reconnecting",
                            s.last_error.unwrap_or_else(|| "stream ended".into())
                        ),
                    };
                    eprintln!("{} {what} after revision {revision}", clock());
                }
            }
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

impl Seen {
    /// The lines for one event: none for one not worth a line (a progress
    /// note, a gateway renewing its record), several for a snapshot that
    /// replaces what was seen.
    fn describe(&mut self, event: &WatchEvent) -> Vec<String> {
        let line = match event {
            WatchEvent::Snapshot {
                revision,
                instances,
                routes,
                gateways,
                ..
            } => {
                let summary = format!(
                    "snapshot at revision {revision}: {} instances, {} routes, {} gateways",
                    instances.len(),
                    routes.len(),
                    gateways.len()
                );
                let mut lines = vec![summary];
                if self.snapshots > 0 {
                    lines.extend(self.resync(instances));
                } else {
                    self.instances = instances
                        .iter()
                        .map(|i| ((i.service.clone(), i.id.clone()), i.status))
                        .collect();
                }
                self.snapshots += 1;
                self.gateways = gateways.iter().map(|g| g.id.clone()).collect();
                return lines;
            }
            WatchEvent::Put { instance, .. } => Some(self.instance(instance)),
            WatchEvent::Delete { service, id, .. } => {
                self.instances.remove(&(service.clone(), id.clone()));
                Some(format!("removed {service}/{id}"))
            }
            WatchEvent::RoutePut { route, .. } => Some(format!(
                "route set {} {} -> {}",
                route.name,
                describe_match(route),
                describe_target(route)
            )),
            WatchEvent::RouteDelete { name, .. } => Some(format!("route deleted {name}")),
            WatchEvent::CertificatePut { certificate, .. } => Some(format!(
                "certificate stored {} ({})",
                certificate.summary.name,
                certificate.summary.names.join(",")
            )),
            WatchEvent::CertificateDelete { name, .. } => {
                Some(format!("certificate deleted {name}"))
            }
            WatchEvent::ConsumerPut { consumer, .. } => {
                Some(format!("consumer stored {}", consumer.name))
            }
            WatchEvent::ConsumerDelete { name, .. } => Some(format!("consumer deleted {name}")),
            WatchEvent::GatewayPut { gateway, .. } => {
                self.gateways.insert(gateway.id.clone()).then(|| {
                    format!(
                        "gateway joined {} {} {}",
                        gateway.id,
                        gateway.spec.addresses.join(","),
                        gateway.spec.version
                    )
                })
            }
            WatchEvent::GatewayDelete { id, .. } => {
                self.gateways.remove(id);
                Some(format!("gateway left {id}"))
            }
            WatchEvent::Progress { .. } => None,
        };
        line.into_iter().collect()
    }

    /// A snapshot after the first one (the registry restarted, or this
    /// watcher fell behind its history): the changes it holds against what
    /// was printed, as the lines the events would have given, so no
    /// registration or removal goes unseen across the gap.
    fn resync(&mut self, instances: &[Instance]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut gone = std::mem::take(&mut self.instances);
        for i in instances {
            let key = (i.service.clone(), i.id.clone());
            match gone.remove(&key) {
                Some(before) => {
                    self.instances.insert(key.clone(), before);
                    if before != i.status {
                        lines.push(self.instance(i));
                    }
                }
                None => lines.push(self.instance(i)),
            }
        }
        for (service, id) in gone.into_keys() {
            lines.push(format!("removed {service}/{id}"));
        }
        lines
    }

    fn instance(&mut self, i: &Instance) -> String {
        let key = (i.service.clone(), i.id.clone());
        let verb = match self.instances.insert(key, i.status) {
            None => "registered",
            Some(before) if before != i.status => "status",
            Some(_) => "updated",
        };
        let status = serde_json::to_value(i.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        format!("{verb} {}/{} {} {status}", i.service, i.id, i.authority())
    }
}

/// The time now, `HH:MM:SS` UTC.
fn clock() -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    stamp.get(11..19).unwrap_or(&stamp).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, status: &str) -> Instance {
        serde_json::from_value(serde_json::json!({
            "service": "web", "id": id, "address": "10.0.0.1", "port": 80,
            "status": status, "registered_at_ms": 1, "status_since_ms": 1,
        }))
        .unwrap()
    }

    fn snapshot(revision: u64, instances: Vec<Instance>) -> WatchEvent {
        WatchEvent::Snapshot {
            revision,
            instances,
            routes: Vec::new(),
            certificates: Vec::new(),
            consumers: Vec::new(),
            gateways: Vec::new(),
        }
    }

    #[test]
    fn a_later_snapshot_prints_what_changed_across_the_gap() {
        let mut seen = Seen::default();
        let first = seen.describe(&snapshot(
            3,
            vec![instance("a", "passing"), instance("b", "passing")],
        ));
        assert_eq!(
            first,
            ["snapshot at revision 3: 2 instances, 0 routes, 0 gateways"]
        );
        let put = seen.describe(&WatchEvent::Put {
            revision: 4,
            instance: instance("a", "passing"),
        });
        assert_eq!(put, ["updated web/a 10.0.0.1:80 passing"]);
        let later = seen.describe(&snapshot(
            9,
            vec![instance("a", "draining"), instance("c", "passing")],
        ));
        assert_eq!(
            later,
            [
                "snapshot at revision 9: 2 instances, 0 routes, 0 gateways",
                "status web/a 10.0.0.1:80 draining",
                "registered web/c 10.0.0.1:80 passing",
                "removed web/b",
            ]
        );
        assert!(
            seen.describe(&WatchEvent::Progress { revision: 9 })
                .is_empty()
        );
    }
}
