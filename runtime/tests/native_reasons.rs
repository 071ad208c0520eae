//! A native handler is called for the reasons it says it handles
//! ([`NativeProtocol::wants`]), as a guest is for those its `wasmgate_wants`
//! names: the runtime's `Hello` and `guests/hello` (`reasons = [Http]`) are
//! entered the same number of times per request, so that the benchmark that
//! prices the interpreter compares the same work. A handler that names no
//! reasons gets every one, in lws's order.
//!
//! Driven through [`Context`] as a network driver drives it.

#[path = "../../tests/support/hello_echo.rs"]
mod hello_echo;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use wasmgate::Context;
use wasmgate::config::Handler;
use wasmgate::context::NativeProtocol;
use wasmgate::context::native::{Echo, HELLO_BODY, Hello};
use wasmgate::guest::{Call, reason};

const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nHost: device\r\n\r\n";
const REQUESTS: u64 = 3;

/// Serves [`REQUESTS`] keep-alive `GET`s on one connection; each must be
/// answered with `hello world`.
fn serve(ctx: &mut Context) {
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let now = Instant::now();
    let id = ctx.accept(0, peer, now).expect("a free slot");
    for _ in 0..REQUESTS {
        assert_eq!(ctx.receive(id, REQUEST, now), REQUEST.len());
        ctx.service(now);
        let tx = ctx.transmit(id);
        assert!(
            tx.starts_with(b"HTTP/1.1 200 OK\r\n") && tx.ends_with(HELLO_BODY),
            "{tx:?}"
        );
        let n = tx.len();
        ctx.transmitted(id, n, now);
        let _ = ctx.take_dirty();
    }
}

#[test]
fn native_hello_is_entered_as_often_as_the_guest() {
    let (mut guest, mut native) = hello_echo::guest_and_native();
    let (g0, n0) = (guest.stats(), native.stats());
    serve(&mut guest);
    serve(&mut native);
    let (g1, n1) = (guest.stats(), native.stats());
    assert_eq!(
        g1.callbacks - g0.callbacks,
        REQUESTS,
        "one HTTP callback each"
    );
    assert_eq!(
        n1.callbacks - n0.callbacks,
        g1.callbacks - g0.callbacks,
        "the native handler skips what the guest skips"
    );
    assert_eq!(n1.entries - n0.entries, g1.entries - g0.entries);
}

/// The reasons [`Recorder`] was called with, in order.
static SEEN: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Answers like `Hello` and notes every reason it is called with; wants
/// every reason (the trait's default).
#[derive(Debug)]
struct Recorder;

impl NativeProtocol for Recorder {
    fn callback(&mut self, call: &mut Call, why: i32, input: &[u8]) -> i32 {
        SEEN.lock().unwrap().push(why);
        Hello.callback(call, why, input)
    }
}

#[test]
fn a_native_handler_that_names_no_reasons_gets_every_one() {
    let mut ctx = hello_echo::device(
        Handler::Native(|| Box::new(Recorder)),
        Handler::Native(|| Box::new(Echo)),
    );
    SEEN.lock().unwrap().clear();
    serve(&mut ctx);
    let seen = SEEN.lock().unwrap().clone();
    let per_request = [
        reason::HTTP_BIND_PROTOCOL,
        reason::HTTP,
        reason::HTTP_DROP_PROTOCOL,
    ];
    assert_eq!(seen, per_request.repeat(REQUESTS as usize));
    assert_eq!(ctx.stats().callbacks, 3 * REQUESTS);
}
