//! Attaching the hooks once the maps hold the first full state: XDP on the
//! `--interface` NICs, socket LB at the node's cgroup root, tc on every pod
//! interface — those there at start and, from the link notifications, each
//! one that appears later (a renamed or recreated interface is attached
//! anew, a vanished one forgotten with its pins).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use tracing::{debug, error, info};

use crate::{
    cli::RunArgs,
    dataplane::{
        Dataplane, Device,
        cgroup::{self, CgroupRootError},
    },
    interfaces::{
        Decision, Link,
        watch::{LinkEvent, LinkWatch},
    },
};

/// The pod interfaces served, by interface index (names can be reused).
pub(super) struct PodLinks {
    /// The agent's own devices: never pod interfaces.
    own: BTreeSet<String>,
    served: BTreeMap<u32, String>,
}

impl PodLinks {
    pub(super) fn new(args: &RunArgs) -> Self {
        let own = args
            .interfaces
            .iter()
            .cloned()
            .chain(args.dns_link.clone())
            .collect();
        Self {
            own,
            served: BTreeMap::new(),
        }
    }

    /// Handles one link there is (at start, or from a notification).
    pub(super) fn present(&mut self, dataplane: &mut Dataplane, args: &RunArgs, link: &Link) {
        if let Some(name) = self.served.get(&link.index)
            && *name == link.name
        {
            return; // a state change of a served interface
        }
        if let Some(old) = self.served.remove(&link.index) {
            info!(from = old, to = link.name, "pod interface renamed");
            dataplane.forget_tc(&old);
        }
        // A name served under another index: the interface was recreated.
        self.served.retain(|_, name| *name != link.name);
        match args.pod_interfaces.decide(link, &self.own) {
            Decision::Serve => match dataplane.attach_tc(&link.name, args.tc_attach) {
                Ok(()) => {
                    self.served.insert(link.index, link.name.clone());
                }
                // It may have vanished meanwhile; the next notification
                // about it decides again.
                Err(error) => error!(
                    interface = link.name,
                    error = %anyhow::Error::from(error),
                    "cannot attach tc to the pod interface"
                ),
            },
            decision => debug!(interface = link.name, ?decision, "not a pod interface"),
        }
    }

    /// Handles a link that is gone.
    pub(super) fn gone(&mut self, dataplane: &mut Dataplane, index: u32, name: &str) {
        if self.served.remove(&index).is_some() {
            dataplane.forget_tc(name);
        }
    }

    pub(super) fn event(&mut self, dataplane: &mut Dataplane, args: &RunArgs, event: LinkEvent) {
        match event {
            LinkEvent::Present(link) => self.present(dataplane, args, &link),
            LinkEvent::Gone { index, name } => self.gone(dataplane, index, &name),
        }
    }
}

/// Attaches everything at start; returns the link watch for the main loop
/// (None when pod interface discovery is off).
pub(super) async fn attach_all(
    dataplane: &mut Dataplane,
    args: &RunArgs,
    pods: &mut PodLinks,
) -> anyhow::Result<Option<LinkWatch>> {
    let (watch, links) = LinkWatch::start().await.context("watch the node's links")?;
    for interface in &args.interfaces {
        let link = links.iter().find(|link| link.name == *interface);
        let device = match link {
            Some(link) if link.is_virtual() => Device::Virtual,
            Some(_) => Device::Physical,
            None => anyhow::bail!("interface {interface} (--interface) does not exist"),
        };
        dataplane
            .attach(interface, device, args.xdp_mode)
            .with_context(|| format!("attach XDP to {interface}"))?;
    }
    if args.socket_lb {
        let cgroup = match &args.cgroup {
            Some(path) => {
                cgroup::check_cgroup(path).map_err(|e: CgroupRootError| anyhow::anyhow!(e))?;
                path.clone()
            }
            None => cgroup::node_cgroup_root().context("find the node's cgroup v2 root")?,
        };
        dataplane.attach_socket_lb(&cgroup)?;
    }
    if args.pod_interfaces.is_empty() {
        return Ok(None);
    }
    for link in &links {
        pods.present(dataplane, args, link);
    }
    info!(
        globs = %args.pod_interfaces,
        attached = pods.served.len(),
        "pod interfaces attached; following link notifications"
    );
    Ok(Some(watch))
}
