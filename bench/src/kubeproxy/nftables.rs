//! kube-proxy's nftables mode as `nft -f` input, in table `ip kube-proxy`:
//! one verdict-map lookup (`service-ips`, keyed by address . protocol .
//! port) finds the service chain, which picks an endpoint with `numgen
//! random mod n vmap`; the endpoint chain DNATs. NodePorts: `service-nodeports`
//! for addresses in `nodeport-ips`. New connections also pass the
//! filter-forward checks against `no-endpoint-services` and `cluster-ips`.
use std::fmt::Write as _;

use super::{hash, service_ports, ProxyConfig, SvcPort};
use weir::model::ClusterState;

pub const TABLE: &str = "ip kube-proxy";

/// `nft -f` input: the whole table (after a `delete table` of an old one, if any).
pub fn rules(state: &ClusterState, cfg: &ProxyConfig) -> String {
    rules_for(&service_ports(state), cfg)
}

fn chain_base(p: &SvcPort) -> String {
    let base = format!("{}/{}/{}/{}", p.namespace, p.name, p.proto(), p.port_name);
    format!("{}-{base}", hash(&base, 8))
}

fn endpoint_chain(p: &SvcPort, ep: &(std::net::Ipv4Addr, u16)) -> String {
    let base = format!(
        "{}/{}/{}/{}__{}/{}",
        p.namespace,
        p.name,
        p.proto(),
        p.port_name,
        ep.0,
        ep.1
    );
    format!("endpoint-{}-{base}", hash(&base, 8))
}

const BASE: &str = r#"add table ip kube-proxy { comment "rules for kube-proxy" ; }
add chain ip kube-proxy mark-for-masquerade
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add chain ip kube-proxy masquerading
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
add chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
"#;

pub fn rules_for(ports: &[SvcPort], cfg: &ProxyConfig) -> String {
    let mut out = String::from(BASE);
    for ip in &cfg.node_ips {
        let _ = writeln!(out, "add element {TABLE} nodeport-ips {{ {ip} }}");
    }
    for p in ports.iter().filter(|p| !p.endpoints.is_empty()) {
        let base = chain_base(p);
        let (svc, proto) = (format!("service-{base}"), p.proto());
        let _ = writeln!(out, "\n# {}", p.port_name_text());
        // Chains first: a verdict map may only name chains that exist.
        let ext = format!("external-{base}");
        let _ = writeln!(out, "add chain {TABLE} {svc}");
        if p.node_port.is_some() {
            let _ = writeln!(out, "add chain {TABLE} {ext}");
        }
        for ep in &p.endpoints {
            let _ = writeln!(out, "add chain {TABLE} {}", endpoint_chain(p, ep));
        }
        let _ = writeln!(
            out,
            "add rule {TABLE} {svc} ip daddr {} ip saddr != {} jump mark-for-masquerade",
            p.cluster_ip, cfg.cluster_cidr
        );
        let targets: Vec<String> = p
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| format!("{i} : goto {}", endpoint_chain(p, ep)))
            .collect();
        let _ = writeln!(
            out,
            "add rule {TABLE} {svc} numgen random mod {} vmap {{ {} }}",
            p.endpoints.len(),
            targets.join(" , ")
        );
        if p.node_port.is_some() {
            let _ = writeln!(out, "add rule {TABLE} {ext} jump mark-for-masquerade");
            let _ = writeln!(out, "add rule {TABLE} {ext} goto {svc}");
        }
        for ep in &p.endpoints {
            let chain = endpoint_chain(p, ep);
            let _ = writeln!(
                out,
                "add rule {TABLE} {chain} ip saddr {} jump mark-for-masquerade",
                ep.0
            );
            let _ = writeln!(
                out,
                "add rule {TABLE} {chain} meta l4proto {proto} dnat to {}:{}",
                ep.0, ep.1
            );
        }
        let _ = writeln!(
            out,
            "add element {TABLE} cluster-ips {{ {} }}",
            p.cluster_ip
        );
        let _ = writeln!(
            out,
            "add element {TABLE} service-ips {{ {} . {proto} . {} : goto {svc} }}",
            p.cluster_ip, p.port
        );
        if let Some(node_port) = p.node_port {
            let _ = writeln!(
                out,
                "add element {TABLE} service-nodeports {{ {proto} . {node_port} : goto {ext} }}"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeproxy::fixture;

    #[test]
    fn two_services_with_two_endpoints_each() {
        let text = rules(&fixture::two_by_two(), &fixture::config());
        let services = text.strip_prefix(BASE).expect("base rules first");
        let (a, b) = ("JI3VSVS5", "QVTC5QVI");
        let e = ["K5F3ZH2N", "FYLRTLGN", "V62STRE2", "WLCDRPE5"];
        let expected = format!(
            r#"add element ip kube-proxy nodeport-ips {{ 198.18.0.1 }}

# ns1/a:p
add chain ip kube-proxy service-{a}-ns1/a/tcp/p
add chain ip kube-proxy endpoint-{e0}-ns1/a/tcp/p__198.18.1.11/8080
add chain ip kube-proxy endpoint-{e1}-ns1/a/tcp/p__198.18.1.12/8080
add rule ip kube-proxy service-{a}-ns1/a/tcp/p ip daddr 198.19.0.1 ip saddr != 198.18.0.0/16 jump mark-for-masquerade
add rule ip kube-proxy service-{a}-ns1/a/tcp/p numgen random mod 2 vmap {{ 0 : goto endpoint-{e0}-ns1/a/tcp/p__198.18.1.11/8080 , 1 : goto endpoint-{e1}-ns1/a/tcp/p__198.18.1.12/8080 }}
add rule ip kube-proxy endpoint-{e0}-ns1/a/tcp/p__198.18.1.11/8080 ip saddr 198.18.1.11 jump mark-for-masquerade
add rule ip kube-proxy endpoint-{e0}-ns1/a/tcp/p__198.18.1.11/8080 meta l4proto tcp dnat to 198.18.1.11:8080
add rule ip kube-proxy endpoint-{e1}-ns1/a/tcp/p__198.18.1.12/8080 ip saddr 198.18.1.12 jump mark-for-masquerade
add rule ip kube-proxy endpoint-{e1}-ns1/a/tcp/p__198.18.1.12/8080 meta l4proto tcp dnat to 198.18.1.12:8080
add element ip kube-proxy cluster-ips {{ 198.19.0.1 }}
add element ip kube-proxy service-ips {{ 198.19.0.1 . tcp . 80 : goto service-{a}-ns1/a/tcp/p }}

# ns1/b:p
add chain ip kube-proxy service-{b}-ns1/b/udp/p
add chain ip kube-proxy external-{b}-ns1/b/udp/p
add chain ip kube-proxy endpoint-{e2}-ns1/b/udp/p__198.18.1.13/5353
add chain ip kube-proxy endpoint-{e3}-ns1/b/udp/p__198.18.1.14/5353
add rule ip kube-proxy service-{b}-ns1/b/udp/p ip daddr 198.19.0.2 ip saddr != 198.18.0.0/16 jump mark-for-masquerade
add rule ip kube-proxy service-{b}-ns1/b/udp/p numgen random mod 2 vmap {{ 0 : goto endpoint-{e2}-ns1/b/udp/p__198.18.1.13/5353 , 1 : goto endpoint-{e3}-ns1/b/udp/p__198.18.1.14/5353 }}
add rule ip kube-proxy external-{b}-ns1/b/udp/p jump mark-for-masquerade
add rule ip kube-proxy external-{b}-ns1/b/udp/p goto service-{b}-ns1/b/udp/p
add rule ip kube-proxy endpoint-{e2}-ns1/b/udp/p__198.18.1.13/5353 ip saddr 198.18.1.13 jump mark-for-masquerade
add rule ip kube-proxy endpoint-{e2}-ns1/b/udp/p__198.18.1.13/5353 meta l4proto udp dnat to 198.18.1.13:5353
add rule ip kube-proxy endpoint-{e3}-ns1/b/udp/p__198.18.1.14/5353 ip saddr 198.18.1.14 jump mark-for-masquerade
add rule ip kube-proxy endpoint-{e3}-ns1/b/udp/p__198.18.1.14/5353 meta l4proto udp dnat to 198.18.1.14:5353
add element ip kube-proxy cluster-ips {{ 198.19.0.2 }}
add element ip kube-proxy service-ips {{ 198.19.0.2 . udp . 53 : goto service-{b}-ns1/b/udp/p }}
add element ip kube-proxy service-nodeports {{ udp . 30053 : goto external-{b}-ns1/b/udp/p }}
"#,
            e0 = e[0],
            e1 = e[1],
            e2 = e[2],
            e3 = e[3],
        );
        assert_eq!(services, expected);
    }
}
