//! The clusterset DNS server against a real resolver client (`dig` from
//! Debian's dnsutils, installed by `cargo xtask setup`) over UDP and TCP,
//! plus malformed input on raw sockets. Needs no privileges and no BPF: the
//! server runs on 127.0.0.1 with a free port.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream, UdpSocket},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
    serialize::binary::{BinDecodable, BinEncodable},
};
use mcs_agent::{
    dns::{self, DnsConfig, DnsServer, RateLimitConfig},
    model::manifest,
    sources::SourceUpdate,
};
use mcs_tests::dns_load::{BenchSpec, udp_queries_per_second};
use tokio::{runtime::Runtime, sync::watch};

const TTL: u32 = 7;

const MANIFEST: &str = r#"
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: web, namespace: demo}
spec:
  type: ClusterSetIP
  ips: ["10.96.0.10", "fd00:96::10"]
  ports:
  - {name: http, protocol: TCP, port: 80}
  - {name: dns, protocol: UDP, port: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: cluster-a}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints: [{addresses: ["10.1.0.9"], hostname: web-0}]
---
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: db, namespace: demo}
spec:
  type: Headless
  ports: [{name: sql, protocol: TCP, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-a, namespace: demo, labels: {multicluster.kubernetes.io/service-name: db, multicluster.kubernetes.io/source-cluster: cluster-a}}
addressType: IPv4
ports: [{name: sql, protocol: TCP, port: 5432}]
endpoints:
- {addresses: ["10.1.0.1"], hostname: db-0}
- {addresses: ["10.1.0.2"], hostname: db-1, conditions: {ready: false}}
- {addresses: ["10.1.0.3"]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-b, namespace: demo, labels: {multicluster.kubernetes.io/service-name: db, multicluster.kubernetes.io/source-cluster: membership-b.us-east1}}
addressType: IPv4
ports: [{name: sql, protocol: TCP, port: 5432}]
endpoints:
- {addresses: ["10.2.0.1"], hostname: db-0}
"#;

fn update_of(yaml: &str) -> SourceUpdate {
    let (snapshot, rejections) = manifest::snapshot_from_yaml(yaml).expect("valid YAML");
    assert!(rejections.is_empty(), "{rejections:?}");
    SourceUpdate {
        snapshot: snapshot.into(),
        rejections,
        ..SourceUpdate::default()
    }
}

/// A DNS server on its own runtime, so the tests themselves can block on
/// `dig` and on std sockets.
struct TestServer {
    runtime: Runtime,
    server: Option<DnsServer>,
    updates: watch::Sender<Option<SourceUpdate>>,
    addr: SocketAddr,
}

impl TestServer {
    /// Rate limiting off: every test here queries from 127.0.0.1 as fast as
    /// it can (the limit has its own test).
    fn start(initial: Option<&str>) -> Self {
        Self::start_with(
            initial,
            DnsConfig {
                ttl: TTL,
                rate_limit: RateLimitConfig {
                    per_second: None,
                    ..RateLimitConfig::default()
                },
                ..DnsConfig::new("127.0.0.1:0".parse().expect("address"))
            },
        )
    }

    fn start_with(initial: Option<&str>, config: DnsConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (updates, receiver) = watch::channel(initial.map(update_of));
        let server = runtime
            .block_on(dns::serve(&config, receiver))
            .expect("DNS server starts");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let test = Self {
            runtime,
            server: Some(server),
            updates,
            addr,
        };
        if initial.is_some() {
            // What was published before the start is served from the first
            // query on (no SERVFAIL window).
            let first = test.dig("dns-version.clusterset.local", "TXT");
            assert_eq!(first.status, "NOERROR", "{}", first.raw);
        }
        test
    }

    fn publish(&self, yaml: &str) {
        self.updates.send_replace(Some(update_of(yaml)));
    }

    fn dig(&self, name: &str, record_type: &str) -> DigResult {
        dig(self.addr, name, record_type, Transport::Udp)
    }

    fn dig_tcp(&self, name: &str, record_type: &str) -> DigResult {
        dig(self.addr, name, record_type, Transport::Tcp)
    }

    /// Polls until `done` holds (rebuilds are asynchronous), at most 10 s.
    fn wait_for(
        &self,
        name: &str,
        record_type: &str,
        done: impl Fn(&DigResult) -> bool,
    ) -> DigResult {
        let start = Instant::now();
        loop {
            let result = self.dig(name, record_type);
            if done(&result) {
                return result;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name} {record_type} never reached the expected state; last:\n{}",
                result.raw
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self.runtime.block_on(server.shutdown());
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rr {
    name: String,
    ttl: u32,
    record_type: String,
    data: String,
}

#[derive(Debug)]
struct DigResult {
    status: String,
    flags: Vec<String>,
    answer_count: usize,
    authority_count: usize,
    answers: Vec<Rr>,
    authority: Vec<Rr>,
    raw: String,
}

impl DigResult {
    fn data(&self) -> Vec<String> {
        let mut data: Vec<String> = self.answers.iter().map(|rr| rr.data.clone()).collect();
        data.sort();
        data
    }

    fn authoritative(&self) -> bool {
        self.flags.iter().any(|flag| flag == "aa")
    }

    /// NXDOMAIN/NODATA per RFC 2308: no answer, the zone's SOA as authority.
    fn assert_negative(&self, status: &str) {
        assert_eq!(self.status, status, "{}", self.raw);
        assert_eq!(self.answer_count, 0, "{}", self.raw);
        assert_eq!(self.authority_count, 1, "{}", self.raw);
        assert_eq!(self.authority[0].record_type, "SOA", "{}", self.raw);
        assert_eq!(self.authority[0].name, "clusterset.local.", "{}", self.raw);
        assert_eq!(self.authority[0].ttl, TTL, "{}", self.raw);
        assert!(self.authoritative(), "{}", self.raw);
    }
}

/// Whether `dig` runs, checked once; every test that needs it fails with
/// the same explanation when it does not.
static DIG: OnceLock<Result<(), String>> = OnceLock::new();

fn require_dig() {
    let checked = DIG.get_or_init(|| match Command::new("dig").arg("-v").output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!(
            "`dig -v` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )),
        Err(error) => Err(format!(
            "cannot run `dig` ({error}): these tests need a real resolver client; install \
             Debian's dnsutils (`cargo xtask setup`, or `apt-get install dnsutils`)"
        )),
    });
    if let Err(message) = checked {
        panic!("{message}");
    }
}

fn dig(server: SocketAddr, name: &str, record_type: &str, transport: Transport) -> DigResult {
    dig_with(server, name, record_type, transport, &[])
}

fn dig_with(
    server: SocketAddr,
    name: &str,
    record_type: &str,
    transport: Transport,
    options: &[&str],
) -> DigResult {
    require_dig();
    let mut command = Command::new("dig");
    command
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args([
            "+time=2",
            "+tries=1",
            "+noall",
            "+comments",
            "+answer",
            "+authority",
        ]);
    if transport == Transport::Tcp {
        command.arg("+tcp");
    }
    command.args(options);
    let output = command.args([name, record_type]).output().expect("run dig");
    let raw = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "dig {name} {record_type} failed ({}):\n{raw}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    parse_dig(raw)
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    let rest = line[start..].trim_start();
    let end = rest.find([',', ';', ' ']).unwrap_or(rest.len());
    Some(&rest[..end])
}

fn parse_dig(raw: String) -> DigResult {
    let mut result = DigResult {
        status: String::new(),
        flags: Vec::new(),
        answer_count: usize::MAX,
        authority_count: usize::MAX,
        answers: Vec::new(),
        authority: Vec::new(),
        raw: String::new(),
    };
    let mut section = "";
    for line in raw.lines() {
        if line.starts_with(";; ->>HEADER<<-") {
            result.status = field(line, "status:").unwrap_or_default().to_owned();
        } else if let Some(rest) = line.strip_prefix(";; flags:") {
            let flags = rest.split(';').next().unwrap_or_default();
            result.flags = flags.split_whitespace().map(str::to_owned).collect();
            let count = |key| field(line, key).and_then(|n| n.parse().ok());
            result.answer_count = count("ANSWER:").unwrap_or(usize::MAX);
            result.authority_count = count("AUTHORITY:").unwrap_or(usize::MAX);
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(';') || line.trim().is_empty() {
            continue;
        } else {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [name, ttl, _class, record_type, data @ ..] = parts.as_slice() else {
                panic!("unexpected dig line {line:?} in:\n{raw}");
            };
            let rr = Rr {
                name: (*name).to_owned(),
                ttl: ttl.parse().expect("TTL"),
                record_type: (*record_type).to_owned(),
                data: data.join(" "),
            };
            match section {
                "answer" => result.answers.push(rr),
                "authority" => result.authority.push(rr),
                _ => panic!("record outside a section: {line:?}"),
            }
        }
    }
    assert!(!result.status.is_empty(), "no header in dig output:\n{raw}");
    result.raw = raw;
    result
}

fn assert_answer(result: &DigResult, expected: &[&str]) {
    assert_eq!(result.status, "NOERROR", "{}", result.raw);
    assert!(result.authoritative(), "{}", result.raw);
    assert_eq!(result.data(), expected, "{}", result.raw);
    assert_eq!(result.answer_count, expected.len(), "{}", result.raw);
    assert!(
        result.answers.iter().all(|rr| rr.ttl == TTL),
        "{}",
        result.raw
    );
}

#[test]
fn every_record_type_over_udp_and_tcp() {
    let server = TestServer::start(Some(MANIFEST));
    for transport in [Transport::Udp, Transport::Tcp] {
        let q = |name: &str, record_type: &str| dig(server.addr, name, record_type, transport);
        // ClusterSetIP: A/AAAA → the VIPs; SRV per named port.
        assert_answer(&q("web.demo.svc.clusterset.local", "A"), &["10.96.0.10"]);
        assert_answer(
            &q("web.demo.svc.clusterset.local", "AAAA"),
            &["fd00:96::10"],
        );
        assert_answer(
            &q("_http._tcp.web.demo.svc.clusterset.local", "SRV"),
            &["0 100 80 web.demo.svc.clusterset.local."],
        );
        assert_answer(
            &q("_dns._udp.web.demo.svc.clusterset.local", "SRV"),
            &["0 100 53 web.demo.svc.clusterset.local."],
        );
        // SRV at the service name, one per port (what the mcs-api
        // conformance suite asks with `nslookup -type=SRV`).
        assert_answer(
            &q("web.demo.svc.clusterset.local", "SRV"),
            &[
                "0 100 53 web.demo.svc.clusterset.local.",
                "0 100 80 web.demo.svc.clusterset.local.",
            ],
        );
        // The schema version.
        assert_answer(&q("dns-version.clusterset.local", "TXT"), &["\"1.0.0\""]);
        // The apex SOA.
        let soa = q("clusterset.local", "SOA");
        assert_eq!(soa.answer_count, 1, "{}", soa.raw);
        assert!(
            soa.answers[0]
                .data
                .starts_with("ns.dns.clusterset.local. hostmaster")
        );
        // Headless: ready addresses of both clusters, per-endpoint names
        // (hostname, or the dashed address), SRV per endpoint.
        assert_answer(
            &q("db.demo.svc.clusterset.local", "A"),
            &["10.1.0.1", "10.1.0.3", "10.2.0.1"],
        );
        assert_answer(
            &q("db-0.cluster-a.db.demo.svc.clusterset.local", "A"),
            &["10.1.0.1"],
        );
        assert_answer(
            &q(
                "db-0.membership-b.us-east1.db.demo.svc.clusterset.local",
                "A",
            ),
            &["10.2.0.1"],
        );
        assert_answer(
            &q("10-1-0-3.cluster-a.db.demo.svc.clusterset.local", "A"),
            &["10.1.0.3"],
        );
        assert_answer(
            &q("_sql._tcp.db.demo.svc.clusterset.local", "SRV"),
            &[
                "0 100 5432 10-1-0-3.cluster-a.db.demo.svc.clusterset.local.",
                "0 100 5432 db-0.cluster-a.db.demo.svc.clusterset.local.",
                "0 100 5432 db-0.membership-b.us-east1.db.demo.svc.clusterset.local.",
            ],
        );
        // Names are case-insensitive.
        assert_answer(&q("WEB.Demo.svc.ClusterSet.Local", "A"), &["10.96.0.10"]);
    }
}

#[test]
fn nxdomain_nodata_and_refused() {
    let server = TestServer::start(Some(MANIFEST));
    for transport in [Transport::Udp, Transport::Tcp] {
        let q = |name: &str, record_type: &str| dig(server.addr, name, record_type, transport);
        q("nope.demo.svc.clusterset.local", "A").assert_negative("NXDOMAIN");
        q("_https._tcp.web.demo.svc.clusterset.local", "SRV").assert_negative("NXDOMAIN");
        // A not-ready endpoint has no name; a ClusterSetIP service has no
        // cluster-specific names at all.
        q("db-1.cluster-a.db.demo.svc.clusterset.local", "A").assert_negative("NXDOMAIN");
        q("cluster-a.web.demo.svc.clusterset.local", "A").assert_negative("NXDOMAIN");
        // Existing names without the asked type: NODATA.
        q("web.demo.svc.clusterset.local", "MX").assert_negative("NOERROR");
        q("web.demo.svc.clusterset.local", "TXT").assert_negative("NOERROR");
        q("dns-version.clusterset.local", "A").assert_negative("NOERROR");
        // Empty non-terminals exist (RFC 8020), with no records: the
        // forbidden `<clusterid>.<svc>` name of a headless service is one.
        q("demo.svc.clusterset.local", "A").assert_negative("NOERROR");
        q("cluster-a.db.demo.svc.clusterset.local", "A").assert_negative("NOERROR");
        q("cluster-a.db.demo.svc.clusterset.local", "ANY").assert_negative("NOERROR");
        // Not our zone.
        for name in ["example.com", "web.demo.svc.cluster.local", "local", "."] {
            let refused = q(name, "A");
            assert_eq!(refused.status, "REFUSED", "{}", refused.raw);
            assert_eq!(refused.answer_count, 0, "{}", refused.raw);
            assert!(!refused.authoritative(), "{}", refused.raw);
        }
        // No zone transfers.
        assert_eq!(q("clusterset.local", "AXFR").status, "REFUSED");
        // EDNS versions other than 0 (RFC 6891).
        let edns1 = dig_with(
            server.addr,
            "web.demo.svc.clusterset.local",
            "A",
            transport,
            &["+edns=1", "+noednsnegotiation"],
        );
        assert_eq!(edns1.status, "BADVERS", "{}", edns1.raw);
        // No EDNS at all is fine too.
        let plain = dig_with(
            server.addr,
            "web.demo.svc.clusterset.local",
            "A",
            transport,
            &["+noedns"],
        );
        assert_answer(&plain, &["10.96.0.10"]);
    }
}

#[test]
fn answers_follow_source_updates_without_restart() {
    let server = TestServer::start(None);
    // Nothing loaded yet: SERVFAIL, not a cacheable negative answer.
    let early = server.dig("web.demo.svc.clusterset.local", "A");
    assert_eq!(early.status, "SERVFAIL", "{}", early.raw);

    server.publish(MANIFEST);
    server.wait_for("web.demo.svc.clusterset.local", "A", |r| {
        r.data() == ["10.96.0.10"]
    });
    let first_serial = soa_serial(&server.dig("clusterset.local", "SOA"));

    // The VIP changes, a service appears, the headless one loses a cluster's
    // endpoint and gains one.
    let changed = MANIFEST
        .replace("10.96.0.10", "10.96.0.20")
        .replace("10.2.0.1", "10.2.0.7")
        + r#"
---
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: new, namespace: demo}
spec: {ips: ["10.96.0.30"], ports: [{name: http, protocol: TCP, port: 80}]}
"#;
    server.publish(&changed);
    server.wait_for("web.demo.svc.clusterset.local", "A", |r| {
        r.data() == ["10.96.0.20"]
    });
    assert_answer(
        &server.dig_tcp("web.demo.svc.clusterset.local", "A"),
        &["10.96.0.20"],
    );
    assert_answer(
        &server.dig("new.demo.svc.clusterset.local", "A"),
        &["10.96.0.30"],
    );
    assert_answer(
        &server.dig("db.demo.svc.clusterset.local", "A"),
        &["10.1.0.1", "10.1.0.3", "10.2.0.7"],
    );
    assert_answer(
        &server.dig(
            "db-0.membership-b.us-east1.db.demo.svc.clusterset.local",
            "A",
        ),
        &["10.2.0.7"],
    );
    assert!(soa_serial(&server.dig("clusterset.local", "SOA")) > first_serial);

    // Everything removed: the names go away, the zone stays.
    server.publish("");
    server.wait_for("web.demo.svc.clusterset.local", "A", |r| {
        r.status == "NXDOMAIN"
    });
    server
        .dig("db.demo.svc.clusterset.local", "A")
        .assert_negative("NXDOMAIN");
    assert_answer(
        &server.dig("dns-version.clusterset.local", "TXT"),
        &["\"1.0.0\""],
    );
}

fn soa_serial(result: &DigResult) -> u64 {
    let data = &result.answers.first().expect("SOA answer").data;
    data.split_whitespace()
        .nth(2)
        .and_then(|serial| serial.parse().ok())
        .expect("SOA serial")
}

fn query_bytes(id: u16, name: &str, record_type: RecordType) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        record_type,
    ));
    message.to_bytes().expect("encode")
}

/// Deterministic pseudo-random bytes (xorshift), so a failure reproduces.
fn noise(seed: &mut u64, length: usize) -> Vec<u8> {
    (0..length)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 24) as u8
        })
        .collect()
}

/// Sends `packet` and returns the response, if one comes within 300 ms.
fn udp_exchange(socket: &UdpSocket, packet: &[u8]) -> Option<Message> {
    socket.send(packet).expect("send");
    let mut buffer = [0_u8; 4096];
    match socket.recv(&mut buffer) {
        Ok(length) => Some(Message::from_bytes(&buffer[..length]).expect("well-formed response")),
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(error) => panic!("recv: {error}"),
    }
}

#[test]
fn malformed_queries_get_errors_or_silence_and_the_server_keeps_answering() {
    let server = TestServer::start(Some(MANIFEST));
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.connect(server.addr).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");

    // Random garbage of many lengths (including empty and sub-header).
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    for length in (0..64).chain([100, 300, 511, 512, 513, 1500, 4000]) {
        let packet = noise(&mut seed, length);
        if let Some(response) = udp_exchange(&socket, &packet) {
            // Anything that looks like a response or a query is answered
            // with an error or (for a well-formed random question) an answer.
            assert_eq!(response.metadata.message_type, MessageType::Response);
        }
    }
    // Every truncation of a valid query.
    let valid = query_bytes(7, "web.demo.svc.clusterset.local.", RecordType::A);
    for cut in 0..valid.len() {
        let response = udp_exchange(&socket, &valid[..cut]);
        if cut < 12 {
            assert!(
                response.is_none(),
                "a {cut}-byte packet has no header to answer"
            );
        } else {
            let response = response.expect("FORMERR for a truncated query");
            assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
            assert_eq!(response.metadata.id, 7);
        }
    }
    // A header promising two questions but carrying one.
    let mut two = valid.clone();
    two[5] = 2;
    let response = udp_exchange(&socket, &two).expect("response");
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
    // No question at all.
    let mut none = valid[..12].to_vec();
    none[5] = 0;
    let response = udp_exchange(&socket, &none).expect("response");
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
    // A response sent as a query is dropped (no reflection).
    let mut reflected = valid.clone();
    reflected[2] |= 0x80;
    assert!(udp_exchange(&socket, &reflected).is_none());
    // Opcodes other than QUERY: NOTIMP.
    let mut status = Message::query();
    status.metadata.id = 9;
    status.metadata.op_code = OpCode::Status;
    status.add_query(Query::query(
        Name::from_ascii("web.demo.svc.clusterset.local.").expect("name"),
        RecordType::A,
    ));
    let response = udp_exchange(&socket, &status.to_bytes().expect("encode")).expect("response");
    assert_eq!(response.metadata.response_code, ResponseCode::NotImp);
    // And a valid query on the same socket is still answered.
    let response = udp_exchange(&socket, &valid).expect("answer");
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert_eq!(response.answers.len(), 1);

    // TCP: garbage, a length prefix promising more than is sent, a lone
    // length byte, an oversized prefix, a zero-length message.
    let tcp_garbage: Vec<Vec<u8>> = vec![
        noise(&mut seed, 300),
        [&[0x01, 0x00][..], &noise(&mut seed, 20)].concat(),
        vec![0x00],
        [&[0xff, 0xff][..], &noise(&mut seed, 1000)].concat(),
        vec![0x00, 0x00],
        [&[0x00, 0x05][..], &valid[..5]].concat(),
    ];
    for garbage in tcp_garbage {
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        stream.write_all(&garbage).expect("write");
        let _ = stream.shutdown(Shutdown::Write);
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
    // A valid query sent in two pieces over TCP is answered.
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let length = u16::try_from(valid.len()).expect("short query");
    let framed = [&length.to_be_bytes()[..], &valid].concat();
    stream.write_all(&framed[..9]).expect("write");
    std::thread::sleep(Duration::from_millis(50));
    stream.write_all(&framed[9..]).expect("write");
    let mut prefix = [0_u8; 2];
    stream.read_exact(&mut prefix).expect("response length");
    let mut body = vec![0_u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut body).expect("response");
    let response = Message::from_bytes(&body).expect("response");
    assert_eq!(response.answers.len(), 1);

    // dig still gets answers on both transports.
    assert_answer(
        &server.dig("web.demo.svc.clusterset.local", "A"),
        &["10.96.0.10"],
    );
    assert_answer(
        &server.dig_tcp("web.demo.svc.clusterset.local", "A"),
        &["10.96.0.10"],
    );
}

#[test]
fn large_answers_are_truncated_over_udp_and_complete_over_tcp() {
    // 300 ready endpoints: far more than 512 bytes of A records.
    let mut yaml = String::from(
        r#"
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: big, namespace: demo}
spec: {type: Headless}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: big-a, namespace: demo, labels: {multicluster.kubernetes.io/service-name: big, multicluster.kubernetes.io/source-cluster: a}}
addressType: IPv4
endpoints:
"#,
    );
    for i in 0..300 {
        yaml.push_str(&format!(
            "- {{addresses: [\"10.5.{}.{}\"]}}\n",
            i / 200,
            i % 200 + 1
        ));
    }
    let server = TestServer::start(Some(&yaml));
    let name = "big.demo.svc.clusterset.local.";
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.connect(server.addr).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let response = udp_exchange(&socket, &query_bytes(1, name, RecordType::A)).expect("response");
    assert!(response.metadata.truncation, "TC must be set");
    assert!(response.answers.len() < 300);
    // dig retries over TCP on TC and gets everything.
    let full = server.dig(name, "A");
    assert_eq!(full.answer_count, 300, "{}", full.raw);
}

fn bench(server: &TestServer, queries: usize) -> f64 {
    let spec = BenchSpec {
        server: server.addr,
        name: "web.demo.svc.clusterset.local.".into(),
        record_type: RecordType::A,
        queries,
        window: 64,
        deadline: Duration::from_secs(60),
    };
    let result = server
        .runtime
        .block_on(udp_queries_per_second(&spec))
        .expect("bench runs");
    assert_eq!(result.sent, queries);
    assert_eq!(result.answered + result.lost, queries, "{result:?}");
    assert!(result.lost * 100 <= queries, "too many lost: {result:?}");
    result.queries_per_second()
}

#[test]
fn bench_helper_counts_answers() {
    let server = TestServer::start(Some(MANIFEST));
    assert!(bench(&server, 500) > 0.0);
}

/// UDP answers over the rate go out as nothing or, every `slip`-th, as an
/// empty truncated answer; TCP is never limited, so `dig` (which retries a
/// truncated answer over TCP) still gets its answer.
#[test]
fn udp_answers_are_rate_limited_per_client_network_and_slip_to_tcp() {
    const RATE: u32 = 10;
    let server = TestServer::start_with(
        Some(MANIFEST),
        DnsConfig {
            ttl: TTL,
            rate_limit: RateLimitConfig {
                per_second: std::num::NonZeroU32::new(RATE),
                slip: 2,
                ..RateLimitConfig::default()
            },
            ..DnsConfig::new("127.0.0.1:0".parse().expect("address"))
        },
    );
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.connect(server.addr).expect("connect");
    // A dropped answer is waited for 50 ms (the server answers in well under).
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let query = query_bytes(3, "web.demo.svc.clusterset.local.", RecordType::A);
    let (mut answered, mut truncated, mut silent) = (0, 0, 0);
    let started = Instant::now();
    for _ in 0..4 * RATE {
        match udp_exchange(&socket, &query) {
            Some(response) if response.metadata.truncation => {
                assert!(response.answers.is_empty(), "{response:?}");
                truncated += 1;
            }
            Some(response) => {
                assert_eq!(response.answers.len(), 1, "{response:?}");
                answered += 1;
            }
            None => silent += 1,
        }
    }
    // The burst, plus what refilled meanwhile (RATE per second).
    let refilled = (started.elapsed().as_secs_f64() * f64::from(RATE)).ceil() as u32 + 1;
    let limited = truncated + silent;
    println!(
        "dns_rate_limit: {} queries in {:?} at {RATE}/s: {answered} answered, {truncated} truncated, {silent} dropped",
        4 * RATE,
        started.elapsed()
    );
    assert!(
        answered >= RATE && answered <= RATE + refilled,
        "answered {answered}, truncated {truncated}, silent {silent} in {:?}",
        started.elapsed()
    );
    assert!(limited >= RATE, "answered {answered}, limited {limited}");
    assert!(
        truncated * 2 >= limited - 1 && truncated * 2 <= limited + 1,
        "every second limited answer slips: truncated {truncated} of {limited}"
    );
    assert!(server.server.as_ref().expect("running").rate_limited() >= u64::from(limited));
    // TCP is not limited, and dig falls back to it on a truncated answer.
    for _ in 0..3 {
        assert_answer(
            &server.dig_tcp("web.demo.svc.clusterset.local", "A"),
            &["10.96.0.10"],
        );
    }
    // A second later the network's bucket is full again.
    std::thread::sleep(Duration::from_millis(1100));
    assert_answer(
        &server.dig("web.demo.svc.clusterset.local", "A"),
        &["10.96.0.10"],
    );
}

/// ANY gets one RRset (RFC 8482), not every record of the name.
#[test]
fn any_gets_a_minimal_answer() {
    let server = TestServer::start(Some(MANIFEST));
    let any = server.dig("web.demo.svc.clusterset.local", "ANY");
    assert_eq!(any.status, "NOERROR", "{}", any.raw);
    let types: std::collections::BTreeSet<&str> = any
        .answers
        .iter()
        .map(|rr| rr.record_type.as_str())
        .collect();
    assert_eq!(
        types,
        std::collections::BTreeSet::from(["A"]),
        "{}",
        any.raw
    );
    assert_answer(&any, &["10.96.0.10"]);
    // The name has SRV and AAAA records too: ANY did not return them.
    assert!(
        !server
            .dig("web.demo.svc.clusterset.local", "SRV")
            .answers
            .is_empty()
    );
}

/// With `--clusterset-ip-cidrs`, a ClusterSetIP outside them is not
/// answered (the dataplane does not serve it either).
#[test]
fn clusterset_ips_outside_the_allowed_ranges_are_not_answered() {
    let server = TestServer::start_with(
        Some(MANIFEST),
        DnsConfig {
            ttl: TTL,
            clusterset_ip_cidrs: "10.96.0.0/16".parse().expect("ranges"),
            ..DnsConfig::new("127.0.0.1:0".parse().expect("address"))
        },
    );
    assert_answer(
        &server.dig("web.demo.svc.clusterset.local", "A"),
        &["10.96.0.10"],
    );
    // fd00:96::10 is outside: no AAAA.
    server
        .dig("web.demo.svc.clusterset.local", "AAAA")
        .assert_negative("NOERROR");
}
