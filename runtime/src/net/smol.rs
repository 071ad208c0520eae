//! The smoltcp driver: one smoltcp `Interface` over any `phy::Device`, a
//! fixed number of sockets ([`Sockets`]: each TCP socket in a set of its own,
//! picked by the frame's addresses and ports), and the same calls into the
//! [`Context`] as the OS-socket driver. Time comes from the caller; nothing
//! here blocks.
//!
//! smoltcp has no accept queue: a listening socket *becomes* the connection it
//! accepts. Each listener port keeps a small pool of listening sockets
//! ([`NetConfig::listen_backlog`]), refilled while the driver has room for
//! sockets; a SYN that finds no listening socket is answered with a reset by
//! smoltcp. Sockets are only added below the capacity (see
//! [`SmolDriver::new`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, PollIngressSingleResult};
use smoltcp::phy::Device;
use smoltcp::socket::{dhcpv4, dns, tcp};
use smoltcp::wire::{
    DnsQueryType, EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address,
    Ipv4Cidr,
};

use super::sockets::{self, Handle as SocketHandle, Sockets};
use crate::context::{ConnId, Context};

/// How long a closed connection's socket may take to finish the TCP close
/// (counted again whenever the peer acknowledges more of our last bytes)
/// before it is aborted and its slot reused. As `OsDriver`'s linger.
const LINGER: Duration = Duration::from_secs(2);
/// Local ports of outgoing connections (the IANA dynamic range).
const EPHEMERAL_FIRST: u16 = 49152;
const EPHEMERAL_COUNT: u16 = 16384;
/// Most rounds of taking frames in and serving the context in one
/// [`SmolDriver::turn`]; more work waits for the next call (the returned
/// deadline is then "now").
const MAX_ROUNDS: usize = 8;

/// How the interface gets its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Setup {
    /// A fixed address, and the default gateway if there is one.
    Static {
        /// The address with its prefix length, e.g. `192.168.1.20/24`.
        address: Ipv4Cidr,
        /// The default route.
        gateway: Option<Ipv4Address>,
    },
    /// An address, a default route and DNS servers from a DHCP server.
    Dhcp,
    /// No IPv4 (an IPv6-only device).
    None,
}

/// The network side of a device: addresses and the socket budget. The
/// connection limit itself is the context's `limits.max_connections`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The Ethernet address.
    pub mac: [u8; 6],
    /// IPv4: static, DHCP or none.
    pub ipv4: Ipv4Setup,
    /// A static IPv6 address and the default router, if any. Built with the
    /// `ipv6` cargo feature (lwIP's `LWIP_ENABLE_IPV6`).
    #[cfg(feature = "ipv6")]
    pub ipv6: Option<(smoltcp::wire::Ipv6Cidr, Option<smoltcp::wire::Ipv6Address>)>,
    /// DNS servers for client connections by name (DHCP's come first when it
    /// offers some). Up to four are used, each tried in turn when the one
    /// before does not answer.
    pub dns_servers: Vec<IpAddress>,
    /// Listening sockets kept open per listener port: connections that can
    /// be in their TCP handshake on a port at once (a SYN beyond them is
    /// reset). Default 2.
    pub listen_backlog: usize,
    /// Sockets beyond `max_connections` and the listening pools, so that a
    /// client over the limit still reaches a socket and reads `503` with
    /// `Retry-After` instead of a reset. Default 1.
    pub reserve_sockets: usize,
    /// Receive buffer of each TCP socket, in bytes: the most the peer may send
    /// ahead (the TCP window). Default 4096. The driver also keeps one
    /// buffer of at most this size for bytes that wrap around a socket's
    /// ring (allocated the first time they do).
    pub tcp_rx_buffer: usize,
    /// Send buffer of each TCP socket, in bytes: unacknowledged data in
    /// flight. Default 4096.
    pub tcp_tx_buffer: usize,
    /// Seed of smoltcp's generator (TCP initial sequence numbers, DNS and
    /// DHCP ids, the first ephemeral port). A device should set it from its
    /// hardware RNG at boot; [`small_soc`](Self::small_soc) derives it from
    /// the MAC, which is repeatable (what a simulator wants) but predictable.
    pub random_seed: u64,
}

impl NetConfig {
    /// The profile of a small Wi-Fi SoC (lwIP defaults of the ESP class of
    /// parts): 2 listening sockets per port, 1 reserve socket, 4 KiB receive
    /// and 4 KiB send buffer per TCP socket (lwIP's `TCP_WND` and
    /// `TCP_SND_BUF` are 4 x MSS ~ 5.7 KiB there; 4 KiB keeps the buffers a
    /// power of two). With the default 8 connections and one listener that is
    /// 8 + 2 + 1 = 11 TCP sockets, 88 KiB of socket buffers.
    pub const fn small_soc(mac: [u8; 6], ipv4: Ipv4Setup) -> Self {
        NetConfig {
            mac,
            ipv4,
            #[cfg(feature = "ipv6")]
            ipv6: None,
            dns_servers: Vec::new(),
            listen_backlog: 2,
            reserve_sockets: 1,
            tcp_rx_buffer: 4096,
            tcp_tx_buffer: 4096,
            random_seed: seed_from_mac(mac),
        }
    }
}

/// FNV-1a over the MAC: a seed that differs between devices.
const fn seed_from_mac(mac: [u8; 6]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut i = 0;
    while i < mac.len() {
        hash ^= mac[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// What one of our TCP sockets is for.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// In the listening pool of a listener (LISTEN or SYN-RECEIVED).
    Pool { listener: usize },
    /// A connection of the context (accepted, or outgoing).
    Conn {
        id: ConnId,
        /// An outgoing connection still in SYN-SENT.
        connecting: bool,
        /// The context was told about the peer's FIN.
        fin: bool,
    },
    /// Accepted over the limit: sending `Context::BUSY_RESPONSE`.
    Busy { sent: usize },
    /// Closed towards the context; the TCP close finishes.
    Closing {
        until: Instant,
        /// Bytes still unacknowledged when `until` was set.
        queued: usize,
    },
    /// Closed, and both FINs through (TIME-WAIT): freed once the ACK of the
    /// peer's FIN is out (see [`close`]), that is at the first pass after a
    /// completed sending pass ([`SmolDriver::sends`] past `marked_at`).
    /// smoltcp would keep it 10 s and meanwhile drop a SYN that reuses its
    /// addresses and ports, so a client that comes back from the same port
    /// (the simulator's gateway cycles through its 16,384 past 8,000
    /// connections a second) would wait a second for the SYN's
    /// retransmission. lwIP, too, frees TIME-WAIT blocks early when it needs
    /// them.
    TimeWait { marked_at: u64 },
    /// Aborted: freed once the reset is out, as [`Role::TimeWait`].
    Aborted { marked_at: u64 },
}

#[derive(Debug)]
struct Tcp {
    handle: SocketHandle,
    role: Role,
}

/// Starts the TCP close of a connection's socket (FIN after the queued
/// bytes; see [`sockets::close`]). From now on it acknowledges at once:
/// smoltcp answers a bare FIN at once anyway, but delays the ACK of data by
/// 10 ms, and a peer's last bytes may come with its FIN. So the ACK of the
/// peer's FIN leaves with the segments sent in the turn that takes it, and
/// the socket can go in the next pass ([`Role::TimeWait`]).
fn close(socket: &mut tcp::Socket<'_>, now: Instant) -> Role {
    sockets::close(socket);
    socket.set_ack_delay(None);
    Role::Closing {
        until: now + LINGER,
        queued: socket.send_queue(),
    }
}

/// A client connection by name, waiting for its DNS answer. (Not `Debug`:
/// smoltcp's `QueryHandle` is not.)
struct Resolving {
    id: ConnId,
    host: String,
    port: u16,
    query: dns::QueryHandle,
}

/// Serves a [`Context`] on a smoltcp interface.
pub struct SmolDriver {
    iface: Interface,
    sockets: Sockets,
    /// Sockets the driver may hold at once.
    capacity: usize,
    tcp: Vec<Tcp>,
    /// Listener ports, in config order.
    ports: Vec<u16>,
    listen_backlog: usize,
    tcp_rx_buffer: usize,
    tcp_tx_buffer: usize,
    /// Received bytes that wrap around a socket's ring, made one piece for
    /// the context (at most `tcp_rx_buffer` bytes; see `receive_piece`).
    rx_scratch: Vec<u8>,
    /// `std` time of smoltcp's zero.
    epoch: Instant,
    dhcp: Option<SocketHandle>,
    dns: Option<SocketHandle>,
    static_dns: Vec<IpAddress>,
    ipv4: Option<Ipv4Cidr>,
    resolving: Vec<Resolving>,
    /// Outgoing connections with an address, waiting for a free socket.
    waiting: Vec<(ConnId, IpEndpoint)>,
    /// The connections a flush writes, kept between flushes for its
    /// capacity.
    flushing: Vec<ConnId>,
    /// Connections the next flush writes whatever the context says: bytes
    /// left that their socket had no room for, connections still
    /// connecting, and bytes queued while a connection waits for its socket.
    retry: Vec<ConnId>,
    next_port: u16,
    /// The context's next deadline, as the last [`SmolDriver::turn`] saw it.
    ctx_due: Option<Instant>,
    /// Sending passes completed so far (`Sockets::egress` without a frame
    /// the device refused): a socket marked in TIME-WAIT or aborted before
    /// the current count has had its last segment sent. (Such a socket was
    /// changed or took a frame in, so the pass asked it: its last segment
    /// waits on no timer, as `close` turns the delayed ACK off.)
    sends: u64,
}

impl std::fmt::Debug for SmolDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmolDriver")
            .field("ipv4", &self.ipv4)
            .field("sockets_in_use", &self.sockets_in_use())
            .field("tcp", &self.tcp)
            .field(
                "resolving",
                &self.resolving.iter().map(|r| &r.host).collect::<Vec<_>>(),
            )
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

impl SmolDriver {
    /// One interface over `device`; listening sockets for every
    /// `ctx.config().listeners[i].port`.
    ///
    /// The driver holds at most `max_connections + listeners * listen_backlog +
    /// reserve_sockets` TCP sockets, plus one DHCP socket with
    /// [`Ipv4Setup::Dhcp`] and one DNS socket when there can be DNS servers
    /// (DHCP, or `dns_servers` not empty).
    pub fn new<D: Device + ?Sized>(
        ctx: &Context,
        net: NetConfig,
        device: &mut D,
        now: Instant,
    ) -> Self {
        let mut mac = net.mac;
        if mac[0] & 1 != 0 {
            // smoltcp panics on a multicast MAC; a unicast one is what was meant.
            tracing::warn!(
                "MAC {:02x?} is a multicast address: clearing its group bit",
                mac
            );
            mac[0] &= !1;
        }
        let mut config = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = net.random_seed;
        let mut iface = Interface::new(config, device, smoltcp::time::Instant::ZERO);
        let mut ipv4 = None;
        if let Ipv4Setup::Static { address, gateway } = net.ipv4 {
            ipv4 = Some(address);
            iface.update_ip_addrs(|addrs| {
                if addrs.push(IpCidr::Ipv4(address)).is_err() {
                    tracing::warn!(%address, "no room for the IPv4 address");
                }
            });
            if let Some(gateway) = gateway
                && iface.routes_mut().add_default_ipv4_route(gateway).is_err()
            {
                tracing::warn!(%gateway, "no room for the IPv4 default route");
            }
        }
        #[cfg(feature = "ipv6")]
        if let Some((address, router)) = net.ipv6 {
            iface.update_ip_addrs(|addrs| {
                if addrs.push(IpCidr::Ipv6(address)).is_err() {
                    tracing::warn!(%address, "no room for the IPv6 address");
                }
            });
            if let Some(router) = router
                && iface.routes_mut().add_default_ipv6_route(router).is_err()
            {
                tracing::warn!(%router, "no room for the IPv6 default route");
            }
        }

        let dhcp_wanted = net.ipv4 == Ipv4Setup::Dhcp;
        let dns_wanted = dhcp_wanted || !net.dns_servers.is_empty();
        let ports: Vec<u16> = ctx.config().listeners.iter().map(|l| l.port).collect();
        let max_connections = ctx.config().limits.max_connections;
        let capacity = max_connections
            + ports.len() * net.listen_backlog
            + net.reserve_sockets
            + usize::from(dhcp_wanted)
            + usize::from(dns_wanted);
        // Each TCP socket has a set of its own (see `Sockets`): smoltcp
        // matches a frame against the one socket its addresses and ports
        // pick, not every socket in turn. Sockets are only added below the
        // capacity (see `has_room`).
        let mut sockets = Sockets::new();
        let dhcp = dhcp_wanted.then(|| sockets.add(dhcpv4::Socket::new()));
        let dns = dns_wanted.then(|| {
            let queries: Vec<Option<dns::DnsQuery>> =
                (0..max_connections.max(1)).map(|_| None).collect();
            sockets.add(dns::Socket::new(&net.dns_servers, queries))
        });
        let mut driver = SmolDriver {
            iface,
            sockets,
            capacity,
            tcp: Vec::with_capacity(capacity),
            ports,
            listen_backlog: net.listen_backlog,
            // smoltcp refuses a receive buffer over 1 GiB (its window scale).
            tcp_rx_buffer: net.tcp_rx_buffer.clamp(1, 1 << 30),
            tcp_tx_buffer: net.tcp_tx_buffer.max(1),
            rx_scratch: Vec::new(),
            epoch: now,
            dhcp,
            dns,
            static_dns: net.dns_servers,
            ipv4,
            resolving: Vec::new(),
            waiting: Vec::new(),
            flushing: Vec::new(),
            retry: Vec::new(),
            next_port: EPHEMERAL_FIRST + (net.random_seed % u64::from(EPHEMERAL_COUNT)) as u16,
            ctx_due: None,
            sends: 0,
        };
        driver.refill_pools();
        tracing::info!(
            capacity,
            ipv4 = ?driver.ipv4,
            "smoltcp interface up, listening on ports {:?}",
            driver.ports
        );
        driver
    }

    /// One turn: poll the interface, move bytes between the sockets and the
    /// context both ways, run the context's timers, and return when this
    /// wants to run next (`None`: only when the device has a frame). Call it
    /// again when the device receives a frame, or at the returned time.
    pub fn poll<D: Device + ?Sized>(
        &mut self,
        ctx: &mut Context,
        device: &mut D,
        now: Instant,
    ) -> Option<Instant> {
        if self.turn(ctx, device, now) {
            return Some(now);
        }
        self.next_wake(now)
    }

    /// [`poll`](Self::poll)'s work without working out when to run next, for
    /// a loop that runs again at once anyway (the simulator's, while frames
    /// are on the link): finding the next deadline asks every socket.
    /// Returns true if work is left for a call right away.
    pub fn turn<D: Device + ?Sized>(
        &mut self,
        ctx: &mut Context,
        device: &mut D,
        now: Instant,
    ) -> bool {
        let timestamp = self.smol_time(now);
        // Every frame the device has is taken in first, and the segments go
        // out after the context answered: an acknowledgement rides on the
        // answer's first segment instead of going ahead alone. A round that
        // took no frame in and changed nothing has nothing new to send, so
        // after the first only rounds that did make a sending pass.
        self.iface.poll_maintenance(timestamp);
        let mut rounds = 0;
        loop {
            let mut took = false;
            while self.sockets.ingress(&mut self.iface, timestamp, device)
                != PollIngressSingleResult::None
            {
                took = true;
            }
            let mut progress = self.dhcp_events();
            progress |= self.dns_results(ctx, now);
            progress |= self.service_sockets(ctx, now);
            self.ctx_due = ctx.service(now);
            progress |= self.flush(ctx, now);
            progress |= self.start_waiting(ctx, now);
            progress |= self.refill_pools();
            if rounds == 0 || progress || took {
                // A pass stops when the device has no room: then some
                // sockets have not sent, and nothing counts as out.
                if self
                    .sockets
                    .egress(&mut self.iface, timestamp, device)
                    .complete
                {
                    self.sends += 1;
                }
            }
            rounds += 1;
            if !progress {
                return false;
            }
            if rounds == MAX_ROUNDS {
                return true;
            }
        }
    }

    /// When the device wants to run next after the last
    /// [`turn`](Self::turn), frames aside: the context's deadline, smoltcp's
    /// timers, the end of a closing socket's linger.
    pub fn next_wake(&mut self, now: Instant) -> Option<Instant> {
        let timestamp = self.smol_time(now);
        let mut next = self.ctx_due;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        if let Some(t) = self.sockets.poll_at(&mut self.iface, timestamp) {
            at(self.std_time(t).max(now));
        }
        for tcp in &self.tcp {
            if let Role::Closing { until, .. } = tcp.role {
                at(until.max(now));
            }
        }
        next
    }

    /// The current IPv4 address (static, or from DHCP once bound).
    pub fn ipv4(&self) -> Option<Ipv4Cidr> {
        self.ipv4
    }

    /// Sockets in use and the most the driver holds, for logs and tests.
    pub fn sockets_in_use(&self) -> (usize, usize) {
        (self.sockets.len(), self.capacity)
    }

    fn smol_time(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    fn std_time(&self, t: smoltcp::time::Instant) -> Instant {
        self.epoch + Duration::from_micros(u64::try_from(t.total_micros()).unwrap_or(0))
    }

    // ---- addresses: DHCP and DNS ----

    /// Applies what the DHCP client learnt. Returns true if something changed.
    fn dhcp_events(&mut self) -> bool {
        let Some(handle) = self.dhcp else {
            return false;
        };
        let lease = match self.sockets.get_mut::<dhcpv4::Socket<'_>>(handle).poll() {
            None => return false,
            Some(dhcpv4::Event::Configured(c)) => Some((c.address, c.router, c.dns_servers)),
            Some(dhcpv4::Event::Deconfigured) => None,
        };
        self.iface.update_ip_addrs(|addrs| {
            addrs.retain(|cidr| IpAddr::from(cidr.address()).is_ipv6());
        });
        self.iface.routes_mut().remove_default_ipv4_route();
        let mut servers: Vec<IpAddress> = Vec::new();
        match lease {
            Some((address, router, dns_servers)) => {
                tracing::info!(
                    %address,
                    router = ?router,
                    dns = ?dns_servers,
                    "DHCP lease"
                );
                self.iface.update_ip_addrs(|addrs| {
                    if addrs.push(IpCidr::Ipv4(address)).is_err() {
                        tracing::warn!(%address, "no room for the DHCP address");
                    }
                });
                if let Some(router) = router {
                    let _ = self.iface.routes_mut().add_default_ipv4_route(router);
                }
                servers.extend(dns_servers.iter().map(|a| IpAddress::Ipv4(*a)));
                self.ipv4 = Some(address);
            }
            None => {
                tracing::info!("DHCP lease lost");
                self.ipv4 = None;
            }
        }
        servers.extend(self.static_dns.iter().copied());
        if let Some(dns) = self.dns {
            self.sockets
                .get_mut::<dns::Socket<'_>>(dns)
                .update_servers(&servers);
        }
        true
    }

    /// Moves finished DNS queries on to connecting (or failing).
    fn dns_results(&mut self, ctx: &mut Context, now: Instant) -> bool {
        let Some(handle) = self.dns else {
            return false;
        };
        let mut progress = false;
        let mut i = 0;
        while i < self.resolving.len() {
            let r = &self.resolving[i];
            let result = self
                .sockets
                .get_mut::<dns::Socket<'_>>(handle)
                .get_query_result(r.query);
            let outcome = match result {
                Err(dns::GetQueryResultError::Pending) => {
                    i += 1;
                    continue;
                }
                Ok(addrs) => addrs
                    .first()
                    .map(|a| endpoint(IpAddr::from(*a), r.port))
                    .unwrap_or_else(|| Err(format!("cannot resolve `{}`", r.host))),
                Err(dns::GetQueryResultError::Failed) => {
                    Err(format!("cannot resolve `{}`", r.host))
                }
            };
            let r = self.resolving.swap_remove(i);
            progress = true;
            match outcome {
                Ok(remote) => {
                    tracing::debug!(wsi = r.id.wsi(), "`{}` is {}", r.host, remote.addr);
                    self.waiting.push((r.id, remote));
                }
                Err(why) => fail_connect(ctx, r.id, &why, now),
            }
        }
        progress
    }

    // ---- sockets to the context ----

    /// Every TCP socket's news: accepted connections, connects that completed
    /// or failed, received bytes, FINs and resets, finished closes.
    fn service_sockets(&mut self, ctx: &mut Context, now: Instant) -> bool {
        let mut progress = false;
        let mut i = 0;
        while i < self.tcp.len() {
            let (keep, moved) = self.service_socket(ctx, i, now);
            progress |= moved;
            if keep {
                i += 1;
            } else {
                let tcp = self.tcp.swap_remove(i);
                self.sockets.remove(tcp.handle);
                progress = true;
            }
        }
        progress
    }

    /// Returns (keep the socket, something moved).
    ///
    /// Reads the socket through [`Sockets::get`], and takes it with
    /// `get_mut` only to change it: the next sending pass asks a socket taken
    /// that way, and a turn should not ask every idle one.
    fn service_socket(&mut self, ctx: &mut Context, i: usize, now: Instant) -> (bool, bool) {
        let Tcp { handle, role } = self.tcp[i];
        let socket = self.sockets.get::<tcp::Socket<'_>>(handle);
        let state = socket.state();
        match role {
            Role::Pool { listener } => match state {
                tcp::State::Listen | tcp::State::SynReceived => (true, false),
                tcp::State::Closed | tcp::State::TimeWait => (false, true),
                _ => {
                    let peer = socket.remote_endpoint().map_or(
                        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                        to_socket_addr,
                    );
                    self.tcp[i].role = match ctx.accept(listener, peer, now) {
                        Ok(id) => Role::Conn {
                            id,
                            connecting: false,
                            fin: false,
                        },
                        Err(e) => {
                            tracing::debug!(%peer, "over the limit ({e:?}): answering 503");
                            Role::Busy { sent: 0 }
                        }
                    };
                    let (keep, _) = self.service_socket(ctx, i, now);
                    (keep, true)
                }
            },
            Role::Conn {
                id,
                connecting: true,
                fin,
            } => match state {
                tcp::State::SynSent | tcp::State::SynReceived => (true, false),
                tcp::State::Closed => {
                    fail_connect(ctx, id, "connection refused", now);
                    (false, true)
                }
                _ => {
                    self.tcp[i].role = Role::Conn {
                        id,
                        connecting: false,
                        fin,
                    };
                    tracing::debug!(wsi = id.wsi(), "connected");
                    ctx.connected(id, now);
                    let (keep, _) = self.service_socket(ctx, i, now);
                    (keep, true)
                }
            },
            Role::Conn { id, fin, .. } => {
                let mut moved = false;
                let mut space = ctx.rx_space(id);
                let socket: &tcp::Socket<'_> = if space > 0 && socket.can_recv() {
                    let socket = self.sockets.get_mut::<tcp::Socket<'_>>(handle);
                    while space > 0 && socket.can_recv() {
                        let rx = &mut self.rx_scratch;
                        if receive_piece(ctx, id, socket, space, rx, now) == 0 {
                            break;
                        }
                        moved = true;
                        space = ctx.rx_space(id);
                    }
                    socket
                } else {
                    socket
                };
                let peer_fin = matches!(
                    state,
                    tcp::State::CloseWait
                        | tcp::State::LastAck
                        | tcp::State::Closing
                        | tcp::State::TimeWait
                );
                if state == tcp::State::Closed {
                    // Reset by the peer (or smoltcp gave up on it).
                    tracing::debug!(wsi = id.wsi(), "connection reset");
                    ctx.close(id, now);
                    return (false, true);
                }
                if peer_fin && !fin && socket.recv_queue() == 0 {
                    self.tcp[i].role = Role::Conn {
                        id,
                        connecting: false,
                        fin: true,
                    };
                    ctx.peer_closed(id, now);
                    moved = true;
                }
                (true, moved)
            }
            Role::Busy { mut sent } => {
                discard_input(&mut self.sockets, handle);
                if state == tcp::State::Closed {
                    return (false, true);
                }
                let busy = Context::BUSY_RESPONSE;
                let socket = self.sockets.get::<tcp::Socket<'_>>(handle);
                if sent < busy.len() && socket.can_send() {
                    let socket = self.sockets.get_mut::<tcp::Socket<'_>>(handle);
                    sent += socket.send_slice(&busy[sent..]).unwrap_or(0);
                }
                let socket = self.sockets.get::<tcp::Socket<'_>>(handle);
                self.tcp[i].role = if sent >= busy.len() || !socket.may_send() {
                    close(self.sockets.get_mut(handle), now)
                } else {
                    Role::Busy { sent }
                };
                (true, true)
            }
            Role::Closing { until, queued } => {
                discard_input(&mut self.sockets, handle);
                let socket = self.sockets.get::<tcp::Socket<'_>>(handle);
                if state == tcp::State::Closed {
                    return (false, true);
                }
                if state == tcp::State::TimeWait {
                    self.tcp[i].role = Role::TimeWait {
                        marked_at: self.sends,
                    };
                    return (true, true);
                }
                let left = socket.send_queue();
                let (until, queued) = if left < queued {
                    (now + LINGER, left) // the peer is still taking our bytes
                } else {
                    (until, queued)
                };
                if now < until {
                    self.tcp[i].role = Role::Closing { until, queued };
                    (true, false)
                } else {
                    tracing::debug!("close timed out: aborting");
                    self.sockets.get_mut::<tcp::Socket<'_>>(handle).abort();
                    self.tcp[i].role = Role::Aborted {
                        marked_at: self.sends,
                    };
                    (true, true)
                }
            }
            // A sending pass has completed since: the reset, or the last
            // ACK, is out.
            Role::Aborted { marked_at } | Role::TimeWait { marked_at }
                if marked_at < self.sends =>
            {
                (false, true)
            }
            Role::Aborted { .. } | Role::TimeWait { .. } => (true, false),
        }
    }

    /// Sends what the context queued, closes what it is done with, and
    /// starts the connections it asked for.
    fn flush(&mut self, ctx: &mut Context, now: Instant) -> bool {
        let mut progress = self.start_connects(ctx, now);
        let mut ids = std::mem::take(&mut self.flushing);
        ctx.drain_dirty(&mut ids);
        // Connections that could not send everything last time, and those
        // whose bytes wait for a socket or its connection: a short list, as
        // in the OS driver, not a look at every connection each turn.
        ids.append(&mut self.retry);
        ids.sort_unstable();
        ids.dedup();
        for &id in &ids {
            let Some(i) = self
                .tcp
                .iter()
                .position(|t| matches!(t.role, Role::Conn { id: c, .. } if c == id))
            else {
                // Resolving, waiting for a socket, or gone already.
                if ctx.should_close(id) && self.forget_pending(id) {
                    ctx.close(id, now);
                    progress = true;
                } else if !ctx.transmit(id).is_empty() {
                    self.retry.push(id);
                }
                continue;
            };
            let Tcp {
                handle,
                role: Role::Conn { connecting, .. },
            } = self.tcp[i]
            else {
                continue;
            };
            // Read first: a socket taken with `get_mut` is asked by the next
            // sending pass, and one that waits for room has nothing new.
            if !connecting
                && self.sockets.get::<tcp::Socket<'_>>(handle).can_send()
                && !ctx.transmit(id).is_empty()
            {
                let socket = self.sockets.get_mut::<tcp::Socket<'_>>(handle);
                loop {
                    let tx = ctx.transmit(id);
                    if tx.is_empty() || !socket.can_send() {
                        break;
                    }
                    let n = socket.send_slice(tx).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    ctx.transmitted(id, n, now);
                    progress = true;
                }
            }
            if ctx.should_close(id) {
                self.tcp[i].role = close(self.sockets.get_mut(handle), now);
                ctx.close(id, now);
                progress = true;
            } else if connecting || !ctx.transmit(id).is_empty() {
                self.retry.push(id);
            }
        }
        ids.clear();
        self.flushing = ids;
        progress
    }

    /// Drops a client connection that has no socket yet. Returns true if it
    /// was one.
    fn forget_pending(&mut self, id: ConnId) -> bool {
        if let Some(i) = self.resolving.iter().position(|r| r.id == id) {
            let r = self.resolving.swap_remove(i);
            if let Some(dns) = self.dns {
                self.sockets
                    .get_mut::<dns::Socket<'_>>(dns)
                    .cancel_query(r.query);
            }
            return true;
        }
        let before = self.waiting.len();
        self.waiting.retain(|(w, _)| *w != id);
        self.waiting.len() != before
    }

    /// Takes the context's new client connections: an address goes to
    /// `waiting`, a name to the DNS socket.
    fn start_connects(&mut self, ctx: &mut Context, now: Instant) -> bool {
        let connects = ctx.take_connects();
        let progress = !connects.is_empty();
        for (id, host, port) in connects {
            let literal = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = literal.parse::<IpAddr>() {
                match endpoint(ip, port) {
                    Ok(remote) => self.waiting.push((id, remote)),
                    Err(why) => fail_connect(ctx, id, &why, now),
                }
                continue;
            }
            let Some(dns) = self.dns else {
                fail_connect(
                    ctx,
                    id,
                    &format!("cannot resolve `{host}`: no DNS server"),
                    now,
                );
                continue;
            };
            let query_type = self.query_type();
            let started = self.sockets.get_mut::<dns::Socket<'_>>(dns).start_query(
                self.iface.context(),
                &host,
                query_type,
            );
            match started {
                Ok(query) => self.resolving.push(Resolving {
                    id,
                    host,
                    port,
                    query,
                }),
                Err(e) => fail_connect(ctx, id, &format!("cannot resolve `{host}`: {e}"), now),
            }
        }
        progress
    }

    /// A records while the device has IPv4, AAAA on an IPv6-only device.
    fn query_type(&self) -> DnsQueryType {
        #[cfg(feature = "ipv6")]
        if self.ipv4.is_none() {
            return DnsQueryType::Aaaa;
        }
        DnsQueryType::A
    }

    /// Opens sockets for the client connections that have an address, while
    /// the driver has room for sockets (the others wait; the context times them
    /// out).
    fn start_waiting(&mut self, ctx: &mut Context, now: Instant) -> bool {
        let mut progress = false;
        let mut i = 0;
        while i < self.waiting.len() {
            // No IPv4 address yet (DHCP not bound): the connect waits for
            // the lease; the context's connect timeout bounds the wait.
            if matches!(self.waiting[i].1.addr, IpAddress::Ipv4(_)) && self.ipv4.is_none() {
                i += 1;
                continue;
            }
            if !self.has_room() {
                break;
            }
            let (id, remote) = self.waiting.remove(i);
            let local_port = self.local_port();
            let handle = self.add_tcp();
            let socket = self.sockets.get_mut::<tcp::Socket<'_>>(handle);
            progress = true;
            match socket.connect(self.iface.context(), remote, local_port) {
                Ok(()) => {
                    tracing::debug!(wsi = id.wsi(), %remote, "connecting");
                    self.tcp.push(Tcp {
                        handle,
                        role: Role::Conn {
                            id,
                            connecting: true,
                            fin: false,
                        },
                    });
                }
                Err(e) => {
                    self.sockets.remove(handle);
                    let why = match e {
                        tcp::ConnectError::Unaddressable => format!("no route to {remote}"),
                        tcp::ConnectError::InvalidState => e.to_string(),
                    };
                    fail_connect(ctx, id, &why, now);
                }
            }
        }
        progress
    }

    /// Tops up every listener's pool of listening sockets, as far as the
    /// driver has room for sockets.
    fn refill_pools(&mut self) -> bool {
        let mut progress = false;
        for listener in 0..self.ports.len() {
            let pooled = self
                .tcp
                .iter()
                .filter(|t| matches!(t.role, Role::Pool { listener: l } if l == listener))
                .count();
            for _ in pooled..self.listen_backlog {
                if !self.has_room() {
                    return progress;
                }
                let handle = self.add_tcp();
                let port = self.ports[listener];
                if let Err(e) = self.sockets.get_mut::<tcp::Socket<'_>>(handle).listen(port) {
                    tracing::warn!(port, "cannot listen: {e}");
                    self.sockets.remove(handle);
                    break;
                }
                self.tcp.push(Tcp {
                    handle,
                    role: Role::Pool { listener },
                });
                progress = true;
            }
        }
        progress
    }

    /// True if a socket can be added: the set is below capacity. A socket in
    /// TIME-WAIT is not taken for room: `service_sockets`, which runs before
    /// anything asks for room, frees every one whose last ACK is out, and
    /// one still there waits for a sending pass (marked this round, or the
    /// device had no room), so room comes a round later.
    fn has_room(&self) -> bool {
        self.sockets.len() < self.capacity
    }

    /// Adds a TCP socket; the caller checked [`has_room`](Self::has_room).
    fn add_tcp(&mut self) -> SocketHandle {
        let rx = tcp::SocketBuffer::new(vec![0; self.tcp_rx_buffer]);
        let tx = tcp::SocketBuffer::new(vec![0; self.tcp_tx_buffer]);
        let mut socket = tcp::Socket::new(rx, tx);
        // Like TCP_NODELAY on the OS sockets: the layers above write whole
        // messages.
        socket.set_nagle_enabled(false);
        self.sockets.add(socket)
    }

    /// The next ephemeral port that none of our sockets uses.
    fn local_port(&mut self) -> u16 {
        for _ in 0..EPHEMERAL_COUNT {
            let port = self.next_port;
            self.next_port = if port == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                port + 1
            };
            let used = self.tcp.iter().any(|t| {
                self.sockets
                    .get::<tcp::Socket<'_>>(t.handle)
                    .local_endpoint()
                    .is_some_and(|e| e.port == port)
            });
            if !used {
                return port;
            }
        }
        self.next_port
    }
}

/// Hands `ctx` what waits in `socket` (at most `space` bytes) as one piece,
/// and takes out of the socket what it took. Where the bytes wrap around the
/// socket's ring they are copied into `scratch` first (it grows to at most
/// the socket's receive buffer): a window of a longer message, which wraps
/// more often than not, is then one WebSocket `RECEIVE` for the guest
/// instead of two, and one fragment of its echo.
fn receive_piece(
    ctx: &mut Context,
    id: ConnId,
    socket: &mut tcp::Socket<'_>,
    space: usize,
    scratch: &mut Vec<u8>,
    now: Instant,
) -> usize {
    let want = space.min(socket.recv_queue());
    let contiguous = socket.peek(want).map_or(0, <[u8]>::len);
    if contiguous == want {
        return socket
            .recv(|buf| {
                let taken = ctx.receive(id, &buf[..want], now);
                (taken, taken)
            })
            .unwrap_or(0);
    }
    scratch.resize(want, 0);
    let n = socket.peek_slice(scratch).unwrap_or(0);
    let taken = ctx.receive(id, &scratch[..n], now);
    let mut left = taken;
    while left > 0 {
        match socket.recv(|buf| {
            let k = buf.len().min(left);
            (k, k)
        }) {
            Ok(k) if k > 0 => left -= k,
            _ => break,
        }
    }
    taken
}

/// Tells the context a client connection failed, and that it has no socket.
fn fail_connect(ctx: &mut Context, id: ConnId, why: &str, now: Instant) {
    ctx.connect_failed(id, why, now);
    ctx.close(id, now);
}

/// Reads and drops what the peer sends to a socket that is closing. A
/// socket with nothing to drop is only read (see [`Sockets::get_mut`]).
fn discard_input(sockets: &mut Sockets, handle: SocketHandle) {
    if !sockets.get::<tcp::Socket<'_>>(handle).can_recv() {
        return;
    }
    let socket = sockets.get_mut::<tcp::Socket<'_>>(handle);
    while socket.can_recv() {
        if socket.recv(|buf| (buf.len(), ())).is_err() {
            break;
        }
    }
}

fn to_socket_addr(e: IpEndpoint) -> SocketAddr {
    SocketAddr::new(IpAddr::from(e.addr), e.port)
}

/// `ip:port` as a smoltcp endpoint.
fn endpoint(ip: IpAddr, port: u16) -> Result<IpEndpoint, String> {
    match ip {
        IpAddr::V4(a) => Ok(IpEndpoint::new(IpAddress::Ipv4(a), port)),
        #[cfg(feature = "ipv6")]
        IpAddr::V6(a) => Ok(IpEndpoint::new(IpAddress::Ipv6(a), port)),
        #[cfg(not(feature = "ipv6"))]
        IpAddr::V6(a) => Err(format!(
            "cannot connect to {a}: built without the `ipv6` feature"
        )),
    }
}
