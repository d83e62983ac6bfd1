//! mcs-agent: keeps the eBPF ClusterSetIP dataplane in sync with
//! ServiceImports and EndpointSlices.
//!
//! Layout (the data flows top to bottom):
//! * [`sources`]   — where objects come from (manifest files; the API
//!   server): snapshots, conversion problems and object references only;
//! * [`model`]     — validated import model shared by all sources;
//! * [`desired`]   — pure function: model → frontends and backends, kept up
//!   to date import by import by one engine (in [`run`]);
//! * [`reconcile`] — diff of desired vs. applied state, written to the maps;
//! * [`dataplane`] — the eBPF object, program attachment, pinned maps;
//! * [`conntrack`] — the janitor: conntrack and socket-LB expiry, UDP flows
//!   of retired backends;
//! * [`interfaces`] — which interfaces are pods', found as they come and
//!   go (netlink), and the DNS responder's node-local link;
//! * [`rejection_log`], [`events`] — every rejection reported once: logs
//!   and metrics, and Kubernetes Events for API objects;
//! * [`dump`]      — reads the live maps for operators;
//! * [`dns`]       — clusterset DNS server answering from the same model;
//! * [`controller`] — the export side (`mcs-agent controller`): ServiceExports
//!   of every member cluster → ServiceImports, EndpointSlices, export status;
//! * [`cli`], [`run`], [`telemetry`] — the binary's command line and wiring.

pub mod cli;
pub mod conntrack;
pub mod controller;
pub mod dataplane;
pub mod desired;
pub mod dns;
pub mod dump;
pub mod events;
pub mod interfaces;
pub mod kube_config;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod reconcile;
pub mod rejection_log;
pub mod run;
pub mod sources;
pub mod telemetry;
