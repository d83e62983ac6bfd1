//! The DNS responder's node-local address (`--dns-link NAME`): a dummy
//! link of the agent's own holding the `--dns-addr` address, so every pod
//! and CoreDNS instance on the node reaches the node's own responder at one
//! address (NodeLocal DNSCache does the same). Created if missing, kept on
//! exit (the address stays routable across restarts).

use std::net::IpAddr;

use futures::TryStreamExt as _;
use rtnetlink::{LinkDummy, LinkUnspec, new_connection};

#[derive(Debug, thiserror::Error)]
pub enum DnsLinkError {
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("cannot create or configure link {name}")]
    Netlink {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("link {0} did not appear after it was created")]
    Missing(String),
}

/// Makes sure link `name` exists (a dummy), is up and holds `addr`.
pub async fn ensure(name: &str, addr: IpAddr) -> Result<(), DnsLinkError> {
    let netlink = |source| DnsLinkError::Netlink {
        name: name.to_owned(),
        source,
    };
    let (connection, handle, _) = new_connection().map_err(DnsLinkError::Socket)?;
    let connection = tokio::spawn(connection);
    let index = async {
        let find = || async {
            match handle
                .link()
                .get()
                .match_name(name.to_owned())
                .execute()
                .try_next()
                .await
            {
                Ok(found) => Ok(found.map(|link| link.header.index)),
                // No such device.
                Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -libc::ENODEV => {
                    Ok(None)
                }
                Err(error) => Err(netlink(error)),
            }
        };
        if let Some(index) = find().await? {
            return Ok(index);
        }
        handle
            .link()
            .add(LinkDummy::new(name).build())
            .execute()
            .await
            .map_err(netlink)?;
        find()
            .await?
            .ok_or_else(|| DnsLinkError::Missing(name.to_owned()))
    }
    .await;
    let result = async {
        let index = index?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(netlink)?;
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        handle
            .address()
            .add(index, addr, prefix)
            .replace()
            .execute()
            .await
            .map_err(netlink)
    }
    .await;
    connection.abort();
    result
}
