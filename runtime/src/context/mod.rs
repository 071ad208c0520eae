//! The device: the connection table, the protocols with their guest instances,
//! and the dispatch of HTTP events to guest callbacks. Sans-IO like the layers
//! below it: a driver (`net`) feeds bytes and the time in, and takes bytes out.

mod client;
mod modules;
pub mod native;
mod websocket;

use std::net::SocketAddr;
use std::time::Instant;

use wasmi::Engine;

use crate::config::{Config, ConfigError, Handler, OnTrap};
use crate::guest::{Call, Fault, Guest, Instance, LoadError, Outcome, reason};
use crate::http::{Completion, Event, ServerConn};
use crate::store::{Flash, MemFlash, Store, StoreError};

/// A connection's handle. It is also the `wsi` its guest sees: non-zero, and
/// not reused soon after the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(u32);

impl ConnId {
    fn new(slot: usize, generation: u16) -> Self {
        // 15 bits of generation and 16 of slot (at most MAX_CONNECTIONS - 1):
        // the value stays a positive i32, as a guest expects of a wsi.
        ConnId((u32::from(generation & 0x7fff) << 16 | slot as u32) + 1)
    }

    /// The connection's index in the table, below `max_connections`; unique
    /// among open connections.
    pub fn index(self) -> usize {
        ((self.0 - 1) & 0xffff) as usize
    }

    /// The `wsi` value the guest sees.
    pub fn wsi(self) -> i32 {
        self.0 as i32
    }
}

/// The least time between two `HTTP_WRITEABLE` callbacks that write nothing.
const IDLE_WRITEABLE_BACKOFF: std::time::Duration = std::time::Duration::from_millis(10);

/// Decrypted bytes moved up to the layers above TLS at once.
const TLS_PLAIN_CHUNK: usize = 16 * 1024;

/// A connection gives back the memory it keeps for its next record or
/// message this long after it last needed it: rustls' receive buffer after
/// this long without progress, a WebSocket session's receive and output
/// buffers this long after the last message larger than 512 bytes.
const TRIM_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest body piece given to a native handler at once.
pub(crate) const NATIVE_RX_BUFFER: usize = 4096;

/// Why a new connection was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptError {
    /// `max_connections` are open: answer [`Context::BUSY_RESPONSE`] and close.
    Full,
    /// No such listener.
    UnknownListener,
}

/// Why a context could not be created.
#[derive(Debug)]
pub enum ContextError {
    /// The config is inconsistent.
    Config(ConfigError),
    /// The module store cannot be opened.
    Store(StoreError),
    /// A protocol's module cannot be loaded.
    Module {
        /// The protocol it was configured for.
        protocol: String,
        /// What is wrong with it.
        error: LoadError,
    },
}

impl std::fmt::Display for ContextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "config: {e}"),
            Self::Store(e) => write!(f, "module store: {e}"),
            Self::Module { protocol, error } => write!(f, "protocol `{protocol}`: {error}"),
        }
    }
}

impl std::error::Error for ContextError {}

/// Counters for the status page and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused because the table was full.
    pub refused: u64,
    /// Request heads dispatched.
    pub requests: u64,
    /// Guest callbacks run.
    pub callbacks: u64,
    /// Entries into guest code (native handlers included): one per
    /// callback, except that one entry runs the `RECEIVE` callbacks of every
    /// WebSocket piece already buffered behind the first, for a guest that
    /// takes them (`wasmgate_receive_next`: the SDK's `export_ws!` and
    /// `export_lws_callback!`).
    pub entries: u64,
    /// Callbacks that trapped or ran out of fuel.
    pub faults: u64,
    /// Guest instances created (the first, and one after each retiring trap).
    pub instances: u64,
}

/// A protocol handler compiled into the runtime. It sees the same [`Call`] the
/// `lws` host functions act on, and the same reasons and return values as a
/// guest's `callback`.
pub trait NativeProtocol: std::fmt::Debug {
    /// One callback; 0 goes on, anything else closes the connection.
    fn callback(&mut self, call: &mut Call, reason: i32, input: &[u8]) -> i32;

    /// Whether callbacks of `reason` reach [`callback`](Self::callback), as a
    /// guest's `wasmgate_wants`: one that does not is as if it returned 0
    /// and did nothing, and the runtime skips its work for it. Every reason
    /// unless overridden. Asked at every callback: the answer for a reason
    /// should not change while the handler runs.
    fn wants(&self, reason: i32) -> bool {
        let _ = reason;
        true
    }
}

#[derive(Debug)]
struct ProtocolState {
    name: String,
    backend: Backend,
    counters: modules::Counters,
    /// What runs now, where it came from.
    running: modules::ModuleInfo,
    /// What ran before the last upload, kept compiled for a quick rollback.
    previous: Option<(Guest, modules::ModuleInfo)>,
    /// Set while a freshly uploaded module is on trial.
    trial: Option<modules::Trial>,
    last_rollback: Option<String>,
}

#[derive(Debug)]
enum Backend {
    Wasm {
        guest: Guest,
        instances: Vec<Option<Instance>>,
        current: Option<usize>,
    },
    Native(Box<dyn NativeProtocol>),
}

#[derive(Debug, Clone, Copy)]
struct Binding {
    protocol: usize,
    instance: usize,
    slot: u32,
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    listener: usize,
    peer: SocketAddr,
    /// `None` only while lent to a guest callback. Boxed so that lending it
    /// (into a [`Call`], and through that into a guest's store) moves a
    /// pointer, not the whole connection state.
    http: Option<Box<ServerConn>>,
    binding: Option<Binding>,
    writable: bool,
    /// A guest returned non-zero: close without further answer.
    abort: bool,
    /// The request is for the admin API: its body is collected here.
    admin: Option<modules::AdminRequest>,
    /// The WebSocket session, once upgraded (`None` while lent to a callback).
    ws: Option<Box<crate::ws::Session>>,
    /// The connection is a WebSocket (even while `ws` is lent out).
    upgraded: bool,
    /// Bytes to send before anything else (the `101` of an upgrade).
    preface: Vec<u8>,
    /// Bytes that came after the upgrade request, not yet taken by the session.
    ws_backlog: Vec<u8>,
    /// `CLOSED` was delivered to the guest.
    ws_closed_delivered: bool,
    /// When the guest's timer fires (`lws_set_timer_usecs`).
    timer: Option<Instant>,
    /// End the WebSocket session by then: a swap replaced this connection's
    /// module (a close frame), or the peer sent FIN (the session ends).
    drain_by: Option<Instant>,
    /// Set for a WebSocket client connection the device opened.
    client: Option<client::ClientState>,
    /// The peer sent FIN.
    peer_fin: bool,
    /// A client's session ended: wait until then for the server to close TCP.
    client_linger: Option<Instant>,
    /// Last time the connection moved: a request began, or bytes were queued
    /// by a guest, sent to the peer, or taken from it.
    last_progress: Instant,
    /// An `HTTP_WRITEABLE` that wrote nothing delays the next one until then.
    writeable_not_before: Instant,
    /// The connection stalled: close it even with bytes still queued.
    hard_close: bool,
    dirty: bool,
    /// Something happened to the connection since [`Context::service`] last
    /// looked at it (bytes in or out, a callback, a flag set from outside):
    /// it is on `Context::scan_list`, and the next `service` works out its
    /// deadlines again.
    scan: bool,
    /// The earliest deadline `service` found for it when it last looked; it
    /// is not looked at again before then unless `scan` is set.
    due: Option<Instant>,
    /// The TLS session of an encrypted connection: everything above sees
    /// its plaintext.
    tls: Option<Box<crate::tls::Session>>,
    /// The peer ended its input (FIN or `close_notify`) while decrypted
    /// bytes still wait to go up.
    tls_fin: bool,
}

impl Conn {
    fn new(
        id: ConnId,
        listener: usize,
        peer: SocketAddr,
        http: crate::http::Limits,
        now: Instant,
    ) -> Self {
        Conn {
            id,
            listener,
            peer,
            http: Some(Box::new(ServerConn::new(http, now))),
            binding: None,
            writable: false,
            abort: false,
            admin: None,
            ws: None,
            upgraded: false,
            preface: Vec::new(),
            ws_backlog: Vec::new(),
            ws_closed_delivered: false,
            timer: None,
            drain_by: None,
            client: None,
            peer_fin: false,
            client_linger: None,
            last_progress: now,
            writeable_not_before: now,
            hard_close: false,
            dirty: false,
            scan: false,
            due: None,
            tls: None,
            tls_fin: false,
        }
    }

    /// Plaintext waiting to be sent to the peer (to be encrypted first on a
    /// TLS connection).
    fn plain_tx(&self) -> &[u8] {
        if !self.preface.is_empty() {
            &self.preface
        } else if self.upgraded {
            self.ws.as_ref().map_or(&[], |ws| ws.tx())
        } else {
            self.http.as_deref().map_or(&[], ServerConn::tx)
        }
    }

    /// `n` bytes of [`plain_tx`](Self::plain_tx) are gone to the peer (or
    /// to TLS).
    fn consume_plain_tx(&mut self, n: usize) {
        if !self.preface.is_empty() {
            self.preface.drain(..n.min(self.preface.len()));
        } else if self.upgraded {
            if let Some(ws) = self.ws.as_mut() {
                ws.consume_tx(n);
            }
        } else if let Some(http) = self.http.as_mut() {
            http.consume_tx(n);
        }
    }

    /// The WebSocket session must end by `by` at the latest: an earlier
    /// deadline already set (a module swap's, the peer's FIN's) stays.
    fn end_ws_by(&mut self, by: Instant) {
        self.drain_by = Some(self.drain_by.map_or(by, |d| d.min(by)));
    }

    /// True when the layers above TLS are done with the connection and have
    /// nothing left to send.
    fn plain_done(&self) -> bool {
        if self.client.is_some() && !self.upgraded {
            return self.hard_close || self.abort;
        }
        if self.upgraded {
            let ws = self.ws.as_ref();
            let drained = self.preface.is_empty() && ws.is_none_or(|w| w.tx().is_empty());
            // A client waits for the server's FIN (or `client_linger`).
            let closed = ws.is_some_and(|w| w.is_closed())
                && (self.client.is_none() || self.peer_fin || self.client_linger.is_none());
            return self.hard_close || (drained && (self.abort || closed));
        }
        let http = self.http.as_deref();
        let drained = self.preface.is_empty() && http.is_none_or(|h| h.tx().is_empty());
        self.hard_close || (self.abort && drained) || http.is_some_and(ServerConn::is_closed)
    }

    /// The reason numbers this connection's role uses: (receive, pong,
    /// writeable, closed).
    fn ws_reasons(&self) -> (i32, i32, i32, i32) {
        if self.client.is_some() {
            (
                reason::CLIENT_RECEIVE,
                reason::CLIENT_RECEIVE_PONG,
                reason::CLIENT_WRITEABLE,
                reason::CLIENT_CLOSED,
            )
        } else {
            (
                reason::RECEIVE,
                reason::RECEIVE_PONG,
                reason::SERVER_WRITEABLE,
                reason::CLOSED,
            )
        }
    }
}

/// The runtime of one device. See the crate docs for the layers.
#[derive(Debug)]
pub struct Context {
    config: Config,
    engine: Engine,
    store: Store<Box<dyn Flash>>,
    /// Wall-clock seconds at `epoch`, for the store's timestamps.
    unix_at_epoch: u64,
    protocols: Vec<ProtocolState>,
    conns: Vec<Option<Conn>>,
    /// The first free slot (`conns.len()` when all are taken): the search
    /// for a free slot (each accept, and the client `wsi`s a callback may
    /// hand out) starts here instead of at the first of up to
    /// `max_connections` slots.
    free_from: usize,
    generations: Vec<u16>,
    dirty: Vec<ConnId>,
    /// Connections whose `scan` is set, for the next `service`.
    scan_list: Vec<ConnId>,
    /// No connection's `due` is earlier than this. It can be earlier than
    /// needed (a deadline that moved later keeps it), which costs one pass
    /// over the table when it comes, never a missed deadline.
    conns_due: Option<Instant>,
    scratch: Vec<u8>,
    /// The path of the request being routed, kept between requests so that
    /// routing one allocates nothing.
    path_buf: String,
    /// The [`Call::free_wsis`] buffer, kept between callbacks so that lending
    /// a connection allocates nothing.
    spare_wsis: Vec<i32>,
    /// The fragment info for the next `RECEIVE` callback.
    fragment: crate::guest::Fragment,
    /// Guest timers, soonest first; an entry whose connection has moved its
    /// timer (or closed) is skipped when it comes up.
    timers: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, ConnId)>>,
    /// Client connections waiting for the driver to connect them.
    connects: Vec<(ConnId, String, u16)>,
    /// Config clients waiting to reconnect.
    reconnects: Vec<client::Reconnect>,
    epoch: Instant,
    stats: Stats,
    /// Scratch for decrypted bytes on their way up.
    tls_plain: Vec<u8>,
    /// Work came up since the last `service` (see [`Context::wants_service`]).
    wake: bool,
    /// rustls client configs, made when first needed.
    client_tls: crate::tls::ClientConfigs,
}

impl Context {
    /// What a driver sends to a connection it cannot accept, before closing it.
    pub const BUSY_RESPONSE: &'static [u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
        Retry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 31\r\n\
        Connection: close\r\n\r\ndevice busy: too many clients\r\n";

    /// Checks `config`, loads every protocol's module and runs its
    /// `PROTOCOL_INIT`.
    ///
    /// # Errors
    ///
    /// The first config inconsistency, or the first module that cannot load.
    pub fn new(config: Config, now: Instant) -> Result<Self, ContextError> {
        Self::with_flash(config, Box::new(MemFlash::default()), now)
    }

    /// Like [`new`](Self::new), with the module store on `flash`: a protocol
    /// whose module was uploaded before runs the uploaded module.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), and a store that cannot be opened.
    pub fn with_flash(
        config: Config,
        flash: Box<dyn Flash>,
        now: Instant,
    ) -> Result<Self, ContextError> {
        config.validate().map_err(ContextError::Config)?;
        let engine = Guest::engine();
        let store_bytes = config.admin.as_ref().map_or(0, |a| a.store_bytes);
        let store = Store::open(flash, store_bytes).map_err(ContextError::Store)?;
        let mut protocols = Vec::with_capacity(config.protocols.len());
        for p in &config.protocols {
            let (backend, running, trial) = match &p.handler {
                Handler::Wasm(factory) => {
                    let (guest, running) = modules::load_protocol(
                        &engine,
                        &store,
                        config.admin.as_ref(),
                        &p.name,
                        factory,
                        config.guest,
                    )
                    .map_err(|error| ContextError::Module {
                        protocol: p.name.clone(),
                        error,
                    })?;
                    // An upload still on trial when the device stopped resumes
                    // its trial.
                    let resumed = running.source == "uploaded"
                        && store.slots(&p.name).is_some_and(|s| s.on_trial);
                    let trial = resumed.then(|| modules::Trial {
                        generation: guest.generation(),
                        callbacks: 0,
                        faults: 0,
                    });
                    let backend = Backend::Wasm {
                        guest,
                        instances: Vec::new(),
                        current: None,
                    };
                    (backend, running, trial)
                }
                Handler::Native(make) => {
                    (Backend::Native(make()), modules::ModuleInfo::native(), None)
                }
            };
            protocols.push(ProtocolState {
                name: p.name.clone(),
                backend,
                counters: modules::Counters::default(),
                running,
                previous: None,
                trial,
                last_rollback: None,
            });
        }
        let max = config.limits.max_connections;
        let mut ctx = Context {
            engine,
            store,
            unix_at_epoch: 0,
            protocols,
            conns: (0..max).map(|_| None).collect(),
            free_from: 0,
            generations: vec![0; max],
            dirty: Vec::with_capacity(max),
            scan_list: Vec::with_capacity(max),
            conns_due: None,
            scratch: Vec::new(),
            path_buf: String::new(),
            spare_wsis: Vec::new(),
            fragment: crate::guest::Fragment::default(),
            timers: std::collections::BinaryHeap::new(),
            connects: Vec::new(),
            reconnects: Vec::new(),
            epoch: now,
            stats: Stats::default(),
            tls_plain: Vec::new(),
            wake: false,
            client_tls: crate::tls::ClientConfigs::default(),
            config,
        };
        ctx.open_config_clients(now);
        Ok(ctx)
    }

    /// The config this context runs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.conns.iter().flatten().count()
    }

    /// Live guest instances of `protocol` (including retired ones still draining).
    pub fn instances(&self, protocol: &str) -> usize {
        self.protocols
            .iter()
            .filter(|p| p.name == protocol)
            .map(|p| match &p.backend {
                Backend::Wasm { instances, .. } => instances.iter().flatten().count(),
                Backend::Native(_) => 1,
            })
            .sum()
    }

    // ---- the driver interface ----

    /// A new connection on listener `listener` (an index into `config.listeners`).
    ///
    /// # Errors
    ///
    /// [`AcceptError::Full`] when `max_connections` are open.
    pub fn accept(
        &mut self,
        listener: usize,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<ConnId, AcceptError> {
        if listener >= self.config.listeners.len() {
            return Err(AcceptError::UnknownListener);
        }
        let Some(slot) = self.free_slots().next() else {
            self.stats.refused += 1;
            tracing::warn!(%peer, "connection refused: all {} slots busy", self.conns.len());
            return Err(AcceptError::Full);
        };
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        let id = ConnId::new(slot, self.generations[slot]);
        let mut conn = Conn::new(id, listener, peer, self.config.limits.http, now);
        conn.tls =
            crate::tls::Session::for_listener(self.config.listeners[listener].tls.as_ref(), now);
        self.put_conn(slot, conn);
        self.touch(id);
        self.stats.accepted += 1;
        tracing::debug!(%peer, wsi = id.wsi(), "accepted");
        Ok(id)
    }

    /// How many bytes [`receive`](Self::receive) can take for `id` now; the
    /// driver leaves the rest in the socket (TCP back-pressure).
    pub fn rx_space(&self, id: ConnId) -> usize {
        match self.conn(id) {
            Some(c) if c.abort => 0,
            Some(Conn { tls: Some(tls), .. }) => tls.rx_space(),
            Some(_) => self.plain_rx_space(id),
            None => 0,
        }
    }

    /// Bytes from the peer. Returns how many were taken (at most
    /// [`rx_space`](Self::rx_space)).
    pub fn receive(&mut self, id: ConnId, data: &[u8], now: Instant) -> usize {
        self.touch(id);
        let http_limits = self.config.limits.http;
        let Some(conn) = self.conn_mut(id) else {
            return 0;
        };
        let Some(tls) = conn.tls.as_deref_mut() else {
            return self.receive_plain(id, data, now);
        };
        let was_handshaking = tls.is_handshaking();
        let taken = tls.receive(data);
        if was_handshaking && !tls.is_handshaking() && conn.client.is_none() {
            // The request head's timer starts now, not at accept: the
            // handshake has its own (`tls_handshake_timeout`).
            conn.http = Some(Box::new(ServerConn::new(http_limits, now)));
        }
        let failed = tls.failure().is_some();
        let peer_closed = tls.peer_closed();
        if taken > 0 {
            conn.last_progress = now;
        }
        if peer_closed {
            conn.tls_fin = true;
        }
        self.mark_dirty(id); // handshake records, alerts
        if failed {
            self.tls_failed(id, now);
        } else {
            self.tls_deliver(id, now);
        }
        taken
    }

    /// The peer sent FIN.
    pub fn peer_closed(&mut self, id: ConnId, now: Instant) {
        self.touch(id);
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.peer_fin {
            return;
        }
        if let Some(tls) = conn.tls.as_deref_mut() {
            if tls.failure().is_none() && tls.is_handshaking() {
                tls.fail("TLS: the peer closed the connection during the handshake".into());
                self.tls_failed(id, now);
                return;
            }
            // Bytes decrypted before the FIN go up first.
            conn.tls_fin = true;
            self.tls_deliver(id, now);
            return;
        }
        self.plain_peer_closed(id, now);
    }

    /// Bytes waiting to be sent to the peer (encrypted first on a TLS
    /// connection).
    pub fn transmit(&mut self, id: ConnId) -> &[u8] {
        self.tls_seal(id);
        match self.conn(id) {
            Some(Conn { tls: Some(tls), .. }) => tls.tx(),
            Some(c) => c.plain_tx(),
            None => &[],
        }
    }

    /// The driver sent `n` bytes of [`transmit`](Self::transmit).
    pub fn transmitted(&mut self, id: ConnId, n: usize, now: Instant) {
        self.touch(id);
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if n > 0 {
            conn.last_progress = now;
        }
        match conn.tls.as_deref_mut() {
            Some(tls) => {
                tls.consume_tx(n);
                // Sending may have made room above for what waits decrypted.
                self.tls_deliver(id, now);
            }
            None => conn.consume_plain_tx(n),
        }
    }

    /// True when the driver should close the socket: the connection is done and
    /// everything queued has been sent.
    pub fn should_close(&self, id: ConnId) -> bool {
        self.conn(id).is_none_or(|c| match c.tls.as_deref() {
            // The alert (or the plain-HTTP answer) goes out first.
            Some(tls) if tls.failure().is_some() => c.hard_close || tls.tx().is_empty(),
            Some(tls) => {
                c.hard_close || (c.plain_done() && tls.close_sent() && tls.tx().is_empty())
            }
            None => c.plain_done(),
        })
    }

    /// True when guest callbacks ran since the last [`service`](Self::service)
    /// outside it (decrypted bytes delivered from `transmitted`), or a
    /// closed client connection scheduled its reconnect: the driver should
    /// call `service` again without waiting.
    pub fn wants_service(&self) -> bool {
        self.wake
    }

    /// True when `id` is encrypted (HTTPS, WSS or a TLS client connection).
    pub fn is_tls(&self, id: ConnId) -> bool {
        self.conn(id).is_some_and(|c| c.tls.is_some())
    }

    /// The socket is gone (closed by us after [`should_close`](Self::should_close),
    /// reset by the peer, or failed). Runs `CLOSED_HTTP` if a request was bound.
    pub fn close(&mut self, id: ConnId, now: Instant) {
        if self.conn(id).is_none() {
            return;
        }
        if self
            .conn(id)
            .is_some_and(|c| c.binding.is_some() && !c.upgraded)
        {
            self.callback(id, reason::CLOSED_HTTP, &[], now);
        }
        self.ws_deliver_closed(id, now);
        let slot = id.index();
        if let Some(binding) = self.conns[slot].as_mut().and_then(|c| c.binding.take()) {
            self.unbind(binding, now);
        }
        let gone = self.take_conn(slot);
        if let Some(client) = gone.and_then(|c| c.client) {
            self.client_gone(&client, now);
        }
        tracing::debug!(wsi = id.wsi(), "closed");
    }

    /// Connections with news for the driver (output queued, or ready to close)
    /// since the last call.
    pub fn take_dirty(&mut self) -> Vec<ConnId> {
        let mut ids = Vec::new();
        self.drain_dirty(&mut ids);
        ids
    }

    /// [`take_dirty`](Self::take_dirty) into the driver's own list: both
    /// lists keep their capacity, so a turn of the loop allocates nothing.
    pub fn drain_dirty(&mut self, into: &mut Vec<ConnId>) {
        for id in &self.dirty {
            if let Some(c) = self.conns[id.index()].as_mut() {
                c.dirty = false;
            }
        }
        into.append(&mut self.dirty);
    }

    /// Runs what is due at `now`: timeouts and `HTTP_WRITEABLE` callbacks.
    /// Returns when it wants to run next (`None`: only when input arrives).
    pub fn service(&mut self, now: Instant) -> Option<Instant> {
        self.wake = false;
        self.fire_timers(now);
        self.start_reconnects(now);
        // A connection is looked at when something happened to it (it is on
        // `scan_list`) or one of its deadlines has come; the others keep the
        // deadline found last time. So a turn of the loop costs nothing per
        // idle connection, instead of the timer arithmetic of every one (it
        // was the runtime's largest cost per WebSocket message with 50
        // clients). Connections touched while this runs wait for the next
        // call: one that keeps touching itself cannot hold the loop here.
        let full = self.conns_due.is_some_and(|due| due <= now);
        let mut conns_due = if full { None } else { self.conns_due };
        let touched = self.scan_list.len();
        for i in 0..touched {
            let id = self.scan_list[i];
            if let Some(conn) = self.conn_mut(id)
                && conn.scan
            {
                conn.scan = false;
                conns_due = earliest(conns_due, self.service_conn(id, now));
            }
        }
        self.scan_list.drain(..touched);
        if full {
            for slot in 0..self.conns.len() {
                let Some(conn) = self.conns[slot].as_mut() else {
                    continue;
                };
                let (id, due) = (conn.id, conn.due);
                let due = match due {
                    Some(d) if d <= now => self.service_conn(id, now),
                    due => due,
                };
                conns_due = earliest(conns_due, due);
            }
        }
        self.conns_due = conns_due;
        // The next timer and reconnect, read last: any callback above may
        // have armed one (a client that timed out waits to reconnect).
        let timer = self.timers.peek().map(|r| r.0.0);
        earliest(earliest(self.next_reconnect(), conns_due), timer)
    }

    /// Runs what is due at `now` for connection `id` (TLS timers, WebSocket
    /// pings and drains, HTTP timeouts, `WRITEABLE`, stalls), and keeps its
    /// earliest deadline in `Conn::due`; returns it.
    fn service_conn(&mut self, id: ConnId, now: Instant) -> Option<Instant> {
        let due = self.conn_deadlines(id, now);
        if let Some(conn) = self.conn_mut(id) {
            conn.due = due;
        }
        // Its callbacks may have made room (`lws_rx_flow_control`) for bytes
        // its TLS session decrypted before.
        let waiting = self
            .conn(id)
            .is_some_and(|c| c.tls.as_ref().is_some_and(|t| t.plaintext() > 0));
        if waiting && self.plain_rx_space(id) > 0 {
            self.tls_deliver(id, now);
        }
        due
    }

    /// What [`service_conn`](Self::service_conn) runs: the connection's
    /// timers and `WRITEABLE`. Returns the earliest deadline they have.
    fn conn_deadlines(&mut self, id: ConnId, now: Instant) -> Option<Instant> {
        let mut next = None;
        let mut at = |due: Option<Instant>| next = earliest(next, due);
        if self.conn(id).is_some_and(|c| c.tls.is_some()) {
            at(self.tls_service(id, now));
        }
        let conn = self.conn_mut(id)?;
        if let Some(client) = conn.client.as_ref()
            && !conn.upgraded
        {
            // A client's connect and handshake have one deadline.
            if !client.is_open() && !conn.hard_close {
                if client.deadline <= now {
                    self.client_failed(id, "timed out", now);
                } else {
                    at(Some(client.deadline));
                }
            }
            return next;
        }
        if conn.upgraded {
            self.ws_service(id, now).into_iter().for_each(&mut at);
            return next;
        }
        let Some(http) = conn.http.as_mut() else {
            return next;
        };
        let before = http.tx().len();
        at(http.poll_timeout(now));
        if http.tx().len() != before || http.wants_close() {
            self.mark_dirty(id);
        }
        at(self.writeable(id, now));
        at(self.check_stall(id, now));
        next
    }

    /// Marks `id` to be looked at by the next [`service`](Self::service)
    /// and asks the driver to call it at once: for a change that may come
    /// while `service` runs, after the connection's turn has passed (another
    /// connection's callback: a broadcast `WRITEABLE`, a module swap's drain,
    /// a new client connection), or for a `WRITEABLE` stream asking again.
    fn touch_now(&mut self, id: ConnId) {
        self.touch(id);
        self.wake = true;
    }

    /// Marks `id` to be looked at by the next [`service`](Self::service).
    fn touch(&mut self, id: ConnId) {
        if let Some(c) = self.conn_mut(id)
            && !c.scan
        {
            c.scan = true;
            self.scan_list.push(id);
        }
    }

    // ---- below TLS: plaintext ----

    /// How many plaintext bytes [`receive_plain`](Self::receive_plain) takes
    /// for `id` now.
    fn plain_rx_space(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| {
            if c.abort {
                0
            } else if let Some(cl) = c.client.as_ref().filter(|_| !c.upgraded) {
                match &cl.phase {
                    client::Phase::Handshake { head, .. } => 4096usize.saturating_sub(head.len()),
                    _ => 0,
                }
            } else if c.client_linger.is_some() {
                4096 // read (and drop) until the server's FIN shows
            } else if c.upgraded {
                if c.ws_backlog.is_empty() {
                    c.ws.as_ref().map_or(0, |ws| ws.rx_space())
                } else {
                    0 // the backlog goes first
                }
            } else {
                c.http.as_deref().map_or(0, ServerConn::rx_space)
            }
        })
    }

    /// Plaintext from the peer; takes all of `data` up to
    /// [`plain_rx_space`](Self::plain_rx_space).
    fn receive_plain(&mut self, id: ConnId, data: &[u8], now: Instant) -> usize {
        let Some(conn) = self.conn_mut(id) else {
            return 0;
        };
        if conn.client.is_some() && !conn.upgraded {
            let taken = self.client_handshake_bytes(id, data, now);
            if let Some(conn) = self.conn_mut(id) {
                conn.last_progress = now;
            }
            return taken;
        }
        let taken = if conn.abort {
            0
        } else if conn.upgraded {
            conn.ws.as_mut().map_or(0, |ws| ws.feed(data, now))
        } else {
            conn.http.as_mut().map_or(0, |http| http.feed(data, now))
        };
        if taken > 0 {
            conn.last_progress = now;
        }
        self.pump(id, now);
        taken
    }

    /// The peer is done sending (FIN, or TLS `close_notify`).
    fn plain_peer_closed(&mut self, id: ConnId, now: Instant) {
        if self
            .conn(id)
            .is_some_and(|c| c.client.is_some() && !c.upgraded)
        {
            self.client_failed(
                id,
                "the server closed the connection during the handshake",
                now,
            );
            return;
        }
        let close_timeout = self.config.limits.ws.close_timeout;
        if let Some(conn) = self.conn_mut(id) {
            conn.peer_fin = true;
            // A WebSocket session hears of it from `pump_ws`, behind the
            // frames that came with the upgrade.
            if conn.ws.is_none()
                && let Some(http) = conn.http.as_mut()
            {
                http.peer_closed(now);
            }
        }
        self.pump(id, now);
        if let Some(conn) = self.conn_mut(id)
            && conn.ws.as_ref().is_some_and(|w| !w.is_closed())
        {
            // Input may still wait, or the guest may still write: the peer
            // is gone, so the session gets a deadline.
            conn.end_ws_by(now + close_timeout);
        }
    }

    // ---- TLS ----

    /// Moves decrypted bytes up while the layers above take them; then,
    /// once all are up, the peer's end of input (FIN or `close_notify`).
    fn tls_deliver(&mut self, id: ConnId, now: Instant) {
        let mut buf = std::mem::take(&mut self.tls_plain);
        buf.resize(TLS_PLAIN_CHUNK, 0);
        loop {
            let space = self.plain_rx_space(id).min(buf.len());
            let Some(tls) = self.conn_mut(id).and_then(|c| c.tls.as_deref_mut()) else {
                break;
            };
            if space == 0 || tls.plaintext() == 0 {
                break;
            }
            let n = tls.read_plaintext(&mut buf[..space]);
            if n == 0 {
                break;
            }
            // As from a plain socket: what the layers offered room for and
            // then did not take (a client lingering for the server's FIN
            // reads and drops) is gone.
            self.receive_plain(id, &buf[..n], now);
            // Callbacks ran outside `service` (from `transmitted`, say):
            // what they asked for (WRITEABLE...) wants a turn soon.
            self.wake = true;
        }
        self.tls_plain = buf;
        // Ciphertext held back for lack of room was decrypted on the way.
        if self
            .conn(id)
            .and_then(|c| c.tls.as_ref())
            .is_some_and(|t| t.failure().is_some())
        {
            self.tls_failed(id, now);
            return;
        }
        let ended = self.conn(id).is_some_and(|c| {
            c.tls_fin && !c.peer_fin && c.tls.as_ref().is_some_and(|t| t.plaintext() == 0)
        });
        if ended {
            self.plain_peer_closed(id, now);
        }
    }

    /// The TLS session of `id` failed: a client connection reports why to
    /// its guest; any connection closes once the alert is sent.
    fn tls_failed(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conn(id) else {
            return;
        };
        let why = conn
            .tls
            .as_ref()
            .and_then(|t| t.failure())
            .unwrap_or("TLS failure")
            .to_string();
        if conn.client.is_some() && !conn.upgraded {
            self.client_failed(id, &why, now);
        } else {
            tracing::info!(wsi = id.wsi(), peer = %conn.peer, "closing: {why}");
        }
        self.mark_dirty(id);
    }

    /// Encrypts what the layers above queued, and `close_notify` once they
    /// are done.
    fn tls_seal(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let Some(mut tls) = conn.tls.take() else {
            return;
        };
        let mut sealed = false;
        while tls.wants_plaintext() {
            let n = tls.write_plaintext(conn.plain_tx());
            if n == 0 {
                break;
            }
            conn.consume_plain_tx(n);
            sealed = true;
        }
        if conn.plain_done() && conn.plain_tx().is_empty() {
            tls.close();
        }
        conn.tls = Some(tls);
        if sealed {
            // Plaintext moved out of the buffers above: room a `WRITEABLE`
            // may wait for.
            self.touch(id);
        }
    }

    /// TLS upkeep: handshake deadlines, decrypted bytes the layers above
    /// now have room for, buffers of sessions gone quiet. Returns when it
    /// wants to run next.
    fn tls_service(&mut self, id: ConnId, now: Instant) -> Option<Instant> {
        let timeout = self.config.limits.tls_handshake_timeout;
        let conn = self.conn_mut(id)?;
        let last_progress = conn.last_progress;
        let tls = conn.tls.as_deref_mut()?;
        if let Some(deadline) = tls.handshake_deadline(timeout) {
            if deadline > now {
                return Some(deadline);
            }
            tls.fail(format!(
                "TLS: handshake not finished after {} ms",
                timeout.as_millis()
            ));
            self.tls_failed(id, now);
            return None;
        }
        if tls.plaintext() > 0 {
            self.tls_deliver(id, now);
            return None;
        }
        let quiet_at = last_progress + TRIM_AFTER;
        if tls.trimmed() {
            None
        } else if quiet_at <= now {
            tls.trim();
            None
        } else {
            Some(quiet_at)
        }
    }

    // ---- dispatch ----

    /// Up to `n` connection ids that a new client connection could take, in
    /// the spare buffer (every callback needs them, few use them: no
    /// allocation per callback).
    fn free_wsis(&mut self, n: usize) -> Vec<i32> {
        let mut wsis = std::mem::take(&mut self.spare_wsis);
        wsis.clear();
        let generations = &self.generations;
        wsis.extend(
            self.free_slots()
                .take(n)
                .map(|slot| ConnId::new(slot, generations[slot].wrapping_add(1)).wsi()),
        );
        wsis.reverse(); // `pop` hands out the lowest slot first
        wsis
    }

    /// The free connection slots, lowest first.
    fn free_slots(&self) -> impl Iterator<Item = usize> + '_ {
        debug_assert!(
            self.conns[..self.free_from].iter().all(Option::is_some)
                && self.conns.get(self.free_from).is_none_or(Option::is_none),
            "free_from is not the first free slot"
        );
        let from = self.free_from;
        self.conns[from..]
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_none())
            .map(move |(i, _)| from + i)
    }

    /// Puts `conn` into the free slot `slot`.
    fn put_conn(&mut self, slot: usize, conn: Conn) {
        debug_assert!(self.conns[slot].is_none(), "slot {slot} is taken");
        self.conns[slot] = Some(conn);
        // Past the run of taken slots after it too, so that `free_from`
        // stays the first free slot: a connection that closes and comes
        // back into slot 0 must not leave the next search to walk the rest.
        while self.conns.get(self.free_from).is_some_and(Option::is_some) {
            self.free_from += 1;
        }
    }

    /// Takes the connection out of `slot`, which is free after.
    fn take_conn(&mut self, slot: usize) -> Option<Conn> {
        self.free_from = self.free_from.min(slot);
        self.conns[slot].take()
    }

    /// Sets (`Some`) or cancels (`None`) connection `id`'s timer.
    fn set_timer(&mut self, id: ConnId, usecs: Option<u64>, now: Instant) {
        // Bounded both ways: at least a millisecond (a guest re-arming a zero
        // timer must not spin the device), at most a day.
        let at =
            usecs.map(|us| now + std::time::Duration::from_micros(us.clamp(1_000, 86_400_000_000)));
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.timer = at;
        if let Some(at) = at {
            self.timers.push(std::cmp::Reverse((at, id)));
        }
        // Moved timers leave stale entries behind: keep the heap bounded by
        // rebuilding it from the live timers now and then.
        if self.timers.len() > 4 * self.conns.len() + 16 {
            self.timers = self
                .conns
                .iter()
                .flatten()
                .filter_map(|c| c.timer.map(|at| std::cmp::Reverse((at, c.id))))
                .collect();
        }
    }

    /// Runs the `TIMER` callbacks that are due.
    fn fire_timers(&mut self, now: Instant) {
        // Only what is due now: a timer re-armed by its own callback waits for
        // the next turn, so a guest cannot keep this loop going.
        let mut due = Vec::new();
        while let Some(&std::cmp::Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            due.push((at, id));
        }
        for (at, id) in due {
            let Some(conn) = self.conn_mut(id).filter(|c| c.timer == Some(at)) else {
                continue; // moved, cancelled or closed
            };
            conn.timer = None;
            self.callback(id, reason::TIMER, &[], now);
            self.pump(id, now);
        }
    }

    /// Runs `HTTP_WRITEABLE` for `id` if it asked and its tx buffer is at least
    /// half free. Returns when it can run next, if it is waiting for time
    /// rather than for the peer to read.
    fn writeable(&mut self, id: ConnId, now: Instant) -> Option<Instant> {
        let limits = &self.config.limits;
        let (http_half, ws_half) = (
            limits.http.tx_buffer_bytes / 2,
            limits.ws.tx_buffer_bytes / 2,
        );
        let conn = self.conn_mut(id)?;
        if !conn.writable || conn.binding.is_none() || conn.abort {
            return None;
        }
        let (why, room) = if conn.upgraded {
            let room = conn
                .ws
                .as_ref()
                .is_some_and(|w| !w.is_closing() && w.tx_space() >= ws_half);
            (conn.ws_reasons().2, room && conn.preface.is_empty())
        } else {
            let room = conn
                .http
                .as_ref()
                .is_some_and(|h| h.tx_space() >= http_half);
            (reason::HTTP_WRITEABLE, room)
        };
        if !room {
            return None; // the driver calls again once the peer has read
        }
        if now < conn.writeable_not_before {
            return Some(conn.writeable_not_before);
        }
        conn.writable = false;
        let queued = |c: &Conn| {
            c.http.as_ref().map_or(0, |h| h.tx().len()) + c.ws.as_ref().map_or(0, |w| w.tx().len())
        };
        let before = queued(conn);
        self.callback(id, why, &[], now);
        self.pump(id, now);
        let conn = self.conn_mut(id)?;
        let wrote = queued(conn) != before;
        if !wrote {
            // A guest that asks again without writing anything would spin the
            // loop: let it poll at a bounded rate instead.
            conn.writeable_not_before = now + IDLE_WRITEABLE_BACKOFF;
        }
        if !(conn.writable && conn.binding.is_some()) {
            return None;
        }
        if conn.writeable_not_before > now {
            return Some(conn.writeable_not_before);
        }
        // It wrote and asks again (a stream): the next `service`, at once,
        // looks at it again, without a pass over every connection.
        self.touch_now(id);
        None
    }

    /// Ends connections that stopped moving: a peer that does not read what is
    /// queued for it, or a guest that holds a request without answering (`504`,
    /// or a close if it had started). Returns when to check again.
    fn check_stall(&mut self, id: ConnId, now: Instant) -> Option<Instant> {
        let timeout = self.config.limits.response_timeout;
        let conn = self.conn_mut(id)?;
        let ws_queued = conn.ws.as_ref().is_some_and(|w| !w.tx().is_empty());
        // Bytes already encrypted wait on the peer as much as plaintext does.
        let tls_queued = conn.tls.as_ref().is_some_and(|t| !t.tx().is_empty());
        let http = conn.http.as_mut()?;
        let waiting_on_peer =
            !http.tx().is_empty() || !conn.preface.is_empty() || ws_queued || tls_queued;
        let waiting_on_guest = conn.binding.is_some() && !conn.abort && !conn.upgraded;
        if conn.hard_close || !(waiting_on_peer || waiting_on_guest) {
            return None;
        }
        let deadline = conn.last_progress + timeout;
        if now < deadline {
            return Some(deadline);
        }
        conn.writable = false;
        if waiting_on_peer {
            tracing::info!(
                wsi = id.wsi(),
                "peer read nothing for {} ms: closing",
                timeout.as_millis()
            );
            conn.hard_close = true;
        } else {
            tracing::warn!(
                wsi = id.wsi(),
                "guest held the request {} ms without progress: giving up",
                timeout.as_millis()
            );
            if http.response_started() || http.request().is_none() {
                conn.abort = true;
            } else {
                http.respond_simple(504, "text/plain", b"guest did not answer in time\n", true);
                conn.last_progress = now;
            }
        }
        self.mark_dirty(id);
        None
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns
            .get(id.index())
            .and_then(Option::as_ref)
            .filter(|c| c.id == id)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(id.index())
            .and_then(Option::as_mut)
            .filter(|c| c.id == id)
    }

    /// `id` has news for the driver, and for the next `service`.
    fn mark_dirty(&mut self, id: ConnId) {
        self.touch(id);
        if let Some(c) = self.conn_mut(id)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(id);
        }
    }

    fn now_us(&self, now: Instant) -> i64 {
        now.saturating_duration_since(self.epoch).as_micros() as i64
    }

    /// Handles every event the connection's parser has ready.
    fn pump(&mut self, id: ConnId, now: Instant) {
        self.mark_dirty(id);
        if self.conn(id).is_some_and(|c| c.upgraded) {
            self.pump_ws(id, now);
            return;
        }
        loop {
            let Some(conn) = self.conn_mut(id) else {
                return;
            };
            if conn.abort {
                return;
            }
            let piece = conn.binding.map_or(NATIVE_RX_BUFFER, |b| {
                match &self.protocols[b.protocol].backend {
                    Backend::Wasm { instances, .. } => instances[b.instance]
                        .as_ref()
                        .map_or(NATIVE_RX_BUFFER, |i| i.descriptor().rx_buffer_size as usize),
                    Backend::Native(_) => NATIVE_RX_BUFFER,
                }
            });
            let conn = self.conns[id.index()].as_mut().expect("checked above");
            let Some(http) = conn.http.as_mut() else {
                return;
            };
            let Some(event) = http.poll_event(now, piece) else {
                return;
            };
            match event {
                Event::Head => self.on_head(id, now),
                Event::Body(piece) => {
                    self.scratch.clear();
                    self.scratch.extend_from_slice(piece);
                    if self.conn(id).is_some_and(|c| c.admin.is_some()) {
                        let body = std::mem::take(&mut self.scratch);
                        self.admin_body(id, &body);
                        self.scratch = body;
                    } else if self.conn(id).is_some_and(|c| c.binding.is_some()) {
                        let body = std::mem::take(&mut self.scratch);
                        self.callback(id, reason::HTTP_BODY, &body, now);
                        self.scratch = body;
                    }
                }
                Event::BodyComplete => self.on_body_complete(id, now),
                Event::Rejected(r) => {
                    tracing::info!(
                        wsi = id.wsi(),
                        status = r.status,
                        "request rejected: {}",
                        r.reason
                    );
                }
            }
        }
    }

    fn on_head(&mut self, id: ConnId, now: Instant) {
        self.stats.requests += 1;
        let conn = self.conn_mut(id).expect("caller checked");
        conn.last_progress = now;
        // The path outlives the borrow of the request (a callback lends the
        // connection out), so it is copied, into a buffer kept for the next.
        let mut path = std::mem::take(&mut self.path_buf);
        let conn = self.conn(id).expect("caller checked");
        let req = conn
            .http
            .as_deref()
            .and_then(ServerConn::request)
            .expect("head");
        path.clear();
        path.push_str(req.path());
        tracing::debug!(wsi = id.wsi(), method = req.method(), path = %path, "request");
        // A listener without WebSocket protocols serves the request as HTTP.
        let listener = &self.config.listeners[conn.listener];
        let ws_here = !listener.websocket.is_empty() || listener.default_websocket.is_some();
        let upgrade = ws_here && crate::ws::is_upgrade(req);
        self.route(id, &path, upgrade, now);
        self.path_buf = path;
    }

    /// Hands a complete request head to the admin API, the WebSocket
    /// upgrade or the protocol mounted at `path`.
    fn route(&mut self, id: ConnId, path: &str, upgrade: bool, now: Instant) {
        if self.admin_head(id, path) {
            return;
        }
        if upgrade {
            self.ws_upgrade(id, now);
            return;
        }
        let conn = self.conn(id).expect("caller checked");
        let listener = &self.config.listeners[conn.listener];
        let mounted = listener.mount_for(path);
        let Some(protocol) =
            mounted.and_then(|m| self.protocols.iter().position(|p| p.name == m.protocol))
        else {
            self.answer(id, 404, "no handler for this path\n", false);
            return;
        };
        if let Err((status, why)) = self.bind_protocol(id, protocol, now) {
            let close = why == "protocol unavailable";
            self.answer(id, status, &format!("{why}\n"), close);
            return;
        }
        if path.len() > self.rx_piece(id) {
            if let Some(b) = self.conn_mut(id).and_then(|c| c.binding.take()) {
                self.unbind(b, now);
            }
            let why = "path longer than the protocol's rx_buffer_size\n";
            self.answer(id, 414, why, true);
            return;
        }
        self.callback(id, reason::HTTP_BIND_PROTOCOL, &[], now);
        self.callback(id, reason::HTTP, path.as_bytes(), now);
    }

    fn on_body_complete(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.admin.is_some() {
            self.admin_complete(id, now);
            return;
        }
        if conn.binding.is_none() {
            return;
        }
        let body_expected = conn
            .http
            .as_deref()
            .and_then(ServerConn::request)
            .is_some_and(|r| r.body_expected());
        if body_expected {
            self.callback(id, reason::HTTP_BODY_COMPLETION, &[], now);
        }
        // A guest that neither answered nor asked to: the path is not its.
        if let Some(conn) = self.conn_mut(id)
            && conn.binding.is_some()
            && !conn.writable
            && !conn.abort
            && conn.http.as_ref().is_some_and(|h| !h.response_started())
        {
            let http = conn.http.as_mut().expect("present");
            http.respond_simple(404, "text/plain", b"not found\n", false);
            let done = http.finish_response();
            self.end_transaction(id, done, now);
        }
    }

    /// The runtime answers the current request itself, and ends it.
    fn answer(&mut self, id: ConnId, status: u16, body: &str, close: bool) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if let Some(http) = conn.http.as_mut() {
            http.respond_simple(status, "text/plain", body.as_bytes(), close);
            if http.finish_response() == Completion::Close {
                conn.abort = true;
            }
        }
    }

    /// The instance new requests of `protocol` go to, created if needed.
    fn instance_for(&mut self, protocol: usize, now: Instant) -> Option<usize> {
        let now_us = self.now_us(now);
        let Backend::Wasm {
            guest,
            instances,
            current,
        } = &mut self.protocols[protocol].backend
        else {
            return Some(0);
        };
        if let Some(i) = *current {
            return Some(i);
        }
        match guest.instantiate(now_us) {
            Ok(instance) => {
                self.stats.instances += 1;
                let index = match instances.iter().position(Option::is_none) {
                    Some(free) => free,
                    None => {
                        instances.push(None);
                        instances.len() - 1
                    }
                };
                instances[index] = Some(instance);
                *current = Some(index);
                Some(index)
            }
            Err(e) => {
                tracing::error!(
                    protocol = guest.protocol(),
                    "cannot create an instance: {e}"
                );
                // A module that cannot start counts as faulting, so one on
                // trial is rolled back rather than refusing requests forever.
                let generation = guest.generation();
                self.count_callback(protocol, generation, 1, true, now);
                None
            }
        }
    }

    fn unbind(&mut self, b: Binding, now: Instant) {
        let now_us = self.now_us(now);
        let p = &mut self.protocols[b.protocol];
        let Backend::Wasm { instances, .. } = &mut p.backend else {
            return;
        };
        let Some(inst) = instances[b.instance].as_mut() else {
            return;
        };
        inst.unbind(b.slot);
        if inst.is_retired() && inst.bound() == 0 {
            inst.destroy(now_us);
            instances[b.instance] = None;
            tracing::info!(protocol = p.name, "retired instance dropped");
        }
    }

    /// The transaction is over: tell the guest, free its session slot.
    fn end_transaction(&mut self, id: ConnId, done: Completion, now: Instant) {
        if self.conn(id).is_some_and(|c| c.binding.is_some()) {
            self.callback(id, reason::HTTP_DROP_PROTOCOL, &[], now);
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.writable = false;
        conn.timer = None; // a timer belongs to its transaction
        if done == Completion::Close {
            conn.abort = true;
        }
        if let Some(b) = conn.binding.take() {
            self.unbind(b, now);
        }
    }

    /// Runs one guest callback for connection `id` and applies its outcome.
    fn callback(&mut self, id: ConnId, why: i32, input: &[u8], now: Instant) {
        let now_us = self.now_us(now);
        let on_trap = self.config.guest.on_trap;
        let fragment = std::mem::take(&mut self.fragment);
        let Some(conn) = self.conn(id) else {
            return;
        };
        let Some(b) = conn.binding else {
            return;
        };
        let ending = [
            reason::CLOSED_HTTP,
            reason::CLOSED,
            reason::CLIENT_CLOSED,
            reason::CLIENT_CONNECTION_ERROR,
        ];
        if (conn.abort && !ending.contains(&why)) || conn.http.is_none() {
            return;
        }
        if !self.delivers(b, why) {
            // As if the guest had returned 0 without a host call: nothing to
            // apply, nothing ran, so nothing is counted.
            self.mark_dirty(id);
            return;
        }
        let free_wsis = self.free_wsis(2);
        let conn = self.conns[id.index()].as_mut().expect("checked above");
        let http = conn.http.take().expect("checked above");
        let call = Call {
            wsi: id.wsi(),
            http,
            ws: conn.ws.take(),
            fragment,
            close_reason: None,
            rx_flow: None,
            writable_all: false,
            timer: None,
            free_wsis,
            connects: Vec::new(),
            peer: conn.peer,
            tls: conn.tls.is_some(),
            writable_requested: false,
            completed: None,
            now,
            pieces: 0,
        };
        let tx_before = call.http.tx().len() + call.ws.as_ref().map_or(0, |w| w.tx().len());
        let mut generation = 0;
        let outcome = match &mut self.protocols[b.protocol].backend {
            Backend::Wasm { instances, .. } => match instances[b.instance].as_mut() {
                Some(inst) => {
                    generation = inst.generation();
                    inst.call(why, id.wsi(), Some(b.slot), input, Some(call), now_us)
                }
                None => Outcome {
                    result: Err(Fault::Trap("instance is gone".into())),
                    call: Some(call),
                },
            },
            Backend::Native(handler) => {
                let mut call = call;
                let result = Ok(handler.callback(&mut call, why, input));
                Outcome {
                    result,
                    call: Some(call),
                }
            }
        };
        let mut call = outcome.call.expect("host functions never keep the call");
        let callbacks = 1 + call.pieces;
        self.stats.callbacks += u64::from(callbacks);
        self.stats.entries += 1;
        self.spare_wsis = std::mem::take(&mut call.free_wsis);
        let conn = self.conns[id.index()].as_mut().expect("still open");
        let tx_after = call.http.tx().len() + call.ws.as_ref().map_or(0, |w| w.tx().len());
        if tx_after != tx_before {
            conn.last_progress = now;
        }
        conn.http = Some(call.http);
        conn.ws = call.ws;
        conn.writable |= call.writable_requested;
        if let (Some(ws), Some(enable)) = (conn.ws.as_mut(), call.rx_flow) {
            ws.set_rx_paused(!enable);
        }
        if call.writable_all {
            self.writable_all(b.protocol);
        }
        if let Some(timer) = call.timer {
            self.set_timer(id, timer, now);
        }
        for request in &call.connects {
            if let Err(why) = self.open_client(request, Some(b.protocol), None, now) {
                tracing::warn!(wsi = id.wsi(), "client connection not made: {why}");
            }
        }
        let conn = self.conns[id.index()].as_mut().expect("still open");
        let fault = outcome.result.is_err();
        if conn.upgraded {
            self.ws_outcome(id, b, why, outcome.result, call.close_reason, on_trap, now);
            self.mark_dirty(id);
            self.count_callback(b.protocol, generation, callbacks, fault, now);
            return;
        }
        match outcome.result {
            Ok(0) => {
                if let Some(done) = call.completed
                    && why != reason::HTTP_DROP_PROTOCOL
                    && why != reason::CLOSED_HTTP
                {
                    self.end_transaction(id, done, now);
                }
            }
            Ok(n) => {
                tracing::debug!(wsi = id.wsi(), "callback {why} returned {n}: closing");
                conn.abort = true;
                conn.writable = false;
            }
            Err(fault) => self.on_fault(id, b, why, fault, on_trap, now),
        }
        self.mark_dirty(id);
        self.count_callback(b.protocol, generation, callbacks, fault, now);
    }

    /// Whether a callback of reason `why` for binding `b` enters its handler:
    /// false only for a guest instance that declared (`wasmgate_wants`) it
    /// does not handle `why`, or a native handler that does not
    /// ([`NativeProtocol::wants`]). An instance that is gone (a fault to
    /// report) always gets the call.
    fn delivers(&self, b: Binding, why: i32) -> bool {
        match &self.protocols[b.protocol].backend {
            Backend::Wasm { instances, .. } => instances[b.instance]
                .as_ref()
                .is_none_or(|inst| inst.wants(why)),
            Backend::Native(handler) => handler.wants(why),
        }
    }

    /// Counts and logs a fault, and retires the instance that made it (unless
    /// the config keeps it).
    fn fault_retires(&mut self, b: Binding, id: ConnId, why: i32, fault: &Fault, on_trap: OnTrap) {
        self.stats.faults += 1;
        let p = &mut self.protocols[b.protocol];
        tracing::warn!(
            protocol = p.name,
            wsi = id.wsi(),
            "guest {fault} in callback reason {why}"
        );
        if on_trap == OnTrap::Reinstantiate
            && let Backend::Wasm {
                instances, current, ..
            } = &mut p.backend
            && let Some(inst) = instances[b.instance].as_mut()
            && !inst.is_retired()
        {
            inst.retire();
            *current = None;
        }
    }

    fn on_fault(
        &mut self,
        id: ConnId,
        b: Binding,
        why: i32,
        fault: Fault,
        on_trap: OnTrap,
        now: Instant,
    ) {
        self.fault_retires(b, id, why, &fault, on_trap);
        let conn = self.conns[id.index()].as_mut().expect("still open");
        conn.binding = None;
        conn.writable = false;
        conn.timer = None;
        if let Some(http) = conn.http.as_mut() {
            if http.response_started() || http.request().is_none() {
                conn.abort = true;
            } else {
                http.respond_simple(500, "text/plain", b"guest module failed\n", true);
            }
        }
        self.unbind(b, now);
    }
}
