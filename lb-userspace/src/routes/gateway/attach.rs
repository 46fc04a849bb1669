//! Which listeners a route attaches to (parentRefs, allowedRoutes, hostname
//! intersection), and its parent status.
use super::*;

pub(super) type Attached = Vec<(usize, Vec<String>)>;

/// Where a route attached: (gateway, listener, effective hostnames).
pub(super) type AttachedAt = (usize, usize, Vec<String>);

/// What parent status needs to know of a route of any kind.
pub(super) struct RouteView<'a> {
    pub(super) kind: &'static str,
    pub(super) id: &'a ObjectRef,
    pub(super) generation: i64,
    pub(super) parent_refs: &'a [crate::model::gateway::ParentRef],
    pub(super) hostnames: &'a [String],
    /// Every rule was left out.
    pub(super) none_valid: bool,
    pub(super) problems: &'a [String],
    pub(super) unresolved: &'a Option<(&'static str, String)>,
}

/// A route's status for each of its parents that is a Weir Gateway, and the
/// listeners it attaches to: (gateway, listener, effective hostnames).
pub(super) fn parent_statuses(
    gs: &GatewayState,
    gateways: &mut [GatewayBuild],
    route: &RouteView,
) -> (Vec<RouteParentStatus>, Vec<AttachedAt>) {
    let mut parents = Vec::new();
    let mut out = Vec::new();
    let generation = route.generation;
    for parent in route.parent_refs {
        if parent.group != GROUP || parent.kind != "Gateway" {
            continue;
        }
        let gw_ns = parent
            .namespace
            .clone()
            .unwrap_or_else(|| route.id.namespace.to_string());
        let gw_id = ObjectRef::new(&gw_ns, &parent.name);
        let Some(gi) = gateways.iter().position(|g| g.gw.id == gw_id) else {
            // Not a Gateway of Weir's: its controller writes this parent's status.
            continue;
        };
        let g = &mut gateways[gi];
        let (accepted, attached) = attach(gs, route, parent, g);
        let mut conditions = vec![match &accepted {
            Ok(()) if route.none_valid => Condition::new(
                "Accepted",
                false,
                "UnsupportedValue",
                route.problems.join("; "),
                generation,
            ),
            Ok(()) => Condition::new("Accepted", true, "Accepted", "attached", generation),
            Err((reason, msg)) => {
                Condition::new("Accepted", false, reason, msg.clone(), generation)
            }
        }];
        conditions.push(match route.unresolved {
            None => Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "all references resolved",
                generation,
            ),
            Some((reason, msg)) => {
                Condition::new("ResolvedRefs", false, reason, msg.clone(), generation)
            }
        });
        if !route.problems.is_empty() && !route.none_valid {
            conditions.push(Condition::new(
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                route.problems.join("; "),
                generation,
            ));
        }
        parents.push(RouteParentStatus {
            parent_ref: ParentReference {
                group: GROUP.into(),
                kind: "Gateway".into(),
                namespace: Some(gw_ns),
                name: parent.name.clone(),
                section_name: parent.section_name.clone(),
                port: parent.port,
            },
            controller_name: GATEWAY_CONTROLLER.into(),
            conditions,
        });
        for (li, hosts) in attached {
            g.listeners[li].attached += 1;
            out.push((gi, li, hosts));
        }
    }
    (parents, out)
}

/// Which listeners of `g` a route's parentRef attaches to, with the
/// effective hostnames on each; or why it attaches to none.
pub(super) fn attach(
    gs: &GatewayState,
    route: &RouteView,
    parent: &crate::model::gateway::ParentRef,
    g: &GatewayBuild,
) -> (Result<(), (&'static str, String)>, Attached) {
    let selected: Vec<(usize, &ListenerState)> = g
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            parent
                .section_name
                .as_ref()
                .is_none_or(|s| *s == l.listener.name)
        })
        .filter(|(_, l)| parent.port.is_none_or(|p| p == l.listener.port))
        .collect();
    if selected.is_empty() {
        return (
            Err((
                "NoMatchingParent",
                format!(
                    "Gateway {} has no listener{}{}",
                    g.gw.id,
                    parent
                        .section_name
                        .as_ref()
                        .map(|s| format!(" named {s:?}"))
                        .unwrap_or_default(),
                    parent
                        .port
                        .map(|p| format!(" on port {p}"))
                        .unwrap_or_default()
                ),
            )),
            Vec::new(),
        );
    }
    let allowed: Vec<&(usize, &ListenerState)> = selected
        .iter()
        .filter(|(_, l)| l.usable)
        .filter(|(_, l)| {
            l.kinds
                .iter()
                .any(|k| k.group == GROUP && k.kind == route.kind)
        })
        .filter(|(_, l)| {
            namespace_allowed(
                gs,
                &l.listener.allowed_routes.namespaces,
                &g.gw.id.namespace,
                &route.id.namespace,
            )
        })
        .collect();
    if allowed.is_empty() {
        return (
            Err((
                "NotAllowedByListeners",
                format!(
                    "no listener of Gateway {} allows a {} from namespace {}",
                    g.gw.id, route.kind, route.id.namespace
                ),
            )),
            Vec::new(),
        );
    }
    let mut attached = Vec::new();
    for (i, l) in allowed {
        // TCP listeners have no hostnames to intersect.
        let listener_host = match l.listener.protocol.as_str() {
            "TCP" => None,
            _ => l.listener.hostname.as_deref(),
        };
        let hosts = effective_hostnames(listener_host, route.hostnames);
        if !hosts.is_empty() {
            attached.push((*i, hosts));
        }
    }
    if attached.is_empty() {
        return (
            Err((
                "NoMatchingListenerHostname",
                "no hostname of the route matches a listener's hostname".into(),
            )),
            Vec::new(),
        );
    }
    (Ok(()), attached)
}

pub(super) fn namespace_allowed(
    gs: &GatewayState,
    from: &RouteNamespaces,
    gw_ns: &str,
    route_ns: &str,
) -> bool {
    match from {
        RouteNamespaces::All => true,
        RouteNamespaces::Same => gw_ns == route_ns,
        RouteNamespaces::Selector(sel) => gs
            .namespaces
            .get(route_ns)
            .is_some_and(|labels| sel.matches(labels)),
    }
}

/// The hostnames a route serves on a listener: "" for every host, or the
/// intersection of the listener's hostname and the route's.
pub fn effective_hostnames(listener: Option<&str>, route: &[String]) -> Vec<String> {
    match (listener, route.is_empty()) {
        (None, true) => vec![String::new()],
        (None, false) => route.to_vec(),
        (Some(l), true) => vec![l.to_string()],
        (Some(l), false) => {
            let mut out: Vec<String> = route.iter().filter_map(|r| intersect(l, r)).collect();
            out.sort();
            out.dedup();
            out
        }
    }
}

/// The more specific of two hostnames when one covers the other.
pub(super) fn intersect(a: &str, b: &str) -> Option<String> {
    if a == b {
        return Some(a.to_string());
    }
    // A wildcard covers an exact name under it, or a longer wildcard under it.
    let covers = |pattern: &str, name: &str| {
        matching::wildcard_suffix(pattern).is_some()
            && hostname_matches(pattern, name.strip_prefix("*.").unwrap_or(name))
    };
    if covers(a, b) {
        Some(b.to_string())
    } else if covers(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_intersect_as_the_spec_has_it() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            effective_hostnames(
                Some("very.specific.com"),
                &r(&[
                    "non.matching.com",
                    "*.nonmatchingwildcard.io",
                    "very.specific.com"
                ])
            ),
            ["very.specific.com"]
        );
        assert_eq!(
            effective_hostnames(
                Some("*.wildcard.io"),
                &r(&[
                    "non.matching.com",
                    "wildcard.io",
                    "foo.wildcard.io",
                    "bar.wildcard.io",
                    "foo.bar.wildcard.io"
                ])
            ),
            ["bar.wildcard.io", "foo.bar.wildcard.io", "foo.wildcard.io"]
        );
        assert_eq!(
            effective_hostnames(
                Some("very.specific.com"),
                &r(&["non.matching.com", "*.specific.com"])
            ),
            ["very.specific.com"]
        );
        assert_eq!(
            effective_hostnames(Some("*.anotherwildcard.io"), &r(&["*.anotherwildcard.io"])),
            ["*.anotherwildcard.io"]
        );
        assert_eq!(
            effective_hostnames(Some("*.io"), &r(&["*.wildcard.io"])),
            ["*.wildcard.io"]
        );
        assert!(effective_hostnames(
            Some("very.specific.com"),
            &r(&["specific.but.wrong.com", "wildcard.io"])
        )
        .is_empty());
        assert_eq!(effective_hostnames(None, &[]), [""]);
        assert_eq!(effective_hostnames(Some("a.com"), &[]), ["a.com"]);
    }
}
