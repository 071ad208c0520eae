//! [`Session`]: one WebSocket connection's frames as a state machine. Incoming
//! payload is unmasked in place in a bounded receive buffer and handed out in
//! pieces; outgoing frames go into a bounded output buffer whole or not at all.

use std::fmt;
use std::ops::Range;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::utf8::Utf8;
use super::{Event, Limits, MIN_RX_BUFFER_BYTES, Role, SendError, SendKind, close_code_allowed};
use crate::http::{IDLE_KEEP, release_drained, reserve_within};

/// Payload bytes a control frame may carry (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Reason bytes a close frame may carry: the payload less the 2-byte code.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// What the frame being received is, once its header has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Payload of the open message, delivered in pieces as it arrives.
    Data,
    /// Control frames: processed once their whole payload is buffered.
    Ping,
    Pong,
    Close,
    /// Payload read and dropped: frames after our close frame, and the rest of a
    /// frame that failed the session.
    Skip,
}

/// The frame being received.
#[derive(Debug, Clone, Copy)]
struct InFrame {
    kind: Kind,
    fin: bool,
    mask: Option<[u8; 4]>,
    len: u64,
    /// Payload bytes consumed so far (also the mask offset of the next byte).
    done: u64,
}

impl InFrame {
    const fn skip(len: u64) -> Self {
        Self {
            kind: Kind::Skip,
            fin: true,
            mask: None,
            len,
            done: 0,
        }
    }
}

/// The message being received (from its first frame's header to its last piece).
#[derive(Debug, Clone, Copy)]
struct InMessage {
    binary: bool,
    /// Payload bytes its frames have announced so far.
    announced: u64,
    /// A piece of it has been delivered.
    started: bool,
    utf8: Utf8,
}

/// Where the session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// We sent a close frame with `code` (1005 for an empty one) and wait for the
    /// peer's, counting from `since` (`None` until the next `now` is seen).
    Closing {
        code: u16,
        since: Option<Instant>,
    },
    /// Over: the driver closes TCP once `tx` is drained. `reported` once the
    /// `Closed` event was given.
    Ended {
        code: u16,
        reported: bool,
    },
}

/// A pong owed to the peer that did not fit in the output buffer yet.
#[derive(Debug, Clone, Copy)]
struct PendingPong {
    payload: [u8; MAX_CONTROL_PAYLOAD],
    len: usize,
}

/// What one step of the receive side found; ranges index the receive buffer.
#[derive(Debug)]
enum Step {
    /// Progress was made: look again.
    Again,
    /// Nothing more until more bytes, a resume, or a timeout.
    Idle,
    Data {
        range: Range<usize>,
        first: bool,
        last: bool,
        binary: bool,
        remaining: u64,
    },
    Pong(Range<usize>),
    PeerClose(Range<usize>),
    Failed(u16, &'static str),
    Closed(u16),
}

/// The bounded output buffer. Only the session's own small control frames (a
/// close, a keepalive ping) may take it past `limit`, by at most one frame each.
/// It allocates as frames are queued, never more than `limit` (or what a
/// past-the-limit frame needs); the session gives its memory back with
/// [`Self::give_back`].
#[derive(Debug)]
struct TxBuf {
    buf: Vec<u8>,
    start: usize,
    limit: usize,
}

impl TxBuf {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn space(&self) -> usize {
        self.limit.saturating_sub(self.buf.len() - self.start)
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Drops what is queued, and the memory.
    fn clear(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
    }

    /// If nothing is queued, gives the memory back when it is more than `keep`
    /// bytes.
    fn give_back(&mut self, keep: usize) {
        if self.start == self.buf.len() && self.buf.capacity() > keep {
            self.clear();
        }
    }

    /// Appends one frame; the caller has checked [`Self::space`] when it must.
    fn push_frame(&mut self, opcode: OpCode, fin: bool, mask: Option<[u8; 4]>, payload: &[u8]) {
        let header = FrameHeader {
            is_final: fin,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask,
        };
        let len = payload.len() as u64;
        let total = header.len(len) + payload.len();
        if self.start > 0 && self.buf.len() + total > self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        reserve_within(&mut self.buf, total, self.limit);
        // Writing into a Vec cannot fail.
        let _ = header.format(len, &mut self.buf);
        let at = self.buf.len();
        self.buf.extend_from_slice(payload);
        if let Some(mask) = mask {
            apply_mask(&mut self.buf[at..], mask, 0);
        }
    }
}

/// Bytes a frame with `payload` bytes takes on the wire.
fn frame_len(masked: bool, payload: usize) -> usize {
    let extended = match payload {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    2 + extended + if masked { 4 } else { 0 } + payload
}

/// XORs `buf` with `mask`, `buf` starting `offset` bytes into the payload,
/// eight bytes at a time (the key twice in a `u64`).
#[inline(always)]
fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: u64) {
    let mut key = mask;
    key.rotate_left((offset % 4) as usize);
    let [k0, k1, k2, k3] = key;
    let wide = u64::from_ne_bytes([k0, k1, k2, k3, k0, k1, k2, k3]);
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        let mut w = [0; 8];
        w.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    // The remainder starts a multiple of 8 (so of 4) bytes in: the same key.
    for (b, k) in words.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *b ^= k;
    }
}

/// Header length and announced payload length of the frame header at the
/// start of `buf` (the length is right only once the whole header is there).
fn raw_header_lengths(buf: &[u8]) -> (usize, u64) {
    let second = buf.get(1).copied().unwrap_or(0);
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let masked = if second & 0x80 == 0 { 0 } else { 4 };
    let len = if extended == 0 {
        u64::from(second & 0x7F)
    } else {
        buf.get(2..2 + extended)
            .unwrap_or_default()
            .iter()
            .fold(0, |n, &b| n << 8 | u64::from(b))
    };
    (2 + extended + masked, len)
}

/// The frame header at the start of `buf`, its payload length and its own
/// length; `None` until all of it is buffered. What tungstenite's
/// `FrameHeader::parse` reads through `io::Read`, read from the slice: that
/// one, with its trace points, cost about 100 instructions more per message
/// once it was no longer inlined (it is called from two places now).
#[inline(always)]
fn parse_header(buf: &[u8]) -> Option<(FrameHeader, u64, usize)> {
    let [first, second, ..] = *buf else {
        return None;
    };
    let (header_len, len) = raw_header_lengths(buf);
    let mask = match buf.get(..header_len)? {
        [.., a, b, c, d] if second & 0x80 != 0 => Some([*a, *b, *c, *d]),
        _ => None,
    };
    let header = FrameHeader {
        is_final: first & 0x80 != 0,
        rsv1: first & 0x40 != 0,
        rsv2: first & 0x20 != 0,
        rsv3: first & 0x10 != 0,
        opcode: OpCode::from(first & 0x0F),
        mask,
    };
    Some((header, len, header_len))
}

/// Checks a close frame's payload: `Ok(None)` for an empty one, the code
/// otherwise, or the failure it calls for.
fn check_close_payload(payload: &[u8]) -> Result<Option<u16>, (u16, &'static str)> {
    match payload {
        [] => Ok(None),
        [_] => Err((1002, "close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_allowed(code) {
                Err((1002, "invalid close code"))
            } else if std::str::from_utf8(reason).is_err() {
                Err((1007, "close reason is not UTF-8"))
            } else {
                Ok(Some(code))
            }
        }
    }
}

/// The longest prefix of `reason` that is valid UTF-8 and fits a close frame.
fn truncate_reason(reason: &[u8]) -> &[u8] {
    let reason = &reason[..reason.len().min(MAX_CLOSE_REASON)];
    match std::str::from_utf8(reason) {
        Ok(_) => reason,
        Err(e) => &reason[..e.valid_up_to()],
    }
}

fn after(t: Instant, d: Duration) -> Option<Instant> {
    t.checked_add(d)
}

/// One WebSocket connection, sans I/O: feed it the bytes read from the socket,
/// take [`Event`]s, queue frames with [`Session::send`], send [`Session::tx`] and
/// call [`Session::poll_timeout`] by the deadline it gives.
///
/// Its memory is bounded by [`Limits`]: a receive buffer of at most
/// `rx_buffer_bytes`, an output buffer of at most `tx_buffer_bytes` (plus at most
/// one of its own control frames) and one pending pong. Messages are never held
/// whole. The buffers are allocated as bytes arrive or are queued, and keep
/// their size while the connection is busy, so that message after message
/// reuses them instead of growing them again; [`Session::trim`] gives their
/// memory back (down to 512 bytes) once they are drained with nothing in
/// progress (the receive buffer with no frame nor message partly read, the
/// output buffer with no message partly sent).
/// [`Session::trim_when_quiet`] does it a given time after the last message
/// that needed them large; the context gives it a second.
///
/// Choices RFC 6455 leaves open:
/// - Incoming pings are answered in order with a pong carrying their payload; when
///   the output buffer is full the pong waits in a one-frame slot, a newer ping
///   replacing it. Pongs owed when a close frame goes out are dropped.
/// - While receiving is paused ([`Session::set_rx_paused`]) no `Data` events come,
///   but control frames already buffered ahead of data are still processed (pings
///   answered, `Pong`/`PeerClose` reported), and the keepalive timers stop.
/// - After our close frame (from [`Session::close`] or a failure), data frames,
///   pings and pongs are read and dropped until the peer's close frame ends the
///   session; a malformed frame then no longer fails anything, it is skipped.
/// - Close codes 1000–1003, 1007–1014 and 3000–4999 are accepted from the peer
///   ([`super::close_code_allowed`]), any other fails with 1002.
pub struct Session {
    role: Role,
    limits: Limits,
    rx: Vec<u8>,
    /// Bytes of `rx` before this are consumed.
    rx_start: usize,
    rx_cap: usize,
    frame: Option<InFrame>,
    message: Option<InMessage>,
    paused: bool,
    /// The peer closed its side of TCP.
    peer_fin: bool,
    /// ...and every event before its FIN has been handed out: see
    /// [`Session::input_done`].
    input_done: bool,
    state: State,
    tx: TxBuf,
    /// The caller's outgoing message is open (a Text/Binary frame without FIN).
    sending: bool,
    pending_pong: Option<PendingPong>,
    /// When bytes last came from the peer.
    last_rx: Instant,
    /// Our keepalive ping is unanswered since then.
    ping_sent: Option<Instant>,
    /// Receiving resumed without a clock: keepalive restarts at the next `now`.
    restart_timers: bool,
    /// xorshift64* state for client masking keys.
    rng: u64,
    /// A buffer held more than 512 bytes since [`Self::trim_when_quiet`]
    /// last looked: a message that needs them large.
    used_large: bool,
    /// When the buffers kept for the next message go back, unless a large
    /// message comes first.
    trim_at: Option<Instant>,
    /// A protocol failure [`Self::next_data`] found: the close is started,
    /// and the failure reported, by the next [`Self::poll_event`], as if
    /// that had found it.
    held: Option<(u16, &'static str)>,
    /// [`Self::next_data`] is stepping: a failure is held, not acted on.
    holding: bool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("rx_buffered", &self.rx_len())
            .field("tx_queued", &self.tx.bytes().len())
            .field("paused", &self.paused)
            .field("peer_fin", &self.peer_fin)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session opened at `now` (when the `101` was queued or received). `seed`
    /// seeds the generator of a client's masking keys; a server ignores it.
    #[must_use]
    pub fn new(role: Role, limits: Limits, now: Instant, seed: u64) -> Self {
        let rx_cap = limits.rx_buffer_bytes.max(MIN_RX_BUFFER_BYTES);
        Self {
            role,
            limits,
            rx: Vec::new(),
            rx_start: 0,
            rx_cap,
            frame: None,
            message: None,
            paused: false,
            peer_fin: false,
            input_done: false,
            state: State::Open,
            tx: TxBuf {
                buf: Vec::new(),
                start: 0,
                limit: limits.tx_buffer_bytes,
            },
            sending: false,
            pending_pong: None,
            last_rx: now,
            ping_sent: None,
            restart_timers: false,
            rng: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
            used_large: false,
            trim_at: None,
            held: None,
            holding: false,
        }
    }

    // ---- input ----

    /// How many bytes [`Self::feed`] takes now; the driver reads no more than this
    /// from the socket. It is the room `rx_buffer_bytes` leaves beside the bytes
    /// buffered (whatever the buffer's capacity now: it grows to take them), but
    /// 0 while receiving is paused and the buffer holds bytes not processed yet,
    /// once the peer's close frame or FIN has come (what follows is ignored), and
    /// once the session has ended.
    #[must_use]
    pub fn rx_space(&self) -> usize {
        match self.state {
            State::Ended { .. } => 0,
            _ if self.peer_fin => 0,
            State::Open if self.paused && self.rx_len() > 0 => 0,
            State::Open | State::Closing { .. } => self.rx_cap - self.rx_len(),
        }
    }

    /// Appends up to [`Self::rx_space`] bytes of `data` and returns how many it
    /// took. Any byte from the peer counts as a sign of life for the keepalive.
    pub fn feed(&mut self, data: &[u8], now: Instant) -> usize {
        self.observe(now);
        let n = data.len().min(self.rx_space());
        if n == 0 {
            return 0;
        }
        if self.rx_start == self.rx.len() {
            self.rx.clear();
            self.rx_start = 0;
        } else if self.rx_start > 0 && self.rx.len() + n > self.rx.capacity() {
            self.rx.drain(..self.rx_start);
            self.rx_start = 0;
        }
        // `rx_space` is what `rx_cap` allows, whatever the capacity now.
        reserve_within(&mut self.rx, n, self.rx_cap);
        self.rx.extend_from_slice(&data[..n]);
        self.used_large |= self.rx.len() > IDLE_KEEP;
        self.last_rx = now;
        self.ping_sent = None;
        n
    }

    /// The peer closed its side of TCP. Bytes already fed are still processed;
    /// then an open session stays open for sending only ([`Self::input_done`]:
    /// the peer may still read, as after a half-close) until the caller ends
    /// it with [`Self::drop_input`], and a closing one ends with `Closed` 1006.
    /// What is queued to send stays either way.
    pub fn peer_closed(&mut self, now: Instant) {
        self.observe(now);
        self.peer_fin = true;
        if self.rx_len() == 0 {
            self.input_ended();
        }
    }

    /// True once the peer sent FIN and every event before it was handed out:
    /// nothing more will come in, and the session, not ended, only sends
    /// (open, or closing if the caller started a close since; no keepalive
    /// pings since the FIN: no pong could come back). The caller ends it with
    /// [`Self::drop_input`].
    #[must_use]
    pub fn input_done(&self) -> bool {
        self.input_done && !self.is_closed()
    }

    /// The peer's FIN was passed on ([`Self::peer_closed`]).
    #[must_use]
    pub fn peer_fin(&self) -> bool {
        self.peer_fin
    }

    /// What the peer sent before its FIN is used up.
    fn input_ended(&mut self) {
        if self.state == State::Open {
            self.input_done = true;
        } else {
            self.end(1006);
        }
    }

    /// After the peer's FIN, ends the session (1006): the caller has nothing
    /// more to send, or gives up on the input the guest has not taken (it
    /// kept receiving paused). What is queued to send stays.
    pub fn drop_input(&mut self) {
        self.rx.clear();
        self.rx_start = 0;
        self.end(1006);
    }

    /// The next event, if any. `Data` pieces are at most `max_piece` bytes (taken
    /// as at least 1; the guest's `rx_buffer_size`), and never more than the
    /// receive buffer, whatever the frame sizes were. Pieces are handed out as
    /// bytes arrive; a text message's bytes are checked as UTF-8 before each piece.
    pub fn poll_event(&mut self, now: Instant, max_piece: usize) -> Option<Event<'_>> {
        let step = self.next_step(now, max_piece);
        self.event(step)
    }

    /// The steps to the next event.
    fn next_step(&mut self, now: Instant, max_piece: usize) -> Step {
        self.observe(now);
        let max_piece = max_piece.max(1);
        loop {
            match self.step(now, max_piece) {
                Step::Again => {}
                step => return step,
            }
        }
    }

    /// The event of a step that is one.
    #[inline(always)]
    fn event(&self, step: Step) -> Option<Event<'_>> {
        Some(match step {
            Step::Again | Step::Idle => return None,
            Step::Data {
                range,
                first,
                last,
                binary,
                remaining,
            } => Event::Data {
                data: &self.rx[range],
                first,
                last,
                binary,
                remaining,
            },
            Step::Pong(range) => Event::Pong(&self.rx[range]),
            Step::PeerClose(range) => Event::PeerClose {
                payload: &self.rx[range],
            },
            Step::Failed(code, reason) => Event::Failed { code, reason },
            Step::Closed(code) => Event::Closed { code },
        })
    }

    /// The next piece of a data message, if the bytes buffered hold one now:
    /// [`Self::poll_event`]'s `Data`, without the rest. It stops (`None`) at
    /// anything else that comes first (a control frame, an incomplete header
    /// or piece, a paused or closing session, the peer's FIN), and changes
    /// nothing else: `poll_event` finds it next. A frame that breaks the
    /// protocol is only noted; the next `poll_event` starts the close and
    /// reports it. For a caller in the middle of handling a piece, who takes
    /// the pieces behind it as if they had been separate events.
    pub fn next_data(&mut self, now: Instant, max_piece: usize) -> Option<Event<'_>> {
        if self.state != State::Open || self.paused || self.peer_fin || self.held.is_some() {
            return None;
        }
        match self.frame {
            Some(frame) if frame.kind != Kind::Data => return None,
            Some(_) => {}
            // Only a data frame's header (opcode 0, 1 or 2) is read here.
            None if self.rx.get(self.rx_start).is_none_or(|b| b & 0x0f > 2) => return None,
            None => {}
        }
        // What comes now is a piece, too few bytes for one, or a failure of
        // the data frame's header or piece, which `fail` holds. (The same
        // steps as `poll_event`'s, not a second copy of them, which the
        // compiler would not inline twice.)
        self.holding = true;
        let step = self.next_step(now, max_piece);
        self.holding = false;
        match step {
            Step::Data { .. } => self.event(step),
            _ => None,
        }
    }

    /// Bytes from the peer are buffered and not yet turned into events.
    #[must_use]
    pub fn has_buffered(&self) -> bool {
        self.rx_len() > 0
    }

    /// Stops (`true`) or resumes `Data` events, as `lws_rx_flow_control`. While
    /// paused, [`Self::rx_space`] is 0 as soon as anything is buffered and the
    /// keepalive timers stop; they restart from the first `now` after resuming.
    pub fn set_rx_paused(&mut self, paused: bool) {
        if self.paused && !paused {
            self.restart_timers = true;
        }
        self.paused = paused;
    }

    // ---- output ----

    /// Queues one frame, all or nothing. `Text`/`Binary` start a message
    /// (`fin == false` leaves it open), `Continuation` continues the open one;
    /// `Ping`/`Pong` may come between the frames of a message. A client's frames
    /// are masked.
    ///
    /// # Errors
    /// `BadState` once a close frame was sent or the session ended, for a
    /// `Continuation` with no open message, and for `Text`/`Binary` while one is
    /// open; `Invalid` for a ping or pong over 125 bytes or without FIN;
    /// `NoSpace` if the output buffer cannot take the whole frame now.
    pub fn send(&mut self, kind: SendKind, payload: &[u8], fin: bool) -> Result<(), SendError> {
        if self.state != State::Open {
            return Err(SendError::BadState);
        }
        let opcode = match kind {
            SendKind::Text | SendKind::Binary if self.sending => {
                return Err(SendError::BadState);
            }
            SendKind::Text => OpCode::Data(Data::Text),
            SendKind::Binary => OpCode::Data(Data::Binary),
            SendKind::Continuation if !self.sending => return Err(SendError::BadState),
            SendKind::Continuation => OpCode::Data(Data::Continue),
            SendKind::Ping | SendKind::Pong if payload.len() > MAX_CONTROL_PAYLOAD || !fin => {
                return Err(SendError::Invalid);
            }
            SendKind::Ping => OpCode::Control(Control::Ping),
            SendKind::Pong => OpCode::Control(Control::Pong),
        };
        self.flush_pong();
        if frame_len(self.role == Role::Client, payload.len()) > self.tx.space() {
            return Err(SendError::NoSpace);
        }
        let mask = self.next_mask();
        self.tx.push_frame(opcode, fin, mask, payload);
        self.used_large |= self.tx.buf.len() > IDLE_KEEP;
        if let OpCode::Data(_) = opcode {
            self.sending = !fin;
        }
        Ok(())
    }

    /// Starts the close handshake: queues a close frame with `code` and `reason`
    /// (cut to 123 bytes on a UTF-8 boundary, and before any invalid UTF-8), even
    /// past the output buffer's bound. Code 1005 sends an empty close frame; a code
    /// that may not be sent (see [`super::close_code_allowed`]) is sent as 1000.
    /// Nothing can be sent after it; the session ends when the peer answers, or
    /// after `close_timeout`. Does nothing once a close frame was sent or the
    /// session ended.
    pub fn close(&mut self, code: u16, reason: &[u8]) {
        let code = match code {
            1005 => None,
            code if close_code_allowed(code) => Some(code),
            _ => Some(1000),
        };
        self.start_close(code, reason, None);
    }

    /// The bytes to send.
    #[must_use]
    pub fn tx(&self) -> &[u8] {
        self.tx.bytes()
    }

    /// `n` bytes of [`Self::tx`] were sent. A pong that was waiting for room is
    /// queued now if it fits.
    pub fn consume_tx(&mut self, n: usize) {
        self.tx.consume(n);
        self.flush_pong();
    }

    /// True when [`Self::trim`] would give memory back: a buffer is drained,
    /// with nothing in progress, and holds more than 512 bytes.
    #[must_use]
    pub fn holds_spare(&self) -> bool {
        (self.tx_idle() && self.tx.buf.capacity() > IDLE_KEEP)
            || (self.rx_idle() && self.rx.capacity() > IDLE_KEEP)
    }

    /// Gives the buffers kept for the next message back once `quiet` has
    /// passed without a message that needed more than 512 bytes of them
    /// (small messages, pings and pongs do not keep them). Call it at every
    /// look at the connection; it returns when to look again (`None`:
    /// nothing is kept, or a message is in progress).
    pub fn trim_when_quiet(&mut self, now: Instant, quiet: Duration) -> Option<Instant> {
        let large = std::mem::take(&mut self.used_large);
        if !self.holds_spare() {
            self.trim_at = None;
            return None;
        }
        let at = match self.trim_at {
            Some(at) if !large => at,
            _ => after(now, quiet)?,
        };
        if now < at {
            self.trim_at = Some(at);
            return Some(at);
        }
        self.trim();
        self.trim_at = None;
        None
    }

    /// Gives back the memory of the buffers that are drained with nothing in
    /// progress, down to 512 bytes each: for a connection gone quiet (a busy
    /// one keeps them, and would only allocate them again).
    pub fn trim(&mut self) {
        if self.tx_idle() {
            self.tx.give_back(IDLE_KEEP);
        }
        if self.rx_idle() {
            release_drained(&mut self.rx, &mut self.rx_start);
        }
    }

    /// The output buffer is drained with no message partly sent.
    fn tx_idle(&self) -> bool {
        self.tx.bytes().is_empty() && !self.sending
    }

    /// The receive buffer is drained with no frame nor message partly read.
    fn rx_idle(&self) -> bool {
        self.rx_len() == 0 && self.frame.is_none() && self.message.is_none()
    }

    /// Room left in the output buffer, frame headers included: a frame of `n`
    /// payload bytes needs `n` plus 2 to 14 header bytes.
    #[must_use]
    pub fn tx_space(&self) -> usize {
        self.tx.space()
    }

    // ---- lifecycle ----

    /// Enforces the timers at `now` and returns when to call again (`None`: no
    /// timer runs). After `ping_interval` without a byte from the peer it queues a
    /// ping (even past the output buffer's bound); if nothing at all comes within
    /// `pong_timeout` after it, or the peer does not answer our close frame within
    /// `close_timeout`, the session ends (as 1006, output dropped) and the next
    /// [`Self::poll_event`] reports `Closed`. None run while receiving is paused
    /// or after the peer's FIN.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        self.observe(now);
        let (deadline, keepalive_ping) = match self.state {
            State::Ended { .. } => return None,
            State::Closing { since, .. } => (
                after(since.unwrap_or(now), self.limits.close_timeout)?,
                false,
            ),
            State::Open if self.paused || self.peer_fin => return None,
            State::Open => match (self.ping_sent, self.limits.ping_interval) {
                (Some(sent), _) => (after(sent, self.limits.pong_timeout)?, false),
                (None, Some(interval)) => (after(self.last_rx, interval)?, true),
                (None, None) => return None,
            },
        };
        if now < deadline {
            return Some(deadline);
        }
        if keepalive_ping {
            let mask = self.next_mask();
            self.tx
                .push_frame(OpCode::Control(Control::Ping), true, mask, &[]);
            self.ping_sent = Some(now);
            return after(now, self.limits.pong_timeout);
        }
        self.abort();
        None
    }

    /// True once the session is over (close frames both ways, a failure answered,
    /// TCP closed by the peer while closing or once ended by
    /// [`Self::drop_input`], or a timeout): the driver closes the TCP connection
    /// once [`Self::tx`] is drained.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Ended { .. })
    }

    /// True from the first close frame sent or received on (and once closed).
    #[must_use]
    pub fn is_closing(&self) -> bool {
        self.state != State::Open
    }

    // ---- receive side ----

    fn rx_len(&self) -> usize {
        self.rx.len() - self.rx_start
    }

    /// Bytes held by the receive and output buffers.
    #[cfg(test)]
    pub(super) fn buffer_capacity(&self) -> (usize, usize) {
        (self.rx.capacity(), self.tx.buf.capacity())
    }

    /// Starts, at the first `now` seen, the timers begun without a clock.
    fn observe(&mut self, now: Instant) {
        if self.restart_timers {
            self.restart_timers = false;
            self.last_rx = now;
            self.ping_sent = None;
        }
        if let State::Closing { since, .. } = &mut self.state {
            since.get_or_insert(now);
        }
    }

    fn step(&mut self, now: Instant, max_piece: usize) -> Step {
        if let Some((code, reason)) = self.held.take() {
            return self.fail(now, code, reason);
        }
        if let State::Ended { code, reported } = &mut self.state {
            if *reported {
                return Step::Idle;
            }
            *reported = true;
            return Step::Closed(*code);
        }
        self.flush_pong();
        let Some(frame) = self.frame else {
            return self.read_header(now);
        };
        match frame.kind {
            Kind::Data => self.data_piece(now, frame, max_piece),
            Kind::Skip => self.skip_payload(frame),
            Kind::Ping | Kind::Pong | Kind::Close => self.control_frame(now, frame),
        }
    }

    /// No more can be done with the bytes buffered.
    fn need_more(&mut self) -> Step {
        if self.peer_fin {
            // Everything the peer sent is used up (see `peer_closed`).
            self.input_ended();
            if self.is_closed() {
                return Step::Again;
            }
        }
        Step::Idle
    }

    fn read_header(&mut self, now: Instant) -> Step {
        let buffered = &self.rx[self.rx_start..];
        let Some((header, len, header_len)) = parse_header(buffered) else {
            return self.need_more();
        };
        self.rx_start += header_len;
        if let OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) =
            header.opcode
        {
            return self.fail_frame(now, len, 1002, "reserved opcode");
        }
        match self.check_header(&header, len) {
            Ok(frame) => {
                self.frame = Some(frame);
                Step::Again
            }
            Err((code, reason)) => {
                // A malformed close frame is still the peer's close: after
                // ours, nothing more will come, so the session ends.
                let peer_closing = header.opcode == OpCode::Control(Control::Close);
                let step = self.fail_frame(now, len, code, reason);
                if peer_closing {
                    self.end(code);
                }
                step
            }
        }
    }

    /// Validates a frame header against the protocol, the limits and the open
    /// message, and starts or extends the message for a data frame.
    fn check_header(&mut self, h: &FrameHeader, len: u64) -> Result<InFrame, (u16, &'static str)> {
        let mut frame = InFrame {
            kind: Kind::Skip,
            fin: h.is_final,
            mask: h.mask,
            len,
            done: 0,
        };
        if self.state != State::Open {
            // Only the peer's close frame matters now; the rest is skipped.
            let close = h.opcode == OpCode::Control(Control::Close);
            if close && h.is_final && len <= MAX_CONTROL_PAYLOAD as u64 {
                frame.kind = Kind::Close;
            }
            return Ok(frame);
        }
        if h.rsv1 || h.rsv2 || h.rsv3 {
            return Err((1002, "reserved bits set, no extension negotiated"));
        }
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err((1002, "unmasked frame from a client")),
            (Role::Client, true) => return Err((1002, "masked frame from a server")),
            _ => {}
        }
        if len >> 63 != 0 {
            return Err((1002, "frame length with its most significant bit set"));
        }
        let data = match h.opcode {
            OpCode::Control(control) => {
                if len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err((1002, "control frame over 125 bytes"));
                }
                if !h.is_final {
                    return Err((1002, "fragmented control frame"));
                }
                frame.kind = match control {
                    Control::Ping => Kind::Ping,
                    Control::Pong => Kind::Pong,
                    Control::Close => Kind::Close,
                    Control::Reserved(_) => return Err((1002, "reserved opcode")),
                };
                return Ok(frame);
            }
            OpCode::Data(data) => data,
        };
        let binary = match (data, &self.message) {
            (Data::Continue, None) => {
                return Err((1002, "continuation frame with no message open"));
            }
            (Data::Text | Data::Binary, Some(_)) => {
                return Err((1002, "new message while a fragmented one is open"));
            }
            (Data::Reserved(_), _) => return Err((1002, "reserved opcode")),
            (Data::Continue, Some(message)) => message.binary,
            (Data::Text, None) => false,
            (Data::Binary, None) => true,
        };
        if len > self.limits.max_frame_bytes {
            return Err((1009, "frame over max_frame_bytes"));
        }
        let message = self.message.get_or_insert(InMessage {
            binary,
            announced: 0,
            started: false,
            utf8: Utf8::new(),
        });
        message.announced = message.announced.saturating_add(len);
        if message.announced > self.limits.max_message_bytes {
            return Err((1009, "message over max_message_bytes"));
        }
        frame.kind = Kind::Data;
        Ok(frame)
    }

    /// The current frame is bad: skip its payload, and fail the session unless it
    /// is already closing.
    fn fail_frame(&mut self, now: Instant, len: u64, code: u16, reason: &'static str) -> Step {
        self.frame = Some(InFrame::skip(len));
        if self.state == State::Open {
            self.fail(now, code, reason)
        } else {
            Step::Again
        }
    }

    /// Fails the session: queues our close frame with `code`.
    /// While [`Self::next_data`] steps, the failure is held instead (see
    /// [`Self::held`]): nothing is sent or closed until then.
    fn fail(&mut self, now: Instant, code: u16, reason: &'static str) -> Step {
        if self.holding {
            self.held = Some((code, reason));
            return Step::Idle;
        }
        self.start_close(Some(code), reason.as_bytes(), Some(now));
        Step::Failed(code, reason)
    }

    fn data_piece(&mut self, now: Instant, mut frame: InFrame, max_piece: usize) -> Step {
        let left = frame.len - frame.done;
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(self.rx_len())
            .min(max_piece);
        if n == 0 && left > 0 {
            return self.need_more();
        }
        if self.paused {
            return Step::Idle;
        }
        let Some(message) = self.message.as_mut() else {
            // Not reached: a data frame has its message until a close frame goes
            // out, which turns the frame into `Skip`.
            self.frame = Some(InFrame::skip(left));
            return Step::Again;
        };
        let range = self.rx_start..self.rx_start + n;
        if let Some(mask) = frame.mask {
            apply_mask(&mut self.rx[range.clone()], mask, frame.done);
        }
        self.rx_start += n;
        frame.done += n as u64;
        let remaining = frame.len - frame.done;
        let last = remaining == 0 && frame.fin;
        if !message.binary {
            let invalid = if message.utf8.push(&self.rx[range.clone()]).is_err() {
                Some("invalid UTF-8 in a text message")
            } else if last && !message.utf8.is_complete() {
                Some("text message ends inside a UTF-8 sequence")
            } else {
                None
            };
            if let Some(reason) = invalid {
                self.frame = Some(InFrame::skip(remaining));
                return self.fail(now, 1007, reason);
            }
        }
        let first = !message.started;
        message.started = true;
        let binary = message.binary;
        self.frame = (remaining > 0).then_some(frame);
        if last {
            self.message = None;
        }
        Step::Data {
            range,
            first,
            last,
            binary,
            remaining,
        }
    }

    fn skip_payload(&mut self, mut frame: InFrame) -> Step {
        let left = frame.len - frame.done;
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(self.rx_len());
        self.rx_start += n;
        frame.done += n as u64;
        if frame.done == frame.len {
            self.frame = None;
            return Step::Again;
        }
        self.frame = Some(frame);
        self.need_more()
    }

    /// A ping, pong or close frame, once its whole payload is buffered.
    fn control_frame(&mut self, now: Instant, frame: InFrame) -> Step {
        // Control frames are at most 125 bytes (checked with the header).
        let len = usize::try_from(frame.len).unwrap_or(usize::MAX);
        if self.rx_len() < len {
            return self.need_more();
        }
        let range = self.rx_start..self.rx_start + len;
        if let Some(mask) = frame.mask {
            apply_mask(&mut self.rx[range.clone()], mask, 0);
        }
        self.rx_start += len;
        self.frame = None;
        match frame.kind {
            Kind::Ping => {
                self.answer_ping(range);
                Step::Again
            }
            Kind::Pong => Step::Pong(range),
            _ => self.peer_close(now, range),
        }
    }

    fn answer_ping(&mut self, range: Range<usize>) {
        let payload = &self.rx[range];
        let mut pong = PendingPong {
            payload: [0; MAX_CONTROL_PAYLOAD],
            len: payload.len(),
        };
        pong.payload[..payload.len()].copy_from_slice(payload);
        // A waiting pong is superseded: the peer wants the newest answer.
        self.pending_pong = Some(pong);
        self.flush_pong();
    }

    /// Queues the waiting pong if the output buffer has room for it.
    fn flush_pong(&mut self) {
        let Some(pong) = self.pending_pong else {
            return;
        };
        if frame_len(self.role == Role::Client, pong.len) > self.tx.space() {
            return;
        }
        self.pending_pong = None;
        let mask = self.next_mask();
        self.tx.push_frame(
            OpCode::Control(Control::Pong),
            true,
            mask,
            &pong.payload[..pong.len],
        );
    }

    fn peer_close(&mut self, now: Instant, range: Range<usize>) -> Step {
        match self.state {
            // The answer to our close, whatever it says.
            State::Closing { code, .. } => {
                self.end(code);
                Step::Again
            }
            State::Open => match check_close_payload(&self.rx[range.clone()]) {
                Ok(code) => {
                    let echo = code.map(u16::to_be_bytes);
                    self.queue_close(echo.as_ref().map_or(&[][..], |c| &c[..]));
                    self.end(code.unwrap_or(1005));
                    Step::PeerClose(range)
                }
                Err((code, reason)) => {
                    let step = self.fail(now, code, reason);
                    self.end(code);
                    step
                }
            },
            State::Ended { .. } => Step::Again,
        }
    }

    // ---- closing ----

    /// Queues our close frame (no code: empty) and waits for the peer's, unless a
    /// close frame was already sent or the session ended.
    fn start_close(&mut self, code: Option<u16>, reason: &[u8], now: Option<Instant>) {
        if self.state != State::Open {
            return;
        }
        let mut payload = [0; MAX_CONTROL_PAYLOAD];
        let len = match code {
            Some(code) => {
                let reason = truncate_reason(reason);
                payload[..2].copy_from_slice(&code.to_be_bytes());
                payload[2..2 + reason.len()].copy_from_slice(reason);
                2 + reason.len()
            }
            None => 0,
        };
        self.queue_close(&payload[..len]);
        self.message = None;
        // A frame being received is now only read past, unless it is the peer's close.
        if let Some(frame) = &mut self.frame
            && frame.kind != Kind::Close
        {
            frame.kind = Kind::Skip;
        }
        self.state = State::Closing {
            code: code.unwrap_or(1005),
            since: now,
        };
    }

    /// Queues a close frame, the last frame this session sends.
    fn queue_close(&mut self, payload: &[u8]) {
        self.pending_pong = None;
        self.sending = false;
        let mask = self.next_mask();
        self.tx
            .push_frame(OpCode::Control(Control::Close), true, mask, payload);
    }

    /// Ends the session with `code`; `Closed` is reported next.
    fn end(&mut self, code: u16) {
        if !self.is_closed() {
            self.state = State::Ended {
                code,
                reported: false,
            };
            self.frame = None;
            self.message = None;
            self.pending_pong = None;
        }
    }

    /// Ends the session without a close handshake (1006) when the peer stopped
    /// answering (a timeout): what is queued will not be read, so it is
    /// dropped. (After the peer's FIN it may still read: see `peer_closed`.)
    fn abort(&mut self) {
        if !self.is_closed() {
            self.end(1006);
            self.tx.clear();
        }
    }

    /// A masking key for the next outgoing frame (clients only).
    fn next_mask(&mut self) -> Option<[u8; 4]> {
        if self.role == Role::Server {
            return None;
        }
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let [a, b, c, d, ..] = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_be_bytes();
        Some([a, b, c, d])
    }
}

#[cfg(test)]
mod tests {
    use super::apply_mask;

    #[test]
    fn masking_any_length_from_any_offset_matches_the_rfc_byte_rule() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let payload: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(73)).collect();
        for offset in 0..9u64 {
            for len in 0..payload.len() {
                let mut got = payload[..len].to_vec();
                apply_mask(&mut got, mask, offset);
                // RFC 6455 5.3: octet i of the payload XOR octet i % 4 of the key.
                let want: Vec<u8> = payload[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[(i + offset as usize) % 4])
                    .collect();
                assert_eq!(got, want, "offset {offset}, length {len}");
            }
        }
    }
}
