//! How a source is doing, for `weir status` (through the agent's control
//! socket): which source, whether it is connected and synced or failing
//! (with the last error and when it happened), and when it last published a
//! state. Sources update it as they go; the agent only reads it.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

/// RFC 3339 time in UTC, seconds precision.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// An error and when it happened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimedError {
    pub time: String,
    pub error: String,
}

impl TimedError {
    pub fn now(error: impl Into<String>) -> Self {
        Self {
            time: rfc3339(SystemTime::now()),
            error: error.into(),
        }
    }
}

/// A source's health as `weir status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// "kube" or "dir".
    pub kind: String,
    /// The directory, or the apiserver the client talks to.
    pub location: String,
    /// "starting" (no complete state yet), "synced" (connected, the last
    /// state published) or "error" (the last attempt failed; the last
    /// published state stays in force).
    pub state: String,
    /// When the source last published a state (RFC 3339).
    pub last_update: Option<String>,
    /// The most recent error, also after the source recovered.
    pub last_error: Option<TimedError>,
    /// Objects left out of the last state because they are invalid.
    pub skipped_objects: usize,
}

pub const STARTING: &str = "starting";
pub const SYNCED: &str = "synced";
pub const ERROR: &str = "error";

/// The shared, updatable status of one source. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct StatusHandle {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    status: SourceStatus,
    /// Parts of the source that are failing now (e.g. the watch of one
    /// kind), with their error; the source is healthy when none is.
    failing: BTreeMap<String, String>,
}

impl StatusHandle {
    pub fn new(kind: &str, location: &str) -> Self {
        let h = Self::default();
        h.update(|s| {
            s.kind = kind.into();
            s.location = location.into();
            s.state = STARTING.into();
        });
        h
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner)
    }

    fn update(&self, f: impl FnOnce(&mut SourceStatus)) {
        self.with(|i| f(&mut i.status))
    }

    pub fn snapshot(&self) -> SourceStatus {
        self.with(|i| i.status.clone())
    }

    /// A complete state was published, with `skipped` invalid objects left out.
    pub fn published(&self, skipped: usize) {
        self.with(|i| {
            i.status.last_update = Some(rfc3339(SystemTime::now()));
            i.status.skipped_objects = skipped;
            if i.failing.is_empty() {
                i.status.state = SYNCED.into();
            }
        })
    }

    /// `part` of the source (the whole source: "") failed with `error`.
    pub fn failed(&self, part: &str, error: &str) {
        self.with(|i| {
            let message = if part.is_empty() {
                error.to_string()
            } else {
                format!("{part}: {error}")
            };
            i.failing.insert(part.to_string(), message.clone());
            i.status.state = ERROR.into();
            i.status.last_error = Some(TimedError::now(message));
        })
    }

    /// `part` works again. The state becomes "synced" once nothing fails and
    /// a state was published ("starting" before the first).
    pub fn recovered(&self, part: &str) {
        self.with(|i| {
            if i.failing.remove(part).is_some() && i.failing.is_empty() {
                i.status.state = if i.status.last_update.is_some() {
                    SYNCED
                } else {
                    STARTING
                }
                .into();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_parts_decide_the_state_and_the_last_error_stays() {
        let h = StatusHandle::new("kube", "https://198.18.0.1:6443");
        assert_eq!(h.snapshot().state, STARTING);
        h.published(2);
        assert_eq!(h.snapshot().state, SYNCED);
        assert_eq!(h.snapshot().skipped_objects, 2);
        h.failed("Service watch", "connection refused");
        h.failed("Node watch", "connection refused");
        let s = h.snapshot();
        assert_eq!(s.state, ERROR);
        assert_eq!(
            s.last_error.map(|e| e.error),
            Some("Node watch: connection refused".into())
        );
        h.recovered("Service watch");
        assert_eq!(h.snapshot().state, ERROR);
        h.recovered("Node watch");
        let s = h.snapshot();
        assert_eq!(s.state, SYNCED);
        assert!(s.last_error.is_some());
        // Recovering what never failed changes nothing.
        h.recovered("Secret watch");
        assert_eq!(h.snapshot().state, SYNCED);
    }
}
