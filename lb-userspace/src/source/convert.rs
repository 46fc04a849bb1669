//! k8s-openapi objects -> model, with validation. Each error names the field.
use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::{Node as K8sNode, Service as K8sService},
    discovery::v1::EndpointSlice as K8sSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{
    shared_name, Endpoint, EndpointPort, EndpointSlice, Family, Node, ObjectRef, Protocol, Service,
    ServicePort, ServiceType,
};

/// A conversion error: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The namespace/name of an object's metadata ("default" namespace when unset).
pub fn object_ref(meta: &ObjectMeta) -> Result<ObjectRef, FieldError> {
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err("metadata.name", "missing"))?;
    let namespace = meta
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    Ok(ObjectRef::new(namespace, name))
}

fn protocol(value: Option<&str>, field: &str) -> Result<Protocol, FieldError> {
    match value.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(err(
            field,
            format!("unknown protocol {other:?} (TCP, UDP or SCTP)"),
        )),
    }
}

fn port(value: i32, field: &str) -> Result<u16, FieldError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err(field, format!("port {value} out of range 1-65535")))
}

fn service_type(value: Option<&str>) -> Result<ServiceType, FieldError> {
    match value.unwrap_or("ClusterIP") {
        "ClusterIP" => Ok(ServiceType::ClusterIp),
        "NodePort" => Ok(ServiceType::NodePort),
        "LoadBalancer" => Ok(ServiceType::LoadBalancer),
        "ExternalName" => Ok(ServiceType::ExternalName),
        other => Err(err("spec.type", format!("unknown service type {other:?}"))),
    }
}

pub fn service(svc: &K8sService) -> Result<Service, FieldError> {
    let id = object_ref(&svc.metadata)?;
    let spec = svc.spec.clone().unwrap_or_default();
    let service_type = service_type(spec.type_.as_deref())?;
    // clusterIPs supersedes clusterIP when set; "None" marks a headless service.
    let ips: Vec<(String, String)> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.clone()))
            .collect(),
        (_, Some(ip)) => vec![("spec.clusterIP".into(), ip.clone())],
        _ => vec![],
    };
    let families = spec.ip_families.clone().unwrap_or_default();
    let (cluster_ips, problems) = cluster_ips(&ips, &families)?;
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        ports.push(ServicePort {
            name: p.name.clone().unwrap_or_default(),
            port: port(p.port, &field("port"))?,
            protocol: protocol(p.protocol.as_deref(), &field("protocol"))?,
            node_port: match p.node_port {
                Some(np) => Some(port(np, &field("nodePort"))?),
                None => None,
            },
            app_protocol: p.app_protocol.clone(),
        });
    }
    let external_ips = ip_list(
        spec.external_ips.iter().flatten().map(String::as_str),
        "spec.externalIPs",
    )?;
    let lb_ingress: Vec<String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| ingress.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default();
    let load_balancer_ips = ip_list(
        lb_ingress.iter().map(String::as_str),
        "status.loadBalancer.ingress",
    )?;
    let session_affinity_timeout = match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => None,
        "ClientIP" => Some(
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .map_or(DEFAULT_AFFINITY_TIMEOUT, i64::from),
        ),
        other => {
            return Err(err(
                "spec.sessionAffinity",
                format!("unknown value {other:?} (None or ClientIP)"),
            ))
        }
    };
    let policy_local = |value: Option<&str>, field: &str| match value.unwrap_or("Cluster") {
        "Cluster" => Ok(false),
        "Local" => Ok(true),
        other => Err(err(
            field,
            format!("unknown policy {other:?} (Cluster or Local)"),
        )),
    };
    Ok(Service {
        id,
        service_type,
        cluster_ips,
        ports,
        labels: svc.metadata.labels.clone().unwrap_or_default(),
        annotations: svc.metadata.annotations.clone().unwrap_or_default(),
        external_ips,
        load_balancer_ips,
        session_affinity_timeout,
        external_policy_local: policy_local(
            spec.external_traffic_policy.as_deref(),
            "spec.externalTrafficPolicy",
        )?,
        internal_policy_local: policy_local(
            spec.internal_traffic_policy.as_deref(),
            "spec.internalTrafficPolicy",
        )?,
        traffic_distribution: spec.traffic_distribution.clone(),
        health_check_node_port: match spec.health_check_node_port {
            Some(p) => Some(port(p, "spec.healthCheckNodePort")?),
            None => None,
        },
        source_ranges: source_ranges(
            spec.load_balancer_source_ranges
                .as_deref()
                .unwrap_or_default(),
            svc.metadata.annotations.as_ref(),
        )?,
        problems,
    })
}

/// The cluster IPs of `ips` (field, value), each checked against
/// spec.ipFamilies (`families`, by index; absent in older objects and
/// hand-written files, where an address's own family counts). An address of
/// the wrong family, or a second one of a family, is skipped with a problem
/// naming the field, so that the Service's other family is still served; an
/// address that does not parse fails the Service.
fn cluster_ips(
    ips: &[(String, String)],
    families: &[String],
) -> Result<(Vec<IpAddr>, Vec<String>), FieldError> {
    let mut out: Vec<IpAddr> = Vec::new();
    let mut problems = Vec::new();
    for (i, (field, ip)) in ips.iter().enumerate() {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let addr = ip
            .parse::<IpAddr>()
            .map_err(|_| err(field.as_str(), format!("invalid IP address {ip:?}")))?;
        let family = Family::of(addr);
        if let Some(wanted) = families.get(i) {
            if wanted != family.api_name() {
                problems.push(format!(
                    "{field}: {addr} is an {family} address but spec.ipFamilies[{i}] is {wanted:?}; that address is not served"
                ));
                continue;
            }
        }
        if out.iter().any(|a| Family::of(*a) == family) {
            problems.push(format!(
                "{field}: a second {family} cluster IP ({addr}); only the first is served"
            ));
            continue;
        }
        out.push(addr);
    }
    Ok((out, problems))
}

/// sessionAffinityConfig.clientIP.timeoutSeconds when unset (3 hours, as in the API).
pub const DEFAULT_AFFINITY_TIMEOUT: i64 = 10_800;

/// The addresses of a list field (either family).
fn ip_list<'a>(
    values: impl Iterator<Item = &'a str>,
    field: &str,
) -> Result<Vec<IpAddr>, FieldError> {
    let mut out = Vec::new();
    for (i, v) in values.enumerate() {
        let ip = v
            .parse::<IpAddr>()
            .map_err(|_| err(format!("{field}[{i}]"), format!("invalid IP address {v:?}")))?;
        out.push(ip);
    }
    Ok(out)
}

pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// loadBalancerSourceRanges, falling back to the annotation (comma-separated)
/// as kube-proxy does. An invalid entry fails the whole service: allowing
/// every client instead would silently open it.
fn source_ranges(
    spec: &[String],
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Vec<(IpAddr, u8)>, FieldError> {
    let (field, values): (String, Vec<&str>) = if spec.is_empty() {
        let value = annotations
            .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION))
            .map_or("", String::as_str);
        (
            format!("metadata.annotations[{SOURCE_RANGES_ANNOTATION}]"),
            value
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect(),
        )
    } else {
        (
            "spec.loadBalancerSourceRanges".into(),
            spec.iter().map(|s| s.trim()).collect(),
        )
    };
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let invalid = || err(format!("{field}[{i}]"), format!("invalid CIDR {v:?}"));
        let (addr, prefix) = v.split_once('/').ok_or_else(invalid)?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        let addr = addr.parse::<IpAddr>().map_err(|_| invalid())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(invalid());
        }
        out.push((addr, prefix));
    }
    Ok(out)
}

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// When the change that produced an EndpointSlice's content happened, as the
/// EndpointSlice controller records it (RFC 3339); the start of kube-proxy's
/// network programming latency.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The trigger-time annotation of an object, if present and valid (an invalid
/// one is ignored, as kube-proxy does).
pub fn trigger_time(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<std::time::SystemTime> {
    let value = meta.annotations.as_ref()?.get(TRIGGER_TIME_ANNOTATION)?;
    humantime::parse_rfc3339_weak(value.trim()).ok()
}

/// Converts an EndpointSlice. FQDN slices are `Ok(None)`: valid, but not
/// for a datapath of addresses. An address that is not of the slice's
/// addressType fails the slice (its Service's other slices, and the slices
/// of its other family, are still served).
pub fn endpoint_slice(slice: &K8sSlice) -> Result<Option<EndpointSlice>, FieldError> {
    let id = object_ref(&slice.metadata)?;
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        "FQDN" => return Ok(None),
        other => {
            return Err(err(
                "addressType",
                format!("unknown address type {other:?}"),
            ))
        }
    };
    let service_name = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned()
        .ok_or_else(|| err(format!("metadata.labels.{SERVICE_NAME_LABEL}"), "missing"))?;
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let field = |f: &str| format!("ports[{i}].{f}");
        // A port without a number means "all ports"; not meaningful for a ClusterIP service.
        let Some(number) = p.port else { continue };
        ports.push(EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            port: port(number, &field("port"))?,
            protocol: protocol(p.protocol.as_deref(), &field("protocol"))?,
        });
    }
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, e) in slice.endpoints.iter().enumerate() {
        // kube-proxy uses the first address of each endpoint.
        let first = e
            .addresses
            .first()
            .ok_or_else(|| err(format!("endpoints[{i}].addresses"), "empty"))?;
        let address = first
            .parse::<IpAddr>()
            .ok()
            .filter(|a| Family::of(*a) == family)
            .ok_or_else(|| {
                err(
                    format!("endpoints[{i}].addresses[0]"),
                    format!("{first:?} is not an {family} address (addressType {family})"),
                )
            })?;
        let c = e.conditions.clone().unwrap_or_default();
        let ready = c.ready.unwrap_or(true);
        endpoints.push(Endpoint {
            address,
            ready,
            // serving defaults to ready, terminating to false (API semantics).
            serving: c.serving.unwrap_or(ready),
            terminating: c.terminating.unwrap_or(false),
            node_name: e.node_name.as_deref().map(shared_name),
            zone: e.zone.as_deref().map(shared_name),
            hint_zones: e
                .hints
                .as_ref()
                .and_then(|h| h.for_zones.as_ref())
                .map(|zones| zones.iter().map(|z| shared_name(&z.name)).collect()),
        });
    }
    Ok(Some(EndpointSlice {
        id,
        service_name,
        family,
        ports,
        endpoints,
    }))
}

pub fn node(node: &K8sNode) -> Result<Node, FieldError> {
    let name = node
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err("metadata.name", "missing"))?;
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|list| {
            list.iter()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse::<IpAddr>().ok())
                .collect()
        })
        .unwrap_or_default();
    Ok(Node {
        name,
        labels: node.metadata.labels.clone().unwrap_or_default(),
        addresses,
    })
}
