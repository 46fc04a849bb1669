//! Reading Prometheus text exposition in tests: a sample by name and labels,
//! and the agent's /metrics from inside its node namespace.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use anyhow::{ensure, Result};

/// One sample: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// Every sample of metric `name` (exactly that name, e.g. `foo_total` or `foo_bucket`).
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.trim().parse().ok()?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            (metric == name).then(|| (parse_labels(labels), value))
        })
        .collect()
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    // Label values in these tests hold no commas or escaped quotes.
    text.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

/// The value of the sample of `name` whose labels include `labels`; None if
/// there is none (and an error in the caller's assertion if there are two).
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples(text, name)
        .into_iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .collect();
    match matching.as_slice() {
        [v] => Some(*v),
        _ => None,
    }
}

/// The cumulative count of histogram `name` in the bucket with upper bound `le`.
pub fn bucket(text: &str, name: &str, le: f64) -> Option<f64> {
    samples(text, &format!("{name}_bucket"))
        .into_iter()
        .find(|(l, _)| l.get("le").and_then(|v| v.parse::<f64>().ok()) == Some(le))
        .map(|(_, v)| v)
}

/// The agent's /metrics (default address 127.0.0.1:10249) from inside `node_ns`.
pub fn scrape(node_ns: &str) -> Result<String> {
    let r = crate::http::get(
        node_ns,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249),
        "/metrics",
    )?;
    ensure!(r.status == 200, "/metrics: status {}", r.status);
    Ok(r.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_samples_by_labels_and_buckets_by_bound() {
        let text = "# HELP x x\nfoo_total{a=\"1\",b=\"2\"} 3\nfoo_total{a=\"2\",b=\"2\"} 4\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"1.0\"} 2\nplain 7\n";
        assert_eq!(value(text, "foo_total", &[("a", "2")]), Some(4.0));
        assert_eq!(value(text, "foo_total", &[("b", "2")]), None);
        assert_eq!(value(text, "plain", &[]), Some(7.0));
        assert_eq!(bucket(text, "h", 1.0), Some(2.0));
        assert_eq!(bucket(text, "h", 2.0), None);
    }
}
