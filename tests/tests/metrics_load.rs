//! `/healthz` stays quick while the agent is busy: 200 slow clients of the
//! metrics server (trickling request heads, some past the header timeout,
//! scraping `/metrics` and reading the answer slowly, reconnecting when cut
//! off), a conntrack of 100 000 entries that a scrape would walk, and a
//! manifest of 300 imports rewritten every 300 ms, 100 of them changed (a
//! reconcile, a DNS zone build and a conntrack scan each time). The p99 of 100 `/healthz` probes
//! must stay under 100 ms — a bound on starvation, a huge margin over the
//! sub-millisecond answer of an idle agent, not a speed goal.
//!
//! Needs root; run by `cargo xtask test`.

use std::{
    fmt::Write as _,
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use mcs_common::{CtKey, CtValue, PROTO_TCP, names};
use mcs_tests::{
    agent::{Agent, AgentConfig},
    netns::{self, Netns, unique_prefix},
};

const IMPORTS: usize = 300;
const SLOW_CLIENTS: usize = 200;
const CONNTRACK_ENTRIES: u32 = 100_000;
const PROBES: usize = 100;
const BASELINE_PROBES: usize = 30;
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const P99_BOUND: Duration = Duration::from_millis(100);
const METRICS_PORT: u16 = 9464;
const DNS_PORT: u16 = 5353;
const REWRITE_INTERVAL: Duration = Duration::from_millis(300);

/// 300 imports with 4 endpoints each; `round` moves one endpoint of a third
/// of them, so each rewrite changes 100 imports.
fn manifest(round: u32) -> String {
    let mut yaml = String::new();
    for i in 0..IMPORTS {
        let (hi, lo) = (i / 200, i % 200 + 1);
        let _ = write!(
            yaml,
            "---\napiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceImport\n\
             metadata: {{name: svc-{i}, namespace: load}}\n\
             spec: {{type: ClusterSetIP, ips: [\"10.96.{hi}.{lo}\"], ports: [{{name: http, protocol: TCP, port: 80}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc-{i}-a, namespace: load, labels: {{multicluster.kubernetes.io/service-name: svc-{i}, multicluster.kubernetes.io/source-cluster: cluster-a}}}}\n\
             addressType: IPv4\nports: [{{name: http, protocol: TCP, port: 8080}}]\nendpoints:\n"
        );
        for e in 0..4u32 {
            let moved = if e == 0 && i % 3 == round as usize % 3 {
                10 + round % 200
            } else {
                e
            };
            let _ = writeln!(yaml, "- addresses: [\"10.1.{}.{}\"]", i % 250, moved + 1);
        }
    }
    yaml
}

/// Fills the agent's conntrack with `count` flows that a map walk must visit.
fn fill_conntrack(bpffs_dir: &Path, count: u32) {
    let pin = mcs_agent::dataplane::map_pin_dir(bpffs_dir).join(names::CONNTRACK);
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    let mut conntrack: HashMap<_, CtKey, CtValue> =
        HashMap::try_from(Map::from_map_data(data).expect("map")).expect("conntrack map");
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 1), 80);
    let backend = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), 8080);
    for i in 0..count {
        let [_, a, b, c] = i.to_be_bytes();
        let client = SocketAddrV4::new(Ipv4Addr::new(10, a, b, c), 40_000);
        conntrack
            .insert(
                CtKey::new(client, vip, PROTO_TCP),
                CtValue::new(backend, 0, 1, backend, 0),
                0,
            )
            .expect("conntrack insert");
    }
}

/// Connects (the calling thread is in the agent's namespace).
fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
}

/// Whether an HTTP response has status 200.
fn ok(response: &str) -> bool {
    response.split_whitespace().nth(1) == Some("200")
}

/// One GET over a new connection; the whole response.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // One write, as a kubelet sends it (`write!` would send the pieces as
    // separate segments and wait on delayed ACKs between them).
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// What the slow clients managed.
#[derive(Default)]
struct SlowStats {
    connections: AtomicU64,
    scrapes: AtomicU64,
    cut_off: AtomicU64,
}

/// A slow scraper: trickles a request head (one header line every 250 ms,
/// `lines` of them: 10 s for the longest, past the header timeout), then
/// reads the answer 16 KiB every 50 ms; reconnects a second after each end.
fn slow_client(addr: SocketAddr, seed: usize, stop: &AtomicBool, stats: &SlowStats) {
    let mut round = seed;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let lines = 1 + (round * 7) % 40;
        let outcome = (|| -> std::io::Result<bool> {
            let mut stream = connect(addr)?;
            stats.connections.fetch_add(1, Ordering::Relaxed);
            stream.set_read_timeout(Some(Duration::from_secs(15)))?;
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n")?;
            for line in 0..lines {
                if stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                thread::sleep(Duration::from_millis(250));
                write!(stream, "X-Slow-{line}: {round}\r\n")?;
            }
            stream.write_all(b"Connection: close\r\n\r\n")?;
            let mut response = Vec::new();
            let mut buffer = vec![0_u8; 16 * 1024];
            loop {
                let read = stream.read(&mut buffer)?;
                if read == 0 {
                    break;
                }
                response.extend_from_slice(&buffer[..read]);
                thread::sleep(Duration::from_millis(50));
            }
            Ok(ok(&String::from_utf8_lossy(&response)))
        })();
        match outcome {
            Ok(true) => stats.scrapes.fetch_add(1, Ordering::Relaxed),
            _ => stats.cut_off.fetch_add(1, Ordering::Relaxed),
        };
        thread::sleep(Duration::from_secs(1));
    }
}

/// Probes `/healthz` like a kubelet (a new connection each time, one every
/// [`PROBE_INTERVAL`]): the latencies of the good answers, and the failures.
fn probe(ns: &str, addr: SocketAddr, count: usize) -> (Vec<Duration>, Vec<String>) {
    netns::enter(ns, || {
        let mut latencies = Vec::with_capacity(count);
        let mut failures = Vec::new();
        for _ in 0..count {
            let started = Instant::now();
            match get(addr, "/healthz") {
                Ok(response) if ok(&response) => latencies.push(started.elapsed()),
                Ok(response) => failures.push(response.lines().next().unwrap_or("").to_owned()),
                Err(error) => failures.push(error.to_string()),
            }
            thread::sleep(PROBE_INTERVAL);
        }
        (latencies, failures)
    })
    .expect("enter")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn healthz_stays_quick_under_slow_metrics_clients_while_reconciling() {
    mcs_tests::require_root();
    let netns = Netns::create(&format!("{}mload", unique_prefix())).expect("netns");
    netns
        .ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        .expect("veth");
    netns.ip(&["link", "set", "v0", "up"]).expect("up");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("imports.yaml");
    fs::write(&file, manifest(0)).expect("manifest");
    let metrics = SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
    let mut config = AgentConfig::new(&file, vec!["v0".to_owned()]);
    config.extra_args = vec![
        "--metrics-addr".into(),
        metrics.to_string(),
        "--dns-addr".into(),
        format!("127.0.0.1:{DNS_PORT}"),
    ];
    let mut agent = Agent::start(&netns, &config).expect("agent");
    let ns = netns.name().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready =
        || netns::enter(&ns, || get(metrics, "/readyz")).is_ok_and(|r| r.is_ok_and(|r| ok(&r)));
    while !ready() {
        assert!(Instant::now() < deadline, "never ready:\n{}", agent.log());
        thread::sleep(Duration::from_millis(100));
    }
    fill_conntrack(agent.bpffs_dir(), CONNTRACK_ENTRIES);
    // The same probes without the load, for the failure message.
    let (mut baseline, _) = probe(&ns, metrics, BASELINE_PROBES);
    baseline.sort();

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(SlowStats::default());
    let mut threads = Vec::new();
    for seed in 0..SLOW_CLIENTS {
        let (ns, stop, stats) = (ns.clone(), Arc::clone(&stop), Arc::clone(&stats));
        threads.push(thread::spawn(move || {
            netns::enter(&ns, || slow_client(metrics, seed, &stop, &stats)).expect("enter");
        }));
    }
    let rewrites = Arc::new(AtomicU64::new(0));
    {
        let (file, stop, rewrites) = (file.clone(), Arc::clone(&stop), Arc::clone(&rewrites));
        threads.push(thread::spawn(move || {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let staging = file.with_extension("tmp");
                fs::write(&staging, manifest(round)).expect("manifest");
                fs::rename(&staging, &file).expect("rename");
                rewrites.fetch_add(1, Ordering::Relaxed);
                thread::sleep(REWRITE_INTERVAL);
            }
        }));
    }
    // Let the load build up: every slow client connected, some cut off.
    thread::sleep(Duration::from_secs(3));
    let updates_before = agent.log().matches("dataplane updated").count();

    let (mut latencies, failures) = probe(&ns, metrics, PROBES);
    let updates = agent.log().matches("dataplane updated").count() - updates_before;
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("load thread");
    }
    agent.ensure_running().expect("agent running");

    latencies.sort();
    let shown: Vec<String> = latencies
        .iter()
        .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
        .collect();
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    let summary = format!(
        "/healthz p50 {:.1} ms, p99 {:.1} ms over {} probes (ms, sorted: {}); failures {failures:?}; \
         {} slow connections, {} slow scrapes completed, {} cut off; {} rewrites, {updates} \
         dataplane updates during the probes; without the load: p50 {:.1} ms, p99 {:.1} ms",
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        latencies.len(),
        shown.join(" "),
        stats.connections.load(Ordering::Relaxed),
        stats.scrapes.load(Ordering::Relaxed),
        stats.cut_off.load(Ordering::Relaxed),
        rewrites.load(Ordering::Relaxed),
        percentile(&baseline, 50.0).as_secs_f64() * 1000.0,
        percentile(&baseline, 99.0).as_secs_f64() * 1000.0,
    );
    eprintln!("{summary}");
    assert!(
        failures.is_empty(),
        "{summary}\nagent log:\n{}",
        agent.log()
    );
    assert!(p99 < P99_BOUND, "{summary}");
    // The load was real: the agent reconciled and served slow scrapes, and
    // the header timeout or the cap cut slow clients off.
    assert!(updates > 0, "{summary}");
    assert!(stats.scrapes.load(Ordering::Relaxed) > 0, "{summary}");
    assert!(stats.cut_off.load(Ordering::Relaxed) > 0, "{summary}");
    assert!(
        stats.connections.load(Ordering::Relaxed) >= SLOW_CLIENTS as u64,
        "{summary}"
    );
}
