//! Publishes the ingress addresses in `status.loadBalancer.ingress` of each
//! Ingress Weir serves (with `--source kube`). A task owns the client and
//! patches only what changed since its last successful write; a failed
//! patch is retried with the next update.
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
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
pub type Statuses = BTreeMap<ObjectRef, Vec<Ipv4Addr>>;

pub struct StatusWriter {
    tx: watch::Sender<Statuses>,
}

impl StatusWriter {
    /// Spawns the writer on the current runtime.
    pub fn spawn(client: Client) -> Self {
        let (tx, rx) = watch::channel(Statuses::new());
        tokio::spawn(run(client, rx));
        Self { tx }
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
pub fn status_patch(addresses: &[Ipv4Addr]) -> serde_json::Value {
    let ingress: Vec<serde_json::Value> = addresses
        .iter()
        .map(|ip| serde_json::json!({"ip": ip.to_string()}))
        .collect();
    serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}})
}

async fn run(client: Client, mut rx: watch::Receiver<Statuses>) {
    let mut written: HashMap<ObjectRef, Vec<Ipv4Addr>> = HashMap::new();
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
