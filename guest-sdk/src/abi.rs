//! The raw guest ABI v1 (`docs/abi.md`): the `lws` host imports, the 32-byte
//! protocol descriptor, the statics a guest shares with the host (receive buffer,
//! per-session region, [`GuestCell`]) and the glue the export macros call.
//! The only module of the SDK with `unsafe`; of HTTP and WebSocket it knows only
//! which events hand a guest a fresh session slot.
#![allow(unsafe_code)] // reason: host imports and memory shared with the host; every block says why it is sound

use core::cell::{Cell, UnsafeCell};
use core::fmt;
use core::mem::{MaybeUninit, size_of};

use crate::lws::{Reason, Wsi};

/// The guest ABI version this SDK speaks (the descriptor's `abi_version`).
pub const ABI_VERSION: u32 = 1;
/// The smallest `rx_buffer_size` the host accepts.
pub const MIN_RX_BUFFER_SIZE: usize = 128;

/// Host-call result: a ptr, len range outside guest memory, or text that is not UTF-8.
pub const BAD_POINTER: i32 = -1;
/// Host-call result: not valid now (no request bound, headers already sent, unknown `wsi`).
pub const BAD_STATE: i32 = -2;
/// Host-call result: the destination buffer is too small, or the tx buffer is full.
pub const NO_SPACE: i32 = -3;
/// Host-call result: no such header or URL argument.
pub const NOT_FOUND: i32 = -4;
/// Host-call result: a value the protocol forbids.
pub const INVALID: i32 = -5;

/// `wasmgate_fragment` bit: the `RECEIVE` piece starts a message.
pub const FRAGMENT_FIRST: i64 = 1;
/// `wasmgate_fragment` bit: the piece ends the message.
pub const FRAGMENT_FINAL: i64 = 2;
/// `wasmgate_fragment` bit: the message is binary.
pub const FRAGMENT_BINARY: i64 = 4;
/// `wasmgate_fragment` bit: bytes from the peer are buffered behind the
/// piece, so `wasmgate_receive_next` may hand over the next one in the same
/// callback (it may still find none).
pub const FRAGMENT_MORE: i64 = 8;
/// `wasmgate_fragment`: the bytes of the frame still to come start at this bit.
pub const FRAGMENT_REMAINING_SHIFT: u32 = 8;
/// Set in the fragment cell's word when a host wrote it (the cell that
/// the `wasmgate_fragment_cell` export of `export_ws!` and
/// `export_lws_callback!` names; `docs/abi.md`, "The
/// fragment cell"); `wasmgate_fragment` never answers with it.
pub const FRAGMENT_PRESENT: i64 = 0x80;

/// The fragment cell: a host that knows its address (the
/// `wasmgate_fragment_cell` export, emitted by [`export_ws!`](crate::export_ws)
/// and [`export_lws_callback!`](crate::export_lws_callback))
/// writes what `wasmgate_fragment` would answer, with [`FRAGMENT_PRESENT`],
/// before every `RECEIVE` and `CLIENT_RECEIVE` callback, which then needs no
/// host call to learn where its piece sits. It reads 0 under a host that does
/// not write it.
#[cfg(target_arch = "wasm32")]
pub(crate) static FRAGMENT_CELL: GuestCell<i64> = GuestCell::new(0);

/// The fragment cell's address, which the `wasmgate_fragment_cell` export
/// answers. Not public API.
#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub fn fragment_cell() -> i32 {
    offset(FRAGMENT_CELL.as_ptr())
}

/// `lws_set_timer_usecs`'s `usecs` that cancels the connection's timer (lws's
/// `LWS_SET_TIMER_USEC_CANCEL`; any negative value does).
pub const LWS_SET_TIMER_USEC_CANCEL: i64 = -1;

// The imports, exactly as `docs/abi.md` lists them: every pointer and length is an
// `i32` offset into this module's memory. The host checks every range and never
// traps on a bad one, so the imports that only *read* guest memory (or take no
// pointer) are declared `safe`: no argument value can make them break this
// module's memory. The four that *write* into a destination range stay `unsafe`.
#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "lws")]
unsafe extern "C" {
    /// `lws_write(wsi, buf, len, mode)`: `len` or an error; the host reads `buf`.
    pub safe fn lws_write(wsi: i32, buf: i32, len: i32, mode: i32) -> i32;
    /// `lws_add_http_header_status(wsi, status)`: 0 or an error.
    pub safe fn lws_add_http_header_status(wsi: i32, status: i32) -> i32;
    /// `lws_add_http_header_by_name(wsi, name, name_len, value, value_len)`: 0 or an error.
    pub safe fn lws_add_http_header_by_name(
        wsi: i32,
        name: i32,
        name_len: i32,
        value: i32,
        value_len: i32,
    ) -> i32;
    /// `lws_add_http_header_content_length(wsi, content_length)`: 0 or an error.
    pub safe fn lws_add_http_header_content_length(wsi: i32, content_length: i64) -> i32;
    /// `lws_add_http_common_headers(wsi, status, content_type, ct_len, content_length)`;
    /// `content_length` -1 means unknown (chunked).
    pub safe fn lws_add_http_common_headers(
        wsi: i32,
        status: i32,
        content_type: i32,
        ct_len: i32,
        content_length: i64,
    ) -> i32;
    /// `lws_finalize_write_http_header(wsi)`: 0 or an error.
    pub safe fn lws_finalize_write_http_header(wsi: i32) -> i32;
    /// `lws_return_http_status(wsi, status, html, html_len)`: a whole response, transaction completed.
    pub safe fn lws_return_http_status(wsi: i32, status: i32, html: i32, html_len: i32) -> i32;
    /// `lws_callback_on_writable(wsi)`: 1 or an error.
    pub safe fn lws_callback_on_writable(wsi: i32) -> i32;
    /// `lws_http_transaction_completed(wsi)`: 0 keep going, 1 the connection will close.
    pub safe fn lws_http_transaction_completed(wsi: i32) -> i32;
    /// `lws_http_get_uri_and_method(wsi, dst, dst_len)`: the method index; the
    /// path is copied to `dst`.
    ///
    /// # Safety
    ///
    /// The host writes into `dst..dst + dst_len`: that range must be memory the
    /// caller owns exclusively (e.g. from a `&mut [u8]`).
    pub unsafe fn lws_http_get_uri_and_method(wsi: i32, dst: i32, dst_len: i32) -> i32;
    /// `lws_hdr_custom_length(wsi, name, name_len)`: the value's length or an error.
    pub safe fn lws_hdr_custom_length(wsi: i32, name: i32, name_len: i32) -> i32;
    /// `lws_hdr_custom_copy(wsi, dst, dst_len, name, name_len)`: the value's length or an error.
    ///
    /// # Safety
    ///
    /// As for [`lws_http_get_uri_and_method`]: `dst` must be exclusively owned.
    pub unsafe fn lws_hdr_custom_copy(
        wsi: i32,
        dst: i32,
        dst_len: i32,
        name: i32,
        name_len: i32,
    ) -> i32;
    /// `lws_get_urlarg_by_name_safe(wsi, name, name_len, dst, dst_len)`: the decoded
    /// value's length or an error.
    ///
    /// # Safety
    ///
    /// As for [`lws_http_get_uri_and_method`]: `dst` must be exclusively owned.
    pub unsafe fn lws_get_urlarg_by_name_safe(
        wsi: i32,
        name: i32,
        name_len: i32,
        dst: i32,
        dst_len: i32,
    ) -> i32;
    /// `lws_get_peer_simple(wsi, dst, dst_len)`: the length of the peer's address text.
    ///
    /// # Safety
    ///
    /// As for [`lws_http_get_uri_and_method`]: `dst` must be exclusively owned.
    pub unsafe fn lws_get_peer_simple(wsi: i32, dst: i32, dst_len: i32) -> i32;
    /// `lws_is_ssl(wsi)`: 1 for a TLS connection, 0 for a plain one.
    pub safe fn lws_is_ssl(wsi: i32) -> i32;
    /// `lws_now_usecs()`: microseconds of the runtime's clock.
    pub safe fn lws_now_usecs() -> i64;
    /// `lws_log(level, msg, len)`: 0 or an error.
    pub safe fn lws_log(level: i32, msg: i32, len: i32) -> i32;
    /// `lws_is_first_fragment(wsi)`: 1 if this `RECEIVE` piece starts a message.
    pub safe fn lws_is_first_fragment(wsi: i32) -> i32;
    /// `lws_is_final_fragment(wsi)`: 1 if this `RECEIVE` piece ends a message.
    pub safe fn lws_is_final_fragment(wsi: i32) -> i32;
    /// `lws_frame_is_binary(wsi)`: 1 for a binary message.
    pub safe fn lws_frame_is_binary(wsi: i32) -> i32;
    /// `lws_remaining_packet_payload(wsi)`: bytes of the current frame still to come.
    pub safe fn lws_remaining_packet_payload(wsi: i32) -> i32;
    /// `wasmgate_fragment(wsi)`, a wasmgate extension: the four queries above
    /// in one call, as [`FRAGMENT_FIRST`] | [`FRAGMENT_FINAL`] |
    /// [`FRAGMENT_BINARY`] with the remaining bytes from bit
    /// [`FRAGMENT_REMAINING_SHIFT`] on; negative, an error, as theirs.
    pub safe fn wasmgate_fragment(wsi: i32) -> i64;
    /// `wasmgate_receive_next(wsi)`, a wasmgate extension: during a `RECEIVE`
    /// (or `CLIENT_RECEIVE`) callback, the connection's next piece if it is
    /// already buffered, written at the start of the receive buffer, its
    /// fragment word in the fragment cell; its length, or [`NOT_FOUND`] when
    /// none is ready now. Each piece is a callback of its own.
    ///
    /// # Safety
    ///
    /// The host writes the receive buffer and the fragment cell: no reference
    /// to either may be live across the call.
    pub unsafe fn wasmgate_receive_next(wsi: i32) -> i32;
    /// `lws_close_reason(wsi, code, reason, len)`: 0 or an error; the host reads `reason`.
    pub safe fn lws_close_reason(wsi: i32, code: i32, reason: i32, len: i32) -> i32;
    /// `lws_rx_flow_control(wsi, enable)`: 0 or an error.
    pub safe fn lws_rx_flow_control(wsi: i32, enable: i32) -> i32;
    /// `lws_callback_on_writable_all_protocol()`: the number of connections asked.
    pub safe fn lws_callback_on_writable_all_protocol() -> i32;
    /// `lws_set_timer_usecs(wsi, usecs)`: 0 or an error. `LWS_CALLBACK_TIMER` comes
    /// for `wsi` after `usecs`; one timer per connection, setting it again moves
    /// it, and a negative `usecs` ([`LWS_SET_TIMER_USEC_CANCEL`]) cancels it.
    pub safe fn lws_set_timer_usecs(wsi: i32, usecs: i64) -> i32;
    /// `lws_client_connect_via_info(info)`: the new client connection's `wsi`
    /// (> 0) or an error. The host reads the 56-byte [`RawClientConnectInfo`]
    /// at `info` and the strings it points to; it writes nothing.
    pub safe fn lws_client_connect_via_info(info: i32) -> i32;
}

#[cfg(not(target_arch = "wasm32"))]
pub use host_stubs::*;

/// Stand-ins for the imports on targets that are not wasm32, so the SDK (and a
/// guest's pure logic) builds and unit-tests on the host: every call answers
/// [`BAD_STATE`] and the clock reads 0.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::missing_safety_doc)] // reason: same contracts as the wasm32 imports above
mod host_stubs {
    use super::BAD_STATE;

    pub fn lws_write(_wsi: i32, _buf: i32, _len: i32, _mode: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_add_http_header_status(_wsi: i32, _status: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_add_http_header_by_name(_wsi: i32, _n: i32, _nl: i32, _v: i32, _vl: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_add_http_header_content_length(_wsi: i32, _content_length: i64) -> i32 {
        BAD_STATE
    }
    pub fn lws_add_http_common_headers(_wsi: i32, _s: i32, _ct: i32, _ctl: i32, _cl: i64) -> i32 {
        BAD_STATE
    }
    pub fn lws_finalize_write_http_header(_wsi: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_return_http_status(_wsi: i32, _status: i32, _html: i32, _len: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_callback_on_writable(_wsi: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_http_transaction_completed(_wsi: i32) -> i32 {
        BAD_STATE
    }
    pub unsafe fn lws_http_get_uri_and_method(_wsi: i32, _dst: i32, _dst_len: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_hdr_custom_length(_wsi: i32, _name: i32, _name_len: i32) -> i32 {
        BAD_STATE
    }
    pub unsafe fn lws_hdr_custom_copy(_wsi: i32, _d: i32, _dl: i32, _n: i32, _nl: i32) -> i32 {
        BAD_STATE
    }
    pub unsafe fn lws_get_urlarg_by_name_safe(
        _wsi: i32,
        _n: i32,
        _nl: i32,
        _d: i32,
        _dl: i32,
    ) -> i32 {
        BAD_STATE
    }
    pub unsafe fn lws_get_peer_simple(_wsi: i32, _dst: i32, _dst_len: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_is_ssl(_wsi: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_now_usecs() -> i64 {
        0
    }
    pub fn lws_log(_level: i32, _msg: i32, _len: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_is_first_fragment(_wsi: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_is_final_fragment(_wsi: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_frame_is_binary(_wsi: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_remaining_packet_payload(_wsi: i32) -> i32 {
        BAD_STATE
    }
    pub fn wasmgate_fragment(_wsi: i32) -> i64 {
        BAD_STATE as i64
    }
    pub unsafe fn wasmgate_receive_next(_wsi: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_close_reason(_wsi: i32, _code: i32, _reason: i32, _len: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_rx_flow_control(_wsi: i32, _enable: i32) -> i32 {
        BAD_STATE
    }
    pub fn lws_callback_on_writable_all_protocol() -> i32 {
        BAD_STATE
    }
    pub fn lws_set_timer_usecs(_wsi: i32, _usecs: i64) -> i32 {
        BAD_STATE
    }
    pub fn lws_client_connect_via_info(_info: i32) -> i32 {
        BAD_STATE
    }
}

/// A guest-memory offset as the ABI passes it (`i32`). Pointers are 32 bits on
/// wasm32; elsewhere (host tests, where the imports are stubs) the value is
/// never looked at.
pub(crate) fn offset<T: ?Sized>(ptr: *const T) -> i32 {
    ptr.cast::<u8>() as usize as i32
}

/// A byte slice as the ABI's `ptr, len` pair.
pub(crate) fn ptr_len(bytes: &[u8]) -> (i32, i32) {
    (offset(bytes.as_ptr()), bytes.len() as i32)
}

/// Calls [`lws_http_get_uri_and_method`] with `dst` as the destination.
pub(crate) fn get_uri_and_method(wsi: i32, dst: &mut [u8]) -> i32 {
    // SAFETY: `dst` is an exclusive borrow for the whole call, and the host writes
    // at most `dst.len()` bytes into it.
    unsafe { lws_http_get_uri_and_method(wsi, offset(dst.as_ptr()), dst.len() as i32) }
}

/// Calls [`lws_hdr_custom_copy`] with `dst` as the destination.
pub(crate) fn hdr_custom_copy(wsi: i32, dst: &mut [u8], name: &[u8]) -> i32 {
    let (name, name_len) = ptr_len(name);
    // SAFETY: `dst` is an exclusive borrow for the whole call, and the host writes
    // at most `dst.len()` bytes into it.
    unsafe { lws_hdr_custom_copy(wsi, offset(dst.as_ptr()), dst.len() as i32, name, name_len) }
}

/// Calls [`lws_get_urlarg_by_name_safe`] with `dst` as the destination.
pub(crate) fn get_urlarg_by_name(wsi: i32, name: &[u8], dst: &mut [u8]) -> i32 {
    let (name, name_len) = ptr_len(name);
    // SAFETY: `dst` is an exclusive borrow for the whole call, and the host writes
    // at most `dst.len()` bytes into it.
    unsafe {
        lws_get_urlarg_by_name_safe(wsi, name, name_len, offset(dst.as_ptr()), dst.len() as i32)
    }
}

/// Calls [`lws_get_peer_simple`] with `dst` as the destination.
pub(crate) fn get_peer_simple(wsi: i32, dst: &mut [u8]) -> i32 {
    // SAFETY: `dst` is an exclusive borrow for the whole call, and the host writes
    // at most `dst.len()` bytes into it.
    unsafe { lws_get_peer_simple(wsi, offset(dst.as_ptr()), dst.len() as i32) }
}

/// Calls [`lws_client_connect_via_info`] with `info`, which must point into
/// this module's memory for the whole call (the host reads it and the strings
/// it names, nothing after the call returns).
pub(crate) fn client_connect_via_info(info: &RawClientConnectInfo) -> i32 {
    lws_client_connect_via_info(offset(core::ptr::from_ref(info)))
}

/// The 56-byte struct `lws_client_connect_via_info` reads (lws's `struct
/// lws_client_connect_info`, the fields the ABI keeps). All fields are
/// little-endian `u32`s; every string is a pointer (an offset into the guest's
/// memory) and a length in bytes, and a length of 0 means "not given".
/// [`crate::lws::ClientConnectInfo`] builds one from `&str`s.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawClientConnectInfo {
    /// Host name or IP address to connect to.
    pub address: u32,
    /// Its length.
    pub address_len: u32,
    /// TCP port.
    pub port: u32,
    /// Request path (empty: `/`).
    pub path: u32,
    /// Its length.
    pub path_len: u32,
    /// `Host` header (empty: `address:port`).
    pub host: u32,
    /// Its length.
    pub host_len: u32,
    /// `Origin` header (empty: none).
    pub origin: u32,
    /// Its length.
    pub origin_len: u32,
    /// `Sec-WebSocket-Protocol` to ask for (empty: none).
    pub protocol: u32,
    /// Its length.
    pub protocol_len: u32,
    /// `LCCSCF_*` flags: `LCCSCF_USE_SSL` (1), `LCCSCF_ALLOW_SELFSIGNED` (2),
    /// `LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK` (4).
    pub ssl_connection: u32,
    /// The device protocol whose guest gets the callbacks (empty: the caller's).
    pub local_protocol: u32,
    /// Its length.
    pub local_protocol_len: u32,
}

/// The 32-byte protocol descriptor `wasmgate_protocol` points to (lws's
/// `struct lws_protocols` entry). All fields are little-endian `u32`s; pointers
/// are offsets into the guest's memory.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolDescriptor {
    /// Must be [`ABI_VERSION`].
    pub abi_version: u32,
    /// Where the host places `in` data.
    pub rx_buffer: u32,
    /// Its size in bytes; at least [`MIN_RX_BUFFER_SIZE`].
    pub rx_buffer_size: u32,
    /// The per-session region.
    pub sessions: u32,
    /// Bytes per session slot (lws's `per_session_data_size`); may be 0.
    pub per_session_data_size: u32,
    /// Number of slots in the region; at least 1.
    pub max_sessions: u32,
    /// The protocol name (UTF-8).
    pub name: u32,
    /// Its length in bytes.
    pub name_len: u32,
}

impl ProtocolDescriptor {
    /// All fields zero, as the descriptor static starts out.
    pub const ZERO: Self = Self {
        abi_version: 0,
        rx_buffer: 0,
        rx_buffer_size: 0,
        sessions: 0,
        per_session_data_size: 0,
        max_sessions: 0,
        name: 0,
        name_len: 0,
    };
}

/// A `static`'s interior mutability for guest code: [`core::cell::Cell`]'s API
/// (`get`, `set`, `replace`, `take`, `update`) without needing `unsafe`.
///
/// ```
/// use wasmgate_guest::GuestCell;
/// let served = GuestCell::new(0u32);
/// served.update(|n| n + 1);
/// assert_eq!(served.get(), 1);
/// ```
///
/// It is `Sync` (so it can be a `static`) only on `wasm32` without the `atomics`
/// feature: a guest instance has exactly one thread, and the host never re-enters
/// the guest during a callback, so no two accesses can overlap. Like `Cell`, it
/// never hands out a reference to its content.
#[repr(transparent)]
pub struct GuestCell<T>(Cell<T>);

// SAFETY: this target has one thread per instance (no `atomics`, so no shared
// memory or threads); a `&GuestCell` is never observed from two threads, and
// `Cell`'s API is sound on one thread.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<T> Sync for GuestCell<T> {}

impl<T> GuestCell<T> {
    /// A cell holding `value`; usable in a `static`.
    pub const fn new(value: T) -> Self {
        Self(Cell::new(value))
    }

    /// Stores `value`, dropping the old one.
    pub fn set(&self, value: T) {
        self.0.set(value);
    }

    /// Stores `value` and returns the old one.
    pub fn replace(&self, value: T) -> T {
        self.0.replace(value)
    }

    /// A raw pointer to the content, e.g. to hand its address to the host.
    pub const fn as_ptr(&self) -> *mut T {
        self.0.as_ptr()
    }
}

impl<T: Copy> GuestCell<T> {
    /// A copy of the content.
    pub fn get(&self) -> T {
        self.0.get()
    }

    /// Replaces the content with `f(content)` and returns the new value.
    pub fn update(&self, f: impl FnOnce(T) -> T) -> T {
        let new = f(self.0.get());
        self.0.set(new);
        new
    }
}

impl<T: Default> GuestCell<T> {
    /// Takes the content, leaving `T::default()`.
    pub fn take(&self) -> T {
        self.0.take()
    }
}

impl<T: Copy + fmt::Debug> fmt::Debug for GuestCell<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GuestCell").field(&self.get()).finish()
    }
}

/// The receive buffer the host places `in` data into (`rx_buffer`,
/// `rx_buffer_size = N`). Declared by the export macros; guest code sees its
/// content only as the `in` slice of a callback.
pub struct RxBuffer<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: one thread per instance (see `GuestCell`); the content is only borrowed
// inside `dispatch`, whose contract rules out overlapping calls.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<const N: usize> Sync for RxBuffer<N> {}

impl<const N: usize> RxBuffer<N> {
    /// A zeroed buffer. Fails to compile (in a `static`) when `N` is under
    /// [`MIN_RX_BUFFER_SIZE`] or does not fit an `i32`.
    pub const fn new() -> Self {
        assert!(
            N >= MIN_RX_BUFFER_SIZE,
            "rx_buffer_size must be at least 128 bytes"
        );
        assert!(N <= i32::MAX as usize, "rx_buffer_size must fit in an i32");
        Self(UnsafeCell::new([0; N]))
    }
}

impl<const N: usize> Default for RxBuffer<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Debug for RxBuffer<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RxBuffer<{N}>")
    }
}

/// The per-session region: `N` slots of `S` (lws's per-session data, `user`),
/// `per_session_data_size = size_of::<S>()`, `max_sessions = N`.
///
/// The host zeroes a slot when it binds a request, a WebSocket upgrade or a
/// client connection to it (`HTTP_BIND_PROTOCOL`, `FILTER_PROTOCOL_CONNECTION`,
/// `CLIENT_ESTABLISHED` / `CLIENT_CONNECTION_ERROR`); the dispatch glue then
/// writes `S::default()` there before any guest code sees it, so `S` need not be
/// valid as all-zero bytes. `S: Copy` means a slot never needs dropping.
pub struct Sessions<S, const N: usize> {
    slots: UnsafeCell<[MaybeUninit<S>; N]>,
    /// Every slot holds a valid `S` (written on the first callback).
    ready: Cell<bool>,
}

// SAFETY: one thread per instance (see `GuestCell`); slots are only borrowed
// inside `dispatch`, whose contract rules out overlapping calls.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<S, const N: usize> Sync for Sessions<S, N> {}

impl<S: Default + Copy, const N: usize> Sessions<S, N> {
    /// An empty region. Fails to compile (in a `static`) when `N` is 0 or the
    /// region does not fit an `i32`.
    pub const fn new() -> Self {
        assert!(N >= 1, "max_sessions must be at least 1");
        assert!(
            size_of::<S>().saturating_mul(N) <= i32::MAX as usize,
            "the session region must fit in an i32"
        );
        Self {
            slots: UnsafeCell::new([const { MaybeUninit::uninit() }; N]),
            ready: Cell::new(false),
        }
    }

    /// Writes `S::default()` into every slot the first time it is called.
    fn ensure_ready(&self) {
        if self.ready.get() {
            return;
        }
        let first = self.slots.get().cast::<MaybeUninit<S>>();
        for i in 0..N {
            // SAFETY: `i < N` stays inside the array, and no reference to any slot
            // exists yet (the caller, `dispatch`, has handed none out).
            unsafe { first.add(i).write(MaybeUninit::new(S::default())) };
        }
        self.ready.set(true);
    }

    /// The slot the host's `user` pointer names, if it names one.
    fn slot_ptr(&self, user: i32) -> Option<*mut MaybeUninit<S>> {
        let base = self.slots.get().cast::<MaybeUninit<S>>();
        let index = slot_index(base as usize, user as u32 as usize, size_of::<S>(), N)?;
        // `index < N`: the pointer stays inside the array.
        Some(base.wrapping_add(index))
    }
}

impl<S: Default + Copy, const N: usize> Default for Sessions<S, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S, const N: usize> fmt::Debug for Sessions<S, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sessions<{} bytes, {N}>", size_of::<S>())
    }
}

/// Which slot `user` points to in a region at `base` of `count` slots of `size`
/// bytes: `None` for 0 (no session), outside the region, or between slots.
/// With `size` 0 every slot has the same address; any non-zero `user` is slot 0.
fn slot_index(base: usize, user: usize, size: usize, count: usize) -> Option<usize> {
    if user == 0 {
        return None;
    }
    if size == 0 {
        return Some(0);
    }
    let offset = user.checked_sub(base)?;
    let index = offset / size;
    (offset % size == 0 && index < count).then_some(index)
}

/// Whether the event is the first a new binding's session slot sees, which the
/// host has zeroed: an HTTP transaction (`HTTP_BIND_PROTOCOL`), a WebSocket
/// server connection (`FILTER_PROTOCOL_CONNECTION`), or a client connection
/// (`CLIENT_ESTABLISHED`, or `CLIENT_CONNECTION_ERROR` when it never opened:
/// the host binds its slot at `lws_client_connect_via_info`, and one of the
/// two is the first callback it gets). Public for the `wasmgate_wants` of the
/// export macros: a reason where the glue resets the slot stays wanted.
#[doc(hidden)]
pub const fn brings_fresh_slot(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::HttpBindProtocol
            | Reason::FilterProtocolConnection
            | Reason::ClientEstablished
            | Reason::ClientConnectionError
    )
}

/// The reasons an [`export_lws_callback!`](crate::export_lws_callback) guest
/// with `reasons = [...]` wants, one bit per reason number (computed at
/// compile time, so that its `wasmgate_wants` export is a shift): the `listed`
/// reasons and, when the session is not zero-sized, those at which
/// [`dispatch`] resets the slot to `S::default()` (the host only zeroes it,
/// which need not be a valid `S`: without that callback, the next would see
/// the zeroes). Reason numbers past 127 cannot be listed.
#[doc(hidden)]
pub const fn lws_wanted<S>(listed: &[Reason]) -> u128 {
    if size_of::<S>() == 0 {
        reason_mask(listed)
    } else {
        reason_mask(listed) | reason_mask(&FRESH_SLOT_REASONS)
    }
}

/// Whether a guest that handles the reasons in `mask` ([`reason_mask`]) gets
/// WebSocket pieces (`RECEIVE`, `CLIENT_RECEIVE`), and so takes the ones
/// behind the first in its entry. Not public API.
#[doc(hidden)]
pub const fn takes_pieces(mask: u128) -> bool {
    mask & reason_mask(&[Reason::Receive, Reason::ClientReceive]) != 0
}

/// The reasons [`brings_fresh_slot`] names, as a list for [`reason_mask`].
#[doc(hidden)]
pub const FRESH_SLOT_REASONS: [Reason; 4] = [
    Reason::HttpBindProtocol,
    Reason::FilterProtocolConnection,
    Reason::ClientEstablished,
    Reason::ClientConnectionError,
];

/// One bit per reason number in `reasons`: what a `wasmgate_wants` export
/// tests, so that it needs no `Reason::from_raw` (a second caller would keep
/// a size-optimised build from inlining that match into `callback`). Fails
/// to compile for a reason number outside 0..128.
#[doc(hidden)]
pub const fn reason_mask(reasons: &[Reason]) -> u128 {
    let mut mask = 0;
    let mut i = 0;
    while i < reasons.len() {
        let raw = reasons[i].raw();
        assert!(0 <= raw && raw < 128, "a listed reason is outside 0..128");
        mask |= 1 << raw;
        i += 1;
    }
    mask
}

/// Whether reason number `raw` is in `mask` (see [`reason_mask`]).
#[doc(hidden)]
pub const fn in_mask(mask: u128, raw: i32) -> bool {
    0 <= raw && raw < 128 && mask & (1 << raw) != 0
}

/// Where `in, len` lies in a receive buffer at `base` of `cap` bytes, as
/// `(start, len)`; `None` when it is not inside. An empty `in` is always fine.
fn input_range(base: usize, ptr: usize, len: usize, cap: usize) -> Option<(usize, usize)> {
    if len == 0 {
        return Some((0, 0));
    }
    let start = ptr.checked_sub(base)?;
    (start.checked_add(len)? <= cap).then_some((start, len))
}

/// The receive buffer during one callback: the `in` bytes, and the buffer as
/// scratch space from the start of `in` on.
#[derive(Debug)]
pub struct Rx<'a> {
    buf: &'a mut [u8],
    start: usize,
    len: usize,
}

impl Rx<'_> {
    /// The callback's `in` data (empty when `len` is 0).
    pub fn input(&self) -> &[u8] {
        // `dispatch` checked the range; `get` keeps panic code out of small guests.
        self.buf
            .get(self.start..self.start + self.len)
            .unwrap_or_default()
    }

    /// The buffer from the start of `in` to its end, to hand to a host call that
    /// copies the same bytes back (the HTTP layer reads the method this way while
    /// the path sits in `in`). What it writes is what [`Rx::input`] then returns.
    pub fn from_input_mut(&mut self) -> &mut [u8] {
        self.buf.get_mut(self.start..).unwrap_or_default()
    }
}

#[cfg(test)]
impl<'a> Rx<'a> {
    /// `in` as the first `len` bytes of `buf`.
    pub(crate) fn for_test(buf: &'a mut [u8], len: usize) -> Self {
        Self { buf, start: 0, len }
    }
}

/// Fills `descriptor` for `name`, `rx` and `sessions` and returns its address:
/// the body of the `wasmgate_protocol` export. Called by the export macros.
#[doc(hidden)]
pub fn describe<S: Default + Copy, const RX: usize, const N: usize>(
    descriptor: &'static GuestCell<ProtocolDescriptor>,
    name: &'static str,
    rx: &'static RxBuffer<RX>,
    sessions: &'static Sessions<S, N>,
) -> i32 {
    descriptor.set(ProtocolDescriptor {
        abi_version: ABI_VERSION,
        rx_buffer: offset(rx.0.get()) as u32,
        rx_buffer_size: RX as u32,
        sessions: offset(sessions.slots.get()) as u32,
        per_session_data_size: size_of::<S>() as u32,
        max_sessions: N as u32,
        name: offset(name.as_ptr()) as u32,
        name_len: name.len() as u32,
    });
    offset(descriptor.as_ptr())
}

/// The body of the `callback` export: turns the host's five `i32`s into a
/// [`Wsi`], a [`Reason`], the session slot and the receive buffer, resets the
/// slot to `S::default()` where the host hands out a zeroed one
/// (`HTTP_BIND_PROTOCOL`, `FILTER_PROTOCOL_CONNECTION`, `CLIENT_ESTABLISHED`,
/// `CLIENT_CONNECTION_ERROR`), and calls `f`. A `user` or
/// `in` range the host should never send makes the callback return -1.
///
/// With `pieces` (`export_ws!`, and `export_lws_callback!` unless its
/// reasons receive nothing; the fragment cell says when to ask), a
/// `RECEIVE` or `CLIENT_RECEIVE` callback that goes on (0) takes the pieces
/// the host already holds behind its own (`wasmgate_receive_next`) and calls
/// `f` again for each, as lws makes a `RECEIVE` callback for every frame of
/// one read: the entry into the guest, its largest fixed cost, is shared.
///
/// # Safety
///
/// Must not be called while another `dispatch` with the same `rx` or `sessions`
/// is running. The export macros call it only from the `callback` export, which
/// only the host calls, and the host never re-enters the guest.
#[doc(hidden)]
pub unsafe fn dispatch<S, const RX: usize, const N: usize, F>(
    rx: &RxBuffer<RX>,
    sessions: &Sessions<S, N>,
    [wsi, reason, user, input, len]: [i32; 5],
    pieces: bool,
    mut f: F,
) -> i32
where
    S: Default + Copy,
    F: FnMut(Wsi, Reason, Option<&mut S>, Rx<'_>) -> i32,
{
    let reason = Reason::from_raw(reason);
    sessions.ensure_ready();
    let slot = sessions.slot_ptr(user);
    if user != 0 && slot.is_none() {
        return -1;
    }
    if brings_fresh_slot(reason)
        && let Some(ptr) = slot
    {
        // SAFETY: `ptr` is a slot inside the region, and no reference to it exists.
        // The host has just zeroed it, which need not be a valid `S`: write a
        // fresh one without reading the old.
        unsafe { ptr.write(MaybeUninit::new(S::default())) };
    }
    // SAFETY: `ptr` is a slot inside the region holding a valid `S`: written by
    // `ensure_ready` or at its last bind, and since then only through `&mut S`.
    // This is the only reference to a slot made during this call, and the caller
    // rules out overlapping calls.
    let session = slot.map(|ptr| unsafe { (*ptr).assume_init_mut() });
    let Some((start, len)) = input_range(
        rx.0.get() as usize,
        input as u32 as usize,
        len as u32 as usize,
        RX,
    ) else {
        return -1;
    };
    // SAFETY: the only reference to the buffer during this call (the caller rules
    // out overlapping calls); the host writes into it only between callbacks
    // and in `wasmgate_receive_next`, which the loop below calls only after
    // `f` has given this reference up.
    let buf = unsafe { &mut *rx.0.get() };
    let (mut session, mut input) = (session, Rx { buf, start, len });
    // One call of `f`, in a loop, so that a size-optimised build still
    // inlines it.
    loop {
        let result = f(Wsi::from_raw(wsi), reason, session, input);
        if !(pieces && result == 0 && matches!(reason, Reason::Receive | Reason::ClientReceive)) {
            return result;
        }
        // SAFETY: the references to the buffer and the slot went into `f`'s
        // call, which has returned; new ones are made below.
        let Some(len) = (unsafe { next_piece(wsi) }) else {
            return result;
        };
        // SAFETY: as above: the only references to the slot and the buffer now.
        session = slot.map(|ptr| unsafe { (*ptr).assume_init_mut() });
        let buf = unsafe { &mut *rx.0.get() };
        input = Rx {
            buf,
            start: 0,
            len: len.min(RX),
        };
    }
}

/// The length of the next piece the host holds behind the current one,
/// which it has written at the start of the receive buffer, if the fragment
/// cell says more are buffered and `wasmgate_receive_next` hands one over.
///
/// # Safety
///
/// No reference to the receive buffer or the fragment cell may be live.
#[inline(always)]
unsafe fn next_piece(wsi: i32) -> Option<usize> {
    #[cfg(target_arch = "wasm32")]
    if FRAGMENT_CELL.get() & FRAGMENT_MORE != 0 {
        // SAFETY: the caller's.
        return usize::try_from(unsafe { wasmgate_receive_next(wsi) }).ok();
    }
    let _ = wsi;
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn descriptor_is_32_bytes_in_abi_order() {
        assert_eq!(size_of::<ProtocolDescriptor>(), 32);
        assert_eq!(offset_of!(ProtocolDescriptor, abi_version), 0);
        assert_eq!(offset_of!(ProtocolDescriptor, rx_buffer), 4);
        assert_eq!(offset_of!(ProtocolDescriptor, rx_buffer_size), 8);
        assert_eq!(offset_of!(ProtocolDescriptor, sessions), 12);
        assert_eq!(offset_of!(ProtocolDescriptor, per_session_data_size), 16);
        assert_eq!(offset_of!(ProtocolDescriptor, max_sessions), 20);
        assert_eq!(offset_of!(ProtocolDescriptor, name), 24);
        assert_eq!(offset_of!(ProtocolDescriptor, name_len), 28);
    }

    #[test]
    fn client_connect_info_is_56_bytes_in_abi_order() {
        assert_eq!(size_of::<RawClientConnectInfo>(), 56);
        assert_eq!(offset_of!(RawClientConnectInfo, address), 0);
        assert_eq!(offset_of!(RawClientConnectInfo, address_len), 4);
        assert_eq!(offset_of!(RawClientConnectInfo, port), 8);
        assert_eq!(offset_of!(RawClientConnectInfo, path), 12);
        assert_eq!(offset_of!(RawClientConnectInfo, path_len), 16);
        assert_eq!(offset_of!(RawClientConnectInfo, host), 20);
        assert_eq!(offset_of!(RawClientConnectInfo, host_len), 24);
        assert_eq!(offset_of!(RawClientConnectInfo, origin), 28);
        assert_eq!(offset_of!(RawClientConnectInfo, origin_len), 32);
        assert_eq!(offset_of!(RawClientConnectInfo, protocol), 36);
        assert_eq!(offset_of!(RawClientConnectInfo, protocol_len), 40);
        assert_eq!(offset_of!(RawClientConnectInfo, ssl_connection), 44);
        assert_eq!(offset_of!(RawClientConnectInfo, local_protocol), 48);
        assert_eq!(offset_of!(RawClientConnectInfo, local_protocol_len), 52);
    }

    #[test]
    fn slot_index_accepts_only_slot_starts_inside_the_region() {
        assert_eq!(slot_index(1000, 1000, 16, 4), Some(0));
        assert_eq!(slot_index(1000, 1048, 16, 4), Some(3));
        assert_eq!(
            slot_index(1000, 1064, 16, 4),
            None,
            "one past the last slot"
        );
        assert_eq!(slot_index(1000, 1008, 16, 4), None, "between slots");
        assert_eq!(slot_index(1000, 999, 16, 4), None, "before the region");
        assert_eq!(slot_index(1000, 0, 16, 4), None, "no session");
    }

    #[test]
    fn zero_sized_sessions_share_one_slot() {
        assert_eq!(slot_index(1000, 1000, 0, 8), Some(0));
        assert_eq!(slot_index(1000, 0, 0, 8), None);
    }

    #[test]
    fn input_range_must_lie_inside_the_buffer() {
        assert_eq!(input_range(5000, 5000, 128, 128), Some((0, 128)));
        assert_eq!(input_range(5000, 5010, 10, 128), Some((10, 10)));
        assert_eq!(input_range(5000, 5000, 129, 128), None);
        assert_eq!(input_range(5000, 4999, 1, 128), None);
        assert_eq!(input_range(5000, usize::MAX, 2, 128), None, "no overflow");
        assert_eq!(input_range(5000, 0, 0, 128), Some((0, 0)), "no input");
    }

    #[test]
    fn sessions_start_fresh_at_the_first_event_of_a_binding_only() {
        assert!(brings_fresh_slot(Reason::HttpBindProtocol));
        assert!(brings_fresh_slot(Reason::FilterProtocolConnection));
        assert!(brings_fresh_slot(Reason::ClientEstablished));
        assert!(brings_fresh_slot(Reason::ClientConnectionError));
        for later in [
            Reason::Http,
            Reason::Established,
            Reason::Receive,
            Reason::ServerWriteable,
            Reason::Closed,
            Reason::ClientReceive,
            Reason::ClientReceivePong,
            Reason::ClientWriteable,
            Reason::ClientClosed,
            Reason::Timer,
        ] {
            assert!(!brings_fresh_slot(later), "{later:?}");
        }
    }

    #[test]
    fn only_a_guest_that_receives_websocket_pieces_takes_them() {
        assert!(takes_pieces(reason_mask(&[Reason::Receive])));
        assert!(takes_pieces(reason_mask(&[
            Reason::Http,
            Reason::ClientReceive
        ])));
        assert!(!takes_pieces(reason_mask(&[Reason::Http])));
        assert!(!takes_pieces(reason_mask(&[
            Reason::ServerWriteable,
            Reason::ClientReceivePong
        ])));
    }

    #[test]
    fn lws_wants_adds_the_binding_reasons_only_for_a_real_session() {
        let wants = |mask, reason: Reason| in_mask(mask, reason.raw());
        let unit = lws_wanted::<()>(&[Reason::Http]);
        assert!(wants(unit, Reason::Http));
        assert!(!wants(unit, Reason::HttpBindProtocol));
        assert!(!wants(unit, Reason::HttpDropProtocol));
        assert!(!wants(unit, Reason::ProtocolInit));
        assert!(!in_mask(unit, -1) && !in_mask(unit, 200));
        // A session that zeroes need not make valid is reset at every binding.
        let pss = lws_wanted::<u32>(&[Reason::Http, Reason::Closed]);
        assert!(wants(pss, Reason::Http));
        assert!(wants(pss, Reason::Closed));
        for fresh in [
            Reason::HttpBindProtocol,
            Reason::FilterProtocolConnection,
            Reason::ClientEstablished,
            Reason::ClientConnectionError,
        ] {
            assert!(brings_fresh_slot(fresh) && wants(pss, fresh), "{fresh:?}");
        }
        assert!(FRESH_SLOT_REASONS.iter().all(|&r| brings_fresh_slot(r)));
        assert!(!wants(pss, Reason::HttpDropProtocol));
    }

    #[test]
    fn guest_cell_behaves_like_cell() {
        let cell = GuestCell::new(5u32);
        assert_eq!(cell.update(|n| n * 2), 10);
        assert_eq!(cell.replace(1), 10);
        assert_eq!(cell.take(), 1);
        assert_eq!(cell.get(), 0);
    }

    #[test]
    fn dispatch_resets_the_session_on_bind_and_passes_input() {
        #[derive(Clone, Copy, Default, PartialEq, Debug)]
        struct Pss {
            n: u32,
        }
        let rx = RxBuffer::<128>::new();
        let sessions = Sessions::<Pss, 2>::new();
        // Host pointers do not fit an i32 here, so use calls without `user`/`in`.
        // SAFETY: no other dispatch runs.
        let ret = unsafe {
            dispatch(
                &rx,
                &sessions,
                [7, 27, 0, 0, 0],
                false,
                |wsi, reason, user, rx| {
                    assert_eq!(wsi, Wsi::from_raw(7));
                    assert_eq!(reason, Reason::ProtocolInit);
                    assert!(user.is_none());
                    assert!(rx.input().is_empty());
                    0
                },
            )
        };
        assert_eq!(ret, 0);
        assert!(sessions.ready.get());
    }
}
