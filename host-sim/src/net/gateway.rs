//! The user-mode gateway (like QEMU's slirp): a smoltcp interface on the far
//! end of the link that joins the simulated device to the host without root
//! or TAP. It forwards host TCP ports to device ports, relays the device's
//! connections to the gateway (and to 127.0.0.1) to host sockets, and answers
//! DHCP and DNS. It owns its host sockets (mio) and never reads the clock:
//! every call takes `now`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use smoltcp::iface::{Config, Interface, PollIngressSingleResult};
use smoltcp::socket::{Socket, tcp, udp};
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, IpListenEndpoint};

use wasmgate::net::os::SHORT_READ_EMPTIES;
use wasmgate::net::sockets::{Handle as SocketHandle, Sockets};

use super::dhcp::DhcpServer;
use super::dns::{self, DnsTable};
use super::phy::LinkEnd;

/// The gateway's Ethernet address.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The device's Ethernet address.
pub const DEVICE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x15];
/// The gateway's IPv4 address (router, DHCP and DNS server).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The device's IPv4 address (static, or leased by DHCP).
pub const DEVICE_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The IPv4 subnet's prefix length.
pub const PREFIX_V4: u8 = 24;
/// The gateway's IPv6 address.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// The device's IPv6 address.
pub const DEVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x15);
/// The IPv6 subnet's prefix length.
pub const PREFIX_V6: u8 = 64;
/// The DHCP lease.
pub const LEASE: Duration = Duration::from_secs(3600);
/// Receive and send buffer of each gateway TCP socket, bytes.
pub const TCP_BUFFER: usize = 64 * 1024;
/// Relayed and forwarded connections at once; past it new ones are refused.
pub const MAX_CONNECTIONS: usize = 256;
/// A host connection for a relayed device connection must be made within
/// this; else the device gets a reset.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A finished connection's socket may take this long to close with the
/// device before it is aborted.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Closed TCP sockets kept for the next connections, so that a burst of
/// short connections does not allocate and zero two `TCP_BUFFER`s for each.
const SPARE_SOCKETS: usize = 32;
/// How long a finished connection's socket stays in TIME-WAIT.
const TIME_WAIT_KEPT: Duration = Duration::from_millis(50);

/// Host tokens below this are forward listeners; above, `CONN_BASE + slot`.
const CONN_BASE: usize = 1 << 16;
const UDP_PACKETS: usize = 8;
const UDP_BUFFER: usize = 8 * 1536;
const FIRST_EPHEMERAL: u16 = 49152;

/// A host port forwarded to a device port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// Where the gateway listens on the host (port 0: any free port).
    pub host: SocketAddr,
    /// The device's port. An IPv6 host address reaches the device over
    /// IPv6.
    pub device_port: u16,
}

/// What the gateway does.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Host ports forwarded to the device.
    pub forwards: Vec<Forward>,
    /// The device's connections to the gateway (or to 127.0.0.1) on a port
    /// of this map go to its host address.
    pub relay: BTreeMap<u16, SocketAddr>,
    /// The device's connections to the gateway (or to 127.0.0.1) on any
    /// other port go to the host's loopback, same port (127.0.0.1, or `[::1]`
    /// for IPv6). `false`: they are refused.
    pub host_loopback: bool,
    /// Names the DNS server answers.
    pub dns: DnsTable,
    /// The gateway (and the forwards) speak IPv6 too.
    pub ipv6: bool,
    /// Seed of the gateway interface's random numbers (TCP sequence numbers,
    /// ports), for repeatable runs.
    pub seed: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            forwards: Vec::new(),
            relay: BTreeMap::new(),
            host_loopback: true,
            dns: default_dns(),
            ipv6: true,
            seed: 0,
        }
    }
}

/// The names the gateway's DNS answers by default: `gateway` and
/// `host.wasmgate` (the gateway, that is the host), `localhost` (127.0.0.1,
/// relayed to the host's loopback like the gateway).
pub fn default_dns() -> DnsTable {
    let gateway = vec![IpAddr::V4(GATEWAY_V4), IpAddr::V6(GATEWAY_V6)];
    BTreeMap::from([
        ("gateway".to_string(), gateway.clone()),
        ("host.wasmgate".to_string(), gateway),
        (
            "localhost".to_string(),
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        ),
    ])
}

#[derive(Debug)]
struct HostListener {
    listener: TcpListener,
    bound: SocketAddr,
    device_port: u16,
    /// mio said it may have connections to accept (edge-triggered).
    ready: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A host connection to a forward listener, relayed to the device.
    Forward,
    /// A device connection relayed to a host socket.
    Relay,
}

/// One relayed TCP connection: a host socket and a gateway socket, bytes
/// moved between them as each side can take them.
#[derive(Debug)]
struct Conn {
    kind: Kind,
    handle: SocketHandle,
    host: TcpStream,
    /// Relay: the host connection is being made since then; the device's
    /// SYN waits (its SYN-ACK is paused).
    connecting: Option<Instant>,
    /// Forward: the device address and port this connection waits to
    /// connect to (one handshake per device port at a time).
    waiting: Option<(IpAddress, u16)>,
    /// The host socket may have bytes to read / room to write (mio is
    /// edge-triggered).
    readable: bool,
    writable: bool,
    /// A readiness event said the host closed its side (or the socket
    /// failed): reads go on to the end of stream, since no new event will
    /// come after a short read.
    host_read_closed: bool,
    /// The host sent FIN (passed on to the device).
    host_eof: bool,
    /// The device sent FIN (passed on to the host).
    device_eof: bool,
    /// The gateway socket got past the handshake.
    established: bool,
    /// The gateway socket saw the device's FIN.
    fin_seen: bool,
    /// The device's bytes held for one host write (see [`Hold`]).
    hold: Hold,
    /// For the log: `127.0.0.1:51234 -> device:80`.
    label: String,
}

/// Device bytes a connection holds back from its host socket while the
/// device is still sending them, so that a message that crosses the link in
/// several windows reaches the host in one write. A device's send buffer is
/// small (4 KiB on a small SoC): a 16 KiB message arrives as four or five
/// windows, one every other poll (the gateway's ACK, then the device's next
/// window), and each host write costs the host a whole trip through its own
/// TCP stack and a wake-up of the reader. Nothing changes for the device:
/// its bytes are acknowledged as they arrive, and the gateway's window
/// (`TCP_BUFFER`) stays far larger than what is held.
///
/// Bytes are held only once at least [`BULK`] wait, so a small answer (an
/// HTTP response, a short WebSocket message) goes out in the poll it arrives
/// in; and at most until [`QUIET_POLLS`] polls in a row bring nothing more,
/// [`HOLD_MAX`] bytes wait, or the device sends FIN or resets. While bytes
/// are held the loop turns again at once (`deadline` asks for `now`), so
/// holding never waits for time to pass: on a link with a delay the quiet
/// polls come before the next window, the bytes go after two quick turns,
/// and the hold saves nothing there (it is made for the default link,
/// where a window's round trip is two polls).
#[derive(Debug, Default, Clone, Copy)]
struct Hold {
    /// Bytes in the gateway socket's receive queue after the last poll.
    seen: usize,
    /// Polls in a row that brought nothing.
    quiet: u8,
}

/// Fewer bytes than this are not held (two full segments at the default
/// MTU): what waits is a small answer, not part of a longer transfer.
const BULK: usize = 2 * 1460;
/// Held bytes go to the host once two polls in a row brought nothing new
/// (one device round trip: the gateway's ACK reaches the device in the
/// first, its next window reaches the gateway in the second).
const QUIET_POLLS: u8 = 2;
/// Held bytes go to the host once this many wait.
const HOLD_MAX: usize = TCP_BUFFER / 2;

impl Hold {
    /// Notes the receive queue's length in this poll; true if it should be
    /// written to the host now.
    fn release(&mut self, queued: usize, done_sending: bool) -> bool {
        if queued > self.seen {
            self.quiet = 0;
        } else {
            self.quiet = self.quiet.saturating_add(1);
        }
        self.seen = queued;
        done_sending || queued < BULK || self.quiet >= QUIET_POLLS || queued >= HOLD_MAX
    }

    /// Notes what is left in the receive queue after the writes to the
    /// host, so that the next poll compares with it.
    fn wrote(&mut self, left: usize) {
        self.seen = left;
    }
}

/// What one turn of a connection came to.
enum Step {
    Keep,
    /// Both sides are finished, or one failed: drop the host socket, let
    /// the gateway socket finish (or send its reset).
    Done,
}

/// The gateway. See the module docs.
pub struct Gateway {
    cfg: GatewayConfig,
    iface: Interface,
    sockets: Sockets,
    epoch: Instant,
    poll: Poll,
    events: Events,
    listeners: Vec<HostListener>,
    conns: Vec<Option<Conn>>,
    /// Sockets listening (SYN-ACK paused) for the device's SYNs seen on the
    /// link, one per SYN.
    syn_listeners: Vec<SocketHandle>,
    /// Forward connections waiting to connect to the device, oldest first
    /// (slots in `conns`).
    forward_queue: VecDeque<usize>,
    /// Sockets of finished connections, closing with the device; aborted at
    /// the deadline.
    closing: Vec<(SocketHandle, Instant)>,
    /// Closed TCP sockets for reuse (at most `SPARE_SOCKETS`), out of the
    /// socket set, whose every poll looks at each socket in it.
    spare: Vec<tcp::Socket<'static>>,
    dhcp: SocketHandle,
    dns: SocketHandle,
    dhcp_server: DhcpServer,
    next_port: u16,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("forwards", &self.local_addrs())
            .field("connections", &self.connections())
            .field("closing", &self.closing.len())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Starts the gateway on `link_end`: its interface, DHCP and DNS, and a
    /// host listener per forward.
    ///
    /// # Errors
    ///
    /// A host listener that cannot be bound (the address is in the
    /// message), an IPv6 forward without `ipv6`, or an OS error from the
    /// poller.
    pub fn new(cfg: GatewayConfig, link_end: &mut LinkEnd, now: Instant) -> io::Result<Gateway> {
        let mut config = Config::new(EthernetAddress(GATEWAY_MAC).into());
        config.random_seed = cfg.seed ^ 0x6761_7465_7761_7921;
        let epoch = now;
        let mut iface = Interface::new(config, link_end, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(GATEWAY_V4.into(), PREFIX_V4));
            if cfg.ipv6 {
                let _ = addrs.push(IpCidr::new(GATEWAY_V6.into(), PREFIX_V6));
            }
        });
        // Take packets for every address: the device's 127.0.0.1 is relayed
        // to the host, and unknown destinations get a reset rather than
        // silence.
        iface.set_any_ip(true);

        let mut sockets = Sockets::new();
        let dhcp = sockets.add(udp_socket(67));
        let dns = sockets.add(udp_socket(53));

        let poll = Poll::new()?;
        let mut listeners = Vec::new();
        for (i, f) in cfg.forwards.iter().enumerate() {
            if f.host.is_ipv6() && !cfg.ipv6 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "cannot forward {} to device port {}: the device has no IPv6 address",
                        f.host, f.device_port
                    ),
                ));
            }
            let mut listener = TcpListener::bind(f.host).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {}: {e}", f.host))
            })?;
            poll.registry()
                .register(&mut listener, Token(i), Interest::READABLE)?;
            let bound = listener.local_addr()?;
            listeners.push(HostListener {
                listener,
                bound,
                device_port: f.device_port,
                ready: true,
            });
        }
        Ok(Gateway {
            cfg,
            iface,
            sockets,
            epoch,
            poll,
            events: Events::with_capacity(256),
            listeners,
            conns: Vec::new(),
            syn_listeners: Vec::new(),
            forward_queue: VecDeque::new(),
            closing: Vec::new(),
            spare: Vec::new(),
            dhcp,
            dns,
            dhcp_server: DhcpServer {
                server: GATEWAY_V4,
                offer: DEVICE_V4,
                prefix_len: PREFIX_V4,
                router: GATEWAY_V4,
                dns: GATEWAY_V4,
                lease: LEASE,
            },
            next_port: FIRST_EPHEMERAL,
        })
    }

    /// The host addresses of the forwards, as bound (a port 0 resolved), in
    /// config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.bound).collect()
    }

    /// Relayed and forwarded connections open now.
    pub fn connections(&self) -> usize {
        self.conns.iter().flatten().count()
    }

    /// One non-blocking turn: host sockets, the interface, DHCP, DNS and the
    /// relays. Returns when it next wants a turn (`now` if it has more to do
    /// at once, `None` if only an event can wake it).
    pub fn poll(&mut self, link_end: &mut LinkEnd, now: Instant) -> Option<Instant> {
        self.turn(link_end, now);
        self.next_wake(now)
    }

    /// [`poll`](Self::poll)'s work without working out when to run next, for
    /// a loop that runs again at once anyway (frames are on the link):
    /// finding the next deadline asks every socket.
    pub fn turn(&mut self, link_end: &mut LinkEnd, now: Instant) {
        if let Err(e) = self.take_events(Some(Duration::ZERO)) {
            tracing::warn!("gateway: polling host sockets failed: {e}");
        }
        self.accept_host();
        self.finish_host_connects(now);
        self.start_forward_connects(now);
        self.prepare_syn_listeners(link_end);
        let ts = self.timestamp(now);
        // The frames from the device first, the segments out once after the
        // host's bytes are pumped in: acknowledgements ride on data, and
        // smoltcp's passes over every socket for segments to send are made
        // once per turn (see the device's driver).
        self.iface.poll_maintenance(ts);
        while self.sockets.ingress(&mut self.iface, ts, link_end) != PollIngressSingleResult::None {
        }
        self.start_forward_connects(now);
        self.serve_udp();
        self.take_device_syns(now);
        self.pump_all(now);
        self.sockets.egress(&mut self.iface, ts, link_end);
        self.reap(now);
    }

    /// Blocks until a host socket has news, at most `timeout`; the next
    /// [`poll`](Self::poll) acts on it.
    ///
    /// # Errors
    ///
    /// An OS error from the poller.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.take_events(Some(timeout))
    }

    fn timestamp(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    fn take_events(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for event in &self.events {
            let t = event.token().0;
            if t < CONN_BASE {
                if let Some(l) = self.listeners.get_mut(t) {
                    l.ready = true;
                }
            } else if let Some(Some(c)) = self.conns.get_mut(t - CONN_BASE) {
                c.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
                c.host_read_closed |= event.is_read_closed() || event.is_error();
                c.writable |= event.is_writable() || event.is_write_closed() || event.is_error();
            }
        }
        Ok(())
    }

    fn free_slot(&mut self) -> usize {
        match self.conns.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        }
    }

    /// Registers a host connection with the poller under a free slot's
    /// token; `None` (logged) if the poller refuses it.
    fn register_conn(&mut self, stream: &mut TcpStream) -> Option<usize> {
        let slot = self.free_slot();
        match self.poll.registry().register(
            stream,
            Token(CONN_BASE + slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            Ok(()) => Some(slot),
            Err(e) => {
                tracing::warn!("gateway: cannot register a host connection: {e}");
                None
            }
        }
    }

    fn busy(&self) -> bool {
        self.connections() + self.syn_listeners.len() >= MAX_CONNECTIONS
    }

    /// Accepts host connections on the forward listeners and starts their
    /// connections to the device.
    fn accept_host(&mut self) {
        for i in 0..self.listeners.len() {
            while self.listeners[i].ready {
                let (stream, peer) = match self.listeners[i].listener.accept() {
                    Ok(accepted) => accepted,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.listeners[i].ready = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!("gateway: accept failed: {e}");
                        break;
                    }
                };
                self.open_forward(i, stream, peer);
            }
        }
    }

    fn open_forward(&mut self, listener: usize, mut stream: TcpStream, peer: SocketAddr) {
        let device_port = self.listeners[listener].device_port;
        if self.busy() {
            tracing::warn!("gateway: {MAX_CONNECTIONS} connections open; refusing {peer}");
            return;
        }
        let _ = stream.set_nodelay(true);
        let device: IpAddress = if self.listeners[listener].bound.is_ipv6() {
            DEVICE_V6.into()
        } else {
            DEVICE_V4.into()
        };
        let Some(slot) = self.register_conn(&mut stream) else {
            return;
        };
        let handle = self.new_socket();
        let label = format!("{peer} -> device port {device_port}");
        tracing::debug!("gateway: forward {label}");
        self.forward_queue.push_back(slot);
        self.conns[slot] = Some(Conn {
            kind: Kind::Forward,
            handle,
            host: stream,
            connecting: None,
            waiting: Some((device, device_port)),
            readable: true,
            writable: true,
            host_read_closed: false,
            host_eof: false,
            device_eof: false,
            established: false,
            fin_seen: false,
            hold: Hold::default(),
            label,
        });
    }

    /// Starts the waiting forwards' connections to the device, in the order
    /// the host connections came, one handshake per device port at a time:
    /// the device keeps only a small pool of listening sockets per port
    /// (refilled as each connection is accepted), and a burst of SYNs past
    /// it would be reset. A host client's kernel queues its connections the
    /// same way.
    fn start_forward_connects(&mut self, now: Instant) {
        if self.forward_queue.is_empty() {
            return;
        }
        let mut in_flight = self.handshakes_in_flight();
        let mut i = 0;
        while i < self.forward_queue.len() {
            let slot = self.forward_queue[i];
            let Some(target) = self.conns[slot].as_ref().and_then(|c| c.waiting) else {
                self.forward_queue.remove(i);
                continue;
            };
            if in_flight.contains(&target) {
                i += 1;
                continue;
            }
            self.forward_queue.remove(i);
            let local_port = self.ephemeral_port();
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            let sock = self.sockets.get_mut::<tcp::Socket<'_>>(c.handle);
            match sock.connect(self.iface.context(), target, local_port) {
                Ok(()) => {
                    c.waiting = None;
                    in_flight.push(target);
                }
                Err(e) => {
                    tracing::warn!("gateway: {}: cannot connect to the device: {e}", c.label);
                    self.drop_conn(slot, now);
                }
            }
        }
    }

    /// The device ports a forward's handshake is under way with.
    fn handshakes_in_flight(&self) -> Vec<(IpAddress, u16)> {
        let mut targets = Vec::new();
        for c in self.conns.iter().flatten() {
            if c.kind != Kind::Forward || c.waiting.is_some() {
                continue;
            }
            let s = self.sockets.get::<tcp::Socket<'_>>(c.handle);
            if s.state() == tcp::State::SynSent
                && let Some(remote) = s.remote_endpoint()
                && !targets.contains(&(remote.addr, remote.port))
            {
                targets.push((remote.addr, remote.port));
            }
        }
        targets
    }

    /// A local port no gateway socket uses.
    fn ephemeral_port(&mut self) -> u16 {
        let in_use = |sockets: &Sockets, port: u16| {
            sockets.iter().any(|(_, s)| match s {
                Socket::Tcp(t) => t.local_endpoint().is_some_and(|e| e.port == port),
                _ => false,
            })
        };
        loop {
            let port = self.next_port;
            self.next_port = if port == u16::MAX {
                FIRST_EPHEMERAL
            } else {
                port + 1
            };
            if !in_use(&self.sockets, port) {
                return port;
            }
        }
    }

    /// Makes sure a listening socket waits for each new SYN from the device
    /// that is queued on the link, before the interface reads it: smoltcp
    /// would answer a SYN no socket listens for with a reset.
    fn prepare_syn_listeners(&mut self, link_end: &LinkEnd) {
        let mut wanted: Vec<(IpAddr, u16, IpAddr, u16)> = Vec::new();
        for frame in link_end.pending() {
            let Some(syn @ (_, _, dst, dport)) = parse_syn(frame) else {
                continue;
            };
            if wanted.contains(&syn)
                || relay_target(&self.cfg, dst, dport).is_none()
                || self.has_socket_for(syn)
            {
                continue;
            }
            wanted.push(syn);
        }
        let mut done: Vec<(IpAddr, u16)> = Vec::new();
        for &(_, _, dst, dport) in &wanted {
            if done.contains(&(dst, dport)) {
                continue;
            }
            done.push((dst, dport));
            let need = wanted.iter().filter(|w| (w.2, w.3) == (dst, dport)).count();
            let have = self
                .syn_listeners
                .iter()
                .filter(|&&h| {
                    let s = self.sockets.get::<tcp::Socket<'_>>(h);
                    s.state() == tcp::State::Listen
                        && s.listen_endpoint()
                            == IpListenEndpoint {
                                addr: Some(dst.into()),
                                port: dport,
                            }
                })
                .count();
            for _ in have..need {
                if self.busy() {
                    tracing::warn!(
                        "gateway: {MAX_CONNECTIONS} connections open; refusing one to {dst}:{dport}"
                    );
                    break;
                }
                let handle = self.new_socket();
                let sock = self.sockets.get_mut::<tcp::Socket<'_>>(handle);
                sock.pause_synack(true);
                if sock.listen((dst, dport)).is_ok() {
                    self.syn_listeners.push(handle);
                } else {
                    keep_spare(&mut self.spare, &mut self.sockets, handle);
                }
            }
        }
    }

    /// True if a gateway socket already has this connection.
    fn has_socket_for(&self, (src, sport, dst, dport): (IpAddr, u16, IpAddr, u16)) -> bool {
        self.sockets.iter().any(|(_, s)| match s {
            Socket::Tcp(t) => {
                t.local_endpoint() == Some((dst, dport).into())
                    && t.remote_endpoint() == Some((src, sport).into())
            }
            _ => false,
        })
    }

    /// Listening sockets that got a SYN: start their host connections.
    fn take_device_syns(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.syn_listeners.len() {
            let handle = self.syn_listeners[i];
            match self.sockets.get::<tcp::Socket<'_>>(handle).state() {
                tcp::State::Listen => {
                    i += 1;
                    continue;
                }
                tcp::State::SynReceived => {}
                _ => {
                    self.syn_listeners.swap_remove(i);
                    self.closing.push((handle, now + CLOSE_TIMEOUT));
                    continue;
                }
            }
            self.syn_listeners.swap_remove(i);
            let sock = self.sockets.get_mut::<tcp::Socket<'_>>(handle);
            let (Some(local), Some(remote)) = (sock.local_endpoint(), sock.remote_endpoint())
            else {
                sock.abort();
                self.closing.push((handle, now + CLOSE_TIMEOUT));
                continue;
            };
            let local_addr = IpAddr::from(local.addr);
            let Some(target) = relay_target(&self.cfg, local_addr, local.port) else {
                sock.abort();
                self.closing.push((handle, now + CLOSE_TIMEOUT));
                continue;
            };
            let label = format!(
                "device {} -> {} -> {target}",
                SocketAddr::new(remote.addr.into(), remote.port),
                SocketAddr::new(local_addr, local.port)
            );
            let mut stream = match TcpStream::connect(target) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("gateway: relay {label}: {e}");
                    sock.abort();
                    self.closing.push((handle, now + CLOSE_TIMEOUT));
                    continue;
                }
            };
            let Some(slot) = self.register_conn(&mut stream) else {
                self.sockets.get_mut::<tcp::Socket<'_>>(handle).abort();
                self.closing.push((handle, now + CLOSE_TIMEOUT));
                continue;
            };
            tracing::debug!("gateway: relay {label}");
            self.conns[slot] = Some(Conn {
                kind: Kind::Relay,
                handle,
                host: stream,
                connecting: Some(now),
                waiting: None,
                readable: false,
                writable: false,
                host_read_closed: false,
                host_eof: false,
                device_eof: false,
                established: false,
                fin_seen: false,
                hold: Hold::default(),
                label,
            });
        }
    }

    /// Relayed connections whose host side connected (the device's SYN is
    /// answered), failed or timed out (the device gets a reset).
    fn finish_host_connects(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            let Some(since) = c.connecting else {
                continue;
            };
            // Read first: a socket taken with `get_mut` is asked by the next
            // sending pass, and one still connecting has nothing to send.
            let handle = c.handle;
            if self.sockets.get::<tcp::Socket<'_>>(handle).state() != tcp::State::SynReceived {
                // The device gave up (its reset put the socket back to LISTEN).
                self.sockets.get_mut::<tcp::Socket<'_>>(handle).abort();
                self.drop_conn(slot, now);
                continue;
            }
            let failure = if c.writable {
                match c.host.take_error() {
                    Ok(Some(e)) | Err(e) => Some(e.to_string()),
                    Ok(None) => match c.host.peer_addr() {
                        Ok(_) => None,
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                            c.writable = false;
                            Some(String::new()) // not yet
                        }
                        Err(e) => Some(e.to_string()),
                    },
                }
            } else {
                Some(String::new())
            };
            match failure {
                None => {
                    tracing::debug!("gateway: relay {}: connected", c.label);
                    self.sockets
                        .get_mut::<tcp::Socket<'_>>(handle)
                        .pause_synack(false);
                    c.connecting = None;
                    c.readable = true;
                }
                Some(why) if !why.is_empty() => {
                    tracing::debug!("gateway: relay {}: {why}", c.label);
                    self.sockets.get_mut::<tcp::Socket<'_>>(handle).abort();
                    self.drop_conn(slot, now);
                }
                Some(_) if now.saturating_duration_since(since) >= CONNECT_TIMEOUT => {
                    tracing::debug!("gateway: relay {}: connect timed out", c.label);
                    self.sockets.get_mut::<tcp::Socket<'_>>(handle).abort();
                    self.drop_conn(slot, now);
                }
                Some(_) => {}
            }
        }
    }

    fn serve_udp(&mut self) {
        loop {
            let sock = self.sockets.get_mut::<udp::Socket<'_>>(self.dhcp);
            let Ok((request, _)) = sock.recv() else {
                break;
            };
            let Some(answer) = self.dhcp_server.answer(request) else {
                continue;
            };
            tracing::debug!("gateway: DHCP {:?} to {}", answer.kind, answer.to);
            let mut meta = udp::UdpMetadata::from((IpAddress::from(answer.to), 68));
            meta.local_address = Some(GATEWAY_V4.into());
            if let Err(e) = sock.send_slice(&answer.payload, meta) {
                tracing::debug!("gateway: DHCP answer not sent: {e}");
            }
        }
        loop {
            let sock = self.sockets.get_mut::<udp::Socket<'_>>(self.dns);
            let Ok((query, from)) = sock.recv() else {
                break;
            };
            let Some(answer) = dns::answer(query, &self.cfg.dns) else {
                continue;
            };
            let mut meta = udp::UdpMetadata::from(from.endpoint);
            meta.local_address = from.local_address;
            if let Err(e) = sock.send_slice(&answer, meta) {
                tracing::debug!("gateway: DNS answer not sent: {e}");
            }
        }
    }

    fn pump_all(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if c.connecting.is_some() || c.waiting.is_some() {
                continue;
            }
            if let Step::Done = pump(c, &mut self.sockets, c.handle) {
                self.drop_conn(slot, now);
            }
        }
    }

    /// Drops a connection's host socket; its gateway socket finishes closing
    /// (or sends its reset) on its own.
    fn drop_conn(&mut self, slot: usize, now: Instant) {
        let Some(mut c) = self.conns[slot].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.host);
        tracing::debug!(
            "gateway: {} {} closed",
            match c.kind {
                Kind::Forward => "forward",
                Kind::Relay => "relay",
            },
            c.label
        );
        self.closing.push((c.handle, now + CLOSE_TIMEOUT));
    }

    /// A closed TCP socket: a spare one, or a new one.
    fn new_socket(&mut self) -> SocketHandle {
        let sock = match self.spare.pop() {
            Some(mut sock) => {
                // `connect` and `listen` reset the connection's state (sequence
                // numbers, buffers, timers, RTT), not the socket's settings:
                // the SYN-ACK pause a relay's socket may have been aborted
                // with, and the congestion controller's state (none is built
                // in today; a fresh one, should one be).
                sock.pause_synack(false);
                sock.set_congestion_control(sock.congestion_control());
                sock
            }
            None => tcp_socket(),
        };
        self.sockets.add(sock)
    }

    /// Keeps (up to `SPARE_SOCKETS`) or removes the sockets that are done
    /// closing, aborts those past their deadline. A socket in TIME-WAIT (the
    /// gateway closed first: the host client did) is removed after
    /// `TIME_WAIT_KEPT`, not smoltcp's 10 s: both FINs are through, and only
    /// the ACK of the device's FIN, which smoltcp may delay, is left to send.
    fn reap(&mut self, now: Instant) {
        let sockets = &mut self.sockets;
        let spare = &mut self.spare;
        self.closing.retain_mut(|(handle, until)| {
            let sock = sockets.get::<tcp::Socket<'_>>(*handle);
            let state = sock.state();
            if state == tcp::State::Closed && sock.remote_endpoint().is_none() {
                keep_spare(spare, sockets, *handle);
                return false;
            }
            if state == tcp::State::TimeWait {
                *until = (*until).min(now + TIME_WAIT_KEPT);
                if now >= *until {
                    sockets.remove(*handle);
                    return false;
                }
            } else if now >= *until && state != tcp::State::Closed {
                sockets.get_mut::<tcp::Socket<'_>>(*handle).abort();
            }
            true
        });
    }

    /// When the gateway wants a turn after the last [`turn`](Self::turn),
    /// host sockets' events aside: `now` if it has more to do at once,
    /// smoltcp's timers, connects and closes that time out.
    pub fn next_wake(&mut self, now: Instant) -> Option<Instant> {
        let ts = self.timestamp(now);
        let mut next = self
            .sockets
            .poll_at(&mut self.iface, ts)
            .map(|t| self.epoch + Duration::from_micros(t.total_micros().max(0) as u64));
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for c in self.conns.iter().flatten() {
            if let Some(since) = c.connecting {
                at(since + CONNECT_TIMEOUT);
                continue;
            }
            if c.waiting.is_some() {
                continue; // started when the handshake before it is done
            }
            let sock = self.sockets.get::<tcp::Socket<'_>>(c.handle);
            let host_to_device = c.readable
                && !c.host_eof
                && sock.may_send()
                && sock.send_queue() < sock.send_capacity();
            let device_to_host = c.writable && sock.can_recv();
            if host_to_device || device_to_host {
                at(now);
            }
        }
        for &(_, until) in &self.closing {
            at(until);
        }
        if self.listeners.iter().any(|l| l.ready) {
            at(now);
        }
        next
    }
}

/// Moves bytes both ways as far as each side can take them, and passes FIN
/// and resets along. The socket is read through [`Sockets::get`], and taken
/// with `get_mut` only when bytes move: the sending pass asks a socket taken
/// that way, and a turn should not ask every idle one.
fn pump(c: &mut Conn, sockets: &mut Sockets, handle: SocketHandle) -> Step {
    use tcp::State;
    let sock = sockets.get::<tcp::Socket<'_>>(handle);
    let state = sock.state();
    if !matches!(
        state,
        State::Closed | State::Listen | State::SynSent | State::SynReceived
    ) {
        c.established = true;
    }
    if matches!(
        state,
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait
    ) {
        c.fin_seen = true;
    }

    // Device to host: only what the host socket takes leaves the buffer,
    // and what the device is still sending waits for the rest (`Hold`).
    // A device that sent FIN, or reset the connection (smoltcp keeps what
    // it had received), sends no more: what is held goes now.
    let done_sending = c.fin_seen || state == State::Closed;
    let release = c.hold.release(sock.recv_queue(), done_sending);
    // Host to device: only read what the socket's send buffer can take.
    let room = |sock: &tcp::Socket<'_>| sock.may_send() && sock.send_queue() < sock.send_capacity();
    let to_device = |c: &Conn, sock: &tcp::Socket<'_>| c.readable && !c.host_eof && room(sock);
    let to_host = release && c.writable && sock.can_recv();
    if !to_host && !to_device(c, sock) {
        pass_fin(c, sock);
        return step(c, sock);
    }

    let sock = sockets.get_mut::<tcp::Socket<'_>>(handle);
    while release && c.writable && sock.can_recv() {
        let r = sock.recv(|buf| match c.host.write(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        });
        match r {
            Ok(Ok(0)) => c.writable = false,
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                tracing::debug!("gateway: {}: host write failed: {e}", c.label);
                sock.abort();
                return Step::Done;
            }
            Err(_) => break,
        }
    }
    pass_fin(c, sock);

    while to_device(c, sock) {
        let r = sock.send(|buf| {
            if buf.is_empty() {
                return (0, Ok(None));
            }
            match c.host.read(buf) {
                Ok(n) => (n, Ok(Some((n, buf.len())))),
                Err(e) => (0, Err(e)),
            }
        });
        match r {
            Ok(Ok(None)) | Err(_) => break,
            Ok(Ok(Some((0, _)))) => {
                c.host_eof = true;
                wasmgate::net::sockets::close(sock);
            }
            // A read shorter than the free part of the ring emptied the
            // host socket (one as long may have left more, read next round,
            // into the part past the ring's wrap): the read that would only
            // say WouldBlock is saved, as in the OS driver. Not after the
            // host closed: its FIN came with the event already taken, and
            // only reading on finds the end of the stream.
            Ok(Ok(Some((n, space)))) if SHORT_READ_EMPTIES && n < space && !c.host_read_closed => {
                c.readable = false;
            }
            Ok(Ok(Some(_))) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                // A reset from the host is a reset to the device.
                tracing::debug!("gateway: {}: host read failed: {e}", c.label);
                sock.abort();
                return Step::Done;
            }
        }
    }
    step(c, sock)
}

/// After the writes to the host: notes what the device's bytes left in the
/// socket, and passes the device's FIN on once all its bytes are out.
fn pass_fin(c: &mut Conn, sock: &tcp::Socket<'_>) {
    c.hold.wrote(sock.recv_queue());
    if c.fin_seen && !c.device_eof && sock.recv_queue() == 0 {
        let _ = c.host.shutdown(Shutdown::Write);
        c.device_eof = true;
    }
}

/// Whether the connection is done: refused by the device, reset by it,
/// timed out, or closed both ways.
fn step(c: &Conn, sock: &tcp::Socket<'_>) -> Step {
    if sock.state() == tcp::State::Closed || (c.host_eof && c.device_eof) {
        Step::Done
    } else {
        Step::Keep
    }
}

/// Takes a closed TCP socket out of the set, and keeps it for a later
/// connection if there are fewer than `SPARE_SOCKETS`.
fn keep_spare(spare: &mut Vec<tcp::Socket<'static>>, sockets: &mut Sockets, handle: SocketHandle) {
    if let Socket::Tcp(sock) = sockets.remove(handle)
        && spare.len() < SPARE_SOCKETS
    {
        spare.push(sock);
    }
}

/// Where a device connection to `dst:port` goes on the host, if anywhere.
fn relay_target(cfg: &GatewayConfig, dst: IpAddr, port: u16) -> Option<SocketAddr> {
    let to_host = match dst {
        IpAddr::V4(a) => a == GATEWAY_V4 || a.is_loopback(),
        IpAddr::V6(a) => cfg.ipv6 && (a == GATEWAY_V6 || a.is_loopback()),
    };
    if !to_host {
        return None;
    }
    if let Some(target) = cfg.relay.get(&port) {
        return Some(*target);
    }
    cfg.host_loopback.then(|| match dst {
        IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
        IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
    })
}

fn tcp_socket() -> tcp::Socket<'static> {
    let mut sock = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
    );
    sock.set_nagle_enabled(false);
    // The device's segments are acknowledged in the poll they arrive in, as
    // by a host that reads them at once: with smoltcp's 10 ms delayed ACK,
    // the last segment of a window the gateway holds (`Hold`) would keep a
    // small SoC's send buffer full for 10 ms at the end of each message.
    sock.set_ack_delay(None);
    sock.set_timeout(Some(smoltcp::time::Duration::from_secs(120)));
    sock
}

fn udp_socket(port: u16) -> udp::Socket<'static> {
    let buffer = || {
        udp::PacketBuffer::new(
            vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
            vec![0; UDP_BUFFER],
        )
    };
    let mut sock = udp::Socket::new(buffer(), buffer());
    sock.bind(port)
        .expect("a fresh socket binds a non-zero port");
    sock
}

/// `(src, src port, dst, dst port)` of a TCP SYN (not SYN-ACK) in an Ethernet
/// frame.
fn parse_syn(frame: &[u8]) -> Option<(IpAddr, u16, IpAddr, u16)> {
    let seg = wasmgate::net::sockets::segment(frame)?;
    (seg.syn && !seg.ack).then(|| {
        (
            seg.src.addr.into(),
            seg.src.port,
            seg.dst.addr.into(),
            seg.dst.port,
        )
    })
}

#[cfg(test)]
mod tests {
    //! The gateway against a plain smoltcp interface standing in for the
    //! device, over a [`Link`](super::super::Link), with real host sockets.

    use super::*;
    use crate::net::{Link, LinkFaults, shuttle};
    use smoltcp::iface::{SocketHandle, SocketSet};
    use smoltcp::socket::{dhcpv4, dns as dns_socket};
    use smoltcp::wire::{DnsQueryType, Ipv4Cidr};

    /// A bare smoltcp interface at the device's addresses.
    struct Station {
        iface: Interface,
        sockets: SocketSet<'static>,
        epoch: Instant,
    }

    impl Station {
        fn new(end: &mut LinkEnd, now: Instant, static_v4: bool) -> Station {
            let mut config = Config::new(EthernetAddress(DEVICE_MAC).into());
            config.random_seed = 99;
            let mut iface = Interface::new(config, end, smoltcp::time::Instant::ZERO);
            iface.update_ip_addrs(|a| {
                if static_v4 {
                    a.push(IpCidr::new(DEVICE_V4.into(), PREFIX_V4)).unwrap();
                }
                a.push(IpCidr::new(DEVICE_V6.into(), PREFIX_V6)).unwrap();
            });
            if static_v4 {
                iface
                    .routes_mut()
                    .add_default_ipv4_route(GATEWAY_V4)
                    .unwrap();
            }
            iface
                .routes_mut()
                .add_default_ipv6_route(GATEWAY_V6)
                .unwrap();
            Station {
                iface,
                sockets: SocketSet::new(Vec::new()),
                epoch: now,
            }
        }

        fn ts(&self, now: Instant) -> smoltcp::time::Instant {
            smoltcp::time::Instant::from_micros((now - self.epoch).as_micros() as i64)
        }

        fn tcp(&mut self, sock: &mut tcp::Socket<'static>) -> SocketHandle {
            let s = std::mem::replace(sock, tcp_socket());
            self.sockets.add(s)
        }

        fn get(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
            self.sockets.get_mut::<tcp::Socket<'static>>(h)
        }
    }

    /// The link, both ends, the gateway and the station.
    struct Net {
        link: Link,
        dev_end: LinkEnd,
        gw_end: LinkEnd,
        gw: Gateway,
        dev: Station,
    }

    impl Net {
        fn new(cfg: GatewayConfig, faults: LinkFaults, static_v4: bool) -> Net {
            let now = Instant::now();
            let mut dev_end = LinkEnd::new(faults.max_frame());
            let mut gw_end = LinkEnd::trusting_rx(faults.max_frame());
            let gw = Gateway::new(cfg, &mut gw_end, now).unwrap();
            let dev = Station::new(&mut dev_end, now, static_v4);
            Net {
                link: Link::new(faults),
                dev_end,
                gw_end,
                gw,
                dev,
            }
        }

        /// Runs both stations until `done` says so (called after each turn
        /// with the station), at most `limit`. True if done.
        fn run_until(
            &mut self,
            limit: Duration,
            mut done: impl FnMut(&mut Station) -> bool,
        ) -> bool {
            let start = Instant::now();
            loop {
                let now = Instant::now();
                shuttle(&mut self.link, &mut self.dev_end, &mut self.gw_end, now);
                let ts = self.dev.ts(now);
                self.dev
                    .iface
                    .poll(ts, &mut self.dev_end, &mut self.dev.sockets);
                let gw_next = self.gw.poll(&mut self.gw_end, now);
                shuttle(&mut self.link, &mut self.dev_end, &mut self.gw_end, now);
                let ts = self.dev.ts(now);
                self.dev
                    .iface
                    .poll(ts, &mut self.dev_end, &mut self.dev.sockets);
                if done(&mut self.dev) {
                    return true;
                }
                if start.elapsed() > limit {
                    return false;
                }
                let mut wait = Duration::from_millis(2);
                for t in [gw_next, self.link.next_delivery()].into_iter().flatten() {
                    wait = wait.min(t.saturating_duration_since(now));
                }
                if !self.dev_end.is_idle() || !self.gw_end.is_idle() {
                    wait = Duration::ZERO;
                }
                self.gw.wait(wait).unwrap();
            }
        }
    }

    /// Station socket `h`, listening on port 80 again if its last
    /// connection ended.
    fn listening(dev: &mut Station, h: SocketHandle) -> &mut tcp::Socket<'static> {
        let s = dev.get(h);
        if !s.is_open() {
            s.listen(80).unwrap();
        }
        s
    }

    /// Echo server sockets on the station's port 80: what comes in goes back;
    /// a FIN is answered with a FIN once everything is sent. Call each turn.
    fn echo(dev: &mut Station, handles: &[SocketHandle]) {
        for &h in handles {
            let s = listening(dev, h);
            while s.can_recv() && s.can_send() {
                let room = s.send_capacity() - s.send_queue();
                let data = s.recv(|b| {
                    let n = b.len().min(room);
                    (n, b[..n].to_vec())
                });
                let data = data.unwrap();
                assert_eq!(s.send_slice(&data).unwrap(), data.len());
                if data.is_empty() {
                    break;
                }
            }
            if !s.may_recv() && s.may_send() && s.recv_queue() == 0 {
                s.close();
            }
        }
    }

    fn echo_station(net: &mut Net, n: usize) -> Vec<SocketHandle> {
        (0..n)
            .map(|_| {
                let mut s = tcp_socket();
                s.listen(80).unwrap();
                net.dev.tcp(&mut s)
            })
            .collect()
    }

    /// A host connection to the forward on `addr`, its reads bounded by
    /// 20 s so that a stuck test fails instead of hanging.
    fn forward_stream(addr: SocketAddr) -> std::net::TcpStream {
        let s = std::net::TcpStream::connect(addr).expect("connect to the forward");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// A host client on `addr`: sends `len` patterned bytes, half-closes, and
    /// returns everything it read back until EOF.
    fn host_client(addr: SocketAddr, len: usize) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let s = forward_stream(addr);
            let mut w = s.try_clone().unwrap();
            let writer = std::thread::spawn(move || {
                let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                w.write_all(&data).unwrap();
                w.shutdown(std::net::Shutdown::Write).unwrap();
            });
            let mut back = Vec::new();
            let mut r = s;
            r.read_to_end(&mut back).expect("read the echo to EOF");
            writer.join().unwrap();
            back
        })
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn forward_echo(host: SocketAddr, faults: LinkFaults, len: usize) {
        let cfg = GatewayConfig {
            forwards: vec![Forward {
                host,
                device_port: 80,
            }],
            ..GatewayConfig::default()
        };
        let mut net = Net::new(cfg, faults, true);
        let handles = echo_station(&mut net, 2);
        let addr = net.gw.local_addrs()[0];
        assert_ne!(addr.port(), 0, "the bound port");
        let client = host_client(addr, len);
        let finished = net.run_until(Duration::from_secs(30), |dev| {
            echo(dev, &handles);
            client.is_finished()
        });
        assert!(
            finished,
            "the client did not finish: {:?}",
            net.link.stats()
        );
        assert!(
            client.join().unwrap() == pattern(len),
            "the echo came back whole"
        );
        // Both sides close and the gateway lets the connection go.
        for _ in 0..50 {
            if net.gw.connections() == 0 {
                break;
            }
            net.run_until(Duration::from_millis(100), |dev| {
                echo(dev, &handles);
                false
            });
        }
        assert_eq!(net.gw.connections(), 0);
    }

    #[test]
    fn a_host_connection_is_forwarded_to_the_device_and_back() {
        forward_echo("127.0.0.1:0".parse().unwrap(), LinkFaults::NONE, 300_000);
    }

    #[test]
    fn a_host_fin_that_comes_with_the_last_bytes_reaches_the_device() {
        // The host's last bytes and its FIN reach the gateway's host socket
        // between two polls: one readiness event carries both, and the read
        // of the bytes is short. Reading must go on to find the FIN.
        let (mut net, handles, addr) = forward_to_station(1);
        let mut host = forward_stream(addr);
        host.set_nonblocking(true).unwrap();
        let up = net.run_until(Duration::from_secs(5), |dev| {
            dev.get(handles[0]).state() == tcp::State::Established
        });
        assert!(up, "the forward did not reach the device");
        host.write_all(b"last words").unwrap();
        host.shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut back = Vec::new();
        let ended = net.run_until(Duration::from_secs(2), |dev| {
            echo(dev, &handles);
            let mut buf = [0u8; 64];
            loop {
                match host.read(&mut buf) {
                    Ok(0) => return true,
                    Ok(n) => back.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                    Err(e) => panic!("host read failed: {e}"),
                }
            }
        });
        assert_eq!(back, b"last words", "the echo");
        assert!(
            ended,
            "the device never saw the host's FIN, so never closed"
        );
    }

    #[test]
    fn a_burst_of_host_connections_reaches_a_device_with_one_listening_socket() {
        // Like the runtime's driver: one listening socket on port 80,
        // replaced as soon as it takes a connection. The gateway starts one
        // handshake at a time, so no SYN finds the pool empty.
        let (mut net, mut handles, addr) = forward_to_station(1);
        let clients: Vec<_> = (0..5).map(|i| host_client(addr, 1000 * (i + 1))).collect();
        let finished = net.run_until(Duration::from_secs(20), |dev| {
            if !handles
                .iter()
                .any(|&h| dev.get(h).state() == tcp::State::Listen)
            {
                let mut s = tcp_socket();
                s.listen(80).unwrap();
                handles.push(dev.tcp(&mut s));
            }
            echo(dev, &handles);
            clients.iter().all(|c| c.is_finished())
        });
        assert!(finished);
        for (i, c) in clients.into_iter().enumerate() {
            assert!(c.join().unwrap() == pattern(1000 * (i + 1)), "client {i}");
        }
    }

    /// A perfect link, a station with `sockets` listening on port 80, and
    /// the host address forwarded to it.
    fn forward_to_station(sockets: usize) -> (Net, Vec<SocketHandle>, SocketAddr) {
        let cfg = GatewayConfig {
            forwards: vec![Forward {
                host: "127.0.0.1:0".parse().unwrap(),
                device_port: 80,
            }],
            ..GatewayConfig::default()
        };
        let mut net = Net::new(cfg, LinkFaults::NONE, true);
        let handles = echo_station(&mut net, sockets);
        let addr = net.gw.local_addrs()[0];
        (net, handles, addr)
    }

    /// Station sockets on port 80 that answer whatever comes with `bye\n`
    /// and close first, as an HTTP server does after `Connection: close`.
    fn answer_and_close(dev: &mut Station, handles: &[SocketHandle]) {
        for &h in handles {
            let s = listening(dev, h);
            if s.can_recv() && s.may_send() {
                s.recv(|b| (b.len(), ())).unwrap();
                s.send_slice(b"bye\n").unwrap();
                s.close();
            }
        }
    }

    /// Runs the loop until the gateway has no connection and no socket
    /// left closing (at most 5 s).
    fn settle(net: &mut Net, handles: &[SocketHandle], station: fn(&mut Station, &[SocketHandle])) {
        for _ in 0..50 {
            if net.gw.connections() == 0 && net.gw.closing.is_empty() {
                return;
            }
            net.run_until(Duration::from_millis(100), |dev| {
                station(dev, handles);
                false
            });
        }
    }

    #[test]
    fn a_finished_connections_socket_serves_the_next_one() {
        let (mut net, handles, addr) = forward_to_station(2);
        let mut kept = None;
        for i in 0..4 {
            let client = std::thread::spawn(move || {
                let mut s = forward_stream(addr);
                s.write_all(b"hi\n").unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).expect("read to EOF");
                back
            });
            let finished = net.run_until(Duration::from_secs(20), |dev| {
                answer_and_close(dev, &handles);
                client.is_finished()
            });
            assert!(finished, "connection {i}");
            assert_eq!(client.join().unwrap(), b"bye\n", "connection {i}");
            settle(&mut net, &handles, answer_and_close);
            assert!(net.gw.closing.is_empty(), "connection {i} closed");
            // The first connection's socket is kept; each later one takes it
            // and gives it back, so the spares do not grow.
            let spare = net.gw.spare.len();
            assert!(spare >= 1, "connection {i}: its socket is kept");
            assert_eq!(*kept.get_or_insert(spare), spare, "connection {i}");
        }
    }

    #[test]
    fn a_socket_the_host_closed_first_leaves_time_wait_soon() {
        let (mut net, handles, addr) = forward_to_station(2);
        // The host client half-closes first: the gateway's socket ends in
        // TIME-WAIT, which smoltcp would keep for 10 s.
        let client = host_client(addr, 2000);
        let finished = net.run_until(Duration::from_secs(20), |dev| {
            echo(dev, &handles);
            client.is_finished()
        });
        assert!(finished);
        assert!(client.join().unwrap() == pattern(2000));
        let closed = Instant::now();
        settle(&mut net, &handles, echo);
        assert!(net.gw.closing.is_empty(), "the socket is gone");
        assert!(
            closed.elapsed() < Duration::from_secs(2),
            "{:?}",
            closed.elapsed()
        );
    }

    #[test]
    fn an_ipv6_host_listener_reaches_the_device_over_ipv6() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("SKIPPED: no IPv6 loopback here");
            return;
        }
        forward_echo("[::1]:0".parse().unwrap(), LinkFaults::NONE, 50_000);
    }

    #[test]
    fn forwarding_survives_a_lossy_reordering_link() {
        let faults = "loss=0.05,dup=0.02,reorder=0.03,delay=2ms,jitter=1ms,seed=3"
            .parse()
            .unwrap();
        forward_echo("127.0.0.1:0".parse().unwrap(), faults, 100_000);
    }

    #[test]
    fn a_small_mtu_and_bandwidth_limit_still_carry_everything() {
        let faults = "mtu=576,bw=4MB,seed=1".parse().unwrap();
        forward_echo("127.0.0.1:0".parse().unwrap(), faults, 100_000);
    }

    /// An echo server on the host; returns its address.
    fn host_echo() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0; 4096];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// The station connects to `to`, sends a line, and reads it back.
    fn device_roundtrip(net: &mut Net, to: (IpAddr, u16)) -> Result<Vec<u8>, String> {
        let mut s = tcp_socket();
        s.connect(net.dev.iface.context(), to, 50_000).unwrap();
        let h = net.dev.tcp(&mut s);
        let mut sent = false;
        let mut back = Vec::new();
        let mut was_established = false;
        let mut refused = false;
        net.run_until(Duration::from_secs(10), |dev| {
            let s = dev.get(h);
            was_established |= s.state() == tcp::State::Established;
            if s.state() == tcp::State::Closed {
                refused = !was_established;
                return true;
            }
            if s.can_send() && !sent {
                s.send_slice(b"hello, host\n").unwrap();
                sent = true;
            }
            if s.can_recv() {
                s.recv(|b| {
                    back.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if back.len() >= 12 {
                s.close();
            }
            back.len() >= 12
        });
        let state = net.dev.get(h).state();
        net.dev.sockets.remove(h);
        if refused {
            return Err("reset before the handshake".into());
        }
        if back.is_empty() {
            return Err(format!("no answer (socket {state})"));
        }
        Ok(back)
    }

    #[test]
    fn the_devices_connections_to_the_gateway_and_loopback_reach_the_host() {
        let echo_addr = host_echo();
        let mut cfg = GatewayConfig::default();
        cfg.relay.insert(7, echo_addr);
        let mut net = Net::new(cfg, LinkFaults::NONE, true);
        let port = echo_addr.port();
        for to in [
            (IpAddr::V4(GATEWAY_V4), port),
            (IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            (IpAddr::V4(GATEWAY_V4), 7),
        ] {
            assert_eq!(
                device_roundtrip(&mut net, to).as_deref(),
                Ok(&b"hello, host\n"[..]),
                "{to:?}"
            );
        }
    }

    #[test]
    fn the_devices_ipv6_connection_to_the_gateway_reaches_the_hosts_ipv6_loopback() {
        let Ok(l) = std::net::TcpListener::bind("[::1]:0") else {
            eprintln!("SKIPPED: no IPv6 loopback here");
            return;
        };
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0; 64];
            let n = s.read(&mut buf).unwrap();
            s.write_all(&buf[..n]).unwrap();
        });
        let mut net = Net::new(GatewayConfig::default(), LinkFaults::NONE, true);
        assert_eq!(
            device_roundtrip(&mut net, (IpAddr::V6(GATEWAY_V6), port)).as_deref(),
            Ok(&b"hello, host\n"[..])
        );
    }

    #[test]
    fn a_refused_host_connection_resets_the_devices_handshake() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut net = Net::new(GatewayConfig::default(), LinkFaults::NONE, true);
        assert_eq!(
            device_roundtrip(&mut net, (IpAddr::V4(GATEWAY_V4), port)),
            Err("reset before the handshake".into())
        );
        // Without host_loopback, an unmapped port is refused too, and other
        // addresses never reach the host.
        let cfg = GatewayConfig {
            host_loopback: false,
            ..GatewayConfig::default()
        };
        let echo_addr = host_echo();
        let mut net = Net::new(cfg, LinkFaults::NONE, true);
        for to in [
            (IpAddr::V4(GATEWAY_V4), echo_addr.port()),
            (IpAddr::V4(Ipv4Addr::new(10, 0, 2, 99)), echo_addr.port()),
        ] {
            assert_eq!(
                device_roundtrip(&mut net, to),
                Err("reset before the handshake".into()),
                "{to:?}"
            );
        }
        assert_eq!(net.gw.connections(), 0);
    }

    #[test]
    fn dhcp_gives_the_device_its_address_router_and_dns() {
        let mut net = Net::new(GatewayConfig::default(), LinkFaults::NONE, false);
        let h = net.dev.sockets.add(dhcpv4::Socket::new());
        let mut got = None;
        net.run_until(Duration::from_secs(10), |dev| {
            if let Some(dhcpv4::Event::Configured(c)) =
                dev.sockets.get_mut::<dhcpv4::Socket<'_>>(h).poll()
            {
                got = Some((
                    c.address,
                    c.router,
                    c.dns_servers.iter().copied().collect::<Vec<_>>(),
                ));
            }
            got.is_some()
        });
        assert_eq!(
            got,
            Some((
                Ipv4Cidr::new(DEVICE_V4, PREFIX_V4),
                Some(GATEWAY_V4),
                vec![GATEWAY_V4]
            ))
        );
    }

    #[test]
    fn dns_answers_the_table_and_nxdomain_otherwise() {
        let mut cfg = GatewayConfig::default();
        cfg.dns.insert(
            "echo.local".into(),
            vec![IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2))],
        );
        let mut net = Net::new(cfg, LinkFaults::NONE, true);
        let servers = [IpAddress::from(GATEWAY_V4)];
        let queries: Vec<Option<dns_socket::DnsQuery>> = vec![None, None, None];
        let h = net
            .dev
            .sockets
            .add(dns_socket::Socket::new(&servers, queries));
        let ask = |net: &mut Net, name: &str, kind: DnsQueryType| {
            let q = {
                let cx = net.dev.iface.context();
                net.dev
                    .sockets
                    .get_mut::<dns_socket::Socket<'_>>(h)
                    .start_query(cx, name, kind)
                    .unwrap()
            };
            let mut result = None;
            net.run_until(Duration::from_secs(10), |dev| {
                match dev
                    .sockets
                    .get_mut::<dns_socket::Socket<'_>>(h)
                    .get_query_result(q)
                {
                    Err(dns_socket::GetQueryResultError::Pending) => false,
                    Ok(addrs) => {
                        result = Some(Ok(addrs
                            .iter()
                            .map(|a| IpAddr::from(*a))
                            .collect::<Vec<_>>()));
                        true
                    }
                    Err(e) => {
                        result = Some(Err(e));
                        true
                    }
                }
            });
            result.expect("an answer in time")
        };
        let gw4 = IpAddr::V4(GATEWAY_V4);
        assert_eq!(ask(&mut net, "gateway", DnsQueryType::A), Ok(vec![gw4]));
        assert_eq!(ask(&mut net, "echo.local", DnsQueryType::A), Ok(vec![gw4]));
        assert_eq!(
            ask(&mut net, "host.wasmgate", DnsQueryType::Aaaa),
            Ok(vec![IpAddr::V6(GATEWAY_V6)])
        );
        assert_eq!(
            ask(&mut net, "nothing.example", DnsQueryType::A),
            Err(dns_socket::GetQueryResultError::Failed)
        );
    }

    #[test]
    fn syns_are_recognised_in_frames() {
        // A SYN as the station sends it, captured from the link.
        let mut net = Net::new(GatewayConfig::default(), LinkFaults::NONE, true);
        let mut s = tcp_socket();
        s.connect(net.dev.iface.context(), (GATEWAY_V4, 4242), 50_001)
            .unwrap();
        net.dev.tcp(&mut s);
        // Resolve the gateway's MAC first (ARP), then look at the SYN.
        let mut syn = None;
        net.run_until(Duration::from_millis(200), |_| false);
        let ts = net.dev.ts(Instant::now());
        let mut s2 = tcp_socket();
        s2.connect(net.dev.iface.context(), (GATEWAY_V4, 4243), 50_002)
            .unwrap();
        net.dev.tcp(&mut s2);
        net.dev
            .iface
            .poll(ts, &mut net.dev_end, &mut net.dev.sockets);
        while let Some(frame) = net.dev_end.take_sent() {
            if let Some(found) = parse_syn(&frame) {
                syn = Some(found);
            }
        }
        assert_eq!(
            syn,
            Some((IpAddr::V4(DEVICE_V4), 50_002, IpAddr::V4(GATEWAY_V4), 4243))
        );
        assert_eq!(parse_syn(b"short"), None);
    }

    /// Sends `data` on station socket `h` as its send buffer takes it
    /// (`sent` bytes so far), and keeps the connection open. Call each turn.
    fn send_through_small_window(
        dev: &mut Station,
        h: SocketHandle,
        data: &[u8],
        sent: &mut usize,
    ) {
        let s = dev.get(h);
        while *sent < data.len() && s.can_send() {
            let n = s.send_slice(&data[*sent..]).unwrap();
            if n == 0 {
                break;
            }
            *sent += n;
        }
    }

    #[test]
    fn a_message_sent_in_several_windows_reaches_the_host_in_one_write() {
        let (mut net, _, addr) = forward_to_station(0);
        let mut small = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 4096]),
            tcp::SocketBuffer::new(vec![0; 4096]),
        );
        small.listen(80).unwrap();
        let h = net.dev.tcp(&mut small);
        // 16 KiB through a 4 KiB send buffer: four windows, each waiting
        // for the gateway's ACK of the one before.
        const LEN: usize = 16 * 1024;
        let client = std::thread::spawn(move || {
            let mut s = forward_stream(addr);
            let mut buf = vec![0; 64 * 1024];
            let first = s.read(&mut buf).unwrap();
            let mut got = buf[..first].to_vec();
            while got.len() < LEN {
                let n = s.read(&mut buf).unwrap();
                assert_ne!(n, 0, "EOF after {} bytes", got.len());
                got.extend_from_slice(&buf[..n]);
            }
            (first, got)
        });
        let (data, mut sent) = (pattern(LEN), 0);
        let finished = net.run_until(Duration::from_secs(20), |dev| {
            send_through_small_window(dev, h, &data, &mut sent);
            client.is_finished()
        });
        assert!(finished, "the client did not read {LEN} bytes");
        let (first, got) = client.join().unwrap();
        assert!(got == pattern(LEN), "the bytes came in order");
        assert_eq!(first, LEN, "the host's first read had the whole message");
    }

    #[test]
    fn bytes_held_when_the_device_resets_still_reach_the_host() {
        let (mut net, _, addr) = forward_to_station(0);
        let mut s = tcp_socket();
        s.listen(80).unwrap();
        let h = net.dev.tcp(&mut s);
        const LEN: usize = 8 * 1024;
        let client = std::thread::spawn(move || {
            let mut s = forward_stream(addr);
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got); // a FIN or a reset ends it
            got
        });
        // 8 KiB in one window (held: more than two segments), and a reset
        // right behind it, before the gateway's quiet polls would have let
        // the bytes go: the station's poll after the send puts the window
        // on the link, the next one the reset.
        let mut phase = 0;
        let finished = net.run_until(Duration::from_secs(20), |dev| {
            let s = dev.get(h);
            match phase {
                0 if s.may_send() => {
                    assert_eq!(s.send_slice(&pattern(LEN)).unwrap(), LEN);
                    phase = 1;
                }
                1 => {
                    s.abort();
                    phase = 2;
                }
                _ => {}
            }
            client.is_finished()
        });
        assert!(finished, "the host connection did not end");
        let got = client.join().unwrap();
        assert_eq!(
            got.len(),
            LEN,
            "every byte the device sent before its reset"
        );
        assert!(got == pattern(LEN));
    }

    #[test]
    fn hold_releases_small_answers_at_once_and_bulk_after_a_quiet_round_trip() {
        // A small answer: written in the poll it arrives in.
        let mut h = Hold::default();
        assert!(h.release(100, false));
        assert!(h.release(BULK - 1, false));

        // Windows of 4 KiB every other poll: held until two polls in a row
        // bring nothing.
        let mut h = Hold::default();
        assert!(!h.release(4096, false), "first window");
        assert!(!h.release(4096, false), "the ACK's poll");
        assert!(!h.release(8192, false), "second window");
        assert!(!h.release(8192, false));
        assert!(!h.release(12_288, false), "third window");
        assert!(!h.release(12_288, false), "one quiet poll");
        assert!(
            h.release(12_288, false),
            "two quiet polls: the device is done"
        );

        // Never more than HOLD_MAX, and not past the device's FIN.
        let mut h = Hold::default();
        assert!(!h.release(HOLD_MAX - 1, false));
        assert!(h.release(HOLD_MAX + 4096, false));
        let mut h = Hold::default();
        assert!(h.release(4096, true));
    }
}
