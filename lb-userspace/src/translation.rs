//! Translation kept up to date by change: what each Service asks for is
//! remembered, and a change of Services or EndpointSlices translates only
//! the Services it touches and patches the desired state in place. The
//! result is always what `translate` would return for the whole state (a
//! property test checks it); the saving is that a change costs in proportion
//! to itself, not to the cluster.
//!
//! Everything is translated again when the node's context changes (its
//! zone, the NodePort addresses) and assembled again when the Services
//! touched share a frontend key or a health check port with others (who
//! gets a contested key depends on the order of all of them).
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::frontend::FrontendKey as ServiceKey;

use crate::{
    model::{Changes, ClusterState, EndpointSlice, ObjectRef},
    translate::{assemble, service_output, Context, Desired, NodeFacts, ServiceOutput},
};

/// Which frontends an update may have changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Any: plan everything.
    All,
    /// Only these keys.
    Keys(BTreeSet<ServiceKey>),
}

/// The translation of the last state, and what it was made of.
#[derive(Debug, Default)]
pub struct Translation {
    context: Option<Context>,
    outputs: BTreeMap<ObjectRef, ServiceOutput>,
    /// The Services asking for each frontend key.
    wanted: HashMap<ServiceKey, Ids>,
    /// The Services reporting on each health check port.
    health_ports: HashMap<u16, Ids>,
    /// The warnings assembling each Service gave, in Service order (only
    /// Services that gave any).
    warnings: BTreeMap<ObjectRef, Vec<String>>,
    /// The EndpointSlices of each Service, by slice (the order
    /// `ClusterState::slices_of` has), so that a change does not scan them all.
    slices: HashMap<ObjectRef, Ids>,
    desired: Desired,
    /// The warnings `new_warnings` returned already (and still standing).
    reported: std::collections::HashSet<String>,
}

/// A set of object references kept as a sorted Vec: almost every set here
/// holds one id, for which a BTreeSet allocates a node with room for eleven.
#[derive(Debug, Default)]
struct Ids(Vec<ObjectRef>);

impl Ids {
    fn insert(&mut self, id: ObjectRef) {
        if let Err(at) = self.0.binary_search(&id) {
            if self.0.capacity() == 0 {
                self.0.reserve_exact(1);
            }
            self.0.insert(at, id);
        }
    }

    fn remove(&mut self, id: &ObjectRef) {
        if let Ok(at) = self.0.binary_search(id) {
            self.0.remove(at);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, ObjectRef> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a Ids {
    type Item = &'a ObjectRef;
    type IntoIter = std::slice::Iter<'a, ObjectRef>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The Service an EndpointSlice belongs to.
fn owner(s: &EndpointSlice) -> ObjectRef {
    ObjectRef::new(&s.id.namespace, &s.service_name)
}

/// The Services whose translation `changes` may alter: the changed ones and
/// the owners of changed slices (as they were and as they are).
fn touched(before: &ClusterState, state: &ClusterState, changes: &Changes) -> BTreeSet<ObjectRef> {
    let mut ids: BTreeSet<ObjectRef> = changes.services.iter().cloned().collect();
    for slice in &changes.slices {
        ids.extend(before.slices.get(slice).map(|s| owner(s)));
        ids.extend(state.slices.get(slice).map(|s| owner(s)));
    }
    ids
}

impl Translation {
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The warnings of the desired state not returned by the last call:
    /// the agent logs each once while it stands, not again at every sync.
    pub fn new_warnings(&mut self) -> Vec<String> {
        let new = self
            .desired
            .warnings
            .iter()
            .filter(|w| !self.reported.contains(*w))
            .cloned()
            .collect();
        self.reported = self.desired.warnings.iter().cloned().collect();
        new
    }

    /// Brings the translation to `state`, which differs from `before` (the
    /// state of the last update) by `changes`.
    pub fn update(
        &mut self,
        before: &ClusterState,
        state: &ClusterState,
        node: &NodeFacts,
        changes: &Changes,
    ) -> Changed {
        let context = Context::new(state, node);
        if self.context.as_ref() != Some(&context) {
            self.translate_all(state, context);
            return Changed::All;
        }
        for id in &changes.slices {
            if let Some(s) = before.slices.get(id) {
                let service = owner(s);
                if let Some(set) = self.slices.get_mut(&service) {
                    set.remove(id);
                    if set.is_empty() {
                        self.slices.remove(&service);
                    }
                }
            }
            if let Some(s) = state.slices.get(id) {
                self.slices.entry(owner(s)).or_default().insert(id.clone());
            }
        }
        let mut keys = BTreeSet::new();
        let mut reassemble = false;
        let mut updates = Vec::new();
        for id in touched(before, state, changes) {
            let new = state
                .services
                .get(&id)
                .and_then(|svc| service_output(svc, &self.slices_of(state, &id), &context));
            let old = self.outputs.get(&id);
            if old == new.as_ref() {
                continue;
            }
            for out in old.into_iter().chain(new.as_ref()) {
                for k in out.keys() {
                    keys.insert(*k);
                    reassemble |= self
                        .wanted
                        .get(k)
                        .is_some_and(|w| w.iter().any(|o| *o != id));
                }
                if let Some((port, _)) = &out.health {
                    reassemble |= self
                        .health_ports
                        .get(port)
                        .is_some_and(|w| w.iter().any(|o| *o != id));
                }
            }
            updates.push((id, new));
        }
        for (id, new) in updates {
            if let Some(old) = self.outputs.remove(&id) {
                self.forget(&id, &old);
            }
            if let Some(new) = new {
                self.remember(&id, &new);
                if !reassemble {
                    self.patch(&id, &new);
                }
                self.outputs.insert(id, new);
            } else {
                self.warnings.remove(&id);
            }
        }
        if reassemble {
            self.assemble_all();
            return Changed::All;
        }
        self.desired.warnings = self.warnings.values().flatten().cloned().collect();
        Changed::Keys(keys)
    }

    /// Translates every Service of `state` afresh.
    fn translate_all(&mut self, state: &ClusterState, context: Context) {
        self.slices.clear();
        for (id, s) in &state.slices {
            self.slices.entry(owner(s)).or_default().insert(id.clone());
        }
        let outputs: BTreeMap<ObjectRef, ServiceOutput> = state
            .services
            .values()
            .filter_map(|svc| {
                let out = service_output(svc, &self.slices_of(state, &svc.id), &context)?;
                Some((svc.id.clone(), out))
            })
            .collect();
        self.wanted.clear();
        self.health_ports.clear();
        for (id, out) in &outputs {
            self.remember(id, out);
        }
        self.outputs = outputs;
        self.context = Some(context);
        self.assemble_all();
    }

    /// Shares out the frontends of every remembered output, in Service order.
    fn assemble_all(&mut self) {
        let mut desired = Desired {
            node_ports_on: self
                .context
                .as_ref()
                .map(|c| c.node_ports_on.clone())
                .unwrap_or_default(),
            ..Desired::default()
        };
        self.warnings.clear();
        for (id, out) in &self.outputs {
            let from = desired.warnings.len();
            assemble(&mut desired, id, out);
            if desired.warnings.len() > from {
                self.warnings
                    .insert(id.clone(), desired.warnings[from..].to_vec());
            }
        }
        self.desired = desired;
    }

    /// The EndpointSlices of Service `id` in `state`, in slice order.
    fn slices_of<'a>(&self, state: &'a ClusterState, id: &ObjectRef) -> Vec<&'a EndpointSlice> {
        self.slices
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|s| state.slices.get(s).map(|s| &**s))
            .collect()
    }

    fn remember(&mut self, id: &ObjectRef, out: &ServiceOutput) {
        for k in out.keys() {
            self.wanted.entry(*k).or_default().insert(id.clone());
        }
        if let Some((port, _)) = &out.health {
            self.health_ports
                .entry(*port)
                .or_default()
                .insert(id.clone());
        }
    }

    /// Takes what `id` was granted (`old`) out of the desired state.
    fn forget(&mut self, id: &ObjectRef, old: &ServiceOutput) {
        for k in old.keys() {
            if let Some(w) = self.wanted.get_mut(k) {
                w.remove(id);
                if w.is_empty() {
                    self.wanted.remove(k);
                }
            }
            if self
                .desired
                .frontends
                .get(k)
                .is_some_and(|f| f.service == *id)
            {
                self.desired.frontends.remove(k);
            }
        }
        if let Some((port, _)) = &old.health {
            if let Some(w) = self.health_ports.get_mut(port) {
                w.remove(id);
                if w.is_empty() {
                    self.health_ports.remove(port);
                    self.desired.health_checks.remove(port);
                }
            }
        }
        self.desired.node_ports -= old.node_ports;
    }

    /// Grants `id` what it asks for (`new`), no other Service contending.
    fn patch(&mut self, id: &ObjectRef, new: &ServiceOutput) {
        let from = self.desired.warnings.len();
        assemble(&mut self.desired, id, new);
        let warnings = self.desired.warnings.split_off(from);
        if warnings.is_empty() {
            self.warnings.remove(id);
        } else {
            self.warnings.insert(id.clone(), warnings);
        }
    }
}
