use std::time::Instant;
use weir::{
    dataplane::{
        sync::{plan_with, PlanConfig},
        Dataplane,
    },
    translate::translate,
};
use weir_bench::workload::{self, Workload};
fn main() -> anyhow::Result<()> {
    let size = 10_000;
    let w = Workload::new(size, 10);
    let state = w.state();
    let facts = workload::node_facts();
    let cfg = PlanConfig {
        max_backends: 262_144,
        ..PlanConfig::default()
    };
    let mut dp = Dataplane::load_unpinned(cfg)?;
    let t = Instant::now();
    let d = translate(&state, &facts);
    eprintln!(
        "translate {:?} frontends {}",
        t.elapsed(),
        d.frontends.len()
    );
    let t = Instant::now();
    dp.sync(&d)?;
    eprintln!("first sync {:?}", t.elapsed());
    for _ in 0..3 {
        let t = Instant::now();
        let d = translate(&state, &facts);
        let tt = t.elapsed();
        let t = Instant::now();
        let p = plan_with(dp.programmed(), &d, &cfg)?;
        let tp = t.elapsed();
        let t = Instant::now();
        let s = dp.sync(&d)?;
        eprintln!(
            "translate {tt:?} plan {tp:?} sync {:?} ops {} {}",
            t.elapsed(),
            s.ops,
            p.ops.len()
        );
    }
    Ok(())
}
