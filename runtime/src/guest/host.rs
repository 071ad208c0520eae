//! The `lws` host functions. Each checks its pointers against guest memory and
//! the `wsi` against the connection lent to the callback, returns a status, and
//! never calls back into the guest.

use wasmi::{Caller, Engine, Linker, ValType};

use super::status::{BAD_POINTER, BAD_STATE, INVALID, NO_SPACE, NOT_FOUND};
use super::{Call, ConnectRequest, Fragment, HostState};
use crate::http::{Completion, QueryArgError, ResponseError};
use crate::ws::{SendError, SendKind};

const I32: ValType = ValType::I32;
const I64: ValType = ValType::I64;

/// `lws_write` modes (lws 4.3's `enum lws_write_protocol`).
const LWS_WRITE_TEXT: i32 = 0;
const LWS_WRITE_BINARY: i32 = 1;
const LWS_WRITE_CONTINUATION: i32 = 2;
const LWS_WRITE_HTTP: i32 = 3;
const LWS_WRITE_PING: i32 = 5;
const LWS_WRITE_PONG: i32 = 6;
const LWS_WRITE_HTTP_FINAL: i32 = 7;
/// Flag: this piece does not end the message.
const LWS_WRITE_NO_FIN: i32 = 0x40;
/// `LWS_ILLEGAL_HTTP_CONTENT_LEN`: the body length is not known up front.
const UNKNOWN_LENGTH: i64 = -1;
/// Longest log line kept from a guest.
const MAX_LOG: usize = 512;
/// Log lines kept from one callback; the rest are counted and reported once.
pub(super) const MAX_LOG_LINES: u32 = 32;
/// Fuel every host call costs, on top of a unit per byte it handles: host
/// work is paid from the same budget as the guest's own instructions.
const HOST_CALL_FUEL: u64 = 100;
/// Extra fuel per byte logged: logging is the dearest thing a guest can ask.
const LOG_BYTE_FUEL: u64 = 16;

/// Host fuel owed is taken from the store's fuel once it reaches this much,
/// and at the end of every callback. Reading and setting wasmi's fuel costs
/// about 50 instructions, a third of a small host call's whole price, so a
/// callback's few host calls settle once instead of once each. A guest that
/// spends its budget on host calls traps at most this much fuel late.
pub(super) const FUEL_SETTLE_AT: u64 = 1_000;

/// Charges `bytes` units plus the base cost to the callback's fuel. A guest
/// that runs dry traps (out of fuel) at its next instruction after the debt
/// is settled (see [`FUEL_SETTLE_AT`]).
fn charge(cx: &mut Cx<'_>, bytes: i32) {
    let cost = HOST_CALL_FUEL + u64::try_from(bytes).unwrap_or(0);
    let state = cx.data_mut();
    state.fuel_owed = state.fuel_owed.saturating_add(cost);
    if state.fuel_owed >= FUEL_SETTLE_AT {
        let owed = std::mem::take(&mut state.fuel_owed);
        if let Ok(fuel) = cx.get_fuel() {
            let _ = cx.set_fuel(fuel.saturating_sub(owed));
        }
    }
}

/// The parameter and result types of host function `name`, if it exists.
pub(super) fn signature_of(name: &str) -> Option<(&'static [ValType], &'static [ValType])> {
    SIGNATURES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, p, r)| (*p, *r))
}

type Cx<'a> = Caller<'a, HostState>;

/// Guest bytes `ptr..ptr + len`, if inside memory.
fn bytes(mem: &[u8], ptr: i32, len: i32) -> Option<&[u8]> {
    let (ptr, len) = (usize::try_from(ptr).ok()?, usize::try_from(len).ok()?);
    mem.get(ptr..ptr.checked_add(len)?)
}

/// Two disjoint views: an immutable source and a mutable destination would
/// alias the same memory, so copies go through this.
fn copy_out(mem: &mut [u8], dst: i32, dst_len: i32, value: &[u8]) -> i32 {
    let (Ok(ptr), Ok(cap)) = (usize::try_from(dst), usize::try_from(dst_len)) else {
        return BAD_POINTER;
    };
    let Some(out) = ptr.checked_add(cap).and_then(|end| mem.get_mut(ptr..end)) else {
        return BAD_POINTER;
    };
    if value.len() > out.len() {
        return NO_SPACE;
    }
    out[..value.len()].copy_from_slice(value);
    if value.len() < out.len() {
        out[value.len()] = 0; // a C string for lws-style callers
    }
    value.len() as i32
}

/// The connections a host call applies to: the response calls mean nothing
/// on an upgraded connection, the WebSocket calls nothing on an HTTP one.
#[derive(Debug, Clone, Copy)]
enum On {
    Any,
    Http,
    Ws,
}

impl On {
    /// Whether `call` is `wsi`'s, and of this kind.
    fn admits(self, call: &Call, wsi: i32) -> bool {
        call.wsi == wsi
            && match self {
                On::Any => true,
                On::Http => call.ws.is_none(),
                On::Ws => call.ws.is_some(),
            }
    }
}

/// Runs `f` with guest memory and the connection `wsi`, if it is the one lent
/// to this callback and `on` admits it.
fn with_call(
    cx: &mut Cx<'_>,
    wsi: i32,
    on: On,
    bytes: i32,
    f: impl FnOnce(&mut [u8], &mut Call) -> i32,
) -> i32 {
    charge(cx, bytes);
    let Some(memory) = cx.data().memory else {
        return BAD_STATE;
    };
    let (mem, state) = memory.data_and_store_mut(cx);
    match state.call.as_mut() {
        Some(call) if on.admits(call, wsi) => f(mem, call),
        _ => BAD_STATE,
    }
}

/// [`with_call`] for the calls that touch no guest memory: finding the
/// memory in the store costs about 40 instructions, a sixth of a small host
/// call's price to the guest.
fn with_conn(cx: &mut Cx<'_>, wsi: i32, on: On, f: impl FnOnce(&mut Call) -> i32) -> i32 {
    charge(cx, 0);
    match cx.data_mut().call.as_mut() {
        Some(call) if on.admits(call, wsi) => f(call),
        _ => BAD_STATE,
    }
}

fn response_status(result: Result<(), ResponseError>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => response_error(e),
    }
}

fn response_error(e: ResponseError) -> i32 {
    match e {
        ResponseError::BadState => BAD_STATE,
        ResponseError::NoSpace => NO_SPACE,
        ResponseError::Invalid => INVALID,
    }
}

fn status_code(status: i32) -> Option<u16> {
    u16::try_from(status)
        .ok()
        .filter(|s| (100..=999).contains(s))
}

/// Header names may come lws-style, with a trailing `:`.
fn header_name(raw: &[u8]) -> &[u8] {
    raw.strip_suffix(b":").unwrap_or(raw)
}

fn lws_write(mut cx: Cx<'_>, wsi: i32, buf: i32, len: i32, mode: i32) -> i32 {
    with_call(&mut cx, wsi, On::Any, len, |mem, call| {
        let Some(data) = bytes(mem, buf, len) else {
            return BAD_POINTER;
        };
        if let Some(ws) = call.ws.as_mut() {
            let fin = mode & LWS_WRITE_NO_FIN == 0;
            let kind = match mode & !LWS_WRITE_NO_FIN {
                LWS_WRITE_TEXT => SendKind::Text,
                LWS_WRITE_BINARY => SendKind::Binary,
                LWS_WRITE_CONTINUATION => SendKind::Continuation,
                LWS_WRITE_PING => SendKind::Ping,
                LWS_WRITE_PONG => SendKind::Pong,
                _ => return BAD_STATE,
            };
            return match ws.send(kind, data, fin) {
                Ok(()) => len,
                Err(SendError::NoSpace) => NO_SPACE,
                Err(SendError::BadState) => BAD_STATE,
                Err(SendError::Invalid) => INVALID,
            };
        }
        let fin = match mode {
            LWS_WRITE_HTTP => false,
            LWS_WRITE_HTTP_FINAL => true,
            _ => return BAD_STATE,
        };
        match call.http.write_body(data, fin) {
            Ok(_) => len,
            Err(e) => response_error(e),
        }
    })
}

fn is_first_fragment(mut cx: Cx<'_>, wsi: i32) -> i32 {
    with_conn(&mut cx, wsi, On::Ws, |call| i32::from(call.fragment.first))
}

fn is_final_fragment(mut cx: Cx<'_>, wsi: i32) -> i32 {
    with_conn(&mut cx, wsi, On::Ws, |call| i32::from(call.fragment.last))
}

fn frame_is_binary(mut cx: Cx<'_>, wsi: i32) -> i32 {
    with_conn(&mut cx, wsi, On::Ws, |call| i32::from(call.fragment.binary))
}

fn remaining_payload(mut cx: Cx<'_>, wsi: i32) -> i32 {
    with_conn(&mut cx, wsi, On::Ws, |call| {
        i32::try_from(call.fragment.remaining).unwrap_or(i32::MAX)
    })
}

/// `wasmgate_fragment`'s flag bits: the piece starts a message...
const FRAGMENT_FIRST: i64 = 1;
/// ...ends it...
const FRAGMENT_FINAL: i64 = 2;
/// ...and the message is binary.
const FRAGMENT_BINARY: i64 = 4;
/// Bytes are buffered behind the piece (`Fragment::more`).
const FRAGMENT_MORE: i64 = 8;
/// Where `wasmgate_fragment` puts the bytes of the frame still to come.
const FRAGMENT_REMAINING_SHIFT: u32 = 8;
/// Set in the word written to a guest's fragment cell: the host wrote it (a
/// cell no host wrote reads 0).
pub(super) const FRAGMENT_PRESENT: i64 = 0x80;

/// `wasmgate_fragment`: the four lws fragment queries (`lws_is_first_fragment`,
/// `lws_is_final_fragment`, `lws_frame_is_binary`,
/// `lws_remaining_packet_payload`) in one host call, since each call costs
/// the guest far more than the answer: the flag bits, and the remaining
/// bytes from bit 8 on. Negative (a status) where those calls fail.
fn fragment(mut cx: Cx<'_>, wsi: i32) -> i64 {
    let mut packed = 0;
    let status = with_conn(&mut cx, wsi, On::Ws, |call| {
        packed = pack_fragment(call.fragment);
        0
    });
    if status < 0 {
        i64::from(status)
    } else {
        packed
    }
}

/// `fragment` as `wasmgate_fragment` returns it: never negative (the
/// remaining count is capped at 2^55 - 1, far beyond any frame a device takes).
pub(super) fn pack_fragment(fragment: super::Fragment) -> i64 {
    const MAX_REMAINING: u64 = (1 << (63 - FRAGMENT_REMAINING_SHIFT)) - 1;
    let flag = |set: bool, bit: i64| if set { bit } else { 0 };
    let remaining = fragment.remaining.min(MAX_REMAINING) as i64;
    (remaining << FRAGMENT_REMAINING_SHIFT)
        | flag(fragment.first, FRAGMENT_FIRST)
        | flag(fragment.last, FRAGMENT_FINAL)
        | flag(fragment.binary, FRAGMENT_BINARY)
        | flag(fragment.more, FRAGMENT_MORE)
}

/// The word written to a guest's fragment cell for `fragment`.
pub(super) fn cell_word(fragment: Fragment) -> i64 {
    pack_fragment(fragment) | FRAGMENT_PRESENT
}

/// Logs how many of the current callback's log lines were dropped, if any.
pub(super) fn report_dropped_logs(state: &HostState) {
    if state.log_lines > MAX_LOG_LINES {
        tracing::warn!(
            protocol = %state.protocol,
            "{} log lines of one callback dropped (at most {} are kept)",
            state.log_lines - MAX_LOG_LINES,
            MAX_LOG_LINES
        );
    }
}

/// `wasmgate_receive_next`: during a `RECEIVE` (or `CLIENT_RECEIVE`)
/// callback, hands the guest the connection's next piece if it is already
/// buffered, as lws delivers every frame of one read before anything else:
/// written into the receive buffer (from its start) and the fragment cell as
/// for a callback, and its length returned. `NOT_FOUND` when there is none
/// now: no complete piece buffered, a control frame or a broken frame first,
/// the peer's FIN, receiving paused (`lws_rx_flow_control` in this callback
/// included), a client connection asked for in this entry (opened, and new
/// `wsi`s lent, once it returns) or the connection closing. Each piece is a
/// callback of its own: the fuel is settled and refilled, the log lines
/// counted afresh, `lws_close_reason` forgotten.
fn receive_next(mut cx: Cx<'_>, wsi: i32) -> i32 {
    charge(&mut cx, 0);
    let Some(memory) = cx.data().memory else {
        return BAD_STATE;
    };
    let (mem, state) = memory.data_and_store_mut(&mut cx);
    let (Some(pieces), Some(call)) = (state.pieces, state.call.as_mut()) else {
        return BAD_STATE;
    };
    if !On::Ws.admits(call, wsi) {
        return BAD_STATE;
    }
    // Paused, or client connections asked for: those are opened, and new
    // `wsi`s lent for the next callback, only once the entry returns.
    if call.rx_flow == Some(false) || !call.connects.is_empty() {
        return NOT_FOUND;
    }
    let Some(ws) = call.ws.as_mut() else {
        return BAD_STATE;
    };
    let Some(crate::ws::Event::Data {
        data,
        first,
        last,
        binary,
        remaining,
    }) = ws.next_data(call.now, pieces.rx_buffer_size)
    else {
        return NOT_FOUND;
    };
    let len = data.len();
    mem[pieces.rx_buffer..pieces.rx_buffer + len].copy_from_slice(data);
    call.fragment = Fragment {
        first,
        last,
        binary,
        remaining,
        more: ws.has_buffered(),
    };
    if let Some(at) = pieces.cell {
        mem[at..at + 8].copy_from_slice(&cell_word(call.fragment).to_le_bytes());
    }
    call.pieces += 1;
    call.close_reason = None;
    report_dropped_logs(state);
    state.log_lines = 0;
    let fuel = cx.get_fuel().unwrap_or(0);
    let state = cx.data_mut();
    state.fuel_spent += state.callback_fuel_used(fuel);
    state.fuel_owed = 0;
    let budget = state.fuel_per_callback;
    let _ = cx.set_fuel(budget);
    len as i32
}

fn close_reason(mut cx: Cx<'_>, wsi: i32, code: i32, reason: i32, len: i32) -> i32 {
    with_call(&mut cx, wsi, On::Ws, len, |mem, call| {
        let Some(reason) = bytes(mem, reason, len) else {
            return BAD_POINTER;
        };
        let Ok(code) = u16::try_from(code) else {
            return INVALID;
        };
        call.close_reason = Some((code, reason[..reason.len().min(123)].to_vec()));
        0
    })
}

fn rx_flow_control(mut cx: Cx<'_>, wsi: i32, enable: i32) -> i32 {
    with_conn(&mut cx, wsi, On::Ws, |call| {
        call.rx_flow = Some(enable != 0);
        0
    })
}

fn set_timer(mut cx: Cx<'_>, wsi: i32, usecs: i64) -> i32 {
    with_conn(&mut cx, wsi, On::Any, |call| {
        call.timer = Some(u64::try_from(usecs).ok());
        0
    })
}

/// `lws_client_connect_via_info`: reads the 56-byte info struct (see
/// `docs/abi.md`) and queues the connection.
fn client_connect(mut cx: Cx<'_>, info: i32) -> i32 {
    charge(&mut cx, 56);
    let Some(memory) = cx.data().memory else {
        return BAD_STATE;
    };
    let (mem, state) = memory.data_and_store_mut(&mut cx);
    let Some(call) = state.call.as_mut() else {
        return BAD_STATE; // no connection context (e.g. PROTOCOL_INIT)
    };
    let Some(raw) = bytes(mem, info, 56) else {
        return BAD_POINTER;
    };
    let field = |i: usize| u32::from_le_bytes(raw[i..i + 4].try_into().expect("4 bytes"));
    let text = |i: usize| -> Result<Option<String>, i32> {
        let (ptr, len) = (field(i) as i32, field(i + 4) as i32);
        if len == 0 {
            return Ok(None);
        }
        let b = bytes(mem, ptr, len).ok_or(BAD_POINTER)?;
        let s = std::str::from_utf8(b).map_err(|_| BAD_POINTER)?;
        if s.len() > 1024 || s.bytes().any(|c| c.is_ascii_control()) {
            return Err(INVALID);
        }
        Ok(Some(s.to_string()))
    };
    let parsed = (|| -> Result<ConnectRequest, i32> {
        let address = text(0)?.ok_or(INVALID)?;
        let port = u16::try_from(field(8))
            .ok()
            .filter(|p| *p != 0)
            .ok_or(INVALID)?;
        let tls = crate::tls::ClientTlsOptions::from_lccscf(field(44)).map_err(|why| {
            tracing::warn!("lws_client_connect_via_info: {why}");
            INVALID
        })?;
        if tls.is_some() && !crate::tls::ENABLED {
            tracing::warn!("lws_client_connect_via_info: LCCSCF_USE_SSL, but built without TLS");
            return Err(INVALID);
        }
        Ok(ConnectRequest {
            wsi: 0,
            target: crate::config::ClientTarget {
                address,
                port,
                path: text(12)?.unwrap_or_else(|| "/".into()),
                host: text(20)?,
                origin: text(28)?,
                ws_protocol: text(36)?,
                tls,
            },
            local_protocol: text(48)?,
        })
    })();
    let mut request = match parsed {
        Ok(r) => r,
        Err(e) => return e,
    };
    if call.connects.len() >= 4 {
        return NO_SPACE; // a few per callback is plenty
    }
    let Some(wsi) = call.free_wsis.pop() else {
        return NO_SPACE;
    };
    request.wsi = wsi;
    call.connects.push(request);
    wsi
}

fn writable_all(mut cx: Cx<'_>) -> i32 {
    charge(&mut cx, 0);
    match cx.data_mut().call.as_mut() {
        Some(call) => {
            call.writable_all = true;
            0
        }
        None => BAD_STATE,
    }
}

fn add_status(mut cx: Cx<'_>, wsi: i32, status: i32) -> i32 {
    with_conn(&mut cx, wsi, On::Http, |call| match status_code(status) {
        Some(code) => response_status(call.http.begin_head(code)),
        None => INVALID,
    })
}

fn add_header(
    mut cx: Cx<'_>,
    wsi: i32,
    name: i32,
    name_len: i32,
    value: i32,
    value_len: i32,
) -> i32 {
    with_call(
        &mut cx,
        wsi,
        On::Http,
        name_len.saturating_add(value_len),
        |mem, call| {
            let (Some(name), Some(value)) =
                (bytes(mem, name, name_len), bytes(mem, value, value_len))
            else {
                return BAD_POINTER;
            };
            response_status(call.http.add_header(header_name(name), value))
        },
    )
}

fn content_length(mut cx: Cx<'_>, wsi: i32, length: i64) -> i32 {
    with_conn(&mut cx, wsi, On::Http, |call| match u64::try_from(length) {
        Ok(n) => response_status(call.http.set_content_length(Some(n))),
        Err(_) => INVALID,
    })
}

fn common_headers(
    mut cx: Cx<'_>,
    wsi: i32,
    status: i32,
    content_type: i32,
    ct_len: i32,
    length: i64,
) -> i32 {
    with_call(&mut cx, wsi, On::Http, ct_len, |mem, call| {
        let Some(content_type) = bytes(mem, content_type, ct_len) else {
            return BAD_POINTER;
        };
        let Some(code) = status_code(status) else {
            return INVALID;
        };
        let length = match length {
            UNKNOWN_LENGTH => None,
            n => match u64::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => return INVALID,
            },
        };
        let http = &mut call.http;
        response_status(
            http.begin_head(code)
                .and_then(|()| http.add_header(b"content-type", content_type))
                .and_then(|()| http.set_content_length(length)),
        )
    })
}

fn finalize(mut cx: Cx<'_>, wsi: i32) -> i32 {
    with_conn(&mut cx, wsi, On::Http, |call| {
        response_status(call.http.finalize_head())
    })
}

fn return_status(mut cx: Cx<'_>, wsi: i32, status: i32, html: i32, html_len: i32) -> i32 {
    with_call(&mut cx, wsi, On::Http, html_len, |mem, call| {
        let Some(html) = bytes(mem, html, html_len) else {
            return BAD_POINTER;
        };
        let Some(code) = status_code(status) else {
            return INVALID;
        };
        if call.http.response_started() || call.completed.is_some() || call.http.request().is_none()
        {
            return BAD_STATE;
        }
        let body;
        let html = if html.is_empty() {
            body = format!("<html><body><h1>{code}</h1></body></html>\n");
            body.as_bytes()
        } else {
            html
        };
        call.http
            .respond_simple(code, "text/html; charset=utf-8", html, false);
        call.completed = Some(call.http.finish_response());
        0
    })
}

fn on_writable(mut cx: Cx<'_>, wsi: i32) -> i32 {
    with_conn(&mut cx, wsi, On::Any, |call| {
        call.writable_requested = true;
        1
    })
}

fn transaction_completed(mut cx: Cx<'_>, wsi: i32) -> i32 {
    with_conn(&mut cx, wsi, On::Http, |call| {
        let completion = match call.completed {
            Some(done) => done,
            None => call.http.finish_response(),
        };
        call.completed = Some(completion);
        i32::from(completion == Completion::Close)
    })
}

fn uri_and_method(mut cx: Cx<'_>, wsi: i32, dst: i32, dst_len: i32) -> i32 {
    with_call(&mut cx, wsi, On::Any, dst_len, |mem, call| {
        let Some(req) = call.http.request() else {
            return BAD_STATE;
        };
        match copy_out(mem, dst, dst_len, req.path().as_bytes()) {
            n if n < 0 => n,
            _ => i32::from(req.method_index()),
        }
    })
}

fn header_value<'a>(mem: &[u8], call: &'a Call, name: i32, name_len: i32) -> Result<&'a [u8], i32> {
    let name = bytes(mem, name, name_len).ok_or(BAD_POINTER)?;
    let name = std::str::from_utf8(header_name(name)).map_err(|_| BAD_POINTER)?;
    let req = call.http.request().ok_or(BAD_STATE)?;
    req.header(name).ok_or(NOT_FOUND)
}

fn hdr_length(mut cx: Cx<'_>, wsi: i32, name: i32, name_len: i32) -> i32 {
    with_call(
        &mut cx,
        wsi,
        On::Any,
        name_len,
        |mem, call| match header_value(mem, call, name, name_len) {
            Ok(v) => v.len() as i32,
            Err(e) => e,
        },
    )
}

fn hdr_copy(mut cx: Cx<'_>, wsi: i32, dst: i32, dst_len: i32, name: i32, name_len: i32) -> i32 {
    with_call(
        &mut cx,
        wsi,
        On::Any,
        dst_len.saturating_add(name_len),
        |mem, call| match header_value(mem, call, name, name_len) {
            Ok(v) => copy_out(mem, dst, dst_len, v),
            Err(e) => e,
        },
    )
}

fn urlarg(mut cx: Cx<'_>, wsi: i32, name: i32, name_len: i32, dst: i32, dst_len: i32) -> i32 {
    with_call(
        &mut cx,
        wsi,
        On::Any,
        dst_len.saturating_add(name_len),
        |mem, call| {
            let Some(name) = bytes(mem, name, name_len) else {
                return BAD_POINTER;
            };
            let Ok(name) = std::str::from_utf8(name.strip_suffix(b"=").unwrap_or(name)) else {
                return BAD_POINTER;
            };
            let name = name.to_owned();
            let Some(req) = call.http.request() else {
                return BAD_STATE;
            };
            let (Ok(ptr), Ok(cap)) = (usize::try_from(dst), usize::try_from(dst_len)) else {
                return BAD_POINTER;
            };
            let Some(out) = ptr.checked_add(cap).and_then(|end| mem.get_mut(ptr..end)) else {
                return BAD_POINTER;
            };
            match req.query_arg(&name, out) {
                Ok(n) => n as i32,
                Err(QueryArgError::NotFound) => NOT_FOUND,
                Err(QueryArgError::TooSmall) => NO_SPACE,
            }
        },
    )
}

fn peer(mut cx: Cx<'_>, wsi: i32, dst: i32, dst_len: i32) -> i32 {
    with_call(&mut cx, wsi, On::Any, dst_len, |mem, call| {
        let text = call.peer.ip().to_string();
        copy_out(mem, dst, dst_len, text.as_bytes())
    })
}

fn is_ssl(mut cx: Cx<'_>, wsi: i32) -> i32 {
    with_conn(&mut cx, wsi, On::Any, |call| i32::from(call.tls))
}

fn log(mut cx: Cx<'_>, level: i32, msg: i32, len: i32) -> i32 {
    let logged = usize::try_from(len).unwrap_or(0).min(MAX_LOG) as u64;
    charge(
        &mut cx,
        (logged * LOG_BYTE_FUEL).min(i32::MAX as u64) as i32,
    );
    let Some(memory) = cx.data().memory else {
        return BAD_STATE;
    };
    let (mem, state) = memory.data_and_store_mut(&mut cx);
    let Some(raw) = bytes(mem, msg, len) else {
        return BAD_POINTER;
    };
    state.log_lines += 1;
    if state.log_lines > MAX_LOG_LINES {
        return 0; // counted; Instance::call reports how many were dropped
    }
    let raw = &raw[..raw.len().min(MAX_LOG)];
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end();
    let protocol = state.protocol.as_str();
    let wsi = state.call.as_ref().map_or(0, |c| c.wsi);
    match level {
        1 => tracing::error!(target: "guest", protocol, wsi, "{text}"),
        2 => tracing::warn!(target: "guest", protocol, wsi, "{text}"),
        8 => tracing::debug!(target: "guest", protocol, wsi, "{text}"),
        16 => tracing::trace!(target: "guest", protocol, wsi, "{text}"),
        _ => tracing::info!(target: "guest", protocol, wsi, "{text}"),
    }
    0
}

/// Every host function of ABI v1, once: its name, the Rust function behind
/// it, and its wasm type. Both the load-time check (`SIGNATURES`) and the
/// linker are made from this one list.
macro_rules! host_functions {
    ($( $name:literal => $func:expr, [$($param:ident),*] -> [$($result:ident),*]; )*) => {
        /// Every host function: name, parameter types, result types.
        const SIGNATURES: &[(&str, &[ValType], &[ValType])] =
            &[$( ($name, &[$($param),*], &[$($result),*]) ),*];

        /// A linker that defines every host function of ABI v1.
        pub(super) fn linker(engine: &Engine) -> Linker<HostState> {
            let mut l = Linker::new(engine);
            $(
                let defined = l.func_wrap("lws", $name, $func).is_ok();
                debug_assert!(defined, "host function {} is defined once", $name);
            )*
            l
        }
    };
}

host_functions! {
    "lws_write" => lws_write, [I32, I32, I32, I32] -> [I32];
    "lws_add_http_header_status" => add_status, [I32, I32] -> [I32];
    "lws_add_http_header_by_name" => add_header, [I32, I32, I32, I32, I32] -> [I32];
    "lws_add_http_header_content_length" => content_length, [I32, I64] -> [I32];
    "lws_add_http_common_headers" => common_headers, [I32, I32, I32, I32, I64] -> [I32];
    "lws_finalize_write_http_header" => finalize, [I32] -> [I32];
    "lws_return_http_status" => return_status, [I32, I32, I32, I32] -> [I32];
    "lws_callback_on_writable" => on_writable, [I32] -> [I32];
    "lws_http_transaction_completed" => transaction_completed, [I32] -> [I32];
    "lws_http_get_uri_and_method" => uri_and_method, [I32, I32, I32] -> [I32];
    "lws_hdr_custom_length" => hdr_length, [I32, I32, I32] -> [I32];
    "lws_hdr_custom_copy" => hdr_copy, [I32, I32, I32, I32, I32] -> [I32];
    "lws_get_urlarg_by_name_safe" => urlarg, [I32, I32, I32, I32, I32] -> [I32];
    "lws_get_peer_simple" => peer, [I32, I32, I32] -> [I32];
    "lws_is_ssl" => is_ssl, [I32] -> [I32];
    "lws_now_usecs" => |cx: Cx<'_>| cx.data().now_us, [] -> [I64];
    "lws_log" => log, [I32, I32, I32] -> [I32];
    "lws_is_first_fragment" => is_first_fragment, [I32] -> [I32];
    "lws_is_final_fragment" => is_final_fragment, [I32] -> [I32];
    "lws_frame_is_binary" => frame_is_binary, [I32] -> [I32];
    "lws_remaining_packet_payload" => remaining_payload, [I32] -> [I32];
    "wasmgate_fragment" => fragment, [I32] -> [I64];
    "wasmgate_receive_next" => receive_next, [I32] -> [I32];
    "lws_close_reason" => close_reason, [I32, I32, I32, I32] -> [I32];
    "lws_rx_flow_control" => rx_flow_control, [I32, I32] -> [I32];
    "lws_callback_on_writable_all_protocol" => writable_all, [] -> [I32];
    "lws_set_timer_usecs" => set_timer, [I32, I64] -> [I32];
    "lws_client_connect_via_info" => client_connect, [I32] -> [I32];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_out_checks_bounds_and_space() {
        let mut mem = [0u8; 16];
        assert_eq!(copy_out(&mut mem, 4, 8, b"abc"), 3);
        assert_eq!(&mem[4..8], b"abc\0");
        assert_eq!(copy_out(&mut mem, 4, 2, b"abc"), NO_SPACE);
        assert_eq!(copy_out(&mut mem, 12, 8, b"abc"), BAD_POINTER);
        assert_eq!(copy_out(&mut mem, -1, 2, b"a"), BAD_POINTER);
        assert_eq!(copy_out(&mut mem, i32::MAX, i32::MAX, b"a"), BAD_POINTER);
    }

    #[test]
    fn fragment_packs_the_flags_and_the_remaining_bytes() {
        use super::super::Fragment;
        let f = |first, last, binary, remaining| Fragment {
            first,
            last,
            binary,
            remaining,
            more: false,
        };
        assert_eq!(pack_fragment(f(false, false, false, 0)), 0);
        assert_eq!(pack_fragment(f(true, false, false, 0)), FRAGMENT_FIRST);
        assert_eq!(
            pack_fragment(f(false, true, true, 0)),
            FRAGMENT_FINAL | FRAGMENT_BINARY
        );
        assert_eq!(pack_fragment(f(true, true, false, 300)), 300 << 8 | 3);
        let huge = pack_fragment(f(true, true, true, u64::MAX));
        assert!(huge > 0, "never negative: negative is an error");
        assert_eq!(huge & 0xff, 7);
        assert_eq!(huge >> 8, (1 << 55) - 1);
        let more = Fragment {
            more: true,
            ..f(true, true, false, 0)
        };
        assert_eq!(pack_fragment(more), FRAGMENT_MORE | 3);
        assert_eq!(cell_word(more), FRAGMENT_MORE | FRAGMENT_PRESENT | 3);
    }

    #[test]
    fn bytes_rejects_ranges_outside_memory() {
        let mem = [1u8; 8];
        assert_eq!(bytes(&mem, 0, 8), Some(&mem[..]));
        assert_eq!(bytes(&mem, 1, 8), None);
        assert_eq!(bytes(&mem, 0, -1), None);
        assert_eq!(bytes(&mem, -4, 2), None);
    }

    #[test]
    fn a_module_importing_every_host_function_with_its_listed_type_loads() {
        // The listed wasm types must be the Rust functions' types: a mismatch
        // fails the instantiation inside `Guest::load`.
        let ty = |tys: &[ValType]| {
            tys.iter()
                .map(|t| if *t == I64 { "i64" } else { "i32" })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let imports: String = SIGNATURES
            .iter()
            .map(|(name, params, results)| {
                format!(
                    r#"(import "lws" "{name}" (func (param {}) (result {})))"#,
                    ty(params),
                    ty(results)
                )
            })
            .collect();
        let wat = format!(
            r#"(module {imports}
                (memory (export "memory") 1)
                (data (i32.const 0) "\01\00\00\00\00\01\00\00\00\02\00\00\00\04\00\00\08\00\00\00\04\00\00\00\00\03\00\00\03\00\00\00")
                (data (i32.const 768) "all")
                (func (export "wasmgate_protocol") (result i32) (i32.const 0))
                (func (export "callback") (param i32 i32 i32 i32 i32) (result i32) (i32.const 0)))"#
        );
        let wasm = wat::parse_str(wat).expect("test WAT parses");
        let engine = super::super::Guest::engine();
        super::super::Guest::load(&engine, "all", &wasm, crate::config::GuestLimits::DEFAULT)
            .expect("every listed host function links with its listed type");
    }
}
