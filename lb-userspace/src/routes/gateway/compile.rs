//! HTTPRoute and GRPCRoute rules -> the shared model: matches, filters,
//! backends, precedence keys.
use super::*;

/// How specific a match is: (Exact path, prefix length, method, headers, query parameters).
pub(super) type Specificity = (bool, usize, bool, usize, usize);

/// Precedence among rules of one host entry; smaller sorts first: more
/// specific, then the older route, then rule and match order.
pub(super) type RankKey = (std::cmp::Reverse<Specificity>, usize, usize, usize);

/// A route compiled: its rules (with precedence keys), the first reference
/// that does not resolve, and the parts left out.
pub(super) struct CompiledRoute {
    pub(super) rules: Vec<(RankKey, Rule)>,
    pub(super) unresolved: Option<(&'static str, String)>,
    pub(super) problems: Vec<String>,
}

pub(super) fn compile_route(
    state: &ClusterState,
    cfg: &RouteConfig,
    upstreams: &mut Upstreams,
    route: &HttpRoute,
    order: usize,
) -> CompiledRoute {
    let mut out = CompiledRoute {
        rules: Vec::new(),
        unresolved: None,
        problems: Vec::new(),
    };
    for (ri, rule) in route.rules.iter().enumerate() {
        let field = format!("spec.rules[{ri}]");
        let rule_backends = backends(
            state,
            cfg,
            upstreams,
            if route.grpc { GRPC_ROUTE } else { HTTP_ROUTE },
            &route.id.namespace,
            &rule.backend_refs,
            &field,
            &mut out,
        );
        // RequestMirror backends resolve like backendRefs (a bad one is
        // reported and left out; the rule still serves).
        let mirror_refs: Vec<(crate::model::gateway::HttpBackendRef, u32)> = rule
            .filters
            .iter()
            .filter_map(|f| match f {
                HttpFilter::RequestMirror {
                    backend,
                    port,
                    percent,
                } => Some((
                    crate::model::gateway::HttpBackendRef {
                        target: backend.clone(),
                        port: *port,
                        weight: 1,
                        filters: Vec::new(),
                    },
                    *percent,
                )),
                _ => None,
            })
            .collect();
        let refs: Vec<_> = mirror_refs.iter().map(|(r, _)| r.clone()).collect();
        let resolved = backends(
            state,
            cfg,
            upstreams,
            if route.grpc { GRPC_ROUTE } else { HTTP_ROUTE },
            &route.id.namespace,
            &refs,
            &format!("{field}.filters(RequestMirror)"),
            &mut out,
        );
        let mirrors: Vec<Arc<Mirror>> = resolved
            .into_iter()
            .zip(&mirror_refs)
            .filter_map(|(b, (_, percent))| match b.target {
                Target::Upstream(u) => Some(Arc::new(Mirror::new(u, *percent))),
                Target::Invalid(_) => None,
            })
            .collect();
        let compiled = compile_rule(route, ri, rule, &field, rule_backends, mirrors);
        match compiled {
            Ok(rules) => {
                for (mi, (key, r)) in rules.into_iter().enumerate() {
                    out.rules.push(((std::cmp::Reverse(key), order, ri, mi), r));
                }
            }
            Err(problem) => out
                .problems
                .push(format!("{field}: {problem}; rule skipped")),
        }
    }
    out
}

/// The backends of a rule of a `route_kind` route in `route_ns`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backends(
    state: &ClusterState,
    cfg: &RouteConfig,
    upstreams: &mut Upstreams,
    route_kind: &str,
    route_ns: &str,
    refs: &[crate::model::gateway::HttpBackendRef],
    field: &str,
    out: &mut CompiledRoute,
) -> Vec<WeightedBackend> {
    let gs = &state.gateway;
    let mut list = Vec::new();
    for (bi, b) in refs.iter().enumerate() {
        let bf = format!("{field}.backendRefs[{bi}]");
        let ns = b
            .target
            .namespace
            .clone()
            .unwrap_or_else(|| route_ns.to_string());
        let id = ObjectRef::new(&ns, &b.target.name);
        let resolved: Result<_, (&'static str, String)> = if !(b.target.group.is_empty()
            && b.target.kind == "Service")
        {
            Err((
                "InvalidKind",
                format!(
                    "{bf}: {}/{} is not a supported backend kind (Service)",
                    b.target.group, b.target.kind
                ),
            ))
        } else if !gs.reference_allowed(route_kind, route_ns, "", "Service", &ns, &b.target.name) {
            Err((
                "RefNotPermitted",
                format!(
                    "{bf}: Service {id} is in another namespace and no ReferenceGrant allows it"
                ),
            ))
        } else if let Some(port) = b.port {
            upstreams
                .get(
                    state,
                    &cfg.node_name,
                    id.clone(),
                    &ServicePortRef::Number(port),
                    route_kind == GRPC_ROUTE,
                )
                .map_err(|reason| ("BackendNotFound", format!("{bf}: {reason}")))
        } else {
            Err((
                "UnsupportedValue",
                format!("{bf}.port: missing (a Service backend needs a port)"),
            ))
        };
        let target = match resolved {
            Ok(u) => Target::Upstream(u),
            Err((reason, msg)) => {
                if out.unresolved.is_none() {
                    out.unresolved = Some((reason, msg.clone()));
                }
                Target::Invalid(msg)
            }
        };
        let filters = match filters(&b.filters, &format!("{bf}.filters"), None) {
            Ok(f) => f,
            Err(problem) => {
                out.problems.push(problem.clone());
                list.push(WeightedBackend {
                    target: Target::Invalid(problem),
                    weight: b.weight,
                    filters: Filters::default(),
                });
                continue;
            }
        };
        list.push(WeightedBackend {
            target,
            weight: b.weight,
            filters,
        });
    }
    list
}

/// The rules of one route rule (one per match), each with its precedence
/// key: (Exact, prefix length, method, headers, query parameters).
pub(super) fn compile_rule(
    route: &HttpRoute,
    ri: usize,
    rule: &HttpRouteRule,
    field: &str,
    backends: Vec<WeightedBackend>,
    mirrors: Vec<Arc<Mirror>>,
) -> Result<Vec<(Specificity, Rule)>, String> {
    let mut matchers = Vec::new();
    for (mi, m) in rule.matches.iter().enumerate() {
        matchers.push(matcher(m, &format!("{field}.matches[{mi}]"))?);
    }
    let prefix_only = rule
        .matches
        .iter()
        .all(|m| m.path_kind == MatchKind::PathPrefix);
    let mut filters = filters(
        &rule.filters,
        &format!("{field}.filters"),
        Some(prefix_only),
    )?;
    filters.mirrors = mirrors;
    let ms = |v: Option<u64>| v.map(Duration::from_millis);
    let action = Arc::new(Action {
        filters,
        backends: Backends::new(backends),
        origin: Origin {
            kind: if route.grpc { GRPC_ROUTE } else { HTTP_ROUTE },
            object: route.id.clone(),
            rule: Some(ri),
        },
        request_timeout: ms(rule.request_timeout_ms),
        backend_timeout: ms(rule.backend_timeout_ms),
        retry: rule.retry.as_ref().map(|r| crate::routes::rule::Retry {
            codes: r.codes.clone(),
            attempts: r.attempts,
            backoff: Duration::from_millis(r.backoff_ms),
        }),
    });
    Ok(matchers
        .into_iter()
        .zip(&rule.matches)
        .map(|(matcher, m)| {
            let key = (
                m.path_kind == MatchKind::Exact,
                match m.path_kind {
                    MatchKind::Exact | MatchKind::PathPrefix => m.path.trim_end_matches('/').len(),
                    MatchKind::RegularExpression => 0,
                },
                m.method.is_some(),
                m.headers.len(),
                m.query.len(),
            );
            (
                key,
                Rule {
                    matcher,
                    action: action.clone(),
                },
            )
        })
        .collect())
}

pub(super) fn anchored(pattern: &str, field: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("{field}: invalid regular expression {pattern:?}: {e}"))
}

pub(super) fn value_match(kind: MatchKind, value: &str, field: &str) -> Result<ValueMatch, String> {
    match kind {
        MatchKind::RegularExpression => anchored(value, field).map(ValueMatch::Regex),
        _ => Ok(ValueMatch::Exact(value.to_string())),
    }
}

pub(super) fn matcher(m: &HttpMatch, field: &str) -> Result<RequestMatch, String> {
    if !m.path.starts_with('/') && m.path_kind != MatchKind::RegularExpression {
        return Err(format!(
            "{field}.path.value: {:?} must start with '/'",
            m.path
        ));
    }
    let path = match m.path_kind {
        MatchKind::Exact => PathMatch::Exact(m.path.clone()),
        MatchKind::PathPrefix => PathMatch::Prefix(matching::prefix_key(&m.path)),
        MatchKind::RegularExpression => {
            PathMatch::Regex(m.path.clone(), anchored(&m.path, &format!("{field}.path"))?)
        }
    };
    let mut headers = Vec::new();
    for (i, (kind, name, value)) in m.headers.iter().enumerate() {
        let f = format!("{field}.headers[{i}]");
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{f}.name: invalid header name {name:?}"))?;
        headers.push((name, value_match(*kind, value, &f)?));
    }
    let mut query = Vec::new();
    for (i, (kind, name, value)) in m.query.iter().enumerate() {
        query.push((
            name.clone(),
            value_match(*kind, value, &format!("{field}.queryParams[{i}]"))?,
        ));
    }
    let method = m
        .method
        .as_ref()
        .map(|s| {
            Method::from_bytes(s.as_bytes())
                .map_err(|_| format!("{field}.method: invalid method {s:?}"))
        })
        .transpose()?;
    Ok(RequestMatch {
        path,
        headers,
        query,
        method,
    })
}

pub(super) fn header_edit(m: &HeaderModifier, field: &str) -> Result<HeaderEdit, String> {
    let pair =
        |(n, v): &(String, String), what: &str| -> Result<(HeaderName, HeaderValue), String> {
            Ok((
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("{field}.{what}: invalid header name {n:?}"))?,
                HeaderValue::from_str(v)
                    .map_err(|_| format!("{field}.{what}: invalid value for {n}"))?,
            ))
        };
    Ok(HeaderEdit {
        set: m
            .set
            .iter()
            .map(|p| pair(p, "set"))
            .collect::<Result<_, _>>()?,
        add: m
            .add
            .iter()
            .map(|p| pair(p, "add"))
            .collect::<Result<_, _>>()?,
        remove: m
            .remove
            .iter()
            .map(|n| {
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("{field}.remove: invalid header name {n:?}"))
            })
            .collect::<Result<_, _>>()?,
    })
}

pub(super) fn path_rewrite(
    p: &PathModifier,
    prefix_only: Option<bool>,
    field: &str,
) -> Result<PathRewrite, String> {
    Ok(match p {
        PathModifier::ReplaceFullPath(v) => PathRewrite::Full(v.clone()),
        PathModifier::ReplacePrefixMatch(v) => {
            if prefix_only != Some(true) {
                return Err(format!(
                    "{field}: ReplacePrefixMatch needs every match of the rule to be a PathPrefix"
                ));
            }
            PathRewrite::Prefix(v.clone())
        }
    })
}

/// A rule's (or a backend's) filters. `prefix_only`: whether every match
/// is a PathPrefix (None for backend filters, which cannot rewrite paths).
pub(super) fn filters(
    list: &[HttpFilter],
    field: &str,
    prefix_only: Option<bool>,
) -> Result<Filters, String> {
    let mut f = Filters::default();
    for (i, filter) in list.iter().enumerate() {
        let ff = format!("{field}[{i}]");
        let twice = |name: &str| format!("{ff}: a second {name} filter");
        match filter {
            HttpFilter::RequestHeaderModifier(m) => {
                if f.request_headers.is_some() {
                    return Err(twice("RequestHeaderModifier"));
                }
                f.request_headers = Some(header_edit(m, &format!("{ff}.requestHeaderModifier"))?);
            }
            HttpFilter::ResponseHeaderModifier(m) => {
                if f.response_headers.is_some() {
                    return Err(twice("ResponseHeaderModifier"));
                }
                f.response_headers = Some(header_edit(m, &format!("{ff}.responseHeaderModifier"))?);
            }
            HttpFilter::RequestRedirect(r) if prefix_only.is_some() => {
                if f.redirect.is_some() {
                    return Err(twice("RequestRedirect"));
                }
                f.redirect = Some(RedirectTo {
                    scheme: r.scheme.clone(),
                    hostname: r.hostname.clone(),
                    port: r.port,
                    path: r
                        .path
                        .as_ref()
                        .map(|p| {
                            path_rewrite(p, prefix_only, &format!("{ff}.requestRedirect.path"))
                        })
                        .transpose()?,
                    status: r.status_code,
                });
            }
            HttpFilter::UrlRewrite { hostname, path } if prefix_only.is_some() => {
                if f.rewrite_host.is_some() || f.rewrite_path.is_some() {
                    return Err(twice("URLRewrite"));
                }
                f.rewrite_host = hostname.clone();
                f.rewrite_path = path
                    .as_ref()
                    .map(|p| path_rewrite(p, prefix_only, &format!("{ff}.urlRewrite.path")))
                    .transpose()?;
            }
            HttpFilter::RequestRedirect(_) | HttpFilter::UrlRewrite { .. } => {
                return Err(format!(
                    "{ff}: only header modifiers are supported on a backendRef"
                ));
            }
            // Resolved with the backends (`compile_route`).
            HttpFilter::RequestMirror { .. } if prefix_only.is_some() => {}
            HttpFilter::RequestMirror { .. } => {
                return Err(format!(
                    "{ff}: only header modifiers are supported on a backendRef"
                ));
            }
            HttpFilter::Unsupported(kind) => {
                return Err(format!("{ff}.type: filter {kind} is not supported"));
            }
        }
    }
    if f.redirect.is_some() && (f.rewrite_host.is_some() || f.rewrite_path.is_some()) {
        return Err(format!(
            "{field}: RequestRedirect and URLRewrite cannot be combined"
        ));
    }
    Ok(f)
}
