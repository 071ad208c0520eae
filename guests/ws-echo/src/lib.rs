//! The lws port's WebSocket echo server (`shared/peers/lws-echo.c`'s `echo`
//! protocol), as a guest on the idiomatic layer. Protocol `echo_server` sends
//! every message back as it came: text or binary, and in the same pieces, each
//! received piece going out as a piece with the matching write mode (`TEXT` or
//! `BINARY` first, `CONTINUATION` after, `NO_FIN` on all but the last). So a
//! 16 MiB message (Autobahn's case 9) is echoed without ever being held whole:
//! a piece is written at once when the tx buffer takes it, otherwise it waits in
//! a small queue in the session (three pieces of `rx_buffer_size`), and a full
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

use wasmgate_guest::{Error, Flow, Fragment, MessageKind, Ws, WsHandler};

/// Largest piece the runtime hands over, and so the size of a queue slot.
const RX_BUFFER_SIZE: usize = 1024;
/// Pieces a connection may have waiting for the tx buffer.
const QUEUE_DEPTH: usize = 3;

// The per-session data must fit the device's `max_session_data_size` (4096 bytes
// by default): three 1 KiB pieces and their lengths and flags do.
const _: () = assert!(core::mem::size_of::<Echo>() <= 4096);

/// One received piece waiting to be echoed.
#[derive(Clone, Copy)]
struct Piece {
    data: [u8; RX_BUFFER_SIZE],
    len: u16,
    first: bool,
    last: bool,
    binary: bool,
}

impl Piece {
    const EMPTY: Self = Self {
        data: [0; RX_BUFFER_SIZE],
        len: 0,
        first: false,
        last: false,
        binary: false,
    };

    fn bytes(&self) -> &[u8] {
        self.data.get(..usize::from(self.len)).unwrap_or_default()
    }

    fn kind(&self) -> MessageKind {
        if self.binary {
            MessageKind::Binary
        } else {
            MessageKind::Text
        }
    }
}

/// Per-connection state: a ring of pieces not yet written, oldest at `head`.
#[derive(Clone, Copy)]
struct Echo {
    pieces: [Piece; QUEUE_DEPTH],
    head: u8,
    len: u8,
    /// `RECEIVE` is stopped (`lws_rx_flow_control(wsi, 0)`) until the queue drains.
    throttled: bool,
}

impl Default for Echo {
    fn default() -> Self {
        Self {
            pieces: [Piece::EMPTY; QUEUE_DEPTH],
            head: 0,
            len: 0,
            throttled: false,
        }
    }
}

impl Echo {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn is_full(&self) -> bool {
        usize::from(self.len) == QUEUE_DEPTH
    }

    /// Below half full: time to take input again.
    fn has_drained(&self) -> bool {
        usize::from(self.len) * 2 < QUEUE_DEPTH
    }

    /// Queues a copy of `piece`; `false` (and nothing queued) when the queue is
    /// full or the piece is longer than a slot.
    fn push(&mut self, piece: &[u8], fragment: Fragment) -> bool {
        if self.is_full() {
            return false;
        }
        let tail = (usize::from(self.head) + usize::from(self.len)) % QUEUE_DEPTH;
        // `get_mut` rather than indexing: no panic (and no `core::fmt`) in the guest.
        let Some(slot) = self.pieces.get_mut(tail) else {
            return false;
        };
        if piece.len() > slot.data.len() {
            return false;
        }
        // A zip, not `copy_from_slice`, whose length check the optimizer keeps.
        for (dst, src) in slot.data.iter_mut().zip(piece) {
            *dst = *src;
        }
        slot.len = piece.len() as u16;
        slot.first = fragment.first;
        slot.last = fragment.last;
        slot.binary = fragment.binary;
        self.len += 1;
        true
    }

    fn front(&self) -> Option<&Piece> {
        self.pieces
            .get(usize::from(self.head))
            .filter(|_| !self.is_empty())
    }

    fn pop(&mut self) {
        if !self.is_empty() {
            self.head = ((usize::from(self.head) + 1) % QUEUE_DEPTH) as u8;
            self.len -= 1;
        }
    }
}

struct EchoServer;

impl WsHandler for EchoServer {
    type Session = Echo;

    fn on_receive(ws: &mut Ws, echo: &mut Echo, piece: &[u8], fragment: Fragment) -> Flow {
        // Nothing waiting: try to send it on at once, which saves a copy and a
        // round through SERVER_WRITEABLE. Any failure just means "queue it".
        if echo.is_empty()
            && ws
                .send(fragment.kind(), piece, fragment.first, fragment.last)
                .is_ok()
        {
            return Flow::Continue;
        }
        if !echo.push(piece, fragment) {
            // Flow control should make this impossible; dropping a piece would
            // corrupt the message, so give up on the connection instead.
            return ws.close(1011, "echo queue overflow");
        }
        if echo.is_full() && !echo.throttled && ws.rx_flow(false).is_ok() {
            echo.throttled = true;
        }
        match ws.ask_writeable() {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    fn on_writeable(ws: &mut Ws, echo: &mut Echo) -> Flow {
        while let Some(p) = echo.front() {
            match ws.send(p.kind(), p.bytes(), p.first, p.last) {
                Ok(()) => echo.pop(),
                Err(Error::NoSpace) => break,
                Err(_) => return Flow::Close,
            }
        }
        if echo.throttled && echo.has_drained() {
            if ws.rx_flow(true).is_err() {
                return Flow::Close;
            }
            echo.throttled = false;
        }
        if !echo.is_empty() && ws.ask_writeable().is_err() {
            return Flow::Close;
        }
        Flow::Continue
    }
}

wasmgate_guest::export_ws!(
    EchoServer,
    name = "echo_server",
    rx_buffer_size = RX_BUFFER_SIZE,
    max_sessions = 4,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(first: bool, last: bool, binary: bool) -> Fragment {
        Fragment {
            first,
            last,
            binary,
            remaining: 0,
        }
    }

    #[test]
    fn the_queue_keeps_pieces_in_order_and_wraps() {
        let mut q = Echo::default();
        assert!(q.push(b"one", frag(true, false, false)));
        assert!(q.push(b"two", frag(false, false, false)));
        assert!(q.push(b"three", frag(false, true, false)));
        assert!(q.is_full());
        assert!(!q.push(b"four", frag(true, true, true)), "full");
        assert_eq!(q.front().unwrap().bytes(), b"one");
        q.pop();
        assert!(!q.has_drained(), "2 of 3 is not below half");
        assert!(q.push(b"four", frag(true, true, true)), "wraps around");
        for expected in [&b"two"[..], b"three", b"four"] {
            assert_eq!(q.front().unwrap().bytes(), expected);
            q.pop();
        }
        assert!(q.is_empty() && q.has_drained());
        assert!(q.front().is_none());
    }

    #[test]
    fn a_queued_piece_keeps_its_fragment_flags() {
        let mut q = Echo::default();
        assert!(q.push(&[7; RX_BUFFER_SIZE], frag(true, false, true)));
        let p = q.front().unwrap();
        assert_eq!(p.bytes().len(), RX_BUFFER_SIZE);
        assert_eq!(p.kind(), MessageKind::Binary);
        assert!(p.first && !p.last);
        assert!(!q.push(&[0; RX_BUFFER_SIZE + 1], frag(true, true, true)));
    }

    #[test]
    fn an_empty_piece_is_a_valid_message() {
        let mut q = Echo::default();
        assert!(q.push(b"", frag(true, true, false)));
        assert_eq!(q.front().unwrap().bytes(), b"");
    }
}
