//! The kube source's Gateway API watches: GatewayClasses, Gateways,
//! HTTPRoutes, GRPCRoutes, TCPRoutes, TLSRoutes and ReferenceGrants (gateway.networking.k8s.io/v1, read as
//! dynamic objects through the same wire types as the directory source), and
//! Namespaces (their labels, for allowedRoutes selectors). An API that is not
//! installed is not served, with one log line (`kube::watch`).
use kube::{
    api::{Api, ApiResource, DynamicObject},
    runtime::{reflector::store::Writer, reflector::Store, watcher},
    Client,
};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinSet};

use super::{
    convert::{object_ref, FieldError},
    convert_gateway, gateway_api,
    kube::{start_watch_with, Cache, Kind, KubeSourceConfig, Notice},
};
use crate::model::{
    gateway::{Gateway, GatewayClass, HttpRoute, ReferenceGrant, StreamKind, StreamRoute, GROUP},
    ClusterState,
};

/// The v1 resource of a Gateway API kind.
pub fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: "v1".into(),
        api_version: format!("{GROUP}/v1"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub(super) struct GatewayStores {
    classes: Store<DynamicObject>,
    gateways: Store<DynamicObject>,
    routes: Store<DynamicObject>,
    grpc_routes: Store<DynamicObject>,
    grants: Store<DynamicObject>,
    tcp_routes: Store<DynamicObject>,
    tls_routes: Store<DynamicObject>,
    namespaces: Store<k8s_openapi::api::core::v1::Namespace>,
    class_cache: Cache<GatewayClass>,
    gateway_cache: Cache<Gateway>,
    route_cache: Cache<HttpRoute>,
    grpc_cache: Cache<HttpRoute>,
    grant_cache: Cache<ReferenceGrant>,
    tcp_cache: Cache<StreamRoute>,
    tls_cache: Cache<StreamRoute>,
}

fn dynamic(
    watchers: &mut JoinSet<()>,
    client: &Client,
    kind: Kind,
    ar: ApiResource,
    cfg: &KubeSourceConfig,
    notices: &mpsc::UnboundedSender<Notice>,
) -> Store<DynamicObject> {
    start_watch_with(
        watchers,
        kind,
        Api::<DynamicObject>::all_with(client.clone(), &ar),
        watcher::Config::default(),
        Writer::new(ar),
        cfg,
        notices.clone(),
    )
}

/// A dynamic object as the wire type `O` (the path of a failing field kept).
fn typed<O: DeserializeOwned>(obj: &DynamicObject) -> Result<O, FieldError> {
    let value = serde_json::to_value(obj).map_err(|e| FieldError {
        field: "(object)".into(),
        reason: e.to_string(),
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| FieldError {
        field: e.path().to_string(),
        reason: e.into_inner().to_string(),
    })
}

impl GatewayStores {
    pub(super) fn start(
        watchers: &mut JoinSet<()>,
        client: Client,
        cfg: &KubeSourceConfig,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Self {
        Self {
            classes: dynamic(
                watchers,
                &client,
                Kind::GatewayClass,
                resource("GatewayClass", "gatewayclasses"),
                cfg,
                &notices,
            ),
            gateways: dynamic(
                watchers,
                &client,
                Kind::Gateway,
                resource("Gateway", "gateways"),
                cfg,
                &notices,
            ),
            routes: dynamic(
                watchers,
                &client,
                Kind::HttpRoute,
                resource("HTTPRoute", "httproutes"),
                cfg,
                &notices,
            ),
            grants: dynamic(
                watchers,
                &client,
                Kind::ReferenceGrant,
                resource("ReferenceGrant", "referencegrants"),
                cfg,
                &notices,
            ),
            grpc_routes: dynamic(
                watchers,
                &client,
                Kind::GrpcRoute,
                resource("GRPCRoute", "grpcroutes"),
                cfg,
                &notices,
            ),
            tcp_routes: dynamic(
                watchers,
                &client,
                Kind::TcpRoute,
                resource("TCPRoute", "tcproutes"),
                cfg,
                &notices,
            ),
            tls_routes: dynamic(
                watchers,
                &client,
                Kind::TlsRoute,
                resource("TLSRoute", "tlsroutes"),
                cfg,
                &notices,
            ),
            namespaces: start_watch_with(
                watchers,
                Kind::Namespace,
                Api::all(client),
                watcher::Config::default(),
                Writer::default(),
                cfg,
                notices,
            ),
            class_cache: Cache::default(),
            gateway_cache: Cache::default(),
            route_cache: Cache::default(),
            grant_cache: Cache::default(),
            grpc_cache: Cache::default(),
            tcp_cache: Cache::default(),
            tls_cache: Cache::default(),
        }
    }

    pub(super) fn build(&mut self, state: &mut ClusterState) {
        let gs = &mut state.gateway;
        for c in self
            .class_cache
            .refresh(Kind::GatewayClass, &self.classes.state(), |o| {
                convert_gateway::gateway_class(&typed::<
                    gateway_api::Object<gateway_api::GatewayClassSpec>,
                >(o)?)
                .map(Some)
            })
        {
            gs.classes.insert(c.name.clone(), c);
        }
        for g in self
            .gateway_cache
            .refresh(Kind::Gateway, &self.gateways.state(), |o| {
                convert_gateway::gateway(&typed::<gateway_api::Object<gateway_api::GatewaySpec>>(
                    o,
                )?)
                .map(Some)
            })
        {
            gs.gateways.insert(g.id.clone(), g);
        }
        for r in self
            .route_cache
            .refresh(Kind::HttpRoute, &self.routes.state(), |o| {
                convert_gateway::http_route(&typed::<
                    gateway_api::Object<gateway_api::HttpRouteSpec>,
                >(o)?)
                .map(Some)
            })
        {
            gs.http_routes.insert(r.id.clone(), r);
        }
        for g in self
            .grant_cache
            .refresh(Kind::ReferenceGrant, &self.grants.state(), |o| {
                convert_gateway::reference_grant(&typed::<
                    gateway_api::Object<gateway_api::ReferenceGrantSpec>,
                >(o)?)
                .map(Some)
            })
        {
            gs.reference_grants.insert(g.id.clone(), g);
        }
        for r in self
            .grpc_cache
            .refresh(Kind::GrpcRoute, &self.grpc_routes.state(), |o| {
                convert_gateway::grpc_route(&typed::<
                    gateway_api::Object<gateway_api::GrpcRouteSpec>,
                >(o)?)
                .map(Some)
            })
        {
            gs.grpc_routes.insert(r.id.clone(), r);
        }
        for (kind, stream, store, cache) in [
            (
                Kind::TcpRoute,
                StreamKind::Tcp,
                &self.tcp_routes,
                &mut self.tcp_cache,
            ),
            (
                Kind::TlsRoute,
                StreamKind::Tls,
                &self.tls_routes,
                &mut self.tls_cache,
            ),
        ] {
            for r in cache.refresh(kind, &store.state(), |o| {
                convert_gateway::stream_route(
                    stream,
                    &typed::<gateway_api::Object<gateway_api::StreamRouteSpec>>(o)?,
                )
                .map(Some)
            }) {
                gs.stream_routes.insert((r.kind, r.id.clone()), r);
            }
        }
        for ns in self.namespaces.state() {
            if let Ok(id) = object_ref(&ns.metadata) {
                gs.namespaces.insert(
                    id.name.to_string(),
                    ns.metadata.labels.clone().unwrap_or_default(),
                );
            }
        }
    }

    /// Objects left out of the last state because they failed to convert.
    pub(super) fn failed(&self) -> usize {
        self.class_cache.failed
            + self.gateway_cache.failed
            + self.route_cache.failed
            + self.grant_cache.failed
            + self.grpc_cache.failed
            + self.tcp_cache.failed
            + self.tls_cache.failed
    }
}
