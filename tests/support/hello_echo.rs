//! The device `runtime/benches/guest_vs_native.rs` and the runtime's
//! allocation test drive without sockets: `hello` at `/hello`, every
//! WebSocket upgrade to `echo`, default limits.

use std::time::Instant;

use wasmgate::config::{GuestLimits, Handler, Limits, Listener, Mount, Protocol};
use wasmgate::context::native::{Echo, Hello};
use wasmgate::{Config, Context};

/// The device twice: with `guests/hello` and `guests/ws-echo` as WebAssembly
/// guests, and with the runtime's native `Hello` and `Echo`.
pub fn guest_and_native() -> (Context, Context) {
    let guest = device(
        Handler::Wasm(wasmgate_guests::HELLO.to_vec()),
        Handler::Wasm(wasmgate_guests::WS_ECHO.to_vec()),
    );
    let native = device(
        Handler::Native(|| Box::new(Hello)),
        Handler::Native(|| Box::new(Echo)),
    );
    (guest, native)
}

/// The device, with `hello` and `echo` as the two protocols' handlers.
pub fn device(hello: Handler, echo: Handler) -> Context {
    let config = Config {
        name: "bench".into(),
        listeners: vec![Listener {
            name: "http".into(),
            port: 80,
            mounts: vec![Mount {
                prefix: "/hello".into(),
                protocol: "hello".into(),
            }],
            websocket: vec!["echo".into()],
            default_websocket: Some("echo".into()),
            tls: None,
        }],
        protocols: vec![
            Protocol {
                name: "hello".into(),
                handler: hello,
            },
            Protocol {
                name: "echo".into(),
                handler: echo,
            },
        ],
        limits: Limits::DEFAULT,
        guest: GuestLimits::DEFAULT,
        admin: None,
        clients: Vec::new(),
        trust: None,
    };
    Context::new(config, Instant::now()).expect("the hello and echo device starts")
}
