//! Bounded connections: a cap on open connections in total and per client
//! address, a deadline for the first bytes of a connection, and an idle
//! timeout when nothing moves in either direction. Together with hyper's
//! header-read timeout (set in [`crate::server`]) a slow or silent client
//! holds a connection for a bounded time, and one address cannot hold more
//! than its share, so `/health` stays reachable under a slow-client flood.
//!
//! The acceptor wraps the plain TCP acceptor or the TLS one, so the caps are
//! checked before a TLS handshake starts and the timers see the decrypted
//! bytes.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Bytes a connection must send within the header-read timeout before
/// hyper's own timer takes over: the HTTP/2 preface is 24 bytes, and the
/// protocol is chosen only once they are read.
const FIRST_BYTES: u64 = 24;

/// Counts of open connections, total and per client address.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl ConnLimits {
    /// Caps (0: no cap).
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *open;
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if (self.max_total > 0 && *total >= self.max_total)
            || (self.max_per_ip > 0 && mine >= self.max_per_ip)
        {
            return None;
        }
        *total += 1;
        per_ip.insert(ip, mine + 1);
        Some(Permit {
            limits: self.clone(),
            ip,
        })
    }
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Wraps an acceptor (plain or TLS) with the caps and timers.
#[derive(Debug, Clone)]
pub(crate) struct LimitAcceptor<A> {
    inner: A,
    limits: Arc<ConnLimits>,
    first_bytes: Duration,
    idle: Duration,
}

impl<A> LimitAcceptor<A> {
    pub(crate) fn new(
        inner: A,
        limits: Arc<ConnLimits>,
        first_bytes: Duration,
        idle: Duration,
    ) -> Self {
        Self {
            inner,
            limits,
            first_bytes,
            idle,
        }
    }
}

type Accepting<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

impl<A, S> Accept<TcpStream, S> for LimitAcceptor<A>
where
    A: Accept<TcpStream, S>,
    A::Future: Send + 'static,
    A::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Guarded<A::Stream>;
    type Service = A::Service;
    type Future = Accepting<(Self::Stream, Self::Service)>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let permit = stream
            .peer_addr()
            .ok()
            .and_then(|a| self.limits.try_acquire(a.ip()));
        let Some(permit) = permit else {
            // Dropping the stream closes it: the client may retry later.
            tracing::debug!(peer = ?stream.peer_addr().ok(), "connection refused: connection cap reached");
            return Box::pin(std::future::ready(Err(io::Error::other(
                "connection cap reached",
            ))));
        };
        let started = Instant::now();
        let (first, idle) = (self.first_bytes, self.idle);
        // The TLS handshake (if any) is bounded by its own timeout.
        let accepting = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepting.await?;
            Ok((Guarded::new(stream, permit, started + first, idle), service))
        })
    }
}

/// A connection's stream: holds its [`Permit`] and fails reads and writes
/// that wait past the deadline.
pub(crate) struct Guarded<S> {
    inner: S,
    _permit: Permit,
    first_deadline: Instant,
    idle: Duration,
    read: u64,
    written: bool,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<S> Guarded<S> {
    fn new(inner: S, permit: Permit, first_deadline: Instant, idle: Duration) -> Self {
        let now = Instant::now();
        let mut g = Self {
            inner,
            _permit: permit,
            first_deadline,
            idle,
            read: 0,
            written: false,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now)),
        };
        let d = g.deadline();
        g.timer.as_mut().reset(d);
        g
    }

    fn deadline(&self) -> Instant {
        let idle = self.last + self.idle;
        if self.read < FIRST_BYTES && !self.written {
            idle.min(self.first_deadline)
        } else {
            idle
        }
    }

    /// Called when the inner stream is not ready: `Pending` until the
    /// deadline, then a timeout error that closes the connection.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let d = self.deadline();
            if self.timer.deadline() != d {
                self.timer.as_mut().reset(d);
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= self.deadline() => {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle past its deadline",
                    ));
                }
                Poll::Ready(()) => {}
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    this.read = this.read.saturating_add(n as u64);
                    this.last = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.wait(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.written = true;
                    this.last = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.wait(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.written = true;
                    this.last = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.wait(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.wait(cx).map(Err),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
