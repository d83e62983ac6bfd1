//! Conntrack hygiene, on the [`Janitor`]'s thread, off the reconcile path.
//!
//! Policy (see docs/reliability.md):
//! * **New TCP connections** never follow an old entry: the datapath
//!   balances every SYN afresh (`mcs-ebpf/src/xdp/conntrack.rs`), so
//!   nothing here is needed for a new connection to reach a current
//!   backend.
//! * **Expiry** ([`expiry`], collected by [`gc`]): every flow's two entries
//!   go together once the flow has been idle for its class's timeout —
//!   short for handshakes that never completed and for closed flows, long
//!   for established TCP, UDP after inactivity. Socket-LB reverse entries
//!   age out the same way. Collected in bounded steps, counted in metrics.
//! * **UDP flows of retired backends** ([`retired`]) are deleted, both
//!   directions, as soon as the reconcile that retired the backend has run:
//!   UDP has no connection start, so a client on a fixed source port would
//!   otherwise keep sending to a dead backend until the flow idles out
//!   (kubernetes#19029); its next datagram is a new flow, balanced over the
//!   current backends.
//! * **Established TCP flows** of a retired backend are kept, as kube-proxy
//!   does: a terminating pod finishes its connections; a pod that is really
//!   gone answers nothing (or its node answers RST), and the client's
//!   reconnect — a SYN — is balanced anew.
//!
//! The scan for retired backends also releases prefilter members that only
//! lingered for flows that are gone (`dataplane/prefilter.rs`).

pub mod expiry;
pub mod gc;
mod retired;

use std::{
    os::fd::AsFd as _,
    sync::{Arc, mpsc},
    time::Instant,
};

use aya::maps::{HashMap, IterableMap as _, Map, MapData, MapError};
use mcs_common::{CtKey, CtKeyV6, CtValue, CtValueV6, SockRevKey, SockRevValue};
use tracing::{info, warn};

pub use self::retired::{Scan, scan, stale_keys};
use self::{
    expiry::Class,
    gc::{Collected, Collector, GcConfig},
};
use crate::{metrics::Metrics, reconcile::Retired, telemetry::chain};

/// Work for the janitor: merged when several queue up during a scan.
#[derive(Debug, Default)]
struct Job {
    retired: Vec<Retired>,
    sweep: bool,
}

/// What the janitor reports back after a scan.
#[derive(Debug)]
pub struct JanitorReport {
    /// Backends whose UDP flows the scan looked for.
    pub retired_backends: usize,
    pub scan: Result<Scan, MapError>,
}

/// What the janitor needs to collect expired entries.
pub struct GcSetup<'a> {
    pub config: GcConfig,
    /// The socket-LB reverse map, aged out with conntrack.
    pub sockets: &'a HashMap<MapData, SockRevKey, SockRevValue>,
    /// Where the collection is counted.
    pub metrics: Arc<Metrics>,
}

/// A second handle on a pinned map, for the janitor's thread.
fn second_handle<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
) -> Result<HashMap<MapData, K, V>, MapError> {
    let fd = map
        .map()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|io_error| {
            MapError::from(aya::sys::SyscallError {
                call: "dup",
                io_error,
            })
        })?;
    HashMap::try_from(Map::from_map_data(MapData::from_fd(fd)?)?)
}

/// The collection state of the janitor's thread.
struct Gc {
    collector: Collector,
    sockets: HashMap<MapData, SockRevKey, SockRevValue>,
    metrics: Arc<Metrics>,
    next: Instant,
    /// The last failure logged, so a persisting one is logged once.
    failing: Option<String>,
}

impl Gc {
    fn step(
        &mut self,
        conntrack: &HashMap<MapData, CtKey, CtValue>,
        conntrack_v6: Option<&HashMap<MapData, CtKeyV6, CtValueV6>>,
    ) {
        let now_ns = match crate::dataplane::clock::coarse_now() {
            Ok(now) => now,
            Err(error) => {
                self.failed(chain(&error));
                self.next = Instant::now() + self.collector.config().interval;
                return;
            }
        };
        match self
            .collector
            .step(conntrack, conntrack_v6, Some(&self.sockets), now_ns)
        {
            Ok(collected) => {
                if self.failing.take().is_some() {
                    info!("conntrack collection works again");
                }
                self.count(&collected);
                self.next = self.collector.next_step(&collected, Instant::now());
            }
            Err(error) => {
                self.failed(chain(&error));
                self.next = Instant::now() + self.collector.config().interval;
            }
        }
    }

    fn failed(&mut self, message: String) {
        if self.failing.as_deref() != Some(message.as_str()) {
            warn!(error = %message, "conntrack collection failed; retrying every interval");
            self.failing = Some(message);
        }
    }

    fn count(&self, collected: &Collected) {
        let metrics = &self.metrics;
        metrics.conntrack_scanned.inc_by(collected.scanned as u64);
        for class in Class::ALL {
            let expired = collected.expired[class.index()] as u64;
            if expired > 0 {
                metrics
                    .conntrack_expired
                    .get_or_create(&crate::metrics::ClassLabels {
                        class: class.label().to_owned(),
                    })
                    .inc_by(expired);
            }
        }
        metrics
            .sock_revnat_expired
            .inc_by(collected.sockets_expired as u64);
        if let Some(took) = collected.pass_finished {
            metrics.conntrack_gc_pass.observe(took.as_secs_f64());
        }
    }
}

/// Conntrack work on its own thread. A scan for retired backends reads
/// every entry (about a second per million), so on the reconcile path it
/// would hold up the next change; here a change's writes never wait for
/// one. Between scans the thread collects expired entries in bounded steps
/// ([`gc`]). The thread has its own handles to the maps; what the
/// prefilter sweep needs comes back in a [`JanitorReport`] for the owner of
/// the prefilter to apply (sound later too: a sweep releases only members
/// that lingered since before the scan started).
pub struct Janitor {
    jobs: mpsc::Sender<Job>,
    reports: tokio::sync::mpsc::UnboundedReceiver<JanitorReport>,
}

impl Janitor {
    /// Starts the thread on second handles to `conntrack` and, when given,
    /// the IPv6 `conntrack_v6` (scanned and collected the same way); with
    /// `gc`, it also collects expired entries.
    pub fn start(
        conntrack: &HashMap<MapData, CtKey, CtValue>,
        conntrack_v6: Option<&HashMap<MapData, CtKeyV6, CtValueV6>>,
        gc: Option<GcSetup<'_>>,
    ) -> Result<Self, MapError> {
        let mut own = second_handle(conntrack)?;
        let mut own_v6 = conntrack_v6.map(second_handle).transpose()?;
        let mut gc = match gc {
            Some(setup) => Some(Gc {
                next: Instant::now() + setup.config.interval,
                collector: Collector::new(setup.config),
                sockets: second_handle(setup.sockets)?,
                metrics: setup.metrics,
                failing: None,
            }),
            None => None,
        };
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (outbox, reports) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("conntrack-janitor".into())
            .spawn(move || {
                // Ends when the agent drops the `Janitor`.
                loop {
                    let job = match &gc {
                        Some(gc) => {
                            let wait = gc.next.saturating_duration_since(Instant::now());
                            match inbox.recv_timeout(wait) {
                                Ok(job) => Some(job),
                                Err(mpsc::RecvTimeoutError::Timeout) => None,
                                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                            }
                        }
                        None => match inbox.recv() {
                            Ok(job) => Some(job),
                            Err(mpsc::RecvError) => break,
                        },
                    };
                    if let Some(mut job) = job {
                        for more in inbox.try_iter() {
                            job.retired.extend(more.retired);
                            job.sweep |= more.sweep;
                        }
                        let report = JanitorReport {
                            retired_backends: job.retired.len(),
                            scan: scan(&mut own, own_v6.as_mut(), &job.retired, job.sweep),
                        };
                        if outbox.send(report).is_err() {
                            break;
                        }
                    }
                    if let Some(gc) = &mut gc
                        && Instant::now() >= gc.next
                    {
                        gc.step(&own, own_v6.as_ref());
                    }
                }
            })
            .map_err(|io_error| {
                MapError::from(aya::sys::SyscallError {
                    call: "spawn the conntrack janitor thread",
                    io_error,
                })
            })?;
        Ok(Self { jobs, reports })
    }

    /// Queues a scan for `retired` backends, with a prefilter sweep.
    pub fn submit(&self, retired: Vec<Retired>, sweep: bool) {
        // The thread only stops when this handle is dropped.
        let _ = self.jobs.send(Job { retired, sweep });
    }

    /// The next finished scan.
    pub async fn report(&mut self) -> Option<JanitorReport> {
        self.reports.recv().await
    }
}
