//! The accept loop: HTTP/1.1 connections served by hyper with the timeouts a slow or greedy
//! client must not outlast (request head, body reads, idle keep-alive, WebSocket
//! handshake), the peer address for handlers (`ConnectInfo`), a back-off when the process
//! runs out of file descriptors, and a graceful drain on shutdown. Open connections are
//! counted (`carapace_connections`), so that a leak of connection tasks shows in `/metrics`;
//! a connection whose client stopped reading can be made to end with a reset (`ResetOnDrop`).

use crate::metrics::Metrics;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// How long a connection may keep the server waiting on it.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the moment the server waits for a request head until it has all of it.
    pub header: Duration,
    /// Longest silence while a request is in progress (its body being read).
    pub body: Duration,
    /// Longest silence between two requests on a kept-alive connection.
    pub idle: Duration,
    /// From the TCP accept to a completed WebSocket upgrade.
    pub ws_handshake: Duration,
}

/// Facts about the connection a request came on, as a request extension.
#[derive(Clone)]
pub struct Conn {
    /// When the TCP connection was accepted.
    pub accepted: Instant,
    phase: Arc<AtomicU8>,
    reset: ResetOnDrop,
}

/// Asks for the connection to end with a reset (SO_LINGER 0) rather than an orderly close
/// once its socket is dropped. For a client that stopped reading: with unsent data queued
/// for it, an orderly close leaves the kernel an orphan socket that keeps that data (up to
/// the send buffer, 1.5 MiB measured) while it probes the zero window, for minutes; a reset
/// frees it at once. Anything the client could still have read is lost, which is why only
/// a session whose close grace ran out with data still unsent asks for it.
#[derive(Clone)]
pub struct ResetOnDrop {
    armed: Arc<AtomicBool>,
    /// The connection's socket, for the size of its send queue. Valid while the connection's
    /// I/O lives, which every holder of this handle outlives only after it stopped using it.
    fd: std::os::fd::RawFd,
}

impl ResetOnDrop {
    fn new(tcp: &TcpStream) -> ResetOnDrop {
        use std::os::fd::AsRawFd;
        ResetOnDrop {
            armed: Arc::new(AtomicBool::new(false)),
            fd: tcp.as_raw_fd(),
        }
    }

    pub fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }

    /// Bytes the kernel still holds for the client (not sent, or sent and not acknowledged);
    /// `None` where that cannot be read. A connection the peer reset holds nothing more.
    pub fn unsent(&self) -> Option<u32> {
        // SAFETY: tcp_info is plain integers, for which all-zero bytes are a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: TCP_INFO writes at most `len` bytes into `info`, a live local of that size.
        let r = unsafe {
            libc::getsockopt(
                self.fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        // TCP_CLOSE: reset by the peer (or fully closed); its counters no longer mean data.
        if r == 0 && info.tcpi_state == 7 {
            return Some(0);
        }
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ on a TCP socket) writes one int through the pointer,
        // which points to a live local; `fd` is the connection's open socket (see above).
        let r = unsafe { libc::ioctl(self.fd, libc::TIOCOUTQ, &mut n) };
        (r == 0).then(|| n.max(0) as u32)
    }
}

const PHASE_IDLE: u8 = 0;
const PHASE_REQUEST: u8 = 1;
/// Upgraded to a WebSocket: the session has its own liveness rules.
const PHASE_UPGRADED: u8 = 2;

impl Conn {
    /// Called once the connection is a WebSocket: the HTTP read timeouts no longer apply.
    pub fn upgraded(&self) {
        self.phase.store(PHASE_UPGRADED, Ordering::Relaxed);
    }

    /// The handle that turns this connection's close into a reset.
    pub fn reset_on_drop(&self) -> ResetOnDrop {
        self.reset.clone()
    }
}

/// Accepts and serves until `draining` turns true, then asks every HTTP connection to
/// finish its request and close, and returns once they have (upgraded connections are the
/// sessions' to close).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: Timeouts,
    mut draining: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    // Each connection task holds a sender; `recv` returns None once all are gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = async { let _ = draining.wait_for(|d| *d).await; } => break,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => {
                backoff.accepted();
                x
            }
            Err(e) => {
                if backoff.wait(&e).await {
                    metrics.accepts_exhausted.inc();
                }
                continue;
            }
        };
        // Events are small frames written as they happen: without TCP_NODELAY, Nagle holds
        // a write back until the client's delayed ACK (tens of ms) whenever one is in flight.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let open = Open::new(metrics.clone());
        tokio::spawn(connection(
            tcp,
            peer,
            app.clone(),
            timeouts,
            draining.clone(),
            alive_tx.clone(),
            open,
        ));
    }
    // Closed now, not when the last connection ends: a connection attempt is refused at
    // once (a balancer retries it on another replica) instead of waiting in the backlog.
    drop(listener);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    t: Timeouts,
    mut draining: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
    open: Open,
) {
    let conn = Conn {
        accepted: Instant::now(),
        phase: Arc::new(AtomicU8::new(PHASE_IDLE)),
        reset: ResetOnDrop::new(&tcp),
    };
    let io = TimedIo::new(tcp, conn.phase.clone(), t, open, conn.reset.clone());
    let meta = conn.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(meta.clone());
        let _ = meta.phase.compare_exchange(
            PHASE_IDLE,
            PHASE_REQUEST,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let app = app.clone();
        let phase = meta.phase.clone();
        async move {
            let resp = app.oneshot(req.map(axum::body::Body::new)).await;
            let _ = phase.compare_exchange(
                PHASE_REQUEST,
                PHASE_IDLE,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            resp
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(t.header)
        .keep_alive(true);
    let served = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(served);
    let result = tokio::select! {
        r = served.as_mut() => r,
        _ = async { let _ = draining.wait_for(|d| *d).await; } => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "connection ended");
    }
}

/// One open TCP connection in `carapace_connections`, from its accept until its socket is
/// dropped: it lives in the connection's I/O, which an upgrade hands to the session.
struct Open(Arc<Metrics>);

impl Open {
    fn new(metrics: Arc<Metrics>) -> Open {
        metrics.connections.inc();
        Open(metrics)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// How long after its last refused accept an episode of exhaustion counts as over. A hub at
/// its descriptor limit accepts one connection whenever another closes and is refused the
/// next: without this, every such turn would log a new episode, one warning per connection.
const EPISODE_QUIET: Duration = Duration::from_secs(2);

/// Sleeps after a failed accept. Running out of descriptors (EMFILE, ENFILE) or memory is an
/// episode, logged once at warn when it begins and once at info when an accept succeeds
/// `EPISODE_QUIET` after the last refusal (with how many accepts failed and for how long);
/// meanwhile accepts are retried with a growing pause (10 ms, doubling, at most 1 s), so
/// that sessions already open keep working while others close and the loop does not spin.
/// Other accept errors (a peer that reset before its accept) are retried at once.
#[derive(Default)]
struct Backoff {
    pause: Option<Duration>,
    episode: Option<Episode>,
}

struct Episode {
    began: Instant,
    last_refusal: Instant,
    refused: u64,
}

impl Backoff {
    fn accepted(&mut self) {
        // The next refusal starts again from the shortest pause: descriptors came back.
        self.pause = None;
        let Some(ep) = &self.episode else {
            return;
        };
        if ep.last_refusal.elapsed() >= EPISODE_QUIET {
            tracing::info!(
                refused = ep.refused,
                for_ms = ep.last_refusal.duration_since(ep.began).as_millis() as u64,
                "accepting connections again"
            );
            self.episode = None;
        }
    }

    /// Waits as the error calls for; true when it was an exhaustion (counted in metrics).
    async fn wait(&mut self, e: &io::Error) -> bool {
        // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 (Linux numbering).
        let exhausted = matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12));
        if !exhausted {
            tracing::debug!(error = %e, "accept failed");
            return false;
        }
        let now = Instant::now();
        match &mut self.episode {
            Some(ep) => {
                ep.refused += 1;
                ep.last_refusal = now;
            }
            None => {
                tracing::warn!(
                    error = %e,
                    "out of file descriptors: pausing accepts (open sessions go on)"
                );
                self.episode = Some(Episode {
                    began: now,
                    last_refusal: now,
                    refused: 1,
                });
            }
        }
        let pause = match self.pause {
            None => Duration::from_millis(10),
            Some(p) => (p * 2).min(Duration::from_secs(1)),
        };
        self.pause = Some(pause);
        tokio::time::sleep(pause).await;
        true
    }
}

/// A TCP stream whose reads fail with `TimedOut` after a silence longer than the phase
/// allows (body during a request, idle between requests); writes count as activity.
struct TimedIo {
    tcp: TcpStream,
    phase: Arc<AtomicU8>,
    t: Timeouts,
    /// Gone once the connection is upgraded: a session does not pay for it.
    timer: Option<Pin<Box<Sleep>>>,
    /// The phase the timer was armed for.
    armed: u8,
    _open: Open,
    reset: ResetOnDrop,
}

impl Drop for TimedIo {
    fn drop(&mut self) {
        if self.reset.armed.load(Ordering::Relaxed)
            && let Err(e) = self.tcp.set_zero_linger()
        {
            tracing::debug!(error = %e, "SO_LINGER 0 not set");
        }
    }
}

impl TimedIo {
    fn new(
        tcp: TcpStream,
        phase: Arc<AtomicU8>,
        t: Timeouts,
        open: Open,
        reset: ResetOnDrop,
    ) -> TimedIo {
        TimedIo {
            tcp,
            phase,
            t,
            timer: Some(Box::pin(tokio::time::sleep(t.idle))),
            armed: PHASE_IDLE,
            _open: open,
            reset,
        }
    }

    fn limit(&self, phase: u8) -> Option<Duration> {
        match phase {
            PHASE_IDLE => Some(self.t.idle),
            PHASE_REQUEST => Some(self.t.body),
            _ => None,
        }
    }

    fn activity(&mut self) {
        let phase = self.phase.load(Ordering::Relaxed);
        match (self.limit(phase), self.timer.as_mut()) {
            (Some(d), Some(timer)) => timer.as_mut().reset(Instant::now() + d),
            (None, _) => self.timer = None,
            (Some(_), None) => {}
        }
        self.armed = phase;
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.activity();
                Poll::Ready(r)
            }
            Poll::Pending => {
                let phase = this.phase.load(Ordering::Relaxed);
                if phase != this.armed {
                    // The phase changed since the last activity: its own limit counts from now.
                    this.activity();
                }
                let expired = this.limit(phase).is_some()
                    && this
                        .timer
                        .as_mut()
                        .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client silent for too long",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// How much of the WebSocket handshake allowance is left for a request on `conn`.
pub fn handshake_left(conn: Option<&Conn>, limit: Duration) -> Duration {
    conn.map(|c| limit.saturating_sub(c.accepted.elapsed()))
        .unwrap_or(limit)
}
