//! The kube source with the L7 proxy on: Ingresses, IngressClasses and only
//! kubernetes.io/tls Secrets (field selector) reach the published state, and
//! follow changes. In process against the fake apiserver (no root).
use std::{sync::Arc, time::Duration};

use anyhow::{bail, Result};
use serde_json::json;
use tokio::sync::watch;
use weir::{
    model::{ClusterState, ObjectRef},
    source::kube::{run, KubeSourceConfig},
};
use weir_tests::fake_apiserver::FakeApiserver;

const WAIT: Duration = Duration::from_secs(10);

async fn wait_for(
    rx: &mut watch::Receiver<Option<Arc<ClusterState>>>,
    what: &str,
    pred: impl Fn(&ClusterState) -> bool,
) -> Result<Arc<ClusterState>> {
    let wait = async {
        loop {
            if let Some(state) = rx.borrow_and_update().clone() {
                if pred(&state) {
                    return Ok(state);
                }
            }
            if rx.changed().await.is_err() {
                bail!("the source stopped");
            }
        }
    };
    match tokio::time::timeout(WAIT, wait).await {
        Ok(r) => r,
        Err(_) => bail!(
            "timed out waiting for {what}: {:?}",
            rx.borrow().as_ref().map(|s| &s.ingress)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_ingresses_classes_and_only_tls_secrets() -> Result<()> {
    let api = FakeApiserver::start()?;
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}))?;
    api.apply(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "weir"},
        "spec": {"controller": "weir.dev/ingress-controller"}
    }))?;
    api.apply(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": "web"},
        "spec": {
            "ingressClassName": "weir",
            "tls": [{"hosts": ["shop.example"], "secretName": "shop-tls"}],
            "defaultBackend": {"service": {"name": "shop", "port": {"number": 80}}}
        }
    }))?;
    api.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "shop-tls", "namespace": "web"},
        "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}
    }))?;
    api.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "password", "namespace": "web"},
        "data": {"password": "c2VjcmV0"}
    }))?;

    let mut cfg = KubeSourceConfig::new("node-a");
    cfg.min_sync_period = Duration::from_millis(50);
    cfg.config_sync_period = Duration::ZERO;
    cfg.watch_ingress = true;
    let (tx, mut rx) = watch::channel(None);
    let task = tokio::spawn(run(api.client()?, cfg, move |state| {
        tx.send(Some(state)).is_ok()
    }));

    let state = wait_for(&mut rx, "the Ingress objects", |s| {
        !s.ingress.ingresses.is_empty()
    })
    .await?;
    let shop = ObjectRef::new("web", "shop");
    assert_eq!(
        state.ingress.ingresses[&shop].class_name.as_deref(),
        Some("weir")
    );
    assert_eq!(
        state.ingress.classes["weir"].controller,
        "weir.dev/ingress-controller"
    );
    let secrets: Vec<String> = state
        .ingress
        .tls_secrets
        .keys()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(secrets, ["web/shop-tls"]);
    assert_eq!(
        state.ingress.tls_secrets[&ObjectRef::new("web", "shop-tls")].cert_pem,
        b"cert"
    );
    // Secrets are listed with the type field selector: the Opaque one never reaches Weir.
    let secret_lists: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/secrets")
        .collect();
    assert!(!secret_lists.is_empty());
    for r in &secret_lists {
        assert_eq!(
            r.query.get("fieldSelector").map(String::as_str),
            Some("type=kubernetes.io/tls"),
            "{r:?}"
        );
    }

    // A rotated certificate is published.
    api.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "shop-tls", "namespace": "web"},
        "data": {"tls.crt": "bmV3", "tls.key": "a2V5"}
    }))?;
    wait_for(&mut rx, "the rotated Secret", |s| {
        s.ingress
            .tls_secrets
            .get(&ObjectRef::new("web", "shop-tls"))
            .is_some_and(|t| t.cert_pem == b"new")
    })
    .await?;
    task.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_ingress_addresses_in_status_load_balancer_once_per_change() -> Result<()> {
    use weir::source::ingress_status::{StatusWriter, Statuses};
    let api = FakeApiserver::start()?;
    api.apply(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": "web"},
        "spec": {"defaultBackend": {"service": {"name": "shop", "port": {"number": 80}}}}
    }))?;
    let writer = StatusWriter::spawn(api.client()?);
    let shop = ObjectRef::new("web", "shop");
    let publish = |ips: &[&str]| {
        let statuses: Statuses = [(
            shop.clone(),
            ips.iter().map(|i| i.parse().unwrap()).collect(),
        )]
        .into();
        writer.publish(statuses);
    };
    publish(&["198.19.1.1", "198.18.0.1"]);
    wait_until(&api, 1).await?;
    let (path, body) = &api.status_patches()[0];
    assert_eq!(
        path,
        "/apis/networking.k8s.io/v1/namespaces/web/ingresses/shop/status"
    );
    assert_eq!(
        body,
        &json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.19.1.1"}, {"ip": "198.18.0.1"}]}}})
    );
    // The same statuses again: no new patch; a change: one more.
    publish(&["198.19.1.1", "198.18.0.1"]);
    publish(&["198.19.1.2"]);
    wait_until(&api, 2).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(api.status_patches().len(), 2);
    assert_eq!(
        api.status_patches()[1].1["status"]["loadBalancer"]["ingress"],
        json!([{"ip": "198.19.1.2"}])
    );
    Ok(())
}

async fn wait_until(api: &FakeApiserver, patches: usize) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while api.status_patches().len() < patches {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "timed out waiting for {patches} status patches: {:?}",
                api.status_patches()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
