//! The metrics server's bounds on what clients can hold, against real
//! sockets on 127.0.0.1 (no maps needed: without a dataplane `/metrics`
//! holds the agent's own metrics only): a request head must arrive in
//! time, idle connections are closed, and the connection cap closes the
//! oldest idle connection for a new one (refusing one while every
//! connection is busy is unit-tested in `metrics/server.rs`).

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use mcs_agent::metrics::{self, Limits, Metrics, MetricsServer};
use tokio::runtime::Runtime;

const HEADER_TIMEOUT: Duration = Duration::from_millis(400);
const IDLE_TIMEOUT: Duration = Duration::from_millis(800);

struct Server {
    _runtime: Runtime,
    server: MetricsServer,
    metrics: Arc<Metrics>,
}

fn start(max_connections: usize) -> Server {
    start_with(Limits {
        header_timeout: HEADER_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        max_connections,
    })
}

fn start_with(limits: Limits) -> Server {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let metrics = Arc::new(Metrics::default());
    let server = runtime
        .block_on(metrics::serve(
            "127.0.0.1:0".parse().expect("address"),
            Arc::clone(&metrics),
            "/nonexistent/mcs-bpffs".into(),
            limits,
        ))
        .expect("serve");
    Server {
        _runtime: runtime,
        server,
        metrics,
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
}

/// Sends one keep-alive GET and reads its response head and body.
fn get(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n").expect("write");
    let mut response = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        let read = stream.read(&mut buffer).expect("read");
        assert!(read > 0, "closed mid-response: {response:?}");
        response.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if body.len() >= length {
                return text.into_owned();
            }
        }
    }
}

/// How long until the server closes `stream` (reads until EOF or reset).
fn closed_after(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buffer = [0_u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return started.elapsed(),
            Err(error) => panic!("not closed: {error} after {:?}", started.elapsed()),
        }
    }
}

#[test]
fn health_and_metrics_answer() {
    let server = start(8);
    let mut stream = connect(server.server.local_addr());
    assert!(get(&mut stream, "/healthz").starts_with("HTTP/1.1 200"));
    let metrics = get(&mut stream, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("mcs_frontends 0"), "{metrics}");
    assert!(metrics.ends_with("# EOF\n") && metrics.matches("# EOF").count() == 1);
    assert!(get(&mut stream, "/readyz").starts_with("HTTP/1.1 503"));
    // Only the dataplane's part is cached: the agent's own metrics are
    // current at the next scrape, well within metrics::PAGE_MAX_AGE.
    server.metrics.frontends.set(7);
    let metrics = get(&mut stream, "/metrics");
    assert!(metrics.contains("mcs_frontends 7"), "{metrics}");
}

#[test]
fn a_client_trickling_its_request_head_is_cut_off() {
    let server = start(8);
    let mut stream = connect(server.server.local_addr());
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .expect("write");
    let started = Instant::now();
    // One header line every 100 ms: never a complete head.
    let mut cut = None;
    for i in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        if write!(stream, "X-Slow-{i}: a\r\n").is_err() {
            cut = Some(started.elapsed());
            break;
        }
        let mut probe = [0_u8; 512];
        stream
            .set_read_timeout(Some(Duration::from_millis(1)))
            .expect("timeout");
        match stream.read(&mut probe) {
            Ok(_) => {
                cut = Some(started.elapsed()); // a 408 or EOF: the server gave up
                break;
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                cut = Some(started.elapsed());
                break;
            }
        }
    }
    let cut = cut.expect("the server never cut the trickling client off");
    assert!(
        cut >= HEADER_TIMEOUT && cut < HEADER_TIMEOUT * 4,
        "cut off after {cut:?}, header timeout {HEADER_TIMEOUT:?}"
    );
}

/// Waiting for the next request on a kept-alive connection is waiting for a
/// request head: the header timeout closes it.
#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let server = start(8);
    let mut stream = connect(server.server.local_addr());
    assert!(get(&mut stream, "/healthz").starts_with("HTTP/1.1 200"));
    let idle = closed_after(&mut stream);
    assert!(
        idle >= HEADER_TIMEOUT.mul_f64(0.9) && idle < IDLE_TIMEOUT * 2,
        "closed after {idle:?} idle, header timeout {HEADER_TIMEOUT:?}"
    );
}

#[test]
fn when_full_the_oldest_idle_connection_makes_room() {
    const CAP: usize = 4;
    // Timeouts longer than the test: only the cap closes connections.
    let server = start_with(Limits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        max_connections: CAP,
    });
    let addr = server.server.local_addr();
    // Connections that never send anything.
    let mut idle: Vec<TcpStream> = (0..CAP).map(|_| connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(100)); // all accepted
    // A probe still gets in: it takes the oldest one's place.
    let mut probe = connect(addr);
    assert!(get(&mut probe, "/healthz").starts_with("HTTP/1.1 200"));
    let evicted = closed_after(&mut idle[0]);
    assert!(evicted < Duration::from_secs(1), "{evicted:?}");
    // The others are still open (a read would block, not see EOF).
    for stream in &mut idle[1..] {
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut buffer = [0_u8; 16];
        let error = stream.read(&mut buffer).expect_err("still open");
        assert!(matches!(
            error.kind(),
            ErrorKind::WouldBlock | ErrorKind::TimedOut
        ));
    }
}
