//! Heap bytes per connection: what the runtime holds for each open connection
//! (plain and TLS, HTTP and WebSocket) at 10, 100 and 1,000 connections,
//! driven through `Context`'s in-memory driver interface with no sockets. A
//! counting global allocator measures the heap; the connections are opened
//! one after another and left idle in the state each kind names. Per
//! connection = (device heap with the N connections in that state - device
//! heap before accepting them) / N. The "before" is taken after one warm-up
//! connection has come and gone, so that what the first connection creates
//! once for all (the guest instance, scratch buffers) is reported on its own
//! (`one-time`) instead of being spread over N.
//!
//! Run: `cargo bench -p wasmgate --bench conn_memory` (a few seconds once
//! built). Prints a table and writes it to `target/bench/conn_memory.json`.
//!
//! The test client is kept out of the figure by attribution, not by
//! subtraction: every call into the context runs inside a "device scope"
//! (`Device`'s methods), and only allocations and frees made inside it count
//! as the device's. The rustls `ClientConnection`s, the client's buffers and
//! the bench's bookkeeping are all made outside it. That is exact because no
//! heap block changes hands across the driver interface: the context takes
//! input as `&[u8]` and gives output as `&[u8]` (copied out after the scope
//! closes), and the one owned value it returns (`take_dirty`'s `Vec`) is
//! dropped inside the scope. As checks, the device's count must return to
//! where it started once the context is dropped (a warning is printed if it
//! does not), and the client's own bytes are reported in their own column.
//!
//! Corners cut: sizes are the bytes asked of the allocator, without malloc's
//! per-block overhead (`blocks/conn` says how many blocks pay it); the
//! WebSocket rows use a native echo handler, because the `ws-echo` guest
//! declares `max_sessions = 4` and a protocol runs one instance, so a fifth
//! WebSocket gets `503` (the guest is measured at its 4 connections in a
//! second table); every TLS client does a full handshake (client resumption
//! off), as distinct devices or browsers would.

#[path = "../../tests/support/certs.rs"]
#[allow(dead_code, reason = "shared with the end-to-end tests")]
mod certs;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use wasmgate::config::{GuestLimits, Handler, Limits, Listener, Mount, Protocol};
use wasmgate::context::ConnId;
use wasmgate::context::native::Echo as NativeEcho;
use wasmgate::tls::{Identity, ServerTls};
use wasmgate::{Config, Context};

/// Counts the heap: everything, and separately what the device allocates
/// (inside a [`counting::DeviceScope`]).
#[path = "../../tests/support/counting.rs"]
mod counting;
#[path = "../../tests/support/ws_frame.rs"]
mod ws_frame;

use counting::DeviceScope;

const CONNECTIONS: [usize; 3] = [10, 100, 1000];
/// Connections the guest `ws-echo` can hold at once (its `max_sessions`).
const GUEST_WS_SESSIONS: usize = 4;
const GET: &[u8] = b"GET /status HTTP/1.1\r\nHost: device\r\n\r\n";
const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: d\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";
const SMALL_MESSAGE: usize = 64;
const LARGE_MESSAGE: usize = 16 * 1024;
/// How long the connections then stay quiet: past the runtime's 1 s after
/// which a TLS session gives back its receive buffer.
const IDLE: Duration = Duration::from_secs(2);

/// What each connection has done when it is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One keep-alive `GET /status` answered by `http-post`.
    Http,
    /// Upgraded, one 64-byte message echoed.
    Ws,
    /// `Http` over TLS.
    Https,
    /// `Ws` over TLS.
    Wss,
    /// `Wss`, then one 16 KiB message echoed.
    Wss16k,
    /// `Ws`, then one 16 KiB message echoed: separates what the WebSocket
    /// layer keeps after a large message from what TLS keeps.
    Ws16k,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Http,
        Kind::Ws,
        Kind::Https,
        Kind::Wss,
        Kind::Wss16k,
        Kind::Ws16k,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Ws => "ws",
            Kind::Https => "https",
            Kind::Wss => "wss",
            Kind::Wss16k => "wss+16k",
            Kind::Ws16k => "ws+16k",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Kind::Https | Kind::Wss | Kind::Wss16k)
    }

    fn websocket(self) -> bool {
        matches!(self, Kind::Ws | Kind::Wss | Kind::Wss16k | Kind::Ws16k)
    }

    fn large_message(self) -> bool {
        matches!(self, Kind::Wss16k | Kind::Ws16k)
    }
}

/// What answers the WebSocket connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Echo {
    /// The runtime's native [`NativeEcho`]: no session limit.
    Native,
    /// The `ws-echo` guest, at most [`GUEST_WS_SESSIONS`] connections.
    Guest,
}

/// The context, and the clock the bench runs it at. Every method runs in a
/// [`DeviceScope`]; nothing allocated inside is handed out.
struct Device {
    ctx: Context,
    now: Instant,
}

impl Device {
    fn new(kind: Kind, echo: Echo, leaf: &certs::Leaf, max_connections: usize) -> Self {
        let _device = DeviceScope::enter();
        let now = Instant::now();
        let tls = kind.tls().then(|| {
            let identity = Identity {
                chain_pem: leaf.chain_pem.as_bytes(),
                key_pem: leaf.key_pem.as_bytes(),
            };
            ServerTls::from_pem(&[identity]).expect("test certificate loads")
        });
        let (mounts, protocols, websocket) = if kind.websocket() {
            let (name, handler) = match echo {
                Echo::Native => ("echo", Handler::Native(|| Box::new(NativeEcho))),
                Echo::Guest => (
                    "echo_server",
                    Handler::Wasm(wasmgate_guests::WS_ECHO.to_vec()),
                ),
            };
            let protocol = Protocol {
                name: name.into(),
                handler,
            };
            (Vec::new(), vec![protocol], Some(name.to_string()))
        } else {
            let mount = Mount {
                prefix: "/".into(),
                protocol: "http".into(),
            };
            let protocol = Protocol {
                name: "http".into(),
                handler: Handler::Wasm(wasmgate_guests::HTTP_POST.to_vec()),
            };
            (vec![mount], vec![protocol], None)
        };
        let config = Config {
            name: "bench".into(),
            listeners: vec![Listener {
                name: "main".into(),
                port: 80,
                mounts,
                websocket: websocket.iter().cloned().collect(),
                default_websocket: websocket,
                tls,
            }],
            protocols,
            limits: Limits {
                max_connections,
                ..Limits::DEFAULT
            },
            guest: GuestLimits::DEFAULT,
            admin: None,
            clients: Vec::new(),
            trust: None,
        };
        let ctx = Context::new(config, now).expect("bench device starts");
        Device { ctx, now }
    }

    fn accept(&mut self) -> ConnId {
        let _device = DeviceScope::enter();
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("address");
        self.ctx.accept(0, peer, self.now).expect("a free slot")
    }

    /// Gives `data` to the context as its rx space allows; returns how much
    /// it took.
    fn feed(&mut self, id: ConnId, mut data: &[u8]) -> usize {
        let _device = DeviceScope::enter();
        let mut taken = 0;
        while !data.is_empty() {
            let space = self.ctx.rx_space(id).min(data.len());
            if space == 0 {
                break;
            }
            let n = self.ctx.receive(id, &data[..space], self.now);
            if n == 0 {
                break;
            }
            taken += n;
            data = &data[n..];
        }
        taken
    }

    fn service(&mut self, at: Instant) {
        let _device = DeviceScope::enter();
        self.ctx.service(at);
        drop(self.ctx.take_dirty());
    }

    /// Appends what the context sends to `into` (a client buffer) and tells
    /// it all was sent. Returns how many bytes.
    fn transmit(&mut self, id: ConnId, into: &mut Vec<u8>) -> usize {
        let device = DeviceScope::enter();
        let tx = self.ctx.transmit(id);
        drop(device);
        into.extend_from_slice(tx); // the client's copy: not counted
        let n = tx.len();
        let _device = DeviceScope::enter();
        self.ctx.transmitted(id, n, self.now);
        drop(self.ctx.take_dirty());
        n
    }

    /// The socket is gone.
    fn close(&mut self, id: ConnId) {
        let _device = DeviceScope::enter();
        self.ctx.close(id, self.now);
        drop(self.ctx.take_dirty());
    }

    fn drop_in_scope(self) {
        let _device = DeviceScope::enter();
        drop(self);
    }
}

/// The test client of one connection. Lives outside the device scope.
struct Peer {
    id: ConnId,
    tls: Option<ClientConnection>,
    /// Client bytes the device has not taken yet.
    unsent: Vec<u8>,
    /// Bytes of the last flight from the device.
    incoming: Vec<u8>,
    /// Plaintext received from the device.
    got: Vec<u8>,
    /// The largest flight the device sent at once: how far its output
    /// buffer grew.
    largest_flight: usize,
}

impl Peer {
    fn send(&mut self, plain: &[u8]) {
        match self.tls.as_mut() {
            Some(tls) => tls.writer().write_all(plain).expect("client queues"),
            None => self.unsent.extend_from_slice(plain),
        }
    }

    /// One exchange: the client's bytes in, the device serviced, its output
    /// out and read. Returns whether anything moved.
    fn round(&mut self, dev: &mut Device) -> bool {
        if let Some(tls) = self.tls.as_mut() {
            while tls.wants_write() {
                tls.write_tls(&mut self.unsent).expect("client records");
            }
        }
        let taken = dev.feed(self.id, &self.unsent);
        self.unsent.drain(..taken);
        dev.service(dev.now);
        self.incoming.clear();
        let sent = dev.transmit(self.id, &mut self.incoming);
        self.largest_flight = self.largest_flight.max(sent);
        match self.tls.as_mut() {
            None => self.got.extend_from_slice(&self.incoming),
            Some(tls) => {
                let mut rest = &self.incoming[..];
                let mut buf = [0u8; 4096];
                while !rest.is_empty() {
                    tls.read_tls(&mut rest).expect("client reads records");
                    tls.process_new_packets()
                        .expect("the client accepts the device");
                    while let Ok(n) = tls.reader().read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        self.got.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
        taken > 0 || sent > 0
    }

    /// Exchanges until `done(received)` holds and nothing moves any more.
    fn run(&mut self, dev: &mut Device, done: impl Fn(&[u8]) -> bool) {
        for _ in 0..10_000 {
            if !self.round(dev) && done(&self.got) {
                assert!(self.unsent.is_empty(), "the device took everything");
                return;
            }
        }
        panic!(
            "no progress: {:?}",
            String::from_utf8_lossy(&self.got[..self.got.len().min(200)])
        );
    }

    /// Sends one masked binary message and waits for it to come back whole.
    fn echo(&mut self, dev: &mut Device, size: usize) {
        let message: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        self.send(&ws_frame::client_frame(true, 0x2, &message));
        self.run(dev, |got| echoed(got).as_deref() == Some(&message[..]));
        self.got.clear();
    }
}

/// The payload of one whole message in the unmasked server frames of
/// `wire`, once its last frame (FIN) is there.
fn echoed(wire: &[u8]) -> Option<Vec<u8>> {
    let mut payload = Vec::new();
    let mut at = 0;
    while wire.len() >= at + 2 {
        let (b0, b1) = (wire[at], wire[at + 1]);
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        assert!(b0 & 0x0f <= 2, "a data frame, not {b0:#x}");
        let (len, head) = match b1 & 0x7f {
            126 if wire.len() >= at + 4 => (
                usize::from(u16::from_be_bytes([wire[at + 2], wire[at + 3]])),
                4,
            ),
            127 if wire.len() >= at + 10 => {
                let bytes = wire[at + 2..at + 10].try_into().expect("8 bytes");
                (u64::from_be_bytes(bytes) as usize, 10)
            }
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        let end = at + head + len;
        if wire.len() < end {
            return None;
        }
        payload.extend_from_slice(&wire[at + head..end]);
        if b0 & 0x80 != 0 {
            return Some(payload);
        }
        at = end;
    }
    None
}

/// True once `got` holds a whole response head and its `Content-Length`
/// body.
fn response_complete(got: &[u8]) -> bool {
    let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().expect("a length"));
    got.len() >= head_end + 4 + length
}

/// Opens one connection and brings it to `kind`'s state.
fn open(dev: &mut Device, kind: Kind, client: &Arc<ClientConfig>) -> Peer {
    let id = dev.accept();
    let tls = kind.tls().then(|| {
        let name = ServerName::try_from("device.test").expect("name");
        ClientConnection::new(client.clone(), name).expect("client connection")
    });
    let mut peer = Peer {
        id,
        tls,
        unsent: Vec::new(),
        incoming: Vec::new(),
        got: Vec::new(),
        largest_flight: 0,
    };
    if kind.websocket() {
        peer.send(UPGRADE);
        peer.run(dev, |got| got.ends_with(b"\r\n\r\n"));
        assert!(peer.got.starts_with(b"HTTP/1.1 101"), "upgraded");
        peer.got.clear();
        peer.echo(dev, SMALL_MESSAGE);
        if kind.large_message() {
            peer.echo(dev, LARGE_MESSAGE);
        }
    } else {
        peer.send(GET);
        peer.run(dev, response_complete);
        assert!(peer.got.starts_with(b"HTTP/1.1 200"), "answered");
    }
    peer
}

/// A TLS client that trusts `ca_pem`, offers `http/1.1` and never resumes.
fn client_config(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// One measurement: `n` connections of `kind`.
#[derive(Debug)]
struct Row {
    kind: Kind,
    echo: Echo,
    n: usize,
    /// What the first (warm-up) connection left behind for good: guest
    /// instance, scratch buffers.
    one_time: isize,
    /// Device bytes per connection right after the exchanges.
    active: f64,
    /// Device bytes per connection after [`IDLE`] without traffic.
    idle: f64,
    blocks: f64,
    /// The device's highest heap during the run, above the "before", per
    /// connection.
    peak: f64,
    /// Bytes per connection of the test client (excluded from the above).
    client: f64,
    /// Device bytes still held after all connections closed.
    left: isize,
    /// The largest flight one connection sent at once.
    largest_flight: usize,
    /// Device bytes not returned when the context was dropped (should be 0).
    leak: isize,
}

fn measure(
    kind: Kind,
    echo: Echo,
    n: usize,
    leaf: &certs::Leaf,
    client: &Arc<ClientConfig>,
) -> Row {
    let start = counting::device_bytes();
    let mut dev = Device::new(kind, echo, leaf, 1024);
    let created = counting::device_bytes();
    let warm_up = open(&mut dev, kind, client);
    dev.close(warm_up.id);
    drop(warm_up);

    let (before, before_blocks) = (counting::device_bytes(), counting::device_blocks());
    let all_before = counting::all_bytes();
    counting::reset_peak();
    let mut peers = Vec::with_capacity(n);
    for _ in 0..n {
        peers.push(open(&mut dev, kind, client));
    }
    let active = counting::device_bytes() - before;
    let client_bytes = counting::all_bytes() - all_before - active;
    dev.service(dev.now + IDLE);
    let idle = counting::device_bytes() - before;
    let blocks = counting::device_blocks() - before_blocks;
    let peak = counting::device_peak() - before;
    for p in &peers {
        dev.close(p.id);
    }
    let left = counting::device_bytes() - before;
    let largest_flight = peers.iter().map(|p| p.largest_flight).max().unwrap_or(0);
    drop(peers);
    dev.drop_in_scope();
    let per = |bytes: isize| bytes as f64 / n as f64;
    Row {
        kind,
        echo,
        n,
        one_time: before - created,
        active: per(active),
        idle: per(idle),
        blocks: per(blocks),
        peak: per(peak),
        client: per(client_bytes),
        left,
        largest_flight,
        leak: counting::device_bytes() - start,
    }
}

/// Bytes a context holds per `max_connections`, paid at start whether the
/// slots are used or not.
fn table_slot_bytes(leaf: &certs::Leaf) -> f64 {
    let base = counting::device_bytes();
    let small = Device::new(Kind::Http, Echo::Native, leaf, 8);
    let with_8 = counting::device_bytes() - base;
    small.drop_in_scope();
    let base = counting::device_bytes();
    let large = Device::new(Kind::Http, Echo::Native, leaf, 1032);
    let with_1032 = counting::device_bytes() - base;
    large.drop_in_scope();
    (with_1032 - with_8) as f64 / 1024.0
}

/// What the runtime's memory knobs are measured to buy.
#[derive(Debug)]
struct Knobs {
    /// Bytes per TLS connection the 1 s trim gives back after a 16 KiB
    /// message (rustls' receive buffer and the WebSocket buffers).
    trim_gives_back: f64,
    /// The same for a plain WebSocket (its receive and output buffers).
    ws_trim_gives_back: f64,
    /// Bytes per connection a plain WebSocket keeps after a 16 KiB message.
    ws_tx_kept_plain: f64,
    /// The same over TLS, after the trim.
    ws_tx_kept_tls: f64,
    /// How far the TLS ciphertext buffer grew (then given back).
    largest_tls_flight: usize,
    /// Bytes of one session cache entry.
    cache_entry: f64,
    /// Bytes of a full session cache after much churn.
    full_cache: isize,
    /// Bytes per `max_connections` slot.
    table_slot: f64,
}

fn print_rows(rows: &[Row]) {
    println!(
        "  {:<8} {:>5} {:>11} {:>11} {:>7} {:>11} {:>11} {:>12} {:>10}",
        "kind",
        "N",
        "B/conn",
        "B/conn 2s",
        "blocks",
        "peak B/conn",
        "client B/c",
        "left closed",
        "one-time"
    );
    for r in rows {
        println!(
            "  {:<8} {:>5} {:>11.0} {:>11.0} {:>7.1} {:>11.0} {:>11.0} {:>12} {:>10}",
            r.kind.name(),
            r.n,
            r.active,
            r.idle,
            r.blocks,
            r.peak,
            r.client,
            r.left,
            r.one_time
        );
    }
}

fn row_json(r: &Row) -> serde_json::Value {
    serde_json::json!({
        "kind": r.kind.name(),
        "handler": match r.echo {
            Echo::Native if r.kind.websocket() => "native echo",
            Echo::Native => "http-post guest",
            Echo::Guest => "ws-echo guest",
        },
        "connections": r.n,
        "bytes_per_conn": r.active.round(),
        "bytes_per_conn_after_2s_idle": r.idle.round(),
        "blocks_per_conn": (r.blocks * 10.0).round() / 10.0,
        "peak_bytes_per_conn": r.peak.round(),
        "client_bytes_per_conn_excluded": r.client.round(),
        "bytes_left_after_all_closed": r.left,
        "one_time_bytes_first_connection": r.one_time,
        "largest_flight_bytes": r.largest_flight,
    })
}

fn main() {
    let started = Instant::now();
    let ca = certs::Ca::new("conn_memory CA");
    let leaf = ca.issue(&["device.test"]);
    let client = client_config(&ca.pem);

    let slot = table_slot_bytes(&leaf);
    let mut rows = Vec::new();
    for kind in Kind::ALL {
        for n in CONNECTIONS {
            let t = Instant::now();
            let row = measure(kind, Echo::Native, n, &leaf, &client);
            println!(
                "conn_memory: {:<8} N={n:<5} {:>7.0} B/conn ({} ms)",
                kind.name(),
                row.idle,
                t.elapsed().as_millis()
            );
            rows.push(row);
        }
    }
    let mut guest_rows = Vec::new();
    for kind in [Kind::Ws, Kind::Wss, Kind::Wss16k] {
        let row = measure(kind, Echo::Guest, GUEST_WS_SESSIONS, &leaf, &client);
        println!(
            "conn_memory: {:<8} N={:<5} {:>7.0} B/conn (ws-echo guest)",
            kind.name(),
            GUEST_WS_SESSIONS,
            row.idle
        );
        guest_rows.push(row);
    }

    println!();
    println!("Heap bytes the device holds per connection (allocator bytes, no malloc overhead):");
    print_rows(&rows);
    println!();
    println!("The ws-echo guest at its {GUEST_WS_SESSIONS} sessions:");
    print_rows(&guest_rows);
    println!();
    println!("  B/conn: right after the exchanges; B/conn 2s: after 2 s idle (what is kept).");
    println!("  peak: the device's highest heap during the run, per connection.");
    println!("  client B/c: the test client's own heap, excluded from the figures.");
    println!("  left closed: device bytes still held after every connection closed.");
    println!("  one-time: what the first connection left behind (guest instance, scratch).");
    println!("  connection table: {slot:.0} bytes per max_connections slot, paid at start.");
    let at = |kind: Kind| {
        rows.iter()
            .find(|r| r.kind == kind && r.n == 1000)
            .expect("measured")
    };
    let cache_entry = rows
        .iter()
        .find(|r| r.kind == Kind::Https && r.n == 10)
        .map_or(0.0, |r| r.left as f64 / 10.0);
    let knobs = Knobs {
        trim_gives_back: at(Kind::Wss16k).active - at(Kind::Wss16k).idle,
        ws_trim_gives_back: at(Kind::Ws16k).active - at(Kind::Ws16k).idle,
        ws_tx_kept_plain: at(Kind::Ws16k).idle - at(Kind::Ws).idle,
        ws_tx_kept_tls: at(Kind::Wss16k).idle - at(Kind::Wss).idle,
        largest_tls_flight: at(Kind::Wss16k).largest_flight,
        cache_entry,
        full_cache: at(Kind::Https).left,
        table_slot: slot,
    };
    println!();
    println!("What the runtime's knobs buy (N = 1000):");
    println!(
        "  buffers kept for the next message, trimmed after 1 s quiet: {:.0} B/conn given back \
         after a 16 KiB message (WebSocket receive and output), {:.0} over TLS (and rustls' \
         receive buffer)",
        knobs.ws_trim_gives_back, knobs.trim_gives_back
    );
    println!(
        "  ciphertext buffer given back when drained: it grew to >= {} B (largest flight)",
        knobs.largest_tls_flight
    );
    println!(
        "  WebSocket tx buffer after a 16 KiB message: {:.0} B/conn kept (plain), {:.0} (TLS)",
        knobs.ws_tx_kept_plain, knobs.ws_tx_kept_tls
    );
    println!(
        "  session cache: {:.0} B per entry (one per TLS 1.3 handshake); full (32): {} B per listener",
        knobs.cache_entry, knobs.full_cache
    );
    let leaks: Vec<_> = rows
        .iter()
        .chain(&guest_rows)
        .filter(|r| r.leak != 0)
        .collect();
    for r in &leaks {
        println!(
            "  warning: {} N={}: {} device bytes not returned when the context dropped",
            r.kind.name(),
            r.n,
            r.leak
        );
    }

    let json = serde_json::json!({
        "bench": "conn_memory",
        "command": "cargo bench -p wasmgate --bench conn_memory",
        "unit": "bytes asked of the allocator (no per-block overhead)",
        "rows": rows.iter().map(row_json).collect::<Vec<_>>(),
        "knobs": {
            "tls_trim_gives_back_bytes_per_conn": knobs.trim_gives_back.round(),
            "ws_trim_gives_back_bytes_per_conn_plain": knobs.ws_trim_gives_back.round(),
            "largest_tls_flight_bytes": knobs.largest_tls_flight,
            "ws_tx_buffer_kept_after_16k_bytes_per_conn_plain": knobs.ws_tx_kept_plain.round(),
            "ws_tx_buffer_kept_after_16k_bytes_per_conn_tls": knobs.ws_tx_kept_tls.round(),
            "session_cache_entry_bytes": knobs.cache_entry.round(),
            "session_cache_full_bytes_per_listener": knobs.full_cache,
            "connection_table_bytes_per_slot": knobs.table_slot.round(),
        },
        "ws_echo_guest_rows": guest_rows.iter().map(row_json).collect::<Vec<_>>(),
    });
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the runtime is in the workspace");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from)
        .join("bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    let path = dir.join("conn_memory.json");
    let text = serde_json::to_string_pretty(&json).expect("json");
    std::fs::write(&path, text + "\n").expect("write the JSON");
    println!();
    println!(
        "conn_memory: wrote {} in {:.1} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
}
