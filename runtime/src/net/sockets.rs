//! The sockets of one smoltcp [`Interface`], each TCP socket in a set of its
//! own, and the frame's addresses and ports choose the set.
//!
//! smoltcp hands every TCP segment it takes in to the first socket of the
//! set it is given that accepts it, asking them in turn: a device serving 50
//! connections asks 25 sockets on average for each segment, and a socket's
//! state, endpoints and listen endpoint lie in three cache lines. Here a
//! segment's 4-tuple finds its socket in a hash map first (checked against
//! the socket, so a stale entry only costs the walk), and smoltcp gets a set
//! that holds that one socket. What the map does not know (a SYN for a
//! listening socket, the first segment of a connection after it) finds its
//! socket as smoltcp would, by asking every TCP socket; a segment no socket
//! accepts goes to the set of the other sockets, where smoltcp answers it
//! with a reset as before.
//!
//! One difference: where two sockets accept a segment, smoltcp takes the
//! first in its set, and here the socket the map knows wins. Only a bare SYN
//! can find two, a listening socket and one whose 4-tuple it repeats (a
//! client reusing its port while the old connection's socket is still
//! there): it goes to the old socket, which drops it, and the client's next
//! SYN finds the listener once the old socket is gone (the device's driver
//! frees TIME-WAIT sockets after the next sending pass).
//!
//! Everything that is not TCP works as with one set. Sending differs:
//! smoltcp's pass asks every socket for one segment, and is repeated until a
//! pass sends nothing; [`Sockets::egress`] asks each set until it has
//! nothing more to send, then the next, so a socket with three segments to
//! send no longer costs three passes over every socket. And it asks only the
//! TCP sockets something happened to (changed, or a frame came in for them)
//! and, for their timers, every other one once a millisecond: a TCP timer
//! (retransmission, delayed ACK, keep-alive) goes off up to 1 ms late, and
//! [`Sockets::poll_at`] is for each socket the later of smoltcp's time and
//! the pass that will ask it (see [`RECHECK`]).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use smoltcp::iface::{Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, PacketMeta, RxToken, TxToken};
use smoltcp::socket::{AnySocket, Socket, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpEndpoint, IpProtocol, Ipv4Packet, TcpPacket,
};

/// How often a closing connection that has gone quiet sends a keep-alive
/// probe; see [`close`].
const FIN_WATCH: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(1000);

/// Starts the TCP close of `socket` (FIN after the queued bytes), with a
/// keep-alive probe whenever the connection has been quiet for a second.
///
/// smoltcp 0.14 can stop retransmitting a FIN: three duplicate ACKs of the
/// last data, while only the FIN is unacknowledged, start a fast
/// retransmit, which resends nothing (there is no data to resend) and turns
/// the retransmission timer off. The socket then waits in FIN-WAIT-1 (or
/// CLOSING, LAST-ACK) until something aborts it, and the peer never sees the
/// FIN. A keep-alive probe takes sequence space, so sending it starts the
/// retransmission timer again, and when that expires the FIN goes out once
/// more. On a link that loses and duplicates frames this hit one run in ten
/// of `forwarding_survives_a_lossy_reordering_link` (the host client waited
/// 20 s for its EOF). The probes cost a segment a second while a closed
/// connection waits for its peer (FIN-WAIT-2): the peer acknowledges them.
pub fn close(socket: &mut tcp::Socket<'_>) {
    socket.close();
    socket.set_keep_alive(Some(FIN_WATCH));
}

/// Which set, and which socket in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle {
    /// 0: the set of the sockets that are not TCP; `i + 1`: `tcp[i]`.
    set: usize,
    socket: SocketHandle,
}

/// What a call of [`Sockets::egress`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Egress {
    /// At least one frame went out.
    pub sent: bool,
    /// The device took every frame it was offered: each socket that was
    /// changed or took a frame in since it was last asked, or that had not
    /// been asked for [`RECHECK`], was asked until it had nothing more to
    /// send (a completed sending pass). A timer that came due within the
    /// last `RECHECK` may still wait.
    pub complete: bool,
    /// TCP sockets asked (see [`Sockets::egress`]).
    pub asked: usize,
}

/// A TCP socket's set, kept (empty) for the next TCP socket when the socket
/// is removed.
struct TcpSet {
    set: SocketSet<'static>,
    /// The socket in the set, if any.
    socket: Option<SocketHandle>,
    /// The 4-tuple the map sends to this set, if any.
    key: Option<Tuple>,
    /// When a sending pass asks the socket again.
    wake: Wake,
}

/// When a sending pass asks a TCP socket whether it has something to send
/// (see [`RECHECK`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// Changed, or a frame came in for it: ask it in the next pass.
    Now,
    /// It had nothing more to send: ask it in the first pass from then on.
    After(Instant),
}

/// How long a TCP socket that had nothing more to send goes unasked by
/// [`Sockets::egress`] unless something happens to it.
///
/// A socket has something new to send only after it was changed (taken with
/// [`Sockets::get_mut`]), after a frame for it came in, or when one of its
/// timers expires (retransmission, delayed ACK, keep-alive, TIME-WAIT). The
/// first two mark it; for the timers, a socket that had nothing more to send
/// is asked again `RECHECK` later, not in every turn of the loop: its timers
/// go off up to that much late (lwIP runs its TCP timers every 250 ms), and
/// a turn that moves the bytes of a few connections does not ask every idle
/// one. Asking smoltcp when the timers are due (`Interface::poll_at`) costs
/// as much as the ask it would save.
pub const RECHECK: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(1);

/// (local, remote) endpoints: the frame's destination and source.
type Tuple = (IpEndpoint, IpEndpoint);

/// Which TCP set a 4-tuple's segments go to.
type TupleMap = HashMap<Tuple, usize, BuildHasherDefault<TupleHasher>>;

/// The sockets of one interface. See the module docs.
pub struct Sockets {
    others: SocketSet<'static>,
    tcp: Vec<TcpSet>,
    /// Indexes of `tcp` without a socket.
    free: Vec<usize>,
    by_tuple: TupleMap,
    len: usize,
    /// The TCP set the next sending pass begins with.
    first_egress: usize,
}

impl std::fmt::Debug for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sockets")
            .field("len", &self.len)
            .field("tcp_sets", &self.tcp.len())
            .finish_non_exhaustive()
    }
}

impl Default for Sockets {
    fn default() -> Self {
        Sockets::new()
    }
}

impl Sockets {
    /// No sockets.
    pub fn new() -> Sockets {
        Sockets {
            others: SocketSet::new(Vec::new()),
            tcp: Vec::new(),
            free: Vec::new(),
            by_tuple: HashMap::default(),
            len: 0,
            first_egress: 0,
        }
    }

    /// Sockets held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no socket is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a socket: a TCP socket in a set of its own (one left by a removed
    /// socket if there is one), any other in the set they share.
    pub fn add<T: AnySocket<'static>>(&mut self, socket: T) -> Handle {
        self.len += 1;
        let socket = socket.upcast();
        if !matches!(socket, Socket::Tcp(_)) {
            return Handle {
                set: 0,
                socket: self.others.add(socket),
            };
        }
        let i = self.free.pop().unwrap_or_else(|| {
            self.tcp.push(TcpSet {
                set: SocketSet::new(Vec::with_capacity(1)),
                socket: None,
                key: None,
                wake: Wake::Now,
            });
            self.tcp.len() - 1
        });
        let t = &mut self.tcp[i];
        let handle = t.set.add(socket);
        t.socket = Some(handle);
        t.wake = Wake::Now;
        Handle {
            set: i + 1,
            socket: handle,
        }
    }

    /// Removes a socket and returns it.
    ///
    /// # Panics
    ///
    /// If `handle` is not in use, as `SocketSet::remove`.
    pub fn remove(&mut self, handle: Handle) -> Socket<'static> {
        if handle.set == 0 {
            let socket = self.others.remove(handle.socket);
            self.len -= 1;
            return socket;
        }
        let i = handle.set - 1;
        let t = &mut self.tcp[i];
        let socket = t.set.remove(handle.socket);
        self.len -= 1;
        t.socket = None;
        if let Some(key) = t.key.take() {
            unmap(&mut self.by_tuple, key, i);
        }
        self.free.push(i);
        socket
    }

    /// The socket of `handle`.
    ///
    /// # Panics
    ///
    /// If `handle` is not in use or holds another kind of socket, as
    /// `SocketSet::get`.
    pub fn get<T: AnySocket<'static>>(&self, handle: Handle) -> &T {
        match handle.set {
            0 => self.others.get(handle.socket),
            i => self.tcp[i - 1].set.get(handle.socket),
        }
    }

    /// The socket of `handle`, to change. Panics as [`get`](Self::get).
    ///
    /// The next sending pass asks the socket what it has to send; one only
    /// read ([`get`](Self::get)) is asked when a frame came in for it, or
    /// for its timers (see [`egress`](Self::egress)).
    pub fn get_mut<T: AnySocket<'static>>(&mut self, handle: Handle) -> &mut T {
        match handle.set {
            0 => self.others.get_mut(handle.socket),
            i => {
                let t = &mut self.tcp[i - 1];
                t.wake = Wake::Now;
                t.set.get_mut(handle.socket)
            }
        }
    }

    /// Every socket.
    pub fn iter(&self) -> impl Iterator<Item = (Handle, &Socket<'static>)> {
        let others = self
            .others
            .iter()
            .map(|(socket, s)| (Handle { set: 0, socket }, s));
        let tcp = self.tcp.iter().enumerate().flat_map(|(i, t)| {
            t.set
                .iter()
                .map(move |(socket, s)| (Handle { set: i + 1, socket }, s))
        });
        others.chain(tcp)
    }

    /// Takes one frame from `device` in, as `Interface::poll_ingress_single`
    /// does, with the set of the socket it is for.
    pub fn ingress<D: Device + ?Sized>(
        &mut self,
        iface: &mut Interface,
        timestamp: Instant,
        device: &mut D,
    ) -> PollIngressSingleResult {
        let caps = device.capabilities();
        let Some((rx, tx)) = device.receive(timestamp) else {
            return PollIngressSingleResult::None;
        };
        let meta = rx.meta();
        rx.consume(|frame| {
            let set = match segment(frame).and_then(|s| self.socket_for(&s)) {
                Some(i) => {
                    let t = &mut self.tcp[i];
                    t.wake = Wake::Now;
                    &mut t.set
                }
                None => {
                    // ARP, DHCP, a segment for no socket: what the interface
                    // learns (a neighbour's address) may let any socket send.
                    for t in &mut self.tcp {
                        t.wake = Wake::Now;
                    }
                    &mut self.others
                }
            };
            let mut one = OneFrame {
                frame: Some((frame, meta)),
                tx: Some(tx),
                caps,
            };
            iface.poll_ingress_single(timestamp, &mut one, set)
        })
    }

    /// Sends what the sockets have, until the device has no room for a
    /// frame (where smoltcp ends its pass too): each set is asked again
    /// until it has nothing more, then the next. smoltcp's own pass asks
    /// every socket once for one segment, so a socket with three to send
    /// took three passes over every socket, busy or not.
    ///
    /// The sockets take turns at a device without room for everything: the
    /// next call begins after the socket that had sent when the device
    /// refused it, or with that socket if it had sent nothing. The other
    /// sockets' set (DHCP, DNS, UDP; a datagram or two each) goes first.
    ///
    /// A TCP socket is asked only if it was changed or a frame came in for
    /// it since it was last asked, or [`RECHECK`] has passed since it last
    /// had nothing more to send (its timers).
    pub fn egress<D: Device + ?Sized>(
        &mut self,
        iface: &mut Interface,
        timestamp: Instant,
        device: &mut D,
    ) -> Egress {
        let mut device = Room {
            device,
            full: false,
        };
        let mut sent = drain(iface, timestamp, &mut self.others, &mut device);
        let mut asked = 0;
        let n = self.tcp.len();
        let first = self.first_egress.min(n);
        for i in (first..n).chain(0..first) {
            if device.full {
                break;
            }
            let t = &mut self.tcp[i];
            if t.socket.is_none() || matches!(t.wake, Wake::After(at) if at > timestamp) {
                continue;
            }
            let sent_here = drain(iface, timestamp, &mut t.set, &mut device);
            sent |= sent_here;
            asked += 1;
            if device.full {
                self.first_egress = if sent_here { i + 1 } else { i };
            } else {
                t.wake = Wake::After(timestamp + RECHECK);
            }
        }
        Egress {
            sent,
            complete: !device.full,
            asked,
        }
    }

    /// When the interface wants to be polled next, as `Interface::poll_at`,
    /// and not before the sending pass would ask the socket (see [`RECHECK`]).
    pub fn poll_at(&self, iface: &mut Interface, timestamp: Instant) -> Option<Instant> {
        let others = iface.poll_at(timestamp, &self.others);
        let tcp = self.tcp.iter().filter(|t| t.socket.is_some());
        let tcp = tcp.filter_map(|t| {
            let at = iface.poll_at(timestamp, &t.set)?;
            Some(match t.wake {
                Wake::Now => at,
                Wake::After(asked) => at.max(asked),
            })
        });
        tcp.chain(others).min()
    }

    /// The TCP set whose socket accepts `seg`, if any: the map's, else the
    /// first that accepts it (remembered if the socket is connected).
    fn socket_for(&mut self, seg: &Segment) -> Option<usize> {
        let key = (seg.dst, seg.src);
        if let Some(&i) = self.by_tuple.get(&key)
            && self.tcp[i].accepts(seg)
        {
            return Some(i);
        }
        let i = self.tcp.iter().position(|t| t.accepts(seg))?;
        let t = &mut self.tcp[i];
        let socket = t.socket.map(|h| t.set.get::<tcp::Socket<'static>>(h))?;
        if socket.remote_endpoint().is_some() {
            if let Some(old) = t.key.replace(key) {
                unmap(&mut self.by_tuple, old, i);
            }
            self.by_tuple.insert(key, i);
        }
        Some(i)
    }
}

/// Asks `set` for segments until it has nothing more or the device has no
/// room. Returns true if it sent anything.
fn drain<D: Device + ?Sized>(
    iface: &mut Interface,
    timestamp: Instant,
    set: &mut SocketSet<'static>,
    device: &mut Room<'_, D>,
) -> bool {
    let mut any = false;
    while !device.full
        && iface.poll_egress(timestamp, device, set) == PollResult::SocketStateChanged
    {
        any = true;
    }
    any
}

/// Drops `key` from the map if it still sends it to set `i` (another set's
/// socket may have taken the 4-tuple since).
fn unmap(by_tuple: &mut TupleMap, key: Tuple, i: usize) {
    if by_tuple.get(&key) == Some(&i) {
        by_tuple.remove(&key);
    }
}

impl TcpSet {
    /// smoltcp's own test (`tcp::Socket::accepts`), through the socket's
    /// public state.
    fn accepts(&self, seg: &Segment) -> bool {
        let Some(h) = self.socket else {
            return false;
        };
        let socket = self.set.get::<tcp::Socket<'static>>(h);
        match socket.state() {
            tcp::State::Closed => false,
            // A listening socket takes only SYNs; another socket may listen
            // on the same endpoint.
            tcp::State::Listen if seg.ack || seg.rst => false,
            _ => match (socket.local_endpoint(), socket.remote_endpoint()) {
                (Some(local), Some(remote)) => local == seg.dst && remote == seg.src,
                _ => {
                    let listen = socket.listen_endpoint();
                    listen.addr.is_none_or(|a| a == seg.dst.addr)
                        && seg.dst.port != 0
                        && seg.dst.port == listen.port
                }
            },
        }
    }
}

/// The map's hash: rustc's FxHash, a multiply and a rotate per word. The
/// map holds at most one key per TCP socket, so keys a peer chose to collide
/// cost at worst the walk over the sockets that the map saves; the standard
/// SipHash cost a third of what the walk did.
#[derive(Default)]
struct TupleHasher(u64);

impl TupleHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for TupleHasher {
    fn write(&mut self, bytes: &[u8]) {
        let (words, rest) = bytes.as_chunks::<8>();
        for w in words {
            self.add(u64::from_le_bytes(*w));
        }
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(last));
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A TCP segment's addresses, ports and the flags that pick its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// The segment's destination: the socket's local endpoint.
    pub dst: IpEndpoint,
    /// The segment's source: a connected socket's remote endpoint.
    pub src: IpEndpoint,
    /// SYN is set.
    pub syn: bool,
    /// ACK is set.
    pub ack: bool,
    /// RST is set.
    pub rst: bool,
}

/// The TCP segment in an Ethernet frame, if it is one (IPv4 and not a
/// fragment, or IPv6 with at most a Hop-by-Hop header: what smoltcp takes
/// in). Anything else, or a frame too short for its headers, is `None`:
/// [`Sockets::ingress`] gives it to the other sockets' set, and smoltcp deals
/// with it as before.
pub fn segment(frame: &[u8]) -> Option<Segment> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let (src, dst, payload) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            (
                IpAddress::Ipv4(ip.src_addr()),
                IpAddress::Ipv4(ip.dst_addr()),
                ip.payload(),
            )
        }
        #[cfg(feature = "ipv6")]
        EthernetProtocol::Ipv6 => {
            let ip = smoltcp::wire::Ipv6Packet::new_checked(eth.payload()).ok()?;
            let (mut next, mut payload) = (ip.next_header(), ip.payload());
            // smoltcp reads past a Hop-by-Hop header to the segment (and
            // answers any other extension header with a Parameter Problem).
            if next == IpProtocol::HopByHop {
                let ext = smoltcp::wire::Ipv6ExtHeader::new_checked(payload).ok()?;
                // The header's length counts 8-byte units after the first 8.
                let len = 8 * (usize::from(ext.header_len()) + 1);
                (next, payload) = (ext.next_header(), payload.get(len..)?);
            }
            if next != IpProtocol::Tcp {
                return None;
            }
            (
                IpAddress::Ipv6(ip.src_addr()),
                IpAddress::Ipv6(ip.dst_addr()),
                payload,
            )
        }
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(payload).ok()?;
    Some(Segment {
        dst: IpEndpoint::new(dst, tcp.dst_port()),
        src: IpEndpoint::new(src, tcp.src_port()),
        syn: tcp.syn(),
        ack: tcp.ack(),
        rst: tcp.rst(),
    })
}

/// A device that notes when it had no room for a frame.
struct Room<'d, D: ?Sized> {
    device: &'d mut D,
    full: bool,
}

impl<D: Device + ?Sized> Device for Room<'_, D> {
    type RxToken<'a>
        = D::RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = D::TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, timestamp: Instant) -> Option<(D::RxToken<'_>, D::TxToken<'_>)> {
        self.device.receive(timestamp)
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<D::TxToken<'_>> {
        let token = self.device.transmit(timestamp);
        self.full |= token.is_none();
        token
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.device.capabilities()
    }
}

/// A device that has the one frame already taken from the real one, and
/// that frame's transmit token for the answer.
struct OneFrame<'f, T> {
    frame: Option<(&'f [u8], PacketMeta)>,
    tx: Option<T>,
    caps: DeviceCapabilities,
}

struct Frame<'f>(&'f [u8], PacketMeta);

impl RxToken for Frame<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }

    fn meta(&self) -> PacketMeta {
        self.1
    }
}

impl<'f, T: TxToken> Device for OneFrame<'f, T> {
    type RxToken<'a>
        = Frame<'f>
    where
        Self: 'a;
    type TxToken<'a>
        = T
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(Frame<'f>, T)> {
        let (frame, meta) = self.frame.take()?;
        Some((Frame(frame, meta), self.tx.take()?))
    }

    fn transmit(&mut self, _: Instant) -> Option<T> {
        self.tx.take()
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::iface::Config;
    use smoltcp::phy::{Loopback, Medium};
    use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Address};

    const ADDR: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);

    /// An interface at `ADDR` whose frames come back to it: its client
    /// sockets talk to its listening ones.
    struct Station {
        iface: Interface,
        device: Loopback,
        sockets: Sockets,
        now: Instant,
    }

    impl Station {
        fn new() -> Station {
            Station::with_mtu(None)
        }

        /// A station whose interface sends frames of at most `mtu` bytes.
        fn with_mtu(mtu: Option<usize>) -> Station {
            let mut device = Loopback::new(Medium::Ethernet);
            let config = Config::new(EthernetAddress([2, 0, 0, 0, 0, 1]).into());
            let mut sized = Narrow::new(&mut device, usize::MAX);
            sized.mtu = mtu;
            let mut iface = Interface::new(config, &mut sized, Instant::ZERO);
            iface.update_ip_addrs(|a| a.push(IpCidr::new(ADDR.into(), 24)).unwrap());
            Station {
                iface,
                device,
                sockets: Sockets::new(),
                now: Instant::ZERO,
            }
        }

        fn add_tcp(&mut self) -> Handle {
            let buffer = || tcp::SocketBuffer::new(vec![0; 1024]);
            self.sockets.add(tcp::Socket::new(buffer(), buffer()))
        }

        fn listen(&mut self, port: u16) -> Handle {
            let h = self.add_tcp();
            self.tcp(h).listen(port).unwrap();
            h
        }

        fn connect(&mut self, from: u16, to: u16) -> Handle {
            let h = self.add_tcp();
            let cx = self.iface.context();
            let socket = self.sockets.get_mut::<tcp::Socket<'static>>(h);
            socket.connect(cx, (ADDR, to), from).unwrap();
            h
        }

        fn tcp(&mut self, h: Handle) -> &mut tcp::Socket<'static> {
            self.sockets.get_mut(h)
        }

        /// Frames in and segments out until nothing moves, over a second of
        /// simulated time (smoltcp's delayed ACKs go out).
        fn settle(&mut self) {
            for _ in 0..100 {
                self.now += smoltcp::time::Duration::from_millis(10);
                self.take_in();
                self.egress();
            }
        }

        /// Takes in every frame the device has.
        fn take_in(&mut self) {
            let s = &mut self.sockets;
            while s.ingress(&mut self.iface, self.now, &mut self.device)
                != PollIngressSingleResult::None
            {}
        }

        /// Sends what the sockets have, on a device with room for all of it.
        fn egress(&mut self) -> Egress {
            self.sockets
                .egress(&mut self.iface, self.now, &mut self.device)
        }

        fn received(&mut self, h: Handle) -> Vec<u8> {
            let socket = self.tcp(h);
            let mut buf = vec![0; socket.recv_queue()];
            socket.recv_slice(&mut buf).unwrap();
            buf
        }
    }

    #[test]
    fn each_segment_reaches_the_socket_of_its_connection() {
        let mut st = Station::new();
        let servers: Vec<Handle> = (0..8).map(|_| st.listen(80)).collect();
        let clients: Vec<Handle> = (0..8).map(|i| st.connect(50_000 + i, 80)).collect();
        st.settle();
        for (i, &c) in clients.iter().enumerate() {
            assert_eq!(st.tcp(c).state(), tcp::State::Established, "client {i}");
            st.tcp(c)
                .send_slice(format!("from {}", 50_000 + i).as_bytes())
                .unwrap();
        }
        st.settle();
        for &s in &servers {
            let peer = st
                .tcp(s)
                .remote_endpoint()
                .expect("every listener took a client");
            let got = st.received(s);
            assert_eq!(got, format!("from {}", peer.port).as_bytes());
        }
        // One cached 4-tuple per connected socket, no more.
        assert_eq!(st.sockets.by_tuple.len(), 16);
        assert_eq!(st.sockets.len(), 16);
    }

    #[test]
    fn a_segment_no_socket_accepts_is_answered_with_a_reset() {
        let mut st = Station::new();
        st.listen(80);
        let client = st.connect(50_000, 81);
        st.settle();
        assert_eq!(st.tcp(client).state(), tcp::State::Closed);
    }

    #[test]
    fn a_removed_sockets_entry_sends_nothing_to_the_socket_that_took_its_set() {
        let mut st = Station::new();
        let server = st.listen(80);
        let client = st.connect(50_000, 80);
        st.settle();
        st.tcp(client).send_slice(b"first").unwrap();
        st.settle();
        assert_eq!(st.received(server), b"first");
        // The server's socket goes without a word (its map entry with it),
        // and a new listener takes its set.
        st.sockets.remove(server);
        assert!(!st.sockets.by_tuple.values().any(|&i| i + 1 == server.set));
        let listener = st.listen(80);
        assert_eq!(listener.set, server.set, "the freed set is reused");
        st.tcp(client).send_slice(b"second").unwrap();
        st.settle();
        assert_eq!(st.tcp(client).state(), tcp::State::Closed, "reset");
        assert_eq!(st.tcp(listener).state(), tcp::State::Listen);
        assert_eq!(st.tcp(listener).recv_queue(), 0);
        assert!(st.sockets.by_tuple.len() <= 1);
    }

    #[test]
    fn an_entry_whose_socket_moved_on_is_checked_and_passed_over() {
        let mut st = Station::new();
        let old = st.listen(80);
        let client = st.connect(50_000, 80);
        st.settle();
        st.tcp(client).send_slice(b"first").unwrap();
        st.settle();
        assert_eq!(st.received(old), b"first");
        // The server's socket aborts (and stays, closed); the client comes
        // back from the same port to another listener. The map still sends
        // that 4-tuple to the old socket's set.
        st.tcp(old).abort();
        st.settle();
        st.sockets.remove(client);
        let new = st.listen(80);
        let client = st.connect(50_000, 80);
        st.settle();
        assert_eq!(st.tcp(client).state(), tcp::State::Established);
        assert_eq!(st.tcp(new).state(), tcp::State::Established);
        assert_eq!(st.tcp(old).state(), tcp::State::Closed);
        st.tcp(client).send_slice(b"second").unwrap();
        st.settle();
        assert_eq!(st.received(new), b"second");
    }

    /// A device with room for `room` more frames, that counts the asking.
    struct Narrow<'d> {
        inner: &'d mut Loopback,
        room: usize,
        asked: usize,
        mtu: Option<usize>,
    }

    impl<'d> Narrow<'d> {
        fn new(inner: &'d mut Loopback, room: usize) -> Narrow<'d> {
            Narrow {
                inner,
                room,
                asked: 0,
                mtu: None,
            }
        }
    }

    impl Device for Narrow<'_> {
        type RxToken<'a>
            = <Loopback as Device>::RxToken<'a>
        where
            Self: 'a;
        type TxToken<'a>
            = <Loopback as Device>::TxToken<'a>
        where
            Self: 'a;

        fn receive(&mut self, t: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
            self.inner.receive(t)
        }

        fn transmit(&mut self, t: Instant) -> Option<Self::TxToken<'_>> {
            self.asked += 1;
            self.room = self.room.checked_sub(1)?;
            self.inner.transmit(t)
        }

        fn capabilities(&self) -> DeviceCapabilities {
            let mut caps = self.inner.capabilities();
            caps.max_transmission_unit = self.mtu.unwrap_or(caps.max_transmission_unit);
            caps
        }
    }

    #[test]
    fn a_sending_pass_ends_when_the_device_has_no_room() {
        let mut st = Station::new();
        let servers: Vec<Handle> = (0..4).map(|_| st.listen(80)).collect();
        let clients: Vec<Handle> = (0..4).map(|i| st.connect(50_000 + i, 80)).collect();
        st.settle();
        for &c in &clients {
            st.tcp(c).send_slice(b"waiting").unwrap();
        }
        let mut full = Narrow::new(&mut st.device, 0);
        st.sockets.egress(&mut st.iface, st.now, &mut full);
        assert_eq!(full.asked, 1, "smoltcp's pass stops at the first refusal");
        // With room, every client's bytes go.
        st.settle();
        for &s in &servers {
            assert_eq!(st.received(s), b"waiting");
        }
    }

    /// Three connected clients on a station whose frames carry at most 546
    /// bytes of TCP payload, each with 1,000 bytes (two segments) to send.
    fn three_clients_with_two_segments_each() -> (Station, Vec<Handle>) {
        let mut st = Station::with_mtu(Some(600));
        for _ in 0..3 {
            st.listen(80);
        }
        let clients: Vec<Handle> = (0..3).map(|i| st.connect(50_000 + i, 80)).collect();
        st.settle();
        for &c in &clients {
            // The second segment, shorter than the first, goes while the
            // first is unacknowledged only without Nagle.
            st.tcp(c).set_nagle_enabled(false);
            assert_eq!(st.tcp(c).send_slice(&[7; 1000]), Ok(1000));
        }
        (st, clients)
    }

    /// The source ports of the frames sent since the last call, in order.
    fn sent_from(st: &mut Station) -> Vec<u16> {
        let mut ports = Vec::new();
        while let Some((rx, _)) = st.device.receive(st.now) {
            let seg = rx.consume(segment).expect("a TCP segment");
            ports.push(seg.src.port);
        }
        ports
    }

    #[test]
    fn one_call_sends_everything_the_sockets_have() {
        let (mut st, _) = three_clients_with_two_segments_each();
        let all = Egress {
            sent: true,
            complete: true,
            asked: 3,
        };
        assert_eq!(st.egress(), all);
        // smoltcp's own pass would have sent one segment of each.
        let each_twice = [50_000, 50_000, 50_001, 50_001, 50_002, 50_002];
        assert_eq!(sent_from(&mut st), each_twice);
        // The sockets had nothing more: not asked again at once.
        let nothing = Egress {
            sent: false,
            complete: true,
            asked: 0,
        };
        assert_eq!(st.egress(), nothing);
    }

    #[test]
    fn a_pass_asks_only_the_sockets_something_happened_to() {
        let mut st = Station::new();
        let servers: Vec<Handle> = (0..4).map(|_| st.listen(80)).collect();
        let clients: Vec<Handle> = (0..4).map(|i| st.connect(50_000 + i, 80)).collect();
        st.settle();
        // Connected and with nothing to send: each asked once, then not
        // until `RECHECK` has passed.
        st.now += RECHECK;
        assert_eq!(st.egress().asked, 8);
        assert_eq!(st.egress().asked, 0);
        // A socket changed is asked in the next pass, the others are not.
        st.tcp(clients[2]).send_slice(b"news").unwrap();
        let did = st.egress();
        assert_eq!((did.sent, did.asked), (true, 1));
        // A frame in gets its socket asked: the server's, which took the
        // bytes and waits to acknowledge them.
        st.take_in();
        let did = st.egress();
        assert_eq!((did.sent, did.asked), (false, 1));
        let server = servers
            .iter()
            .copied()
            .find(|&s| st.sockets.get::<tcp::Socket<'static>>(s).recv_queue() > 0)
            .expect("a server took the bytes");
        assert_eq!(st.received(server), b"news");
        st.now += RECHECK;
        assert_eq!(st.egress().asked, 8, "all again once RECHECK has passed");
    }

    #[test]
    fn a_delayed_ack_goes_out_at_its_time_from_a_socket_nobody_touched() {
        let mut st = Station::new();
        let server = st.listen(80);
        let client = st.connect(50_000, 80);
        st.settle();
        st.tcp(client).send_slice(b"news").unwrap();
        st.egress();
        st.take_in();
        let sent_at = st.now;
        let unacked = |st: &Station| st.sockets.get::<tcp::Socket<'static>>(client).send_queue();
        // smoltcp delays the server's ACK by 10 ms. The server is read only
        // through `get` from here on, and the clock goes where `poll_at`
        // says, as for a loop that sleeps until then: only the server's
        // timer, asked for in time, gets its ACK out.
        for _ in 0..10 {
            let did = st.egress();
            st.take_in();
            if unacked(&st) == 0 {
                break;
            }
            let next = st.sockets.poll_at(&mut st.iface, st.now);
            let next = next.expect("a timer is set");
            assert!(
                next > st.now,
                "poll_at {next} is not after {}: a spin",
                st.now
            );
            st.now = next;
            assert!(did.asked <= 2);
        }
        assert_eq!(unacked(&st), 0, "the ACK went out");
        let after = (st.now - sent_at).total_millis();
        assert!(
            (10..=11).contains(&after),
            "acknowledged {after} ms after the bytes came, not at the 10 ms delay"
        );
        assert_eq!(
            st.sockets.get::<tcp::Socket<'static>>(server).recv_queue(),
            4
        );
    }

    #[test]
    fn a_frame_for_no_tcp_socket_gets_every_socket_asked() {
        let mut st = Station::new();
        st.listen(80);
        st.connect(50_000, 80);
        st.settle();
        assert_eq!(st.egress().asked, 0);
        // A SYN for a port nobody listens on: taken in by the other
        // sockets' set (which answers it with a reset), as ARP and DHCP
        // are, whose news about a neighbour may let any socket send.
        let stray = st.connect(50_001, 81);
        assert_eq!(st.egress().asked, 1);
        st.take_in();
        assert_eq!(st.egress().asked, 3);
        assert_eq!(st.tcp(stray).state(), tcp::State::Closed, "reset");
    }

    #[test]
    fn sockets_take_turns_at_a_device_with_room_for_one_frame() {
        let (mut st, _) = three_clients_with_two_segments_each();
        let mut order = Vec::new();
        for call in 0..6 {
            let mut one = Narrow::new(&mut st.device, 1);
            let did = st.sockets.egress(&mut st.iface, st.now, &mut one);
            // Only the last frame leaves nothing that was refused.
            assert_eq!((did.sent, did.complete), (true, call == 5));
            order.extend(sent_from(&mut st));
        }
        // A socket cut off after sending goes last next time (not
        // 50,000 twice, then 50,001 twice...); one refused before it sent
        // anything goes first (the fourth call's 50,001, refused at the end
        // of the third, after 50,000 had sent its second segment).
        let turns = [50_000, 50_001, 50_002, 50_000, 50_001, 50_002];
        assert_eq!(order, turns);
    }

    #[cfg(feature = "ipv6")]
    #[test]
    fn a_segment_behind_a_hop_by_hop_header_is_read() {
        let mut frame = vec![0u8; 14 + 40 + 8 + 20];
        frame[12..14].copy_from_slice(&[0x86, 0xdd]); // IPv6
        let ip = &mut frame[14..];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&28u16.to_be_bytes()); // payload length
        ip[6] = 0; // next: Hop-by-Hop
        ip[7] = 64;
        ip[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        ip[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip[40..48].copy_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // next: TCP, PadN
        let tcp = &mut ip[48..];
        tcp[0..2].copy_from_slice(&50_000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x10; // ACK
        let seg = segment(&frame).expect("a TCP segment");
        assert_eq!(seg.src.port, 50_000);
        assert_eq!(seg.dst.port, 80);
        assert!(seg.ack && !seg.rst);
    }
}
