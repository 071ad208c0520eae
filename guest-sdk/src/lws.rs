//! The lws-shaped layer, for porting libwebsockets code: [`Reason`], [`Wsi`],
//! [`WriteMode`], [`Method`] with lws 4.3's numbers, and one safe function per
//! `lws` import, named like the lws API it mirrors, returning `Result<_, Error>`.
//! Thin: no state, no policy; the idiomatic layers ([`crate::http`], [`crate::ws`])
//! sit on top.

use core::fmt;

use crate::abi;
use crate::log::LogLevel;

/// A connection handle, lws's `struct lws *wsi`. Only meaningful during the
/// callback that received it (and later ones for the same connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Wsi(i32);

impl Wsi {
    /// The handle the host passed as `wsi`.
    pub const fn from_raw(raw: i32) -> Self {
        Self(raw)
    }

    /// The number the host knows this connection by.
    pub const fn raw(self) -> i32 {
        self.0
    }
}

macro_rules! reasons {
    ($( $(#[$doc:meta])* $name:ident = $num:literal, )*) => {
        /// A callback reason (`enum lws_callback_reasons`), with lws 4.3's numbers.
        ///
        /// Numbers without a variant arrive as [`Reason::Other`]; [`Reason::from_raw`]
        /// never builds `Other` for a number that has a variant.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Reason {
            $( $(#[$doc])* $name, )*
            /// Any other reason number; ignore it and return 0, as lws code does in `default:`.
            Other(i32),
        }

        impl Reason {
            /// The reason for an lws reason number.
            pub const fn from_raw(raw: i32) -> Self {
                match raw {
                    $( $num => Self::$name, )*
                    other => Self::Other(other),
                }
            }

            /// The lws reason number.
            pub const fn raw(self) -> i32 {
                match self {
                    $( Self::$name => $num, )*
                    Self::Other(raw) => raw,
                }
            }
        }
    };
}

reasons! {
    /// `LWS_CALLBACK_ESTABLISHED`: a WebSocket server connection is up.
    Established = 0,
    /// `LWS_CALLBACK_CLIENT_CONNECTION_ERROR`: an outgoing connection failed.
    ClientConnectionError = 1,
    /// `LWS_CALLBACK_CLIENT_FILTER_PRE_ESTABLISH`.
    ClientFilterPreEstablish = 2,
    /// `LWS_CALLBACK_CLIENT_ESTABLISHED`: an outgoing WebSocket is up.
    ClientEstablished = 3,
    /// `LWS_CALLBACK_CLOSED`: a WebSocket server connection closed.
    Closed = 4,
    /// `LWS_CALLBACK_CLOSED_HTTP`: the connection closed while a transaction was bound.
    ClosedHttp = 5,
    /// `LWS_CALLBACK_RECEIVE`: WebSocket data from the peer.
    Receive = 6,
    /// `LWS_CALLBACK_RECEIVE_PONG`.
    ReceivePong = 7,
    /// `LWS_CALLBACK_CLIENT_RECEIVE`: data on an outgoing WebSocket.
    ClientReceive = 8,
    /// `LWS_CALLBACK_CLIENT_RECEIVE_PONG`.
    ClientReceivePong = 9,
    /// `LWS_CALLBACK_CLIENT_WRITEABLE`.
    ClientWriteable = 10,
    /// `LWS_CALLBACK_SERVER_WRITEABLE`.
    ServerWriteable = 11,
    /// `LWS_CALLBACK_HTTP`: the request head is complete; `in` is the URL path.
    Http = 12,
    /// `LWS_CALLBACK_HTTP_BODY`: a piece of the request body.
    HttpBody = 13,
    /// `LWS_CALLBACK_HTTP_BODY_COMPLETION`: the whole body was delivered.
    HttpBodyCompletion = 14,
    /// `LWS_CALLBACK_HTTP_WRITEABLE`: after `lws_callback_on_writable`.
    HttpWriteable = 16,
    /// `LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION`: a WebSocket upgrade asks for this protocol.
    FilterProtocolConnection = 20,
    /// `LWS_CALLBACK_PROTOCOL_INIT`: once, after the instance is created.
    ProtocolInit = 27,
    /// `LWS_CALLBACK_PROTOCOL_DESTROY`: once, before the instance is dropped.
    ProtocolDestroy = 28,
    /// `LWS_CALLBACK_WS_PEER_INITIATED_CLOSE`.
    WsPeerInitiatedClose = 38,
    /// `LWS_CALLBACK_HTTP_BIND_PROTOCOL`: a request is bound; its pss is fresh.
    HttpBindProtocol = 49,
    /// `LWS_CALLBACK_HTTP_DROP_PROTOCOL`: the transaction ended.
    HttpDropProtocol = 50,
    /// `LWS_CALLBACK_TIMER`: the connection's timer (`lws_set_timer_usecs`) is up.
    Timer = 73,
    /// `LWS_CALLBACK_CLIENT_CLOSED`.
    ClientClosed = 75,
    /// `LWS_CALLBACK_WS_SERVER_BIND_PROTOCOL`.
    WsServerBindProtocol = 77,
    /// `LWS_CALLBACK_WS_SERVER_DROP_PROTOCOL`.
    WsServerDropProtocol = 78,
    /// `LWS_CALLBACK_HTTP_CONFIRM_UPGRADE`.
    HttpConfirmUpgrade = 86,
}

/// An `lws_write` mode (`enum lws_write_protocol`), with lws's numbers. Combine a
/// WebSocket mode with [`WriteMode::NO_FIN`] as in C: `WriteMode::TEXT | WriteMode::NO_FIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteMode(i32);

impl WriteMode {
    /// `LWS_WRITE_TEXT`: a WebSocket text frame (or the first fragment of one).
    pub const TEXT: Self = Self(0);
    /// `LWS_WRITE_BINARY`.
    pub const BINARY: Self = Self(1);
    /// `LWS_WRITE_CONTINUATION`: a later fragment.
    pub const CONTINUATION: Self = Self(2);
    /// `LWS_WRITE_HTTP`: a piece of an HTTP body.
    pub const HTTP: Self = Self(3);
    /// `LWS_WRITE_PING`.
    pub const PING: Self = Self(5);
    /// `LWS_WRITE_PONG`.
    pub const PONG: Self = Self(6);
    /// `LWS_WRITE_HTTP_FINAL`: the last piece of an HTTP body.
    pub const HTTP_FINAL: Self = Self(7);
    /// `LWS_WRITE_NO_FIN` (flag 0x40): more fragments of this message follow.
    pub const NO_FIN: Self = Self(0x40);

    /// The mode for an lws number.
    pub const fn from_raw(raw: i32) -> Self {
        Self(raw)
    }

    /// The lws number.
    pub const fn raw(self) -> i32 {
        self.0
    }
}

impl core::ops::BitOr for WriteMode {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A request method, as `lws_http_get_uri_and_method` numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET` (0).
    Get,
    /// `POST` (1).
    Post,
    /// `OPTIONS` (2).
    Options,
    /// `PUT` (3).
    Put,
    /// `PATCH` (4).
    Patch,
    /// `DELETE` (5).
    Delete,
    /// `CONNECT` (6).
    Connect,
    /// `HEAD` (7).
    Head,
    /// Any other method (8).
    Other,
}

impl Method {
    /// The method for an index `lws_http_get_uri_and_method` returned.
    pub const fn from_index(index: i32) -> Self {
        match index {
            0 => Self::Get,
            1 => Self::Post,
            2 => Self::Options,
            3 => Self::Put,
            4 => Self::Patch,
            5 => Self::Delete,
            6 => Self::Connect,
            7 => Self::Head,
            _ => Self::Other,
        }
    }

    /// The method's name (`"OTHER"` for [`Method::Other`]).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Options => "OPTIONS",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Head => "HEAD",
            Self::Other => "OTHER",
        }
    }
}

/// Why a host call failed: its negative return value (`docs/abi.md`). The host
/// uses one set of codes for every call, so this is one enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// -1 `BAD_POINTER`: a range outside guest memory, or text that is not UTF-8.
    BadPointer,
    /// -2 `BAD_STATE`: not valid now (no request bound, headers already sent,
    /// unknown `wsi`, wrong mode). Also what every call returns off wasm32.
    BadState,
    /// -3 `NO_SPACE`: the destination buffer is too small, or the tx buffer is full.
    NoSpace,
    /// -4 `NOT_FOUND`: no such header or URL argument.
    NotFound,
    /// -5 `INVALID`: a value the protocol forbids (CR/LF in a header, a status
    /// outside 100..=999, body past `Content-Length`).
    Invalid,
    /// A negative code this SDK does not know (a newer host).
    Unknown(i32),
}

impl Error {
    /// The error for a host call's return value; `None` when it is not negative.
    pub const fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0.. => return None,
            abi::BAD_POINTER => Self::BadPointer,
            abi::BAD_STATE => Self::BadState,
            abi::NO_SPACE => Self::NoSpace,
            abi::NOT_FOUND => Self::NotFound,
            abi::INVALID => Self::Invalid,
            other => Self::Unknown(other),
        })
    }

    /// The host's code for this error.
    pub const fn code(self) -> i32 {
        match self {
            Self::BadPointer => abi::BAD_POINTER,
            Self::BadState => abi::BAD_STATE,
            Self::NoSpace => abi::NO_SPACE,
            Self::NotFound => abi::NOT_FOUND,
            Self::Invalid => abi::INVALID,
            Self::Unknown(code) => code,
        }
    }

    /// The ABI's name for the code (`"NO_SPACE"`...), `"UNKNOWN"` for [`Error::Unknown`].
    pub const fn name(self) -> &'static str {
        match self {
            Self::BadPointer => "BAD_POINTER",
            Self::BadState => "BAD_STATE",
            Self::NoSpace => "NO_SPACE",
            Self::NotFound => "NOT_FOUND",
            Self::Invalid => "INVALID",
            Self::Unknown(_) => "UNKNOWN",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host call failed: {} ({})", self.name(), self.code())
    }
}

impl core::error::Error for Error {}

/// A host call's return value as a `Result`: the non-negative value, or the error.
fn check(ret: i32) -> Result<u32, Error> {
    match Error::from_code(ret) {
        Some(err) => Err(err),
        None => Ok(ret as u32),
    }
}

/// A length the host reported, clamped to the buffer it wrote into.
fn copied(ret: i32, dst: &[u8]) -> Result<usize, Error> {
    check(ret).map(|n| (n as usize).min(dst.len()))
}

/// `lws_write`: sends `buf` (all or nothing) and returns its length. On a
/// WebSocket, `mode` is a message mode ([`WriteMode::TEXT`], `BINARY`,
/// `CONTINUATION`, `PING`, `PONG`, see [`lws_write_ws_flags`]); no `LWS_PRE`
/// room is needed.
///
/// # Errors
///
/// [`Error::NoSpace`] when the tx buffer cannot take `buf` now (ask for
/// `HTTP_WRITEABLE`, `SERVER_WRITEABLE` or `CLIENT_WRITEABLE` and try again), [`Error::BadState`]
/// before the headers are finalized or after the final piece, or with a mode the
/// connection does not speak, [`Error::Invalid`] past `Content-Length`.
pub fn lws_write(wsi: Wsi, buf: &[u8], mode: WriteMode) -> Result<usize, Error> {
    let (ptr, len) = abi::ptr_len(buf);
    check(abi::lws_write(wsi.0, ptr, len, mode.0)).map(|n| n as usize)
}

/// `lws_add_http_header_status`: starts the response head with `status`.
///
/// # Errors
///
/// [`Error::Invalid`] for a status outside 100..=999, [`Error::BadState`] when a
/// head was already started or no request is bound.
pub fn lws_add_http_header_status(wsi: Wsi, status: u32) -> Result<(), Error> {
    check(abi::lws_add_http_header_status(wsi.0, status as i32)).map(drop)
}

/// `lws_add_http_header_by_name`: adds `name: value` to the response head (a
/// trailing `:` on `name` is accepted).
///
/// # Errors
///
/// [`Error::Invalid`] for CR/LF or a framing header (`Content-Length`,
/// `Transfer-Encoding`, `Connection`), [`Error::BadState`] outside a head.
pub fn lws_add_http_header_by_name(wsi: Wsi, name: &str, value: &str) -> Result<(), Error> {
    let (name, name_len) = abi::ptr_len(name.as_bytes());
    let (value, value_len) = abi::ptr_len(value.as_bytes());
    check(abi::lws_add_http_header_by_name(
        wsi.0, name, name_len, value, value_len,
    ))
    .map(drop)
}

/// `lws_add_http_header_content_length`.
///
/// # Errors
///
/// [`Error::Invalid`] for a length over `i64::MAX`, [`Error::BadState`] outside a head.
pub fn lws_add_http_header_content_length(wsi: Wsi, content_length: u64) -> Result<(), Error> {
    let len = i64::try_from(content_length).map_err(|_| Error::Invalid)?;
    check(abi::lws_add_http_header_content_length(wsi.0, len)).map(drop)
}

/// `lws_add_http_common_headers`: status, `Content-Type`, and `Content-Length`
/// when `content_length` is `Some` (`None` is lws's `LWS_ILLEGAL_HTTP_CONTENT_LEN`:
/// chunked for HTTP/1.1 clients).
///
/// # Errors
///
/// As [`lws_add_http_header_status`] and [`lws_add_http_header_by_name`].
pub fn lws_add_http_common_headers(
    wsi: Wsi,
    status: u32,
    content_type: &str,
    content_length: Option<u64>,
) -> Result<(), Error> {
    let len = match content_length {
        Some(n) => i64::try_from(n).map_err(|_| Error::Invalid)?,
        None => -1,
    };
    let (ct, ct_len) = abi::ptr_len(content_type.as_bytes());
    check(abi::lws_add_http_common_headers(
        wsi.0,
        status as i32,
        ct,
        ct_len,
        len,
    ))
    .map(drop)
}

/// `lws_finalize_write_http_header`: ends the head; the body comes next.
///
/// # Errors
///
/// [`Error::BadState`] when no head was started.
pub fn lws_finalize_write_http_header(wsi: Wsi) -> Result<(), Error> {
    check(abi::lws_finalize_write_http_header(wsi.0)).map(drop)
}

/// `lws_return_http_status`: a whole response with a small HTML body naming
/// `status` and `html` (may be empty); the transaction is completed.
///
/// # Errors
///
/// [`Error::BadState`] when a response was already started, [`Error::Invalid`]
/// for a status outside 100..=999.
pub fn lws_return_http_status(wsi: Wsi, status: u32, html: &str) -> Result<(), Error> {
    let (html, html_len) = abi::ptr_len(html.as_bytes());
    check(abi::lws_return_http_status(
        wsi.0,
        status as i32,
        html,
        html_len,
    ))
    .map(drop)
}

/// `lws_callback_on_writable`: asks for a `*_WRITEABLE` callback when the tx
/// buffer has room.
///
/// # Errors
///
/// [`Error::BadState`] for an unknown or closing connection.
pub fn lws_callback_on_writable(wsi: Wsi) -> Result<(), Error> {
    check(abi::lws_callback_on_writable(wsi.0)).map(drop)
}

/// `lws_http_transaction_completed`: the response is done. `Ok(true)` means the
/// connection will close (lws code then returns -1 from the callback).
///
/// # Errors
///
/// [`Error::BadState`] when no transaction is bound.
pub fn lws_http_transaction_completed(wsi: Wsi) -> Result<bool, Error> {
    check(abi::lws_http_transaction_completed(wsi.0)).map(|n| n != 0)
}

/// `lws_http_get_uri_and_method`: the request's method, and the length of its
/// path, copied to the start of `dst`.
///
/// The ABI returns only the method, so the path's length is where the host's
/// copy ends: `dst` is zeroed first and the path runs to the first NUL (or the
/// end of `dst`).
///
/// # Errors
///
/// [`Error::NoSpace`] when the path does not fit `dst`, [`Error::BadState`] when
/// no request is bound.
pub fn lws_http_get_uri_and_method(wsi: Wsi, dst: &mut [u8]) -> Result<(Method, usize), Error> {
    dst.fill(0);
    let method = check(abi::get_uri_and_method(wsi.0, dst))?;
    let len = dst.iter().position(|&b| b == 0).unwrap_or(dst.len());
    Ok((Method::from_index(method as i32), len))
}

/// `lws_hdr_custom_length`: the length of request header `name` (any header,
/// case-insensitive; a trailing `:` is accepted).
///
/// # Errors
///
/// [`Error::NotFound`] when the request has no such header.
pub fn lws_hdr_custom_length(wsi: Wsi, name: &str) -> Result<usize, Error> {
    let (name, name_len) = abi::ptr_len(name.as_bytes());
    check(abi::lws_hdr_custom_length(wsi.0, name, name_len)).map(|n| n as usize)
}

/// `lws_hdr_custom_copy`: copies request header `name`'s value to `dst` and
/// returns its length.
///
/// # Errors
///
/// [`Error::NotFound`] when there is no such header, [`Error::NoSpace`] when it
/// does not fit `dst`.
pub fn lws_hdr_custom_copy(wsi: Wsi, dst: &mut [u8], name: &str) -> Result<usize, Error> {
    let ret = abi::hdr_custom_copy(wsi.0, dst, name.as_bytes());
    copied(ret, dst)
}

/// `lws_get_urlarg_by_name_safe`: copies the percent-decoded value of query
/// argument `name` (a trailing `=` is accepted) to `dst` and returns its length.
///
/// # Errors
///
/// [`Error::NotFound`] when there is no such argument, [`Error::NoSpace`] when it
/// does not fit `dst`.
pub fn lws_get_urlarg_by_name_safe(wsi: Wsi, name: &str, dst: &mut [u8]) -> Result<usize, Error> {
    let ret = abi::get_urlarg_by_name(wsi.0, name.as_bytes(), dst);
    copied(ret, dst)
}

/// `lws_get_peer_simple`: copies the peer's address as text to `dst` and returns
/// its length.
///
/// # Errors
///
/// [`Error::NoSpace`] when it does not fit `dst`, [`Error::BadState`] for an
/// unknown connection.
pub fn lws_get_peer_simple(wsi: Wsi, dst: &mut [u8]) -> Result<usize, Error> {
    let ret = abi::get_peer_simple(wsi.0, dst);
    copied(ret, dst)
}

/// `lws_is_ssl`: true when the connection is encrypted (HTTPS, WSS, or a
/// client connection made with [`LCCSCF_USE_SSL`]).
///
/// # Errors
///
/// [`Error::BadState`] outside the connection's own callback (and always off
/// wasm32).
pub fn lws_is_ssl(wsi: Wsi) -> Result<bool, Error> {
    check(abi::lws_is_ssl(wsi.0)).map(|n| n == 1)
}

/// `lws_now_usecs`: microseconds of the runtime's clock (0 off wasm32).
pub fn lws_now_usecs() -> i64 {
    abi::lws_now_usecs()
}

/// `_lws_log`: logs `msg` at `level` (see also the `lwsl_*!` macros).
///
/// # Errors
///
/// Whatever the host refuses; a `&str` is always in memory and UTF-8, so not
/// [`Error::BadPointer`].
pub fn lws_log(level: LogLevel, msg: &str) -> Result<(), Error> {
    let (msg, len) = abi::ptr_len(msg.as_bytes());
    check(abi::lws_log(level as i32, msg, len)).map(drop)
}

/// `lws_write_ws_flags`: the [`lws_write`] mode for one piece of an outgoing
/// WebSocket message: `initial` ([`WriteMode::TEXT`] or [`WriteMode::BINARY`])
/// for the first piece, [`WriteMode::CONTINUATION`] for the others, each with
/// [`WriteMode::NO_FIN`] unless it is the last.
///
/// ```
/// use wasmgate_guest::lws::{WriteMode, lws_write_ws_flags};
/// assert_eq!(lws_write_ws_flags(WriteMode::TEXT, true, true), WriteMode::TEXT);
/// assert_eq!(
///     lws_write_ws_flags(WriteMode::BINARY, false, false),
///     WriteMode::CONTINUATION | WriteMode::NO_FIN
/// );
/// ```
pub const fn lws_write_ws_flags(initial: WriteMode, is_start: bool, is_end: bool) -> WriteMode {
    let base = if is_start {
        initial
    } else {
        WriteMode::CONTINUATION
    };
    if is_end {
        base
    } else {
        WriteMode(base.0 | WriteMode::NO_FIN.0)
    }
}

/// `lws_is_first_fragment`: whether this `RECEIVE` piece starts a message.
///
/// # Errors
///
/// [`Error::BadState`] outside a WebSocket `RECEIVE` callback.
pub fn lws_is_first_fragment(wsi: Wsi) -> Result<bool, Error> {
    check(abi::lws_is_first_fragment(wsi.0)).map(|n| n != 0)
}

/// `lws_is_final_fragment`: whether this `RECEIVE` piece ends a message.
///
/// # Errors
///
/// [`Error::BadState`] outside a WebSocket `RECEIVE` callback.
pub fn lws_is_final_fragment(wsi: Wsi) -> Result<bool, Error> {
    check(abi::lws_is_final_fragment(wsi.0)).map(|n| n != 0)
}

/// `lws_frame_is_binary`: whether the message being received is binary.
///
/// # Errors
///
/// [`Error::BadState`] outside a WebSocket `RECEIVE` callback.
pub fn lws_frame_is_binary(wsi: Wsi) -> Result<bool, Error> {
    check(abi::lws_frame_is_binary(wsi.0)).map(|n| n != 0)
}

/// `lws_remaining_packet_payload`: bytes of the current frame still to come
/// after this `RECEIVE` piece.
///
/// # Errors
///
/// [`Error::BadState`] outside a WebSocket `RECEIVE` callback.
pub fn lws_remaining_packet_payload(wsi: Wsi) -> Result<usize, Error> {
    check(abi::lws_remaining_packet_payload(wsi.0)).map(|n| n as usize)
}

/// `lws_close_reason`: the close code and reason (UTF-8, at most 123 bytes)
/// sent when the callback then returns non-zero.
///
/// # Errors
///
/// [`Error::Invalid`] for a code a peer may not receive or a reason that is too
/// long, [`Error::BadPointer`] for a reason that is not UTF-8,
/// [`Error::BadState`] for a connection that is not a WebSocket.
pub fn lws_close_reason(wsi: Wsi, code: u16, reason: &[u8]) -> Result<(), Error> {
    let (reason, len) = abi::ptr_len(reason);
    check(abi::lws_close_reason(wsi.0, code.into(), reason, len)).map(drop)
}

/// `lws_rx_flow_control`: `false` stops `RECEIVE` callbacks (and reading the
/// socket) for this connection, `true` resumes them.
///
/// # Errors
///
/// [`Error::BadState`] for a connection that is not a WebSocket or is closing.
pub fn lws_rx_flow_control(wsi: Wsi, enable: bool) -> Result<(), Error> {
    check(abi::lws_rx_flow_control(wsi.0, enable.into())).map(drop)
}

/// `lws_callback_on_writable_all_protocol`: asks for `SERVER_WRITEABLE` on
/// every WebSocket connection of this protocol; returns how many were asked.
///
/// # Errors
///
/// Whatever the host refuses ([`Error::BadState`] off wasm32).
pub fn lws_callback_on_writable_all_protocol() -> Result<u32, Error> {
    check(abi::lws_callback_on_writable_all_protocol())
}

/// `lws_set_timer_usecs`: a [`Reason::Timer`] callback for `wsi` (with its
/// `user`) in `usecs` microseconds; `None` cancels the timer (lws's
/// `LWS_SET_TIMER_USEC_CANCEL`). A connection has one timer: setting it again
/// moves it, and it fires once (set it again from the callback to repeat). The
/// runtime fires a timer set for more than a day after a day.
///
/// ```
/// use wasmgate_guest::lws::{Wsi, lws_set_timer_usecs};
/// # let wsi = Wsi::from_raw(1);
/// let _ = lws_set_timer_usecs(wsi, Some(1_000_000)); // in one second
/// let _ = lws_set_timer_usecs(wsi, None); // not after all
/// ```
///
/// # Errors
///
/// [`Error::Invalid`] for more than `i64::MAX` microseconds, [`Error::BadState`]
/// for an unknown or closing connection (and always off wasm32).
pub fn lws_set_timer_usecs(wsi: Wsi, usecs: Option<u64>) -> Result<(), Error> {
    let usecs = match usecs {
        Some(n) => i64::try_from(n).map_err(|_| Error::Invalid)?,
        None => abi::LWS_SET_TIMER_USEC_CANCEL,
    };
    check(abi::lws_set_timer_usecs(wsi.0, usecs)).map(drop)
}

/// `LCCSCF_USE_SSL`: the [`ClientConnectInfo::ssl_connection`] flag for a
/// `wss://` connection. The server's certificate is checked against the CA
/// bundle of the device config (`[tls] ca`).
pub const LCCSCF_USE_SSL: u32 = 1 << 0;
/// `LCCSCF_ALLOW_SELFSIGNED`: with [`LCCSCF_USE_SSL`], also accept a server
/// certificate that signs itself (its dates and name are still checked). The
/// device logs a warning for each connection that uses it.
pub const LCCSCF_ALLOW_SELFSIGNED: u32 = 1 << 1;
/// `LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK`: with [`LCCSCF_USE_SSL`], accept a
/// certificate issued for another name (the chain is still checked). Logged
/// as a warning too.
pub const LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK: u32 = 1 << 2;

/// Where [`lws_client_connect_via_info`] connects, lws's `struct
/// lws_client_connect_info` with the fields the ABI keeps. An empty string
/// means "not given", as a `NULL` does in C; `Default` leaves everything
/// empty, so fill in what you need:
///
/// ```
/// use wasmgate_guest::lws::ClientConnectInfo;
///
/// let info = ClientConnectInfo {
///     address: "192.168.1.10",
///     port: 7681,
///     path: "/",
///     protocol: "lws-minimal", // Sec-WebSocket-Protocol
///     ..Default::default()
/// };
/// assert_eq!(info.host, ""); // the runtime sends `192.168.1.10:7681`
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClientConnectInfo<'a> {
    /// Host name or IP address to connect to (required).
    pub address: &'a str,
    /// TCP port (required, not 0).
    pub port: u16,
    /// Request path with its query, e.g. `/` or `/runCase?case=1` (empty: `/`).
    pub path: &'a str,
    /// `Host` header (empty: `address:port`).
    pub host: &'a str,
    /// `Origin` header (empty: none).
    pub origin: &'a str,
    /// `Sec-WebSocket-Protocol` to ask the server for (empty: none).
    pub protocol: &'a str,
    /// `LCCSCF_*` flags; 0 for a plain `ws://` connection.
    pub ssl_connection: u32,
    /// The device protocol whose guest gets the connection's callbacks (lws's
    /// `local_protocol_name`; empty: the caller's own).
    pub local_protocol: &'a str,
}

impl<'a> ClientConnectInfo<'a> {
    /// A plain connection to `address:port` asking for `path`, every other
    /// field empty.
    pub const fn new(address: &'a str, port: u16, path: &'a str) -> Self {
        Self {
            address,
            port,
            path,
            host: "",
            origin: "",
            protocol: "",
            ssl_connection: 0,
            local_protocol: "",
        }
    }

    /// The ABI struct, pointing into the strings `self` borrows: valid only
    /// while they are.
    fn to_raw(self) -> abi::RawClientConnectInfo {
        let text = |s: &str| {
            let (ptr, len) = abi::ptr_len(s.as_bytes());
            (ptr as u32, len as u32)
        };
        let (address, address_len) = text(self.address);
        let (path, path_len) = text(self.path);
        let (host, host_len) = text(self.host);
        let (origin, origin_len) = text(self.origin);
        let (protocol, protocol_len) = text(self.protocol);
        let (local_protocol, local_protocol_len) = text(self.local_protocol);
        abi::RawClientConnectInfo {
            address,
            address_len,
            port: self.port.into(),
            path,
            path_len,
            host,
            host_len,
            origin,
            origin_len,
            protocol,
            protocol_len,
            ssl_connection: self.ssl_connection,
            local_protocol,
            local_protocol_len,
        }
    }
}

/// `lws_client_connect_via_info`: opens a WebSocket client connection and
/// returns its `wsi` at once. The connection then progresses on its own; its
/// outcome comes as callbacks to the local protocol (the caller's unless
/// [`ClientConnectInfo::local_protocol`] names another), with a fresh
/// per-session slot: [`Reason::ClientEstablished`] or
/// [`Reason::ClientConnectionError`] (its `in` says why) first, then
/// `CLIENT_RECEIVE`, `CLIENT_WRITEABLE`... and [`Reason::ClientClosed`] last.
/// Call it from a connection's callback (any one, even the `CLIENT_CLOSED` of
/// the connection it replaces), not from `PROTOCOL_INIT`.
///
/// # Errors
///
/// [`Error::Invalid`] for a missing address, port 0, a string the runtime
/// refuses, or `ssl_connection` flags other than the three above (or an
/// escape hatch without [`LCCSCF_USE_SSL`], or TLS on a runtime built
/// without it); [`Error::NotFound`] when no device protocol
/// is called `local_protocol`; [`Error::NoSpace`] when the device has no free
/// connection (one callback can open only a couple); [`Error::BadState`]
/// outside a connection's callback (and always off wasm32).
pub fn lws_client_connect_via_info(info: &ClientConnectInfo<'_>) -> Result<Wsi, Error> {
    // `raw` lives on the stack, in linear memory, until the call returns; the
    // strings it points to are borrowed by `info` for as long.
    let raw = info.to_raw();
    connected_wsi(abi::client_connect_via_info(&raw))
}

/// The `wsi` `lws_client_connect_via_info` returned, or its error. A host that
/// answers 0 made no connection: that is [`Error::BadState`].
fn connected_wsi(ret: i32) -> Result<Wsi, Error> {
    match check(ret)? {
        0 => Err(Error::BadState),
        _ => Ok(Wsi(ret)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_number_round_trips() {
        for raw in -300..=300 {
            assert_eq!(Reason::from_raw(raw).raw(), raw);
        }
        assert_eq!(Reason::from_raw(i32::MIN).raw(), i32::MIN);
    }

    #[test]
    fn reasons_keep_lws_numbers() {
        let table = [
            (Reason::Established, 0),
            (Reason::ClientConnectionError, 1),
            (Reason::ClientEstablished, 3),
            (Reason::Closed, 4),
            (Reason::ClosedHttp, 5),
            (Reason::Receive, 6),
            (Reason::ReceivePong, 7),
            (Reason::ClientReceive, 8),
            (Reason::ClientReceivePong, 9),
            (Reason::ClientWriteable, 10),
            (Reason::ServerWriteable, 11),
            (Reason::Http, 12),
            (Reason::HttpBody, 13),
            (Reason::HttpBodyCompletion, 14),
            (Reason::HttpWriteable, 16),
            (Reason::FilterProtocolConnection, 20),
            (Reason::ProtocolInit, 27),
            (Reason::ProtocolDestroy, 28),
            (Reason::WsPeerInitiatedClose, 38),
            (Reason::HttpBindProtocol, 49),
            (Reason::HttpDropProtocol, 50),
            (Reason::Timer, 73),
            (Reason::ClientClosed, 75),
            (Reason::HttpConfirmUpgrade, 86),
        ];
        for (reason, raw) in table {
            assert_eq!(reason.raw(), raw, "{reason:?}");
            assert_eq!(Reason::from_raw(raw), reason);
        }
        assert_eq!(Reason::from_raw(15), Reason::Other(15));
    }

    #[test]
    fn error_codes_map_both_ways() {
        let table = [
            (Error::BadPointer, -1),
            (Error::BadState, -2),
            (Error::NoSpace, -3),
            (Error::NotFound, -4),
            (Error::Invalid, -5),
            (Error::Unknown(-99), -99),
        ];
        for (err, code) in table {
            assert_eq!(Error::from_code(code), Some(err));
            assert_eq!(err.code(), code);
        }
        assert_eq!(Error::from_code(0), None);
        assert_eq!(Error::from_code(12), None);
        assert_eq!(check(-3), Err(Error::NoSpace));
        assert_eq!(check(5), Ok(5));
    }

    #[test]
    fn copied_lengths_never_exceed_the_buffer() {
        assert_eq!(copied(10, &[0; 4]), Ok(4));
        assert_eq!(copied(3, &[0; 4]), Ok(3));
        assert_eq!(copied(-4, &[0; 4]), Err(Error::NotFound));
    }

    #[test]
    fn write_modes_keep_lws_numbers() {
        assert_eq!(WriteMode::TEXT.raw(), 0);
        assert_eq!(WriteMode::BINARY.raw(), 1);
        assert_eq!(WriteMode::CONTINUATION.raw(), 2);
        assert_eq!(WriteMode::HTTP.raw(), 3);
        assert_eq!(WriteMode::PING.raw(), 5);
        assert_eq!(WriteMode::PONG.raw(), 6);
        assert_eq!(WriteMode::HTTP_FINAL.raw(), 7);
        assert_eq!((WriteMode::BINARY | WriteMode::NO_FIN).raw(), 0x41);
    }

    #[test]
    fn method_indices_follow_lws() {
        let names = [
            "GET", "POST", "OPTIONS", "PUT", "PATCH", "DELETE", "CONNECT", "HEAD", "OTHER",
        ];
        for (index, name) in names.iter().enumerate() {
            assert_eq!(Method::from_index(index as i32).as_str(), *name);
        }
        assert_eq!(Method::from_index(-1), Method::Other);
    }

    #[test]
    fn off_wasm_every_call_is_bad_state() {
        let wsi = Wsi::from_raw(1);
        assert_eq!(lws_write(wsi, b"x", WriteMode::HTTP), Err(Error::BadState));
        assert_eq!(
            lws_http_get_uri_and_method(wsi, &mut [0; 8]),
            Err(Error::BadState)
        );
        assert_eq!(lws_now_usecs(), 0);
        assert_eq!(lws_is_first_fragment(wsi), Err(Error::BadState));
        assert_eq!(lws_rx_flow_control(wsi, false), Err(Error::BadState));
        assert_eq!(lws_close_reason(wsi, 1000, b"bye"), Err(Error::BadState));
        assert_eq!(
            lws_callback_on_writable_all_protocol(),
            Err(Error::BadState)
        );
        assert_eq!(lws_set_timer_usecs(wsi, Some(1_000)), Err(Error::BadState));
        assert_eq!(lws_set_timer_usecs(wsi, None), Err(Error::BadState));
        assert_eq!(
            lws_client_connect_via_info(&ClientConnectInfo::new("127.0.0.1", 80, "/")),
            Err(Error::BadState)
        );
    }

    #[test]
    fn client_connect_info_fills_every_abi_field() {
        let info = ClientConnectInfo {
            address: "example.org",
            port: 7681,
            path: "/runCase?case=12&agent=x",
            host: "example.org:7681",
            origin: "http://me",
            protocol: "lws-minimal",
            ssl_connection: LCCSCF_USE_SSL,
            local_protocol: "other",
        };
        let raw = info.to_raw();
        let at = |s: &str| abi::ptr_len(s.as_bytes()).0 as u32;
        assert_eq!((raw.address, raw.address_len), (at(info.address), 11));
        assert_eq!(raw.port, 7681);
        assert_eq!((raw.path, raw.path_len), (at(info.path), 24));
        assert_eq!((raw.host, raw.host_len), (at(info.host), 16));
        assert_eq!((raw.origin, raw.origin_len), (at(info.origin), 9));
        assert_eq!((raw.protocol, raw.protocol_len), (at(info.protocol), 11));
        assert_eq!(raw.ssl_connection, 1);
        assert_eq!(
            (raw.local_protocol, raw.local_protocol_len),
            (at(info.local_protocol), 5)
        );
    }

    #[test]
    fn client_connect_info_leaves_what_is_not_given_empty() {
        let raw = ClientConnectInfo::new("10.0.0.2", 9001, "/getCaseCount").to_raw();
        assert_eq!(raw.address_len, 8);
        assert_eq!(raw.port, 9001);
        assert_eq!(raw.path_len, 13);
        assert_eq!(
            [
                raw.host_len,
                raw.origin_len,
                raw.protocol_len,
                raw.ssl_connection,
                raw.local_protocol_len
            ],
            [0; 5]
        );
        assert_eq!(ClientConnectInfo::default().to_raw().port, 0);
        assert_eq!(ClientConnectInfo::default().to_raw().address_len, 0);
    }

    #[test]
    fn a_connect_answer_is_a_wsi_or_an_error() {
        assert_eq!(connected_wsi(17), Ok(Wsi::from_raw(17)));
        assert_eq!(connected_wsi(-3), Err(Error::NoSpace));
        assert_eq!(connected_wsi(-4), Err(Error::NotFound));
        assert_eq!(connected_wsi(0), Err(Error::BadState), "no connection");
    }

    #[test]
    fn a_timer_too_far_away_is_invalid() {
        let wsi = Wsi::from_raw(1);
        assert_eq!(
            lws_set_timer_usecs(wsi, Some(u64::MAX)),
            Err(Error::Invalid)
        );
        assert_eq!(abi::LWS_SET_TIMER_USEC_CANCEL, -1);
    }

    #[test]
    fn ws_flags_follow_lws_write_ws_flags() {
        use WriteMode as M;
        let table = [
            // (initial, is_start, is_end) -> mode, as lws's inline helper computes it
            ((M::TEXT, true, true), M::TEXT),
            ((M::TEXT, true, false), M::TEXT | M::NO_FIN),
            ((M::BINARY, true, true), M::BINARY),
            ((M::BINARY, true, false), M::BINARY | M::NO_FIN),
            ((M::TEXT, false, false), M::CONTINUATION | M::NO_FIN),
            ((M::BINARY, false, true), M::CONTINUATION),
        ];
        for ((initial, start, end), mode) in table {
            assert_eq!(lws_write_ws_flags(initial, start, end), mode);
        }
        assert_eq!((M::TEXT | M::NO_FIN).raw(), 0x40);
        assert_eq!((M::CONTINUATION | M::NO_FIN).raw(), 0x42);
    }
}
