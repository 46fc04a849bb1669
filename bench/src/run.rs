//! One benchmark run: the machine, then the selected sections, into a report.
use std::{path::Path, time::Instant};

use anyhow::Result;

use crate::{
    machine::{compilers_running, load_average, Machine},
    perpacket,
    report::Report,
    Mode,
};

/// Benchmark sections, by number as in RESULTS.md.
pub const ALL_SECTIONS: [u8; 6] = [1, 2, 3, 4, 5, 6];

pub fn run(mode: Mode, sections: &[u8], out: &Path) -> Result<Report> {
    let started = Instant::now();
    let mode_flag = match mode {
        Mode::Quick => "--quick",
        Mode::Full => "--full",
    };
    let mut report = Report {
        command: format!("cargo xtask bench {mode_flag}"),
        date: crate::machine::now_utc(),
        machine: Machine::detect(),
        ..Default::default()
    };
    let mut busy = Vec::new();
    for &n in ALL_SECTIONS.iter().filter(|n| sections.contains(n)) {
        busy.push(compilers_running());
        let section = match n {
            1 => perpacket::run(mode)?,
            2 => crate::e2e::run(mode)?,
            3 => crate::control::run(mode)?,
            4 => crate::l7::run(mode)?,
            5 => crate::gateway_l7::run(mode)?,
            6 => crate::tls_stream::run(mode)?,
            _ => continue,
        };
        report.sections.push(section);
    }
    busy.push(compilers_running());
    let peak = busy.iter().copied().max().unwrap_or(0);
    if peak > 0 {
        report.conditions.push(format!(
            "Other builds were running during this run: up to {peak} compiler processes \
             (rustc, cc, ld) were seen between sections. Absolute numbers are lower and \
             noisier than on an idle machine."
        ));
    }
    report
        .conditions
        .push(format!("Load average at the end: {}.", load_average()));
    report.duration_s = started.elapsed().as_secs_f64();
    report.write(out)?;
    Ok(report)
}
