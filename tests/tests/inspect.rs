//! The inspection commands show exactly what the pinned maps hold, in every
//! output format, and their tables fit an 80-column terminal.
use anyhow::Result;
use weir::{dataplane::maps::Maps, inspect};
use weir_tests::{
    agent::weir_bin,
    cmd::run,
    echo::Proto,
    manifests::{port, service_with, slice},
    scenario::{Scenario, CLUSTER_IP},
};

const NS: &str = "inspect";

fn weir(args: &[&str]) -> Result<String> {
    run(&weir_bin()?.to_string_lossy(), args)
}

#[test]
fn the_cli_shows_what_the_maps_hold() -> Result<()> {
    let mut s = Scenario::start(2, &[(Proto::Tcp, 8080)])?;
    let ports = [port("http", 80, "TCP", 8080)];
    let spec = "  sessionAffinity: ClientIP\n";
    s.manifests.write(
        "svc.yaml",
        &service_with(
            NS,
            "shown",
            CLUSTER_IP,
            &ports,
            spec,
            &[("weir.dev/lb-algorithm", "maglev")],
        ),
    )?;
    let eps: Vec<_> = ["be1", "be2"]
        .iter()
        .map(|b| (s.backend_ip(b), true))
        .collect();
    s.manifests
        .write("slice.yaml", &slice(NS, "shown-1", "shown", &ports, &eps))?;
    s.agent.wait_frontend("198.19.0.10:80/TCP", 2)?;
    let replies = s.send_ok(Proto::Tcp, 80, 3)?;
    let bpffs = s.agent.bpffs.to_string_lossy().into_owned();

    // weir bpf lb list: JSON equals the rows read from the maps directly; YAML says the same.
    let maps = Maps::open_pinned(&s.agent.bpffs)?;
    let expected = serde_json::to_value(inspect::lb_tables(&maps))?;
    let json: serde_json::Value = serde_json::from_str(&weir(&[
        "bpf", "lb", "list", "-o", "json", "--bpffs", &bpffs,
    ])?)?;
    assert_eq!(json, expected);
    let yaml: serde_json::Value = serde_yaml::from_str(&weir(&[
        "bpf", "lb", "list", "-o", "yaml", "--bpffs", &bpffs,
    ])?)?;
    assert_eq!(yaml, expected);
    assert_eq!(json["frontends"][0]["frontend"], "198.19.0.10:80/TCP");
    assert_eq!(json["frontends"][0]["algorithm"], "maglev");
    assert_eq!(json["frontends"][0]["affinity_timeout"], 10800);
    assert_eq!(json["backends"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["revnat"][0]["frontend"], "198.19.0.10:80");

    // weir bpf ct list: the client's flows, forward and reply, to the backend that answered.
    let ct: serde_json::Value = serde_json::from_str(&weir(&[
        "bpf", "ct", "list", "-o", "json", "--bpffs", &bpffs,
    ])?)?;
    let rows = ct.as_array().cloned().unwrap_or_default();
    let forward: Vec<_> = rows.iter().filter(|r| r["kind"] == "forward").collect();
    assert_eq!(forward.len(), 3, "{ct:#}");
    let backend_ip = s.backend_ip(&replies[0].backend).to_string();
    assert!(
        forward.iter().all(|r| r["tuple"]
            .as_str()
            .unwrap_or_default()
            .starts_with("198.18.1.2:")
            && r["tuple"]
                .as_str()
                .unwrap_or_default()
                .ends_with("-> 198.19.0.10:80/TCP")
            && r["nat"] == format!("{backend_ip}:8080")),
        "{ct:#}"
    );
    assert_eq!(rows.iter().filter(|r| r["kind"] == "reply").count(), 3);

    // weir status: the pod devices and map fill levels.
    let status: serde_json::Value =
        serde_json::from_str(&weir(&["status", "-o", "json", "--bpffs", &bpffs])?)?;
    assert_eq!(
        status["devices"],
        serde_json::json!(["lxcbe1", "lxcbe2", "lxcclient"])
    );
    let services = status["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["map"] == "SERVICES_V1"))
        .cloned();
    assert_eq!(
        services.map(|m| (m["entries"].clone(), m["capacity"].clone())),
        Some((1.into(), 65536.into()))
    );

    // Tables fit 80 columns.
    for args in [
        &["bpf", "lb", "list"][..],
        &["bpf", "ct", "list"],
        &["status"],
        &["service", "list"],
    ] {
        let mut full = args.to_vec();
        full.extend(["--bpffs", &bpffs]);
        let table = weir(&full)?;
        assert!(table.lines().count() > 1, "{args:?}: {table}");
        for line in table.lines() {
            assert!(
                line.chars().count() <= 80,
                "{args:?}: {} columns: {line:?}",
                line.chars().count()
            );
        }
    }
    Ok(())
}
