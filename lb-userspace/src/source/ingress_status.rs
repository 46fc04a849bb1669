//! Publishes the ingress addresses in `status.loadBalancer.ingress` of each
//! Ingress Weir serves (with `--source kube`), and reports what was skipped
//! in an Ingress as a Warning Event on it. A task owns the client and
//! patches only what changed since its last successful write; a failed
//! patch is retried with the next update. Events are best effort.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use k8s_openapi::api::networking::v1::Ingress as K8sIngress;
use kube::{
    api::{Api, Patch, PatchParams},
    Client,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::model::ObjectRef;

/// Ingress -> the addresses its status should list.
pub type Statuses = BTreeMap<ObjectRef, Vec<IpAddr>>;

pub struct StatusWriter {
    tx: watch::Sender<Statuses>,
    /// The Gateway API objects' status (`gateway_status_writer`).
    gateway: watch::Sender<crate::routes::gateway_status::GatewayStatuses>,
    events: tokio::sync::mpsc::UnboundedSender<(ObjectRef, String)>,
}

/// The Event reason for a skipped rule, path, backend or TLS entry.
pub const EVENT_REASON: &str = "IngressRuleSkipped";

impl StatusWriter {
    /// Spawns the writer on the current runtime.
    pub fn spawn(client: Client) -> Self {
        let (tx, rx) = watch::channel(Statuses::new());
        let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(run(client.clone(), rx));
        let gateway = super::gateway_status_writer::spawn(client.clone());
        tokio::spawn(report_events(client, events_rx));
        Self {
            tx,
            gateway,
            events,
        }
    }

    /// Reports a problem of an Ingress as a Warning Event on it.
    pub fn report(&self, ingress: ObjectRef, message: String) {
        let _ = self.events.send((ingress, message));
    }

    /// Sets the Gateway API status to write (the latest wins).
    pub fn publish_gateway(&self, statuses: crate::routes::gateway_status::GatewayStatuses) {
        self.gateway.send_if_modified(|current| {
            if *current == statuses {
                false
            } else {
                *current = statuses;
                true
            }
        });
    }

    /// Sets the statuses to publish (the latest wins).
    pub fn publish(&self, statuses: Statuses) {
        self.tx.send_if_modified(|current| {
            if *current == statuses {
                false
            } else {
                *current = statuses;
                true
            }
        });
    }
}

/// The merge patch that sets an Ingress's load-balancer status.
pub fn status_patch(addresses: &[IpAddr]) -> serde_json::Value {
    let ingress: Vec<serde_json::Value> = addresses
        .iter()
        .map(|ip| serde_json::json!({"ip": ip.to_string()}))
        .collect();
    serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}})
}

async fn run(client: Client, mut rx: watch::Receiver<Statuses>) {
    let mut written: HashMap<ObjectRef, Vec<IpAddr>> = HashMap::new();
    loop {
        let wanted = rx.borrow_and_update().clone();
        let mut failed = false;
        for (id, addresses) in &wanted {
            if written.get(id) == Some(addresses) {
                continue;
            }
            let api: Api<K8sIngress> = Api::namespaced(client.clone(), &id.namespace);
            let patch = Patch::Merge(status_patch(addresses));
            match api
                .patch_status(&id.name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => {
                    info!(ingress = %id, ?addresses, "published the ingress addresses in status.loadBalancer");
                    written.insert(id.clone(), addresses.clone());
                }
                Err(e) => {
                    warn!(ingress = %id, "publishing status.loadBalancer: {e}");
                    failed = true;
                }
            }
        }
        written.retain(|id, _| wanted.contains_key(id));
        if failed {
            // Retry after a pause, or sooner with a new update.
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(5)) => debug!("retrying status updates"),
            }
        } else if rx.changed().await.is_err() {
            return;
        }
    }
}

/// A core/v1 Warning Event about Ingress `ingress`.
pub fn warning_event(
    ingress: &ObjectRef,
    message: &str,
    now: std::time::SystemTime,
) -> serde_json::Value {
    let time = humantime::format_rfc3339_seconds(now).to_string();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{}.", ingress.name), "namespace": &*ingress.namespace},
        "involvedObject": {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "namespace": &*ingress.namespace,
            "name": &*ingress.name,
        },
        "reason": EVENT_REASON,
        "message": message,
        "type": "Warning",
        "source": {"component": "weir"},
        "reportingComponent": "weir.dev/ingress-controller",
        "firstTimestamp": time,
        "lastTimestamp": time,
        "count": 1,
    })
}

async fn report_events(
    client: Client,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(ObjectRef, String)>,
) {
    use k8s_openapi::api::core::v1::Event;
    while let Some((ingress, message)) = rx.recv().await {
        let event: Event = match serde_json::from_value(warning_event(
            &ingress,
            &message,
            std::time::SystemTime::now(),
        )) {
            Ok(e) => e,
            Err(e) => {
                warn!("building an Event for Ingress {ingress}: {e}");
                continue;
            }
        };
        let api: Api<Event> = Api::namespaced(client.clone(), &ingress.namespace);
        if let Err(e) = api.create(&kube::api::PostParams::default(), &event).await {
            debug!(%ingress, "creating an Event: {e}");
        }
    }
}
