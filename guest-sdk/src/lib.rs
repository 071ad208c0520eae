//! `wasmgate-guest`: the SDK for wasmgate guest modules (`wasm32-unknown-unknown`,
//! `no_std`, no allocator). A guest serves one lws protocol through guest ABI v1
//! (`docs/abi.md`); `docs/sdk.md` is the guide.
//!
//! Two layers over the same ABI:
//!
//! - **lws-shaped** ([`lws`], [`log`], [`export_lws_callback!`]): one callback
//!   `fn(Wsi, Reason, Option<&mut Pss>, &[u8]) -> i32` and the lws calls by their
//!   C names, for porting libwebsockets code line by line.
//! - **idiomatic** ([`http`], [`export_http!`]): an [`HttpHandler`] trait with one
//!   method per event and a [`Request`] with `respond_json`, `respond_html`, and
//!   streaming helpers; for WebSocket servers and clients ([`ws`],
//!   [`export_ws!`]), a [`WsHandler`] trait and a [`Ws`] handle with
//!   `send_text`, `send`, `close`, rx flow control, a timer (`set_timer`, then
//!   `on_timer`) and `Ws::connect` ([`ClientConnectInfo`]) for client connections;
//!   [`EchoQueue`] ([`echo`]) is a session that echoes every message back
//!   through a bounded queue with rx flow control.
//!
//! A whole guest (its `lib.rs` also says `#![no_std]`):
//!
//! ```
//! use wasmgate_guest::{Flow, HttpHandler, Method, Request};
//!
//! struct Hello;
//!
//! impl HttpHandler for Hello {
//!     type Session = ();
//!     fn on_request(req: &mut Request<'_, ()>, _path: &str) -> Flow {
//!         match req.method() {
//!             Method::Get | Method::Head => req.respond_html(200, "<h1>hello</h1>"),
//!             _ => req.return_status(405, "GET only"),
//!         }
//!     }
//! }
//!
//! wasmgate_guest::export_http!(Hello, name = "hello", rx_buffer_size = 128, max_sessions = 4);
//! ```
//!
//! `unsafe` lives only in [`abi`]; guest code needs none. Off wasm32 the host
//! imports are stubs that answer `BAD_STATE`, so the SDK and a guest's logic
//! build and unit-test on the host.

#![no_std]

pub mod abi;
pub mod echo;
pub mod http;
pub mod log;
pub mod lws;
mod macros;
pub mod ws;

pub use abi::GuestCell;
pub use echo::EchoQueue;
pub use http::{Flow, HttpHandler, Request};
pub use log::{FmtBuf, LogLevel, Lossy};
pub use lws::{ClientConnectInfo, Error, Method, Reason, WriteMode, Wsi};
pub use ws::{Fragment, MessageKind, Ws, WsHandler};

/// Logs the panic (see [`log`]) and traps: the runtime then answers `500` (or
/// closes the connection) and retires the instance.
#[cfg(all(feature = "panic-handler", target_arch = "wasm32"))]
#[panic_handler]
fn on_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    log::log_panic(info);
    core::arch::wasm32::unreachable()
}
