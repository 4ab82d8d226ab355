//! Connections to the web servers, counted and capped, and closed when idle: a file
//! descriptor per connection is the box's to spend, not a visitor's.
//!
//! Every accepted TCP connection (HTTPS and the plain-HTTP redirect alike) is registered
//! before its TLS handshake and unregistered when it closes. Beyond the cap per source
//! address a new connection is closed at once. At the cap in total, the connection that has
//! been idle longest is closed to make room (idle: no request in flight and no phone in the
//! call on it; a phone's WebSocket is busy from its `welcome` on and is never chosen); if
//! every connection is busy, the new one is closed. A connection that stays idle for [`IDLE_LIMIT`] is closed,
//! so a TLS connection that never sends a request does not live on.
//!
//! Over-limit events are logged once a minute at most, with addresses redacted.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::Request;
use axum_server::accept::Accept;
use futures_util::task::AtomicWaker;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::rate::Occasional;
use crate::call::throttle::{redacted, Source};

/// A connection with no request in flight and no WebSocket for this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(20);
/// A TLS handshake must be done within this.
pub const TLS_HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// An HTTP/1 request's headers must have arrived within this (also the wait for the next
/// request on a kept-alive connection).
pub const HEADER_READ_LIMIT: Duration = Duration::from_secs(10);
/// HTTP/2: a ping when the connection has been quiet this long, and the connection closed
/// when its answer does not come within `H2_KEEP_ALIVE_TIMEOUT`.
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections over the cap in total while the ones closed to make room are closing.
const EVICTION_SLACK: usize = 32;

/// How many connections, in total and from one address (an IPv4 address or an IPv6 /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnCaps {
    pub total: usize,
    pub per_address: usize,
}

/// Timeouts and keep-alive of the HTTP servers (hyper-util's auto builder, both protocols).
pub fn configure_http(builder: &mut Builder<TokioExecutor>) {
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_LIMIT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
}

/// One open connection, shared by its stream, its requests and the registry.
#[derive(Debug)]
struct ConnState {
    id: u64,
    source: Source,
    /// Requests in flight plus phones in the call.
    busy: AtomicUsize,
    /// When `busy` last fell to zero (or the connection was accepted).
    idle_since: Mutex<Instant>,
    /// Chosen to make room: its next read fails.
    closing: AtomicBool,
    /// The connection's task, woken when it is chosen.
    waker: AtomicWaker,
}

impl ConnState {
    /// When the connection is to be closed for idleness; None while busy.
    fn idle_deadline(&self, limit: Duration) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(*self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) + limit)
    }

    fn idle_since(&self) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 || self.closing.load(Ordering::Acquire) {
            return None;
        }
        Some(*self.idle_since.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn close_to_make_room(&self) {
        self.closing.store(true, Ordering::Release);
        self.waker.wake();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PerAddress,
    Total,
}

/// Every open connection, by id, and how many each source has.
#[derive(Debug)]
pub struct Registry {
    caps: ConnCaps,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    conns: HashMap<u64, Arc<ConnState>>,
    per_source: HashMap<Source, usize>,
    next_id: u64,
}

/// A registered connection; unregistered when dropped.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    conn: Arc<ConnState>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.unregister(&self.conn);
    }
}

static REFUSED_PER_ADDRESS: Occasional = Occasional::new(Duration::from_secs(60));
static REFUSED_TOTAL: Occasional = Occasional::new(Duration::from_secs(60));
static CLOSED_FOR_ROOM: Occasional = Occasional::new(Duration::from_secs(60));

impl Registry {
    pub fn new(caps: ConnCaps) -> Arc<Registry> {
        Arc::new(Registry {
            caps,
            table: Mutex::new(Table::default()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.table().conns.len()
    }

    /// A connection from `ip` arrived at `now`: registered, maybe after choosing another to
    /// close to make room (then the flag is true), or refused.
    pub fn register(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<(Registered, bool), Refusal> {
        let source = Source::of(ip);
        let mut table = self.table();
        if table.per_source.get(&source).copied().unwrap_or(0) >= self.caps.per_address {
            return Err(Refusal::PerAddress);
        }
        let open = table.conns.len();
        if open >= self.caps.total + EVICTION_SLACK {
            return Err(Refusal::Total);
        }
        let mut made_room = false;
        if open >= self.caps.total {
            // Connections already closing make no room; the longest idle of the rest does.
            let closing = table
                .conns
                .values()
                .filter(|c| c.closing.load(Ordering::Acquire))
                .count();
            if open - closing >= self.caps.total {
                let longest_idle = table
                    .conns
                    .values()
                    .filter_map(|c| c.idle_since().map(|t| (t, c)))
                    .min_by_key(|(t, c)| (*t, c.id))
                    .map(|(_, c)| c.clone());
                match longest_idle {
                    Some(conn) => conn.close_to_make_room(),
                    None => return Err(Refusal::Total),
                }
                made_room = true;
            }
        }
        table.next_id += 1;
        let conn = Arc::new(ConnState {
            id: table.next_id,
            source,
            busy: AtomicUsize::new(0),
            idle_since: Mutex::new(now),
            closing: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        table.conns.insert(conn.id, conn.clone());
        *table.per_source.entry(source).or_default() += 1;
        let registered = Registered {
            registry: self.clone(),
            conn,
        };
        Ok((registered, made_room))
    }

    fn unregister(&self, conn: &ConnState) {
        let mut table = self.table();
        table.conns.remove(&conn.id);
        if let Some(n) = table.per_source.get_mut(&conn.source) {
            *n -= 1;
            if *n == 0 {
                table.per_source.remove(&conn.source);
            }
        }
    }

    /// Register a new TCP connection, logging refusals and room made now and then.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> io::Result<Registered> {
        let now = Instant::now();
        let caps = self.caps;
        match self.register(ip, now) {
            Ok((registered, made_room)) => {
                if made_room {
                    tracing::debug!("closed an idle connection to make room for {ip}");
                    if let Some(n) = CLOSED_FOR_ROOM.note(now) {
                        tracing::info!(
                            "{n} idle web connection(s) closed to make room since the last \
                             report (cap {} in all); the latest for {}",
                            caps.total,
                            redacted(ip)
                        );
                    }
                }
                Ok(registered)
            }
            Err(refusal) => {
                tracing::debug!("refused a web connection from {ip}: {refusal:?}");
                let (log, cap, what) = match refusal {
                    Refusal::PerAddress => (&REFUSED_PER_ADDRESS, caps.per_address, "per address"),
                    Refusal::Total => (&REFUSED_TOTAL, caps.total, "in all, every one busy"),
                };
                if let Some(n) = log.note(now) {
                    tracing::info!(
                        "{n} web connection(s) refused since the last report: over the cap of \
                         {cap} {what}; the latest from {}",
                        redacted(ip)
                    );
                }
                Err(io::Error::other("over the connection cap"))
            }
        }
    }
}

/// A request in flight or a WebSocket open on a connection: it is busy, not idle.
#[derive(Debug)]
pub struct BusyGuard(Arc<ConnState>);

impl BusyGuard {
    fn new(conn: &Arc<ConnState>) -> BusyGuard {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        BusyGuard(conn.clone())
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut since = self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
        }
    }
}

/// The connection a request came on, in the request's extensions: a WebSocket keeps its
/// connection busy while its phone is in the call.
#[derive(Debug, Clone)]
pub struct ConnActivity(Arc<ConnState>);

impl ConnActivity {
    pub fn busy(&self) -> BusyGuard {
        BusyGuard::new(&self.0)
    }
}

/// The acceptor that registers each TCP connection (put inside the TLS acceptor, so a
/// handshake counts too).
#[derive(Debug, Clone)]
pub struct Limiter {
    registry: Arc<Registry>,
}

impl Limiter {
    pub fn new(registry: Arc<Registry>) -> Limiter {
        Limiter { registry }
    }
}

impl<S> Accept<TcpStream, S> for Limiter {
    type Stream = LimitedStream<TcpStream>;
    type Service = Tracked<S>;
    type Future = std::future::Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream
            .peer_addr()
            .and_then(|peer| self.registry.admit(peer.ip()))
            .map(|registered| {
                let conn = registered.conn.clone();
                let stream = LimitedStream::new(stream, registered);
                (
                    stream,
                    Tracked {
                        inner: service,
                        conn,
                    },
                )
            });
        std::future::ready(admitted)
    }
}

/// A connection's stream: reads fail once the connection has been idle for
/// [`IDLE_LIMIT`] or was chosen to make room, and the server then closes it.
#[derive(Debug)]
pub struct LimitedStream<S> {
    inner: S,
    registered: Registered,
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl<S> LimitedStream<S> {
    fn new(inner: S, registered: Registered) -> LimitedStream<S> {
        let idle = Box::pin(tokio::time::sleep(IDLE_LIMIT));
        LimitedStream {
            inner,
            registered,
            idle,
        }
    }

    /// Pending until the connection is to be closed for idleness.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.idle.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let deadline = self
                .registered
                .conn
                .idle_deadline(IDLE_LIMIT)
                .unwrap_or(now + IDLE_LIMIT);
            if deadline <= now {
                tracing::debug!("closing a web connection idle for {IDLE_LIMIT:?}");
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "idle"));
            }
            self.idle
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LimitedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.registered.conn.waker.register(cx.waker());
        if this.registered.conn.closing.load(Ordering::Acquire) {
            let closed = io::Error::new(io::ErrorKind::TimedOut, "closed to make room");
            return Poll::Ready(Err(closed));
        }
        if let Poll::Ready(read) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            return Poll::Ready(read);
        }
        this.poll_idle(cx).map(Err)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LimitedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection's service: each request keeps the connection busy while it is handled,
/// and carries [`ConnActivity`] for handlers that hold the connection longer.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    conn: Arc<ConnState>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<Request<B>> for Tracked<S>
where
    S: tower_service::Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let busy = BusyGuard::new(&self.conn);
        request
            .extensions_mut()
            .insert(ConnActivity(self.conn.clone()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(busy);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(total: usize, per_address: usize) -> ConnCaps {
        ConnCaps { total, per_address }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    /// Register, whether or not room was made.
    fn open(registry: &Arc<Registry>, from: IpAddr, at: Instant) -> Result<Registered, Refusal> {
        registry
            .register(from, at)
            .map(|(registered, _)| registered)
    }

    fn closing(conn: &Registered) -> bool {
        conn.conn.closing.load(Ordering::Acquire)
    }

    #[test]
    fn one_address_gets_its_share_and_no_more() {
        let registry = Registry::new(caps(100, 3));
        let t = Instant::now();
        let held: Vec<Registered> = (0..3).map(|_| open(&registry, ip(1), t).unwrap()).collect();
        assert_eq!(open(&registry, ip(1), t).unwrap_err(), Refusal::PerAddress);
        // Another address is not affected, nor is the first once one of its own closed.
        assert!(open(&registry, ip(2), t).is_ok());
        drop(held);
        let again = open(&registry, ip(1), t).unwrap();
        assert_eq!(registry.count(), 1);
        drop(again);
        assert_eq!(registry.count(), 0);
    }

    #[test]
    fn at_the_cap_the_longest_idle_makes_room_and_busy_ones_never_do() {
        let registry = Registry::new(caps(3, 10));
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let phone = open(&registry, ip(1), t).unwrap();
        let in_call = ConnActivity(phone.conn.clone()).busy();
        let idle_old = open(&registry, ip(2), t + s).unwrap();
        let idle_new = open(&registry, ip(3), t + 2 * s).unwrap();
        let newcomer = open(&registry, ip(4), t + 3 * s).unwrap();
        assert!(closing(&idle_old), "the longest idle is chosen");
        assert!(!closing(&phone) && !closing(&idle_new) && !closing(&newcomer));
        // While the chosen one closes, the next newcomer makes room too.
        let next = open(&registry, ip(5), t + 4 * s).unwrap();
        assert!(closing(&idle_new));
        drop((idle_old, idle_new));
        // Now the phone and two newcomers: the phone stays, whatever its age.
        drop(next);
        let busy = ConnActivity(newcomer.conn.clone()).busy();
        let last = open(&registry, ip(6), t + 5 * s).unwrap();
        assert!(!closing(&phone));
        // Everyone busy: nobody makes room, the newcomer is refused.
        let _busy_too = ConnActivity(last.conn.clone()).busy();
        assert_eq!(
            open(&registry, ip(7), t + 6 * s).unwrap_err(),
            Refusal::Total
        );
        drop((in_call, busy));
        assert_eq!(registry.count(), 3);
    }

    #[test]
    fn a_request_ending_restarts_the_idle_clock() {
        let registry = Registry::new(caps(10, 10));
        let t = Instant::now() - Duration::from_secs(5);
        let conn = open(&registry, ip(1), t).unwrap();
        assert_eq!(conn.conn.idle_deadline(IDLE_LIMIT), Some(t + IDLE_LIMIT));
        let busy = ConnActivity(conn.conn.clone()).busy();
        assert_eq!(conn.conn.idle_deadline(IDLE_LIMIT), None);
        drop(busy);
        let deadline = conn.conn.idle_deadline(IDLE_LIMIT).unwrap();
        assert!(deadline > t + IDLE_LIMIT);
    }
}
