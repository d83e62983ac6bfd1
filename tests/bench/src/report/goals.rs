//! The benchmark's goals as one table: the part of the bench each belongs
//! to, what it promises, how it is measured (a function of the report, in
//! `measure.rs`), and what limits it when it is missed. Judging a report is
//! running every row's measurement and filling its texts.

use serde::{Deserialize, Serialize};

use super::{
    Report, ipv6,
    measure::{self, Measured},
};
use crate::{e2e::Mode, perpacket::Case};

/// One goal judged from a report: a row of report.md's goal table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    pub part: String,
    pub goal: String,
    pub measured: String,
    /// `None`: not measured in this run, or not at the goal's size.
    pub met: Option<bool>,
    /// What limits it; empty unless it needs explaining.
    pub limits: String,
}

/// A goal of [`GOALS`]. In `goal` and `limits`, `{limit}` stands for the
/// row's limit, `{noise}` for [`NOISE`], and other `{name}`s for values of
/// the measurement ([`Measured::values`]).
struct GoalRow {
    part: &'static str,
    goal: &'static str,
    /// The number the goal compares against, in the goal's unit.
    limit: f64,
    /// How it is measured: `None` when the report has no such numbers at
    /// all (the row is left out).
    measure: fn(&Report, f64) -> Option<Measured>,
    /// What limits it, for a reader of a missed goal.
    limits: &'static str,
    explain: Explain,
}

/// When a goal's `limits` text is shown.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Explain {
    /// When the numbers miss the goal.
    WhenMissed,
    /// Unless the numbers meet the goal (also when there are none).
    UnlessMet,
    /// Always: where the time goes is part of the result.
    Always,
}

/// Why end-to-end ratios are noisy.
const NOISE: &str = "client, server, softirq and other work share 2 noisy vCPUs; run-to-run spread (min–max) is of the same order as the difference";

const GOALS: &[GoalRow] = &[
    GoalRow {
        part: "per-packet",
        goal: "mcs: conntrack hit adds ≤ {limit}× the calibration lookup's cost over XDP_PASS (every point)",
        limit: 3.0,
        measure: |report, limit| measure::per_packet_case(report, Case::CtHit, limit),
        limits: "a hit is the prefilter's inlined array read, a conntrack lookup (a 16-byte-key hash lookup in the largest map, itself about one calibration lookup) plus the rewrite (address, port, IP and L4 checksum), a jiffies read (inlined: one load) for the entry's last-seen time (written back at most once a second) and two per-CPU counter updates (frontend, backend)",
        explain: Explain::UnlessMet,
    },
    GoalRow {
        part: "per-packet",
        goal: "mcs: miss (not a ClusterSetIP) adds ≤ {limit}× the calibration lookup's cost over XDP_PASS (every point)",
        limit: 1.5,
        measure: |report, limit| measure::per_packet_case(report, Case::Miss, limit),
        limits: "a miss is parsing plus two inlined array reads of the prefilter bitmap (destination not a ClusterSetIP, source not a backend), no hash lookup; a false positive (another address on the same bit) takes the full path: conntrack and service lookups",
        explain: Explain::UnlessMet,
    },
    GoalRow {
        part: "per-packet",
        goal: "mcs: new flow adds ≤ two conntrack-shaped LRU inserts plus four lookups over XDP_PASS (its physical floor, both calibrations of the same run; every point)",
        limit: 1.0,
        measure: measure::new_flow_floor,
        limits: "a new flow does the prefilter read, a conntrack miss, the service and backend lookups, the Maglev entry (an inlined array read), two LRU-hash inserts (reply and forward entries), one jiffies read, counters and the DNAT: the inserts are the floor; LRU inserts also vary most between rounds (their lists' locks and evictions)",
        explain: Explain::UnlessMet,
    },
    GoalRow {
        part: "per-packet",
        goal: "mcs IPv6: miss, new flow, conntrack hit and reverse NAT each add ≤ {limit}× their IPv4 case's cost over XDP_PASS (same run; every point)",
        limit: 1.2,
        measure: ipv6::over_ipv4,
        limits: "IPv6 parses a 40-byte header and walks its extension headers (a bounded loop, even when there are none), its conntrack key is 40 bytes instead of 16 (hashing and comparing) and a rewrite updates the L4 checksum with four-word addresses; it has no IP header checksum to update",
        explain: Explain::UnlessMet,
    },
    GoalRow {
        part: "per-packet",
        goal: "cost over XDP_PASS grows ≤ {limit}× from {smallest} to {largest}",
        limit: 1.3,
        measure: measure::per_packet_growth,
        limits: "more services: larger service, backend and Maglev tables, so more cache and TLB misses per lookup; one test packet keeps its own entries hot, so this is the floor of the growth (a fuller conntrack slows the LRU inserts of a new flow themselves: the new-flow floor goal covers that)",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "end to end",
        goal: "mcs tc ≥ {limit}× direct+tc-pass new connections/s, every scale (the program costs at most 3 % beyond the hook)",
        limit: 0.97,
        measure: |report, limit| {
            measure::e2e_over_floor(report, Mode::McsTc, Mode::DirectTcPass, limit)
        },
        limits: "per connection the program runs on about ten packets each way (both directions of the pod's veth: a conntrack hit and the rewrite through the kernel's checksum helpers, one new flow); a tc program that only makes mcs's rewrite helper calls with each packet's own values, no lookup (same-run control `direct+tc-write`), gives {write_over_pass} of direct+tc-pass: writing a packet the local stack still holds (every TCP segment) copies its head first; mcs-tc gives {over_write} of direct+tc-write; connecting directly to one backend address only (same-run control `direct-1`: the client's side of a ClusterSetIP, one destination for all its connections) gives {one_dest} of direct, and mcs-tc {over_one_dest} of direct-1; {noise}",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "end to end",
        goal: "mcs tc ≥ {limit}× direct new connections/s, every scale (where the tc floor allows)",
        limit: 0.95,
        measure: |report, limit| {
            measure::e2e_every_scale(report, Mode::McsTc, measure::RATE, limit)
        },
        limits: "{cost_at_largest}a pass-only tc program at the same two points already gives {tc_pass_ratio} of direct (same-run control `direct+tc-pass`): the hook's own cost is the floor; {noise}",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "end to end",
        goal: "mcs tc IPv6 ≥ {limit}× direct-v6 new connections/s, every scale (ratio to IPv4 mcs-tc in brackets)",
        limit: 0.95,
        measure: |report, limit| measure::e2e_v6(report, Mode::McsTcV6, limit),
        limits: "the IPv6 path rewrites a 40-byte header (no header checksum, 128-bit pseudo-header updates) and looks up 16-byte addresses in the _V6 maps; direct-v6 itself gives {v6_over_v4_direct} of IPv4 direct on the same veths; {noise}",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "end to end",
        goal: "mcs tc p99 latency (Connection: close) ≤ {limit}× direct, every scale",
        limit: 1.1,
        measure: |report, limit| measure::e2e_every_scale(report, Mode::McsTc, measure::P99, limit),
        limits: "p99 of a few thousand connections per run is set by scheduling delays on the shared vCPUs (milliseconds), not by the ~µs the program adds; {noise}",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "end to end",
        goal: "mcs XDP ≥ {limit}× direct new connections/s, every scale",
        limit: 0.95,
        measure: |report, limit| {
            measure::e2e_every_scale(report, Mode::McsXdp, measure::RATE, limit)
        },
        limits: "{cost_at_largest}the program itself accounts for ≈ {program_us} µs per connection (≈ 10 packets × Δ conntrack hit + one new flow, part 1); the rest is XDP on veth: an XDP_PASS program on the same two veths already gives {xdp_pass_ratio} of direct{xdp_pass_at} and mcs reaches {over_xdp_pass} of that (same-run control `direct+xdp-pass`) — a native XDP program moves the veth's receive path to NAPI and copies every cloned skb (all TCP segments) into a buffer with XDP headroom before the program runs: the cost of attaching at veths, not of the lookups; {noise}",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "end to end",
        goal: "mcs XDP p99 latency (Connection: close) ≤ {limit}× direct, every scale",
        limit: 1.1,
        measure: |report, limit| {
            measure::e2e_every_scale(report, Mode::McsXdp, measure::P99, limit)
        },
        limits: "p99 of a few thousand connections per run is set by scheduling delays on the shared vCPUs (milliseconds), not by the ~µs the program adds; {noise}",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "end to end",
        goal: "mcs XDP ≥ {limit}× iptables new connections/s at 10k services",
        limit: 3.5,
        measure: |report, limit| measure::e2e_versus(report, Mode::Iptables, limit),
        limits: "{baseline} itself reaches {baseline_vs_direct} of direct here: mcs cannot be more than 1/that faster than {baseline}, i.e. the baseline's per-connection cost on this machine is smaller than the goal assumed; {noise}",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "end to end",
        goal: "mcs XDP ≥ {limit}× nftables new connections/s at 10k services",
        limit: 1.15,
        measure: |report, limit| measure::e2e_versus(report, Mode::Nftables, limit),
        limits: "{baseline} itself reaches {baseline_vs_direct} of direct here: mcs cannot be more than 1/that faster than {baseline}, i.e. the baseline's per-connection cost on this machine is smaller than the goal assumed; {noise}",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "end to end",
        goal: "mcs socket LB ≥ {limit}× direct new connections/s, every scale",
        limit: 0.98,
        measure: |report, limit| {
            measure::e2e_every_scale(report, Mode::McsSocklb, measure::RATE, limit)
        },
        limits: "{cost_at_largest}connect() runs the cgroup connect4 program (service + Maglev + backend lookups, a reverse-NAT LRU insert) once per connection; {noise}",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "control plane",
        goal: "cold sync of 10k services × 10 endpoints ≤ {limit} s",
        limit: 0.2,
        measure: measure::cold_sync,
        limits: "{map_writes} map writes, written with BPF_MAP_UPDATE_BATCH a group at a time (at the batched rate measured below that alone is {batched_writes_s} s; batching measured {batch_vs_single} faster than single updates), plus building a Maglev table per frontend in userspace ({maglev_s} s for all on one CPU, timed alone) and the reconciler's bookkeeping; the three run as a pipeline of threads (tables, bookkeeping, writes) sharing the machine's CPUs",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "control plane",
        goal: "cold sync ≥ {limit}× faster than iptables-restore of the same services",
        limit: 30.0,
        measure: measure::cold_sync_vs_iptables,
        limits: "the sync's map writes (batched, but still one kernel hash-map update per entry) and Maglev tables against a restore that the nf_tables backend commits in one transaction",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "control plane",
        goal: "p50 endpoint change → map ≤ {limit} ms with 10k×10 loaded",
        limit: 2.0,
        measure: |report, limit| measure::endpoint_change(report, 50.0, limit),
        limits: CHANGE_LIMITS,
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "control plane",
        goal: "p99 endpoint change → map ≤ {limit} ms with 10k×10 loaded",
        limit: 10.0,
        measure: |report, limit| measure::endpoint_change(report, 99.0, limit),
        limits: CHANGE_LIMITS,
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "control plane",
        goal: "agent peak RSS ≤ {limit} MiB at 10k×10",
        limit: 128.0,
        measure: measure::agent_rss,
        limits: RSS_LIMITS,
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "at scale",
        goal: "cold sync of 100k services × 10 endpoints ≤ {limit} s",
        limit: 2.5,
        measure: measure::scale_cold_sync,
        limits: "{map_writes} map writes in batches and a Maglev table per frontend ({maglev_s} s for all on one CPU, timed alone), in a pipeline of threads sharing the machine's CPUs",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "at scale",
        goal: "agent peak RSS ≤ {limit} MiB at 100k×10",
        limit: 512.0,
        measure: measure::scale_rss,
        limits: RSS_LIMITS,
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "at scale",
        goal: "BPF map memory ≤ {limit} MiB at 100k×10 with 1M conntrack entries",
        limit: 512.0,
        measure: measure::scale_bpf_memory,
        limits: "the maps are preallocated at the sizes given (docs/operations.md, Memory): backend slots and conntrack entries about 100 bytes each, one-byte Maglev entries about 100 per backend",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "at scale",
        goal: "p99 endpoint change → map ≤ {limit} ms with 100k×10 loaded",
        limit: 1.0,
        measure: |report, limit| measure::scale_change(report, 99.0, limit),
        limits: "the changed set takes {diff_p99} ms at p99: {change_limits}",
        explain: Explain::WhenMissed,
    },
    GoalRow {
        part: "controller",
        goal: "p99 export → import (its ClusterSetIP seen in every cluster) ≤ {limit} s with 1 000 exports across 3 clusters (GKE documents about 5 minutes for a first export)",
        limit: 1.0,
        measure: |report, limit| measure::export_to_import(report, 99.0, limit),
        limits: "a change opens the controller's --debounce window (0.1 s; later changes join it), then one reconcile recomputes every import from its stores (O(exports + slices)) and writes what differs (the import, its status, the MCS slice, the export's status) by server-side apply, a few at a time: plan and writes take {reconcile_ms} ms per reconcile here (mean); the import is in every cluster once the slowest of the three controllers has written it and a watch has delivered it; exports arrive at {rate}/s, so most reconciles carry one or two",
        explain: Explain::Always,
    },
    GoalRow {
        part: "controller",
        goal: "p99 endpoint change → map on a node of another cluster ≤ {limit} s with 1 000 exports across 3 clusters",
        limit: 1.0,
        measure: |report, limit| measure::endpoint_change_to_map(report, 99.0, limit),
        limits: "two watches and two debounces in a row: the controller of the agent's cluster sees the member's slice change, waits out its --debounce window (0.1 s), reconciles everything ({reconcile_ms} ms, mean) and writes the MCS slice (patch → slice seen in the agent's cluster: {controller_part}); the agent's watch delivers it, the agent publishes it (at once after a quiet period; bursts are coalesced into 75 ms windows), diffs the new snapshot against the last and writes only the touched frontend (slice → map: {agent_part}); every controller reconciles on every change of any member, so the three share the CPUs with the agent and the API servers",
        explain: Explain::Always,
    },
];

const RSS_LIMITS: &str = "the agent holds the model once (shared by the source, the run loop and DNS: every endpoint's addresses and conditions), the desired state (every frontend with its backends, two ClusterSetIP markers per address, which import claims each frontend) and what the reconciler applied (every frontend's backends in slot order and its name, a counter id per distinct backend): the desired and the applied state each still hold every frontend's backend list and name";

const CHANGE_LIMITS: &str = "the agent takes the changed objects from the update's journal (the source records what changed), recomputes only the affected imports and writes only their frontends; the source's own journaling (a diff against the snapshot it published last, see the at-scale table) comes before and is not included";

/// Every goal the report has numbers for, judged, in table order.
pub fn goals(report: &Report) -> Vec<Goal> {
    GOALS.iter().filter_map(|row| row.judge(report)).collect()
}

impl GoalRow {
    fn judge(&self, report: &Report) -> Option<Goal> {
        let measured = (self.measure)(report, self.limit)?;
        let explain = match self.explain {
            Explain::WhenMissed => measured.met == Some(false),
            Explain::UnlessMet => measured.met != Some(true),
            Explain::Always => true,
        };
        Some(Goal {
            part: self.part.to_owned(),
            goal: self.fill(self.goal, &measured),
            limits: if explain {
                self.fill(self.limits, &measured)
            } else {
                String::new()
            },
            met: measured.met.filter(|_| measured.at_goal_size),
            measured: measured.text,
        })
    }

    fn fill(&self, template: &str, measured: &Measured) -> String {
        let mut text = template
            .replace("{limit}", &self.limit.to_string())
            .replace("{noise}", NOISE);
        for (name, value) in &measured.values {
            text = text.replace(&format!("{{{name}}}"), value);
        }
        text.replace("{change_limits}", CHANGE_LIMITS)
    }
}

#[cfg(test)]
pub(super) fn every_text_filled(report: &Report) -> Result<(), String> {
    for row in GOALS {
        let Some(measured) = (row.measure)(report, row.limit) else {
            continue;
        };
        for text in [
            row.fill(row.goal, &measured),
            row.fill(row.limits, &measured),
        ] {
            if text.contains('{') || text.contains('}') {
                return Err(text);
            }
        }
    }
    Ok(())
}
