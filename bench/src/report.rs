//! RESULTS.md: the machine, then one section per benchmark with its tables,
//! notes and plot. Everything in it comes from the run that writes it.
use std::{fmt::Write as _, path::Path};

use crate::machine::Machine;

/// A table with a header row.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn markdown(&self, out: &mut String) {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        out.push_str(&line(&self.headers));
        let rule: Vec<String> = self.headers.iter().map(|_| "---".to_string()).collect();
        out.push_str(&line(&rule));
        for r in &self.rows {
            out.push_str(&line(r));
        }
    }
}

/// One line of a plot: a name and (x, y) points.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line plot: x is usually the number of services (log scale).
#[derive(Clone, Debug, Default)]
pub struct Plot {
    /// File name under the output directory, e.g. "perpacket.png".
    pub file: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub series: Vec<Series>,
}

#[derive(Clone, Debug, Default)]
pub struct Section {
    pub title: String,
    /// Markdown paragraphs before the tables: what was measured and how.
    pub intro: String,
    pub tables: Vec<(String, Table)>,
    pub notes: Vec<String>,
    pub plots: Vec<Plot>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub command: String,
    pub date: String,
    pub machine: Machine,
    pub sections: Vec<Section>,
    /// Observations about the run (other builds running, load).
    pub conditions: Vec<String>,
    pub duration_s: f64,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("# Weir benchmark results\n\n");
        let _ = writeln!(
            out,
            "Written by `{}` on {} in {:.0} s. Every figure here comes from that one run, \
             and every ratio compares figures of that run. Numbers from a shared or \
             virtual machine are noisy: read the ratios, not the absolute values.\n",
            self.command, self.date, self.duration_s
        );
        out.push_str("## Machine\n\n");
        let m = &self.machine;
        let mut t = Table::new(&["", ""]);
        for (k, v) in [
            ("CPU", m.cpu.clone()),
            ("cores", m.cores.to_string()),
            ("kernel", m.kernel.clone()),
            ("memory", m.memory.clone()),
            ("iptables", m.iptables.clone()),
            ("nftables", m.nft.clone()),
            ("load average at start", m.load_at_start.clone()),
        ] {
            t.row(vec![k.to_string(), v]);
        }
        t.markdown(&mut out);
        if !self.conditions.is_empty() {
            out.push('\n');
            for c in &self.conditions {
                let _ = writeln!(out, "- {c}");
            }
        }
        for s in &self.sections {
            let _ = write!(out, "\n## {}\n\n", s.title);
            if !s.intro.is_empty() {
                let _ = write!(out, "{}\n\n", s.intro.trim_end());
            }
            for (caption, table) in &s.tables {
                if !caption.is_empty() {
                    let _ = write!(out, "{caption}\n\n");
                }
                table.markdown(&mut out);
                out.push('\n');
            }
            for n in &s.notes {
                let _ = writeln!(out, "- {n}");
            }
            if !s.notes.is_empty() {
                out.push('\n');
            }
            for p in &s.plots {
                let _ = write!(out, "![{}]({})\n\n", p.title, p.file);
            }
        }
        out
    }

    /// Writes RESULTS.md and the plots into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        for s in &self.sections {
            for p in &s.plots {
                crate::plot::draw(p, &dir.join(&p.file))?;
            }
        }
        std::fs::write(dir.join("RESULTS.md"), self.markdown())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_as_markdown() {
        let mut t = Table::new(&["a", "b"]);
        t.row(vec!["1".into(), "2".into()]);
        let report = Report {
            command: "cargo xtask bench --quick".into(),
            date: "2026-01-01".into(),
            sections: vec![Section {
                title: "S".into(),
                tables: vec![(String::new(), t)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let md = report.markdown();
        assert!(
            md.contains("## S\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n"),
            "{md}"
        );
    }
}
