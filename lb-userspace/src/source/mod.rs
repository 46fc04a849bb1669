//! Where desired state comes from. Only this module reads files (and talks
//! to the apiserver). Every source publishes complete `ClusterState`
//! snapshots on a watch channel; the agent syncs the datapath to the latest.
pub mod config;
pub mod convert;
pub mod convert_gateway;
pub mod convert_ingress;
pub mod dir;
pub mod duration;
pub mod gateway_api;
pub mod gateway_status_writer;
pub mod ingress_status;
pub mod kube;
pub mod kube_gateway;
pub mod parse;
pub mod status;

use std::sync::Arc;

use tokio::sync::watch;

pub use parse::{DocumentError, Object};

use crate::model::ClusterState;

/// The receiving end of a source: `None` until the source has a first complete state.
pub type StateRx = watch::Receiver<Option<Arc<ClusterState>>>;
pub type StateTx = watch::Sender<Option<Arc<ClusterState>>>;
