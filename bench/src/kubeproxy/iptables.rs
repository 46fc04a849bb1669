//! kube-proxy's iptables mode as `iptables-restore` input: KUBE-SERVICES
//! matches each ClusterIP:port in turn (a linear chain) and jumps to
//! KUBE-SVC-*, which picks an endpoint with `statistic --mode random`
//! (probability 1/n, 1/(n-1), ... 1) and jumps to KUBE-SEP-*, which DNATs;
//! KUBE-MARK-MASQ marks what KUBE-POSTROUTING masquerades. NodePorts go
//! through KUBE-NODEPORTS (last rule of KUBE-SERVICES, local addresses only)
//! and KUBE-EXT-*.
use std::fmt::Write as _;

use super::{hash, service_ports, ProxyConfig, SvcPort};
use weir::model::ClusterState;

/// `iptables-restore` input for the filter and nat tables.
pub fn rules(state: &ClusterState, cfg: &ProxyConfig) -> String {
    rules_for(&service_ports(state), cfg)
}

fn svc_chain(p: &SvcPort) -> String {
    format!("KUBE-SVC-{}", hash(&base(p), 16))
}

fn ext_chain(p: &SvcPort) -> String {
    format!("KUBE-EXT-{}", hash(&base(p), 16))
}

fn sep_chain(p: &SvcPort, ep: &(std::net::Ipv4Addr, u16)) -> String {
    format!(
        "KUBE-SEP-{}",
        hash(&format!("{}{}:{}", base(p), ep.0, ep.1), 16)
    )
}

fn base(p: &SvcPort) -> String {
    format!("{}{}", p.port_name_text(), p.proto())
}

/// A `--comment` argument, quoted when it has spaces (as iptables-save writes it).
fn comment(text: &str) -> String {
    if text.contains(' ') {
        format!("\"{text}\"")
    } else {
        text.to_string()
    }
}

pub fn rules_for(ports: &[SvcPort], cfg: &ProxyConfig) -> String {
    let mut chains = String::new();
    let mut out = String::new();
    // filter: the forwarding rules kube-proxy installs for every node.
    out.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    out.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-NODEPORTS - [0:0]\n");
    out.push_str("-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n");
    out.push_str("-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n");
    out.push_str(
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
    );
    out.push_str("-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    out.push_str("-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n");
    out.push_str("-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    out.push_str("COMMIT\n");

    out.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    out.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    let mut services = String::new();
    let mut nodeports = String::new();
    let mut body = String::new();
    for p in ports.iter().filter(|p| !p.endpoints.is_empty()) {
        let (name, proto, svc) = (p.port_name_text(), p.proto(), svc_chain(p));
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            services,
            "-A KUBE-SERVICES -m comment --comment {} -m {proto} -p {proto} -d {} --dport {} -j {svc}",
            comment(&format!("{name} cluster IP")),
            p.cluster_ip,
            p.port
        );
        if let Some(node_port) = p.node_port {
            let ext = ext_chain(p);
            let _ = writeln!(chains, ":{ext} - [0:0]");
            let _ = writeln!(
                nodeports,
                "-A KUBE-NODEPORTS -m comment --comment {} -m {proto} -p {proto} --dport {node_port} -j {ext}",
                comment(&name)
            );
            let _ = writeln!(
                body,
                "-A {ext} -m comment --comment {} -j KUBE-MARK-MASQ",
                comment(&format!(
                    "masquerade traffic for {name} external destinations"
                ))
            );
            let _ = writeln!(body, "-A {ext} -j {svc}");
        }
        let _ = writeln!(
            body,
            "-A {svc} -m comment --comment {} -m {proto} -p {proto} -d {} --dport {} ! -s {} -j KUBE-MARK-MASQ",
            comment(&format!("{name} cluster IP")),
            p.cluster_ip,
            p.port,
            cfg.cluster_cidr
        );
        let n = p.endpoints.len();
        for (i, ep) in p.endpoints.iter().enumerate() {
            let sep = sep_chain(p, ep);
            let c = comment(&format!("{name} -> {}:{}", ep.0, ep.1));
            if i + 1 < n {
                let probability = 1.0 / (n - i) as f64;
                let _ = writeln!(
                    body,
                    "-A {svc} -m comment --comment {c} -m statistic --mode random --probability {probability:.10} -j {sep}"
                );
            } else {
                let _ = writeln!(body, "-A {svc} -m comment --comment {c} -j {sep}");
            }
        }
        for ep in &p.endpoints {
            let sep = sep_chain(p, ep);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let _ = writeln!(
                body,
                "-A {sep} -m comment --comment {} -s {} -j KUBE-MARK-MASQ",
                comment(&name),
                ep.0
            );
            let _ = writeln!(
                body,
                "-A {sep} -m comment --comment {} -m {proto} -p {proto} -j DNAT --to-destination {}:{}",
                comment(&name),
                ep.0,
                ep.1
            );
        }
    }
    out.push_str(&chains);
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    out.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    out.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    out.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    out.push_str(&nodeports);
    out.push_str(&services);
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    out.push_str(&body);
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeproxy::fixture;

    #[test]
    fn two_services_with_two_endpoints_each() {
        let text = rules(&fixture::two_by_two(), &fixture::config());
        let (a, b) = ("KUBE-SVC-DUO5WJ3N4QNNABHT", "KUBE-SVC-YZFJB4FH4EJI2GFV");
        let (ext_b, sep) = (
            "KUBE-EXT-YZFJB4FH4EJI2GFV",
            [
                "KUBE-SEP-VIOUCUTMTAJGAYA4",
                "KUBE-SEP-KCBTTV2DMU2SU3BX",
                "KUBE-SEP-4Q2TTRVO2T265OJD",
                "KUBE-SEP-XZDYTO3JJYIPCPHM",
            ],
        );
        let expected = format!(
            r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:{a} - [0:0]
:{s0} - [0:0]
:{s1} - [0:0]
:{b} - [0:0]
:{ext_b} - [0:0]
:{s2} - [0:0]
:{s3} - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-NODEPORTS -m comment --comment ns1/b:p -m udp -p udp --dport 30053 -j {ext_b}
-A KUBE-SERVICES -m comment --comment "ns1/a:p cluster IP" -m tcp -p tcp -d 198.19.0.1 --dport 80 -j {a}
-A KUBE-SERVICES -m comment --comment "ns1/b:p cluster IP" -m udp -p udp -d 198.19.0.2 --dport 53 -j {b}
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A {a} -m comment --comment "ns1/a:p cluster IP" -m tcp -p tcp -d 198.19.0.1 --dport 80 ! -s 198.18.0.0/16 -j KUBE-MARK-MASQ
-A {a} -m comment --comment "ns1/a:p -> 198.18.1.11:8080" -m statistic --mode random --probability 0.5000000000 -j {s0}
-A {a} -m comment --comment "ns1/a:p -> 198.18.1.12:8080" -j {s1}
-A {s0} -m comment --comment ns1/a:p -s 198.18.1.11 -j KUBE-MARK-MASQ
-A {s0} -m comment --comment ns1/a:p -m tcp -p tcp -j DNAT --to-destination 198.18.1.11:8080
-A {s1} -m comment --comment ns1/a:p -s 198.18.1.12 -j KUBE-MARK-MASQ
-A {s1} -m comment --comment ns1/a:p -m tcp -p tcp -j DNAT --to-destination 198.18.1.12:8080
-A {ext_b} -m comment --comment "masquerade traffic for ns1/b:p external destinations" -j KUBE-MARK-MASQ
-A {ext_b} -j {b}
-A {b} -m comment --comment "ns1/b:p cluster IP" -m udp -p udp -d 198.19.0.2 --dport 53 ! -s 198.18.0.0/16 -j KUBE-MARK-MASQ
-A {b} -m comment --comment "ns1/b:p -> 198.18.1.13:5353" -m statistic --mode random --probability 0.5000000000 -j {s2}
-A {b} -m comment --comment "ns1/b:p -> 198.18.1.14:5353" -j {s3}
-A {s2} -m comment --comment ns1/b:p -s 198.18.1.13 -j KUBE-MARK-MASQ
-A {s2} -m comment --comment ns1/b:p -m udp -p udp -j DNAT --to-destination 198.18.1.13:5353
-A {s3} -m comment --comment ns1/b:p -s 198.18.1.14 -j KUBE-MARK-MASQ
-A {s3} -m comment --comment ns1/b:p -m udp -p udp -j DNAT --to-destination 198.18.1.14:5353
COMMIT
"#,
            s0 = sep[0],
            s1 = sep[1],
            s2 = sep[2],
            s3 = sep[3],
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn probabilities_follow_kube_proxy() {
        let mut ports = crate::kubeproxy::service_ports(&fixture::two_by_two());
        ports.truncate(1);
        ports[0].endpoints = (1..=4u8)
            .map(|i| (std::net::Ipv4Addr::new(198, 18, 2, i), 80))
            .collect();
        let text = rules_for(&ports, &fixture::config());
        let probabilities: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split("--probability ").nth(1))
            .map(|rest| rest.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(
            probabilities,
            ["0.2500000000", "0.3333333333", "0.5000000000"]
        );
    }
}
