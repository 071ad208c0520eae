//! WebSocket sessions (RFC 6455) over in-memory buffers: the upgrade handshake,
//! frames in and out with bounded memory, ping/pong keepalive and the close
//! handshake. Never touches a socket or a clock.
//!
//! [`accept`] answers an upgrade request the HTTP layer hands over; a
//! [`Session`] then carries the connection: the driver feeds it what the socket
//! read, takes [`Event`]s for the guest, queues the guest's frames with
//! [`Session::send`], sends [`Session::tx`] and calls [`Session::poll_timeout`] by
//! the deadline it gives. Messages stream through in pieces and are never held
//! whole; the frame wire format comes from tungstenite's frame layer.

mod handshake;
mod session;
mod utf8;

use std::fmt;
use std::time::Duration;

pub use handshake::{Accepted, Refused, accept, client_request, is_upgrade};
pub use session::Session;

/// The smallest receive buffer a [`Session`] uses: a whole control frame (6-byte
/// header, 125 bytes of payload) must fit, and any frame header (at most 14
/// bytes). [`Limits::rx_buffer_bytes`] below this is raised to it.
pub const MIN_RX_BUFFER_BYTES: usize = 131;

/// Every bound one session enforces. The defaults suit a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of payload one frame may announce; more fails the session with close
    /// code 1009 as soon as the header arrives. Default 16 MiB (`16_777_216`).
    pub max_frame_bytes: u64,
    /// Bytes of payload one message may total over its frames; more fails the
    /// session with 1009 as soon as a frame header announces it. Messages stream
    /// through in pieces, so this costs no memory. Default 16 MiB (`16_777_216`).
    pub max_message_bytes: u64,
    /// Most bytes of the receive buffer (frame headers and payload awaiting
    /// delivery): it grows as bytes arrive, never past this, and gives its
    /// room back when idle. At least [`MIN_RX_BUFFER_BYTES`].
    /// Default 4096.
    pub rx_buffer_bytes: usize,
    /// Bytes of the output buffer, frame headers included; a frame that does not
    /// fit is refused with [`SendError::NoSpace`]. Default 16384.
    pub tx_buffer_bytes: usize,
    /// Silence from the peer (no bytes at all) after which the session sends a
    /// ping; `None` sends none. Default 60 s.
    pub ping_interval: Option<Duration>,
    /// Time the peer has to send anything (its pong or any other frame) after our
    /// keepalive ping; then the session ends without a close handshake (as 1006).
    /// Default 10 s.
    pub pong_timeout: Duration,
    /// Time the peer has to answer our close frame; then the session ends (as
    /// 1006). Default 5 s.
    pub close_timeout: Duration,
}

impl Limits {
    /// The defaults, usable in a `static`.
    pub const DEFAULT: Self = default_limits();
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The default [`Limits`] (see each field for its value).
#[must_use]
pub const fn default_limits() -> Limits {
    Limits {
        max_frame_bytes: 16 * 1024 * 1024,
        max_message_bytes: 16 * 1024 * 1024,
        rx_buffer_bytes: 4096,
        tx_buffer_bytes: 16 * 1024,
        ping_interval: Some(Duration::from_secs(60)),
        pong_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(5),
    }
}

/// Which end of the connection a [`Session`] is: it decides masking (RFC 6455
/// §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Incoming frames must be masked (an unmasked one fails the session with
    /// 1002); outgoing frames are not.
    Server,
    /// Incoming frames must not be masked (1002 otherwise); outgoing frames are,
    /// with keys from the session's seeded generator.
    Client,
}

/// What [`Session::poll_event`] has for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A piece of a message, at most `max_piece` bytes, however the frames were
    /// sized. Empty for an empty frame.
    Data {
        /// The (unmasked) bytes.
        data: &'a [u8],
        /// This piece starts the message.
        first: bool,
        /// This piece ends the message (its frame has FIN and nothing follows).
        last: bool,
        /// The message is binary (else text, already checked to be UTF-8 so far).
        binary: bool,
        /// Bytes of the current frame still to come after this piece.
        remaining: u64,
    },
    /// A pong arrived, with its payload.
    Pong(&'a [u8]),
    /// The peer started the close handshake. The session has already queued its
    /// answer (the peer's code echoed, or an empty close for an empty one) and
    /// `Closed` follows. `payload` is the peer's raw close payload: a big-endian
    /// code and a UTF-8 reason, or nothing.
    PeerClose {
        /// The close frame's payload.
        payload: &'a [u8],
    },
    /// The session ended; reported once, and last. `code`: the peer's when it
    /// started the close (1005 if its close had no code), ours when we started it
    /// and the peer answered, 1006 when no close frame came (TCP closed, pong or
    /// close timeout).
    Closed {
        /// The close code that applies.
        code: u16,
    },
    /// The peer broke the protocol. The session has queued a close frame with
    /// `code` (1002 protocol error, 1007 invalid UTF-8, 1009 too big), ignores
    /// everything but the peer's close from now on, and ends; the caller logs it.
    Failed {
        /// The close code sent.
        code: u16,
        /// One line, no newline, e.g. `unmasked frame from a client`.
        reason: &'static str,
    },
}

/// The kind of frame [`Session::send`] queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    /// Starts a text message (the caller sends UTF-8; it is not checked).
    Text,
    /// Starts a binary message.
    Binary,
    /// Continues the message a `Text` or `Binary` frame without FIN left open.
    Continuation,
    /// A ping (payload at most 125 bytes, FIN).
    Ping,
    /// An unsolicited pong (payload at most 125 bytes, FIN).
    Pong,
}

/// Why [`Session::send`] refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The output buffer cannot take the whole frame now; retry once
    /// [`Session::tx`] has drained.
    NoSpace,
    /// Not valid now: a continuation with no open message, a new message while
    /// one is open, or anything once a close frame was sent or the session ended.
    BadState,
    /// A frame RFC 6455 forbids: a ping or pong over 125 bytes or without FIN.
    Invalid,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoSpace => "no room in the output buffer",
            Self::BadState => "not valid in the session's current state",
            Self::Invalid => "frame forbidden by RFC 6455",
        })
    }
}

impl std::error::Error for SendError {}

/// Whether `code` may appear in a close frame (RFC 6455 §7.4 and the IANA
/// registry): 1000–1003, 1007–1014 and 3000–4999. 1004 is reserved; 1005, 1006
/// and 1015 only exist for reporting; the rest is unassigned. tungstenite's
/// `CloseCode::is_allowed` refuses 1014 (registered since); Autobahn tests
/// none of 1012–1014.
#[must_use]
pub const fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests;
