//! Prometheus HTTP service discovery (`GET /v1/prometheus/targets`): every
//! registered instance as a scrape target, in the format of Prometheus's
//! `http_sd_configs` (a list of `{"targets": [...], "labels": {...}}`).
//!
//! One group per instance, since each has labels of its own. What is known
//! of an instance is in `__meta_portico_*` labels, which Prometheus drops
//! after relabelling unless a rule keeps them (as its Consul discovery does
//! with `__meta_consul_*`): service, instance id, status, zone, scheme,
//! weight, tags (`,a,b,`, so a regex can match `,tag,`), and each metadata
//! key (its name made a valid label name). Every status is listed, critical
//! included: a monitoring system wants to scrape what is failing; a
//! relabel rule on `__meta_portico_status` drops what it does not want.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::Instance;

/// One target group of the `http_sd` answer.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct TargetGroup {
    /// The instance's `host:port`.
    pub targets: [String; 1],
    /// Its `__meta_portico_*` labels.
    pub labels: BTreeMap<String, String>,
}

/// The target group of one instance.
pub fn target_group(instance: &Instance) -> TargetGroup {
    let spec = &instance.spec;
    let mut labels = BTreeMap::new();
    let mut label = |name: &str, value: String| {
        labels.insert(format!("__meta_portico_{name}"), value);
    };
    label("service", instance.service.clone());
    label("instance_id", instance.id.clone());
    label("status", instance.status.as_str().to_string());
    label("zone", spec.zone.clone().unwrap_or_default());
    label("scheme", spec.scheme.as_str().to_string());
    label("weight", spec.weight.to_string());
    label("tags", format!(",{},", spec.tags.join(",")));
    for (key, value) in &spec.meta {
        label(&format!("metadata_{}", label_name(key)), value.clone());
    }
    TargetGroup {
        targets: [instance.authority()],
        labels,
    }
}

/// `key` as a Prometheus label name: anything but `[a-zA-Z0-9_]` becomes
/// `_` (as Prometheus's own discoveries do with metadata keys).
fn label_name(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceSpec, Status};

    #[test]
    fn an_instance_is_one_group_with_its_metadata_as_labels() {
        let mut spec = InstanceSpec::new("::1", 9100);
        spec.zone = Some("eu-1".into());
        spec.tags = vec!["v2".into(), "canary".into()];
        spec.meta.insert("build.sha".into(), "abc".into());
        let instance = Instance {
            service: "api".into(),
            id: "api-1".into(),
            spec,
            status: Status::Critical,
            registered_at_ms: 0,
            status_since_ms: 0,
            revision: 7,
            check_failing: false,
        };
        let group = target_group(&instance);
        assert_eq!(group.targets, ["[::1]:9100".to_string()]);
        let l = |k: &str| group.labels[&format!("__meta_portico_{k}")].as_str();
        assert_eq!(l("service"), "api");
        assert_eq!(l("instance_id"), "api-1");
        assert_eq!(l("status"), "critical");
        assert_eq!(l("zone"), "eu-1");
        assert_eq!(l("tags"), ",v2,canary,");
        assert_eq!(l("metadata_build_sha"), "abc");
        assert_eq!(l("scheme"), "http");
    }
}
