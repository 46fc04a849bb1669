//! Writes the Gateway API status Weir computes (`routes::gateway_status`)
//! through the apiserver: GatewayClass and Gateway status, and Weir's own
//! entries in each route's `status.parents` (other controllers' entries are
//! kept). Each object is patched only when its status changed since the
//! last successful write; a condition keeps its lastTransitionTime while its
//! status stays the same. A failed write is retried with the next change or
//! after 5 s.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use kube::{
    api::{Api, DynamicObject, Patch, PatchParams},
    Client,
};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::kube_gateway::resource;
use crate::routes::{
    gateway::GATEWAY_CONTROLLER,
    gateway_status::{Condition, GatewayStatuses},
};

/// What identifies an object whose status Weir writes: (kind, namespace, name).
type Key = (&'static str, String, String);

pub fn spawn(client: Client) -> watch::Sender<GatewayStatuses> {
    let (tx, rx) = watch::channel(GatewayStatuses::default());
    tokio::spawn(run(client, rx));
    tx
}

/// lastTransitionTime of each condition: kept while its status stays.
#[derive(Default)]
struct Transitions(BTreeMap<(Key, String), (String, String)>);

impl Transitions {
    /// The conditions as metav1.Condition JSON. `at` names where they are
    /// (a listener, a parent) within the object.
    fn json(&mut self, key: &Key, at: &str, conditions: &[Condition], now: &str) -> Value {
        Value::Array(
            conditions
                .iter()
                .map(|c| {
                    let slot = (key.clone(), format!("{at}/{}", c.kind));
                    let time = match self.0.get(&slot) {
                        Some((status, time)) if *status == c.status => time.clone(),
                        _ => {
                            self.0.insert(slot, (c.status.clone(), now.to_string()));
                            now.to_string()
                        }
                    };
                    json!({
                        "type": c.kind,
                        "status": c.status,
                        "reason": c.reason,
                        "message": c.message,
                        "observedGeneration": c.observed_generation,
                        "lastTransitionTime": time,
                    })
                })
                .collect(),
        )
    }
}

/// The status each object should have, as JSON (routes: Weir's parents only).
fn desired(s: &GatewayStatuses, t: &mut Transitions, now: &str) -> BTreeMap<Key, Value> {
    let mut out = BTreeMap::new();
    for c in &s.classes {
        let key: Key = ("GatewayClass", String::new(), c.name.clone());
        let conditions = t.json(&key, "", &c.conditions, now);
        out.insert(key, json!({ "conditions": conditions }));
    }
    for g in &s.gateways {
        let key: Key = ("Gateway", g.namespace.clone(), g.name.clone());
        let conditions = t.json(&key, "", &g.conditions, now);
        let listeners: Vec<Value> = g
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "name": l.name,
                    "supportedKinds": l.supported_kinds,
                    "attachedRoutes": l.attached_routes,
                    "conditions": t.json(&key, &l.name, &l.conditions, now),
                })
            })
            .collect();
        out.insert(
            key,
            json!({ "addresses": g.addresses, "conditions": conditions, "listeners": listeners }),
        );
    }
    for r in &s.routes {
        let kind = match r.kind.as_str() {
            "TCPRoute" => "TCPRoute",
            "TLSRoute" => "TLSRoute",
            "GRPCRoute" => "GRPCRoute",
            _ => "HTTPRoute",
        };
        let key: Key = (kind, r.namespace.clone(), r.name.clone());
        let parents: Vec<Value> = r
            .parents
            .iter()
            .enumerate()
            .map(|(i, p)| {
                json!({
                    "parentRef": p.parent_ref,
                    "controllerName": p.controller_name,
                    "conditions": t.json(&key, &i.to_string(), &p.conditions, now),
                })
            })
            .collect();
        out.insert(key, Value::Array(parents));
    }
    out
}

fn api(client: &Client, key: &Key) -> Api<DynamicObject> {
    let ar = match key.0 {
        "GatewayClass" => resource("GatewayClass", "gatewayclasses"),
        "Gateway" => resource("Gateway", "gateways"),
        "TCPRoute" => resource("TCPRoute", "tcproutes"),
        "TLSRoute" => resource("TLSRoute", "tlsroutes"),
        "GRPCRoute" => resource("GRPCRoute", "grpcroutes"),
        _ => resource("HTTPRoute", "httproutes"),
    };
    if key.1.is_empty() {
        Api::all_with(client.clone(), &ar)
    } else {
        Api::namespaced_with(client.clone(), &key.1, &ar)
    }
}

/// A route's parents: the other controllers' entries as they are, then Weir's.
async fn route_parents(client: &Client, key: &Key, ours: &Value) -> Result<Value, kube::Error> {
    let current = api(client, key).get_status(&key.2).await?;
    let mut parents: Vec<Value> = current.data["status"]["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["controllerName"] != GATEWAY_CONTROLLER)
        .cloned()
        .collect();
    parents.extend(ours.as_array().into_iter().flatten().cloned());
    Ok(json!({ "parents": parents }))
}

fn is_route(key: &Key) -> bool {
    key.0.ends_with("Route")
}

async fn write(client: &Client, key: &Key, status: &Value) -> Result<(), kube::Error> {
    let body = if is_route(key) {
        route_parents(client, key, status).await?
    } else {
        status.clone()
    };
    api(client, key)
        .patch_status(
            &key.2,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": body })),
        )
        .await
        .map(|_| ())
}

/// The status without its timestamps, to tell whether anything changed.
fn untimed(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| *k != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), untimed(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(untimed).collect()),
        other => other.clone(),
    }
}

async fn run(client: Client, mut rx: watch::Receiver<GatewayStatuses>) {
    let mut transitions = Transitions::default();
    let mut written: BTreeMap<Key, Value> = BTreeMap::new();
    loop {
        let statuses = rx.borrow_and_update().clone();
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let want = desired(&statuses, &mut transitions, &now);
        // Routes Weir no longer serves lose Weir's parent entries.
        let gone: BTreeSet<Key> = written
            .keys()
            .filter(|k| is_route(k) && !want.contains_key(*k))
            .cloned()
            .collect();
        let mut failed = false;
        for key in gone {
            match write(&client, &key, &json!([])).await {
                Ok(()) => {
                    written.remove(&key);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    written.remove(&key);
                }
                Err(e) => {
                    warn!(route = %format!("{}/{}", key.1, key.2), "removing Weir's status.parents: {e}");
                    failed = true;
                }
            }
        }
        for (key, status) in &want {
            if written.get(key).map(untimed) == Some(untimed(status)) {
                continue;
            }
            let object = if key.1.is_empty() {
                format!("{} {}", key.0, key.2)
            } else {
                format!("{} {}/{}", key.0, key.1, key.2)
            };
            match write(&client, key, status).await {
                Ok(()) => {
                    info!(%object, "wrote the Gateway API status");
                    written.insert(key.clone(), status.clone());
                }
                Err(e) => {
                    warn!(%object, "writing status: {e}");
                    failed = true;
                }
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(5)), if failed => debug!("retrying Gateway API status"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::gateway_status::ClassStatus;

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_stays() {
        let mut t = Transitions::default();
        let class = |ok: bool, generation: i64| GatewayStatuses {
            classes: vec![ClassStatus {
                name: "weir".into(),
                conditions: vec![Condition::new("Accepted", ok, "Accepted", "", generation)],
            }],
            ..Default::default()
        };
        let time = |v: &BTreeMap<Key, Value>| {
            v.values().next().unwrap()["conditions"][0]["lastTransitionTime"].clone()
        };
        let first = desired(&class(true, 1), &mut t, "2026-12-02T00:00:00Z");
        let same = desired(&class(true, 2), &mut t, "2026-12-02T00:01:00Z");
        let flipped = desired(&class(false, 2), &mut t, "2026-12-02T00:02:00Z");
        assert_eq!(time(&first), "2026-12-02T00:00:00Z");
        assert_eq!(time(&same), "2026-12-02T00:00:00Z");
        assert_eq!(time(&flipped), "2026-12-02T00:02:00Z");
        assert_ne!(
            untimed(&first[&("GatewayClass", String::new(), "weir".into())]),
            untimed(&same[&("GatewayClass", String::new(), "weir".into())])
        );
    }
}
