//! `apply -f FILE`: a route file synced to the registry as one change set.
//!
//! The file is read with the gateway's own route-file code
//! ([`portico_gateway::config::parse_routes`]), so `apply` accepts exactly
//! what `portico gateway --config` accepts. Then, before anything is
//! written:
//!
//! 1. the plan: each file route is added, changed (with the fields that
//!    differ) or unchanged; each registry route the file lacks is removed
//!    (`--prune`) or kept;
//! 2. the order of the writes is checked here, with the registry's own
//!    match keys: removals first, then changes, then additions, each write
//!    against the routes as the earlier ones leave them, so a write cannot
//!    fail on a conflict this check did not see;
//! 3. every added or changed route goes to the API with `?dry_run=true`,
//!    which runs all of the registry's checks and writes nothing.
//!
//! Only then are the writes made, in that order. The registry's store has
//! no multi-key transaction on its API (and the store is not this
//! module's to change), so "one change set" means: all validated before
//! any is written. A failure midway (the registry going away) leaves a
//! prefix of the writes applied; the error says how many, and running
//! `apply` again converges, since it only writes what still differs.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bytes::Bytes;
use http::{Method, StatusCode};
use portico_gateway::config::{ConfigError, parse_routes};
use portico_registry::catalog::RouteList;
use portico_registry::route::{Route, RouteSpec, compile, match_field, match_key};
use serde_json::{Value, json};

use super::routes::{describe_match, describe_target};
use super::table::Table;
use super::{Ctl, CtlError, refusal, segment};

/// `apply`'s flags.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// Print the plan, write nothing.
    pub dry_run: bool,
    /// Remove registry routes the file does not have.
    pub prune: bool,
}

/// One route of the file, where it stands in it.
#[derive(Debug)]
struct FileRoute {
    /// Its index in the file (`route[2]`).
    index: usize,
    spec: RouteSpec,
    compiled: Route,
}

impl FileRoute {
    /// How errors name it: `route[2] ("api")`.
    fn label(&self) -> String {
        format!("route[{}] ({:?})", self.index, self.spec.name)
    }
}

/// What applying the file would do.
#[derive(Debug, Default)]
struct Plan {
    added: Vec<FileRoute>,
    /// With the fields that differ from the registry's version.
    changed: Vec<(FileRoute, Vec<String>)>,
    unchanged: Vec<String>,
    removed: Vec<RouteSpec>,
    kept: Vec<String>,
}

impl Plan {
    fn new(file: Vec<FileRoute>, registry: Vec<RouteSpec>, prune: bool) -> Plan {
        let mut current: BTreeMap<String, RouteSpec> =
            registry.into_iter().map(|r| (r.name.clone(), r)).collect();
        let mut plan = Plan::default();
        for route in file {
            match current.remove(&route.spec.name) {
                None => plan.added.push(route),
                Some(old) if old == route.spec => plan.unchanged.push(old.name),
                Some(old) => {
                    let fields = changed_fields(&old, &route.spec);
                    plan.changed.push((route, fields));
                }
            }
        }
        for (name, spec) in current {
            if prune {
                plan.removed.push(spec);
            } else {
                plan.kept.push(name);
            }
        }
        plan
    }

    fn changes(&self) -> usize {
        self.added.len() + self.changed.len() + self.removed.len()
    }

    /// The routes to PUT, in write order: changes, then additions.
    fn puts(&self) -> impl Iterator<Item = &FileRoute> {
        self.changed.iter().map(|(r, _)| r).chain(&self.added)
    }
}

/// The top-level fields whose values differ, in name order.
fn changed_fields(old: &RouteSpec, new: &RouteSpec) -> Vec<String> {
    let (Value::Object(a), Value::Object(b)) = (json!(old), json!(new)) else {
        return Vec::new();
    };
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Runs `apply`.
pub async fn run(ctl: &Ctl, file: &Path, mode: Mode) -> Result<(), CtlError> {
    let routes = read(file)?;
    let (current, _): (RouteList, _) = ctl.get("/v1/routes", "routes").await?;
    let plan = Plan::new(routes, current.routes.clone(), mode.prune);
    check_order(file, &plan, &current.routes)?;
    for route in plan.puts() {
        dry_run(ctl, file, route).await?;
    }
    if mode.dry_run || plan.changes() == 0 {
        print(ctl, &plan, mode.dry_run, None);
        return Ok(());
    }
    let revision = write(ctl, &plan).await?;
    print(ctl, &plan, false, Some(revision));
    Ok(())
}

/// Reads and validates the file; every refusal names the file, the route
/// (index and name) and the field, as a usage error (exit 2).
fn read(file: &Path) -> Result<Vec<FileRoute>, CtlError> {
    let shown = file.display();
    let text = std::fs::read_to_string(file)
        .map_err(|e| CtlError::Usage(format!("{shown}: cannot read: {e}")))?;
    let (specs, compiled) = parse_routes(&text).map_err(|e| match e {
        ConfigError::Invalid { key, reason } => {
            let route = route_of(&text, &key);
            CtlError::Usage(format!("{shown}: {route}{}", with_key(&key, &reason)))
        }
        ConfigError::Parse(message) => {
            let route = line_of(&message).map_or_else(String::new, |l| route_at(&text, l));
            CtlError::Usage(format!("{shown}: {route}{message}"))
        }
        other => CtlError::Usage(format!("{shown}: {other}")),
    })?;
    Ok(specs
        .into_iter()
        .zip(compiled)
        .enumerate()
        .map(|(index, (spec, compiled))| FileRoute {
            index,
            spec,
            compiled,
        })
        .collect())
}

/// `route[2] ("api"): ` for a key under `route[2]`, naming the route when
/// the file gives it a name.
fn route_of(text: &str, key: &str) -> String {
    let Some(index) = key
        .strip_prefix("route[")
        .and_then(|k| k.split(']').next())
        .and_then(|i| i.parse::<usize>().ok())
    else {
        return String::new();
    };
    let name = toml::from_str::<toml::Table>(text).ok().and_then(|t| {
        t.get("route")?
            .get(index)?
            .get("name")?
            .as_str()
            .map(str::to_string)
    });
    match name {
        Some(name) => format!("route[{index}] ({name:?}): "),
        None => String::new(),
    }
}

/// The line a TOML error is at (`... at line 3, column 1`).
fn line_of(message: &str) -> Option<usize> {
    let rest = &message[message.find("at line ")? + "at line ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `route[2] ("api"): ` for the `[[route]]` table that holds line `line`
/// (1-based), from the text alone: a file that does not parse has no
/// routes to ask. The name is the table's `name = "..."` line, if any.
fn route_at(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let upto = line.min(lines.len());
    let Some(start) = lines[..upto]
        .iter()
        .rposition(|l| l.trim_start().starts_with("[[route]]"))
    else {
        return String::new();
    };
    let index = lines[..start]
        .iter()
        .filter(|l| l.trim_start().starts_with("[[route]]"))
        .count();
    let name = lines[start + 1..]
        .iter()
        .take_while(|l| !l.trim_start().starts_with("[["))
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "name").then(|| value.trim().trim_matches('"').to_string())
        });
    match name {
        Some(name) => format!("route[{index}] ({name:?}): "),
        None => format!("route[{index}]: "),
    }
}

/// `key: reason`, unless the reason already starts with the key.
fn with_key(key: &str, reason: &str) -> String {
    if key.is_empty() || reason.starts_with(key) {
        reason.to_string()
    } else {
        format!("{key}: {reason}")
    }
}

/// Replays the writes on the registry's match keys: a route may not take
/// a match another route still holds at its turn. (The registry would
/// refuse that write; finding it here means refusing before the first.)
fn check_order(file: &Path, plan: &Plan, registry: &[RouteSpec]) -> Result<(), CtlError> {
    let mut holder: HashMap<String, String> = HashMap::new();
    let mut key_of: HashMap<String, String> = HashMap::new();
    for spec in registry {
        if plan.removed.iter().any(|r| r.name == spec.name) {
            continue;
        }
        // A stored route that no longer compiles holds no match, as in the
        // registry's own check.
        if let Ok(route) = compile(spec, "") {
            let key = match_key(&route);
            holder.insert(key.clone(), spec.name.clone());
            key_of.insert(spec.name.clone(), key);
        }
    }
    for route in plan.puts() {
        let name = &route.spec.name;
        let key = match_key(&route.compiled);
        if let Some(other) = holder.get(&key).filter(|o| *o != name) {
            let why = if plan.kept.contains(other) {
                "which the registry keeps (it is not in the file; --prune removes it)"
            } else {
                "until that route changes later in this apply (removals, then changes, \
                 then additions): apply it in two steps"
            };
            return Err(CtlError::Usage(format!(
                "{}: {}: {}: matches exactly the same requests as route {other:?}, {why}",
                file.display(),
                route.label(),
                match_field(&route.spec),
            )));
        }
        if let Some(old) = key_of.insert(name.clone(), key.clone())
            && holder.get(&old) == Some(name)
        {
            holder.remove(&old);
        }
        holder.insert(key, name.clone());
    }
    Ok(())
}

/// The registry's own checks on one route, writing nothing. A refusal of
/// the route is a bad file (exit 2); a conflict is left to
/// [`check_order`], which knows the routes this apply removes or moves
/// first (the dry run only sees the registry as it is now).
async fn dry_run(ctl: &Ctl, file: &Path, route: &FileRoute) -> Result<(), CtlError> {
    let path = format!("/v1/routes/{}?dry_run=true", segment(&route.spec.name));
    let body = Bytes::from(serde_json::to_vec(&route.spec).expect("a RouteSpec serialises"));
    let what = format!("{}: {}", file.display(), route.label());
    let (status, answer) = ctl
        .client
        .request(Method::PUT, &path, Some(body))
        .await
        .map_err(|e| CtlError::Api(format!("{what}: {e}")))?;
    if status.is_success() {
        return Ok(());
    }
    let code: Option<String> = serde_json::from_slice::<Value>(&answer)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string));
    let refused = matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY | StatusCode::CONFLICT
    );
    match code.as_deref() {
        Some("route_conflict") if refused => Ok(()),
        _ if refused => Err(CtlError::Usage(
            refusal(status, &answer, &format!("{what}: refused by the registry")).to_string(),
        )),
        _ => Err(refusal(status, &answer, &what)),
    }
}

/// Makes the writes: removals, changes, additions. Returns the registry
/// revision after the last one.
async fn write(ctl: &Ctl, plan: &Plan) -> Result<u64, CtlError> {
    let total = plan.changes();
    let mut done = 0;
    let mut revision = 0;
    let stopped = |done: usize, e: CtlError| {
        CtlError::Api(format!(
            "{e}\napplied {done} of {total} changes before this one; \
             re-run apply to converge (it writes only what still differs)"
        ))
    };
    for spec in &plan.removed {
        let path = format!("/v1/routes/{}", segment(&spec.name));
        let what = format!("removing route {:?}", spec.name);
        let answer = ctl
            .call(Method::DELETE, &path, None, &what)
            .await
            .map_err(|e| stopped(done, e))?;
        revision = revision_of(&answer).max(revision);
        done += 1;
    }
    for route in plan.puts() {
        let path = format!("/v1/routes/{}", segment(&route.spec.name));
        let what = format!("writing route {:?}", route.spec.name);
        let body = Bytes::from(serde_json::to_vec(&route.spec).expect("a RouteSpec serialises"));
        let answer = ctl
            .call(Method::PUT, &path, Some(body), &what)
            .await
            .map_err(|e| stopped(done, e))?;
        revision = revision_of(&answer).max(revision);
        done += 1;
    }
    Ok(revision)
}

fn revision_of(answer: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(answer)
        .ok()
        .and_then(|v| v["revision"].as_u64())
        .unwrap_or(0)
}

/// Prints the plan: a table of what differs (or the JSON summary), then
/// one line saying what was done.
fn print(ctl: &Ctl, plan: &Plan, dry_run: bool, revision: Option<u64>) {
    if ctl.json() {
        let names = |v: &[FileRoute]| v.iter().map(|r| r.spec.name.clone()).collect::<Vec<_>>();
        let doc = json!({
            "dry_run": dry_run,
            "added": names(&plan.added),
            "changed": plan.changed.iter().map(|(r, f)| json!({"name": r.spec.name, "fields": f})).collect::<Vec<_>>(),
            "removed": plan.removed.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
            "kept": plan.kept,
            "unchanged": plan.unchanged,
            "revision": revision,
        });
        println!("{doc}");
        return;
    }
    let mut table = Table::new(&["CHANGE", "ROUTE", "WHAT"]);
    for r in &plan.added {
        let what = format!(
            "{} -> {}",
            describe_match(&r.spec),
            describe_target(&r.spec)
        );
        table.row(vec!["+ added".into(), r.spec.name.clone(), what]);
    }
    for (r, fields) in &plan.changed {
        let what = format!("changed: {}", fields.join(", "));
        table.row(vec!["~ changed".into(), r.spec.name.clone(), what]);
    }
    for r in &plan.removed {
        table.row(vec!["- removed".into(), r.name.clone(), describe_match(r)]);
    }
    for name in &plan.kept {
        let what = "in the registry, not in the file (--prune removes it)".to_string();
        table.row(vec!["= kept".into(), name.clone(), what]);
    }
    if plan.changes() + plan.kept.len() > 0 {
        print!("{}", table.render(ctl.colour));
    }
    let counts = format!(
        "{} added, {} changed, {} removed, {} unchanged",
        plan.added.len(),
        plan.changed.len(),
        plan.removed.len(),
        plan.unchanged.len()
    );
    match (plan.changes(), dry_run, revision) {
        (0, _, _) => println!("no changes ({} unchanged)", plan.unchanged.len()),
        (_, true, _) => println!("dry run: {counts}; nothing written"),
        (_, false, Some(r)) => println!("applied: {counts} (revision {r})"),
        (_, false, None) => println!("applied: {counts}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, prefix: &str) -> RouteSpec {
        RouteSpec {
            name: name.into(),
            path_prefix: Some(prefix.into()),
            service: Some("web".into()),
            ..RouteSpec::default()
        }
    }

    fn file(specs: &[RouteSpec]) -> Vec<FileRoute> {
        specs
            .iter()
            .enumerate()
            .map(|(index, s)| FileRoute {
                index,
                spec: s.clone(),
                compiled: compile(s, "").unwrap(),
            })
            .collect()
    }

    #[test]
    fn the_plan_sorts_routes_and_names_changed_fields() {
        let mut b2 = spec("b", "/b");
        b2.strip_prefix = true;
        let registry = vec![spec("a", "/a"), spec("b", "/b"), spec("old", "/o")];
        let plan = Plan::new(
            file(&[spec("a", "/a"), b2, spec("c", "/c")]),
            registry,
            false,
        );
        assert_eq!(plan.unchanged, ["a"]);
        assert_eq!(plan.changed[0].1, ["strip_prefix"]);
        assert_eq!(plan.added[0].spec.name, "c");
        assert_eq!(plan.kept, ["old"]);
        assert!(plan.removed.is_empty());
    }

    #[test]
    fn a_match_moving_to_another_route_is_refused_or_ordered() {
        let path = Path::new("r.toml");
        // "new" takes the match of "old": refused while old is kept...
        let registry = vec![spec("old", "/x")];
        let plan = Plan::new(file(&[spec("new", "/x")]), registry.clone(), false);
        let err = check_order(path, &plan, &registry).unwrap_err().to_string();
        assert!(
            err.contains("route[0] (\"new\")") && err.contains("\"old\""),
            "{err}"
        );
        // ... and fine when old is removed first.
        let plan = Plan::new(file(&[spec("new", "/x")]), registry.clone(), true);
        check_order(path, &plan, &registry).unwrap();
        // Two routes swapping matches cannot be written one at a time.
        let registry = vec![spec("a", "/a"), spec("b", "/b")];
        let plan = Plan::new(
            file(&[spec("a", "/b"), spec("b", "/a")]),
            registry.clone(),
            false,
        );
        let err = check_order(path, &plan, &registry).unwrap_err().to_string();
        assert!(err.contains("two steps"), "{err}");
        // A route taking a match its own old version held is no move at all.
        let plan = Plan::new(
            file(&[spec("a", "/z"), spec("b", "/a")]),
            registry.clone(),
            false,
        );
        check_order(path, &plan, &registry).unwrap();
    }

    #[test]
    fn toml_errors_are_placed_in_their_route() {
        let text = "[[route]]\nname = \"a\"\npath = \"/a\"\n\n[[route]]\nname = \"b\"\npathprefix = \"/b\"\n";
        assert_eq!(route_at(text, 7), "route[1] (\"b\"): ");
        assert_eq!(route_at(text, 2), "route[0] (\"a\"): ");
        assert_eq!(route_at("x = 1\n", 1), "");
        assert_eq!(line_of("TOML parse error at line 7, column 1"), Some(7));
    }
}
