//! Clusterset DNS (KEP-1645 multicluster DNS specification): the agent
//! answers `<svc>.<ns>.svc.<zone>` and the other names of the specification
//! from the same import model the dataplane uses.
//!
//! * [`records`] — pure builder: model → every record of the zone, and the
//!   lookup deciding answer / NODATA / NXDOMAIN / not our zone;
//! * [`server`]  — UDP and TCP server (hickory) answering from the current
//!   table, rebuilt off the async workers and swapped atomically on every
//!   source update; `handler.rs` answers one query;
//! * [`rate_limit`] — response rate limiting of UDP answers per client
//!   prefix (slip: every Nth limited answer truncated, to retry over TCP).
//!
//! `docs/dns.md` lists the records with `dig` examples.

mod handler;
pub mod rate_limit;
pub mod records;
pub mod server;

pub use rate_limit::RateLimitConfig;
pub use records::{ANY_PREFERENCE, DNS_SCHEMA_VERSION, Lookup, ZoneTable};
pub use server::{DEFAULT_TTL, DEFAULT_ZONE, DnsConfig, DnsError, DnsServer, parse_zone, serve};
