//! The example guest modules, compiled for `wasm32-unknown-unknown` by this
//! crate's build script and embedded as bytes. The simulator's default device
//! serves them; the tests and benchmarks load them like any uploaded module.

macro_rules! guest {
    ($file:literal) => {
        include_bytes!(concat!(env!("WASMGATE_GUEST_DIR"), "/", $file))
    };
}

/// The smallest useful guest: answers every GET with `hello world`.
pub const HELLO: &[u8] = guest!("hello.wasm");
/// The lws port's HTTP example: logs POST bodies and answers with JSON.
pub const HTTP_POST: &[u8] = guest!("http_post.wasm");
/// A guest that misbehaves on purpose (trap, endless loop, memory bomb, bad pointer).
pub const FAULTY: &[u8] = guest!("faulty.wasm");
/// The lws port's WebSocket echo server (protocol `echo_server`): every
/// message back as it came, fragments kept, with rx flow control.
pub const WS_ECHO: &[u8] = guest!("ws_echo.wasm");
/// `ws-echo` as the benchmarks' echo server for 50 clients (feature `bench`):
/// 64 session slots instead of 4, and 4 KiB pieces instead of 1 KiB. Its
/// device needs `max_memory_pages >= 14`, `max_rx_buffer_size >= 4096` and
/// `max_session_data_size >= 12310`: [`WS_ECHO_64_MEMORY_PAGES`] and
/// [`WS_ECHO_64_SESSION_BYTES`] give it room.
pub const WS_ECHO_64: &[u8] = guest!("ws_echo_64.wasm");
/// The `[guest] max_memory_pages` a device running [`WS_ECHO_64`] sets.
pub const WS_ECHO_64_MEMORY_PAGES: u32 = 16;
/// The `[guest] max_session_data_size` a device running [`WS_ECHO_64`] sets.
pub const WS_ECHO_64_SESSION_BYTES: u32 = 16384;
/// Simulated sensor readings pushed to WebSocket clients about once a second
/// (protocol `readings`), with the HTML page that shows them: timers and a
/// broadcast in one lws-shaped callback.
pub const READINGS: &[u8] = guest!("readings.wasm");
/// The lws port's WebSocket client (protocol `echo-protocol`): sends
/// `Hello, server!` once connected and logs every message it receives.
pub const WS_CLIENT: &[u8] = guest!("ws_client.wasm");
/// Drives Autobahn's `fuzzingserver` as the client under test (protocol
/// `autobahn-client`): every case in turn, echoing what the server sends.
pub const AUTOBAHN_CLIENT: &[u8] = guest!("autobahn_client.wasm");

/// Every embedded guest by crate name, as a device config names them
/// (`module = "builtin:http-post"`).
pub const ALL: &[(&str, &[u8])] = &[
    ("hello", HELLO),
    ("http-post", HTTP_POST),
    ("faulty", FAULTY),
    ("ws-echo", WS_ECHO),
    ("ws-echo-64", WS_ECHO_64),
    ("readings", READINGS),
    ("ws-client", WS_CLIENT),
    ("autobahn-client", AUTOBAHN_CLIENT),
];

/// The embedded guest called `name`, if there is one.
pub fn by_name(name: &str) -> Option<&'static [u8]> {
    ALL.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}
