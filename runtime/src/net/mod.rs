//! Network drivers: they own the sockets and the clock, and move bytes between
//! sockets and a [`Context`](crate::Context). No protocol logic lives here.
//!
//! [`smol::SmolDriver`] runs smoltcp over any `phy::Device`: the device's own
//! network and the simulator's default. [`os::OsDriver`] uses the host's TCP
//! sockets (mio): the fast path for a Linux gateway and the simulator's
//! `--net host` mode.

pub mod os;
pub mod smol;
pub mod sockets;

pub use os::OsDriver;
pub use smol::SmolDriver;
