//! wasmgate: an IoT device runtime. The network stack (TCP/IP, HTTP/1.1) is
//! native and trusted; what the device does on each protocol lives in small
//! WebAssembly guest modules, called the way libwebsockets calls its protocol
//! callbacks.
//!
//! Layers, bottom to top (see `docs/architecture.md`): [`net`] drivers own the
//! sockets, [`tls`] encrypts what they carry, [`http`] turns bytes into
//! requests and responses, [`guest`] runs the modules, and [`Context`] ties
//! them together in one loop.

pub mod admin;
pub mod config;
pub mod context;
pub mod guest;
pub mod http;
pub mod net;
pub mod store;
pub mod tls;
pub mod ws;

pub use config::Config;
pub use context::Context;
