//! `registry_json`: bytes into every JSON decoder the registry API and its
//! clients use.
//!
//! - [`InstanceSpec::from_json`]: the body of a registration, with the check
//!   spec under `"check"`. The same bytes are also tried as a check spec on
//!   their own, wrapped in a minimal registration, so the fuzzer reaches the
//!   check decoder without having to write a whole registration first.
//! - [`RouteSpec::from_json`] and [`compile`]: the body of `PUT
//!   /v1/routes/{name}`.
//! - `Instance` and `WatchEvent` through serde: what the catalog decodes from
//!   the store and what the SDK and gateways decode from `/v1/watch`.
//!
//! Oracles: no decoder panics; a body that is accepted re-encodes to JSON
//! that decodes to the same value (through the same decoder and through the
//! serde form watchers use); an accepted route compiles the same after the
//! round trip, and the same route written in a route file (TOML) compiles
//! to the same [`Route`](portico_gateway::config::Route): a route file and
//! the API never disagree.

use portico_gateway::config::Config;
use portico_registry::model::{Instance, InstanceSpec, Status, WatchEvent};
use portico_registry::route::{RouteSpec, compile, match_key};
use serde::Serialize;

/// Runs one input; panics when an invariant does not hold.
pub fn check(data: &[u8]) {
    instance_spec(data);
    let mut wrapped = br#"{"address":"127.0.0.1","port":1,"check":"#.to_vec();
    wrapped.extend_from_slice(data);
    wrapped.push(b'}');
    instance_spec(&wrapped);
    route_spec(data);
    round_trips::<Instance>(data);
    round_trips::<WatchEvent>(data);
}

fn instance_spec(body: &[u8]) {
    let Ok(spec) = InstanceSpec::from_json(body) else {
        return;
    };
    let encoded = serde_json::to_vec(&spec).expect("an accepted instance spec encodes");
    let again = InstanceSpec::from_json(&encoded).unwrap_or_else(|e| {
        panic!(
            "an accepted spec, re-encoded, is refused ({e}): {}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(again, spec, "an instance spec changed in a round trip");
    // Stored and watched as part of an instance, decoded with serde.
    let instance = Instance {
        service: "svc".to_string(),
        id: "id".to_string(),
        spec,
        status: Status::Passing,
        registered_at_ms: 1,
        status_since_ms: 2,
        revision: 3,
        check_failing: false,
    };
    let stored = serde_json::to_vec(&instance).expect("an instance encodes");
    let decoded: Instance = serde_json::from_slice(&stored).unwrap_or_else(|e| {
        panic!(
            "a stored instance does not decode ({e}): {}",
            String::from_utf8_lossy(&stored)
        )
    });
    assert_eq!(
        decoded, instance,
        "an instance changed in the store's encoding"
    );
}

fn route_spec(body: &[u8]) {
    let Ok(mut spec) = RouteSpec::from_json(body) else {
        return;
    };
    let encoded = serde_json::to_vec(&spec).expect("an accepted route spec encodes");
    let mut again = RouteSpec::from_json(&encoded).unwrap_or_else(|e| {
        panic!(
            "an accepted route, re-encoded, is refused ({e}): {}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(again, spec, "a route spec changed in a round trip");
    // The API takes the name from the URL when the body has none.
    if spec.name.is_empty() {
        spec.name = "fuzz".to_string();
        again.name = "fuzz".to_string();
    }
    let Ok(route) = compile(&spec, "") else {
        return;
    };
    let route_again = compile(&again, "").expect("a spec that compiled compiles again");
    assert_eq!(
        route_again, route,
        "a route compiled differently after a round trip"
    );
    assert_eq!(match_key(&route_again), match_key(&route));
    same_in_a_route_file(&spec, &route);
}

/// The route file is TOML with one `[[route]]` table per route.
#[derive(Serialize)]
struct RouteFile<'a> {
    route: [&'a RouteSpec; 1],
}

fn same_in_a_route_file(spec: &RouteSpec, route: &portico_gateway::config::Route) {
    let text = toml::to_string(&RouteFile { route: [spec] })
        .unwrap_or_else(|e| panic!("an accepted route has no TOML form ({e}): {spec:?}"));
    let config = Config::parse(&text).unwrap_or_else(|e| {
        panic!("the API accepts a route that a route file refuses ({e}):\n{text}")
    });
    assert_eq!(
        *config.routes[0], *route,
        "a route compiles differently from a route file:\n{text}"
    );
}

fn round_trips<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let Ok(value) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let encoded = serde_json::to_vec(&value).expect("a decoded value encodes");
    let again: T = serde_json::from_slice(&encoded).unwrap_or_else(|e| {
        panic!(
            "a decoded {} re-encodes to JSON it refuses ({e}): {}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(again, value, "a value changed in a round trip");
}
