//! Clients that run in a pod namespace and report who answered.
//!
//! Sockets are created inside the client's namespace (see
//! [`Netns::enter`]) and every operation has a [`TIMEOUT`], so a broken
//! dataplane makes a test fail quickly instead of hanging.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    netns::Netns,
    servers::{Answer, Identity, header},
};

/// Connect, read and write timeout of every client operation.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// One HTTP exchange as both ends saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpReply {
    /// The backend that answered.
    pub backend: Identity,
    /// The client's own address (`getsockname`).
    pub local: SocketAddr,
    /// The server address as the client sees it (`getpeername`): the
    /// ClusterSetIP when the reply was reverse-translated.
    pub peer: SocketAddr,
    /// The client address as the backend saw it.
    pub seen_by_backend: SocketAddr,
}

/// A kept-alive HTTP/1.1 connection made from inside a namespace.
#[derive(Debug)]
pub struct HttpConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    target: SocketAddr,
}

impl HttpConn {
    /// Connects from inside `ns` to `target`.
    pub fn connect(ns: &Netns, target: SocketAddr) -> Result<Self> {
        let stream = ns
            .enter(|| TcpStream::connect_timeout(&target, TIMEOUT))?
            .with_context(|| format!("connecting from {} to {target}", ns.name()))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            local: stream.local_addr()?,
            peer: stream.peer_addr()?,
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            target,
        })
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// `GET /` on this connection, keeping it open.
    pub fn get(&mut self) -> Result<HttpReply> {
        self.request(0, 0, false)
    }

    /// `GET /` with `Connection: close`.
    pub fn get_and_close(mut self) -> Result<HttpReply> {
        self.request(0, 0, true)
    }

    /// A request carrying `upload` body bytes whose answer is padded to
    /// about `download` bytes, on this connection (kept open). Checks that
    /// the server received the whole body and the whole answer arrived:
    /// bulk data in both directions, in many full-size segments.
    pub fn transfer(&mut self, upload: usize, download: usize) -> Result<HttpReply> {
        self.request(upload, download, false)
    }

    fn request(&mut self, upload: usize, download: usize, close: bool) -> Result<HttpReply> {
        let connection = if close { "close" } else { "keep-alive" };
        let (method, target) = if download > 0 {
            ("POST", format!("/?pad={download}"))
        } else if upload > 0 {
            ("POST", "/".to_owned())
        } else {
            ("GET", "/".to_owned())
        };
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: mcs-tests\r\n\
             Content-Length: {upload}\r\nConnection: {connection}\r\n\r\n",
            self.target
        );
        let mut bytes = request.into_bytes();
        bytes.resize(bytes.len() + upload, b'u');
        self.writer
            .write_all(&bytes)
            .with_context(|| format!("sending request to {}", self.target))?;
        let answer = self
            .read_response()
            .with_context(|| format!("reading response from {}", self.target))?;
        ensure!(
            answer.received == upload && answer.pad.len() == download,
            "{}: sent {upload} bytes and asked for {download}, but the server got {} and sent {}",
            answer.identity,
            answer.received,
            answer.pad.len()
        );
        Ok(HttpReply {
            backend: answer.identity,
            local: self.local,
            peer: self.peer,
            seen_by_backend: answer.peer,
        })
    }

    fn read_response(&mut self) -> Result<Answer> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("connection closed in the response head");
            }
            let end = line == "\r\n";
            head.push_str(&line);
            if end {
                break;
            }
        }
        let status = head.lines().next().unwrap_or_default();
        ensure!(
            status.starts_with("HTTP/1.1 200"),
            "unexpected status {status:?}"
        );
        let length: usize = header(&head, "content-length")
            .context("response without Content-Length")?
            .parse()
            .context("Content-Length")?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        serde_json::from_slice(&body)
            .with_context(|| format!("response body {:?}", String::from_utf8_lossy(&body)))
    }
}

/// One request on a new connection (`Connection: close`).
pub fn http_get(ns: &Netns, target: SocketAddr) -> Result<HttpReply> {
    HttpConn::connect(ns, target)?.get_and_close()
}

/// One UDP exchange as both ends saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpReply {
    /// The backend that answered.
    pub backend: Identity,
    /// The client's own address.
    pub local: SocketAddr,
    /// Source of the reply (`recvfrom`): the ClusterSetIP when the reply was
    /// reverse-translated.
    pub from: SocketAddr,
    /// The client address as the backend saw it.
    pub seen_by_backend: SocketAddr,
    /// The payload the backend echoed.
    pub payload: String,
}

/// An unconnected UDP socket in a namespace. Unconnected on purpose: it
/// accepts a reply from any source, so a reply that was not translated back
/// to the ClusterSetIP shows up as a wrong `from` instead of a timeout.
#[derive(Debug)]
pub struct UdpClient {
    socket: UdpSocket,
    local: SocketAddr,
}

impl UdpClient {
    /// Binds in `ns` to `0.0.0.0:port` (`port` 0 = ephemeral).
    pub fn bind(ns: &Netns, port: u16) -> Result<Self> {
        Self::bind_to(ns, SocketAddr::from(([0, 0, 0, 0], port)))
    }

    /// Binds in `ns` to `addr` (e.g. `[::]:0` for an IPv6 client).
    pub fn bind_to(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        let port = addr.port();
        let socket = ns
            .enter(|| UdpSocket::bind(addr))?
            .with_context(|| format!("binding UDP port {port} in {}", ns.name()))?;
        socket.set_read_timeout(Some(TIMEOUT))?;
        socket.set_write_timeout(Some(TIMEOUT))?;
        Ok(Self {
            local: socket.local_addr()?,
            socket,
        })
    }

    /// The bound address (`0.0.0.0:PORT`).
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Sends `payload` to `target` and waits for the answer echoing it;
    /// stale answers to earlier requests are skipped.
    pub fn request(&self, target: SocketAddr, payload: &str) -> Result<UdpReply> {
        self.socket
            .send_to(payload.as_bytes(), target)
            .with_context(|| format!("sending UDP to {target}"))?;
        let mut buf = [0u8; 2048];
        loop {
            let (len, from) = self.socket.recv_from(&mut buf).map_err(|e| {
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    anyhow::anyhow!("no UDP answer from {target} within {TIMEOUT:?}")
                } else {
                    anyhow::Error::new(e).context(format!("receiving UDP from {target}"))
                }
            })?;
            let answer: Answer = serde_json::from_slice(&buf[..len]).with_context(|| {
                format!(
                    "UDP answer {:?} from {from}",
                    String::from_utf8_lossy(&buf[..len])
                )
            })?;
            if answer.payload != payload {
                continue;
            }
            return Ok(UdpReply {
                backend: answer.identity,
                local: self.local,
                from,
                seen_by_backend: answer.peer,
                payload: answer.payload,
            });
        }
    }
}

/// One UDP request from a new socket (`src_port` `None` = ephemeral).
pub fn udp_request(
    ns: &Netns,
    target: SocketAddr,
    src_port: Option<u16>,
    payload: &str,
) -> Result<UdpReply> {
    UdpClient::bind(ns, src_port.unwrap_or(0))?.request(target, payload)
}
