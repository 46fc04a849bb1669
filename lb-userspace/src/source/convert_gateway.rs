//! Gateway API wire types -> model, with the API's defaults applied (what the
//! CRDs' defaulting would have filled in). A structural error (a port out of
//! range, an unknown match type) rejects the object and names the field;
//! what depends on other objects is left to `routes`, which reports it in
//! status.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::convert::{object_ref, FieldError};
use super::duration;
use super::gateway_api as api;
use crate::model::gateway::{
    AllowedRoutes, Gateway, GatewayClass, HeaderModifier, HttpBackendRef, HttpFilter, HttpMatch,
    HttpRoute, HttpRouteRule, LabelSelector, Listener, ListenerTls, MatchKind, Meta,
    ObjectReference, ParentRef, PathModifier, Redirect, ReferenceGrant, RetryPolicy,
    RouteNamespaces, StreamKind, StreamRoute, GROUP,
};

fn err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn meta(m: &ObjectMeta) -> Meta {
    Meta {
        generation: m.generation.unwrap_or(0),
        creation: m.creation_timestamp.as_ref().map(|t| t.0.to_string()),
    }
}

fn port(value: i64, field: &str) -> Result<u16, FieldError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err(field, format!("port {value} out of range 1-65535")))
}

pub fn gateway_class(obj: &api::Object<api::GatewayClassSpec>) -> Result<GatewayClass, FieldError> {
    let name = obj
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err("metadata.name", "missing"))?;
    Ok(GatewayClass {
        name,
        meta: meta(&obj.metadata),
        controller: obj.spec.controller_name.clone(),
    })
}

pub fn gateway(obj: &api::Object<api::GatewaySpec>) -> Result<Gateway, FieldError> {
    let id = object_ref(&obj.metadata)?;
    let mut listeners = Vec::new();
    for (i, l) in obj.spec.listeners.iter().enumerate() {
        let field = format!("spec.listeners[{i}]");
        if l.name.is_empty() {
            return Err(err(format!("{field}.name"), "missing"));
        }
        if listeners.iter().any(|o: &Listener| o.name == l.name) {
            return Err(err(
                format!("{field}.name"),
                format!("listener name {:?} is used twice", l.name),
            ));
        }
        listeners.push(Listener {
            name: l.name.clone(),
            hostname: l.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
            port: port(l.port, &format!("{field}.port"))?,
            protocol: l.protocol.clone(),
            tls: l.tls.as_ref().map(|t| ListenerTls {
                mode: t.mode.clone().unwrap_or_else(|| "Terminate".into()),
                certificate_refs: t
                    .certificate_refs
                    .iter()
                    .map(|r| reference(r, "", "Secret"))
                    .collect(),
            }),
            allowed_routes: allowed_routes(l.allowed_routes.as_ref(), &field)?,
        });
    }
    Ok(Gateway {
        id,
        meta: meta(&obj.metadata),
        class_name: obj.spec.gateway_class_name.clone(),
        listeners,
        addresses: obj
            .spec
            .addresses
            .iter()
            .map(|a| {
                (
                    a.kind.clone().unwrap_or_else(|| "IPAddress".into()),
                    a.value.clone(),
                )
            })
            .collect(),
    })
}

fn allowed_routes(
    a: Option<&api::AllowedRoutes>,
    field: &str,
) -> Result<AllowedRoutes, FieldError> {
    let Some(a) = a else {
        return Ok(AllowedRoutes::default());
    };
    let namespaces = match a.namespaces.as_ref() {
        None => RouteNamespaces::Same,
        Some(n) => match n.from.as_deref().unwrap_or("Same") {
            "Same" => RouteNamespaces::Same,
            "All" => RouteNamespaces::All,
            "Selector" => {
                let s = n.selector.as_ref().ok_or_else(|| {
                    err(
                        format!("{field}.allowedRoutes.namespaces.selector"),
                        "missing (from: Selector needs one)",
                    )
                })?;
                RouteNamespaces::Selector(LabelSelector {
                    match_labels: s.match_labels.clone(),
                    match_expressions: s
                        .match_expressions
                        .iter()
                        .map(|e| (e.key.clone(), e.operator.clone(), e.values.clone()))
                        .collect(),
                })
            }
            other => {
                return Err(err(
                    format!("{field}.allowedRoutes.namespaces.from"),
                    format!("unknown value {other:?} (All, Same or Selector)"),
                ))
            }
        },
    };
    Ok(AllowedRoutes {
        namespaces,
        kinds: a
            .kinds
            .iter()
            .map(|k| {
                (
                    k.group.clone().unwrap_or_else(|| GROUP.into()),
                    k.kind.clone(),
                )
            })
            .collect(),
    })
}

/// A reference with the API's defaults for its group and kind.
fn reference(r: &api::Reference, group: &str, kind: &str) -> ObjectReference {
    ObjectReference {
        group: r.group.clone().unwrap_or_else(|| group.into()),
        kind: r.kind.clone().unwrap_or_else(|| kind.into()),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
    }
}

fn lower_case(hosts: &[String]) -> Vec<String> {
    hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
}

fn parent_refs(refs: &[api::Reference]) -> Result<Vec<ParentRef>, FieldError> {
    let mut parent_refs = Vec::new();
    for (i, p) in refs.iter().enumerate() {
        let target = reference(p, GROUP, "Gateway");
        parent_refs.push(ParentRef {
            group: target.group,
            kind: target.kind,
            namespace: target.namespace,
            name: target.name,
            section_name: p.section_name.clone(),
            port: p
                .port
                .map(|v| port(v, &format!("spec.parentRefs[{i}].port")))
                .transpose()?,
        });
    }
    Ok(parent_refs)
}

pub fn http_route(obj: &api::Object<api::HttpRouteSpec>) -> Result<HttpRoute, FieldError> {
    let id = object_ref(&obj.metadata)?;
    let parent_refs = parent_refs(&obj.spec.parent_refs)?;
    let mut rules = Vec::new();
    for (i, r) in obj.spec.rules.iter().enumerate() {
        rules.push(http_rule(r, &format!("spec.rules[{i}]"))?);
    }
    Ok(HttpRoute {
        id,
        meta: meta(&obj.metadata),
        parent_refs,
        hostnames: lower_case(&obj.spec.hostnames),
        rules,
        grpc: false,
    })
}

/// A GRPCRoute, as an HTTP route: each method match becomes a path match
/// (gRPC calls are POSTs to /service/method), header matches stay, and the
/// backends are spoken to over HTTP/2.
pub fn grpc_route(obj: &api::Object<api::GrpcRouteSpec>) -> Result<HttpRoute, FieldError> {
    let id = object_ref(&obj.metadata)?;
    let mut rules = Vec::new();
    for (i, r) in obj.spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().enumerate() {
            let mf = format!("{field}.matches[{j}]");
            let (path_kind, path) = match &m.method {
                None => (MatchKind::PathPrefix, "/".to_string()),
                Some(method) => grpc_path(method, &format!("{mf}.method"))?,
            };
            let http = api::HttpMatch {
                path: None,
                headers: Vec::new(),
                query_params: Vec::new(),
                method: None,
            };
            let mut converted = http_match(&http, &mf)?;
            converted.path_kind = path_kind;
            converted.path = path;
            converted.headers = m
                .headers
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    let f = format!("{mf}.headers[{k}]");
                    Ok((
                        match_kind(v.kind.as_deref(), &f, MatchKind::Exact)?,
                        v.name
                            .clone()
                            .filter(|n| !n.is_empty())
                            .ok_or_else(|| err(format!("{f}.name"), "missing"))?,
                        v.value
                            .clone()
                            .ok_or_else(|| err(format!("{f}.value"), "missing"))?,
                    ))
                })
                .collect::<Result<_, FieldError>>()?;
            matches.push(converted);
        }
        if matches.is_empty() {
            matches.push(HttpMatch::default());
        }
        rules.push(HttpRouteRule {
            matches,
            filters: filters(&r.filters, &format!("{field}.filters"))?,
            backend_refs: backend_refs(&r.backend_refs, &field)?,
            request_timeout_ms: None,
            backend_timeout_ms: None,
            retry: None,
        });
    }
    Ok(HttpRoute {
        id,
        meta: meta(&obj.metadata),
        parent_refs: parent_refs(&obj.spec.parent_refs)?,
        hostnames: lower_case(&obj.spec.hostnames),
        rules,
        grpc: true,
    })
}

/// The path match of a GRPCRoute method match.
fn grpc_path(m: &api::GrpcMethod, field: &str) -> Result<(MatchKind, String), FieldError> {
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => {
            for (name, v) in [("service", service), ("method", method)] {
                if v.is_some_and(|v| v.contains('/')) {
                    return Err(err(format!("{field}.{name}"), "must not contain '/'"));
                }
            }
            Ok(match (service, method) {
                (Some(s), Some(m)) => (MatchKind::Exact, format!("/{s}/{m}")),
                (Some(s), None) => (MatchKind::PathPrefix, format!("/{s}")),
                (None, Some(m)) => (
                    MatchKind::RegularExpression,
                    format!("/[^/]+/{}", regex::escape(m)),
                ),
                (None, None) => return Err(err(field, "needs a service or a method")),
            })
        }
        "RegularExpression" => Ok((
            MatchKind::RegularExpression,
            format!(
                "/(?:{})/(?:{})",
                service.unwrap_or("[^/]+"),
                method.unwrap_or("[^/]+")
            ),
        )),
        other => Err(err(
            format!("{field}.type"),
            format!("unknown match type {other:?}"),
        )),
    }
}

fn http_rule(r: &api::HttpRouteRule, field: &str) -> Result<HttpRouteRule, FieldError> {
    let mut matches = Vec::new();
    for (j, m) in r.matches.iter().enumerate() {
        matches.push(http_match(m, &format!("{field}.matches[{j}]"))?);
    }
    if matches.is_empty() {
        matches.push(HttpMatch::default());
    }
    let rule_filters = filters(&r.filters, &format!("{field}.filters"))?;
    let backend_refs = backend_refs(&r.backend_refs, field)?;
    let timeout = |v: Option<&String>, name: &str| -> Result<Option<u64>, FieldError> {
        v.map(|s| {
            duration::parse(s)
                .map(|d| d.as_millis() as u64)
                .map_err(|e| err(format!("{field}.timeouts.{name}"), e.to_string()))
        })
        .transpose()
    };
    Ok(HttpRouteRule {
        matches,
        filters: rule_filters,
        backend_refs,
        request_timeout_ms: timeout(
            r.timeouts.as_ref().and_then(|t| t.request.as_ref()),
            "request",
        )?,
        backend_timeout_ms: timeout(
            r.timeouts.as_ref().and_then(|t| t.backend_request.as_ref()),
            "backendRequest",
        )?,
        retry: r
            .retry
            .as_ref()
            .map(|rt| retry(rt, &format!("{field}.retry")))
            .transpose()?,
    })
}

fn retry(r: &api::Retry, field: &str) -> Result<RetryPolicy, FieldError> {
    let mut codes = Vec::new();
    for (i, c) in r.codes.iter().enumerate() {
        codes.push(
            u16::try_from(*c)
                .ok()
                .filter(|c| (400..=599).contains(c))
                .ok_or_else(|| {
                    err(
                        format!("{field}.codes[{i}]"),
                        format!("{c} is not a 4xx or 5xx status"),
                    )
                })?,
        );
    }
    let attempts = r.attempts.unwrap_or(1);
    if !(0..=10).contains(&attempts) {
        return Err(err(
            format!("{field}.attempts"),
            format!("{attempts} out of range 0-10"),
        ));
    }
    let backoff_ms = match &r.backoff {
        None => 0,
        Some(b) => duration::parse(b)
            .map_err(|e| err(format!("{field}.backoff"), e.to_string()))?
            .as_millis()
            .min(10_000) as u64,
    };
    Ok(RetryPolicy {
        codes,
        attempts: attempts as u32,
        backoff_ms,
    })
}

fn backend_refs(refs: &[api::Reference], field: &str) -> Result<Vec<HttpBackendRef>, FieldError> {
    let mut backend_refs = Vec::new();
    for (j, b) in refs.iter().enumerate() {
        let bf = format!("{field}.backendRefs[{j}]");
        let weight = b.weight.unwrap_or(1);
        if !(0..=1_000_000).contains(&weight) {
            return Err(err(
                format!("{bf}.weight"),
                format!("{weight} out of range 0-1000000"),
            ));
        }
        backend_refs.push(HttpBackendRef {
            target: reference(b, "", "Service"),
            port: b.port.map(|v| port(v, &format!("{bf}.port"))).transpose()?,
            weight: weight as u32,
            filters: filters(&b.filters, &format!("{bf}.filters"))?,
        });
    }
    Ok(backend_refs)
}

fn match_kind(
    kind: Option<&str>,
    field: &str,
    default: MatchKind,
) -> Result<MatchKind, FieldError> {
    Ok(match kind {
        None => default,
        Some("Exact") => MatchKind::Exact,
        Some("PathPrefix") if default == MatchKind::PathPrefix => MatchKind::PathPrefix,
        Some("RegularExpression") => MatchKind::RegularExpression,
        Some(other) => {
            return Err(err(
                format!("{field}.type"),
                format!("unknown match type {other:?}"),
            ))
        }
    })
}

fn http_match(m: &api::HttpMatch, field: &str) -> Result<HttpMatch, FieldError> {
    let (path_kind, path) = match &m.path {
        None => (MatchKind::PathPrefix, "/".to_string()),
        Some(p) => (
            match_kind(
                p.kind.as_deref(),
                &format!("{field}.path"),
                MatchKind::PathPrefix,
            )?,
            p.value.clone().unwrap_or_else(|| "/".into()),
        ),
    };
    let named = |list: &[api::ValueMatch], what: &str| {
        list.iter()
            .enumerate()
            .map(|(k, v)| {
                let f = format!("{field}.{what}[{k}]");
                let name = v
                    .name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| err(format!("{f}.name"), "missing"))?;
                let value = v
                    .value
                    .clone()
                    .ok_or_else(|| err(format!("{f}.value"), "missing"))?;
                Ok((
                    match_kind(v.kind.as_deref(), &f, MatchKind::Exact)?,
                    name,
                    value,
                ))
            })
            .collect::<Result<Vec<_>, FieldError>>()
    };
    Ok(HttpMatch {
        path_kind,
        path,
        headers: named(&m.headers, "headers")?,
        query: named(&m.query_params, "queryParams")?,
        method: m.method.clone(),
    })
}

fn header_modifier(m: &api::HeaderModifier) -> HeaderModifier {
    let pairs = |l: &[api::NameValue]| {
        l.iter()
            .map(|nv| (nv.name.clone(), nv.value.clone()))
            .collect()
    };
    HeaderModifier {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.clone(),
    }
}

fn path_modifier(p: &api::PathModifier, field: &str) -> Result<PathModifier, FieldError> {
    match p.kind.as_str() {
        "ReplaceFullPath" => Ok(PathModifier::ReplaceFullPath(
            p.replace_full_path
                .clone()
                .ok_or_else(|| err(format!("{field}.replaceFullPath"), "missing"))?,
        )),
        "ReplacePrefixMatch" => Ok(PathModifier::ReplacePrefixMatch(
            p.replace_prefix_match
                .clone()
                .ok_or_else(|| err(format!("{field}.replacePrefixMatch"), "missing"))?,
        )),
        other => Err(err(
            format!("{field}.type"),
            format!("unknown path modifier {other:?}"),
        )),
    }
}

fn filters(list: &[api::HttpFilter], field: &str) -> Result<Vec<HttpFilter>, FieldError> {
    let mut out = Vec::new();
    for (k, f) in list.iter().enumerate() {
        let ff = format!("{field}[{k}]");
        let missing = |name: &str| {
            err(
                format!("{ff}.{name}"),
                format!("missing for type {}", f.kind),
            )
        };
        out.push(match f.kind.as_str() {
            "RequestHeaderModifier" => HttpFilter::RequestHeaderModifier(header_modifier(
                f.request_header_modifier
                    .as_ref()
                    .ok_or_else(|| missing("requestHeaderModifier"))?,
            )),
            "ResponseHeaderModifier" => HttpFilter::ResponseHeaderModifier(header_modifier(
                f.response_header_modifier
                    .as_ref()
                    .ok_or_else(|| missing("responseHeaderModifier"))?,
            )),
            "RequestRedirect" => {
                let r = f
                    .request_redirect
                    .as_ref()
                    .ok_or_else(|| missing("requestRedirect"))?;
                let rf = format!("{ff}.requestRedirect");
                HttpFilter::RequestRedirect(Redirect {
                    scheme: r.scheme.clone(),
                    hostname: r.hostname.clone(),
                    path: r
                        .path
                        .as_ref()
                        .map(|p| path_modifier(p, &format!("{rf}.path")))
                        .transpose()?,
                    port: r.port.map(|p| port(p, &format!("{rf}.port"))).transpose()?,
                    status_code: match r.status_code.unwrap_or(302) {
                        c @ (301 | 302 | 303 | 307 | 308) => c as u16,
                        c => {
                            return Err(err(
                                format!("{rf}.statusCode"),
                                format!("{c} is not a redirect status (301, 302, 303, 307, 308)"),
                            ))
                        }
                    },
                })
            }
            "URLRewrite" => {
                let r = f
                    .url_rewrite
                    .as_ref()
                    .ok_or_else(|| missing("urlRewrite"))?;
                HttpFilter::UrlRewrite {
                    hostname: r.hostname.clone(),
                    path: r
                        .path
                        .as_ref()
                        .map(|p| path_modifier(p, &format!("{ff}.urlRewrite.path")))
                        .transpose()?,
                }
            }
            "RequestMirror" => {
                let m = f
                    .request_mirror
                    .as_ref()
                    .ok_or_else(|| missing("requestMirror"))?;
                let mf = format!("{ff}.requestMirror");
                let percent = match (m.percent, &m.fraction) {
                    (Some(p), _) => p,
                    (None, Some(fr)) => {
                        let d = fr.denominator.unwrap_or(100);
                        if d <= 0 || fr.numerator < 0 || fr.numerator > d {
                            return Err(err(
                                format!("{mf}.fraction"),
                                "needs 0 <= numerator <= denominator, denominator > 0",
                            ));
                        }
                        fr.numerator * 100 / d
                    }
                    (None, None) => 100,
                };
                if !(0..=100).contains(&percent) {
                    return Err(err(
                        format!("{mf}.percent"),
                        format!("{percent} out of range 0-100"),
                    ));
                }
                HttpFilter::RequestMirror {
                    backend: reference(&m.backend_ref, "", "Service"),
                    port: m
                        .backend_ref
                        .port
                        .map(|p| port(p, &format!("{mf}.backendRef.port")))
                        .transpose()?,
                    percent: percent as u32,
                }
            }
            other => HttpFilter::Unsupported(other.to_string()),
        });
    }
    Ok(out)
}

pub fn reference_grant(
    obj: &api::Object<api::ReferenceGrantSpec>,
) -> Result<ReferenceGrant, FieldError> {
    Ok(ReferenceGrant {
        id: object_ref(&obj.metadata)?,
        from: obj
            .spec
            .from
            .iter()
            .map(|f| (f.group.clone(), f.kind.clone(), f.namespace.clone()))
            .collect(),
        to: obj
            .spec
            .to
            .iter()
            .map(|t| (t.group.clone(), t.kind.clone(), t.name.clone()))
            .collect(),
    })
}

/// A TCPRoute (`kind` Tcp) or TLSRoute (Tls).
pub fn stream_route(
    kind: StreamKind,
    obj: &api::Object<api::StreamRouteSpec>,
) -> Result<StreamRoute, FieldError> {
    let mut rules = Vec::new();
    for (i, r) in obj.spec.rules.iter().enumerate() {
        let refs = backend_refs(&r.backend_refs, &format!("spec.rules[{i}]"))?;
        if let Some(j) = refs.iter().position(|b| !b.filters.is_empty()) {
            return Err(err(
                format!("spec.rules[{i}].backendRefs[{j}].filters"),
                "filters are not part of this route kind",
            ));
        }
        rules.push(refs);
    }
    Ok(StreamRoute {
        kind,
        id: object_ref(&obj.metadata)?,
        meta: meta(&obj.metadata),
        parent_refs: parent_refs(&obj.spec.parent_refs)?,
        hostnames: lower_case(&obj.spec.hostnames),
        rules,
    })
}
