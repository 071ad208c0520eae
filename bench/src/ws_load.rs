//! `ws-load`: a closed-loop WebSocket echo load generator, the same for every
//! server under test.
//!
//! Each client keeps `in_flight` binary messages in flight (one, by default,
//! as `nostr-bench echo` does): it sends them, and for each whole echo it
//! records the round trip and sends the next. With more than one in flight,
//! the messages a client sends together go out in one write and their echoes
//! come back in few reads, so the generator's system calls per message fall
//! below the server's: the load can then outrun a server that is faster than
//! one message per system call. Everything runs on the calling thread (the
//! caller pins it to one core).
//!
//! With `spin` set, the generator asks for readiness without blocking, again
//! and again, for up to that long before it blocks. A generator that sleeps
//! while it waits makes the server's next write wake it, and on a machine
//! where the two share a host that wake-up is paid by the server, inside its
//! `sendto` (on a virtual machine, an interrupt to the other core through
//! the hypervisor): a server slower than the generator pays it for most of
//! its writes, a faster one for none. Spinning takes that cost out of every
//! server's figures alike; the time spent spinning is reported apart
//! (`idle_seconds`), so that the generator's own work still shows.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tungstenite::handshake::MidHandshake;
use tungstenite::handshake::client::Response;
use tungstenite::{Bytes, ClientHandshake, HandshakeError, Message, WebSocket};

/// Longest time the clients get to connect and finish their handshakes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// Slack after warm-up and measured period before the run gives up waiting.
const GRACE: Duration = Duration::from_secs(5);
/// Longest wait for the server's reply to our close frames.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);

/// What to run.
#[derive(Debug, Clone)]
pub struct WsLoad {
    /// Server address, e.g. 127.0.0.1:7681.
    pub addr: SocketAddr,
    /// Request path, e.g. "/".
    pub path: String,
    /// Number of concurrent connections.
    pub clients: usize,
    /// Messages each connection keeps in flight (at least 1).
    pub in_flight: usize,
    /// Size of each binary message in bytes.
    pub size: usize,
    /// Time the load runs before anything is recorded.
    pub warmup: Duration,
    /// Length of the measured period.
    pub duration: Duration,
    /// How long to ask for readiness without blocking before blocking
    /// (zero: block at once).
    pub spin: Duration,
}

/// What it measured (serialised as one JSON line by the caller).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WsLoadResult {
    /// Echoes completed in the measured period.
    pub messages: u64,
    /// Length of the measured period in seconds.
    pub seconds: f64,
    /// `messages / seconds`.
    pub msgs_per_sec: f64,
    /// Median round-trip latency in microseconds.
    pub p50_us: f64,
    /// 99th-percentile round-trip latency in microseconds.
    pub p99_us: f64,
    /// User + system CPU time of this process during the measured period.
    pub cpu_seconds: f64,
    /// Of the measured period, the time spent asking for readiness without
    /// blocking and finding none (`--spin-us`): CPU time that waited, not
    /// worked. `cpu_seconds - idle_seconds` is the generator's work. (Read
    /// from the wall clock, where `cpu_seconds` counts 10 ms ticks: time
    /// the generator was descheduled while it spun counts here only.)
    #[serde(default)]
    pub idle_seconds: f64,
    /// Connections that failed or closed early, bad echoes, unanswered messages.
    pub errors: u64,
}

/// Command-line arguments of `ws-load`.
#[derive(Debug, clap::Args)]
pub struct WsLoadArgs {
    /// Server address, e.g. 127.0.0.1:7681.
    #[arg(long)]
    pub addr: SocketAddr,
    /// Request path.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Number of concurrent connections.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Messages each connection keeps in flight.
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Warm-up period in milliseconds (not recorded).
    #[arg(long, default_value_t = 1000)]
    pub warmup_ms: u64,
    /// Measured period in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub duration_ms: u64,
    /// Microseconds to ask for readiness without blocking before blocking,
    /// so that the server's writes need not wake the generator (0: block at
    /// once).
    #[arg(long, default_value_t = 0)]
    pub spin_us: u64,
}

impl From<WsLoadArgs> for WsLoad {
    fn from(args: WsLoadArgs) -> Self {
        WsLoad {
            addr: args.addr,
            path: args.path,
            clients: args.clients,
            in_flight: args.in_flight.max(1),
            size: args.size,
            warmup: Duration::from_millis(args.warmup_ms),
            duration: Duration::from_millis(args.duration_ms),
            spin: Duration::from_micros(args.spin_us),
        }
    }
}

/// Runs the load: connects all clients, warms up, measures, closes.
///
/// Fails only if no client at all could connect (or on a local I/O error);
/// clients that fail or misbehave later are counted in `errors`.
pub fn run(load: &WsLoad) -> io::Result<WsLoadResult> {
    if load.clients == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "ws-load needs at least one client",
        ));
    }
    let start = Instant::now();
    let hard_deadline = start + load.warmup + load.duration + GRACE;
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut ctx = Ctx::new(load, start);

    let mut clients: Vec<Client> = (0..load.clients)
        .map(|i| Client::connect(load.addr, &poll, Token(i), &mut ctx))
        .collect();

    // Connect and handshake all clients before any load.
    let connect_deadline = start + CONNECT_TIMEOUT;
    while clients.iter().any(Client::is_connecting) {
        let now = Instant::now();
        if now >= connect_deadline {
            break;
        }
        wait(
            &mut poll,
            &mut events,
            connect_deadline - now,
            Duration::ZERO,
        )?;
        for event in &events {
            clients[event.token().0].ready(&mut ctx);
        }
    }
    for client in clients.iter_mut().filter(|c| c.is_connecting()) {
        client.fail(
            &mut ctx,
            io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"),
        );
    }
    if !clients.iter().any(Client::is_open) {
        let first = ctx.first_error.take();
        let kind = first.as_ref().map_or(io::ErrorKind::Other, io::Error::kind);
        let reason = first.map_or_else(|| "unknown error".to_owned(), |e| e.to_string());
        return Err(io::Error::new(
            kind,
            format!(
                "ws-load: no client could connect to {} ({} of {} failed, first error: {reason})",
                ctx.url, ctx.errors, load.clients
            ),
        ));
    }

    // Warm-up, then the measured period; each client closes on its first
    // echo after the end.
    ctx.sending = true;
    ctx.measure_start = Instant::now() + load.warmup;
    ctx.measure_end = ctx.measure_start + load.duration;
    for client in &mut clients {
        client.ready(&mut ctx);
    }
    let mut cpu_start = None;
    let mut cpu_end = None;
    let mut idle = Duration::ZERO;
    loop {
        let now = Instant::now();
        if cpu_start.is_none() && now >= ctx.measure_start {
            cpu_start = Some(cpu_time()?);
        }
        let next = if now < ctx.measure_start {
            ctx.measure_start
        } else if now < ctx.measure_end {
            ctx.measure_end
        } else {
            if cpu_end.is_none() {
                cpu_end = Some(cpu_time()?);
            }
            let waiting = clients.iter().any(Client::is_open);
            let closing = clients.iter().any(Client::is_closing);
            let close_deadline = ctx.measure_end + CLOSE_TIMEOUT;
            if now >= hard_deadline || (!waiting && (!closing || now >= close_deadline)) {
                break;
            }
            if waiting {
                hard_deadline
            } else {
                close_deadline.min(hard_deadline)
            }
        };
        let spun = wait(
            &mut poll,
            &mut events,
            next.saturating_duration_since(now),
            load.spin,
        )?;
        if cpu_start.is_some() && cpu_end.is_none() {
            idle += spun;
        }
        for event in &events {
            clients[event.token().0].ready(&mut ctx);
        }
    }

    // Clients still waiting for an echo at the hard deadline never got one.
    ctx.errors += clients.iter().filter(|c| c.is_open()).count() as u64;
    drop(clients);

    let seconds = load.duration.as_secs_f64();
    let cpu_seconds = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    Ok(WsLoadResult {
        messages: ctx.messages,
        seconds,
        msgs_per_sec: if seconds > 0.0 {
            ctx.messages as f64 / seconds
        } else {
            0.0
        },
        p50_us: ctx.histogram.value_at_quantile(0.50) as f64,
        p99_us: ctx.histogram.value_at_quantile(0.99) as f64,
        cpu_seconds,
        idle_seconds: idle.as_secs_f64(),
        errors: ctx.errors,
    })
}

/// Waits for readiness events, at most `timeout`: first by asking without
/// blocking for up to `spin`, then by blocking. Returns the time spent
/// asking and finding nothing.
fn wait(
    poll: &mut Poll,
    events: &mut Events,
    timeout: Duration,
    spin: Duration,
) -> io::Result<Duration> {
    let started = Instant::now();
    let spin_until = started + spin.min(timeout);
    let mut now = started;
    while now < spin_until {
        poll_once(poll, events, Duration::ZERO)?;
        if !events.is_empty() {
            return Ok(now - started);
        }
        now = Instant::now();
    }
    poll_once(poll, events, timeout.saturating_sub(now - started))?;
    Ok(now - started)
}

fn poll_once(poll: &mut Poll, events: &mut Events, timeout: Duration) -> io::Result<()> {
    match poll.poll(events, Some(timeout)) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        other => other,
    }
}

/// User + system CPU time of this process, in seconds (Linux only).
fn cpu_time() -> io::Result<f64> {
    let ticks = crate::harness::cpu_ticks(std::process::id())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/self/stat"))?;
    Ok(ticks as f64 / crate::harness::TICKS_PER_SEC)
}

type Ws = WebSocket<Socket>;

/// A client's socket as tungstenite sees it. A short read empties the
/// socket's receive queue, and anything arriving later raises a new
/// readiness event (edge-triggered), so until that event further reads say
/// `WouldBlock` without a system call: the generator spends one `recvfrom`
/// per batch of echoes instead of two.
struct Socket {
    stream: TcpStream,
    /// Set by a short read, cleared by the client's next readiness event.
    drained: Rc<Cell<bool>>,
}

impl io::Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained.get() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let result = self.stream.read(buf);
        match &result {
            Ok(n) if *n > 0 && *n < buf.len() => self.drained.set(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.drained.set(true),
            _ => {}
        }
        result
    }
}

impl io::Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// State shared by all clients.
struct Ctx {
    url: String,
    payload: Bytes,
    /// Whether clients may send (false while connecting).
    sending: bool,
    /// Messages per client in flight.
    in_flight: usize,
    measure_start: Instant,
    measure_end: Instant,
    histogram: Histogram<u64>,
    messages: u64,
    errors: u64,
    first_error: Option<io::Error>,
}

impl Ctx {
    fn new(load: &WsLoad, start: Instant) -> Self {
        let slash = if load.path.starts_with('/') { "" } else { "/" };
        Ctx {
            url: format!("ws://{}{slash}{}", load.addr, load.path),
            // A pattern that makes a shifted or truncated echo visible.
            payload: (0..load.size).map(|i| (i % 251) as u8).collect(),
            sending: false,
            in_flight: load.in_flight.max(1),
            measure_start: start,
            measure_end: start,
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("constant histogram bounds are valid"),
            messages: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, error: io::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
    }

    /// Checks an echo (length and a few bytes) and records it if it completed
    /// in the measured period.
    fn echo(&mut self, sent: Instant, now: Instant, echo: &[u8]) {
        let expected = &self.payload[..];
        let same = echo.len() == expected.len()
            && (expected.is_empty()
                || [0, expected.len() / 2, expected.len() - 1]
                    .iter()
                    .all(|&i| echo[i] == expected[i]));
        if !same {
            self.error(io::Error::new(io::ErrorKind::InvalidData, "bad echo"));
        } else if now >= self.measure_start && now < self.measure_end {
            self.messages += 1;
            let micros = u64::try_from(now.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
            self.histogram.saturating_record(micros);
        }
    }
}

/// Where a connection is.
enum State {
    /// TCP connect in progress.
    Connecting(TcpStream),
    /// WebSocket handshake in progress.
    Handshaking(MidHandshake<ClientHandshake<Socket>>),
    /// Echo loop.
    Open(Ws),
    /// Our close frame is queued or sent; waiting for the server's.
    Closing(Ws),
    /// Failed or finished; the socket is dropped.
    Done,
}

/// One connection.
struct Client {
    state: State,
    /// Send times of the messages in flight, oldest first.
    sent_at: VecDeque<Instant>,
    /// Part of a frame is still queued in tungstenite.
    flush_pending: bool,
    /// Shared with the [`Socket`]: its receive queue is known to be empty.
    drained: Rc<Cell<bool>>,
}

impl Client {
    fn connect(addr: SocketAddr, poll: &Poll, token: Token, ctx: &mut Ctx) -> Self {
        let mut client = Client {
            state: State::Done,
            sent_at: VecDeque::new(),
            flush_pending: false,
            drained: Rc::default(),
        };
        let connected = TcpStream::connect(addr).and_then(|mut stream| {
            poll.registry().register(
                &mut stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match connected {
            Ok(stream) => client.state = State::Connecting(stream),
            Err(e) => ctx.error(e),
        }
        client
    }

    fn is_connecting(&self) -> bool {
        matches!(self.state, State::Connecting(_) | State::Handshaking(_))
    }

    fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing(_))
    }

    fn fail(&mut self, ctx: &mut Ctx, error: io::Error) {
        ctx.error(error);
        self.state = State::Done;
        self.sent_at.clear();
    }

    /// Makes all the progress the socket allows (edge-triggered readiness).
    fn ready(&mut self, ctx: &mut Ctx) {
        self.drained.set(false);
        let result = match mem::replace(&mut self.state, State::Done) {
            State::Connecting(stream) => self.connecting(stream, ctx),
            State::Handshaking(mid) => self.handshaken(mid.handshake(), ctx),
            State::Open(ws) => self.open(ws, ctx),
            State::Closing(ws) => Ok(self.closing(ws)),
            State::Done => Ok(State::Done),
        };
        match result {
            Ok(state) => self.state = state,
            Err(e) => self.fail(ctx, e),
        }
    }

    fn connecting(&mut self, stream: TcpStream, ctx: &mut Ctx) -> io::Result<State> {
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        match stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                return Ok(State::Connecting(stream));
            }
            Err(e) => return Err(e),
        }
        stream.set_nodelay(true)?;
        let socket = Socket {
            stream,
            drained: Rc::clone(&self.drained),
        };
        self.handshaken(tungstenite::client(ctx.url.as_str(), socket), ctx)
    }

    fn handshaken(
        &mut self,
        result: Result<(Ws, Response), HandshakeError<ClientHandshake<Socket>>>,
        ctx: &mut Ctx,
    ) -> io::Result<State> {
        match result {
            Ok((ws, _)) => self.open(ws, ctx),
            Err(HandshakeError::Interrupted(mid)) => Ok(State::Handshaking(mid)),
            Err(HandshakeError::Failure(e)) => Err(into_io(e)),
        }
    }

    /// The echo loop: flush, read the echoes that came, top the messages in
    /// flight up again (one write for all of them).
    fn open(&mut self, mut ws: Ws, ctx: &mut Ctx) -> io::Result<State> {
        if self.flush_pending {
            self.flush_pending = would_block(ws.flush())?;
        }
        // Every echo that has arrived first, so that the messages replacing
        // them go out together, in one write.
        loop {
            match ws.read() {
                Ok(Message::Binary(echo)) => {
                    let now = Instant::now();
                    match self.sent_at.pop_front() {
                        Some(sent) => ctx.echo(sent, now, &echo),
                        None => ctx.error(unexpected("unsolicited message")),
                    }
                }
                Ok(Message::Text(_)) => {
                    self.sent_at.pop_front();
                    ctx.error(unexpected("text echo"));
                }
                Ok(Message::Close(_)) => return Err(unexpected("server closed the connection")),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(into_io(e)),
            }
        }
        if !ctx.sending || self.sent_at.len() >= ctx.in_flight {
            return Ok(State::Open(ws));
        }
        let now = Instant::now();
        if now >= ctx.measure_end {
            if self.sent_at.is_empty() {
                return Ok(self.close(ws));
            }
            return Ok(State::Open(ws));
        }
        while self.sent_at.len() < ctx.in_flight {
            self.sent_at.push_back(now);
            would_block(ws.write(Message::Binary(ctx.payload.clone())))?;
        }
        self.flush_pending = would_block(ws.flush())?;
        Ok(State::Open(ws))
    }

    /// Queues our close frame (best effort).
    fn close(&mut self, mut ws: Ws) -> State {
        match would_block(ws.close(None)) {
            Ok(pending) => {
                self.flush_pending = pending;
                self.closing(ws)
            }
            Err(_) => State::Done,
        }
    }

    /// Waits for the server's close frame; any failure just ends the connection.
    fn closing(&mut self, mut ws: Ws) -> State {
        if self.flush_pending {
            match would_block(ws.flush()) {
                Ok(pending) => self.flush_pending = pending,
                Err(_) => return State::Done,
            }
        }
        loop {
            match ws.read() {
                Ok(Message::Close(_)) => return State::Done,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return State::Closing(ws);
                }
                Err(_) => return State::Done,
            }
        }
    }
}

/// Maps a tungstenite write result to "still pending?" (WouldBlock leaves
/// the data queued in tungstenite).
fn would_block(result: tungstenite::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(false),
        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        Err(e) => Err(into_io(e)),
    }
}

fn into_io(error: tungstenite::Error) -> io::Error {
    match error {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

fn unexpected(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::net::{TcpListener, TcpStream as StdTcpStream};
    use std::thread::{self, JoinHandle};

    /// Serves `connections` WebSocket connections, one thread each; `echo`
    /// chooses whether messages are echoed or ignored.
    fn server(connections: usize, echo: bool) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut workers = Vec::new();
            while workers.len() < connections && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => workers.push(thread::spawn(move || serve(stream, echo))),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            for worker in workers {
                worker.join().unwrap();
            }
        });
        (addr, handle)
    }

    fn serve(stream: StdTcpStream, echo: bool) {
        stream.set_nonblocking(false).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(8)))
            .unwrap();
        let mut ws = tungstenite::accept(stream).unwrap();
        loop {
            match ws.read() {
                Ok(message @ (Message::Binary(_) | Message::Text(_))) => {
                    if echo && ws.send(message).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    fn load(addr: SocketAddr, size: usize) -> WsLoad {
        WsLoad {
            addr,
            path: "/".to_owned(),
            clients: 3,
            in_flight: 1,
            size,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(500),
            spin: Duration::ZERO,
        }
    }

    fn check_echo_run(size: usize, in_flight: usize) {
        let (addr, server) = server(3, true);
        let result = run(&WsLoad {
            in_flight,
            ..load(addr, size)
        })
        .unwrap();
        assert!(result.messages > 0, "{result:?}");
        assert_eq!(result.errors, 0, "{result:?}");
        assert!(result.p50_us <= result.p99_us, "{result:?}");
        assert!((result.seconds - 0.5).abs() < 1e-9, "{result:?}");
        let rate = result.messages as f64 / result.seconds;
        assert!((result.msgs_per_sec - rate).abs() < 1e-6, "{result:?}");
        assert!(result.cpu_seconds >= 0.0, "{result:?}");
        // Our close frames end every server connection.
        server.join().unwrap();
    }

    #[test]
    fn echoes_small_messages() {
        check_echo_run(64, 1);
    }

    #[test]
    fn echoes_pipelined_messages() {
        check_echo_run(64, 8);
    }

    #[test]
    fn echoes_large_messages() {
        check_echo_run(16384, 1);
    }

    /// `wait` spins no longer than asked, nor past its timeout, and stops
    /// spinning at the first event.
    #[test]
    fn wait_spins_for_at_most_its_spin_and_stops_at_an_event() {
        let mut poll = Poll::new().unwrap();
        let mut events = Events::with_capacity(8);
        let waker = mio::Waker::new(poll.registry(), Token(0)).unwrap();
        let ms = Duration::from_millis;

        // Nothing comes: the whole spin is idle, then it blocks till the timeout.
        let started = Instant::now();
        let idle = wait(&mut poll, &mut events, ms(50), ms(5)).unwrap();
        assert!(events.is_empty());
        assert!(idle >= ms(5) && idle < ms(40), "{idle:?}");
        assert!(started.elapsed() >= ms(50), "{:?}", started.elapsed());

        // A spin longer than the timeout ends at the timeout.
        let idle = wait(&mut poll, &mut events, ms(5), ms(500)).unwrap();
        assert!(idle >= ms(5) && idle < ms(200), "{idle:?}");

        // Something ready: found at once, nothing counted as idle.
        waker.wake().unwrap();
        let idle = wait(&mut poll, &mut events, ms(5_000), ms(1_000)).unwrap();
        assert!(!events.is_empty());
        assert!(idle < ms(100), "{idle:?}");
    }

    /// With a spin, the gaps between echoes are spent asking for readiness,
    /// and counted apart from the generator's work.
    #[test]
    fn a_spinning_generator_counts_its_spinning_apart() {
        let (addr, spun) = server(3, true);
        let result = run(&WsLoad {
            spin: Duration::from_millis(1),
            ..load(addr, 64)
        })
        .unwrap();
        assert!(result.messages > 0, "{result:?}");
        assert_eq!(result.errors, 0, "{result:?}");
        assert!(result.idle_seconds > 0.0, "{result:?}");
        assert!(result.idle_seconds < result.seconds, "{result:?}");
        spun.join().unwrap();

        // Without one, nothing is counted.
        let (addr, blocked) = server(3, true);
        let result = run(&load(addr, 64)).unwrap();
        assert_eq!(result.idle_seconds, 0.0, "{result:?}");
        blocked.join().unwrap();
    }

    #[test]
    fn refused_address_fails_fast() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let started = Instant::now();
        let error = run(&load(addr, 64)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }

    #[test]
    fn silent_server_stops_at_deadline() {
        let (addr, _server) = server(3, false);
        let mut load = load(addr, 64);
        load.warmup = Duration::from_millis(10);
        load.duration = Duration::from_millis(10);
        let started = Instant::now();
        let result = run(&load).unwrap();
        assert!(started.elapsed() < load.warmup + load.duration + GRACE + Duration::from_secs(1));
        assert_eq!(result.messages, 0, "{result:?}");
        assert_eq!(result.errors, 3, "{result:?}");
    }

    #[test]
    fn args_defaults() {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: WsLoadArgs,
        }
        let cli = Cli::parse_from(["ws-load", "--addr", "127.0.0.1:7681"]);
        let load = WsLoad::from(cli.args);
        assert_eq!(load.path, "/");
        assert_eq!(load.clients, 50);
        assert_eq!(load.size, 64);
        assert_eq!(load.warmup, Duration::from_secs(1));
        assert_eq!(load.duration, Duration::from_secs(5));
    }
}
