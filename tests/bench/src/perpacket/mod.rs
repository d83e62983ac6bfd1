//! Part 1: per-packet cost through `BPF_PROG_TEST_RUN`.
//!
//! Programs: `mcs_bench_pass` (XDP_PASS, the floor), `mcs_bench_lookup`
//! (one 16-byte-key lookup in a full 64k-entry hash map: the calibration
//! unit), `mcs_bench_lru_insert` and `mcs_bench_lru_insert_pcpu` (one
//! conntrack-shaped LRU insert, common and per-CPU LRU lists) and the real
//! `mcs_xdp` on a miss, a new flow, a conntrack hit and a reverse-NAT reply,
//! the calibration programs from their own object (`mcs-bench-ebpf`,
//! `MCS_BENCH_OBJECT`; the agent never embeds them), the real program from
//! the agent's embedded object. The same four `mcs_xdp` cases run on IPv6
//! in the same rounds (`v6`: an IPv6 ClusterSetIP the bench writes into the
//! `_V6` maps), so IPv6's cost is judged against IPv4's of the same run.
//!
//! With `repeat > 1` the kernel runs the program again on the packet the
//! previous run rewrote, so two methods are used:
//!
//! * **Katran method (primary)** — `repeat = 1` in a loop, every run on the
//!   original packet, averaging the kernel-reported durations (runs longer
//!   than 10× the batch median — an interrupt inside the run — dropped).
//!   Each run includes the kernel's fixed test-run overhead (timer reads,
//!   `local_bh_disable`), which is the same for every program and cancels in
//!   the differences to `XDP_PASS` that the goals use. For a *new flow* every
//!   run carries a new source port (a new 5-tuple, so a conntrack miss, a
//!   Maglev pick and two LRU inserts); after each batch the bench deletes the
//!   flows it created, so conntrack stays at the fill under test instead of
//!   growing by two entries a run.
//! * **repeat method (cross-check)** — one test run with `repeat = N` on a
//!   packet that stays valid when rewritten: pass, lookup and miss do not
//!   rewrite; for the conntrack hit and the reply the bench adds a mirror
//!   entry (client→backend translating back to the ClusterSetIP, and the
//!   reply's mirror), so the packet alternates between the two addresses and
//!   every run is a real hit with a real rewrite. Not usable for new flows.

mod v6;

use std::{
    collections::BTreeMap,
    env, fs,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as AyaHashMap, IterableMap as _, MapData},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use mcs_agent::{
    dataplane::{EBPF_OBJECT, MapHandles, MapSizes},
    desired::{self, DesiredState},
    model::manifest,
    reconcile::Reconciler,
};
use mcs_common::{CT_F_REPLY, CtKey, CtValue, MAX_CONNTRACK, PROTO_TCP, programs};
use serde::{Deserialize, Serialize};

use crate::{
    bpfsys,
    counters::{self, CounterCalibration},
    packet,
    rules::{self, HTTP_PORT, ServiceSet, TARGET_VIP},
    stats::{self, Summary},
};

pub const BENCH_PASS: &str = "mcs_bench_pass";
/// The calibration object's pass-only tc program (the end-to-end part's
/// direct+tc-pass floor).
pub const BENCH_TC_PASS: &str = "mcs_bench_tc_pass";
/// The bench's tc program that rewrites packets with unchanged values (the
/// direct+tc-write floor).
pub const BENCH_TC_WRITE: &str = "mcs_bench_tc_write";
pub const BENCH_LOOKUP: &str = "mcs_bench_lookup";
pub const BENCH_MAP: &str = "MCS_BENCH_MAP";
pub const BENCH_LRU_INSERT: &str = "mcs_bench_lru_insert";
pub const BENCH_LRU: &str = "MCS_BENCH_LRU";
pub const BENCH_LRU_INSERT_PCPU: &str = "mcs_bench_lru_insert_pcpu";
pub const BENCH_LRU_PCPU: &str = "MCS_BENCH_LRU_PCPU";
/// Entries of the calibration map (all filled).
pub const BENCH_MAP_ENTRIES: u32 = 1 << 16;
/// Runs longer than this many batch medians are dropped (interrupted).
const OUTLIER_CUTOFF: f64 = 10.0;

const XDP_PASS: u32 = 2;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 110, 0, 2);
const CLIENT_PORT: u16 = 40_000;
const NOT_A_VIP: Ipv4Addr = Ipv4Addr::new(10, 102, 3, 4);

#[derive(Clone, Debug)]
pub struct Config {
    pub services: Vec<usize>,
    pub conntrack: Vec<usize>,
    pub rounds: usize,
    pub runs_per_sample: usize,
    pub repeat: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Case {
    Pass,
    Lookup,
    LruInsert,
    LruInsertPerCpu,
    Miss,
    NewFlow,
    CtHit,
    Reply,
    MissV6,
    NewFlowV6,
    CtHitV6,
    ReplyV6,
}

impl Case {
    pub const ALL: [Case; 12] = [
        Case::Pass,
        Case::Lookup,
        Case::LruInsert,
        Case::LruInsertPerCpu,
        Case::Miss,
        Case::NewFlow,
        Case::CtHit,
        Case::Reply,
        Case::MissV6,
        Case::NewFlowV6,
        Case::CtHitV6,
        Case::ReplyV6,
    ];

    /// The IPv6 cases, each with the IPv4 case it is judged against.
    pub const V6_PAIRS: [(Case, Case); 4] = [
        (Case::MissV6, Case::Miss),
        (Case::NewFlowV6, Case::NewFlow),
        (Case::CtHitV6, Case::CtHit),
        (Case::ReplyV6, Case::Reply),
    ];

    pub fn label(self) -> &'static str {
        match self {
            Case::Pass => "XDP_PASS program",
            Case::Lookup => "calibration: 1 hash lookup",
            Case::LruInsert => "calibration: 1 LRU insert (conntrack-shaped)",
            Case::LruInsertPerCpu => "calibration: 1 LRU insert, per-CPU LRU lists",
            Case::Miss => "mcs: miss (not a ClusterSetIP)",
            Case::NewFlow => "mcs: new flow",
            Case::CtHit => "mcs: conntrack hit",
            Case::Reply => "mcs: reverse-NAT reply",
            Case::MissV6 => "mcs IPv6: miss (not a ClusterSetIP)",
            Case::NewFlowV6 => "mcs IPv6: new flow",
            Case::CtHitV6 => "mcs IPv6: conntrack hit",
            Case::ReplyV6 => "mcs IPv6: reverse-NAT reply",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Case::Pass => "pass",
            Case::Lookup => "lookup",
            Case::LruInsert => "lru_insert",
            Case::LruInsertPerCpu => "lru_insert_pcpu",
            Case::Miss => "miss",
            Case::NewFlow => "new_flow",
            Case::CtHit => "ct_hit",
            Case::Reply => "reply",
            Case::MissV6 => "miss_v6",
            Case::NewFlowV6 => "new_flow_v6",
            Case::CtHitV6 => "ct_hit_v6",
            Case::ReplyV6 => "reply_v6",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseResult {
    pub case: Case,
    /// ns per packet, Katran method, one sample per round.
    pub katran_ns: Vec<f64>,
    /// ns per packet, repeat method (absent for new flows).
    pub repeat_ns: Vec<f64>,
    /// Runs dropped as interrupted, over all rounds.
    pub dropped_runs: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PointResult {
    pub services: usize,
    pub conntrack_fill: usize,
    pub conntrack_capacity: u32,
    /// How the service maps were written.
    pub programmed_by: String,
    pub cases: Vec<CaseResult>,
}

impl PointResult {
    pub fn case(&self, case: Case) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.case == case)
    }

    /// Paired (same round) cost of `case` above XDP_PASS, Katran method.
    pub fn delta(&self, case: Case) -> Option<Summary> {
        stats::paired_delta(
            &self.case(case)?.katran_ns,
            &self.case(Case::Pass)?.katran_ns,
        )
    }

    /// `delta(case) / delta(lookup)` per round: the cost in lookups.
    pub fn in_lookups(&self, case: Case) -> Option<Summary> {
        let pass = &self.case(Case::Pass)?.katran_ns;
        let lookup = &self.case(Case::Lookup)?.katran_ns;
        let this = &self.case(case)?.katran_ns;
        let over: Vec<f64> = this.iter().zip(pass).map(|(c, p)| c - p).collect();
        let unit: Vec<f64> = lookup.iter().zip(pass).map(|(l, p)| l - p).collect();
        stats::paired_ratio(&over, &unit)
    }

    /// `delta(v6) / delta(v4)` per round: an IPv6 case's cost over
    /// XDP_PASS in its IPv4 case's.
    pub fn over_ipv4(&self, v6: Case, v4: Case) -> Option<Summary> {
        let pass = &self.case(Case::Pass)?.katran_ns;
        let over = |case| -> Option<Vec<f64>> {
            Some(
                self.case(case)?
                    .katran_ns
                    .iter()
                    .zip(pass)
                    .map(|(c, p)| c - p)
                    .collect(),
            )
        };
        stats::paired_ratio(&over(v6)?, &over(v4)?)
    }

    pub fn repeat_delta(&self, case: Case) -> Option<Summary> {
        stats::paired_delta(
            &self.case(case)?.repeat_ns,
            &self.case(Case::Pass)?.repeat_ns,
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PerPacket {
    pub rounds: usize,
    pub runs_per_sample: usize,
    pub repeat: u32,
    pub points: Vec<PointResult>,
    /// Per-CPU against shared atomic counters (`counters.rs`).
    #[serde(default)]
    pub counters: Option<CounterCalibration>,
    pub notes: Vec<String>,
}

/// Conntrack capacity for a fill: the production size while it fits with
/// room to spare, else a larger map (`EbpfLoader::map_max_entries`).
pub fn ct_capacity(fill: usize) -> u32 {
    let fill = u32::try_from(fill).unwrap_or(u32::MAX);
    if fill <= MAX_CONNTRACK / 2 {
        MAX_CONNTRACK
    } else {
        fill.saturating_mul(2)
            .checked_next_power_of_two()
            .unwrap_or(1 << 31)
    }
}

struct Bench {
    /// The agent's object: `mcs_xdp` and its maps.
    ebpf: Ebpf,
    /// The calibration programs and their maps (`mcs-bench-ebpf`).
    calibration: Ebpf,
    maps: MapHandles,
    /// The LRU-insert calibration map (filled like conntrack).
    lru: AyaHashMap<MapData, [u8; 16], [u8; 40]>,
    /// The same with per-CPU LRU lists.
    lru_pcpu: AyaHashMap<MapData, [u8; 16], [u8; 40]>,
}

fn xdp<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp> {
    ebpf.program(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))
}

fn load_xdp(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))?;
    program
        .load()
        .with_context(|| format!("the verifier refused {name}"))
}

/// The calibration programs' object: `MCS_BENCH_OBJECT` (set by `cargo
/// xtask bench`), else where `cargo xtask build-ebpf` links it.
pub fn calibration_object() -> Result<Vec<u8>> {
    let path = env::var_os("MCS_BENCH_OBJECT").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/bpf/bpfel-unknown-none/release/mcs-bench-ebpf")
        },
        PathBuf::from,
    );
    fs::read(&path).with_context(|| {
        format!(
            "read the calibration object {} (built by `cargo xtask build-ebpf`; MCS_BENCH_OBJECT overrides the path)",
            path.display()
        )
    })
}

impl Bench {
    /// The agent's object with maps of `sizes` (those an operator would
    /// give the agent for the point's services and conntrack fill).
    fn load(sizes: &MapSizes) -> Result<Self> {
        ensure!(
            !EBPF_OBJECT.is_empty(),
            "mcs-agent was built without its eBPF object: run `cargo xtask build-ebpf` first"
        );
        let ct_capacity = sizes.conntrack;
        let mut loader = EbpfLoader::new();
        for (name, entries) in sizes.overrides() {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader.load(EBPF_OBJECT).context("load the eBPF object")?;
        load_xdp(&mut ebpf, programs::XDP)?;
        let mut calibration = EbpfLoader::new()
            .map_max_entries(BENCH_LRU, ct_capacity)
            .map_max_entries(BENCH_LRU_PCPU, ct_capacity)
            .map_max_entries(BENCH_MAP, BENCH_MAP_ENTRIES)
            .load(&calibration_object()?)
            .context("load the calibration object")?;
        for name in [
            BENCH_PASS,
            BENCH_LOOKUP,
            BENCH_LRU_INSERT,
            BENCH_LRU_INSERT_PCPU,
        ] {
            load_xdp(&mut calibration, name)?;
        }
        let mut maps = MapHandles::take(&mut ebpf).context("take the maps")?;
        // As the agent does before its first sync: timestamps from jiffies.
        mcs_agent::dataplane::clock::calibrate(&mut ebpf, &mut maps.clock)
            .context("calibrate the datapath clock")?;
        let lru = calibration
            .take_map(BENCH_LRU)
            .with_context(|| format!("map {BENCH_LRU} missing"))?;
        let lru = AyaHashMap::try_from(lru).context("LRU calibration map type")?;
        let lru_pcpu = calibration
            .take_map(BENCH_LRU_PCPU)
            .with_context(|| format!("map {BENCH_LRU_PCPU} missing"))?;
        let lru_pcpu = AyaHashMap::try_from(lru_pcpu).context("LRU calibration map type")?;
        Ok(Self {
            ebpf,
            calibration,
            maps,
            lru,
            lru_pcpu,
        })
    }

    /// The object holding `program`.
    fn object_of(&self, program: &str) -> &Ebpf {
        if program == programs::XDP {
            &self.ebpf
        } else {
            &self.calibration
        }
    }

    fn run(
        &self,
        program: &str,
        frame: &[u8],
        repeat: u32,
        out: Option<&mut [u8]>,
    ) -> Result<(u32, u64)> {
        let result = xdp(self.object_of(program), program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: out,
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))?;
        let ns = u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX);
        Ok((result.return_value, ns))
    }

    /// Fills the calibration map with 64k keys, `hit` among them.
    fn fill_lookup_map(&mut self, hit: [u8; 16]) -> Result<()> {
        let map = self
            .calibration
            .take_map(BENCH_MAP)
            .with_context(|| format!("map {BENCH_MAP} missing"))?;
        let map: AyaHashMap<MapData, [u8; 16], u64> =
            AyaHashMap::try_from(map).context("calibration map type")?;
        let fd = map.map().fd().as_fd().as_raw_fd();
        let mut keys = Vec::with_capacity(BENCH_MAP_ENTRIES as usize);
        keys.push(hit);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        while keys.len() < BENCH_MAP_ENTRIES as usize {
            let mut key = [0u8; 16];
            for chunk in key.chunks_mut(8) {
                state = splitmix(&mut state);
                chunk.copy_from_slice(&state.to_ne_bytes());
            }
            keys.push(key);
        }
        let values = vec![0u64; keys.len()];
        // The loaded program holds its own reference to the map; the
        // handle can go after the fill.
        bpfsys::update_batch(fd, &keys, &values, 4096).context("fill the calibration map")
    }

    fn ct_fd(&self) -> i32 {
        raw_fd(self.maps.conntrack.map())
    }
}

fn raw_fd(map: &MapData) -> i32 {
    map.fd().as_fd().as_raw_fd()
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Desired state of `count` services × 10 endpoints, through the agent's
/// own manifest parser and desired-state function.
pub fn desired_state(count: usize) -> Result<DesiredState> {
    let set = ServiceSet::new(count, 10, &target_backends());
    let (snapshot, rejections) =
        manifest::snapshot_from_yaml(&rules::manifest(&set)).context("generated manifest")?;
    ensure!(
        rejections.is_empty(),
        "generated manifest rejected: {:?}",
        rejections.first()
    );
    let (state, rejections) = desired::compute(&snapshot);
    ensure!(
        rejections.is_empty(),
        "desired state rejected: {:?}",
        rejections.first()
    );
    Ok(state)
}

/// The target's endpoints in the per-packet part (never routed anywhere).
pub fn target_backends() -> Vec<Ipv4Addr> {
    (10..20).map(|i| Ipv4Addr::new(10, 101, 1, i)).collect()
}

/// Fills conntrack with `fill` entries of other flows (forward/reply pairs).
fn prefill_conntrack(bench: &Bench, fill: usize) -> Result<()> {
    let mut keys = Vec::with_capacity(fill);
    let mut values = Vec::with_capacity(fill);
    let mut state = 0x1234_5678u64;
    while keys.len() < fill {
        let r = splitmix(&mut state);
        let client = Ipv4Addr::from(0x0a78_0000 | (r as u32 & 0xffff)); // 10.120.x.y
        let vip = Ipv4Addr::from(0x0a61_0000 | ((r >> 16) as u32 & 0xffff)); // 10.97.x.y
        let backend = Ipv4Addr::from(0x0a40_0000 | ((r >> 32) as u32 & 0xffff)); // 10.64.x.y
        let sport = ((r >> 48) as u16) | 1024;
        let (client, vip) = (SocketAddrV4::new(client, sport), SocketAddrV4::new(vip, 80));
        let backend = SocketAddrV4::new(backend, 8080);
        let value = CtValue::new(backend, 0, 0, backend, 0);
        keys.push(CtKey::new(client, vip, PROTO_TCP));
        values.push(value);
        if keys.len() < fill {
            keys.push(CtKey::new(backend, client, PROTO_TCP));
            values.push(CtValue {
                flags: CT_F_REPLY,
                ..value.with_nat(vip)
            });
        }
    }
    bpfsys::update_batch(bench.ct_fd(), &keys, &values, 8192).context("prefill conntrack")?;
    // The LRU calibration map gets the same fill (its keys are the same
    // 16 bytes, its values the same 40).
    let values: Vec<[u8; 40]> = vec![[0u8; 40]; keys.len()];
    let keys: Vec<[u8; 16]> = keys
        .iter()
        .map(|k| {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&k.saddr.to_ne_bytes());
            bytes[4..8].copy_from_slice(&k.daddr.to_ne_bytes());
            bytes[8..10].copy_from_slice(&k.sport.to_ne_bytes());
            bytes[10..12].copy_from_slice(&k.dport.to_ne_bytes());
            bytes[12] = 0xee; // never a test packet's sequence bytes
            bytes
        })
        .collect();
    let fd = bench.lru.map().fd().as_fd().as_raw_fd();
    bpfsys::update_batch(fd, &keys, &values, 8192).context("prefill the LRU calibration map")?;
    let fd = bench.lru_pcpu.map().fd().as_fd().as_raw_fd();
    bpfsys::update_batch(fd, &keys, &values, 8192).context("prefill the per-CPU LRU map")
}

fn ct_key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> CtKey {
    CtKey::new(
        SocketAddrV4::new(src, sport),
        SocketAddrV4::new(dst, dport),
        PROTO_TCP,
    )
}

/// The packets of one measurement point, checked to take the path they
/// are meant to.
struct Frames {
    ack: Vec<u8>,
    miss: Vec<u8>,
    reply: Vec<u8>,
}

/// Opens the measured flow through the program (as a real SYN would),
/// checks every path once and adds the mirror entries of the repeat method.
fn prepare_frames(bench: &mut Bench) -> Result<Frames> {
    let syn = packet::tcp(CLIENT, CLIENT_PORT, TARGET_VIP, HTTP_PORT, true)?;
    let mut out = vec![0u8; syn.len() + 64];
    let (verdict, _) = bench.run(programs::XDP, &syn, 1, Some(&mut out))?;
    ensure!(
        verdict == XDP_PASS,
        "new flow: verdict {verdict}, expected XDP_PASS"
    );
    let (_, _, backend, backend_port) = packet::addresses(&out).context("rewritten SYN")?;
    ensure!(
        target_backends().contains(&backend),
        "new flow went to {backend}, not a target backend"
    );
    let ack = packet::tcp(CLIENT, CLIENT_PORT, TARGET_VIP, HTTP_PORT, false)?;
    let (verdict, _) = bench.run(programs::XDP, &ack, 1, Some(&mut out))?;
    let (_, _, dst, _) = packet::addresses(&out).context("rewritten ACK")?;
    ensure!(
        verdict == XDP_PASS && dst == backend,
        "conntrack hit: verdict {verdict}, to {dst}"
    );
    let reply = packet::tcp(backend, backend_port, CLIENT, CLIENT_PORT, false)?;
    let (verdict, _) = bench.run(programs::XDP, &reply, 1, Some(&mut out))?;
    let (src, sport, _, _) = packet::addresses(&out).context("rewritten reply")?;
    ensure!(
        verdict == XDP_PASS && src == TARGET_VIP && sport == HTTP_PORT,
        "reverse NAT: verdict {verdict}, from {src}:{sport}"
    );
    let miss = packet::tcp(CLIENT, CLIENT_PORT, NOT_A_VIP, HTTP_PORT, false)?;
    let (verdict, _) = bench.run(programs::XDP, &miss, 1, Some(&mut out))?;
    ensure!(
        verdict == XDP_PASS && out[..miss.len()] == miss[..],
        "miss: packet changed or verdict {verdict}"
    );
    bench.fill_lookup_map(packet::lookup_key(&ack).context("lookup key")?)?;
    let (verdict, _) = bench.run(BENCH_LOOKUP, &ack, 1, None)?;
    ensure!(
        verdict == XDP_PASS,
        "calibration lookup missed (verdict {verdict})"
    );

    // Mirrors for the repeat method: after the first run rewrote the
    // packet, the next run finds the mirror and rewrites it back.
    let forward = bench
        .maps
        .conntrack
        .get(&ct_key(CLIENT, CLIENT_PORT, TARGET_VIP, HTTP_PORT), 0)
        .context("forward entry of the measured flow")?;
    let reply_entry = bench
        .maps
        .conntrack
        .get(&ct_key(backend, backend_port, CLIENT, CLIENT_PORT), 0)
        .context("reply entry of the measured flow")?;
    bench
        .maps
        .conntrack
        .insert(
            ct_key(CLIENT, CLIENT_PORT, backend, backend_port),
            forward.with_nat(SocketAddrV4::new(TARGET_VIP, HTTP_PORT)),
            0,
        )
        .context("mirror of the forward entry")?;
    bench
        .maps
        .conntrack
        .insert(
            ct_key(TARGET_VIP, HTTP_PORT, CLIENT, CLIENT_PORT),
            reply_entry.with_nat(SocketAddrV4::new(backend, backend_port)),
            0,
        )
        .context("mirror of the reply entry")?;
    // The mirrors are keyed by addresses that are neither ClusterSetIP
    // destinations nor backend sources; a rebuild from conntrack (as after
    // adoption) makes the prefilter let them through. This also brings in
    // the prefill's flows, as in an agent running with that conntrack.
    bench
        .maps
        .rebuild_prefilter()
        .context("rebuild the prefilter")?;
    // Both directions now alternate and stay valid.
    for frame in [&ack, &reply] {
        let (verdict, _) = bench.run(programs::XDP, frame, 3, Some(&mut out))?;
        ensure!(verdict == XDP_PASS, "repeat run: verdict {verdict}");
    }
    Ok(Frames { ack, miss, reply })
}

/// A source for new flows: every call a 5-tuple not used before.
struct FlowSource {
    next: u64,
}

impl FlowSource {
    fn next(&mut self) -> (Ipv4Addr, u16) {
        let n = self.next;
        self.next += 1;
        let port = 1024 + (n % 60_000) as u16;
        let host = (n / 60_000) as u32 & 0xffff;
        (Ipv4Addr::from(0x0a6f_0000 | host), port) // 10.111.x.y
    }
}

fn katran_sample(bench: &Bench, program: &str, frame: &[u8], runs: usize) -> Result<(f64, usize)> {
    let mut durations = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (verdict, ns) = bench.run(program, frame, 1, None)?;
        if verdict != XDP_PASS {
            bail!("{program}: verdict {verdict} during measurement");
        }
        durations.push(ns);
    }
    stats::trimmed_mean(&durations, OUTLIER_CUTOFF).context("no runs")
}

fn new_flow_sample(bench: &mut Bench, flows: &mut FlowSource, runs: usize) -> Result<(f64, usize)> {
    let mut durations = Vec::with_capacity(runs);
    let mut created = Vec::with_capacity(runs * 2);
    let mut out = vec![0u8; 256];
    for _ in 0..runs {
        let (client, sport) = flows.next();
        let syn = packet::tcp(client, sport, TARGET_VIP, HTTP_PORT, true)?;
        let (verdict, ns) = bench.run(programs::XDP, &syn, 1, Some(&mut out))?;
        ensure!(verdict == XDP_PASS, "new flow: verdict {verdict}");
        let (_, _, backend, backend_port) = packet::addresses(&out).context("rewritten SYN")?;
        ensure!(backend != TARGET_VIP, "new flow was not translated");
        created.push(ct_key(client, sport, TARGET_VIP, HTTP_PORT));
        created.push(ct_key(backend, backend_port, client, sport));
        durations.push(ns);
    }
    // Keep conntrack at the fill under test.
    for key in &created {
        bench
            .maps
            .conntrack
            .remove(key)
            .context("remove a flow the bench created")?;
    }
    stats::trimmed_mean(&durations, OUTLIER_CUTOFF).context("no runs")
}

/// One LRU insert per run, each with a new key; the keys are deleted after
/// the batch (the map stays at the fill under test).
fn lru_sample(
    bench: &mut Bench,
    flows: &mut FlowSource,
    runs: usize,
    per_cpu: bool,
) -> Result<(f64, usize)> {
    let program = if per_cpu {
        BENCH_LRU_INSERT_PCPU
    } else {
        BENCH_LRU_INSERT
    };
    let mut durations = Vec::with_capacity(runs);
    let mut created = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (client, sport) = flows.next();
        let frame = packet::tcp(client, sport, TARGET_VIP, HTTP_PORT, true)?;
        let (verdict, ns) = bench.run(program, &frame, 1, None)?;
        ensure!(verdict == XDP_PASS, "LRU insert failed (verdict {verdict})");
        created.push(packet::lookup_key(&frame).context("key")?);
        durations.push(ns);
    }
    let map = if per_cpu {
        &mut bench.lru_pcpu
    } else {
        &mut bench.lru
    };
    for key in &created {
        map.remove(key).context("remove a key the bench inserted")?;
    }
    stats::trimmed_mean(&durations, OUTLIER_CUTOFF).context("no runs")
}

fn measure_point(
    config: &Config,
    services: usize,
    fill: usize,
    cache: &mut BTreeMap<usize, DesiredState>,
) -> Result<PointResult> {
    let capacity = ct_capacity(fill);
    let started = Instant::now();
    let mut sizes = ServiceSet::new(services, 10, &target_backends()).map_sizes(capacity);
    let ids6 = v6::grow(&mut sizes);
    let mut bench = Bench::load(&sizes)?;
    let state = match cache.entry(services) {
        std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
        std::collections::btree_map::Entry::Vacant(entry) => entry.insert(desired_state(services)?),
    };
    let report = Reconciler::with_capacities(sizes.capacities()).apply(state, &mut bench.maps);
    if let Some((frontend, error)) = report.errors.first() {
        bail!("reconciler failed on {frontend}: {error}");
    }
    let programmed_by = format!(
        "agent Reconciler::apply through MapHandles, maps sized for the services ({} frontends, {} backend slots; the IPv6 frontend written by the bench)",
        sizes.frontends, sizes.backend_slots
    );
    v6::program(&mut bench, ids6)?;
    prefill_conntrack(&bench, fill)?;
    v6::prefill_conntrack(&bench, fill)?;
    let frames = prepare_frames(&mut bench)?;
    let frames6 = v6::prepare_frames(&mut bench)?;
    progress(&format!(
        "  per-packet: {services} services, conntrack {fill} (capacity {capacity}) ready in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    let mut results: BTreeMap<Case, CaseResult> = Case::ALL
        .iter()
        .map(|case| {
            (
                *case,
                CaseResult {
                    case: *case,
                    katran_ns: Vec::new(),
                    repeat_ns: Vec::new(),
                    dropped_runs: 0,
                },
            )
        })
        .collect();
    let mut flows = FlowSource { next: 0 };
    let mut flows6 = 0u64;
    // Warm-up round, discarded.
    for round in 0..=config.rounds {
        for case in Case::ALL {
            let (program, frame) = match case {
                Case::Pass => (BENCH_PASS, &frames.ack),
                Case::Lookup => (BENCH_LOOKUP, &frames.ack),
                Case::Miss => (programs::XDP, &frames.miss),
                Case::CtHit => (programs::XDP, &frames.ack),
                Case::Reply => (programs::XDP, &frames.reply),
                Case::MissV6 => (programs::XDP, &frames6.miss),
                Case::CtHitV6 => (programs::XDP, &frames6.ack),
                Case::ReplyV6 => (programs::XDP, &frames6.reply),
                Case::NewFlow | Case::NewFlowV6 | Case::LruInsert | Case::LruInsertPerCpu => {
                    ("", &frames.ack)
                }
            };
            let (katran, dropped) = match case {
                Case::NewFlow => new_flow_sample(&mut bench, &mut flows, config.runs_per_sample)?,
                Case::NewFlowV6 => {
                    v6::new_flow_sample(&mut bench, &mut flows6, config.runs_per_sample)?
                }
                Case::LruInsert => {
                    lru_sample(&mut bench, &mut flows, config.runs_per_sample, false)?
                }
                Case::LruInsertPerCpu => {
                    lru_sample(&mut bench, &mut flows, config.runs_per_sample, true)?
                }
                _ => katran_sample(&bench, program, frame, config.runs_per_sample)?,
            };
            let repeat = if matches!(
                case,
                Case::NewFlow | Case::NewFlowV6 | Case::LruInsert | Case::LruInsertPerCpu
            ) {
                None
            } else {
                let (verdict, ns) = bench.run(program, frame, config.repeat, None)?;
                ensure!(verdict == XDP_PASS, "{program} repeat: verdict {verdict}");
                #[expect(clippy::cast_precision_loss, reason = "ns")]
                Some(ns as f64)
            };
            if round == 0 {
                continue;
            }
            let entry = results.get_mut(&case).context("case")?;
            entry.katran_ns.push(katran);
            entry.dropped_runs += dropped;
            entry.repeat_ns.extend(repeat);
        }
    }
    Ok(PointResult {
        services,
        conntrack_fill: fill,
        conntrack_capacity: capacity,
        programmed_by,
        cases: results.into_values().collect(),
    })
}

pub fn run(config: &Config) -> Result<PerPacket> {
    // Only for this part: the later parts (and the agents and rule loaders
    // they start, which inherit the mask) use every CPU, as on a node.
    let _pinned = PinnedToLastCpu::new();
    let mut points = Vec::new();
    let mut cache = BTreeMap::new();
    let started = Instant::now();
    for &services in &config.services {
        for &fill in &config.conntrack {
            points.push(
                measure_point(config, services, fill, &mut cache).with_context(|| {
                    format!("per-packet point {services} services, conntrack {fill}")
                })?,
            );
        }
        // The largest states are big; keep only what a later point reuses.
        cache.remove(&services);
    }
    let counters = {
        let mut calibration = EbpfLoader::new()
            .load(&calibration_object()?)
            .context("load the calibration object")?;
        for name in [BENCH_PASS, counters::COUNT_PCPU, counters::COUNT_SHARED] {
            load_xdp(&mut calibration, name)?;
        }
        let frame = packet::tcp(CLIENT, CLIENT_PORT, TARGET_VIP, HTTP_PORT, false)?;
        counters::calibrate(&calibration, &frame, config.rounds, config.repeat)
            .context("counter calibration")?
    };
    progress(&format!(
        "  per-packet done in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(PerPacket {
        rounds: config.rounds,
        runs_per_sample: config.runs_per_sample,
        repeat: config.repeat,
        points,
        counters: Some(counters),
        notes: vec![
            "Katran method: repeat=1 test runs in a loop, mean of the kernel-reported durations per batch (runs over 10x the batch median dropped as interrupted); one sample per round, rounds interleave all cases; a warm-up round is discarded.".to_owned(),
            "Repeat method (cross-check): one test run with repeat=N; conntrack-hit and reply packets stay valid through mirror entries (client->backend translating back to the ClusterSetIP), so every run is a hit with a rewrite.".to_owned(),
            "IPv6: the same miss, new flow, conntrack hit and reply through the same mcs_xdp in the same rounds, on one IPv6 ClusterSetIP (TCP 80, ten backends) the bench writes into the _V6 maps through the agent's map handles, with an IPv6 conntrack prefilled to the same fill.".to_owned(),
            "New flow: every run has a new source port (new 5-tuple: conntrack miss, service lookup, Maglev pick, backend lookup, two LRU inserts, DNAT); the flows a batch created are deleted after it, so conntrack stays at the fill under test.".to_owned(),
            "Counters: a conntrack hit's counter updates (packets and bytes of two counters) in per-CPU counters and in shared counters with atomic adds, repeat method, on one CPU and on every CPU at once updating the same counters (one hot service), each paired with XDP_PASS of the same round.".to_owned(),
        ],
    })
}

/// Runs the calling thread on the last CPU (steadier timings on a shared
/// machine than migrating between CPUs) until dropped, then restores the
/// thread's previous CPU mask.
pub struct PinnedToLastCpu {
    previous: Option<libc::cpu_set_t>,
}

impl PinnedToLastCpu {
    pub fn new() -> Self {
        // SAFETY: plain libc calls on zeroed cpu_set_t values we own.
        unsafe {
            let mut previous: libc::cpu_set_t = std::mem::zeroed();
            let saved = libc::sched_getaffinity(0, size_of_cpu_set(), &raw mut previous) == 0;
            let cpus = libc::sysconf(libc::_SC_NPROCESSORS_ONLN);
            if cpus >= 1 {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET((cpus - 1) as usize, &mut set);
                let _ = libc::sched_setaffinity(0, size_of_cpu_set(), &raw const set);
            }
            Self {
                previous: saved.then_some(previous),
            }
        }
    }
}

impl Drop for PinnedToLastCpu {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous {
            // SAFETY: restores a mask sched_getaffinity filled.
            let _ = unsafe { libc::sched_setaffinity(0, size_of_cpu_set(), previous) };
        }
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) {
    // SAFETY: plain libc calls on a zeroed cpu_set_t we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let _ = libc::sched_setaffinity(0, size_of_cpu_set(), &raw const set);
    }
}

fn size_of_cpu_set() -> usize {
    std::mem::size_of::<libc::cpu_set_t>()
}

pub fn progress(line: &str) {
    println!("{line}");
}
