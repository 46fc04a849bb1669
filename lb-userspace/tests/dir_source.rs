//! The directory source parses only the files that changed, and an
//! unchanged file's objects are the very objects of the last load.
use std::{path::PathBuf, sync::Arc};

use weir::{
    model::{ClusterState, ObjectRef},
    source::dir::DirSource,
};

fn manifest(name: &str, endpoint: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\n\
         spec:\n  clusterIP: 198.19.0.1\n  ports: [{{name: http, port: 80, protocol: TCP}}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: {name}-1\n  namespace: ns\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
         endpoints: [{{addresses: [\"{endpoint}\"]}}]\n"
    )
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn service(state: &ClusterState, name: &str) -> Option<Arc<weir::model::Service>> {
    state.services.get(&ObjectRef::new("ns", name)).cloned()
}

fn endpoint(state: &ClusterState, name: &str) -> String {
    state.slices[&ObjectRef::new("ns", format!("{name}-1"))].endpoints[0]
        .address
        .to_string()
}

#[test]
fn only_changed_files_are_parsed_again_and_unchanged_objects_are_kept() {
    let dir = Dir(std::env::temp_dir().join(format!("weir-dir-source-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join("a.yaml"), manifest("a", "198.18.0.1")).unwrap();
    std::fs::write(dir.0.join("b.yaml"), manifest("b", "198.18.0.2")).unwrap();
    let source = DirSource::new(&dir.0);

    let first = source.load().unwrap();
    assert_eq!(first.parsed_files, 2);
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(first.state.services.len(), 2);

    let again = source.load().unwrap();
    assert_eq!(again.parsed_files, 0, "nothing changed, nothing is parsed");
    assert_eq!(again.state, first.state);
    let (a1, a2) = (service(&first.state, "a"), service(&again.state, "a"));
    assert!(Arc::ptr_eq(a1.as_ref().unwrap(), a2.as_ref().unwrap()));
    assert!(again.state.changes_since(&first.state).slices.is_empty());

    // b changes (a longer address: the size changes whatever the clock's grain).
    std::fs::write(dir.0.join("b.yaml"), manifest("b", "198.18.0.222")).unwrap();
    // A file with a bad document is reported by name; the rest is served.
    std::fs::write(
        dir.0.join("c.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: c, namespace: ns}\nspec: {ports: 7}\n",
    )
    .unwrap();
    let changed = source.load().unwrap();
    assert_eq!(changed.parsed_files, 2, "b and c, not a");
    assert_eq!(endpoint(&changed.state, "b"), "198.18.0.222");
    assert_eq!(changed.errors.len(), 1, "{:?}", changed.errors);
    assert!(
        changed.errors[0].file.ends_with("c.yaml"),
        "{}",
        changed.errors[0]
    );
    let diff = changed.state.changes_since(&again.state);
    assert_eq!(diff.slices, vec![ObjectRef::new("ns", "b-1")]);
    assert!(diff.services.is_empty(), "{:?}", diff.services);
    assert!(Arc::ptr_eq(
        a1.as_ref().unwrap(),
        service(&changed.state, "a").as_ref().unwrap()
    ));

    // The bad file is still reported while it stands, without being parsed again.
    let standing = source.load().unwrap();
    assert_eq!(standing.parsed_files, 0);
    assert_eq!(standing.errors, changed.errors);

    std::fs::remove_file(dir.0.join("b.yaml")).unwrap();
    let removed = source.load().unwrap();
    assert_eq!(removed.parsed_files, 0);
    assert!(service(&removed.state, "b").is_none());
    assert!(!removed
        .state
        .slices
        .contains_key(&ObjectRef::new("ns", "b-1")));
    assert_eq!(endpoint(&removed.state, "a"), "198.18.0.1");
}
