//! k8s-openapi Ingress, IngressClass and Secret -> model, for the L7 proxy.
//! Structural errors (a backend without a service, an unknown path type)
//! reject the object and name the field; what only routing can judge (a
//! path that does not start with '/', a Secret that is missing or does not
//! parse) is left to `routes`, which skips just that rule or host.
use k8s_openapi::api::{
    core::v1::Secret as K8sSecret,
    networking::v1::{
        Ingress as K8sIngress, IngressBackend as K8sBackend, IngressClass as K8sClass,
    },
};

use super::convert::{object_ref, FieldError};
use crate::model::{
    Ingress, IngressBackend, IngressClass, IngressPath, IngressRule, IngressTls, PathType,
    ServicePortRef, TlsSecret,
};

/// The legacy annotation that names an Ingress's class (before spec.ingressClassName).
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Marks an IngressClass as the default for Ingresses without a class.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The Secret type that holds a certificate and its key.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

fn err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn backend(b: &K8sBackend, field: &str) -> Result<IngressBackend, FieldError> {
    let Some(svc) = &b.service else {
        return Err(err(
            field,
            if b.resource.is_some() {
                "resource backends are not supported (only service backends)"
            } else {
                "service is missing"
            },
        ));
    };
    if svc.name.is_empty() {
        return Err(err(format!("{field}.service.name"), "missing"));
    }
    let port_field = format!("{field}.service.port");
    let port = match &svc.port {
        Some(p) => match (&p.number, &p.name) {
            (Some(n), _) => ServicePortRef::Number(
                u16::try_from(*n).ok().filter(|n| *n != 0).ok_or_else(|| {
                    err(
                        format!("{port_field}.number"),
                        format!("port {n} out of range 1-65535"),
                    )
                })?,
            ),
            (None, Some(name)) if !name.is_empty() => ServicePortRef::Name(name.clone()),
            _ => return Err(err(port_field, "needs a number or a name")),
        },
        None => return Err(err(port_field, "missing")),
    };
    Ok(IngressBackend {
        service: svc.name.clone(),
        port,
    })
}

fn path_type(value: &str, field: &str) -> Result<PathType, FieldError> {
    match value {
        "Exact" => Ok(PathType::Exact),
        "Prefix" => Ok(PathType::Prefix),
        "ImplementationSpecific" => Ok(PathType::ImplementationSpecific),
        other => Err(err(
            field,
            format!("unknown path type {other:?} (Exact, Prefix or ImplementationSpecific)"),
        )),
    }
}

pub fn ingress(ing: &K8sIngress) -> Result<Ingress, FieldError> {
    let id = object_ref(&ing.metadata)?;
    let spec = ing.spec.clone().unwrap_or_default();
    let class_name = spec.ingress_class_name.clone().or_else(|| {
        ing.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
            .cloned()
    });
    let default_backend = match &spec.default_backend {
        Some(b) => Some(backend(b, "spec.defaultBackend")?),
        None => None,
    };
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().flatten().enumerate() {
        let mut paths = Vec::new();
        for (j, p) in r.http.iter().flat_map(|h| &h.paths).enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            paths.push(IngressPath {
                // An omitted path means "/" (the API defaults it so for Prefix).
                path: p.path.clone().unwrap_or_else(|| "/".into()),
                path_type: path_type(&p.path_type, &format!("{field}.pathType"))?,
                backend: backend(&p.backend, &format!("{field}.backend"))?,
            });
        }
        rules.push(IngressRule {
            host: r.host.clone().unwrap_or_default().to_ascii_lowercase(),
            paths,
        });
    }
    let tls = spec
        .tls
        .iter()
        .flatten()
        .map(|t| IngressTls {
            hosts: t
                .hosts
                .iter()
                .flatten()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            secret_name: t.secret_name.clone().filter(|s| !s.is_empty()),
        })
        .collect();
    Ok(Ingress {
        id,
        class_name,
        default_backend,
        tls,
        rules,
    })
}

pub fn ingress_class(class: &K8sClass) -> Result<IngressClass, FieldError> {
    let name = class
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err("metadata.name", "missing"))?;
    let is_default = class
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(IngressClass {
        name,
        controller: class
            .spec
            .as_ref()
            .and_then(|s| s.controller.clone())
            .unwrap_or_default(),
        is_default,
    })
}

/// A kubernetes.io/tls Secret; `Ok(None)` for Secrets of any other type.
/// Reads `data` (base64 in YAML) and, for hand-written manifests, `stringData`.
pub fn tls_secret(secret: &K8sSecret) -> Result<Option<TlsSecret>, FieldError> {
    if secret.type_.as_deref() != Some(TLS_SECRET_TYPE) {
        return Ok(None);
    }
    let id = object_ref(&secret.metadata)?;
    let get = |key: &str| -> Result<Vec<u8>, FieldError> {
        if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
            return Ok(v.0.clone());
        }
        if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
            return Ok(v.clone().into_bytes());
        }
        Err(err(format!("data.{key}"), "missing"))
    };
    Ok(Some(TlsSecret {
        id,
        cert_pem: get("tls.crt")?,
        key_pem: get("tls.key")?,
    }))
}
