//! The backend server of the end-to-end part (`mcs-bench serve`): a small
//! single-threaded HTTP/1.1 server (keep-alive, or close after the answer
//! when the request says `Connection: close`, as nginx does — the server
//! closes first, so TIME_WAIT stays on the backend and client ports are
//! free again at once) and a UDP echo server. Runs inside the backend
//! namespace, pinned to one CPU by its parent.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
};

/// The answer to every request (keep-alive and closing variants).
pub const RESPONSE_KEEPALIVE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
pub const RESPONSE_CLOSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok";
const MAX_HEAD: usize = 8192;

/// Serves HTTP on each of `http` and UDP echo on each of `udp` (one socket
/// per address, so every answer leaves from the address the request went
/// to). IPv6 listeners are IPv6-only, so `[::]` can sit beside `0.0.0.0`.
pub fn serve(http: &[SocketAddr], udp: &[SocketAddr]) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let mut listeners = Vec::new();
        for addr in http {
            listeners.push(listen(*addr).with_context(|| format!("bind {addr}"))?);
        }
        for addr in udp {
            let socket = UdpSocket::bind(addr)
                .await
                .with_context(|| format!("bind {addr}"))?;
            tokio::spawn(udp_echo(socket));
        }
        println!("serving http on {http:?}, udp on {udp:?}");
        let mut accepting = Vec::new();
        for listener in listeners {
            accepting.push(tokio::spawn(accept(listener)));
        }
        for task in accepting {
            task.await.context("accept loop panicked")?;
        }
        Ok(())
    })
}

fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?; // as tokio's TcpListener::bind
    Ok(TcpListener::from_std(socket.into())?)
}

async fn accept(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream));
            }
            // EMFILE and friends: keep serving the others.
            Err(error) => eprintln!("accept: {error}"),
        }
    }
}

async fn udp_echo(socket: UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], peer).await;
        }
    }
}

/// Where the request head ends (after `\r\n\r\n`), if it has.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// Whether a request head asks to close the connection.
pub fn wants_close(head: &[u8]) -> bool {
    head.split(|b| *b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.len() >= 11
            && line[..11].eq_ignore_ascii_case(b"connection:")
            && line[11..].trim_ascii().eq_ignore_ascii_case(b"close")
    })
}

async fn connection(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; MAX_HEAD];
    let mut have = 0;
    loop {
        let Ok(n) = stream.read(&mut buf[have..]).await else {
            return;
        };
        if n == 0 {
            return;
        }
        have += n;
        while let Some(end) = head_end(&buf[..have]) {
            let close = wants_close(&buf[..end]);
            let answer = if close {
                RESPONSE_CLOSE
            } else {
                RESPONSE_KEEPALIVE
            };
            if stream.write_all(answer).await.is_err() || close {
                return; // dropping the stream closes it: server closes first
            }
            buf.copy_within(end..have, 0);
            have -= end;
        }
        if have == buf.len() {
            return; // head too long
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_heads() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nrest";
        let end = head_end(req).unwrap();
        assert_eq!(&req[end..], b"rest");
        assert!(wants_close(&req[..end]));
        assert!(!wants_close(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(wants_close(
            b"GET / HTTP/1.1\r\nconnection:  Close \r\n\r\n"
        ));
        assert!(head_end(b"GET / HTTP/1.1\r\n").is_none());
    }
}
