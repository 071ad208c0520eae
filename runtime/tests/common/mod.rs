//! Helpers shared by the runtime's integration tests.

use std::time::Instant;

use wasmgate::config::{GuestLimits, Handler, Limits, Listener, Mount, Protocol};
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
    let listener = Listener {
        name: "http".into(),
        port: 80,
        mounts: Vec::new(),
        websocket: vec![protocol.into()],
        default_websocket: Some(protocol.into()),
        tls: None,
    };
    device_with(listener, protocol, Handler::Wasm(module))
}

/// A device with `listener` and one protocol, default limits.
pub fn device_with(listener: Listener, protocol: &str, handler: Handler) -> Context {
    let config = Config {
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
    };
    Context::new(config, Instant::now()).expect("device starts")
}

#[path = "../../../tests/support/ws_frame.rs"]
#[allow(dead_code, reason = "not every test binary uses every helper")]
mod ws_frame;
#[allow(unused_imports, reason = "not every test binary uses every helper")]
pub use ws_frame::client_frame;
