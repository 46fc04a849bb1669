//! Path MTU discovery through a service, end to end, with real routers:
//!
//! ```text
//!   far 198.18.102.2 ─1500─ mid ─1280─ ext ── lan ── node-1 ── be1
//! ```
//!
//! `ext` is the lan's external client, here a router too, and `mid` another
//! router: a client network behind a narrower link, as with a VPN or PPPoE.
//! be1 answers a download from `far` to a LoadBalancer IP; its segments
//! (1500-byte packets: far's own link is 1500 bytes, so far's MSS does not
//! hide the bottleneck) cannot cross ext -> mid, and ext sends "fragmentation
//! needed" to their source, the LoadBalancer IP, which it routes to node-1.
//! Only if Weir translates that error back to be1 (quoting be1 -> far) does
//! be1 learn the path MTU and resend smaller segments; without it the
//! download stalls. Through XDP (generic, as the lan's bare bridge ports
//! need) and through tc (`--xdp-mode=off`).
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use weir_tests::{
    cluster::EXT_IP,
    cmd::ip,
    manifests::{port, service_with, slice_eps},
    netns::{in_netns, Netns},
    node::make_router,
    scenario::CLUSTER_IP,
    Cluster,
};

const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 1);
const FAR: Ipv4Addr = Ipv4Addr::new(198, 18, 102, 2);
/// The download's size: many full segments.
const SIZE: usize = 256 * 1024;

/// A TCP server on :8080 in `ns` that sends SIZE bytes to each connection
/// and closes it; it stops after a minute.
fn serve_download(ns: &str) -> Result<()> {
    let listener = in_netns(ns, || {
        TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], 8080)))
    })??;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let body = vec![b'w'; SIZE];
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
                    let _ = s.write_all(&body);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Ok(())
}

/// far and mid, wired as in the module comment; ext and node-1 route to them.
fn far_network(c: &Cluster, tag: &str) -> Result<(Netns, Netns)> {
    let mid = Netns::create(&format!("mid{tag}"))?;
    let far = Netns::create(&format!("far{tag}"))?;
    let (ext, m, f) = (c.ext_ns(), mid.name.as_str(), far.name.as_str());
    let steps: Vec<Vec<&str>> = vec![
        vec![
            "-n", ext, "link", "add", "tomid", "mtu", "1280", "type", "veth", "peer", "name",
            "toext", "netns", m,
        ],
        vec!["-n", m, "link", "set", "toext", "mtu", "1280", "up"],
        vec!["-n", ext, "link", "set", "tomid", "up"],
        vec!["-n", ext, "addr", "add", "198.18.103.1/24", "dev", "tomid"],
        vec!["-n", m, "addr", "add", "198.18.103.2/24", "dev", "toext"],
        vec![
            "-n", m, "link", "add", "tofar", "type", "veth", "peer", "name", "eth0", "netns", f,
        ],
        vec!["-n", m, "link", "set", "tofar", "up"],
        vec!["-n", f, "link", "set", "eth0", "up"],
        vec!["-n", m, "addr", "add", "198.18.102.1/24", "dev", "tofar"],
        vec!["-n", f, "addr", "add", "198.18.102.2/24", "dev", "eth0"],
        vec!["-n", f, "route", "add", "default", "via", "198.18.102.1"],
        vec!["-n", m, "route", "add", "default", "via", "198.18.103.1"],
        vec![
            "-n",
            ext,
            "route",
            "add",
            "198.18.102.0/24",
            "via",
            "198.18.103.2",
        ],
    ];
    for step in &steps {
        ip(step).with_context(|| format!("ip {}", step.join(" ")))?;
    }
    make_router(ext, &["tomid"])?;
    make_router(m, &["toext", "tofar"])?;
    let ext_ip = EXT_IP.to_string();
    ip(&[
        "-n",
        &c.node(1).netns.name,
        "route",
        "add",
        "198.18.102.0/23",
        "via",
        &ext_ip,
    ])?;
    Ok((mid, far))
}

/// Downloads from LB_IP:80 in `far`: the bytes received, or the error.
fn download(far: &str) -> Result<usize> {
    in_netns(far, || -> Result<usize> {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((LB_IP, 80)), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).context("reading the download")?;
        Ok(got.len())
    })?
}

#[test]
fn a_download_through_a_narrower_link_completes_through_xdp_and_tc() -> Result<()> {
    for mode in ["--xdp-mode=generic", "--xdp-mode=off"] {
        let mut c = Cluster::new(1)?;
        c.add_pod(1, "be1")?;
        let be1 = c.pod("be1").netns.name.clone();
        serve_download(&be1)?;
        let tag = c.tag.clone();
        let (_mid, far) = far_network(&c, &tag)?;
        let ports = [port("http", 80, "TCP", 8080)];
        let svc = service_with(
            "e2e",
            "dl",
            CLUSTER_IP,
            &ports,
            "  type: LoadBalancer\n",
            &[],
        ) + &format!("status:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}}}]\n");
        c.manifests.write("svc.yaml", &svc)?;
        c.manifests.write(
            "slice.yaml",
            &slice_eps("e2e", "dl-1", "dl", &ports, &c.ready_eps(&["be1"])),
        )?;
        c.start_agents(&[mode])?;
        c.wait_frontend(&format!("{LB_IP}:80/TCP"), 1)?;
        let got = download(&far.name)
            .with_context(|| format!("{mode}: agent log:\n{}", c.agent_logs()))?;
        assert_eq!(got, SIZE, "{mode}");
        // be1 learnt the path MTU to far from the translated error.
        let far_ip = FAR.to_string();
        let route = ip(&["-n", &be1, "route", "get", &far_ip])?;
        assert!(route.contains("mtu 1280"), "{mode}: {route}");
    }
    Ok(())
}
