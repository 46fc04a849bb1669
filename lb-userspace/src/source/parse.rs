//! Multi-document Kubernetes YAML -> model objects. Pure: text in, objects
//! and per-document errors out. A bad document never hides the good ones.
use std::{fmt, time::SystemTime};

use serde::Deserialize;

use super::convert::{self, FieldError};
use super::{convert_gateway, convert_ingress, gateway_api};
use crate::model::{
    gateway::{Gateway, GatewayClass, HttpRoute, ReferenceGrant, StreamKind, StreamRoute},
    EndpointSlice, Ingress, IngressClass, Node, ObjectRef, Service, TlsSecret,
};

/// An object Weir understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Node(Node),
    Ingress(Ingress),
    IngressClass(IngressClass),
    TlsSecret(TlsSecret),
    GatewayClass(GatewayClass),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    ReferenceGrant(ReferenceGrant),
    /// A TCPRoute or TLSRoute.
    StreamRoute(StreamRoute),
    /// A Namespace's labels (for Gateway allowedRoutes selectors).
    Namespace(String, std::collections::BTreeMap<String, String>),
}

/// Why one document was skipped, with enough context to find it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DocumentError {
    pub file: String,
    /// 0-based index of the document in the file.
    pub document: usize,
    /// "Kind namespace/name" when known.
    pub object: Option<String>,
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.file, self.document)?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Parses every document of `text`. Documents of kinds Weir does not use are skipped silently.
pub fn parse_documents(file: &str, text: &str) -> (Vec<Object>, Vec<DocumentError>) {
    let (objects, errors, _) = parse_documents_timed(file, text);
    (objects, errors)
}

/// As `parse_documents`, plus the EndpointSlices' last-change trigger times
/// (the `endpoints.kubernetes.io/last-change-trigger-time` annotation).
pub fn parse_documents_timed(
    file: &str,
    text: &str,
) -> (
    Vec<Object>,
    Vec<DocumentError>,
    Vec<(ObjectRef, SystemTime)>,
) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let mut times = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let error = |object: Option<String>, field: Option<String>, reason: String| DocumentError {
            file: file.to_string(),
            document: index,
            object,
            field,
            reason,
        };
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(error(None, None, format!("invalid YAML: {e}")));
                // After a syntax error the stream cannot be resynchronised.
                break;
            }
        };
        match parse_value(value, &mut times) {
            Ok(Some(obj)) => objects.push(obj),
            Ok(None) => {}
            Err((object, e)) => errors.push(error(object, Some(e.field), e.reason)),
        }
    }
    (objects, errors, times)
}

type ParseError = (Option<String>, FieldError);

fn parse_value(
    value: serde_yaml::Value,
    times: &mut Vec<(ObjectRef, SystemTime)>,
) -> Result<Option<Object>, ParseError> {
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let label = describe(&kind, &value);
    let with_label = |e: FieldError| (label.clone(), e);
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => {
            let svc = typed::<k8s_openapi::api::core::v1::Service>(value).map_err(with_label)?;
            Ok(Some(Object::Service(
                convert::service(&svc).map_err(with_label)?,
            )))
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let slice = typed::<k8s_openapi::api::discovery::v1::EndpointSlice>(value)
                .map_err(with_label)?;
            let converted = convert::endpoint_slice(&slice).map_err(with_label)?;
            if let (Some(s), Some(t)) = (&converted, convert::trigger_time(&slice.metadata)) {
                times.push((s.id.clone(), t));
            }
            Ok(converted.map(Object::EndpointSlice))
        }
        ("v1", "Node") => {
            let node = typed::<k8s_openapi::api::core::v1::Node>(value).map_err(with_label)?;
            Ok(Some(Object::Node(
                convert::node(&node).map_err(with_label)?,
            )))
        }
        ("networking.k8s.io/v1", "Ingress" | "IngressClass") | ("v1", "Secret") => {
            parse_ingress_object(&kind, value).map_err(with_label)
        }
        ("v1", "Namespace") => {
            let ns = typed::<k8s_openapi::api::core::v1::Namespace>(value).map_err(with_label)?;
            let name = ns.metadata.name.unwrap_or_default();
            Ok(Some(Object::Namespace(
                name,
                ns.metadata.labels.unwrap_or_default(),
            )))
        }
        (
            "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1",
            "GatewayClass" | "Gateway" | "HTTPRoute" | "GRPCRoute" | "ReferenceGrant",
        ) => parse_gateway_object(&kind, value).map_err(with_label),
        // TCPRoute and TLSRoute: v1 in the v1.6 standard channel, earlier alpha.
        (
            "gateway.networking.k8s.io/v1"
            | "gateway.networking.k8s.io/v1alpha2"
            | "gateway.networking.k8s.io/v1alpha3",
            "TCPRoute" | "TLSRoute",
        ) => {
            let stream = if kind == "TCPRoute" {
                StreamKind::Tcp
            } else {
                StreamKind::Tls
            };
            let obj = typed::<gateway_api::Object<gateway_api::StreamRouteSpec>>(value)
                .map_err(with_label)?;
            Ok(Some(Object::StreamRoute(
                convert_gateway::stream_route(stream, &obj).map_err(with_label)?,
            )))
        }
        ("", _) | (_, "") => Err((
            label,
            FieldError {
                field: if api_version.is_empty() {
                    "apiVersion"
                } else {
                    "kind"
                }
                .into(),
                reason: "missing".into(),
            },
        )),
        _ => Ok(None),
    }
}

/// The objects of the L7 proxy: Ingress, IngressClass, kubernetes.io/tls Secret.
fn parse_ingress_object(
    kind: &str,
    value: serde_yaml::Value,
) -> Result<Option<Object>, FieldError> {
    use k8s_openapi::api::{core::v1::Secret, networking::v1 as net};
    Ok(match kind {
        "Ingress" => Some(Object::Ingress(convert_ingress::ingress(&typed::<
            net::Ingress,
        >(
            value
        )?)?)),
        "IngressClass" => Some(Object::IngressClass(convert_ingress::ingress_class(
            &typed::<net::IngressClass>(value)?,
        )?)),
        _ => convert_ingress::tls_secret(&typed::<Secret>(value)?)?.map(Object::TlsSecret),
    })
}

/// The Gateway API objects the proxy serves.
fn parse_gateway_object(
    kind: &str,
    value: serde_yaml::Value,
) -> Result<Option<Object>, FieldError> {
    use gateway_api::Object as O;
    Ok(Some(match kind {
        "GatewayClass" => Object::GatewayClass(convert_gateway::gateway_class(&typed::<
            O<gateway_api::GatewayClassSpec>,
        >(value)?)?),
        "Gateway" => Object::Gateway(convert_gateway::gateway(&typed::<
            O<gateway_api::GatewaySpec>,
        >(value)?)?),
        "GRPCRoute" => Object::HttpRoute(convert_gateway::grpc_route(&typed::<
            O<gateway_api::GrpcRouteSpec>,
        >(value)?)?),
        "HTTPRoute" => Object::HttpRoute(convert_gateway::http_route(&typed::<
            O<gateway_api::HttpRouteSpec>,
        >(value)?)?),
        _ => Object::ReferenceGrant(convert_gateway::reference_grant(&typed::<
            O<gateway_api::ReferenceGrantSpec>,
        >(value)?)?),
    }))
}

/// Deserialises into a k8s-openapi type, keeping the path of the failing field.
fn typed<T: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        FieldError {
            field: if path == "." {
                "(document)".into()
            } else {
                path
            },
            reason: e.into_inner().to_string(),
        }
    })
}

/// "Kind namespace/name" for messages, from whatever the document has.
fn describe(kind: &str, value: &serde_yaml::Value) -> Option<String> {
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    if matches!(kind, "Node" | "IngressClass" | "GatewayClass" | "Namespace") {
        return Some(format!("{kind} {name}"));
    }
    let ns = meta
        .get("namespace")
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    Some(format!("{kind} {ns}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_carry_their_trigger_time_annotation() {
        let slice = |name: &str, annotation: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: ns\n  labels: {{kubernetes.io/service-name: svc}}\n{annotation}addressType: IPv4\nendpoints: []\n"
            )
        };
        let text = [
            slice(
                "timed",
                "  annotations: {endpoints.kubernetes.io/last-change-trigger-time: \"2026-01-02T03:04:05.250Z\"}\n",
            ),
            slice("plain", ""),
            slice(
                "garbled",
                "  annotations: {endpoints.kubernetes.io/last-change-trigger-time: yesterday}\n",
            ),
        ]
        .join("---\n");
        let (objects, errors, times) = parse_documents_timed("f.yaml", &text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(objects.len(), 3);
        let expected = humantime::parse_rfc3339("2026-01-02T03:04:05.250Z").unwrap();
        assert_eq!(times, [(ObjectRef::new("ns", "timed"), expected)]);
    }
}
