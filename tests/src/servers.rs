//! Backend servers that run inside pod namespaces.
//!
//! Each server binds its socket inside the pod's namespace (the socket stays
//! there for life) and then serves on ordinary threads. Every answer names
//! the pod and cluster that produced it and the peer address the server saw,
//! so tests can tell which backend a ClusterSetIP request reached and whether
//! the client address survived (no SNAT). Servers count what they served and
//! stop on `Drop`: their loops wake at least every [`POLL`] to check a stop
//! flag.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::netns::Netns;

/// How often idle server loops check whether they should stop.
pub const POLL: Duration = Duration::from_millis(50);
/// Largest request head the HTTP server accepts.
const MAX_HEAD: usize = 16 * 1024;

/// Who answered: the pod and its cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identity {
    pub pod: String,
    pub cluster: String,
}

impl Identity {
    pub fn new(pod: &str, cluster: &str) -> Self {
        Self {
            pod: pod.to_owned(),
            cluster: cluster.to_owned(),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.cluster, self.pod)
    }
}

/// The body of every server answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    #[serde(flatten)]
    pub identity: Identity,
    /// The client address as the server saw it (`getpeername`/`recvfrom`).
    pub peer: SocketAddr,
    /// The UDP payload echoed back (empty for HTTP).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub payload: String,
    /// HTTP: bytes of request body the server received.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub received: usize,
    /// HTTP: filler of the length asked for with `?pad=N`, to make large
    /// responses (many full-size segments).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pad: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Largest `?pad=N` the HTTP server honours.
pub const MAX_PAD: usize = 4 << 20;

/// What a server has served so far.
#[derive(Debug, Default)]
pub struct ServerStats {
    requests: AtomicU64,
    connections: AtomicU64,
    peers: Mutex<Vec<SocketAddr>>,
}

impl ServerStats {
    /// HTTP requests answered, or UDP datagrams echoed.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// TCP connections accepted (0 for UDP).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Peer address of every request, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, peer: SocketAddr) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(peer);
    }
}

/// Stop flag and threads of a running server.
#[derive(Debug)]
struct Running {
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Running {
    fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn spawn(&self, name: String, f: impl FnOnce() + Send + 'static) -> Result<()> {
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(f)
            .context("spawning server thread")?;
        self.threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
        Ok(())
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        // Connection threads are added by the accept thread while it runs,
        // so keep joining until the list stays empty.
        loop {
            let handles: Vec<_> = self
                .threads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain(..)
                .collect();
            if handles.is_empty() {
                break;
            }
            for handle in handles {
                // A panicking server thread has already printed its message;
                // the test sees the missing answers.
                let _ = handle.join();
            }
        }
    }
}

/// An HTTP/1.1 server answering every request with an [`Answer`] as JSON.
/// Supports keep-alive, so several requests can share one connection.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stats: Arc<ServerStats>,
    running: Running,
}

impl HttpServer {
    /// Listens on `addr` inside `ns` (e.g. `0.0.0.0:8080`) as `identity`.
    pub fn start(ns: &Netns, addr: SocketAddr, identity: Identity) -> Result<Self> {
        let listener = ns
            .enter(|| TcpListener::bind(addr))?
            .with_context(|| format!("binding TCP {addr} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let server = Self {
            addr: listener.local_addr()?,
            stats: Arc::default(),
            running: Running::new(),
        };
        let stats = Arc::clone(&server.stats);
        let stop = Arc::clone(&server.running.stop);
        let threads = Arc::clone(&server.running.threads);
        let name = format!("http-{}", identity.pod);
        server.running.spawn(name, move || {
            accept_loop(&listener, &identity, &stats, &stop, &threads);
        })?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.running.stop();
    }
}

fn accept_loop(
    listener: &TcpListener,
    identity: &Identity,
    stats: &Arc<ServerStats>,
    stop: &Arc<AtomicBool>,
    threads: &Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let (id, stats, stop) = (identity.clone(), Arc::clone(stats), Arc::clone(stop));
                let spawned = std::thread::Builder::new()
                    .name(format!("conn-{}", id.pod))
                    .spawn(move || {
                        if let Err(e) = serve_connection(stream, peer, &id, &stats, &stop) {
                            eprintln!("{id}: connection from {peer}: {e}");
                        }
                    });
                match spawned {
                    Ok(handle) => threads
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(handle),
                    Err(e) => eprintln!("{identity}: cannot spawn connection thread: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                eprintln!("{identity}: accept: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
}

fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    identity: &Identity,
    stats: &ServerStats,
    stop: &AtomicBool,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(head) = read_head(&mut reader, stop)? else {
            return Ok(()); // peer closed, or stopping
        };
        let content_length = header(&head, "content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let received = discard_body(&mut reader, content_length, stop)?;
        let close = header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        stats.record(peer);
        let body = serde_json::to_string(&Answer {
            identity: identity.clone(),
            peer,
            payload: String::new(),
            received,
            pad: "x".repeat(pad_param(&head).min(MAX_PAD)),
        })
        .map_err(io::Error::other)?;
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: {}\r\n\r\n{body}",
            body.len(),
            if close { "close" } else { "keep-alive" },
        );
        writer.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

/// Reads and drops `len` body bytes, riding out read timeouts (they only
/// exist to notice `stop`). Returns how many bytes arrived.
fn discard_body(
    reader: &mut BufReader<TcpStream>,
    len: usize,
    stop: &AtomicBool,
) -> io::Result<usize> {
    let mut buf = [0u8; 16 * 1024];
    let mut got = 0;
    while got < len {
        if stop.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let want = (len - got).min(buf.len());
        match reader.read(&mut buf[..want]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// `N` of a `?pad=N` in the request line, else 0.
fn pad_param(head: &str) -> usize {
    let target = head.split_whitespace().nth(1).unwrap_or_default();
    target
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("pad="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Reads a request head (up to the empty line). `None` when the peer closed
/// the connection between requests or the server is stopping.
fn read_head(reader: &mut BufReader<TcpStream>, stop: &AtomicBool) -> io::Result<Option<String>> {
    let mut head = Vec::new();
    // Kept across timeouts: read_until leaves the bytes it read before a
    // timeout in the buffer, and the next call continues the same line.
    let mut line = Vec::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match reader.read_until(b'\n', &mut line) {
            Ok(0) if head.is_empty() && line.is_empty() => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {
                let end = line == b"\r\n" || line == b"\n";
                head.append(&mut line);
                if head.len() > MAX_HEAD {
                    return Err(io::Error::other("request head too long"));
                }
                if end {
                    return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The value of header `name` (lower case) in a request or response head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// A UDP server answering every datagram with an [`Answer`] as JSON that
/// echoes the payload.
#[derive(Debug)]
pub struct UdpEchoServer {
    addr: SocketAddr,
    stats: Arc<ServerStats>,
    running: Running,
}

impl UdpEchoServer {
    /// Listens on `addr` inside `ns` (e.g. `0.0.0.0:5353`) as `identity`.
    pub fn start(ns: &Netns, addr: SocketAddr, identity: Identity) -> Result<Self> {
        let socket = ns
            .enter(|| UdpSocket::bind(addr))?
            .with_context(|| format!("binding UDP {addr} in {}", ns.name()))?;
        socket.set_read_timeout(Some(POLL))?;
        let server = Self {
            addr: socket.local_addr()?,
            stats: Arc::default(),
            running: Running::new(),
        };
        let stats = Arc::clone(&server.stats);
        let stop = Arc::clone(&server.running.stop);
        server
            .running
            .spawn(format!("udp-{}", identity.pod), move || {
                echo_loop(&socket, &identity, &stats, &stop);
            })?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }
}

impl Drop for UdpEchoServer {
    fn drop(&mut self) {
        self.running.stop();
    }
}

fn echo_loop(socket: &UdpSocket, identity: &Identity, stats: &ServerStats, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((len, peer)) => {
                stats.record(peer);
                let answer = Answer {
                    identity: identity.clone(),
                    peer,
                    payload: String::from_utf8_lossy(&buf[..len]).into_owned(),
                    received: 0,
                    pad: String::new(),
                };
                let sent = serde_json::to_vec(&answer)
                    .map_err(io::Error::other)
                    .and_then(|reply| socket.send_to(&reply, peer));
                if let Err(e) = sent {
                    eprintln!("{identity}: UDP reply to {peer}: {e}");
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                // E.g. ECONNREFUSED queued by an ICMP error; keep serving.
                eprintln!("{identity}: UDP receive: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookup_is_case_insensitive() {
        let head = "GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(header(head, "connection"), Some("Close"));
        assert_eq!(header(head, "content-length"), Some("3"));
        assert_eq!(header(head, "host"), Some("x"));
        assert_eq!(header(head, "missing"), None);
    }

    #[test]
    fn pad_parameter() {
        assert_eq!(pad_param("GET /?pad=1500 HTTP/1.1\r\n"), 1500);
        assert_eq!(pad_param("POST /x?a=1&pad=7 HTTP/1.1\r\n"), 7);
        assert_eq!(pad_param("GET / HTTP/1.1\r\n"), 0);
        assert_eq!(pad_param("GET /?pad=zz HTTP/1.1\r\n"), 0);
    }

    #[test]
    fn answer_round_trips() {
        let answer = Answer {
            identity: Identity::new("b-web1", "cluster-b"),
            peer: "10.101.1.100:40000".parse().unwrap(),
            payload: String::new(),
            received: 0,
            pad: String::new(),
        };
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(
            json,
            r#"{"pod":"b-web1","cluster":"cluster-b","peer":"10.101.1.100:40000"}"#
        );
        assert_eq!(serde_json::from_str::<Answer>(&json).unwrap(), answer);
    }
}
