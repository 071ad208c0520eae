//! The OS-socket driver: mio TCP listeners and streams, one thread, one loop.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::context::{AcceptError, ConnId, Context};

/// Tokens below this are listeners; above, `SOCKET_BASE + slot`.
const SOCKET_BASE: usize = 1 << 20;
/// Tokens of sockets that are closing (draining the peer's last bytes).
const LINGER_BASE: usize = 1 << 24;
/// How long a closed connection's socket is kept to read what the peer still
/// sends, so that closing does not reset a response the peer has not read yet.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// Whether a short read means the socket's receive queue is empty and the
/// next arrival raises a new readiness event: with epoll and kqueue, which
/// signal every arrival to an edge-triggered registration, but not with
/// mio's Windows backend, which arms a socket again only after a read said
/// `WouldBlock`. (A read also stops short at TCP urgent data; no HTTP or
/// WebSocket peer sends any, and the rest is read with the peer's next
/// bytes.)
pub const SHORT_READ_EMPTIES: bool = !cfg!(windows);

#[derive(Debug)]
struct Socket {
    stream: TcpStream,
    id: ConnId,
    /// The socket may have bytes to read (mio is edge-triggered).
    readable: bool,
    /// A readiness event said the peer closed its side (or the socket
    /// failed): reads go on to the end of stream, since no new event will
    /// come after a short read.
    read_closed: bool,
    /// The peer sent FIN.
    eof: bool,
    /// An outgoing connection still being made.
    connecting: bool,
    /// The last write left bytes behind (`WouldBlock`): the next flush
    /// tries again, whether or not the context marked the connection.
    blocked: bool,
}

#[derive(Debug)]
struct Lingering {
    stream: TcpStream,
    until: Instant,
}

/// Serves a [`Context`] on OS TCP sockets.
#[derive(Debug)]
pub struct OsDriver {
    poll: Poll,
    events: Events,
    /// One per config listener, same order.
    listeners: Vec<TcpListener>,
    /// Indexed by the connection's slot in the context.
    sockets: Vec<Option<Socket>>,
    /// Slots whose socket is `readable`, each once: a turn reads these
    /// instead of looking at every socket.
    ready: Vec<usize>,
    /// Slots whose socket is `blocked` or `connecting`: the flush tries
    /// them again whether or not the context marked them.
    retry: Vec<usize>,
    lingering: Vec<Option<Lingering>>,
    /// How many `lingering` entries are in use.
    lingering_count: usize,
    /// The connections a flush writes, kept between flushes for its
    /// capacity.
    flushing: Vec<ConnId>,
    buf: Vec<u8>,
}

impl OsDriver {
    /// Binds one listener per entry of `ctx.config().listeners`, at the matching
    /// address of `addrs` (port 0 picks a free port; see
    /// [`local_addrs`](Self::local_addrs)).
    ///
    /// # Errors
    ///
    /// The OS error of a bind that failed, with the address in its message.
    pub fn bind(ctx: &Context, addrs: &[SocketAddr]) -> io::Result<Self> {
        let poll = Poll::new()?;
        let wanted = ctx.config().listeners.len();
        if addrs.len() != wanted {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{wanted} listeners need {wanted} addresses, got {}",
                    addrs.len()
                ),
            ));
        }
        let mut listeners = Vec::with_capacity(wanted);
        for (i, addr) in addrs.iter().enumerate() {
            let mut listener = TcpListener::bind(*addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            poll.registry()
                .register(&mut listener, Token(i), Interest::READABLE)?;
            listeners.push(listener);
        }
        let max = ctx.config().limits.max_connections;
        Ok(OsDriver {
            poll,
            events: Events::with_capacity(256),
            listeners,
            sockets: (0..max).map(|_| None).collect(),
            ready: Vec::with_capacity(max),
            retry: Vec::with_capacity(max),
            lingering: (0..max).map(|_| None).collect(),
            lingering_count: 0,
            flushing: Vec::with_capacity(max),
            buf: vec![0; READ_CHUNK],
        })
    }

    /// The addresses the listeners are bound to, in config order.
    ///
    /// # Errors
    ///
    /// An OS error reading a socket's address.
    pub fn local_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.listeners.iter().map(TcpListener::local_addr).collect()
    }

    /// Runs the loop until `stop` returns true (checked at least every
    /// `tick`).
    ///
    /// # Errors
    ///
    /// An OS error from the poller.
    pub fn run(
        &mut self,
        ctx: &mut Context,
        tick: Duration,
        mut stop: impl FnMut() -> bool,
    ) -> io::Result<()> {
        while !stop() {
            self.service(ctx, Some(tick))?;
        }
        Ok(())
    }

    /// One turn of the loop: wait for sockets (at most `timeout`, less if the
    /// context has something due), move bytes both ways, run the context.
    ///
    /// # Errors
    ///
    /// An OS error from the poller; errors on one connection close only it.
    pub fn service(&mut self, ctx: &mut Context, timeout: Option<Duration>) -> io::Result<()> {
        let now = Instant::now();
        let due = ctx.service(now);
        self.flush(ctx, now);
        let lingering_due = if self.lingering_count == 0 {
            None
        } else {
            self.lingering.iter().flatten().map(|l| l.until).min()
        };
        // The caller's tick, the context's next deadline or a lingering
        // socket's, whichever comes first.
        let until = |at: Instant| at.saturating_duration_since(now);
        let mut wait = [timeout, due.map(until), lingering_due.map(until)]
            .into_iter()
            .flatten()
            .min();
        if self.has_pending_reads(ctx) || ctx.wants_service() {
            wait = Some(Duration::ZERO);
        }
        match self.poll.poll(&mut self.events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        let mut accept_on = Vec::new();
        let mut lingering = Vec::new();
        let mut connected = Vec::new();
        for event in &self.events {
            match event.token().0 {
                t if t < SOCKET_BASE => accept_on.push(t),
                t if t < LINGER_BASE => {
                    if let Some(s) = self.sockets[t - SOCKET_BASE].as_mut() {
                        s.read_closed |= event.is_read_closed() || event.is_error();
                        if s.connecting
                            && (event.is_writable() || event.is_error() || event.is_write_closed())
                        {
                            connected.push(t - SOCKET_BASE);
                        }
                        if !s.readable
                            && (event.is_readable() || event.is_read_closed() || event.is_error())
                        {
                            s.readable = true;
                            self.ready.push(t - SOCKET_BASE);
                        }
                    }
                }
                t => lingering.push(t - LINGER_BASE),
            }
        }
        for slot in lingering {
            self.drain_lingering(slot, now);
        }
        for listener in accept_on {
            self.accept(ctx, listener, now);
        }
        for slot in connected {
            self.finish_connect(ctx, slot, now);
        }
        // Taken out while reading: a read that fails drops its socket, which
        // takes the slot off `self.ready`.
        let mut ready = std::mem::take(&mut self.ready);
        for &slot in &ready {
            if self.sockets[slot].as_ref().is_some_and(|s| s.readable) {
                self.read(ctx, slot, now);
            }
        }
        // A socket read dry leaves the list; one that the context had no
        // room for stays readable, and on it.
        let sockets = &self.sockets;
        ready.retain(|&slot| sockets[slot].as_ref().is_some_and(|s| s.readable));
        ready.append(&mut self.ready);
        self.ready = ready;
        self.expire_lingering(now);
        self.flush(ctx, now);
        Ok(())
    }

    fn has_pending_reads(&self, ctx: &Context) -> bool {
        self.ready.iter().any(|&slot| {
            self.sockets[slot]
                .as_ref()
                .is_some_and(|s| s.readable && !s.eof && ctx.rx_space(s.id) > 0)
        })
    }

    fn accept(&mut self, ctx: &mut Context, listener: usize, now: Instant) {
        loop {
            let (mut stream, peer) = match self.listeners[listener].accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            match ctx.accept(listener, peer, now) {
                Ok(id) => {
                    let slot = id.index();
                    let token = Token(SOCKET_BASE + slot);
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        tracing::warn!("cannot register a connection: {e}");
                        ctx.close(id, now);
                        continue;
                    }
                    self.sockets[slot] = Some(Socket {
                        stream,
                        id,
                        readable: true,
                        read_closed: false,
                        eof: false,
                        connecting: false,
                        blocked: false,
                    });
                    self.ready.push(slot);
                }
                Err(AcceptError::Full | AcceptError::UnknownListener) => {
                    // A fresh socket's send buffer takes this small answer whole.
                    let _ = stream.write(Context::BUSY_RESPONSE);
                    self.linger(stream, now, false);
                }
            }
        }
    }

    fn read(&mut self, ctx: &mut Context, slot: usize, now: Instant) {
        let Some(sock) = self.sockets[slot].as_mut() else {
            return;
        };
        let id = sock.id;
        loop {
            let space = ctx.rx_space(id).min(self.buf.len());
            if space == 0 || sock.eof {
                return;
            }
            match sock.stream.read(&mut self.buf[..space]) {
                Ok(0) => {
                    sock.eof = true;
                    sock.readable = false;
                    ctx.peer_closed(id, now);
                    return;
                }
                Ok(n) => {
                    ctx.receive(id, &self.buf[..n], now);
                    if SHORT_READ_EMPTIES && n < space && !sock.read_closed {
                        // The read that would only say WouldBlock is saved,
                        // one system call per message. Not once the peer
                        // closed: its FIN came with the event already
                        // taken, and only reading on finds the end of the
                        // stream.
                        sock.readable = false;
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sock.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(wsi = id.wsi(), "read failed: {e}");
                    self.drop_socket(ctx, slot, now, false);
                    return;
                }
            }
        }
    }

    /// Starts the outgoing connections the context asked for.
    fn start_connects(&mut self, ctx: &mut Context, now: Instant) {
        for (id, host, port) in ctx.take_connects() {
            let addr = (host.as_str(), port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next());
            let Some(addr) = addr else {
                ctx.connect_failed(id, &format!("cannot resolve `{host}`"), now);
                continue;
            };
            let mut stream = match TcpStream::connect(addr) {
                Ok(s) => s,
                Err(e) => {
                    ctx.connect_failed(id, &connect_error(&e), now);
                    continue;
                }
            };
            let slot = id.index();
            let token = Token(SOCKET_BASE + slot);
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                ctx.connect_failed(id, &e.to_string(), now);
                continue;
            }
            self.sockets[slot] = Some(Socket {
                stream,
                id,
                readable: false,
                read_closed: false,
                eof: false,
                connecting: true,
                blocked: false,
            });
            self.retry.push(slot);
        }
    }

    /// An outgoing connection reported progress: connected, or failed.
    fn finish_connect(&mut self, ctx: &mut Context, slot: usize, now: Instant) {
        let Some(sock) = self.sockets[slot].as_mut() else {
            return;
        };
        let failure = match sock.stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(connect_error(&e)),
            Ok(None) => match sock.stream.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
                Err(e) => Some(connect_error(&e)),
            },
        };
        sock.connecting = false;
        match failure {
            None => ctx.connected(sock.id, now),
            Some(why) => {
                sock.eof = true; // nothing to linger for
                ctx.connect_failed(sock.id, &why, now);
            }
        }
    }

    /// Sends what the context queued, and closes what it is done with.
    fn flush(&mut self, ctx: &mut Context, now: Instant) {
        self.start_connects(ctx, now);
        let mut ids = std::mem::take(&mut self.flushing);
        ctx.drain_dirty(&mut ids);
        // Sockets that could not take everything last time, and outgoing
        // ones still connecting (their first bytes wait for the connection):
        // a short list, not a look at every connection, as this runs twice
        // per turn of the loop.
        let sockets = &self.sockets;
        ids.extend(
            self.retry
                .drain(..)
                .filter_map(|slot| sockets[slot].as_ref().map(|s| s.id)),
        );
        for &id in &ids {
            let slot = id.index();
            let Some(sock) = self.sockets[slot].as_mut().filter(|s| s.id == id) else {
                continue;
            };
            let mut failed = false;
            sock.blocked = false;
            loop {
                let tx = ctx.transmit(id);
                if tx.is_empty() {
                    break;
                }
                match sock.stream.write(tx) {
                    Ok(n) => ctx.transmitted(id, n, now),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        sock.blocked = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!(wsi = id.wsi(), "write failed: {e}");
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                self.drop_socket(ctx, slot, now, false);
            } else if ctx.should_close(id) {
                self.drop_socket(ctx, slot, now, true);
            } else if (sock.blocked || sock.connecting) && !self.retry.contains(&slot) {
                self.retry.push(slot);
            }
        }
        ids.clear();
        self.flushing = ids;
    }

    fn drop_socket(&mut self, ctx: &mut Context, slot: usize, now: Instant, graceful: bool) {
        let Some(mut sock) = self.sockets[slot].take() else {
            return;
        };
        // A socket that comes next into this slot starts with lists of its own.
        self.ready.retain(|&s| s != slot);
        self.retry.retain(|&s| s != slot);
        ctx.close(sock.id, now);
        if graceful && !sock.eof {
            self.linger(sock.stream, now, true);
        } else {
            let _ = self.poll.registry().deregister(&mut sock.stream);
        }
    }

    /// Half-closes `stream` and reads what the peer still sends for a while,
    /// so that our last bytes are not lost to a reset. A stream still
    /// `registered` as a connection moves to its lingering token in one call.
    fn linger(&mut self, mut stream: TcpStream, now: Instant, registered: bool) {
        let _ = stream.shutdown(Shutdown::Write);
        let Some(slot) = self.lingering.iter().position(Option::is_none) else {
            return; // no room: close at once
        };
        let token = Token(LINGER_BASE + slot);
        let registry = self.poll.registry();
        let moved = if registered {
            registry.reregister(&mut stream, token, Interest::READABLE)
        } else {
            registry.register(&mut stream, token, Interest::READABLE)
        };
        if moved.is_ok() {
            self.lingering[slot] = Some(Lingering {
                stream,
                until: now + LINGER,
            });
            self.lingering_count += 1;
        }
    }

    fn drain_lingering(&mut self, slot: usize, now: Instant) {
        let Some(l) = self.lingering[slot].as_mut() else {
            return;
        };
        loop {
            match l.stream.read(&mut self.buf) {
                Ok(0) => break,
                Ok(_) if now < l.until => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
        if let Some(mut l) = self.lingering[slot].take() {
            let _ = self.poll.registry().deregister(&mut l.stream);
            self.lingering_count -= 1;
        }
    }

    fn expire_lingering(&mut self, now: Instant) {
        if self.lingering_count == 0 {
            return;
        }
        for entry in &mut self.lingering {
            if entry.as_ref().is_some_and(|l| l.until <= now)
                && let Some(mut l) = entry.take()
            {
                let _ = self.poll.registry().deregister(&mut l.stream);
                self.lingering_count -= 1;
            }
        }
    }
}

/// A failed connect in words, as `CLIENT_CONNECTION_ERROR` reports it.
fn connect_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}
