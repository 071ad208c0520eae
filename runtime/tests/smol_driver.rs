//! The smoltcp driver end to end: a device (`SmolDriver` + a `Context` with
//! guests) and a plain smoltcp "peer" interface, joined by an in-memory
//! Ethernet link. Time is an explicit clock that jumps to the next deadline
//! when the link is idle; nothing sleeps.

mod common;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address, Ipv4Cidr,
};

use wasmgate::config::{
    Client, ClientTarget, GuestLimits, Handler, Limits, Listener, Mount, Protocol,
};
use wasmgate::context::NativeProtocol;
use wasmgate::guest::{Call, reason};
use wasmgate::net::smol::{Ipv4Setup, NetConfig, SmolDriver};
use wasmgate::{Config, Context};

const DEVICE_V4: Ipv4Address = Ipv4Address::new(192, 168, 69, 1);
const PEER_V4: Ipv4Address = Ipv4Address::new(192, 168, 69, 2);
const DEVICE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

// ---- the link ----

type Queue = VecDeque<Vec<u8>>;

/// One end of the link: frames in from `rx`, out to `tx`.
struct End<'q> {
    rx: &'q mut Queue,
    tx: &'q mut Queue,
}

struct Rx(Vec<u8>);
struct Tx<'q>(&'q mut Queue);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl Device for End<'_> {
    type RxToken<'a>
        = Rx
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a>
    where
        Self: 'a;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((Rx(frame), Tx(self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

// ---- the device and its peer ----

struct Net {
    to_device: Queue,
    to_peer: Queue,
    ctx: Context,
    driver: SmolDriver,
    peer: Interface,
    sockets: SocketSet<'static>,
    start: Instant,
    now: Instant,
    next_port: u16,
}

impl Net {
    fn new(config: Config, tweak: impl FnOnce(&mut NetConfig)) -> Net {
        let start = Instant::now();
        let ctx = Context::new(config, start).expect("device starts");
        let mut net = NetConfig::small_soc(
            DEVICE_MAC,
            Ipv4Setup::Static {
                address: Ipv4Cidr::new(DEVICE_V4, 24),
                gateway: None,
            },
        );
        tweak(&mut net);
        let (mut to_device, mut to_peer) = (Queue::new(), Queue::new());
        let driver = SmolDriver::new(
            &ctx,
            net,
            &mut End {
                rx: &mut to_device,
                tx: &mut to_peer,
            },
            start,
        );
        let mut config = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(PEER_MAC)));
        config.random_seed = 7;
        let mut peer = Interface::new(
            config,
            &mut End {
                rx: &mut to_peer,
                tx: &mut to_device,
            },
            smoltcp::time::Instant::ZERO,
        );
        peer.update_ip_addrs(|addrs| {
            addrs.push(IpCidr::new(PEER_V4.into(), 24)).unwrap();
            #[cfg(feature = "ipv6")]
            addrs.push(IpCidr::new(PEER_V6.into(), 64)).unwrap();
        });
        Net {
            to_device,
            to_peer,
            ctx,
            driver,
            peer,
            sockets: SocketSet::new(Vec::new()),
            start,
            now: start,
            next_port: 40000,
        }
    }

    fn smol_now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros((self.now - self.start).as_micros() as i64)
    }

    /// One poll of each end. Returns when either wants to run next.
    fn turn(&mut self) -> Option<Instant> {
        let mut device = End {
            rx: &mut self.to_device,
            tx: &mut self.to_peer,
        };
        let device_due = self.driver.poll(&mut self.ctx, &mut device, self.now);
        let (in_use, capacity) = self.driver.sockets_in_use();
        assert!(in_use <= capacity, "{in_use} sockets of {capacity}");
        let timestamp = self.smol_now();
        let mut peer = End {
            rx: &mut self.to_peer,
            tx: &mut self.to_device,
        };
        self.peer.poll(timestamp, &mut peer, &mut self.sockets);
        let peer_due = self
            .peer
            .poll_at(timestamp, &self.sockets)
            .map(|t| self.start + Duration::from_micros(t.total_micros() as u64));
        [device_due, peer_due].into_iter().flatten().min()
    }

    /// Runs both ends until `done` holds. While the link is idle the clock
    /// jumps to the next deadline (at least 1 ms, at most 1 s).
    fn run_until(&mut self, what: &str, mut done: impl FnMut(&mut Net) -> bool) {
        for _ in 0..200_000 {
            let due = self.turn();
            if done(self) {
                return;
            }
            if self.to_device.is_empty() && self.to_peer.is_empty() {
                let due = due.unwrap_or(self.now + Duration::from_secs(1));
                self.now = due.clamp(
                    self.now + Duration::from_millis(1),
                    self.now + Duration::from_secs(1),
                );
            }
        }
        panic!("{what}: not reached");
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until("time passes", |net| net.now >= until);
    }

    fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket<'static>>(h)
    }

    /// A peer TCP socket connecting to `remote`.
    fn connect(&mut self, remote: impl Into<IpEndpoint>) -> SocketHandle {
        let port = self.next_port;
        self.next_port += 1;
        self.connect_from(port, remote)
    }

    /// A peer TCP socket connecting to `remote` from local port `port`.
    fn connect_from(&mut self, port: u16, remote: impl Into<IpEndpoint>) -> SocketHandle {
        let buf = || tcp::SocketBuffer::new(vec![0; 128 * 1024]);
        let mut socket = tcp::Socket::new(buf(), buf());
        socket
            .connect(self.peer.context(), remote.into(), port)
            .expect("peer connects");
        self.sockets.add(socket)
    }

    /// Sends `request` on `h` and reads until the device closes (or resets)
    /// the connection. Returns what came back.
    fn exchange(&mut self, h: SocketHandle, request: &[u8]) -> Vec<u8> {
        let mut sent = 0;
        let mut response = Vec::new();
        self.run_until("the response", |net| {
            let socket = net.tcp(h);
            if sent < request.len() && socket.can_send() {
                sent += socket.send_slice(&request[sent..]).unwrap();
            }
            read_into(socket, &mut response);
            finished(socket)
        });
        self.tcp(h).close();
        response
    }

    fn request(&mut self, remote: impl Into<IpEndpoint>, request: &[u8]) -> Vec<u8> {
        let h = self.connect(remote);
        self.exchange(h, request)
    }
}

/// Takes what `socket` received.
fn read_into(socket: &mut tcp::Socket<'_>, out: &mut Vec<u8>) {
    while socket.can_recv() {
        socket
            .recv(|b| {
                out.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
    }
}

/// The device closed (FIN, read to the end) or reset the connection.
fn finished(socket: &tcp::Socket<'_>) -> bool {
    !socket.may_recv()
        && !matches!(
            socket.state(),
            tcp::State::SynSent | tcp::State::SynReceived
        )
}

fn status(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    text.lines().next().unwrap_or("").to_string()
}

fn listener(port: u16) -> Listener {
    Listener {
        name: format!("http{port}"),
        port,
        mounts: vec![Mount {
            prefix: "/".into(),
            protocol: "http".into(),
        }],
        websocket: Vec::new(),
        default_websocket: None,
        tls: None,
    }
}

/// The `http-post` guest at `/` on each of `ports`.
fn http_device(ports: &[u16], max_connections: usize) -> Config {
    Config {
        name: "smol".into(),
        listeners: ports.iter().map(|p| listener(*p)).collect(),
        protocols: vec![Protocol {
            name: "http".into(),
            handler: Handler::Wasm(wasmgate_guests::HTTP_POST.to_vec()),
        }],
        limits: Limits {
            max_connections,
            ..Limits::DEFAULT
        },
        guest: GuestLimits::DEFAULT,
        admin: None,
        clients: Vec::new(),
        trust: None,
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: device\r\nConnection: close\r\n\r\n";

/// `POST /upload` of `body`, `Connection: close`.
fn post(body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nHost: device\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}
const ACK: &str = r#"{"status": "success", "message": "Received your request."}"#;

// ---- HTTP server ----

#[test]
fn a_get_and_a_64_kib_post_are_answered_by_the_guest() {
    let mut net = Net::new(http_device(&[80], 8), |_| {});
    let response = net.request((DEVICE_V4, 80), GET);
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
    assert!(String::from_utf8_lossy(&response).contains("wasmgate simulated device"));

    let body: Vec<u8> = (0..64 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let response = net.request((DEVICE_V4, 80), &post(&body));
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
    assert!(String::from_utf8_lossy(&response).ends_with(ACK));
    // Both connections are closed and their sockets given back.
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.ctx.connections(), 0);
    assert_eq!(net.driver.sockets_in_use().0, 2, "only the listening pool");
}

/// The `HTTP_BODY` pieces [`BodyPieces`] saw.
static BODY_PIECES: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Records each body piece and answers `200` when the body is in.
#[derive(Debug)]
struct BodyPieces;

impl NativeProtocol for BodyPieces {
    fn callback(&mut self, call: &mut Call, why: i32, input: &[u8]) -> i32 {
        match why {
            reason::HTTP_BODY => BODY_PIECES.lock().unwrap().push(input.to_vec()),
            reason::HTTP_BODY_COMPLETION => {
                let http = &mut call.http;
                let done = http
                    .begin_head(200)
                    .and_then(|()| http.set_content_length(Some(0)))
                    .and_then(|()| http.finalize_head())
                    .and_then(|()| http.write_body(b"", true));
                return i32::from(done.is_err());
            }
            _ => {}
        }
        0
    }
}

#[test]
fn bytes_that_wrap_the_sockets_ring_reach_the_handler_as_one_piece() {
    let mut config = http_device(&[80], 8);
    config.protocols[0].handler = Handler::Native(|| Box::new(BodyPieces));
    let mut net = Net::new(config, |_| {});
    // The body's pieces arrive at every offset of the device's 4 KiB
    // receive ring, so many of them wrap around its end.
    let body: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let response = net.request((DEVICE_V4, 80), &post(&body));
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
    let pieces = BODY_PIECES.lock().unwrap().clone();
    assert!(pieces.concat() == body, "the body's bytes, in order");
    // The peer's segments come two at a time (2,920 bytes) here, each pair
    // one piece: 23, one more for the head's share of the first. Split at
    // the ring's end wherever they wrap, they were 39.
    let arrivals = body.len().div_ceil(2 * 1460);
    let sizes: Vec<usize> = pieces.iter().map(Vec::len).collect();
    assert!(
        sizes.len() <= arrivals + 1,
        "{} pieces for {arrivals} arrivals: {sizes:?}",
        sizes.len()
    );
}

#[test]
fn two_listening_ports_are_both_served() {
    let mut net = Net::new(http_device(&[80, 8080], 8), |_| {});
    assert_eq!(net.driver.sockets_in_use(), (4, 8 + 2 * 2 + 1));
    for port in [80, 8080, 80] {
        let response = net.request((DEVICE_V4, port), GET);
        assert_eq!(status(&response), "HTTP/1.1 200 OK", "port {port}");
    }
    // Nothing listens on 81: the SYN is refused.
    let h = net.connect((DEVICE_V4, 81));
    net.run_until("the reset", |net| finished(net.tcp(h)));
    assert_eq!(net.tcp(h).state(), tcp::State::Closed);
}

#[test]
fn connections_over_the_limit_get_503_or_a_reset_and_the_device_recovers() {
    // 2 connections, 1 listener with 2 listening sockets, 1 reserve: 5 sockets.
    let mut net = Net::new(http_device(&[80], 2), |_| {});
    assert_eq!(net.driver.sockets_in_use(), (2, 5));
    // Two clients take the two connections and keep them (no request yet).
    let admitted: Vec<SocketHandle> = (0..2)
        .map(|_| {
            let h = net.connect((DEVICE_V4, 80));
            net.run_until("established", |net| {
                net.tcp(h).state() == tcp::State::Established && net.ctx.connections() >= 1
            });
            h
        })
        .collect();
    net.run_until("both accepted", |net| net.ctx.connections() == 2);

    // Four more at once: two reach a listening socket and read the 503, the
    // SYNs of the others find none and are reset.
    let over: Vec<SocketHandle> = (0..4).map(|_| net.connect((DEVICE_V4, 80))).collect();
    let mut answers = vec![Vec::new(); over.len()];
    net.run_until("every extra client answered", |net| {
        over.iter().zip(answers.iter_mut()).all(|(h, out)| {
            let socket = net.tcp(*h);
            read_into(socket, out);
            finished(socket)
        })
    });
    let mut busy = 0;
    let mut reset = 0;
    for out in &answers {
        if out.is_empty() {
            reset += 1;
        } else {
            let text = String::from_utf8_lossy(out);
            assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
            assert!(text.contains("Retry-After: 1\r\n"), "{text}");
            busy += 1;
        }
    }
    assert!(
        busy >= 1 && reset >= 1,
        "{busy} got 503, {reset} were reset"
    );
    assert!(net.ctx.stats().refused >= busy as u64);
    for h in &over {
        net.tcp(*h).close();
    }

    // The admitted connections were not disturbed.
    for h in admitted {
        let response = net.exchange(h, GET);
        assert_eq!(status(&response), "HTTP/1.1 200 OK");
    }
    // And once they are gone, a new client is served as usual.
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.ctx.connections(), 0);
    let response = net.request((DEVICE_V4, 80), GET);
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
}

#[test]
fn staggered_clients_over_the_limit_all_read_503() {
    // With the clients one after the other, the reserve socket (and the
    // slots of finished 503s) always leaves a listening socket.
    let mut net = Net::new(http_device(&[80], 1), |net| net.reserve_sockets = 1);
    let held = net.connect((DEVICE_V4, 80));
    net.run_until("accepted", |net| net.ctx.connections() == 1);
    for _ in 0..5 {
        let response = net.request((DEVICE_V4, 80), GET);
        assert_eq!(status(&response), "HTTP/1.1 503 Service Unavailable");
    }
    let response = net.exchange(held, GET);
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
}

#[cfg(feature = "ipv6")]
const DEVICE_V6: smoltcp::wire::Ipv6Address =
    smoltcp::wire::Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
#[cfg(feature = "ipv6")]
const PEER_V6: smoltcp::wire::Ipv6Address =
    smoltcp::wire::Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

#[cfg(feature = "ipv6")]
#[test]
fn a_get_over_ipv6_is_answered() {
    let mut net = Net::new(http_device(&[80], 8), |net| {
        net.ipv6 = Some((smoltcp::wire::Ipv6Cidr::new(DEVICE_V6, 64), None));
    });
    let response = net.request((IpAddress::Ipv6(DEVICE_V6), 80), GET);
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
    // The same device still answers on IPv4.
    let response = net.request((DEVICE_V4, 80), GET);
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
}

// ---- client connections ----

fn client_device(protocol: Protocol, clients: Vec<Client>) -> Config {
    Config {
        name: "smol-client".into(),
        listeners: Vec::new(),
        protocols: vec![protocol],
        limits: Limits::DEFAULT,
        guest: GuestLimits::DEFAULT,
        admin: None,
        clients,
        trust: None,
    }
}

fn client(name: &str, protocol: &str, address: &str, port: u16) -> Client {
    Client {
        name: name.into(),
        protocol: protocol.into(),
        target: ClientTarget {
            address: address.into(),
            port,
            path: "/feed".into(),
            host: None,
            origin: None,
            ws_protocol: Some("echo-protocol".into()),
            tls: None,
        },
        reconnect: false,
    }
}

/// Answers one DNS query for an A record with `PEER_V4`.
fn dns_answer(query: &[u8]) -> Vec<u8> {
    // Header (12 bytes), then the question: the name, type and class.
    let mut end = 12;
    while query[end] != 0 {
        end += 1 + query[end] as usize;
    }
    end += 1 + 4;
    let mut answer = query[..end].to_vec();
    answer[2] = 0x81; // a response, recursion desired
    answer[3] = 0x80; // recursion available, no error
    answer[6..8].copy_from_slice(&1u16.to_be_bytes()); // one answer
    answer.extend_from_slice(&[0xc0, 12]); // the question's name
    answer.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    answer.extend_from_slice(&60u32.to_be_bytes());
    answer.extend_from_slice(&4u16.to_be_bytes());
    answer.extend_from_slice(&PEER_V4.octets());
    answer
}

#[test]
fn the_ws_client_guest_connects_by_name_and_greets_the_server() {
    let config = client_device(
        Protocol {
            name: "echo-protocol".into(),
            handler: Handler::Wasm(wasmgate_guests::WS_CLIENT.to_vec()),
        },
        vec![client("echo", "echo-protocol", "echo.test", 7681)],
    );
    let mut net = Net::new(config, |net| {
        net.dns_servers = vec![IpAddress::Ipv4(PEER_V4)];
    });
    // The peer: a DNS server on port 53 and a WebSocket server on 7681.
    let udp_buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 2048]);
    let mut dns = udp::Socket::new(udp_buf(), udp_buf());
    dns.bind(53).unwrap();
    let dns = net.sockets.add(dns);
    let buf = || tcp::SocketBuffer::new(vec![0; 8192]);
    let mut server = tcp::Socket::new(buf(), buf());
    server.listen(7681).unwrap();
    let server = net.sockets.add(server);

    let mut request = Vec::new();
    net.run_until("the handshake request", |net| {
        let socket = net.sockets.get_mut::<udp::Socket<'static>>(dns);
        if let Ok((query, meta)) = socket.recv() {
            let answer = dns_answer(query);
            socket.send_slice(&answer, meta.endpoint).unwrap();
        }
        read_into(net.tcp(server), &mut request);
        request.ends_with(b"\r\n\r\n")
    });
    let request = String::from_utf8(request).unwrap();
    assert!(request.starts_with("GET /feed HTTP/1.1\r\n"), "{request}");
    let key = request
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .expect("a key");
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: echo-protocol\r\n\r\n"
    );
    net.tcp(server).send_slice(response.as_bytes()).unwrap();

    let greeting = b"Hello, server!";
    let mut frame = Vec::new();
    net.run_until("the greeting", |net| {
        read_into(net.tcp(server), &mut frame);
        frame.len() >= 6 + greeting.len()
    });
    assert_eq!(frame[0], 0x81, "a final text frame");
    assert_eq!(frame[1], 0x80 | greeting.len() as u8, "masked");
    let mask = &frame[2..6];
    let text: Vec<u8> = frame[6..]
        .iter()
        .zip(mask.iter().cycle())
        .map(|(b, m)| b ^ m)
        .collect();
    assert_eq!(text, greeting);
    assert_eq!(net.ctx.connections(), 1);

    // Eight messages in one segment: a CLIENT_RECEIVE callback each, the
    // seven behind the first taken in its entry (`export_lws_callback!`
    // takes them with `wasmgate_receive_next`, as `export_ws!` does).
    net.run_for(Duration::from_millis(20));
    let before = net.ctx.stats();
    let eight: Vec<u8> = (0..8)
        .flat_map(|i| {
            let text = format!("message {i}");
            [vec![0x81, text.len() as u8], text.into_bytes()].concat()
        })
        .collect();
    assert_eq!(net.tcp(server).send_slice(&eight).unwrap(), eight.len());
    let log = common::GuestLines::default();
    log.record(|| {
        net.run_until("eight callbacks", |net| {
            net.ctx.stats().callbacks - before.callbacks >= 8
        });
        net.run_for(Duration::from_millis(20));
    });
    let after = net.ctx.stats();
    assert_eq!(after.callbacks - before.callbacks, 8, "one per message");
    assert_eq!(after.entries - before.entries, 1, "all in one entry");
    let expected: Vec<String> = (0..8).map(|i| format!("Received: message {i}")).collect();
    assert_eq!(log.lines(), expected, "each message whole, in order");
    assert_eq!(net.ctx.connections(), 1);
}

/// `CLIENT_CONNECTION_ERROR` texts seen by [`Recorder`].
static CONNECT_ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Debug)]
struct Recorder;

impl NativeProtocol for Recorder {
    fn callback(&mut self, _call: &mut Call, why: i32, input: &[u8]) -> i32 {
        if why == reason::CLIENT_CONNECTION_ERROR {
            let text = String::from_utf8_lossy(input).into_owned();
            CONNECT_ERRORS.lock().unwrap().push(text);
        }
        0
    }
}

#[test]
fn refused_and_unresolvable_connects_are_reported_and_free_their_sockets() {
    let config = client_device(
        Protocol {
            name: "rec".into(),
            handler: Handler::Native(|| Box::new(Recorder)),
        },
        vec![
            // Nothing listens there: the peer answers the SYN with a reset.
            client("refused", "rec", "192.168.69.2", 7682),
            // No DNS server configured.
            client("nameless", "rec", "nosuch.example", 80),
            // Nobody has that address: no ARP answer, no SYN-ACK.
            client("silent", "rec", "192.168.69.99", 80),
        ],
    );
    let mut net = Net::new(config, |_| {});
    net.run_until("every failure", |_| {
        CONNECT_ERRORS.lock().unwrap().len() == 3
    });
    let mut errors = CONNECT_ERRORS.lock().unwrap().clone();
    errors.sort();
    assert_eq!(errors[0], "cannot resolve `nosuch.example`: no DNS server");
    assert_eq!(errors[1], "connection refused");
    assert_eq!(errors[2], "timed out");
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.ctx.connections(), 0);
    assert_eq!(net.driver.sockets_in_use().0, 0);
}

// ---- closing and addresses ----

#[test]
fn a_peer_that_never_closes_does_not_keep_its_socket() {
    let mut net = Net::new(http_device(&[80], 8), |_| {});
    let h = net.connect((DEVICE_V4, 80));
    let mut response = Vec::new();
    let mut sent = false;
    net.run_until("the device's FIN", |net| {
        let socket = net.tcp(h);
        if !sent && socket.can_send() {
            socket.send_slice(GET).unwrap();
            sent = true;
        }
        read_into(socket, &mut response);
        finished(socket)
    });
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
    // The peer never sends its FIN: after the linger the device aborts.
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.driver.sockets_in_use().0, 2, "only the listening pool");
    assert_eq!(
        net.tcp(h).state(),
        tcp::State::Closed,
        "reset by the device"
    );
}

#[test]
fn a_client_that_reuses_its_port_right_after_a_close_is_answered_at_once() {
    // A client cycling through its ports quickly (the simulator's gateway
    // under a burst of short connections) comes back from a port whose last
    // connection the device closed a moment ago. The device's socket of that
    // connection must be gone by then: smoltcp drops a SYN that matches a
    // socket in TIME-WAIT, and the client would wait a second for its
    // retransmission.
    let mut net = Net::new(http_device(&[80], 8), |_| {});
    const PORT: u16 = 45000;
    let h = net.connect_from(PORT, (DEVICE_V4, 80));
    let response = net.exchange(h, GET);
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
    let closing = net.now;
    net.run_until("the close finishes", |net| {
        net.tcp(h).state() == tcp::State::Closed
    });
    // The device acknowledged our FIN (a lost last ACK would have the peer
    // retransmit its FIN after a second, and get a reset).
    let took = net.now - closing;
    assert!(took < Duration::from_millis(100), "the close took {took:?}");
    net.sockets.remove(h);

    // At once: the device's socket went when it acknowledged the peer's FIN.
    let again = net.now;
    let h = net.connect_from(PORT, (DEVICE_V4, 80));
    let response = net.exchange(h, GET);
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
    let took = net.now - again;
    assert!(
        took < Duration::from_millis(500),
        "the second connection from port {PORT} took {took:?} (a SYN retransmission)"
    );
}

const LEASED: Ipv4Address = Ipv4Address::new(192, 168, 69, 50);

/// A one-address DHCP server: OFFER for DISCOVER, ACK for REQUEST.
fn dhcp_reply(request: &[u8]) -> Option<Vec<u8>> {
    use smoltcp::wire::{DhcpMessageType, DhcpPacket, DhcpRepr};
    let packet = DhcpPacket::new_checked(request).ok()?;
    let asked = DhcpRepr::parse(&packet).ok()?;
    let message_type = match asked.message_type {
        DhcpMessageType::Discover => DhcpMessageType::Offer,
        DhcpMessageType::Request => DhcpMessageType::Ack,
        _ => return None,
    };
    let reply = DhcpRepr {
        message_type,
        transaction_id: asked.transaction_id,
        secs: 0,
        client_hardware_address: asked.client_hardware_address,
        client_ip: Ipv4Address::UNSPECIFIED,
        your_ip: LEASED,
        server_ip: PEER_V4,
        router: Some(PEER_V4),
        subnet_mask: Some(Ipv4Address::new(255, 255, 255, 0)),
        relay_agent_ip: Ipv4Address::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(PEER_V4),
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: Some(3600),
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut out = vec![0; reply.buffer_len()];
    reply
        .emit(&mut DhcpPacket::new_unchecked(&mut out[..]))
        .ok()?;
    Some(out)
}

#[test]
fn dhcp_gives_the_device_its_address_and_it_serves_there() {
    let mut net = Net::new(http_device(&[80], 8), |net| net.ipv4 = Ipv4Setup::Dhcp);
    assert_eq!(net.driver.ipv4(), None);
    let udp_buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]);
    let mut server = udp::Socket::new(udp_buf(), udp_buf());
    server.bind(67).unwrap();
    let server = net.sockets.add(server);
    net.run_until("a lease", |net| {
        let socket = net.sockets.get_mut::<udp::Socket<'static>>(server);
        if let Ok((request, _)) = socket.recv() {
            let request = request.to_vec();
            if let Some(reply) = dhcp_reply(&request) {
                let to = IpEndpoint::new(Ipv4Address::BROADCAST.into(), 68);
                socket.send_slice(&reply, to).unwrap();
            }
        }
        net.driver.ipv4().is_some()
    });
    assert_eq!(net.driver.ipv4(), Some(Ipv4Cidr::new(LEASED, 24)));
    let response = net.request((LEASED, 80), GET);
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
}

#[test]
fn a_multicast_mac_is_made_unicast_instead_of_panicking() {
    let mut net = Net::new(http_device(&[80], 8), |net| net.mac[0] |= 1);
    let response = net.request((DEVICE_V4, 80), GET);
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
}

/// The TCP segments of `frames` (Ethernet, IPv4): each one's payload length
/// and acknowledgement number.
fn tcp_segments(frames: &Queue) -> Vec<(usize, u32)> {
    use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket};
    let mut segments = Vec::new();
    for frame in frames {
        let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
            continue;
        };
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            continue;
        }
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            continue;
        };
        if ip.next_header() != IpProtocol::Tcp {
            continue;
        }
        let tcp = TcpPacket::new_checked(ip.payload()).expect("a whole TCP segment");
        segments.push((tcp.payload().len(), tcp.ack_number().0 as u32));
    }
    segments
}

#[test]
fn the_answer_carries_the_acknowledgement_of_the_request() {
    // The driver takes every frame in, lets the context answer, and only
    // then sends: the acknowledgement of a request of two segments (more
    // than a full one unread, which smoltcp acknowledges at once, without
    // its 10 ms delay) rides on the response's first segment instead of
    // going ahead as a segment of its own: one frame fewer per exchange,
    // for the link and both stacks.
    let mut net = Net::new(http_device(&[80], 8), |_| {});
    let h = net.connect((DEVICE_V4, 80));
    net.run_until("connected", |net| net.tcp(h).may_send());
    net.run_for(Duration::from_millis(50));
    let request = post(&[b'x'; 1800]);
    net.tcp(h).set_nagle_enabled(false);
    let sent = net.tcp(h).send_slice(&request).unwrap();
    assert_eq!(sent, request.len());
    // The peer sends the request...
    let timestamp = net.smol_now();
    let mut peer = End {
        rx: &mut net.to_peer,
        tx: &mut net.to_device,
    };
    net.peer.poll(timestamp, &mut peer, &mut net.sockets);
    let segments = tcp_segments(&net.to_device);
    assert_eq!(segments.len(), 2, "the request: {segments:?}");
    // ...and the device's one turn answers it.
    let mut device = End {
        rx: &mut net.to_device,
        tx: &mut net.to_peer,
    };
    net.driver.poll(&mut net.ctx, &mut device, net.now);
    let segments = tcp_segments(&net.to_peer);
    let acked_by = segments
        .iter()
        .map(|&(_, ack)| ack)
        .max()
        .expect("an answer");
    let first = segments.first().expect("an answer");
    assert!(
        first.0 > 0 && first.1 == acked_by,
        "the device's first segment {first:?} should carry both the response and the \
         acknowledgement of the request; it sent {segments:?} (payload bytes, ack number)"
    );
    let response = String::from_utf8_lossy(&net.exchange(h, b"")).into_owned();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with(ACK), "{response}");
}

#[test]
fn a_socket_in_time_wait_makes_room_only_after_its_last_ack_is_out() {
    // A set with room for two sockets: one connection and one listening
    // socket. The device closes connection A first; the peer's FIN then
    // arrives together with the ACK that completes connection C's
    // handshake. C takes the listening socket, and refilling the pool needs
    // room: A's socket, in TIME-WAIT, may give it only once the ACK of A's
    // FIN has gone out. Dropped before, the peer would wait in LAST-ACK,
    // resend its FIN a second later and get a reset.
    let mut net = Net::new(http_device(&[80], 1), |n| {
        n.listen_backlog = 1;
        n.reserve_sockets = 0;
    });
    let a = net.connect((DEVICE_V4, 80));
    let mut sent = false;
    let mut response = Vec::new();
    net.run_until("the device answers A and closes its side", |net| {
        let socket = net.tcp(a);
        if !sent && socket.can_send() {
            sent = socket.send_slice(GET).unwrap() == GET.len();
        }
        read_into(socket, &mut response);
        finished(socket)
    });
    assert_eq!(status(&response), "HTTP/1.1 200 OK");
    net.run_for(Duration::from_millis(20));
    assert_eq!(
        net.tcp(a).state(),
        tcp::State::CloseWait,
        "the device's FIN is acknowledged"
    );

    let c = net.connect((DEVICE_V4, 80));
    net.turn(); // C's SYN goes out
    assert_eq!(tcp_segments(&net.to_device).len(), 1, "C's SYN");
    net.tcp(a).close();
    net.turn(); // the SYN-ACK comes back; C's ACK and A's FIN go out together
    assert_eq!(net.tcp(c).state(), tcp::State::Established);
    assert_eq!(net.tcp(a).state(), tcp::State::LastAck);
    assert_eq!(tcp_segments(&net.to_device).len(), 2, "C's ACK and A's FIN");

    let closing = net.now;
    net.run_until("A's close finishes", |net| {
        net.tcp(a).state() == tcp::State::Closed
    });
    let took = net.now - closing;
    assert!(
        took < Duration::from_millis(100),
        "A's FIN was acknowledged after {took:?} (a retransmission: its socket went first)"
    );
    let response = String::from_utf8_lossy(&net.exchange(c, GET)).into_owned();
    assert!(
        response.starts_with("HTTP/1.1 200 OK"),
        "C is served: {response}"
    );
}
