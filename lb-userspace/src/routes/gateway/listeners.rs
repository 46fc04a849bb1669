//! Gateway listeners: which protocols are served, their route kinds,
//! conflicts, certificates, and their conditions.
use super::*;

/// The protocols Weir's proxy serves on a Gateway listener.
pub(super) fn served_protocol(protocol: &str) -> bool {
    !route_kinds_of(protocol).is_empty()
}

/// The route kinds a listener protocol carries.
pub(super) fn route_kinds_of(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "HTTP" | "HTTPS" => &[HTTP_ROUTE, GRPC_ROUTE],
        "TLS" => &["TLSRoute"],
        "TCP" => &["TCPRoute"],
        _ => &[],
    }
}

/// An HTTPS listener's certificate: the first of its certificateRefs that
/// resolves (a kubernetes.io/tls Secret, in another namespace only with a
/// ReferenceGrant), or the reason none does.
pub(super) fn listener_cert(
    state: &ClusterState,
    gw: &Gateway,
    l: &Listener,
) -> Result<Arc<CertifiedKey>, (&'static str, String)> {
    let Some(tls) = &l.tls else {
        return Err((
            "InvalidCertificateRef",
            "an HTTPS listener needs tls.certificateRefs".into(),
        ));
    };
    if tls.mode != "Terminate" {
        return Err((
            "InvalidCertificateRef",
            format!(
                "tls.mode {} is not served on HTTPS (Terminate is)",
                tls.mode
            ),
        ));
    }
    let mut first_error = (
        "InvalidCertificateRef",
        "tls.certificateRefs is empty".to_string(),
    );
    for (i, r) in tls.certificate_refs.iter().enumerate() {
        let field = format!("tls.certificateRefs[{i}]");
        let ns = r
            .namespace
            .clone()
            .unwrap_or_else(|| gw.id.namespace.to_string());
        let id = ObjectRef::new(&ns, &r.name);
        let result = if !(r.group.is_empty() && r.kind == "Secret") {
            Err((
                "InvalidCertificateRef",
                format!("{field}: {}/{} is not a Secret", r.group, r.kind),
            ))
        } else if !state.gateway.reference_allowed(
            "Gateway",
            &gw.id.namespace,
            "",
            "Secret",
            &ns,
            &r.name,
        ) {
            Err((
                "RefNotPermitted",
                format!(
                    "{field}: Secret {id} is in another namespace and no ReferenceGrant allows it"
                ),
            ))
        } else {
            match state.ingress.tls_secrets.get(&id) {
                None => Err((
                    "InvalidCertificateRef",
                    format!("{field}: Secret {id} (kubernetes.io/tls) not found"),
                )),
                Some(secret) => {
                    crate::routes::tls::certified_key(&secret.cert_pem, &secret.key_pem).map_err(
                        |e| {
                            (
                                "InvalidCertificateRef",
                                format!("{field}: Secret {id}: {e}"),
                            )
                        },
                    )
                }
            }
        };
        match result {
            Ok(key) => return Ok(key),
            Err(e) if i == 0 => first_error = e,
            Err(_) => {}
        }
    }
    Err(first_error)
}

/// Each listener's state: conflicts, supported kinds, Accepted and ResolvedRefs.
pub(super) fn listeners<'a>(state: &ClusterState, gw: &'a Gateway) -> Vec<ListenerState<'a>> {
    let generation = gw.meta.generation;
    let mut out = Vec::new();
    for l in &gw.listeners {
        let mut conditions = Vec::new();
        let same_port: Vec<&Listener> = gw
            .listeners
            .iter()
            .filter(|o| o.port == l.port && o.name != l.name)
            .collect();
        let protocol_conflict = same_port.iter().any(|o| o.protocol != l.protocol);
        let hostname_conflict = same_port
            .iter()
            .any(|o| o.protocol == l.protocol && o.hostname == l.hostname);
        let conflict = if protocol_conflict {
            Some((
                "ProtocolConflict",
                format!("another listener on port {} has another protocol", l.port),
            ))
        } else if hostname_conflict {
            Some((
                "HostnameConflict",
                format!("another listener on port {} has the same hostname", l.port),
            ))
        } else {
            None
        };
        conditions.push(match &conflict {
            None => Condition::new(
                "Conflicted",
                false,
                "NoConflicts",
                "no conflicts",
                generation,
            ),
            Some((reason, msg)) => {
                Condition::new("Conflicted", true, reason, msg.clone(), generation)
            }
        });
        let protocol_ok = served_protocol(&l.protocol);
        let hostname_ok = l.hostname.as_deref().is_none_or(matching::valid_host);
        conditions.push(if !protocol_ok {
            Condition::new(
                "Accepted",
                false,
                "UnsupportedProtocol",
                format!(
                    "protocol {} is not served (HTTP, HTTPS, TLS and TCP are)",
                    l.protocol
                ),
                generation,
            )
        } else if !hostname_ok {
            Condition::new(
                "Accepted",
                false,
                "UnsupportedValue",
                "invalid hostname",
                generation,
            )
        } else {
            Condition::new("Accepted", true, "Accepted", "accepted", generation)
        });
        // Route kinds: what the listener allows among what its protocol supports.
        let mut kinds = Vec::new();
        let mut invalid_kinds = Vec::new();
        let carried = route_kinds_of(&l.protocol);
        if l.allowed_routes.kinds.is_empty() {
            for kind in carried {
                kinds.push(RouteKind {
                    group: GROUP.into(),
                    kind: kind.to_string(),
                });
            }
        } else {
            for (group, kind) in &l.allowed_routes.kinds {
                if group == GROUP && carried.contains(&kind.as_str()) {
                    kinds.push(RouteKind {
                        group: group.clone(),
                        kind: kind.clone(),
                    });
                } else {
                    invalid_kinds.push(format!("{group}/{kind}"));
                }
            }
        }
        let terminates = l.protocol == "HTTPS"
            || (l.protocol == "TLS" && l.tls.as_ref().is_some_and(|t| t.mode == "Terminate"));
        let cert = terminates.then(|| listener_cert(state, gw, l));
        conditions.push(match (&cert, invalid_kinds.is_empty()) {
            (Some(Err((reason, msg))), _) => {
                Condition::new("ResolvedRefs", false, reason, msg.clone(), generation)
            }
            (_, false) => Condition::new(
                "ResolvedRefs",
                false,
                "InvalidRouteKinds",
                format!(
                    "route kinds not supported on this listener: {}",
                    invalid_kinds.join(", ")
                ),
                generation,
            ),
            _ => Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "all references resolved",
                generation,
            ),
        });
        let cert_ok = !matches!(cert, Some(Err(_)));
        out.push(ListenerState {
            listener: l,
            cert: cert.and_then(Result::ok),
            streams: Vec::new(),
            usable: protocol_ok && hostname_ok && conflict.is_none() && cert_ok,
            kinds,
            conditions,
            attached: 0,
            table: HostTable::new(HostRules::Gateway),
        });
    }
    out
}
