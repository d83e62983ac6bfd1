mod bpfsys;
mod packet;
mod perpacket;
mod rules;
mod stats;
fn main() -> anyhow::Result<()> {
    let cfg = perpacket::Config { services: vec![1, 1000], conntrack: vec![1000], rounds: 3, runs_per_sample: 2000, repeat: 20000 };
    let r = perpacket::run(&cfg)?;
    for p in &r.points {
        for c in &p.cases {
            let k = stats::Summary::of(&c.katran_ns).unwrap();
            let rp = stats::Summary::of(&c.repeat_ns);
            println!("{} {} {:?}: katran {} repeat {:?} dropped {}", p.services, p.conntrack_fill, c.case, k.display(1), rp.map(|r| r.display(1)), c.dropped_runs);
        }
        for c in perpacket::Case::ALL { println!("  {:?} in lookups {:?}", c, p.in_lookups(c).map(|s| s.display(2))); }
    }
    Ok(())
}
