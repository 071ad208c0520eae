//! Logging through the host's `lws_log`: [`LogLevel`] with lws's `LLL_*` bits,
//! one function per level, the `lwsl_*!` macros that format into a
//! [`FmtBuf`] on the stack (no allocator), and [`Lossy`] to print request bytes.

use core::fmt::{self, Write};

use crate::abi;
use crate::lws::lws_log;

/// A log level, lws's `LLL_*` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum LogLevel {
    /// `LLL_ERR`.
    Err = 1,
    /// `LLL_WARN`.
    Warn = 2,
    /// `LLL_NOTICE`.
    Notice = 4,
    /// `LLL_INFO`.
    Info = 8,
    /// `LLL_DEBUG`.
    Debug = 16,
    /// `LLL_USER`: what the lws examples print with `lwsl_user`.
    User = 1024,
}

/// Capacity of the buffer the `lwsl_*!` macros format into; longer messages are cut.
pub const LOG_LINE_MAX: usize = 256;

/// Logs `msg` at `level`. Logging is best effort, as `lwsl_*` is: a refused
/// message is dropped.
pub fn log(level: LogLevel, msg: &str) {
    let _ = lws_log(level, msg);
}

/// Logs `msg` at `LLL_ERR`.
pub fn err(msg: &str) {
    log(LogLevel::Err, msg);
}

/// Logs `msg` at `LLL_WARN`.
pub fn warn(msg: &str) {
    log(LogLevel::Warn, msg);
}

/// Logs `msg` at `LLL_NOTICE`.
pub fn notice(msg: &str) {
    log(LogLevel::Notice, msg);
}

/// Logs `msg` at `LLL_INFO`.
pub fn info(msg: &str) {
    log(LogLevel::Info, msg);
}

/// Logs `msg` at `LLL_DEBUG`.
pub fn debug(msg: &str) {
    log(LogLevel::Debug, msg);
}

/// Logs `msg` at `LLL_USER`.
pub fn user(msg: &str) {
    log(LogLevel::User, msg);
}

/// Formats `args` into a [`LOG_LINE_MAX`]-byte buffer (cut at a character
/// boundary) and logs it at `level`. What the `lwsl_*!` macros call.
pub fn log_fmt(level: LogLevel, args: fmt::Arguments<'_>) {
    if let Some(msg) = args.as_str() {
        return log(level, msg);
    }
    let mut line = FmtBuf::<LOG_LINE_MAX>::new();
    // A full buffer stops formatting early; the cut line is still worth logging.
    let _ = line.write_fmt(args);
    line.log(level);
}

/// `lwsl_err!("fmt", args...)`: formats (see [`log_fmt`]) and logs at `LLL_ERR`.
#[macro_export]
macro_rules! lwsl_err {
    ($($arg:tt)*) => { $crate::log::log_fmt($crate::log::LogLevel::Err, format_args!($($arg)*)) };
}

/// `lwsl_warn!("fmt", args...)`: formats and logs at `LLL_WARN`.
#[macro_export]
macro_rules! lwsl_warn {
    ($($arg:tt)*) => { $crate::log::log_fmt($crate::log::LogLevel::Warn, format_args!($($arg)*)) };
}

/// `lwsl_notice!("fmt", args...)`: formats and logs at `LLL_NOTICE`.
#[macro_export]
macro_rules! lwsl_notice {
    ($($arg:tt)*) => { $crate::log::log_fmt($crate::log::LogLevel::Notice, format_args!($($arg)*)) };
}

/// `lwsl_info!("fmt", args...)`: formats and logs at `LLL_INFO`.
#[macro_export]
macro_rules! lwsl_info {
    ($($arg:tt)*) => { $crate::log::log_fmt($crate::log::LogLevel::Info, format_args!($($arg)*)) };
}

/// `lwsl_debug!("fmt", args...)`: formats and logs at `LLL_DEBUG`.
#[macro_export]
macro_rules! lwsl_debug {
    ($($arg:tt)*) => { $crate::log::log_fmt($crate::log::LogLevel::Debug, format_args!($($arg)*)) };
}

/// `lwsl_user!("fmt", args...)`: formats and logs at `LLL_USER`.
///
/// ```
/// let n = 42;
/// wasmgate_guest::lwsl_user!("HTTP_BODY: {} bytes", n);
/// ```
#[macro_export]
macro_rules! lwsl_user {
    ($($arg:tt)*) => { $crate::log::log_fmt($crate::log::LogLevel::User, format_args!($($arg)*)) };
}

/// A fixed-capacity text buffer on the stack, for `write!` without an allocator.
/// Text that does not fit is cut at a character boundary (the content is always
/// valid UTF-8), and from then on writes return `Err`, which stops formatting.
///
/// ```
/// use core::fmt::Write;
/// let mut buf = wasmgate_guest::FmtBuf::<16>::new();
/// let _ = write!(buf, "{{\"requests\": {}}}", 12);
/// assert_eq!(buf.as_str(), "{\"requests\": 12}");
/// ```
///
/// Nothing in it can panic (no slice indexing), so a guest that only uses
/// `push_str`, `push_u32` and `as_bytes` carries no panic or formatting code.
#[derive(Clone, PartialEq, Eq)]
pub struct FmtBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> FmtBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        // Only whole characters of `&str`s are ever copied in, so this never fails.
        core::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The text written so far, as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    /// Whether some text did not fit.
    pub const fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Empties the buffer.
    pub fn clear(&mut self) {
        self.len = 0;
        self.truncated = false;
    }

    /// Appends as much of `s` as fits, cut at a character boundary; `false` when
    /// some of it did not fit (or an earlier write was cut).
    pub fn push_str(&mut self, s: &str) -> bool {
        if self.truncated {
            return false;
        }
        let room = N - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        // Both ranges are `take` long when they exist: one `memory.copy` in
        // the guest, and no panic path.
        if let (Some(dst), Some(src)) = (
            self.buf.get_mut(self.len..self.len + take),
            s.as_bytes().get(..take),
        ) {
            dst.copy_from_slice(src);
        }
        self.len += take;
        self.truncated = take < s.len();
        !self.truncated
    }

    /// Logs the text at `level`, best effort. Skips [`FmtBuf::as_str`]'s UTF-8
    /// check (the content is UTF-8 by construction, and the host checks again),
    /// which keeps `core::str::from_utf8` out of guests that only log.
    pub(crate) fn log(&self, level: LogLevel) {
        let (msg, len) = abi::ptr_len(self.as_bytes());
        let _ = abi::lws_log(level as i32, msg, len);
    }

    /// Appends `n` in decimal without `core::fmt`, for guests that never format
    /// and so do not carry the formatting code; `false` as for [`FmtBuf::push_str`].
    pub fn push_u32(&mut self, n: u32) -> bool {
        let digits = n.checked_ilog10().unwrap_or(0) as usize + 1;
        if self.truncated || N - self.len < digits {
            self.truncated = true;
            return false;
        }
        let mut rest = n;
        let room = self
            .buf
            .get_mut(self.len..self.len + digits)
            .unwrap_or_default();
        for slot in room.iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        self.len += digits;
        true
    }
}

impl<const N: usize> Default for FmtBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Write for FmtBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.push_str(s) {
            Ok(())
        } else {
            Err(fmt::Error)
        }
    }
}

impl<const N: usize> fmt::Debug for FmtBuf<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FmtBuf")
            .field("text", &self.as_str())
            .field("truncated", &self.truncated)
            .finish()
    }
}

/// Displays bytes as text: valid UTF-8 as is, each invalid sequence as U+FFFD.
/// For logging request data (`lwsl_user!("{}", Lossy(chunk))`).
#[derive(Debug, Clone, Copy)]
pub struct Lossy<'a>(pub &'a [u8]);

impl fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_char(char::REPLACEMENT_CHARACTER)?;
            }
        }
        Ok(())
    }
}

/// Logs a panic at `LLL_ERR` as `panicked at FILE:LINE: MESSAGE`. Only a message
/// without arguments is included: formatting one would pull `core::fmt` into
/// every guest, whatever else it uses.
#[cfg(all(feature = "panic-handler", target_arch = "wasm32"))]
pub(crate) fn log_panic(info: &core::panic::PanicInfo<'_>) {
    let mut line = FmtBuf::<LOG_LINE_MAX>::new();
    line.push_str("panicked");
    if let Some(location) = info.location() {
        line.push_str(" at ");
        line.push_str(location.file());
        line.push_str(":");
        line.push_u32(location.line());
    }
    if let Some(msg) = info.message().as_str() {
        line.push_str(": ");
        line.push_str(msg);
    }
    line.log(LogLevel::Err);
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::string::ToString;

    #[test]
    fn fmt_buf_cuts_at_capacity_and_stops() {
        let mut buf = FmtBuf::<8>::new();
        assert!(write!(buf, "{}", 1234).is_ok());
        assert!(write!(buf, "56789").is_err());
        assert_eq!(buf.as_str(), "12345678");
        assert!(buf.is_truncated());
        assert!(write!(buf, "x").is_err(), "a cut buffer takes nothing more");
        assert_eq!(buf.as_str(), "12345678");
    }

    #[test]
    fn fmt_buf_cuts_at_a_character_boundary() {
        let mut buf = FmtBuf::<5>::new();
        assert!(!buf.push_str("aé€")); // 1 + 2 + 3 bytes
        assert_eq!(buf.as_str(), "aé");
        assert_eq!(buf.as_bytes().len(), 3);
    }

    #[test]
    fn fmt_buf_clear_starts_over() {
        let mut buf = FmtBuf::<4>::new();
        buf.push_str("toolong");
        buf.clear();
        assert!(buf.push_str("ok"));
        assert_eq!(buf.as_str(), "ok");
        assert!(!buf.is_truncated());
    }

    #[test]
    fn push_u32_writes_decimal() {
        let mut buf = FmtBuf::<32>::new();
        for n in [0, 7, 10, 4_294_967_295] {
            buf.clear();
            buf.push_u32(n);
            assert_eq!(buf.as_str(), n.to_string());
        }
    }

    #[test]
    fn a_log_line_holds_256_bytes() {
        let long = "x".repeat(300);
        let mut line = FmtBuf::<LOG_LINE_MAX>::new();
        let _ = write!(line, "got {long}");
        assert_eq!(line.as_str().len(), 256);
        assert!(line.as_str().starts_with("got xxx"));
    }

    #[test]
    fn lossy_replaces_invalid_sequences() {
        assert_eq!(Lossy(b"ok \xff\xfe!").to_string(), "ok \u{fffd}\u{fffd}!");
        assert_eq!(Lossy("héllo".as_bytes()).to_string(), "héllo");
        assert_eq!(Lossy(&"é".as_bytes()[..1]).to_string(), "\u{fffd}");
    }
}
