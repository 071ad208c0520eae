//! Helpers shared by the runtime's integration tests.

use std::time::Instant;

use wasmgate::config::{GuestLimits, Handler, Limits, Listener, Mount, Protocol};
use wasmgate::{Config, Context};

/// A device with one listener that mounts `module`, as protocol `protocol`, at `/`.
pub fn device(protocol: &str, module: Vec<u8>) -> Context {
    let config = Config {
        name: "test".into(),
        listeners: vec![Listener {
            name: "http".into(),
            port: 80,
            mounts: vec![Mount {
                prefix: "/".into(),
                protocol: protocol.into(),
            }],
            websocket: Vec::new(),
            default_websocket: None,
            tls: None,
        }],
        protocols: vec![Protocol {
            name: protocol.into(),
            handler: Handler::Wasm(module),
        }],
        limits: Limits::DEFAULT,
        guest: GuestLimits::DEFAULT,
        admin: None,
        clients: Vec::new(),
        trust: None,
    };
    Context::new(config, Instant::now()).expect("device starts")
}
