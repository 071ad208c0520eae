//! The smallest useful guest: protocol `hello` answers every request with
//! `200 text/plain` `hello world\n`, written in the `HTTP` callback itself. It
//! uses the lws-shaped layer, so it reads like the C callback it replaces
//! (`shared/peers/lws-echo.c` minus the WebSocket part).
//!
//! Run it: `cargo run -p wasmgate-sim -- sim` starts the default device, which
//! mounts it (`builtin:hello`) at `/hello`: `curl -i http://127.0.0.1:8080/hello`.
//! Build it alone: `cargo build --release --target wasm32-unknown-unknown` in
//! `guests/`.
//!
//! It declares (`reasons = [Reason::Http]`) that `HTTP` is the only reason it
//! handles, so the runtime skips the other callbacks of a request.
//!
//! Corners cut: no per-session data (`session = ()`); the method and path are
//! ignored (a `POST` gets the same answer, its body is dropped by the runtime);
//! the body must fit the connection's tx buffer in one write, which 12 bytes do.
//! 64 session slots: they hold no data, so they cost nothing, and a request
//! that ends by closing its connection keeps its slot until the socket is
//! closed, which under a burst of new connections can be many at once.

#![no_std]
// A guest only: it has no host tests, so a host build (`cargo test` in this
// workspace) compiles nothing.
#![cfg(target_arch = "wasm32")]

use wasmgate_guest::lws::{
    Reason, WriteMode, Wsi, lws_add_http_common_headers, lws_finalize_write_http_header,
    lws_http_transaction_completed, lws_write,
};

const BODY: &[u8] = b"hello world\n";

fn callback_hello(wsi: Wsi, reason: Reason, _user: Option<&mut ()>, _in: &[u8]) -> i32 {
    if reason != Reason::Http {
        return 0;
    }
    if lws_add_http_common_headers(wsi, 200, "text/plain", Some(BODY.len() as u64)).is_err()
        || lws_finalize_write_http_header(wsi).is_err()
        || lws_write(wsi, BODY, WriteMode::HTTP_FINAL).is_err()
    {
        return 1;
    }
    match lws_http_transaction_completed(wsi) {
        Ok(false) => 0,
        _ => -1,
    }
}

wasmgate_guest::export_lws_callback!(
    callback_hello,
    name = "hello",
    rx_buffer_size = 128,
    session = (),
    max_sessions = 64,
    // The only reason it acts on: the runtime makes no other callback
    // (`HTTP_BIND_PROTOCOL`, `HTTP_DROP_PROTOCOL`, ...), as if it had returned 0.
    reasons = [Reason::Http],
);
