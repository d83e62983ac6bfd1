//! The node's links from netlink: one dump at start, then link
//! notifications (`RTM_NEWLINK`/`RTM_DELLINK` on `RTNLGRP_LINK`) as they
//! happen — no polling. The subscription is made before the dump, so a
//! link created in between is reported (perhaps twice, which is harmless).

use futures::{StreamExt as _, TryStreamExt as _, channel::mpsc::UnboundedReceiver};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage},
};
use rtnetlink::{Handle, MulticastGroup, new_multicast_connection};

use super::Link;

/// A change of the node's links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link exists (new, or changed: renamed, up, down).
    Present(Link),
    /// A link is gone (deleted, or moved to another namespace).
    Gone { index: u32, name: String },
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot open a netlink socket for link notifications")]
    Socket(#[source] std::io::Error),
    #[error("cannot list the node's links")]
    Dump(#[source] rtnetlink::Error),
}

/// Link notifications of the agent's network namespace.
pub struct LinkWatch {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, netlink_sys::SocketAddr)>,
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// A link from a netlink link message (`None` without a name).
pub fn link_of(message: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut kind = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(value) => name = Some(value.clone()),
            LinkAttribute::LinkInfo(infos) => {
                kind = infos.iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    Some(Link {
        index: message.header.index,
        name: name?,
        kind,
        ethernet: message.header.link_layer_type == LinkLayerType::Ether,
        loopback: message.header.flags.contains(LinkFlags::Loopback),
    })
}

impl LinkWatch {
    /// Subscribes to link notifications, then lists the links there are.
    pub async fn start() -> Result<(Self, Vec<Link>), WatchError> {
        let (connection, handle, messages) =
            new_multicast_connection(&[MulticastGroup::Link]).map_err(WatchError::Socket)?;
        let connection = tokio::spawn(connection);
        let watch = Self {
            messages,
            handle,
            connection,
        };
        let links = watch.dump().await?;
        Ok((watch, links))
    }

    /// Every link of the namespace now.
    pub async fn dump(&self) -> Result<Vec<Link>, WatchError> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(WatchError::Dump)?;
        Ok(messages.iter().filter_map(link_of).collect())
    }

    /// The next link change; `None` once the socket is closed.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        loop {
            let (message, _) = self.messages.next().await?;
            let NetlinkPayload::InnerMessage(message) = message.payload else {
                continue;
            };
            match message {
                RouteNetlinkMessage::NewLink(link) => {
                    if let Some(link) = link_of(&link) {
                        return Some(LinkEvent::Present(link));
                    }
                }
                RouteNetlinkMessage::DelLink(link) => {
                    if let Some(link) = link_of(&link) {
                        return Some(LinkEvent::Gone {
                            index: link.index,
                            name: link.name,
                        });
                    }
                }
                _ => {}
            }
        }
    }
}
