//! `mcs-agent run`'s map-size and conntrack-expiry flags (flattened into
//! [`super::RunArgs`]).

use clap::Args;

/// Default bytes of Maglev tables per backend slot.
pub const MAGLEV_BYTES_PER_SLOT: u64 = 160;

/// Map capacities (`--*-max`).
#[derive(Debug, Clone, Args)]
pub struct MapSizeArgs {
    /// Frontends: every ClusterSetIP × port × protocol, plus two port-0
    /// markers per ClusterSetIP. Sizes the service map, the frontend names
    /// and the per-frontend counters (per CPU: 32 bytes × this × possible
    /// CPUs). A frontend beyond it is not programmed (an error names it and
    /// this flag; retried every second); the others are unaffected.
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_FRONTENDS,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 24)), help_heading = "Map sizes")]
    pub frontends_max: u32,

    /// Backend slots over all frontends (a frontend with 10 endpoints takes
    /// 10). About 100 bytes each, preallocated. A frontend whose slots do
    /// not fit is not updated (an error names it and this flag).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_BACKEND_SLOTS,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 26)), help_heading = "Map sizes")]
    pub backend_slots_max: u32,

    /// Distinct backends (pod address and port) across all imports, each
    /// with its own packet counters. A frontend that needs one more is not
    /// updated (an error names it, retried every second). The counters are
    /// per CPU: 32 bytes × this × possible CPUs.
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_BACKENDS,
          value_parser = clap::value_parser!(u32).range(16..=(1 << 24)), help_heading = "Map sizes")]
    pub backends_max: u32,

    /// Bytes of Maglev tables (one array, preallocated). A frontend with N
    /// backends takes the smallest prime ≥ 100 × N entries (at most 16 381),
    /// one byte each up to 256 backends, two above: about 100 bytes per
    /// backend slot, up to twice that after its backend count halved.
    /// [default: 160 × --backend-slots-max]
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(4096..=(1 << 34)), help_heading = "Map sizes")]
    pub maglev_bytes_max: Option<u64>,

    /// Conntrack capacity in entries (an LRU map: two entries per
    /// translated flow, the least recently used evicted when full; about
    /// 100 bytes each).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_CONNTRACK,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 26)), help_heading = "Map sizes")]
    pub conntrack_max: u32,

    /// ClientIP session-affinity bindings (an LRU map: one per client and
    /// frontend with affinity, the least recently used evicted when full;
    /// the client then keeps its backend through the Maglev hash).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_AFFINITY,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 26)), help_heading = "Map sizes")]
    pub affinity_max: u32,

    /// Socket-LB reverse translations (an LRU map: one per socket and
    /// backend; an evicted socket sees the backend in getpeername).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_SOCK_REVNAT,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 26)), help_heading = "Map sizes")]
    pub sock_revnat_max: u32,

    /// IPv6 frontends (entries of the IPv6 service map; their ids and
    /// counters count against --frontends-max too). Small by default so a
    /// node without IPv6 services pays little; raise it with IPv6 or
    /// dual-stack imports. A frontend beyond it is not programmed (an error
    /// names it and this flag).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_FRONTENDS_V6,
          value_parser = clap::value_parser!(u32).range(16..=(1 << 24)), help_heading = "Map sizes")]
    pub frontends_v6_max: u32,

    /// Backend slots of the IPv6 frontends (about 112 bytes each,
    /// preallocated; their Maglev tables share --maglev-bytes-max).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_BACKEND_SLOTS_V6,
          value_parser = clap::value_parser!(u32).range(16..=(1 << 26)), help_heading = "Map sizes")]
    pub backend_slots_v6_max: u32,

    /// IPv6 conntrack entries (an LRU map like --conntrack-max; about 170
    /// bytes each).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_CONNTRACK_V6,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 26)), help_heading = "Map sizes")]
    pub conntrack_v6_max: u32,

    /// IPv6 ClientIP session-affinity bindings (an LRU map like
    /// --affinity-max).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_AFFINITY_V6,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 26)), help_heading = "Map sizes")]
    pub affinity_v6_max: u32,
    /// Socket-LB reverse translations of IPv6 sockets (an LRU map like
    /// --sock-revnat-max).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_SOCK_REVNAT_V6,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 26)), help_heading = "Map sizes")]
    pub sock_revnat_v6_max: u32,
}

impl MapSizeArgs {
    /// The operator-sized map capacities. A pinned map of another size is
    /// recreated at start (logged with what that loses).
    pub fn map_sizes(&self) -> crate::dataplane::MapSizes {
        use crate::dataplane::MapSizes;
        let maglev_bytes = self
            .maglev_bytes_max
            .unwrap_or(u64::from(self.backend_slots_max) * MAGLEV_BYTES_PER_SLOT);
        MapSizes {
            frontends: self.frontends_max,
            backend_slots: self.backend_slots_max,
            backends: self.backends_max,
            maglev_chunks: MapSizes::maglev_chunks_for(maglev_bytes),
            conntrack: self.conntrack_max,
            affinity: self.affinity_max,
            sock_revnat: self.sock_revnat_max,
            frontends_v6: self.frontends_v6_max,
            backend_slots_v6: self.backend_slots_v6_max,
            conntrack_v6: self.conntrack_v6_max,
            affinity_v6: self.affinity_v6_max,
            sock_revnat_v6: self.sock_revnat_v6_max,
        }
    }
}

/// Idle timeouts of conntrack classes (`--conntrack-timeout-*`).
#[derive(Debug, Clone, Args)]
pub struct ConntrackExpiryArgs {
    /// Idle time after which a TCP flow that never completed its handshake
    /// (only SYNs seen) expires from conntrack, in seconds (Cilium's
    /// CT_SYN_TIMEOUT).
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Conntrack expiry")]
    pub conntrack_timeout_syn: u32,

    /// Idle time after which an established TCP flow expires, in seconds
    /// (Cilium's CT_CONNECTION_LIFETIME_TCP, 6 h).
    #[arg(long, value_name = "SECONDS", default_value_t = 21600,
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Conntrack expiry")]
    pub conntrack_timeout_established: u32,

    /// Idle time after which a closed TCP flow (RST either way, or FIN both
    /// ways) expires, in seconds (Cilium's CT_CLOSE_TIMEOUT).
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Conntrack expiry")]
    pub conntrack_timeout_closed: u32,

    /// Idle time after which a UDP flow expires, in seconds (Cilium's
    /// CT_CONNECTION_LIFETIME_NONTCP). Socket-LB reverse translations of
    /// UDP sockets age the same; those of TCP sockets like established
    /// flows.
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Conntrack expiry")]
    pub conntrack_timeout_other: u32,
}

impl ConntrackExpiryArgs {
    /// How the conntrack janitor collects expired entries.
    pub fn gc_config(&self) -> crate::conntrack::gc::GcConfig {
        use std::time::Duration;
        let seconds = |s: u32| Duration::from_secs(u64::from(s));
        crate::conntrack::gc::GcConfig {
            timeouts: crate::conntrack::expiry::Timeouts {
                syn: seconds(self.conntrack_timeout_syn),
                established: seconds(self.conntrack_timeout_established),
                closed: seconds(self.conntrack_timeout_closed),
                other: seconds(self.conntrack_timeout_other),
            },
            ..Default::default()
        }
    }
}
