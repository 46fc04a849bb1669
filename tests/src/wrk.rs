//! wrk (the HTTP load generator) run in a network namespace, and its
//! report parsed: requests/s, latency percentiles and errors.
use std::{process::Command, time::Duration};

use anyhow::{bail, Context, Result};

use crate::netns;

/// What one wrk run reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WrkResult {
    pub requests_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Responses other than 2xx/3xx.
    pub non_2xx: u64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
}

/// How to load: threads, open connections, how long, extra headers.
#[derive(Clone, Debug)]
pub struct WrkLoad {
    pub threads: usize,
    pub connections: usize,
    pub duration: Duration,
    pub headers: Vec<String>,
}

/// Runs wrk against `url` from namespace `ns`. wrk stops by itself after
/// `duration`; its own timeout per request is 2 s.
pub fn run(ns: &str, url: &str, load: &WrkLoad) -> Result<WrkResult> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns::path(ns).display()))
        .args(["--", "wrk", "--latency", "--timeout", "2s"])
        .arg(format!("-t{}", load.threads.max(1)))
        .arg(format!("-c{}", load.connections.max(load.threads).max(1)))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)));
    for h in &load.headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("running wrk (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk {url} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&text)
}

/// A wrk duration ("812.00us", "2.30ms", "1.01s", "1.00m") in µs.
fn micros(v: &str) -> Option<f64> {
    let v = v.trim();
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(n * scale)
}

/// Parses wrk's report (run with --latency).
pub fn parse(text: &str) -> Result<WrkResult> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let requests_per_s = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's report: {text}"))?;
    let p50_us = field("50%")
        .and_then(micros)
        .with_context(|| format!("no 50% latency in wrk's report: {text}"))?;
    let p99_us = field("99%")
        .and_then(micros)
        .with_context(|| format!("no 99% latency in wrk's report: {text}"))?;
    let non_2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let socket_errors = field("Socket errors:")
        .map(|v| {
            v.split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok(WrkResult {
        requests_per_s,
        p50_us,
        p99_us,
        non_2xx,
        socket_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 10s test @ http://198.18.0.1/api/items
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.47ms    1.13ms  20.09ms   80.43%
    Req/Sec     6.59k   564.07     7.67k    72.50%
  Latency Distribution
     50%  812.00us
     75%    2.87ms
     90%    3.59ms
     99%    1.02s
  131168 requests in 10.00s, 83.99MB read
  Socket errors: connect 1, read 2, write 0, timeout 4
  Non-2xx or 3xx responses: 12
Requests/sec:  13114.35
Transfer/sec:      8.40MB
";

    #[test]
    fn parses_rate_percentiles_and_errors() {
        let r = parse(REPORT).expect("parse");
        assert_eq!(
            r,
            WrkResult {
                requests_per_s: 13114.35,
                p50_us: 812.0,
                p99_us: 1.02e6,
                non_2xx: 12,
                socket_errors: 7,
            }
        );
    }

    #[test]
    fn a_report_without_a_rate_is_an_error() {
        let cut = REPORT.replace("Requests/sec:  13114.35\n", "");
        let e = parse(&cut).expect_err("no rate");
        assert!(e.to_string().contains("Requests/sec"), "{e}");
        assert_eq!(micros("2.30ms"), Some(2300.0));
        assert_eq!(micros("7x"), None);
    }
}
