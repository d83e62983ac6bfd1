//! Clusterset DNS (KEP-1645 multicluster DNS specification): the agent
//! answers `<svc>.<ns>.svc.<zone>` and the other names of the specification
//! from the same import model the dataplane uses.
//!
//! * [`records`] — pure builder: model → every record of the zone, and the
//!   lookup deciding answer / NODATA / NXDOMAIN / not our zone;
//! * [`server`]  — UDP and TCP server (hickory) answering from the current
//!   table, rebuilt and swapped atomically on every source update.
//!
//! `docs/dns.md` lists the records with `dig` examples.

pub mod records;
pub mod server;

pub use records::{DNS_SCHEMA_VERSION, Lookup, ZoneTable};
pub use server::{DEFAULT_TTL, DEFAULT_ZONE, DnsConfig, DnsError, DnsServer, parse_zone, serve};
