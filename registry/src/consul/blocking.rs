//! The query string of a Consul call and the wait of a blocking query.
//!
//! Consul clients send options Portico has no use for (`stale`, `cached`,
//! `near`, `consistent`, `pretty`): they are accepted and ignored, since
//! one registry answers the same whichever way it is asked. Options that
//! would narrow an answer in ways Portico does not implement (`filter`,
//! `node-meta`, `peer`, another datacenter or namespace) are refused,
//! naming the parameter: ignoring them would hand back instances the
//! client asked to exclude. Any other parameter is ignored, as Consul does.

use std::time::Duration;

use super::{ConsulError, ConsulState, DATACENTER, consul_index};
use crate::model::Revision;

/// `wait` when a blocking query names none (Consul's default).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// The longest `wait`; a longer one is cut to this, as Consul does.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// What a Consul call asked for.
#[derive(Debug, Default)]
pub(super) struct Query {
    /// `index`: block until something changes after it.
    pub index: Option<Revision>,
    /// `wait`: the longest a blocking query waits.
    pub wait: Option<Duration>,
    /// `passing`: only instances whose check passes.
    pub passing: bool,
    /// `tag` (repeatable): only instances with every one of these tags.
    pub tags: Vec<String>,
    /// `note` of a check update (kept for the answer only).
    pub note: Option<String>,
}

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Result<Query, ConsulError> {
        let mut query = Query::default();
        for (name, value) in pairs(raw.unwrap_or(""))? {
            query.take(&name, value)?;
        }
        Ok(query)
    }

    fn take(&mut self, name: &str, value: String) -> Result<(), ConsulError> {
        match name {
            "index" => {
                self.index = Some(value.parse().map_err(|_| {
                    ConsulError::bad_request(format!(
                        "Invalid index {value:?}: index must be a non-negative integer"
                    ))
                })?);
            }
            "wait" => self.wait = Some(parse_wait(&value)?),
            "passing" => self.passing = parse_bool("passing", &value)?,
            "tag" => self.tags.push(value),
            "note" => self.note = Some(value),
            "dc" if !value.is_empty() && value != DATACENTER => {
                return Err(ConsulError::bad_request(format!(
                    "No path to datacenter {value:?} (dc): this registry is datacenter \
                     {DATACENTER:?}"
                )));
            }
            "ns" | "partition" if !value.is_empty() && value != "default" => {
                return Err(ConsulError::bad_request(format!(
                    "{name}: Portico has only the \"default\" {name}"
                )));
            }
            "filter" | "node-meta" | "peer" => {
                return Err(ConsulError::bad_request(format!(
                    "{name}: not supported by Portico's Consul API"
                )));
            }
            _ => {}
        }
        Ok(())
    }

    /// The wait of a blocking query: `wait`, else 5 minutes.
    pub fn wait(&self) -> Duration {
        self.wait.unwrap_or(DEFAULT_WAIT)
    }
}

fn pairs(raw: &str) -> Result<Vec<(String, String)>, ConsulError> {
    let uri: axum::http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|e| ConsulError::bad_request(format!("Bad query string: {e}")))?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ConsulError::bad_request(format!("Bad query string: {}", e.body_text())))
}

/// `10s`, `120000ms`, `5m`; cut to [`MAX_WAIT`].
fn parse_wait(value: &str) -> Result<Duration, ConsulError> {
    let wait = humantime::parse_duration(value).map_err(|e| {
        ConsulError::bad_request(format!(
            "Invalid wait time {value:?} (wait): {e}; expected a duration such as \"10s\""
        ))
    })?;
    Ok(wait.min(MAX_WAIT))
}

/// A boolean as Consul's Go code reads one; an empty value (`?passing`)
/// means true.
pub(super) fn parse_bool(name: &str, value: &str) -> Result<bool, ConsulError> {
    match value {
        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ConsulError::bad_request(format!(
            "{name}: {value:?} is not a boolean (true, false, 1 or 0)"
        ))),
    }
}

/// Blocks a query with an `index` until something under `prefix` changes
/// after it, `wait` passes, or the registry shuts down. Answers at once
/// when there is no index, when the index is ahead of the store (Consul
/// resets then: the client's index is from a store that was replaced), and
/// when the history since the index is gone (only a fresh read can tell).
///
/// `Some(index)` when the wait ended with nothing changed: the answer then
/// carries the client's own index back, as Consul's does, because the
/// store's revision also moves with writes the query does not read (other
/// services, gateway records), and a client such as Prometheus takes a
/// moved index for news.
pub(super) async fn wait_for_change(
    app: &ConsulState,
    prefix: &str,
    query: &Query,
) -> Result<Option<Revision>, ConsulError> {
    let Some(index) = query.index.filter(|i| *i > 0) else {
        return Ok(None);
    };
    let store = app.catalog.store();
    let current = store.revision().await?;
    if index > consul_index(current) {
        return Ok(None);
    }
    let Ok(mut watch) = store.watch(prefix, index.min(current)).await else {
        return Ok(None);
    };
    let deadline = tokio::time::Instant::now() + query.wait();
    let mut closing = app.closing.clone();
    let changed = tokio::select! {
        // A change, or a failed watch: either way a fresh read and index.
        next = tokio::time::timeout_at(deadline, watch.next()) => next.is_ok(),
        _ = closing.wait_for(|c| *c) => false,
    };
    Ok((!changed).then_some(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_as_consul_reads_them() {
        let q = Query::parse(Some(
            "index=7&wait=120000ms&passing&tag=a&tag=b&stale=&dc=dc1",
        ))
        .unwrap();
        assert_eq!(q.index, Some(7));
        assert_eq!(q.wait(), Duration::from_secs(120));
        assert!(q.passing);
        assert_eq!(q.tags, ["a", "b"]);
        assert!(!Query::parse(Some("passing=false")).unwrap().passing);
        assert!(Query::parse(Some("passing=1")).unwrap().passing);
        assert_eq!(Query::parse(None).unwrap().wait(), DEFAULT_WAIT);
        assert_eq!(Query::parse(Some("wait=1h")).unwrap().wait(), MAX_WAIT);
    }

    #[test]
    fn options_that_would_narrow_the_answer_are_refused_by_name() {
        for (raw, named) in [
            ("filter=Service.Port==80", "filter"),
            ("node-meta=a:b", "node-meta"),
            ("dc=eu", "dc"),
            ("passing=maybe", "passing"),
            ("wait=soon", "wait"),
            ("index=-1", "index"),
        ] {
            let e = Query::parse(Some(raw)).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{raw}");
            assert!(e.message.contains(named), "{raw}: {}", e.message);
        }
    }
}
