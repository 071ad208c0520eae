//! Device configuration: listeners, protocols (guest modules), mounts and limits.
//! Plain data with small, documented defaults; the simulator fills it from TOML.

use std::time::Duration;

use crate::http;

/// Everything a [`Context`](crate::Context) needs to run a device.
#[derive(Debug, Clone)]
pub struct Config {
    /// Device name, shown in logs and by guests that ask.
    pub name: String,
    /// Listening ports and what they serve.
    pub listeners: Vec<Listener>,
    /// Protocols: a name and the guest module that implements it.
    pub protocols: Vec<Protocol>,
    /// Connection table size and HTTP limits.
    pub limits: Limits,
    /// Limits applied to every guest instance.
    pub guest: GuestLimits,
    /// The admin API (module upload, status); `None` disables it.
    pub admin: Option<crate::admin::AdminConfig>,
    /// WebSocket client connections the device opens at start.
    pub clients: Vec<Client>,
    /// The CA certificates TLS client connections trust (lws's
    /// `client_ssl_ca_mem`); `None` trusts none, so only a self-signed server
    /// allowed by `allow_self_signed` can pass.
    pub trust: Option<crate::tls::TrustAnchors>,
}

/// A WebSocket client connection the device opens at start (and reopens with
/// backoff, if asked to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Name used in logs.
    pub name: String,
    /// The device protocol whose guest gets the connection's callbacks.
    pub protocol: String,
    /// Where to connect.
    pub target: ClientTarget,
    /// Reconnect with backoff (1 s doubling to 60 s, with jitter) when the
    /// connection fails or closes.
    pub reconnect: bool,
}

/// The far end of a WebSocket client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTarget {
    /// Host name or IP address.
    pub address: String,
    /// TCP port.
    pub port: u16,
    /// Request path.
    pub path: String,
    /// `Host` header (`None`: `address:port`).
    pub host: Option<String>,
    /// `Origin` header.
    pub origin: Option<String>,
    /// `Sec-WebSocket-Protocol` to ask for.
    pub ws_protocol: Option<String>,
    /// Connect with TLS (`wss://`), checking the server's certificate as
    /// these options say; `None` for a plain `ws://` connection.
    pub tls: Option<crate::tls::ClientTlsOptions>,
}

/// A listening port and the protocols mounted on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Name used in logs and errors (`[[listener]] name`).
    pub name: String,
    /// TCP port on the device.
    pub port: u16,
    /// URL path prefix -> protocol name. The longest matching prefix wins; a
    /// request no mount matches is answered `404`.
    pub mounts: Vec<Mount>,
    /// Protocols a WebSocket upgrade may ask for (`Sec-WebSocket-Protocol`).
    pub websocket: Vec<String>,
    /// The protocol of an upgrade that names none (lws's `default` pvo).
    pub default_websocket: Option<String>,
    /// Serve HTTPS and WSS with these certificates; `None` for plain HTTP.
    pub tls: Option<crate::tls::ServerTls>,
}

/// A URL path prefix served by a protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Prefix such as `/` or `/api`; matches whole path segments (`/api` matches
    /// `/api` and `/api/x`, not `/apix`).
    pub prefix: String,
    /// Name of a [`Protocol`].
    pub protocol: String,
}

/// A protocol (one lws `struct lws_protocols` entry) and what implements it.
#[derive(Debug, Clone)]
pub struct Protocol {
    /// Protocol name (`http`, `echo-protocol`, ...).
    pub name: String,
    /// The guest module, or a handler compiled into the runtime.
    pub handler: Handler,
}

/// What implements a protocol.
#[derive(Clone)]
pub enum Handler {
    /// A guest module's WebAssembly bytes.
    Wasm(Vec<u8>),
    /// A handler compiled into the runtime (built-in protocols, benchmarks):
    /// the factory is called once when the context starts.
    Native(fn() -> Box<dyn crate::context::NativeProtocol>),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Wasm(bytes) => write!(f, "Wasm({} bytes)", bytes.len()),
            Self::Native(_) => f.write_str("Native"),
        }
    }
}

/// The most connections a context can hold (connection ids keep 16 bits for
/// the table index).
pub const MAX_CONNECTIONS: usize = 65_535;

/// Connection-level limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, all listeners together. Default 8: a small SoC's
    /// lwIP has a handful of sockets (`MEMP_NUM_NETCONN`). Past it, new
    /// connections get `503` with `Retry-After` and are closed.
    pub max_connections: usize,
    /// Time a guest may hold a request without progress (no callback that
    /// returned, no response bytes sent) before the runtime gives up on it:
    /// `504` if nothing was answered yet, otherwise the connection is closed.
    /// Default 30 s.
    pub response_timeout: Duration,
    /// Per-connection HTTP limits (head size, header count, body size, timeouts).
    pub http: http::Limits,
    /// Per-connection WebSocket limits (frame and message size, buffers,
    /// keepalive).
    pub ws: crate::ws::Limits,
    /// Time a TLS handshake may take, from accept (or from the TCP connect
    /// of a client connection). Default 10 s.
    pub tls_handshake_timeout: Duration,
}

impl Limits {
    /// The defaults of a small device.
    pub const DEFAULT: Limits = Limits {
        max_connections: 8,
        response_timeout: Duration::from_secs(30),
        http: http::Limits::DEFAULT,
        ws: crate::ws::Limits::DEFAULT,
        tls_handshake_timeout: crate::tls::HANDSHAKE_TIMEOUT,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What happens to a guest instance after one of its callbacks traps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnTrap {
    /// The instance takes no new connections; a fresh instance of the same
    /// module serves them, and the old one is dropped when its last connection
    /// ends. A trap can leave the guest's memory half-updated: this is the safe
    /// default.
    #[default]
    Reinstantiate,
    /// Keep using the same instance.
    Keep,
}

/// Limits applied to every guest instance. Fuel and the memory limit are always on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimits {
    /// Fuel (roughly, WebAssembly instructions) one callback may use before it is
    /// stopped as a runaway. Default 5,000,000 (a few milliseconds).
    pub fuel_per_callback: u64,
    /// Linear memory pages (64 KiB each) an instance may have. Default 4 (256 KiB).
    pub max_memory_pages: u32,
    /// Largest `rx_buffer_size` a guest may declare, in bytes. Default 4096.
    pub max_rx_buffer_size: u32,
    /// Largest `per_session_data_size` a guest may declare, in bytes. Default 4096.
    pub max_session_data_size: u32,
    /// Elements a guest's function table may have (tables live on the host's
    /// heap, so they are limited like memory). Default 4096.
    pub max_table_elements: u32,
    /// What a trap does to the instance.
    pub on_trap: OnTrap,
}

impl GuestLimits {
    /// The defaults of a small device.
    pub const DEFAULT: GuestLimits = GuestLimits {
        fuel_per_callback: 5_000_000,
        max_memory_pages: 4,
        max_rx_buffer_size: 4096,
        max_session_data_size: 4096,
        max_table_elements: 4096,
        on_trap: OnTrap::Reinstantiate,
    };
}

impl Default for GuestLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A configuration that cannot run, with the part of it that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// Two protocols share a name.
    DuplicateProtocol(String),
    /// A mount names a protocol that is not configured.
    UnknownProtocol { listener: String, protocol: String },
    /// A mount prefix does not start with `/`.
    BadMountPrefix { listener: String, prefix: String },
    /// Two listeners use one port.
    DuplicatePort(u16),
    /// `max_connections` is 0.
    NoConnections,
    /// `max_connections` is more than [`MAX_CONNECTIONS`].
    TooManyConnections(usize),
    /// A client asks for TLS in a runtime built without it.
    TlsUnavailable { client: String },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DuplicateProtocol(name) => write!(f, "protocol `{name}` is configured twice"),
            Self::UnknownProtocol { listener, protocol } => {
                write!(
                    f,
                    "listener `{listener}` mounts unknown protocol `{protocol}`"
                )
            }
            Self::BadMountPrefix { listener, prefix } => write!(
                f,
                "listener `{listener}`: mount prefix `{prefix}` must start with `/`"
            ),
            Self::DuplicatePort(port) => write!(f, "two listeners use port {port}"),
            Self::NoConnections => write!(f, "limits.max_connections must be at least 1"),
            Self::TooManyConnections(n) => write!(
                f,
                "limits.max_connections is {n}; at most {MAX_CONNECTIONS} are supported"
            ),
            Self::TlsUnavailable { client } => write!(
                f,
                "client `{client}` asks for TLS, but this runtime was built without it"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks the parts of the config that refer to each other.
    ///
    /// # Errors
    ///
    /// The first inconsistency found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.limits.max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        if self.limits.max_connections > MAX_CONNECTIONS {
            return Err(ConfigError::TooManyConnections(self.limits.max_connections));
        }
        for (i, p) in self.protocols.iter().enumerate() {
            if self.protocols[..i].iter().any(|q| q.name == p.name) {
                return Err(ConfigError::DuplicateProtocol(p.name.clone()));
            }
        }
        for c in &self.clients {
            if !self.protocols.iter().any(|p| p.name == c.protocol) {
                return Err(ConfigError::UnknownProtocol {
                    listener: format!("client {}", c.name),
                    protocol: c.protocol.clone(),
                });
            }
            if c.target.tls.is_some() && !crate::tls::ENABLED {
                return Err(ConfigError::TlsUnavailable {
                    client: c.name.clone(),
                });
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.port != 0 && self.listeners[..i].iter().any(|o| o.port == l.port) {
                return Err(ConfigError::DuplicatePort(l.port));
            }
            for name in l.websocket.iter().chain(&l.default_websocket) {
                if !self.protocols.iter().any(|p| p.name == *name) {
                    return Err(ConfigError::UnknownProtocol {
                        listener: l.name.clone(),
                        protocol: name.clone(),
                    });
                }
            }
            for m in &l.mounts {
                if !m.prefix.starts_with('/') {
                    return Err(ConfigError::BadMountPrefix {
                        listener: l.name.clone(),
                        prefix: m.prefix.clone(),
                    });
                }
                if !self.protocols.iter().any(|p| p.name == m.protocol) {
                    return Err(ConfigError::UnknownProtocol {
                        listener: l.name.clone(),
                        protocol: m.protocol.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Listener {
    /// The mount serving `path`: the longest prefix that matches whole segments.
    pub fn mount_for(&self, path: &str) -> Option<&Mount> {
        self.mounts
            .iter()
            .filter(|m| prefix_matches(&m.prefix, path))
            .max_by_key(|m| m.prefix.len())
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(prefixes: &[&str]) -> Listener {
        Listener {
            name: "main".into(),
            port: 80,
            mounts: prefixes
                .iter()
                .map(|p| Mount {
                    prefix: (*p).into(),
                    protocol: format!("proto{p}"),
                })
                .collect(),
            websocket: Vec::new(),
            default_websocket: None,
            tls: None,
        }
    }

    #[test]
    fn longest_mount_prefix_wins_on_segment_boundaries() {
        let l = listener(&["/", "/api", "/api/v2/"]);
        assert_eq!(l.mount_for("/").unwrap().prefix, "/");
        assert_eq!(l.mount_for("/index.html").unwrap().prefix, "/");
        assert_eq!(l.mount_for("/api").unwrap().prefix, "/api");
        assert_eq!(l.mount_for("/api/x").unwrap().prefix, "/api");
        assert_eq!(l.mount_for("/apix").unwrap().prefix, "/");
        assert_eq!(l.mount_for("/api/v2/y").unwrap().prefix, "/api/v2/");
    }

    #[test]
    fn no_mount_no_match() {
        let l = listener(&["/api"]);
        assert!(l.mount_for("/").is_none());
        assert!(l.mount_for("/other").is_none());
    }
}
