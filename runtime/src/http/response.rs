//! Responses: the bounded output buffer, staging and checking a response head, and
//! framing its body (`Content-Length`, chunked, or close-delimited).

use super::{ResponseError, is_tchar, reserve_within};

/// Worst case of what [`Response::finalize`] appends to a staged head:
/// `Content-Length: <20 digits>\r\n` + `Connection: keep-alive\r\n` + `\r\n`.
const FRAMING_RESERVE: usize = 38 + 24 + 2;

/// The last chunk of a chunked body, with no trailers.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Chunk framing around `n` data bytes: `{hex}\r\n` and `\r\n`.
fn chunk_overhead(n: usize) -> usize {
    hex_len(n as u64) + 4
}

/// The output buffer: bytes queued for the peer, bounded by `limit` for the
/// guest's writes. It allocates as bytes are queued, never more than `limit`
/// (or what a past-the-limit push needs), and keeps its memory when it drains:
/// the connection gives it back with [`Self::give_back`] once it goes idle.
#[derive(Debug)]
pub(super) struct TxBuf {
    buf: Vec<u8>,
    start: usize,
    limit: usize,
}

impl TxBuf {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            limit,
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub(super) fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }

    pub(super) fn space(&self) -> usize {
        self.limit.saturating_sub(self.buf.len() - self.start)
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Appends `data`, past `limit` if need be: callers check [`Self::space`]
    /// first, except for the conn's own small messages (`100 Continue`, errors).
    pub(super) fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.buf.len() + data.len() > self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        reserve_within(&mut self.buf, data.len(), self.limit);
        self.buf.extend_from_slice(data);
    }

    /// If nothing is queued, gives the memory back when it is more than `keep`
    /// bytes.
    pub(super) fn give_back(&mut self, keep: usize) {
        if self.is_empty() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > keep {
                self.buf = Vec::new();
            }
        }
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn push_chunk(&mut self, data: &[u8]) {
        let mut size = [0; 16];
        self.push(hex(data.len() as u64, &mut size));
        self.push(b"\r\n");
        self.push(data);
        self.push(b"\r\n");
    }
}

/// How the body of a finalized response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// 1xx, 204, 304: no body at all.
    Empty,
    /// `Content-Length`: bytes still allowed.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// HTTP/1.0 without a length: the body ends when the connection closes.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No response for the current request yet.
    Idle,
    /// `begin_head` called; headers are being added.
    Staging,
    /// Head queued; body being written.
    Body,
    /// Body finished (or a canned response queued); nothing more may be written.
    Done,
}

/// What finalizing a head needs to know about the request and the connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Context {
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub(super) version: u8,
    /// A `HEAD` request: its response has a head only.
    pub(super) head_request: bool,
    /// The connection closes after this response (the client asked, the request
    /// body cannot be skipped, an error…).
    pub(super) close: bool,
}

/// The response to the current request.
#[derive(Debug)]
pub(super) struct Response {
    phase: Phase,
    status: u16,
    /// The staged head: status line and the guest's headers. It grows as they
    /// are added, never past `max_head`, and the connection gives its memory back
    /// with [`Self::give_back`] once it goes idle.
    head: Vec<u8>,
    max_head: usize,
    length: Option<u64>,
    framing: Framing,
    /// Body bytes written but not sent (HEAD).
    drop_body: bool,
    /// The head said `Connection: close` or the body is close-delimited.
    close: bool,
}

impl Response {
    pub(super) fn new(max_head: usize) -> Self {
        Self {
            phase: Phase::Idle,
            status: 0,
            head: Vec::new(),
            max_head,
            length: None,
            framing: Framing::Empty,
            drop_body: false,
            close: false,
        }
    }

    /// Back to no response, for the next request (buffers kept: see
    /// [`Self::give_back`]).
    pub(super) fn reset(&mut self) {
        self.phase = Phase::Idle;
        self.head.clear();
        self.length = None;
        self.close = false;
    }

    /// While no response is staged, gives the staged head's memory back when it
    /// is more than `keep` bytes.
    pub(super) fn give_back(&mut self, keep: usize) {
        if self.phase == Phase::Idle && self.head.capacity() > keep {
            self.head = Vec::new();
        }
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.head.capacity()
    }

    /// Whether its head has been queued (or a canned response).
    pub(super) fn started(&self) -> bool {
        matches!(self.phase, Phase::Body | Phase::Done)
    }

    /// Whether the connection must close after this response.
    pub(super) fn must_close(&self) -> bool {
        self.close
    }

    pub(super) fn begin(&mut self, status: u16, version: u8) -> Result<(), ResponseError> {
        if self.phase != Phase::Idle {
            return Err(ResponseError::BadState);
        }
        if !(100..=999).contains(&status) {
            return Err(ResponseError::Invalid);
        }
        self.head.clear();
        push_status_line(&mut self.head, version, status);
        if self.head.len() + FRAMING_RESERVE > self.max_head {
            self.head.clear();
            return Err(ResponseError::NoSpace);
        }
        self.status = status;
        self.length = None;
        self.phase = Phase::Staging;
        Ok(())
    }

    pub(super) fn add_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), ResponseError> {
        if self.phase != Phase::Staging {
            return Err(ResponseError::BadState);
        }
        // libwebsockets callers pass names with their colon ("content-type:").
        let name = name.strip_suffix(b":").unwrap_or(name);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) || !valid_value(value) {
            return Err(ResponseError::Invalid);
        }
        // The connection owns the framing headers: they must agree with what it sends.
        if [&b"content-length"[..], b"transfer-encoding", b"connection"]
            .iter()
            .any(|framing| name.eq_ignore_ascii_case(framing))
        {
            return Err(ResponseError::Invalid);
        }
        let line = name.len() + value.len() + 4;
        if self.head.len() + line + FRAMING_RESERVE > self.max_head {
            return Err(ResponseError::NoSpace);
        }
        reserve_within(&mut self.head, line, self.max_head);
        self.head.extend_from_slice(name);
        self.head.extend_from_slice(b": ");
        self.head.extend_from_slice(value);
        self.head.extend_from_slice(b"\r\n");
        Ok(())
    }

    pub(super) fn set_length(&mut self, length: Option<u64>) -> Result<(), ResponseError> {
        if self.phase != Phase::Staging {
            return Err(ResponseError::BadState);
        }
        self.length = length;
        Ok(())
    }

    /// Adds the framing and `Connection` headers and queues the head into `tx`.
    pub(super) fn finalize(&mut self, cx: Context, tx: &mut TxBuf) -> Result<(), ResponseError> {
        if self.phase != Phase::Staging {
            return Err(ResponseError::BadState);
        }
        let staged = self.head.len();
        reserve_within(&mut self.head, FRAMING_RESERVE, self.max_head);
        let mut close = cx.close;
        let framing = if is_bodyless(self.status) {
            Framing::Empty
        } else if let Some(n) = self.length {
            push_header_dec(&mut self.head, b"Content-Length", n);
            Framing::Length(n)
        } else if cx.version == 1 {
            self.head
                .extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            Framing::Chunked
        } else {
            // A HEAD response has no body to delimit.
            close |= !cx.head_request;
            Framing::UntilClose
        };
        if close {
            self.head.extend_from_slice(b"Connection: close\r\n");
        } else if cx.version == 0 {
            self.head.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        self.head.extend_from_slice(b"\r\n");
        if self.head.len() > tx.space() {
            self.head.truncate(staged);
            return Err(ResponseError::NoSpace);
        }
        tx.push(&self.head);
        self.framing = framing;
        self.drop_body = cx.head_request;
        self.close = close;
        self.phase = Phase::Body;
        Ok(())
    }

    /// The most body bytes [`Self::write_body`] takes now.
    pub(super) fn body_space(&self, tx: &TxBuf) -> usize {
        match (self.phase, self.framing) {
            (Phase::Body, _) if self.drop_body => usize::MAX,
            (Phase::Body, Framing::Chunked) => {
                let space = tx.space().saturating_sub(LAST_CHUNK.len());
                space.saturating_sub(chunk_overhead(space))
            }
            (Phase::Body, Framing::Length(_) | Framing::UntilClose) => tx.space(),
            _ => 0,
        }
    }

    pub(super) fn write_body(
        &mut self,
        data: &[u8],
        fin: bool,
        tx: &mut TxBuf,
    ) -> Result<usize, ResponseError> {
        if self.phase != Phase::Body {
            return Err(ResponseError::BadState);
        }
        let len = data.len() as u64;
        let remaining = match self.framing {
            Framing::Empty if !data.is_empty() => return Err(ResponseError::Invalid),
            Framing::Length(remaining) if len > remaining => return Err(ResponseError::Invalid),
            Framing::Length(remaining) => remaining - len,
            _ => 0,
        };
        if !self.drop_body {
            match self.framing {
                // The last chunk always stays reserved so `finish` never overflows.
                Framing::Chunked => {
                    let chunk = if data.is_empty() {
                        0
                    } else {
                        data.len() + chunk_overhead(data.len())
                    };
                    if chunk + LAST_CHUNK.len() > tx.space() {
                        return Err(ResponseError::NoSpace);
                    }
                    if !data.is_empty() {
                        tx.push_chunk(data);
                    }
                    if fin {
                        tx.push(LAST_CHUNK);
                    }
                }
                Framing::Length(_) | Framing::UntilClose => {
                    if data.len() > tx.space() {
                        return Err(ResponseError::NoSpace);
                    }
                    tx.push(data);
                }
                Framing::Empty => {}
            }
        }
        if let Framing::Length(_) = self.framing {
            self.framing = Framing::Length(remaining);
        }
        if fin {
            self.phase = Phase::Done;
        }
        Ok(data.len())
    }

    /// Ends the response. Returns whether it is complete on the wire, so the
    /// connection can go on; `false` means the peer was told too little.
    pub(super) fn finish(&mut self, tx: &mut TxBuf) -> bool {
        let complete = match self.phase {
            Phase::Idle | Phase::Staging => false,
            Phase::Done => !matches!(self.framing, Framing::Length(n) if n > 0 && !self.drop_body),
            Phase::Body => match self.framing {
                Framing::Chunked => {
                    if !self.drop_body {
                        tx.push(LAST_CHUNK);
                    }
                    true
                }
                Framing::Length(n) => n == 0 || self.drop_body,
                Framing::Empty => true,
                Framing::UntilClose => self.drop_body,
            },
        };
        self.phase = Phase::Done;
        complete && !self.close
    }

    /// Queues a whole response with a small body: `status`, `Content-Type`,
    /// `Content-Length`, `Connection` as `cx` says. Replaces anything staged.
    pub(super) fn canned(
        &mut self,
        status: u16,
        content_type: &str,
        body: &[u8],
        cx: Context,
        tx: &mut TxBuf,
    ) {
        let status = if (100..=999).contains(&status) {
            status
        } else {
            500
        };
        let content_type = if valid_value(content_type.as_bytes()) {
            content_type.as_bytes()
        } else {
            b"text/plain"
        };
        self.head.clear();
        push_status_line(&mut self.head, cx.version, status);
        let body = if is_bodyless(status) {
            &[][..]
        } else {
            self.head.extend_from_slice(b"Content-Type: ");
            self.head.extend_from_slice(content_type);
            self.head.extend_from_slice(b"\r\n");
            push_header_dec(&mut self.head, b"Content-Length", body.len() as u64);
            if cx.head_request { &[][..] } else { body }
        };
        if cx.close {
            self.head.extend_from_slice(b"Connection: close\r\n");
        } else if cx.version == 0 {
            self.head.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        self.head.extend_from_slice(b"\r\n");
        tx.push(&self.head);
        tx.push(body);
        self.status = status;
        self.framing = Framing::Empty;
        self.close = cx.close;
        self.phase = Phase::Done;
    }

    /// The response is abandoned (the connection is closing).
    pub(super) fn abort(&mut self) {
        self.phase = Phase::Done;
        self.framing = Framing::Empty;
        self.close = true;
    }
}

/// 1xx, 204 and 304 responses never have a body nor its framing headers.
fn is_bodyless(status: u16) -> bool {
    status < 200 || status == 204 || status == 304
}

/// A field value: no control characters but HTAB (so no CR, LF, NUL).
fn valid_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn push_status_line(buf: &mut Vec<u8>, version: u8, status: u16) {
    buf.extend_from_slice(if version == 0 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    let mut digits = [0; 20];
    buf.extend_from_slice(dec(u64::from(status), &mut digits));
    buf.push(b' ');
    buf.extend_from_slice(reason_phrase(status).as_bytes());
    buf.extend_from_slice(b"\r\n");
}

fn push_header_dec(buf: &mut Vec<u8>, name: &[u8], n: u64) {
    let mut digits = [0; 20];
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(dec(n, &mut digits));
    buf.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written at the end of `out`.
fn dec(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &out[i..];
        }
    }
}

/// `n` in lowercase hex, written at the end of `out`.
fn hex(mut n: u64, out: &mut [u8; 16]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            return &out[i..];
        }
    }
}

fn hex_len(n: u64) -> usize {
    let mut out = [0; 16];
    hex(n, &mut out).len()
}

/// The reason phrase sent for `status` (empty for codes without a common one).
#[must_use]
pub(super) fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}
