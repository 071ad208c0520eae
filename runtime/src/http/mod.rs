//! HTTP/1.1 server connections. Bytes in, events and bytes out; never touches a
//! socket or a clock.
//!
//! [`ServerConn`] is the whole API: the driver feeds it what the socket read, takes
//! [`Event`]s for the guest, writes the guest's response through it and sends what
//! [`ServerConn::tx`] holds. Request heads are parsed strictly (httparse plus the
//! checks it leaves to us) within the [`Limits`] given; time only comes in as `now`.

mod body;
mod conn;
mod head;
mod response;

use std::fmt;
use std::time::Duration;

pub use conn::ServerConn;
pub use head::{QueryArgError, Request};

/// Header slots parsed per request head: [`Limits::max_headers`] above this is
/// clamped to it (the slots live on the stack while a head is parsed).
pub const MAX_HEADERS_CAP: usize = 64;

/// Every bound one connection enforces. The defaults are small, for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of a request head (request line + header lines + blank line); more is
    /// answered `431`. This is also the receive buffer's size. Default 4096.
    pub max_head_bytes: usize,
    /// Header lines in a request head; more is answered `431`. At most
    /// [`MAX_HEADERS_CAP`]. Default 32.
    pub max_headers: usize,
    /// Bytes of the request-target; more is answered `414`, as soon as the request
    /// line shows it. Default 1024.
    pub max_uri_bytes: usize,
    /// Bytes of a request body; more is answered `413` (at head time for a declared
    /// `Content-Length`, when reached for a chunked body). Default 1 MiB (`1_048_576`).
    pub max_body_bytes: u64,
    /// Bytes of a staged response head, status line and the framing headers the
    /// connection adds included. Default 1024.
    pub max_response_head_bytes: usize,
    /// Bytes of the output buffer; a body write that does not fit is refused with
    /// [`ResponseError::NoSpace`]. Default 8192.
    pub tx_buffer_bytes: usize,
    /// Time a started request head has to complete (counted from its first byte, or
    /// from the end of the previous transaction when its bytes were already
    /// buffered); then `408` and close. A new connection that sends nothing at all
    /// for this long is closed without an answer. Default 10 s.
    pub head_timeout: Duration,
    /// Time a request body may make no progress while the connection waits on the
    /// peer; then `408` and close. Default 10 s.
    pub body_timeout: Duration,
    /// Time a kept-alive connection may stay without request bytes; then it is
    /// closed without an answer. Default 30 s.
    pub idle_timeout: Duration,
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
        max_head_bytes: 4096,
        max_headers: 32,
        max_uri_bytes: 1024,
        max_body_bytes: 1_048_576,
        max_response_head_bytes: 1024,
        tx_buffer_bytes: 8192,
        head_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
    }
}

/// What [`ServerConn::poll_event`] has for the caller. A transaction always reads
/// `Head`, any number of `Body`, `BodyComplete`; `Rejected` may cut it short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A request head is complete: read it with [`ServerConn::request`] and dispatch.
    Head,
    /// The next piece of the request body, `1..=max_piece` bytes.
    Body(&'a [u8]),
    /// The whole body has been delivered (right after `Head` when there is none).
    BodyComplete,
    /// The peer misbehaved or timed out. The connection has already queued the
    /// error response (unless a response had started) and will close; the caller
    /// only logs it and tells a bound guest.
    Rejected(Rejection),
}

/// Why a request was refused: the status sent and a one-line reason (also the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// The status code answered, e.g. `400`.
    pub status: u16,
    /// One line, no newline, e.g. `both Content-Length and Transfer-Encoding`.
    pub reason: &'static str,
}

impl Rejection {
    pub(crate) const fn new(status: u16, reason: &'static str) -> Self {
        Self { status, reason }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

/// How a transaction ended ([`ServerConn::finish_response`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The connection goes on to the next request.
    KeepAlive,
    /// The connection closes once [`ServerConn::tx`] is drained.
    Close,
}

/// Why a response call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// Not valid now: no current request, head already finalized, body finished.
    BadState,
    /// The staged head or the output buffer has no room for this; retry later
    /// (body) or send less (head).
    NoSpace,
    /// A value HTTP forbids: bad status or header, a framing header set by hand,
    /// body bytes past `Content-Length` or on a status without a body.
    Invalid,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadState => "not valid in the response's current state",
            Self::NoSpace => "no room in the response head or output buffer",
            Self::Invalid => "value forbidden by HTTP",
        })
    }
}

impl std::error::Error for ResponseError {}

/// Makes room in `buf` for `additional` more bytes, doubling as `Vec` does but
/// never past `bound` unless the bytes themselves need more. The connections'
/// buffers use it so that their memory follows what they hold, up to their limit,
/// instead of being reserved whole at the start (the WebSocket session too).
pub(crate) fn reserve_within(buf: &mut Vec<u8>, additional: usize, bound: usize) {
    let needed = buf.len().saturating_add(additional);
    if needed > buf.capacity() {
        let target = buf.capacity().saturating_mul(2).min(bound).max(needed);
        buf.reserve_exact(target - buf.len());
    }
}

/// Bytes each connection buffer may keep once it drains with nothing in
/// progress: enough for a small request and its answer, or small WebSocket
/// messages and control frames, so a connection trading small ones does not
/// reallocate each time, while an idle one holds next to nothing.
pub(crate) const IDLE_KEEP: usize = 512;

/// Empties a drained receive buffer whose unread part starts at `start`, and
/// gives its memory back if it grew past [`IDLE_KEEP`]. The caller has checked
/// that no byte is unread and nothing is in progress.
pub(crate) fn release_drained(buf: &mut Vec<u8>, start: &mut usize) {
    buf.clear();
    *start = 0;
    if buf.capacity() > IDLE_KEEP {
        *buf = Vec::new();
    }
}

/// A `tchar` of RFC 9110 (method and header-name characters).
const fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
        | b'^' | b'_' | b'`' | b'|' | b'~')
}

#[cfg(test)]
mod tests;
