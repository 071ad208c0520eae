//! A bounded echo queue for WebSocket guests: every received piece goes back
//! as it came (text or binary, in the same pieces, with the matching write
//! mode), written at once when the tx buffer takes it, otherwise copied into a
//! ring of `DEPTH` slots of `PIECE` bytes in the session. A full ring stops
//! input with `lws_rx_flow_control` until `SERVER_WRITEABLE` (or
//! `CLIENT_WRITEABLE`) has drained it below half: the lws echo pattern with a
//! bound instead of `malloc`, so a 16 MiB message streams through 1 KiB pieces.
//!
//! Use it as a [`WsHandler`](crate::WsHandler)'s `Session` and call
//! [`EchoQueue::on_receive`] and [`EchoQueue::on_writeable`] from the
//! handler's methods of the same names. Pieces are queued whole (a 5-byte piece
//! takes a `PIECE`-byte slot); a piece delivered while the ring is full despite
//! flow control closes the connection with 1011 rather than being dropped.

use core::fmt;

use crate::http::Flow;
use crate::lws::Error;
use crate::ws::{Fragment, MessageKind, Ws};

/// One received piece waiting to be echoed.
#[derive(Clone, Copy)]
pub struct Piece<const PIECE: usize> {
    data: [u8; PIECE],
    len: u16,
    first: bool,
    last: bool,
    binary: bool,
}

impl<const PIECE: usize> Piece<PIECE> {
    const EMPTY: Self = Self {
        data: [0; PIECE],
        len: 0,
        first: false,
        last: false,
        binary: false,
    };

    /// The piece's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.data.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// Whether the piece belongs to a text or a binary message.
    pub fn kind(&self) -> MessageKind {
        if self.binary {
            MessageKind::Binary
        } else {
            MessageKind::Text
        }
    }

    /// The piece starts its message.
    pub fn first(&self) -> bool {
        self.first
    }

    /// The piece ends its message.
    pub fn last(&self) -> bool {
        self.last
    }
}

impl<const PIECE: usize> fmt::Debug for Piece<PIECE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Piece")
            .field("len", &self.len)
            .field("first", &self.first)
            .field("last", &self.last)
            .field("binary", &self.binary)
            .finish()
    }
}

/// Per-connection echo state: a ring of up to `DEPTH` pieces of at most
/// `PIECE` bytes not yet written, oldest at `head`.
#[derive(Clone, Copy)]
pub struct EchoQueue<const DEPTH: usize, const PIECE: usize> {
    pieces: [Piece<PIECE>; DEPTH],
    head: u8,
    len: u8,
    /// `RECEIVE` is stopped (`lws_rx_flow_control(wsi, 0)`) until the queue drains.
    throttled: bool,
}

impl<const DEPTH: usize, const PIECE: usize> Default for EchoQueue<DEPTH, PIECE> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const DEPTH: usize, const PIECE: usize> fmt::Debug for EchoQueue<DEPTH, PIECE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EchoQueue")
            .field("head", &self.head)
            .field("len", &self.len)
            .field("throttled", &self.throttled)
            .finish()
    }
}

impl<const DEPTH: usize, const PIECE: usize> EchoQueue<DEPTH, PIECE> {
    /// The ring's indices are `u8` and a piece's length `u16`.
    const FITS: () = assert!(DEPTH > 0 && DEPTH <= u8::MAX as usize && PIECE <= u16::MAX as usize);

    /// An empty queue, taking input.
    pub const fn new() -> Self {
        let () = Self::FITS;
        Self {
            pieces: [Piece::EMPTY; DEPTH],
            head: 0,
            len: 0,
            throttled: false,
        }
    }

    /// Nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All `DEPTH` slots are taken.
    pub fn is_full(&self) -> bool {
        usize::from(self.len) == DEPTH
    }

    /// Below half full: time to take input again.
    pub fn has_drained(&self) -> bool {
        usize::from(self.len) * 2 < DEPTH
    }

    /// Input is stopped until the queue drains.
    pub fn is_throttled(&self) -> bool {
        self.throttled
    }

    /// Queues a copy of `piece`; `false` (and nothing queued) when the queue is
    /// full or the piece is longer than a slot.
    pub fn push(&mut self, piece: &[u8], fragment: Fragment) -> bool {
        if self.is_full() {
            return false;
        }
        let tail = (usize::from(self.head) + usize::from(self.len)) % DEPTH;
        // `get_mut` rather than indexing: no panic (and no `core::fmt`) in the guest.
        let Some(slot) = self.pieces.get_mut(tail) else {
            return false;
        };
        let Some(dst) = slot.data.get_mut(..piece.len()) else {
            return false;
        };
        // Lengths equal by construction: no panic path, and one `memory.copy`
        // (a byte loop in the interpreter cost 60% of a 16 KiB echo's CPU).
        dst.copy_from_slice(piece);
        slot.len = piece.len() as u16;
        slot.first = fragment.first;
        slot.last = fragment.last;
        slot.binary = fragment.binary;
        self.len += 1;
        true
    }

    /// The oldest piece, if any.
    pub fn front(&self) -> Option<&Piece<PIECE>> {
        self.pieces
            .get(usize::from(self.head))
            .filter(|_| !self.is_empty())
    }

    /// Drops the oldest piece, if any.
    pub fn pop(&mut self) {
        if !self.is_empty() {
            self.head = ((usize::from(self.head) + 1) % DEPTH) as u8;
            self.len -= 1;
        }
    }

    /// `RECEIVE` (or `CLIENT_RECEIVE`): sends `piece` back as it came, or
    /// queues it (stopping input when the queue fills) and asks for
    /// `on_writeable`.
    pub fn on_receive(&mut self, ws: &mut Ws, piece: &[u8], fragment: Fragment) -> Flow {
        // Nothing waiting: try to send it on at once, which saves a copy and a
        // round through SERVER_WRITEABLE. Any failure just means "queue it".
        if self.is_empty()
            && ws
                .send(fragment.kind(), piece, fragment.first, fragment.last)
                .is_ok()
        {
            return Flow::Continue;
        }
        if !self.push(piece, fragment) {
            // Flow control should make this impossible; dropping a piece would
            // corrupt the message, so give up on the connection instead.
            return ws.close(1011, "echo queue overflow");
        }
        if self.is_full() && !self.throttled && ws.rx_flow(false).is_ok() {
            self.throttled = true;
        }
        match ws.ask_writeable() {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// `SERVER_WRITEABLE` (or `CLIENT_WRITEABLE`): sends what the queue holds,
    /// resumes input once it drained, and asks again if pieces remain.
    pub fn on_writeable(&mut self, ws: &mut Ws) -> Flow {
        while let Some(p) = self.front() {
            match ws.send(p.kind(), p.bytes(), p.first, p.last) {
                Ok(()) => self.pop(),
                Err(Error::NoSpace) => break,
                Err(_) => return Flow::Close,
            }
        }
        if self.throttled && self.has_drained() {
            if ws.rx_flow(true).is_err() {
                return Flow::Close;
            }
            self.throttled = false;
        }
        if !self.is_empty() && ws.ask_writeable().is_err() {
            return Flow::Close;
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIECE: usize = 16;
    type Queue = EchoQueue<3, PIECE>;

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
        let mut q = Queue::default();
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
        q.pop();
        assert!(q.is_empty(), "popping an empty queue does nothing");
    }

    #[test]
    fn a_queued_piece_keeps_its_fragment_flags() {
        let mut q = Queue::default();
        assert!(q.push(&[7; PIECE], frag(true, false, true)));
        let p = q.front().unwrap();
        assert_eq!(p.bytes().len(), PIECE);
        assert_eq!(p.kind(), MessageKind::Binary);
        assert!(p.first() && !p.last());
        assert!(!q.push(&[0; PIECE + 1], frag(true, true, true)), "too long");
    }

    #[test]
    fn an_empty_piece_is_a_valid_message() {
        let mut q = Queue::default();
        assert!(q.push(b"", frag(true, true, false)));
        assert_eq!(q.front().unwrap().bytes(), b"");
        assert_eq!(q.front().unwrap().kind(), MessageKind::Text);
    }
}
