//! The export macros (`export_lws_callback!`, `export_http!`, `export_ws!`):
//! they declare a guest's statics (receive buffer, session
//! region, descriptor) and its exports, `callback`, `wasmgate_protocol` and,
//! where the reasons the guest handles are known, `wasmgate_wants`;
//! `export_ws!` and `export_lws_callback!` also `wasmgate_fragment_cell`.
//! Everything they emit exists only on wasm32.

/// Exports an lws-shaped callback, as a C guest registers a `struct lws_protocols`
/// entry:
///
/// ```
/// use wasmgate_guest::lws::{Reason, Wsi};
///
/// #[derive(Clone, Copy, Default)]
/// struct Pss { bytes: usize }
///
/// fn callback_http(wsi: Wsi, reason: Reason, user: Option<&mut Pss>, input: &[u8]) -> i32 {
///     0
/// }
///
/// wasmgate_guest::export_lws_callback!(
///     callback_http,
///     name = "http",
///     rx_buffer_size = 1024,
///     session = Pss,
///     max_sessions = 8,
/// );
/// ```
///
/// - `callback`: a `fn(Wsi, Reason, Option<&mut S>, &[u8]) -> i32` (or closure):
///   lws's `(wsi, reason, user, in, len)`, 0 to go on, non-zero to close.
/// - `name`: the protocol name (`&'static str`).
/// - `rx_buffer_size`: bytes of the receive buffer, at least 128; body pieces
///   are at most this long.
/// - `session`: the per-session data type `S` (`Default + Copy`), `()` for none;
///   `per_session_data_size` is `size_of::<S>()`, as `sizeof(struct pss)` in C.
///   `user` is `Some` for connection events, `None` for `PROTOCOL_INIT`/`DESTROY`,
///   and holds `S::default()` again at every `HTTP_BIND_PROTOCOL` (a new
///   request), `FILTER_PROTOCOL_CONNECTION` (a new WebSocket connection) and
///   `CLIENT_ESTABLISHED` / `CLIENT_CONNECTION_ERROR` (the first event of a
///   client connection).
/// - `max_sessions`: slots in the session region: requests (or WebSocket
///   connections) served at once.
/// - `reasons` (optional): `[Reason::Http, ...]`, the reasons the callback
///   acts on. The macro then exports `wasmgate_wants` so that the runtime
///   makes no other callback, as if the callback had returned 0 for it
///   (`docs/abi.md`, "Reasons a guest handles"). List every reason whose
///   handling does anything, returning non-zero included. When `session` is
///   not `()`, the reasons that bring a fresh session (`HTTP_BIND_PROTOCOL`,
///   `FILTER_PROTOCOL_CONNECTION`, `CLIENT_ESTABLISHED`,
///   `CLIENT_CONNECTION_ERROR`) are added: the glue writes `S::default()`
///   there. Without `reasons` every callback is made, as in lws.
///
/// When several WebSocket messages arrive in one read, the callback is called
/// with `Reason::Receive` (or `Reason::ClientReceive`) for each piece, in
/// order, in one entry into the guest, as lws calls it for each frame of a
/// read: the macro exports `wasmgate_fragment_cell`, and after a piece the
/// callback returned 0 for, it takes the next with `wasmgate_receive_next`
/// while the host has one (`docs/abi.md`, "Several pieces per entry"). A
/// non-zero return, `lws_rx_flow_control(wsi, false)` or a client connection
/// asked for ends the taking. With `reasons` that name neither `Receive` nor
/// `ClientReceive` nothing is taken, and a release build does not import
/// `wasmgate_receive_next`.
///
/// ```
/// use wasmgate_guest::lws::{Reason, Wsi};
///
/// fn callback_hello(wsi: Wsi, reason: Reason, _: Option<&mut ()>, _: &[u8]) -> i32 {
///     0
/// }
///
/// wasmgate_guest::export_lws_callback!(
///     callback_hello,
///     name = "hello",
///     rx_buffer_size = 128,
///     session = (),
///     max_sessions = 8,
///     reasons = [Reason::Http],
/// );
/// ```
#[macro_export]
macro_rules! export_lws_callback {
    (
        $callback:expr,
        name = $name:expr,
        rx_buffer_size = $rx:expr,
        session = $session:ty,
        max_sessions = $max:expr $(,)?
    ) => {
        $crate::__export_lws_callback!($callback, $name, $rx, $session, $max, true);
    };
    (
        $callback:expr,
        name = $name:expr,
        rx_buffer_size = $rx:expr,
        session = $session:ty,
        max_sessions = $max:expr,
        reasons = [$($reason:expr),* $(,)?] $(,)?
    ) => {
        $crate::__export_lws_callback!($callback, $name, $rx, $session, $max, {
            const PIECES: bool =
                $crate::abi::takes_pieces($crate::abi::reason_mask(&[$($reason),*]));
            PIECES
        });
        $crate::__export_wants!($crate::abi::lws_wanted::<$session>(&[$($reason),*]));
    };
}

/// What [`export_lws_callback!`] emits: the protocol, taking the pieces
/// behind a `RECEIVE` in its entry when `$pieces`, and the fragment cell.
/// Not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_lws_callback {
    ($callback:expr, $name:expr, $rx:expr, $session:ty, $max:expr, $pieces:expr) => {
        $crate::__export_protocol!(
            $name,
            $rx,
            $session,
            $max,
            $pieces,
            |wsi, reason, user, rx| ($callback)(wsi, reason, user, rx.input())
        );
        $crate::__export_fragment_cell!();
    };
}

/// Exports an [`HttpHandler`](crate::http::HttpHandler):
///
/// ```
/// # struct MyHandler;
/// # impl wasmgate_guest::HttpHandler for MyHandler {
/// #     type Session = ();
/// #     fn on_request(req: &mut wasmgate_guest::Request<'_, ()>, _: &str) -> wasmgate_guest::Flow {
/// #         req.respond_json(200, "{}")
/// #     }
/// # }
/// wasmgate_guest::export_http!(MyHandler, name = "http", rx_buffer_size = 1024, max_sessions = 8);
/// ```
///
/// `name`, `rx_buffer_size` and `max_sessions` mean what they mean for
/// [`export_lws_callback!`]; the session type is the handler's `Session`.
#[macro_export]
macro_rules! export_http {
    (
        $handler:ty,
        name = $name:expr,
        rx_buffer_size = $rx:expr,
        max_sessions = $max:expr $(,)?
    ) => {
        $crate::__export_protocol!(
            $name,
            $rx,
            $crate::http::Slot<<$handler as $crate::http::HttpHandler>::Session>,
            $max,
            false,
            $crate::http::dispatch::<$handler>
        );
        $crate::__export_wants!($crate::http::WANTED);
    };
}

/// Exports a [`WsHandler`](crate::ws::WsHandler), a WebSocket protocol (server,
/// client, or both):
///
/// ```
/// use wasmgate_guest::{Flow, Fragment, Ws, WsHandler};
///
/// struct Echo;
///
/// impl WsHandler for Echo {
///     type Session = ();
///     fn on_receive(ws: &mut Ws, _: &mut (), piece: &[u8], fragment: Fragment) -> Flow {
///         match ws.send(fragment.kind(), piece, fragment.first, fragment.last) {
///             Ok(()) => Flow::Continue,
///             Err(_) => ws.close(1011, "tx buffer full"),
///         }
///     }
/// }
///
/// wasmgate_guest::export_ws!(Echo, name = "echo", rx_buffer_size = 1024, max_sessions = 4);
/// ```
///
/// `name`, `rx_buffer_size` and `max_sessions` mean what they mean for
/// [`export_lws_callback!`]: `name` is what listeners list in `websocket = [...]`
/// (and a `[[client]]`'s `protocol`), received pieces are at most
/// `rx_buffer_size` bytes, and `max_sessions` is the number of connections
/// served at once, server and client alike. The session type is the handler's
/// `Session`, stored as is (`per_session_data_size` is its size), fresh at
/// every `FILTER_PROTOCOL_CONNECTION` and at a client connection's first event.
/// Besides `callback`, `wasmgate_protocol` and `wasmgate_wants`, it exports
/// `wasmgate_fragment_cell`, so that the host writes where each received
/// piece sits and `on_receive` costs no host call to learn it
/// (see [`abi::FRAGMENT_PRESENT`](crate::abi::FRAGMENT_PRESENT) and
/// `docs/abi.md`). When the host holds more pieces behind the one delivered
/// (several messages in one read), `on_receive` is called for each in the
/// same entry into the guest (`wasmgate_receive_next`), in order, until it
/// returns anything but [`Flow::Continue`](crate::Flow::Continue), pauses
/// receiving, or none is ready; the handler sees one call per piece either way.
#[macro_export]
macro_rules! export_ws {
    (
        $handler:ty,
        name = $name:expr,
        rx_buffer_size = $rx:expr,
        max_sessions = $max:expr $(,)?
    ) => {
        $crate::__export_protocol!(
            $name,
            $rx,
            <$handler as $crate::ws::WsHandler>::Session,
            $max,
            true,
            $crate::ws::dispatch::<$handler>
        );
        $crate::__export_wants!($crate::ws::WANTED);
        $crate::__export_fragment_cell!();
    };
}

/// The `wasmgate_fragment_cell() -> i32` export: where the host writes the
/// fragment word of each received piece. Not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_fragment_cell {
    () => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)] // reason: exports need `#[no_mangle]`
        const _: () = {
            #[unsafe(no_mangle)]
            extern "C" fn wasmgate_fragment_cell() -> i32 {
                $crate::abi::fragment_cell()
            }
        };
    };
}

/// What the export macros emit. Not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_protocol {
    ($name:expr, $rx:expr, $session:ty, $max:expr, $pieces:expr, $dispatch:expr) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)] // reason: exports need `#[no_mangle]`; `dispatch`'s contract is met below
        const _: () = {
            static RX: $crate::abi::RxBuffer<{ $rx }> = $crate::abi::RxBuffer::new();
            static SESSIONS: $crate::abi::Sessions<$session, { $max }> =
                $crate::abi::Sessions::new();
            static DESCRIPTOR: $crate::abi::GuestCell<$crate::abi::ProtocolDescriptor> =
                $crate::abi::GuestCell::new($crate::abi::ProtocolDescriptor::ZERO);

            #[unsafe(no_mangle)]
            extern "C" fn callback(wsi: i32, reason: i32, user: i32, input: i32, len: i32) -> i32 {
                // SAFETY: only the host calls this export, and it never re-enters
                // the guest, so no other `dispatch` runs at the same time.
                unsafe {
                    $crate::abi::dispatch(
                        &RX,
                        &SESSIONS,
                        [wsi, reason, user, input, len],
                        $pieces,
                        $dispatch,
                    )
                }
            }

            #[unsafe(no_mangle)]
            extern "C" fn wasmgate_protocol() -> i32 {
                $crate::abi::describe(&DESCRIPTOR, $name, &RX, &SESSIONS)
            }
        };
    };
}

/// The `wasmgate_wants(reason) -> i32` export, from a constant `u128` with
/// one bit per reason number (`abi::reason_mask`): 1 for the reasons the
/// guest handles. Not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_wants {
    ($mask:expr) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)] // reason: exports need `#[no_mangle]`
        const _: () = {
            #[unsafe(no_mangle)]
            extern "C" fn wasmgate_wants(reason: i32) -> i32 {
                const WANTED: u128 = $mask;
                i32::from($crate::abi::in_mask(WANTED, reason))
            }
        };
    };
}
