//! The lws port's WebSocket echo server (`shared/peers/lws-echo.c`'s `echo`
//! protocol), as a guest on the idiomatic layer. Protocol `echo_server` sends
//! every message back as it came: text or binary, and in the same pieces, each
//! received piece going out as a piece with the matching write mode (`TEXT` or
//! `BINARY` first, `CONTINUATION` after, `NO_FIN` on all but the last). So a
//! 16 MiB message (Autobahn's case 9) is echoed without ever being held whole:
//! a piece is written at once when the tx buffer takes it, otherwise it waits in
//! a small queue in the session (the SDK's `EchoQueue`: three pieces of
//! `rx_buffer_size`), and a full
//! queue stops `RECEIVE` with `lws_rx_flow_control` until `SERVER_WRITEABLE`
//! has drained it below half, the lws pattern with a bound instead of `malloc`.
//!
//! Run it: list it on a listener of the device config,
//! `[[protocol]] name = "echo_server" module = "builtin:ws-echo"` and, in the
//! `[[listener]]`, `websocket = ["echo_server"]` and
//! `default_websocket = "echo_server"`; then any WebSocket client echoes, e.g.
//! `python3 -m websockets ws://127.0.0.1:8080/`. `tests/ws_echo.rs` and
//! `tests/ws_autobahn.rs` drive it.
//!
//! Corners cut: no pings of its own and no idle timeout (the runtime pings);
//! no `Origin` check, every upgrade is accepted; pieces are queued whole, so a
//! 5-byte piece takes a 1 KiB slot; if the host delivered a piece while the
//! queue is full despite flow control, the connection is closed with 1011
//! rather than the message dropped.

#![no_std]
// The export (and so the handler) exists only on wasm32; host builds run the tests.
#![cfg_attr(
    not(target_arch = "wasm32"),
    allow(dead_code, reason = "exported only on wasm32")
)]

use wasmgate_guest::{EchoQueue, Flow, Fragment, Ws, WsHandler};

/// The benchmarks' echo server (feature `bench`): 64 connections for their 50
/// clients, and pieces of 4 KiB, the size the runtime's native echo handler
/// takes, so that guest and native are compared on the same pieces.
const BENCH: bool = cfg!(feature = "bench");
/// Largest piece the runtime hands over, and so the size of a queue slot.
const RX_BUFFER_SIZE: usize = if BENCH { 4096 } else { 1024 };
/// Pieces a connection may have waiting for the tx buffer.
const QUEUE_DEPTH: usize = 3;
/// Connections served at once: a small device's socket count, or 64.
const MAX_SESSIONS: usize = if BENCH { 64 } else { 4 };
/// The device's `max_session_data_size` the session must fit: the default,
/// or what the benchmarks' device allows.
const MAX_SESSION_DATA: usize = if BENCH { 16384 } else { 4096 };

/// Per-connection state: the pieces not yet written, and the flow control.
type Echo = EchoQueue<QUEUE_DEPTH, RX_BUFFER_SIZE>;

// The per-session data must fit the device's `max_session_data_size`: three
// pieces and their lengths and flags do.
const _: () = assert!(core::mem::size_of::<Echo>() <= MAX_SESSION_DATA);

struct EchoServer;

impl WsHandler for EchoServer {
    type Session = Echo;

    fn on_receive(ws: &mut Ws, echo: &mut Echo, piece: &[u8], fragment: Fragment) -> Flow {
        echo.on_receive(ws, piece, fragment)
    }

    fn on_writeable(ws: &mut Ws, echo: &mut Echo) -> Flow {
        echo.on_writeable(ws)
    }
}

wasmgate_guest::export_ws!(
    EchoServer,
    name = "echo_server",
    rx_buffer_size = RX_BUFFER_SIZE,
    max_sessions = MAX_SESSIONS,
);
