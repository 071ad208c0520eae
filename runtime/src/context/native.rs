//! Reference handlers compiled into the runtime: the `hello` and `ws-echo`
//! guests' behaviour as [`NativeProtocol`]s. The benchmarks run them against
//! the guests to price the interpreter, and they show what a handler written
//! against [`Call`] looks like.

use crate::guest::{Call, reason};
use crate::http::Completion;
use crate::ws::SendKind;

use super::NativeProtocol;

/// The body [`Hello`] answers with.
pub const HELLO_BODY: &[u8] = b"hello world\n";

/// `guests/hello`: every request gets `200 text/plain` `hello world\n`,
/// written in the `HTTP` callback with the calls the guest makes, in the same
/// order. Like the guest (`reasons = [Reason::Http]`), it declares `HTTP`
/// the only reason it handles.
#[derive(Debug, Default)]
pub struct Hello;

impl NativeProtocol for Hello {
    fn wants(&self, reason: i32) -> bool {
        reason == reason::HTTP
    }

    fn callback(&mut self, call: &mut Call, why: i32, _input: &[u8]) -> i32 {
        if why != reason::HTTP {
            return 0;
        }
        let http = &mut call.http;
        let written = http
            .begin_head(200)
            .and_then(|()| http.add_header(b"content-type", b"text/plain"))
            .and_then(|()| http.set_content_length(Some(HELLO_BODY.len() as u64)))
            .and_then(|()| http.finalize_head())
            .and_then(|()| http.write_body(HELLO_BODY, true));
        if written.is_err() {
            return 1;
        }
        let done = http.finish_response();
        call.completed = Some(done);
        if done == Completion::Close { -1 } else { 0 }
    }
}

/// Room a piece needs in the output buffer: the largest piece the runtime
/// gives a native handler, plus a frame header.
const PIECE_ROOM: usize = super::NATIVE_RX_BUFFER + 14;

/// `guests/ws-echo` without its session limit: every piece goes back as it
/// came (same opcode, same fragmentation). It keeps no per-connection state:
/// before the output buffer could refuse the next piece it pauses receiving
/// and asks for `SERVER_WRITEABLE`, which resumes it.
#[derive(Debug, Default)]
pub struct Echo;

impl NativeProtocol for Echo {
    fn callback(&mut self, call: &mut Call, why: i32, input: &[u8]) -> i32 {
        match why {
            reason::RECEIVE => {
                let Some(ws) = call.ws.as_mut() else {
                    return -1;
                };
                let f = call.fragment;
                let kind = match (f.first, f.binary) {
                    (false, _) => SendKind::Continuation,
                    (true, true) => SendKind::Binary,
                    (true, false) => SendKind::Text,
                };
                if ws.send(kind, input, f.last).is_err() {
                    return -1;
                }
                if ws.tx_space() < PIECE_ROOM {
                    call.rx_flow = Some(false);
                    call.writable_requested = true;
                }
                0
            }
            reason::SERVER_WRITEABLE => {
                call.rx_flow = Some(true);
                0
            }
            _ => 0,
        }
    }
}
