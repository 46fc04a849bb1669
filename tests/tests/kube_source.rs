//! The kube source (in process, no root) against the fake apiserver: what it
//! publishes on the initial list, on changes, after dropped watches, 410 Gone,
//! an apiserver outage, bad objects and the label filter. Every published
//! state is recorded, so the tests also check that none was empty or partial.
use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use tokio::{sync::watch, task::JoinHandle};
use weir::{
    model::{ClusterState, ObjectRef},
    source::kube::{run, KubeSourceConfig},
    translate::{translate, NodeFacts},
};
use weir_tests::fake_apiserver::{FakeApiserver, Gone, Kind};

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(10);

fn service(name: &str, ip: &str, port: i64) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080}]},
    })
}

fn labelled(mut object: Value, key: &str, value: &str) -> Value {
    object["metadata"]["labels"] = json!({ key: value });
    object
}

fn slice(name: &str, svc: &str, endpoints: &[&str]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|a| json!({
            "addresses": [a], "conditions": {"ready": true}, "nodeName": NODE,
        })).collect::<Vec<_>>(),
    })
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"zone": "z1"}}})
}

fn svc_ref(name: &str) -> ObjectRef {
    ObjectRef::new("ns", name)
}

/// Services a, b and c with one slice each, and nodes node-a and node-b.
fn populate(api: &FakeApiserver) -> Result<()> {
    for (name, ip, backend) in [
        ("a", "198.19.0.1", "198.18.1.11"),
        ("b", "198.19.0.2", "198.18.1.12"),
        ("c", "198.19.0.3", "198.18.1.13"),
    ] {
        api.apply(service(name, ip, 80))?;
        api.apply(slice(&format!("{name}-1"), name, &[backend]))?;
    }
    api.apply(node(NODE))?;
    api.apply(node("node-b"))?;
    Ok(())
}

/// The source under test, with every state it published.
struct Source {
    published: Arc<Mutex<Vec<Arc<ClusterState>>>>,
    rx: watch::Receiver<Option<Arc<ClusterState>>>,
    task: JoinHandle<()>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start(api: &FakeApiserver, min_sync: Duration) -> Result<Source> {
    start_with(api, min_sync, Duration::ZERO)
}

fn start_with(api: &FakeApiserver, min_sync: Duration, config_sync: Duration) -> Result<Source> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "weir=debug".into()),
        )
        .with_test_writer()
        .try_init();
    let mut cfg = KubeSourceConfig::new(NODE);
    cfg.min_sync_period = min_sync;
    cfg.config_sync_period = config_sync;
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(400);
    let published = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = watch::channel(None);
    let record = published.clone();
    let task = tokio::spawn(run(api.client()?, cfg, move |state| {
        record.lock().unwrap().push(state.clone());
        tx.send(Some(state)).is_ok()
    }));
    Ok(Source {
        published,
        rx,
        task,
    })
}

impl Source {
    /// Waits (at most WAIT) for a published state that satisfies `pred`.
    async fn wait(
        &mut self,
        what: &str,
        pred: impl Fn(&ClusterState) -> bool,
    ) -> Result<Arc<ClusterState>> {
        let wait = async {
            loop {
                if let Some(state) = self.rx.borrow_and_update().clone() {
                    if pred(&state) {
                        return Ok(state);
                    }
                }
                if self.rx.changed().await.is_err() {
                    bail!("the source stopped");
                }
            }
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(r) => r,
            Err(_) => bail!(
                "timed out waiting for {what}; last state: {:?}",
                self.rx.borrow().as_ref().map(|s| summary(s))
            ),
        }
    }

    fn published(&self) -> Vec<Arc<ClusterState>> {
        self.published.lock().unwrap().clone()
    }

    /// Every published state holds the services `names` and this node.
    fn assert_never_without(&self, names: &[&str]) {
        let published = self.published();
        assert!(!published.is_empty(), "nothing was published");
        for (i, state) in published.iter().enumerate() {
            for name in names {
                assert!(
                    state.services.contains_key(&svc_ref(name))
                        && state.slices.contains_key(&svc_ref(&format!("{name}-1"))),
                    "published state {i} lacks service {name} or its slice: {:?}",
                    summary(state)
                );
            }
            assert!(
                state.nodes.contains_key(NODE),
                "published state {i} lacks the node: {:?}",
                summary(state)
            );
        }
    }
}

fn summary(state: &ClusterState) -> (Vec<String>, Vec<String>, Vec<String>) {
    (
        state.services.keys().map(|k| k.to_string()).collect(),
        state.slices.keys().map(|k| k.to_string()).collect(),
        state.nodes.keys().cloned().collect(),
    )
}

/// The frontends `translate` makes of a state: "addr:port" -> backend addresses.
fn frontends(state: &ClusterState) -> Vec<(String, Vec<String>)> {
    let node = NodeFacts {
        node_name: NODE.into(),
        ..Default::default()
    };
    translate(state, &node)
        .frontends
        .iter()
        .map(|(k, f)| {
            (
                format!("{}:{}", k.addr, k.port),
                f.backends
                    .iter()
                    .map(|b| format!("{}:{}", b.addr, b.port))
                    .collect(),
            )
        })
        .collect()
}

/// The lists of `path` served (not the source's reachability probes, which
/// list one object).
fn lists_of(api: &FakeApiserver, path: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.path == path && !r.is_watch())
        .filter(|r| r.query.get("limit").map(String::as_str) != Some("1"))
        .count()
}

const SERVICES: &str = "/api/v1/services";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_the_initial_list_once_every_kind_is_listed() -> Result<()> {
    let api = FakeApiserver::start()?;
    populate(&api)?;
    let mut source = start(&api, Duration::from_millis(50))?;
    let state = source.wait("the initial state", |_| true).await?;
    // The very first state is already complete.
    assert_eq!(source.published()[0], state);
    assert_eq!(state.services.len(), 3);
    assert_eq!(state.slices.len(), 3);
    assert_eq!(
        state.nodes.keys().collect::<Vec<_>>(),
        [NODE],
        "only this node is watched"
    );
    assert_eq!(
        frontends(&state),
        [
            ("198.19.0.1:80".into(), vec!["198.18.1.11:8080".into()]),
            ("198.19.0.2:80".into(), vec!["198.18.1.12:8080".into()]),
            ("198.19.0.3:80".into(), vec!["198.18.1.13:8080".into()]),
        ]
    );
    // What the source asked for.
    let requests = api.requests();
    let selector_of = |path: &str, param: &str| {
        requests
            .iter()
            .find(|r| r.path == path)
            .and_then(|r| r.query.get(param).cloned())
    };
    assert_eq!(
        selector_of(SERVICES, "labelSelector").as_deref(),
        Some("!service.kubernetes.io/headless")
    );
    assert_eq!(
        selector_of("/api/v1/nodes", "fieldSelector").as_deref(),
        Some("metadata.name=node-a")
    );
    api.wait_watches(3, WAIT)?;
    let watch = requests.iter().find(|r| r.is_watch());
    if let Some(w) = watch {
        assert_eq!(
            w.query.get("allowWatchBookmarks").map(String::as_str),
            Some("true")
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_every_kind_before_publishing() -> Result<()> {
    let api = FakeApiserver::start()?;
    populate(&api)?;
    // Down at start: nothing is published until every kind has been listed,
    // and then all at once.
    api.go_down()?;
    let mut source = start(&api, Duration::from_millis(50))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        source.published().is_empty(),
        "published while the apiserver was down"
    );
    api.come_back()?;
    let state = source.wait("the initial state", |_| true).await?;
    assert_eq!((state.services.len(), state.slices.len()), (3, 3));
    source.assert_never_without(&["a", "b", "c"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_adds_modifies_and_deletes() -> Result<()> {
    let api = FakeApiserver::start()?;
    populate(&api)?;
    let mut source = start(&api, Duration::from_millis(20))?;
    source.wait("the initial state", |_| true).await?;
    api.wait_watches(3, WAIT)?;

    api.apply(service("d", "198.19.0.4", 80))?;
    api.apply(slice("d-1", "d", &["198.18.1.14", "198.18.1.15"]))?;
    let state = source
        .wait("service d with two endpoints", |s| {
            s.slices
                .get(&svc_ref("d-1"))
                .is_some_and(|sl| sl.endpoints.len() == 2)
                && s.services.contains_key(&svc_ref("d"))
        })
        .await?;
    assert!(frontends(&state).contains(&(
        "198.19.0.4:80".into(),
        vec!["198.18.1.14:8080".into(), "198.18.1.15:8080".into()]
    )));

    // Endpoint removed, port changed.
    api.apply(slice("d-1", "d", &["198.18.1.15"]))?;
    api.apply(service("d", "198.19.0.4", 8000))?;
    let state = source
        .wait("service d changed", |s| {
            frontends(s).contains(&("198.19.0.4:8000".into(), vec!["198.18.1.15:8080".into()]))
        })
        .await?;
    assert!(!frontends(&state).iter().any(|(f, _)| f == "198.19.0.4:80"));

    api.delete(Kind::Service, "ns", "a")?;
    api.delete(Kind::EndpointSlice, "ns", "a-1")?;
    let state = source
        .wait("service a deleted", |s| {
            !s.services.contains_key(&svc_ref("a")) && !s.slices.contains_key(&svc_ref("a-1"))
        })
        .await?;
    assert_eq!(state.services.len(), 3);
    // Incremental: the initial list was the only list.
    assert_eq!(lists_of(&api, SERVICES), 1);
    source.assert_never_without(&["b", "c"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_a_dropped_watch_without_relisting() -> Result<()> {
    let api = FakeApiserver::start()?;
    populate(&api)?;
    let mut source = start(&api, Duration::from_millis(20))?;
    source.wait("the initial state", |_| true).await?;
    api.wait_watches(3, WAIT)?;
    for round in 0..3 {
        api.drop_watches();
        api.apply(slice(
            "b-1",
            "b",
            &["198.18.1.12", &format!("198.18.2.{round}")],
        ))?;
        source
            .wait("the change made while the watch was down", |s| {
                s.slices.get(&svc_ref("b-1")).is_some_and(|sl| {
                    sl.endpoints.len() == 2
                        && sl.endpoints[1].address == Ipv4Addr::new(198, 18, 2, round)
                })
            })
            .await?;
        api.wait_watches(3, WAIT)?;
    }
    assert_eq!(
        lists_of(&api, SERVICES),
        1,
        "the watch should resume from its resourceVersion, not relist"
    );
    source.assert_never_without(&["a", "b", "c"]);
    Ok(())
}

/// The apiserver is down while b is deleted and a changed, then answers the
/// watches' old resourceVersions with 410 Gone: the source relists, b
/// disappears, a and c stay, and no state in between lacks them.
async fn relists_after_gone(expire: impl Fn(&FakeApiserver)) -> Result<()> {
    let api = FakeApiserver::start()?;
    populate(&api)?;
    let mut source = start(&api, Duration::from_millis(20))?;
    source.wait("the initial state", |_| true).await?;
    api.wait_watches(3, WAIT)?;

    api.go_down()?;
    api.delete(Kind::Service, "ns", "b")?;
    api.delete(Kind::EndpointSlice, "ns", "b-1")?;
    api.apply(slice("a-1", "a", &["198.18.1.11", "198.18.1.21"]))?;
    expire(&api);
    api.come_back()?;

    let state = source
        .wait("b gone and a changed", |s| {
            !s.services.contains_key(&svc_ref("b"))
                && s.slices
                    .get(&svc_ref("a-1"))
                    .is_some_and(|sl| sl.endpoints.len() == 2)
        })
        .await?;
    assert!(!state.slices.contains_key(&svc_ref("b-1")));
    assert!(
        lists_of(&api, SERVICES) >= 2,
        "expected a relist after 410 Gone"
    );
    // Each kind's list replaces the old one whole: no state in between lacks
    // a or c. (Kinds relist independently, as kube-proxy's informers do: for
    // a moment b's Service may be gone before its slice, or the other way.)
    source.assert_never_without(&["a", "c"]);
    // And it keeps watching afterwards.
    api.wait_watches(3, WAIT)?;
    api.apply(service("e", "198.19.0.5", 80))?;
    source
        .wait("service e", |s| s.services.contains_key(&svc_ref("e")))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_after_compaction_when_deletions_happened_meanwhile() -> Result<()> {
    relists_after_gone(|api| api.compact()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_after_a_410_error_event() -> Result<()> {
    relists_after_gone(|api| api.expire_next_watches(3, Gone::Event)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_after_an_http_410() -> Result<()> {
    relists_after_gone(|api| api.expire_next_watches(3, Gone::Http)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_last_state_while_the_apiserver_is_down_and_converges() -> Result<()> {
    let api = FakeApiserver::start()?;
    populate(&api)?;
    let mut source = start(&api, Duration::from_millis(20))?;
    source.wait("the initial state", |_| true).await?;
    api.wait_watches(3, WAIT)?;
    let before = source.published().len();

    api.go_down()?;
    // Long enough for several failed retries (backoff 50 ms doubling to 400 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        source.published().len(),
        before,
        "a state was published while the apiserver was down"
    );
    api.apply(service("d", "198.19.0.4", 80))?;
    api.apply(slice("d-1", "d", &["198.18.1.14"]))?;
    api.apply(slice("c-1", "c", &[]))?;
    api.come_back()?;

    let state = source
        .wait("the changes made during the outage", |s| {
            s.services.contains_key(&svc_ref("d"))
                && s.slices
                    .get(&svc_ref("c-1"))
                    .is_some_and(|sl| sl.endpoints.is_empty())
        })
        .await?;
    assert!(frontends(&state).contains(&("198.19.0.3:80".into(), vec![])));
    source.assert_never_without(&["a", "b", "c"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skips_objects_with_bad_fields_and_publishes_the_rest() -> Result<()> {
    let api = FakeApiserver::start()?;
    populate(&api)?;
    api.apply(service("bad-port", "198.19.0.8", 70000))?;
    api.apply(service("bad-ip", "198.19.0.300", 80))?;
    api.apply(slice("bad-addr-1", "a", &["not-an-ip"]))?;
    let mut source = start(&api, Duration::from_millis(20))?;
    let state = source.wait("the initial state", |_| true).await?;
    assert_eq!(
        state.services.keys().map(|k| &*k.name).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert!(!state.slices.contains_key(&svc_ref("bad-addr-1")));
    assert_eq!(frontends(&state).len(), 3);

    // Fixed: it appears.
    api.wait_watches(3, WAIT)?;
    api.apply(service("bad-port", "198.19.0.8", 7000))?;
    source
        .wait("the fixed service", |s| {
            frontends(s).iter().any(|(f, _)| f == "198.19.0.8:7000")
        })
        .await?;
    source.assert_never_without(&["a", "b", "c"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skips_headless_services_and_those_of_other_proxies() -> Result<()> {
    let api = FakeApiserver::start()?;
    populate(&api)?;
    api.apply(labelled(
        service("headless", "198.19.0.20", 80),
        "service.kubernetes.io/headless",
        "",
    ))?;
    api.apply(labelled(
        service("other", "198.19.0.21", 80),
        "service.kubernetes.io/service-proxy-name",
        "other-proxy",
    ))?;
    api.apply(labelled(
        service("ours", "198.19.0.22", 80),
        "service.kubernetes.io/service-proxy-name",
        "weir",
    ))?;
    let mut source = start(&api, Duration::from_millis(20))?;
    let state = source.wait("the initial state", |_| true).await?;
    // Not watched at all.
    assert!(!state.services.contains_key(&svc_ref("headless")));
    // Watched (one selector), dropped by translate.
    let fronts: Vec<String> = frontends(&state).into_iter().map(|(f, _)| f).collect();
    assert!(!fronts.contains(&"198.19.0.21:80".to_string()));
    assert!(fronts.contains(&"198.19.0.22:80".to_string()));

    // A service that becomes headless leaves the selection: it disappears.
    api.wait_watches(3, WAIT)?;
    api.apply(labelled(
        service("a", "198.19.0.1", 80),
        "service.kubernetes.io/headless",
        "",
    ))?;
    let state = source
        .wait("service a gone", |s| {
            !s.services.contains_key(&svc_ref("a"))
        })
        .await?;
    assert!(!frontends(&state).iter().any(|(f, _)| f == "198.19.0.1:80"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesces_a_burst_of_changes() -> Result<()> {
    let api = FakeApiserver::start()?;
    populate(&api)?;
    let mut source = start(&api, Duration::from_secs(2))?;
    source.wait("the initial state", |_| true).await?;
    api.wait_watches(3, WAIT)?;
    let before = source.published().len();
    for i in 0..20u8 {
        api.apply(slice("c-1", "c", &[&format!("198.18.3.{i}")]))?;
    }
    source
        .wait("the last change", |s| {
            s.slices
                .get(&svc_ref("c-1"))
                .is_some_and(|sl| sl.endpoints[0].address == Ipv4Addr::new(198, 18, 3, 19))
        })
        .await?;
    let publishes = source.published().len() - before;
    assert!(
        publishes < 20,
        "20 changes published {publishes} times: not coalesced"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republishes_the_unchanged_state_every_config_sync_period() -> Result<()> {
    let api = FakeApiserver::start()?;
    populate(&api)?;
    let mut source = start_with(&api, Duration::from_millis(20), Duration::from_millis(200))?;
    let first = source.wait("the initial state", |_| true).await?;
    // Without any change, the same state comes again (the agent re-syncs the maps).
    let deadline = tokio::time::Instant::now() + WAIT;
    while source.published().len() < 3 {
        if tokio::time::Instant::now() > deadline {
            bail!("no periodic publish within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for state in source.published() {
        assert_eq!(state, first);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_a_tls_client_with_the_ring_provider() -> Result<()> {
    // Building the client sets up rustls; with two providers compiled in it would panic.
    weir::source::kube::client(None, Some("https://127.0.0.1:1")).await?;
    assert!(weir::source::kube::client(None, Some("not a url"))
        .await
        .is_err());
    Ok(())
}
