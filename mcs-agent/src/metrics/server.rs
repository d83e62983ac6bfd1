//! The HTTP server of the metrics and health endpoints, with bounds on what
//! a client can hold (hyper, one task per connection):
//!
//! * a request head must arrive within [`Limits::header_timeout`] (a client
//!   trickling its headers is cut off, and so is a kept-alive connection
//!   waiting that long for its next request) and fit in [`MAX_HEAD_BYTES`];
//! * a connection with no request being handled for
//!   [`Limits::idle_timeout`] is closed, also while its response is still
//!   being written (a client that stops reading);
//! * at most [`Limits::max_connections`] are open: a new one closes the
//!   oldest connection that has no request being handled (one trickling
//!   its head, or idle), or is refused when every one is busy. A kubelet
//!   probe, which sends its request at once, is the newest connection
//!   until it is answered: clients holding connections cannot lock it out.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Body};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

/// Largest request head (hyper's minimum buffer): the endpoints take no
/// body and no meaningful headers.
pub const MAX_HEAD_BYTES: usize = 8192;

/// Bounds on what clients can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_connections: 128,
        }
    }
}

/// A running server; dropping it stops accepting and closes connections.
pub struct MetricsServer {
    local_addr: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl MetricsServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

pub(super) async fn serve(
    addr: SocketAddr,
    app: Router,
    limits: Limits,
) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    info!(
        addr = %local_addr,
        header_timeout_s = limits.header_timeout.as_secs_f64(),
        idle_timeout_s = limits.idle_timeout.as_secs_f64(),
        max_connections = limits.max_connections,
        "metrics and health endpoints listening"
    );
    let acceptor = tokio::spawn(accept(listener, app, limits));
    Ok(MetricsServer {
        local_addr,
        acceptor,
    })
}

/// One open connection, as the acceptor sees it.
struct Open {
    activity: Arc<Activity>,
    close: oneshot::Sender<()>,
}

/// The open connections, oldest first (ids grow).
#[derive(Default)]
struct Connections {
    open: Mutex<BTreeMap<u64, Open>>,
}

impl Connections {
    /// Registers a new connection, first closing the oldest one without a
    /// request being handled when full; `None` when every one is busy.
    fn admit(&self, id: u64, limits: &Limits) -> Option<(Arc<Activity>, oneshot::Receiver<()>)> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if open.len() >= limits.max_connections {
            let evictable = open
                .iter()
                .find(|(_, c)| c.activity.in_flight() == 0)
                .map(|(id, _)| *id)?;
            if let Some(oldest) = open.remove(&evictable) {
                let _ = oldest.close.send(());
            }
        }
        let activity = Arc::new(Activity::new());
        let (close, closed) = oneshot::channel();
        open.insert(
            id,
            Open {
                activity: Arc::clone(&activity),
                close,
            },
        );
        Some((activity, closed))
    }

    fn remove(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&id);
    }
}

/// Requests in progress on a connection and when the last one ended.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` at which the connection went idle.
    idle_since_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(ms, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the connection times out if nothing happens meanwhile.
    fn idle_deadline(&self, idle_timeout: Duration) -> tokio::time::Instant {
        let idle_since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        tokio::time::Instant::from_std(self.started + idle_since + idle_timeout)
    }
}

async fn accept(listener: TcpListener, app: Router, limits: Limits) {
    let connections = Arc::new(Connections::default());
    let mut next_id: u64 = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait, do not spin.
                warn!(%error, "metrics server cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        let Some((activity, closed)) = connections.admit(id, &limits) else {
            debug!(%peer, "metrics connection refused: every connection is busy");
            drop(stream);
            continue;
        };
        let connections = Arc::clone(&connections);
        let app = app.clone();
        tokio::spawn(async move {
            serve_connection(stream, app, limits, activity, closed).await;
            connections.remove(id);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    activity: Arc<Activity>,
    mut closed: oneshot::Receiver<()>,
) {
    let counted = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let app = app.clone();
        let activity = Arc::clone(&counted);
        activity.begin();
        async move {
            let response = app
                .oneshot(request.map(Body::new))
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            activity.end();
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    loop {
        // While a request is handled, look again an idle timeout later.
        let idle = if activity.in_flight() > 0 {
            tokio::time::Instant::now() + limits.idle_timeout
        } else {
            activity.idle_deadline(limits.idle_timeout)
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    debug!(%error, "metrics connection ended");
                }
                return;
            }
            _ = &mut closed => return, // room for a newer connection
            () = tokio::time::sleep_until(idle) => {
                if activity.in_flight() == 0
                    && activity.idle_deadline(limits.idle_timeout) <= tokio::time::Instant::now()
                {
                    return; // idle: dropping the connection closes it
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            ..Limits::default()
        }
    }

    #[test]
    fn a_full_table_closes_the_oldest_connection_not_being_served() {
        let connections = Connections::default();
        let mut admitted = Vec::new();
        for id in 1..=3 {
            admitted.push(connections.admit(id, &limits(3)).expect("room"));
        }
        // The oldest is being served: the second oldest makes room.
        admitted[0].0.begin();
        let (_, mut fourth_closed) = connections.admit(4, &limits(3)).expect("evicts");
        assert!(admitted[0].1.try_recv().is_err(), "busy, kept");
        assert!(admitted[1].1.try_recv().is_ok(), "oldest idle, closed");
        assert!(admitted[2].1.try_recv().is_err(), "newer, kept");
        assert!(fourth_closed.try_recv().is_err());
        // Every connection busy: the new one is refused.
        admitted[2].0.begin();
        let four = connections
            .open
            .lock()
            .expect("lock")
            .get(&4)
            .map(|open| Arc::clone(&open.activity))
            .expect("admitted");
        four.begin();
        assert!(connections.admit(5, &limits(3)).is_none());
        // One finishes its request: room again, and it is the one closed.
        four.end();
        assert!(connections.admit(6, &limits(3)).is_some());
        assert!(fourth_closed.try_recv().is_ok());
    }
}
