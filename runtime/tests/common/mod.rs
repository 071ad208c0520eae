//! Helpers shared by the runtime's integration tests.

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

use wasmgate::config::{GuestLimits, Handler, Limits, Listener, Mount, Protocol};
use wasmgate::context::ConnId;
use wasmgate::{Config, Context};

/// A device with one listener that mounts `module`, as protocol `protocol`, at `/`.
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub fn device(protocol: &str, module: Vec<u8>) -> Context {
    let listener = Listener {
        name: "http".into(),
        port: 80,
        mounts: vec![Mount {
            prefix: "/".into(),
            protocol: protocol.into(),
        }],
        websocket: Vec::new(),
        default_websocket: None,
        tls: None,
    };
    device_with(listener, protocol, Handler::Wasm(module))
}

/// A WebSocket upgrade request, as a browser sends it.
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: device\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// A device whose one listener upgrades every WebSocket to `module`, as
/// protocol `protocol` (and serves no HTTP paths).
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub fn websocket_device(protocol: &str, module: Vec<u8>) -> Context {
    device_with(
        websocket_listener(protocol),
        protocol,
        Handler::Wasm(module),
    )
}

/// A listener (port 80) whose every WebSocket goes to `protocol`.
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub fn websocket_listener(protocol: &str) -> Listener {
    Listener {
        name: "http".into(),
        port: 80,
        mounts: Vec::new(),
        websocket: vec![protocol.into()],
        default_websocket: Some(protocol.into()),
        tls: None,
    }
}

/// Opens a WebSocket on `ctx`'s first listener and returns the connection
/// and what it sent after the `101`'s head (checked to be a `101`).
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub fn open_websocket(ctx: &mut Context, now: Instant) -> (ConnId, Vec<u8>) {
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
    let id = ctx.accept(0, peer, now).expect("a free slot");
    ctx.receive(id, UPGRADE, now);
    ctx.service(now);
    let tx = drain(ctx, id, now);
    assert!(tx.starts_with(b"HTTP/1.1 101 "), "{tx:?}");
    let head_end = tx
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    (id, tx[head_end..].to_vec())
}

/// Everything connection `id` has to send now, marked as sent.
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub fn drain(ctx: &mut Context, id: ConnId, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let tx = ctx.transmit(id).to_vec();
        if tx.is_empty() {
            return out;
        }
        ctx.transmitted(id, tx.len(), now);
        out.extend_from_slice(&tx);
    }
}

/// The frames a server sent, as `(fin, opcode, payload)`: unmasked, none
/// cut short, none of 64 KiB or more.
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub fn server_frames(mut tx: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !tx.is_empty() {
        let (fin, opcode) = (tx[0] & 0x80 != 0, tx[0] & 0x0f);
        assert_eq!(tx[1] & 0x80, 0, "a server frame is not masked");
        let (len, at) = match tx[1] {
            126 => (usize::from(u16::from_be_bytes([tx[2], tx[3]])), 4),
            127 => panic!("no 64-bit lengths here"),
            n => (usize::from(n), 2),
        };
        frames.push((fin, opcode, tx[at..at + len].to_vec()));
        tx = &tx[at + len..];
    }
    frames
}

/// A device with `listener` and one protocol, default limits.
pub fn device_with(listener: Listener, protocol: &str, handler: Handler) -> Context {
    Context::new(config_with(listener, protocol, handler), Instant::now()).expect("device starts")
}

/// [`device_with`]'s config, for a test that changes more of it.
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub fn config_with(listener: Listener, protocol: &str, handler: Handler) -> Config {
    Config {
        name: "test".into(),
        listeners: vec![listener],
        protocols: vec![Protocol {
            name: protocol.into(),
            handler,
        }],
        limits: Limits::DEFAULT,
        guest: GuestLimits::DEFAULT,
        admin: None,
        clients: Vec::new(),
        trust: None,
    }
}

/// Records what guests log (events with target `guest`) on the thread that
/// calls [`record`](Self::record), a line each.
#[allow(dead_code, reason = "not every test binary uses every helper")]
#[derive(Clone, Default)]
pub struct GuestLines(Arc<Mutex<Vec<String>>>);

thread_local! {
    /// Where [`Lines`] puts this thread's guest log lines, while it records.
    static RECORDING: RefCell<Option<GuestLines>> = const { RefCell::new(None) };
}

#[allow(dead_code, reason = "not every test binary uses every helper")]
impl GuestLines {
    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `f`, keeping the guest log lines this thread emits meanwhile.
    ///
    /// The subscriber is the process's global one, installed at the first
    /// call, not one scoped to the thread: tests run side by side in one
    /// process, and a call site's interest is cached for every thread; with
    /// a scoped subscriber, another test's thread could cache "nobody
    /// listens" for the guest's log call site in the middle of a recording,
    /// and the lines after that were lost (one line of eight, once).
    pub fn record<T>(&self, f: impl FnOnce() -> T) -> T {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            tracing::subscriber::set_global_default(Lines)
                .expect("no other global subscriber in the runtime's tests");
        });
        // A call site registered while the subscriber was being installed
        // may have cached the interest from before it: ask again.
        tracing::callsite::rebuild_interest_cache();
        /// Puts back the recording this one interrupted, if any.
        struct Stop(Option<GuestLines>);
        impl Drop for Stop {
            fn drop(&mut self) {
                RECORDING.with(|r| *r.borrow_mut() = self.0.take());
            }
        }
        let _stop = Stop(RECORDING.with(|r| r.borrow_mut().replace(self.clone())));
        f()
    }
}

/// The global subscriber behind [`GuestLines`]: interested in guest log
/// lines only, which it gives to the recording of the thread they come from.
struct Lines;

impl Subscriber for Lines {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "guest"
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        struct Message(String);
        impl Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        // (Not during the thread's teardown, when the recording is gone.)
        let _ = RECORDING.try_with(|r| {
            if let Some(lines) = r.borrow().as_ref() {
                let mut message = Message(String::new());
                event.record(&mut message);
                lines
                    .0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(message.0);
            }
        });
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[path = "../../../tests/support/ws_frame.rs"]
#[allow(dead_code, reason = "not every test binary uses every helper")]
mod ws_frame;
#[allow(unused_imports, reason = "not every test binary uses every helper")]
pub use ws_frame::client_frame;
