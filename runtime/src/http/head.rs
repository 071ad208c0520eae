//! Request heads: finding where one ends without re-scanning, then parsing it
//! strictly into a [`Request`] that owns its bytes.

use std::fmt;

use super::{Limits, MAX_HEADERS_CAP, Rejection, is_tchar};

/// Where the request-line scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Before or in the method (empty lines before it are skipped, RFC 9112 §2.2).
    Method,
    /// In the request-target.
    Target,
    /// In the version, until the line's CRLF.
    Version,
    /// In the header lines.
    Fields,
}

/// Finds the end of a request head incrementally: each byte is looked at once,
/// however the head was split across feeds. It also rejects what httparse would
/// let through (bare LF, obs-fold) and a too-long request-target before the head
/// is complete.
#[derive(Debug)]
pub(super) struct HeadScanner {
    /// Bytes of the buffered head already scanned.
    scanned: usize,
    /// Offset where the current line starts.
    line_start: usize,
    line: Line,
    target_len: usize,
}

impl HeadScanner {
    pub(super) const fn new() -> Self {
        Self {
            scanned: 0,
            line_start: 0,
            line: Line::Method,
            target_len: 0,
        }
    }

    /// Scans the bytes of `buf` (the whole buffered head, from its first byte) not
    /// scanned yet. Returns the head's length once its blank line is seen.
    pub(super) fn scan(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, Rejection> {
        for i in self.scanned..buf.len() {
            let b = buf[i];
            let after_cr = i > 0 && buf[i - 1] == b'\r';
            if after_cr && b != b'\n' {
                return Err(Rejection::new(400, "CR not followed by LF in request head"));
            }
            match b {
                b'\n' if !after_cr => {
                    return Err(Rejection::new(400, "bare LF in request head"));
                }
                b'\n' => {
                    let empty = self.line_start + 1 == i;
                    self.line_start = i + 1;
                    match self.line {
                        Line::Fields if empty => {
                            self.scanned = i + 1;
                            return Ok(Some(i + 1));
                        }
                        Line::Method if empty => {}
                        // A request line cut short is left for httparse to reject.
                        _ => self.line = Line::Fields,
                    }
                }
                b'\r' => {}
                b' ' | b'\t' if i == self.line_start && self.line == Line::Fields => {
                    return Err(Rejection::new(
                        400,
                        "obs-fold (header line starting with whitespace)",
                    ));
                }
                _ => match self.line {
                    Line::Method if b == b' ' && i != self.line_start => self.line = Line::Target,
                    Line::Method if !is_tchar(b) => {
                        return Err(Rejection::new(400, "invalid method token"));
                    }
                    Line::Target if b == b' ' => self.line = Line::Version,
                    Line::Target => {
                        self.target_len += 1;
                        if self.target_len > limits.max_uri_bytes {
                            return Err(Rejection::new(414, "request-target too long"));
                        }
                    }
                    Line::Method | Line::Version | Line::Fields => {}
                },
            }
        }
        self.scanned = buf.len();
        if buf.len() >= limits.max_head_bytes {
            return Err(Rejection::new(431, "request head too large"));
        }
        Ok(None)
    }
}

/// Byte range of a part of the head, within [`Request`]'s copy of it.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// The span of `part`, a subslice of `whole`.
    fn of(whole: &[u8], part: &[u8]) -> Self {
        let start = part.as_ptr() as usize - whole.as_ptr() as usize;
        Self::new(start, start + part.len())
    }

    fn new(start: usize, end: usize) -> Self {
        // Heads are bounded by `max_head_bytes`, far below 4 GiB.
        Self {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            end: u32::try_from(end).unwrap_or(u32::MAX),
        }
    }

    fn get(self, buf: &[u8]) -> &[u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

/// Why [`Request::query_arg`] found no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryArgError {
    /// The query has no `name=` argument.
    NotFound,
    /// The decoded value is longer than the output buffer.
    TooSmall,
}

impl fmt::Display for QueryArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotFound => "no such query argument",
            Self::TooSmall => "query argument value longer than the buffer",
        })
    }
}

impl std::error::Error for QueryArgError {}

/// A parsed request head. It owns a copy of the head's bytes (at most
/// `max_head_bytes`); its buffers are reused from one request to the next, and
/// given back by the connection once it goes idle.
pub struct Request {
    buf: Vec<u8>,
    method: Span,
    target: Span,
    headers: Vec<(Span, Span)>,
    version: u8,
    method_index: u8,
    content_length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("target", &self.target())
            .field("version", &self.version)
            .field("headers", &self.headers.len())
            .field("content_length", &self.content_length)
            .field("chunked", &self.chunked)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl Request {
    pub(super) const fn new() -> Self {
        Self {
            buf: Vec::new(),
            method: Span { start: 0, end: 0 },
            target: Span { start: 0, end: 0 },
            headers: Vec::new(),
            version: 1,
            method_index: 8,
            content_length: None,
            chunked: false,
            keep_alive: true,
            expect_continue: false,
        }
    }

    /// Forgets the request and gives its memory back if its buffers hold more
    /// than `keep` bytes; for a connection between requests (the request is no
    /// longer readable then).
    pub(super) fn give_back(&mut self, keep: usize) {
        if self.buf.capacity() > keep || self.headers_bytes() > keep {
            *self = Self::new();
        }
    }

    fn headers_bytes(&self) -> usize {
        self.headers.capacity() * size_of::<(Span, Span)>()
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity() + self.headers_bytes()
    }

    /// The method, e.g. `GET`.
    #[must_use]
    pub fn method(&self) -> &str {
        str_of(self.method.get(&self.buf))
    }

    /// The method as libwebsockets numbers it: `GET` 0, `POST` 1, `OPTIONS` 2,
    /// `PUT` 3, `PATCH` 4, `DELETE` 5, `CONNECT` 6, `HEAD` 7, any other 8.
    #[must_use]
    pub fn method_index(&self) -> u8 {
        self.method_index
    }

    /// True for a `HEAD` request (its response has no body).
    #[must_use]
    pub fn is_head(&self) -> bool {
        self.method_index == 7
    }

    /// The raw request-target, e.g. `/x?a=1`.
    #[must_use]
    pub fn target(&self) -> &str {
        str_of(self.target.get(&self.buf))
    }

    /// The request-target before any `?`.
    #[must_use]
    pub fn path(&self) -> &str {
        let target = self.target();
        target.split_once('?').map_or(target, |(path, _)| path)
    }

    /// The request-target after the first `?`, if there is one.
    #[must_use]
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, query)| query)
    }

    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    #[must_use]
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The first header named `name` (case-insensitive), value without surrounding
    /// whitespace.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// All header lines in order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers
            .iter()
            .map(|&(n, v)| (str_of(n.get(&self.buf)), v.get(&self.buf)))
    }

    /// Copies the value of the query's first `name=` argument into `out`,
    /// percent-decoded with `+` as space, and returns its length. A trailing `=` on
    /// `name` is ignored. Malformed `%` escapes are copied as they are.
    ///
    /// # Errors
    /// [`QueryArgError::NotFound`] when there is no such argument,
    /// [`QueryArgError::TooSmall`] when the decoded value does not fit in `out`.
    pub fn query_arg(&self, name: &str, out: &mut [u8]) -> Result<usize, QueryArgError> {
        let name = name.strip_suffix('=').unwrap_or(name);
        let value = self
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|arg| arg.strip_prefix(name)?.strip_prefix('='))
            .ok_or(QueryArgError::NotFound)?;
        percent_decode(value.as_bytes(), out).ok_or(QueryArgError::TooSmall)
    }

    /// Whether the client lets the connection go on after this request: HTTP/1.1
    /// unless `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    #[must_use]
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Whether a body follows the head (`Content-Length` above 0, or chunked).
    #[must_use]
    pub fn body_expected(&self) -> bool {
        self.chunked || self.content_length.is_some_and(|n| n > 0)
    }

    /// The declared `Content-Length`, if any.
    #[must_use]
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Whether the body is sent with `Transfer-Encoding: chunked`.
    #[must_use]
    pub fn is_chunked(&self) -> bool {
        self.chunked
    }

    /// Whether the client waits for `100 Continue` before sending its body.
    pub(super) fn expects_continue(&self) -> bool {
        self.expect_continue
    }

    /// Parses a complete head (as found by [`HeadScanner`]) into `self`, replacing
    /// the previous request, and checks what HTTP/1.1 requires of it.
    pub(super) fn parse(&mut self, head: &[u8], limits: &Limits) -> Result<(), Rejection> {
        check_version(head)?;
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        let slots = &mut slots[..limits.max_headers.min(MAX_HEADERS_CAP)];
        let mut parsed = httparse::Request::new(slots);
        match parsed.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(Rejection::new(400, "malformed request head"));
            }
            Err(e) => return Err(rejection_for(e)),
        }
        let (Some(method), Some(target), Some(version)) =
            (parsed.method, parsed.path, parsed.version)
        else {
            return Err(Rejection::new(400, "malformed request line"));
        };

        self.buf.clear();
        self.buf.reserve_exact(head.len());
        self.buf.extend_from_slice(head);
        self.method = Span::of(head, method.as_bytes());
        self.target = Span::of(head, target.as_bytes());
        self.version = version;
        self.method_index = match method {
            "GET" => 0,
            "POST" => 1,
            "OPTIONS" => 2,
            "PUT" => 3,
            "PATCH" => 4,
            "DELETE" => 5,
            "CONNECT" => 6,
            "HEAD" => 7,
            _ => 8,
        };
        self.headers.clear();
        for h in parsed.headers.iter() {
            let value = trim_ows(h.value);
            self.headers
                .push((Span::of(head, h.name.as_bytes()), Span::of(head, value)));
        }
        self.check_fields(limits)
    }

    /// Framing, `Host`, `Connection` and `Expect`.
    fn check_fields(&mut self, limits: &Limits) -> Result<(), Rejection> {
        let mut hosts = 0;
        let mut content_length = None;
        let mut te = Codings::default();
        let mut saw_te = false;
        let mut close = false;
        let mut keep_alive = false;
        let mut expect = false;
        for (name, value) in self.headers() {
            if name.eq_ignore_ascii_case("host") {
                hosts += 1;
            } else if name.eq_ignore_ascii_case("content-length") {
                let n = parse_content_length(value)
                    .ok_or(Rejection::new(400, "invalid Content-Length"))?;
                // Identical duplicates ("5" twice, or "5, 5") are accepted, as RFC
                // 9110 §8.6 allows; differing ones are ambiguous framing.
                if content_length.is_some_and(|m| m != n) {
                    return Err(Rejection::new(400, "differing Content-Length values"));
                }
                content_length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                saw_te = true;
                te.add(value)?;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in list(value) {
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            } else if name.eq_ignore_ascii_case("expect") {
                if !value.eq_ignore_ascii_case(b"100-continue") {
                    return Err(Rejection::new(417, "unsupported Expect"));
                }
                expect = true;
            }
        }

        match (self.version, hosts) {
            (1, 0) => return Err(Rejection::new(400, "missing Host")),
            (_, 2..) => return Err(Rejection::new(400, "more than one Host")),
            _ => {}
        }
        if saw_te && content_length.is_some() {
            return Err(Rejection::new(
                400,
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if saw_te && self.version == 0 {
            return Err(Rejection::new(
                400,
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if saw_te {
            te.check()?;
        }
        if content_length.is_some_and(|n| n > limits.max_body_bytes) {
            return Err(Rejection::new(413, "request body too large"));
        }

        self.content_length = content_length;
        self.chunked = saw_te;
        self.keep_alive = !close && (self.version == 1 || keep_alive);
        // HTTP/1.0 clients do not know 100 Continue (RFC 9110 §10.1.1).
        self.expect_continue = expect && self.version == 1 && self.body_expected();
        Ok(())
    }
}

/// The transfer codings of all `Transfer-Encoding` lines, in order.
///
/// Only `chunked` alone is decoded. Any other coding before it (`gzip, chunked`)
/// is a coding this server does not implement: `501`. A list whose final coding
/// is not `chunked` cannot be framed at all: `400` (RFC 9112 §6.3).
#[derive(Debug, Default)]
struct Codings {
    count: usize,
    chunked: usize,
    last_chunked: bool,
}

impl Codings {
    fn add(&mut self, value: &[u8]) -> Result<(), Rejection> {
        for coding in list(value) {
            if !coding.iter().all(|&b| is_tchar(b)) {
                return Err(Rejection::new(400, "invalid Transfer-Encoding"));
            }
            self.count += 1;
            self.last_chunked = coding.eq_ignore_ascii_case(b"chunked");
            self.chunked += usize::from(self.last_chunked);
        }
        Ok(())
    }

    fn check(&self) -> Result<(), Rejection> {
        if self.count == 0 {
            Err(Rejection::new(400, "empty Transfer-Encoding"))
        } else if !self.last_chunked {
            Err(Rejection::new(
                400,
                "chunked is not the final transfer coding",
            ))
        } else if self.chunked > 1 {
            Err(Rejection::new(400, "chunked applied more than once"))
        } else if self.count > 1 {
            Err(Rejection::new(501, "unsupported transfer coding"))
        } else {
            Ok(())
        }
    }
}

/// `505` for a well-formed version other than 1.0 and 1.1, `400` for a malformed
/// one; httparse says only "version" for both.
fn check_version(head: &[u8]) -> Result<(), Rejection> {
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(0);
    let line = &head[start..];
    let line = &line[..line.iter().position(|&b| b == b'\r').unwrap_or(line.len())];
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    match version {
        b"HTTP/1.0" | b"HTTP/1.1" => Ok(()),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(Rejection::new(505, "HTTP version not supported"))
        }
        _ => Err(Rejection::new(400, "invalid HTTP version")),
    }
}

fn rejection_for(e: httparse::Error) -> Rejection {
    match e {
        httparse::Error::TooManyHeaders => Rejection::new(431, "too many header lines"),
        httparse::Error::Token => Rejection::new(400, "invalid request line"),
        httparse::Error::HeaderName => Rejection::new(400, "invalid header name"),
        httparse::Error::HeaderValue => Rejection::new(400, "invalid header value"),
        httparse::Error::NewLine => Rejection::new(400, "invalid line ending"),
        httparse::Error::Version => Rejection::new(400, "invalid HTTP version"),
        httparse::Error::Status => Rejection::new(400, "malformed request head"),
    }
}

/// `1*DIGIT`, or a comma list of identical ones; `None` if malformed or over `u64`.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut result = None;
    for item in value.split(|&b| b == b',').map(trim_ows) {
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = item.iter().try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        if result.is_some_and(|m| m != n) {
            return None;
        }
        result = Some(n);
    }
    result
}

/// The non-empty elements of a comma-separated header list.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|item| !item.is_empty())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Head bytes checked by httparse (tokens, UTF-8 targets) as `str`.
fn str_of(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Decodes `%XX` and `+` from `src` into `out`; `None` if it does not fit.
fn percent_decode(src: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut n = 0;
    let mut i = 0;
    while i < src.len() {
        let (byte, used) = match src[i] {
            b'+' => (b' ', 1),
            b'%' => match (
                src.get(i + 1).copied().and_then(hex),
                src.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => ((hi << 4) | lo, 3),
                _ => (b'%', 1),
            },
            b => (b, 1),
        };
        *out.get_mut(n)? = byte;
        n += 1;
        i += used;
    }
    Some(n)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits::DEFAULT;

    #[test]
    fn scanner_resumes_where_it_stopped_instead_of_rescanning() {
        let mut scanner = HeadScanner::new();
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        assert_eq!(scanner.scan(&buf, &LIMITS), Ok(None));
        // Bytes already scanned are not looked at again: a bare LF planted there
        // goes unseen, so each byte is scanned once however the head trickles in.
        buf[3] = b'\n';
        buf.extend_from_slice(b"\r\n");
        assert_eq!(scanner.scan(&buf, &LIMITS), Ok(Some(buf.len())));
    }

    #[test]
    fn scanner_finds_the_end_at_any_split() {
        let head = b"\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        for split in 0..head.len() {
            let mut scanner = HeadScanner::new();
            let first = scanner.scan(&head[..split], &LIMITS).unwrap();
            let end = first.or(scanner.scan(head, &LIMITS).unwrap());
            assert_eq!(end, Some(head.len() - 3), "split at {split}");
        }
    }

    #[test]
    fn content_length_accepts_digits_and_identical_lists_only() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"007"), Some(7));
        assert_eq!(parse_content_length(b"5,5 ,\t5"), Some(5));
        assert_eq!(
            parse_content_length(b"18446744073709551615"),
            Some(u64::MAX)
        );
        for bad in [
            &b""[..],
            b"5,",
            b"5,6",
            b"-1",
            b"+1",
            b"0x10",
            b"1 2",
            b"18446744073709551616",
        ] {
            assert_eq!(parse_content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        let mut out = [0; 16];
        let n = percent_decode(b"a%41%4g%+%", &mut out).unwrap();
        assert_eq!(&out[..n], b"aA%4g% %");
    }
}
