//! The host simulator: a device config in TOML, turned into a running
//! [`wasmgate::Context`] served on 127.0.0.1. The `wasmgate` binary is a thin
//! command line over this.

pub mod flash;
pub mod net;
pub mod tls;
pub mod tools;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use wasmgate::admin::AdminConfig;
use wasmgate::config::{GuestLimits, Handler, Limits, Listener, Mount, OnTrap, Protocol};
use wasmgate::http;

/// The built-in default device, as TOML.
pub const DEFAULT_DEVICE: &str = include_str!("default-device.toml");

/// A device config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFile {
    device: DeviceSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    guest: GuestSection,
    #[serde(default, rename = "protocol")]
    protocols: Vec<ProtocolSection>,
    #[serde(default, rename = "listener")]
    listeners: Vec<ListenerSection>,
    admin: Option<AdminSection>,
    #[serde(default, rename = "client")]
    clients: Vec<ClientSection>,
    tls: Option<tls::TlsSection>,
    #[serde(default)]
    network: NetworkSection,
}

/// `[network]`: the simulated network (`--net smoltcp`; the host-socket
/// mode ignores it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NetworkSection {
    /// The device takes its address by DHCP from the gateway.
    dhcp: bool,
    /// The device has an IPv6 address too.
    ipv6: bool,
    /// Device port on the gateway -> host address (`8080 = "127.0.0.1:8080"`).
    relay: BTreeMap<String, String>,
    /// Unmapped gateway ports go to the host's loopback.
    host_loopback: bool,
    /// Extra DNS names: `"gateway"` or an IP address.
    dns: BTreeMap<String, String>,
    /// Link faults, as `--link` takes them.
    link: Option<String>,
}

impl Default for NetworkSection {
    fn default() -> Self {
        let d = net::NetworkSettings::default();
        NetworkSection {
            dhcp: d.dhcp,
            ipv6: d.ipv6,
            relay: BTreeMap::new(),
            host_loopback: d.host_loopback,
            dns: BTreeMap::new(),
            link: None,
        }
    }
}

impl NetworkSection {
    /// The settings, or the key at fault and why.
    fn settings(self) -> Result<net::NetworkSettings, (String, String)> {
        let mut relay = BTreeMap::new();
        for (port, target) in self.relay {
            let key = format!("network.relay.{port}");
            let port: u16 = port
                .parse()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| (key.clone(), "the key is a port, 1 to 65535".to_string()))?;
            let target: SocketAddr = target.parse().map_err(|_| {
                (
                    key.clone(),
                    format!("`{target}` is not a host address and port such as \"127.0.0.1:8080\""),
                )
            })?;
            relay.insert(port, target);
        }
        let mut dns = net::default_dns();
        for (name, value) in self.dns {
            let key = format!("network.dns.\"{name}\"");
            let clean = name.trim_end_matches('.').to_ascii_lowercase();
            if clean.is_empty()
                || clean.split('.').any(|l| l.is_empty() || l.len() > 63)
                || clean.len() > 253
            {
                return Err((key, "not a DNS name".into()));
            }
            let addrs = match value.as_str() {
                "gateway" => vec![IpAddr::V4(net::GATEWAY_V4), IpAddr::V6(net::GATEWAY_V6)],
                other => vec![other.parse::<IpAddr>().map_err(|_| {
                    (
                        key.clone(),
                        format!("`{other}` is neither \"gateway\" nor an IP address"),
                    )
                })?],
            };
            dns.insert(clean, addrs);
        }
        let link = match self.link {
            None => net::LinkFaults::NONE,
            Some(spec) => spec.parse().map_err(|e: net::link::LinkSpecError| {
                ("network.link".to_string(), e.to_string())
            })?,
        };
        Ok(net::NetworkSettings {
            dhcp: self.dhcp,
            ipv6: self.ipv6,
            relay,
            host_loopback: self.host_loopback,
            dns,
            link,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientSection {
    name: String,
    /// The device protocol whose guest gets the callbacks.
    protocol: String,
    address: String,
    port: u16,
    #[serde(default = "root_path")]
    path: String,
    host: Option<String>,
    origin: Option<String>,
    /// `Sec-WebSocket-Protocol` to ask for.
    ws_protocol: Option<String>,
    #[serde(default)]
    reconnect: bool,
    /// Connect with TLS (`wss://`), trusting `[tls] ca`.
    #[serde(default)]
    tls: bool,
    /// With `tls`: accept a self-signed server certificate.
    #[serde(default)]
    allow_self_signed: bool,
    /// With `tls`: accept a certificate for another name.
    #[serde(default)]
    skip_hostname_check: bool,
}

fn root_path() -> String {
    "/".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminSection {
    token: String,
    #[serde(default)]
    development_mode: bool,
    #[serde(default)]
    keys: Vec<String>,
    max_module_bytes: Option<usize>,
    store_bytes: Option<u64>,
    listener: Option<String>,
    trial_callbacks: Option<u32>,
    trial_max_faults: Option<u32>,
    drain_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceSection {
    name: String,
    /// Folder of the device's flash (the module store), relative to the config
    /// file. Default `.wasmgate-flash`.
    flash: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsSection {
    max_connections: usize,
    max_head_bytes: usize,
    max_headers: usize,
    max_uri_bytes: usize,
    max_body_bytes: u64,
    tx_buffer_bytes: usize,
    head_timeout_ms: u64,
    body_timeout_ms: u64,
    idle_timeout_ms: u64,
    response_timeout_ms: u64,
    ws_max_frame_bytes: u64,
    ws_max_message_bytes: u64,
    ws_tx_buffer_bytes: usize,
    ws_ping_interval_ms: u64,
    ws_pong_timeout_ms: u64,
    tls_handshake_timeout_ms: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let l = Limits::DEFAULT;
        let h = l.http;
        LimitsSection {
            max_connections: l.max_connections,
            max_head_bytes: h.max_head_bytes,
            max_headers: h.max_headers,
            max_uri_bytes: h.max_uri_bytes,
            max_body_bytes: h.max_body_bytes,
            tx_buffer_bytes: h.tx_buffer_bytes,
            head_timeout_ms: h.head_timeout.as_millis() as u64,
            body_timeout_ms: h.body_timeout.as_millis() as u64,
            idle_timeout_ms: h.idle_timeout.as_millis() as u64,
            response_timeout_ms: l.response_timeout.as_millis() as u64,
            ws_max_frame_bytes: l.ws.max_frame_bytes,
            ws_max_message_bytes: l.ws.max_message_bytes,
            ws_tx_buffer_bytes: l.ws.tx_buffer_bytes,
            ws_ping_interval_ms: l.ws.ping_interval.map_or(0, |d| d.as_millis() as u64),
            ws_pong_timeout_ms: l.ws.pong_timeout.as_millis() as u64,
            tls_handshake_timeout_ms: l.tls_handshake_timeout.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct GuestSection {
    fuel_per_callback: u64,
    max_memory_pages: u32,
    max_rx_buffer_size: u32,
    max_session_data_size: u32,
    max_table_elements: u32,
    on_trap: OnTrapSetting,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum OnTrapSetting {
    Reinstantiate,
    Keep,
}

impl Default for GuestSection {
    fn default() -> Self {
        let g = GuestLimits::DEFAULT;
        GuestSection {
            fuel_per_callback: g.fuel_per_callback,
            max_memory_pages: g.max_memory_pages,
            max_rx_buffer_size: g.max_rx_buffer_size,
            max_session_data_size: g.max_session_data_size,
            max_table_elements: g.max_table_elements,
            on_trap: OnTrapSetting::Reinstantiate,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtocolSection {
    name: String,
    /// `builtin:NAME` or a path, relative to the config file.
    module: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerSection {
    name: String,
    port: u16,
    /// Host port on `address` that reaches this listener; 0 = any free port.
    #[serde(default)]
    forward: Option<u16>,
    #[serde(default = "localhost")]
    address: IpAddr,
    #[serde(default)]
    mounts: BTreeMap<String, String>,
    /// Protocols a WebSocket upgrade may name.
    #[serde(default)]
    websocket: Vec<String>,
    /// Protocol of an upgrade that names none.
    default_websocket: Option<String>,
    /// `"device"`: HTTPS/WSS with the device's own certificate.
    tls: Option<String>,
    /// HTTPS/WSS with these certificates (the first is the default; the
    /// others are chosen by SNI).
    #[serde(default, rename = "certificate")]
    certificates: Vec<tls::CertificateSection>,
}

fn localhost() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// A device ready to start: the runtime's config and where each listener is
/// reachable on the host.
#[derive(Debug)]
pub struct Device {
    /// The runtime config.
    pub config: wasmgate::Config,
    /// Host address of each listener, in config order.
    pub addrs: Vec<SocketAddr>,
    /// Where each protocol's module came from, for the start-up banner.
    pub sources: Vec<String>,
    /// The device's flash folder.
    pub flash_dir: PathBuf,
    /// Indexes (in `config.listeners`) of the listeners with `tls = "device"`:
    /// they get the device certificate from
    /// [`load_device_certificate`](Self::load_device_certificate).
    pub device_tls: Vec<usize>,
    /// The simulated network (`[network]`).
    pub network: net::NetworkSettings,
}

/// A config that cannot be used, with the key at fault.
#[derive(Debug)]
pub struct ConfigError(String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Device {
    /// The built-in default device.
    ///
    /// # Errors
    ///
    /// Only if the embedded config is broken (a test keeps it from being).
    pub fn default_device() -> Result<Self, ConfigError> {
        Self::from_toml(DEFAULT_DEVICE, "<built-in default device>", Path::new("."))
    }

    /// Reads a device config file.
    ///
    /// # Errors
    ///
    /// A message naming the file and the key at fault.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, &path.display().to_string(), base)
    }

    /// Parses a device config; module paths are relative to `base`.
    ///
    /// # Errors
    ///
    /// A message naming `origin` and the key at fault.
    pub fn from_toml(text: &str, origin: &str, base: &Path) -> Result<Self, ConfigError> {
        let file: DeviceFile =
            toml::from_str(text).map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        let err = |key: String, msg: String| ConfigError(format!("{origin}: `{key}`: {msg}"));
        let l = &file.limits;
        let limits = Limits {
            max_connections: l.max_connections,
            response_timeout: Duration::from_millis(l.response_timeout_ms),
            tls_handshake_timeout: Duration::from_millis(l.tls_handshake_timeout_ms),
            http: http::Limits {
                max_head_bytes: l.max_head_bytes,
                max_headers: l.max_headers,
                max_uri_bytes: l.max_uri_bytes,
                max_body_bytes: l.max_body_bytes,
                tx_buffer_bytes: l.tx_buffer_bytes,
                head_timeout: Duration::from_millis(l.head_timeout_ms),
                body_timeout: Duration::from_millis(l.body_timeout_ms),
                idle_timeout: Duration::from_millis(l.idle_timeout_ms),
                ..http::Limits::DEFAULT
            },
            ws: wasmgate::ws::Limits {
                max_frame_bytes: l.ws_max_frame_bytes,
                max_message_bytes: l.ws_max_message_bytes,
                tx_buffer_bytes: l.ws_tx_buffer_bytes,
                ping_interval: (l.ws_ping_interval_ms > 0)
                    .then(|| Duration::from_millis(l.ws_ping_interval_ms)),
                pong_timeout: Duration::from_millis(l.ws_pong_timeout_ms),
                ..wasmgate::ws::Limits::DEFAULT
            },
        };
        for (key, value, min) in [
            ("limits.max_connections", l.max_connections, 1),
            ("limits.max_head_bytes", l.max_head_bytes, 64),
            ("limits.max_headers", l.max_headers, 1),
            ("limits.max_uri_bytes", l.max_uri_bytes, 1),
            ("limits.tx_buffer_bytes", l.tx_buffer_bytes, 256),
        ] {
            if value < min {
                return Err(err(
                    key.into(),
                    format!("must be at least {min}, is {value}"),
                ));
            }
        }
        let g = &file.guest;
        if g.max_memory_pages == 0 {
            return Err(err(
                "guest.max_memory_pages".into(),
                "must be at least 1".into(),
            ));
        }
        let guest = GuestLimits {
            fuel_per_callback: g.fuel_per_callback,
            max_memory_pages: g.max_memory_pages,
            max_rx_buffer_size: g.max_rx_buffer_size,
            max_session_data_size: g.max_session_data_size,
            max_table_elements: g.max_table_elements,
            on_trap: match g.on_trap {
                OnTrapSetting::Reinstantiate => OnTrap::Reinstantiate,
                OnTrapSetting::Keep => OnTrap::Keep,
            },
        };

        let mut protocols = Vec::new();
        let mut sources = Vec::new();
        for (i, p) in file.protocols.iter().enumerate() {
            let key = format!("protocol[{i}].module");
            let module = match p.module.strip_prefix("builtin:") {
                Some(name) => wasmgate_guests::by_name(name)
                    .ok_or_else(|| {
                        let known: Vec<_> = wasmgate_guests::ALL.iter().map(|(n, _)| *n).collect();
                        err(
                            key.clone(),
                            format!(
                                "no built-in guest `{name}` (built-in: {})",
                                known.join(", ")
                            ),
                        )
                    })?
                    .to_vec(),
                None => {
                    let path: PathBuf = base.join(&p.module);
                    std::fs::read(&path).map_err(|e| {
                        err(key.clone(), format!("cannot read {}: {e}", path.display()))
                    })?
                }
            };
            sources.push(format!("{}, {} bytes", p.module, module.len()));
            protocols.push(Protocol {
                name: p.name.clone(),
                handler: Handler::Wasm(module),
            });
        }

        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        let mut device_tls = Vec::new();
        for (i, l) in file.listeners.iter().enumerate() {
            // Named by name, not index: `listener `https`: certificate: ...`.
            let listener_err =
                |msg: String| ConfigError(format!("{origin}: listener `{}`: {msg}", l.name));
            let tls = match (l.tls.as_deref(), l.certificates.is_empty()) {
                (None, true) => None,
                (Some(tls::DEVICE_CERTIFICATE), true) => {
                    device_tls.push(i);
                    None // filled in by load_device_certificate
                }
                (Some(other), true) => {
                    return Err(listener_err(format!(
                        "`tls = \"{other}\"` is not a TLS setting: use `tls = \"{}\"` for the \
                         device's own certificate, or [[listener.certificate]] entries",
                        tls::DEVICE_CERTIFICATE
                    )));
                }
                (Some(_), false) => {
                    return Err(listener_err(format!(
                        "give either `tls = \"{}\"` or [[listener.certificate]] entries, not both",
                        tls::DEVICE_CERTIFICATE
                    )));
                }
                (None, false) => {
                    Some(tls::listener_certificates(&l.certificates, base).map_err(listener_err)?)
                }
            };
            listeners.push(Listener {
                name: l.name.clone(),
                port: l.port,
                mounts: l
                    .mounts
                    .iter()
                    .map(|(prefix, protocol)| Mount {
                        prefix: prefix.clone(),
                        protocol: protocol.clone(),
                    })
                    .collect(),
                websocket: l.websocket.clone(),
                default_websocket: l.default_websocket.clone(),
                tls,
            });
            addrs.push(SocketAddr::new(l.address, l.forward.unwrap_or(l.port)));
        }

        let admin = match file.admin {
            None => None,
            Some(a) => {
                let mut cfg = AdminConfig::new(a.token);
                if cfg.token.len() < 8 {
                    return Err(err(
                        "admin.token".into(),
                        "must be at least 8 characters".into(),
                    ));
                }
                cfg.allow_unsigned = a.development_mode;
                for (i, key) in a.keys.iter().enumerate() {
                    let bytes = hex::decode(key.trim())
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| {
                            err(
                                format!("admin.keys[{i}]"),
                                "must be an ed25519 public key: 64 hex digits (see `wasmgate keygen`)"
                                    .into(),
                            )
                        })?;
                    cfg.trusted_keys.push(bytes);
                }
                if !cfg.allow_unsigned && cfg.trusted_keys.is_empty() {
                    return Err(err(
                        "admin.keys".into(),
                        "no trusted keys and not in development mode: no module could ever be accepted"
                            .into(),
                    ));
                }
                cfg.max_module_bytes = a.max_module_bytes.unwrap_or(cfg.max_module_bytes);
                cfg.store_bytes = a.store_bytes.unwrap_or(cfg.store_bytes);
                cfg.trial_callbacks = a.trial_callbacks.unwrap_or(cfg.trial_callbacks);
                cfg.trial_max_faults = a.trial_max_faults.unwrap_or(cfg.trial_max_faults);
                if let Some(ms) = a.drain_timeout_ms {
                    cfg.drain_timeout = Duration::from_millis(ms);
                }
                if let Some(l) = &a.listener
                    && !listeners.iter().any(|x| x.name == *l)
                {
                    return Err(err(
                        "admin.listener".into(),
                        format!("no listener named `{l}`"),
                    ));
                }
                cfg.listener = a.listener;
                Some(cfg)
            }
        };
        let flash_dir = base.join(
            file.device
                .flash
                .unwrap_or_else(|| PathBuf::from(".wasmgate-flash")),
        );
        let trust = match file.tls.and_then(|t| t.ca) {
            None => None,
            Some(ca) => {
                let pem =
                    tls::pem_source(&ca, base, "CA bundle").map_err(|e| err("tls.ca".into(), e))?;
                Some(
                    wasmgate::tls::TrustAnchors::from_pem(&pem)
                        .map_err(|e| err("tls.ca".into(), e.to_string()))?,
                )
            }
        };
        for (i, c) in file.clients.iter().enumerate() {
            if !c.tls && (c.allow_self_signed || c.skip_hostname_check) {
                return Err(err(
                    format!("client[{i}]"),
                    "allow_self_signed and skip_hostname_check need `tls = true`".into(),
                ));
            }
        }
        let clients = file
            .clients
            .into_iter()
            .map(|c| wasmgate::config::Client {
                name: c.name,
                protocol: c.protocol,
                target: wasmgate::config::ClientTarget {
                    address: c.address,
                    port: c.port,
                    path: c.path,
                    host: c.host,
                    origin: c.origin,
                    ws_protocol: c.ws_protocol,
                    tls: c.tls.then_some(wasmgate::tls::ClientTlsOptions {
                        allow_self_signed: c.allow_self_signed,
                        skip_hostname_check: c.skip_hostname_check,
                    }),
                },
                reconnect: c.reconnect,
            })
            .collect();
        let config = wasmgate::Config {
            name: file.device.name,
            listeners,
            protocols,
            limits,
            guest,
            admin,
            clients,
            trust,
        };
        config
            .validate()
            .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        let network = file
            .network
            .settings()
            .map_err(|(key, msg)| err(key, msg))?;
        Ok(Device {
            config,
            addrs,
            sources,
            flash_dir,
            device_tls,
            network,
        })
    }

    /// Gives the listeners with `tls = "device"` the device's own
    /// certificate from `flash_dir` (made there on first use). Returns it
    /// (for its CA's path), or `None` when no listener asks for it.
    ///
    /// # Errors
    ///
    /// As [`DeviceCertificate::load_or_create`](tls::DeviceCertificate::load_or_create).
    pub fn load_device_certificate(
        &mut self,
        flash_dir: &Path,
    ) -> Result<Option<tls::DeviceCertificate>, ConfigError> {
        if self.device_tls.is_empty() {
            return Ok(None);
        }
        let cert = tls::DeviceCertificate::load_or_create(flash_dir, &self.config.name)
            .map_err(ConfigError)?;
        for &i in &self.device_tls {
            self.config.listeners[i].tls = Some(cert.server.clone());
        }
        Ok(Some(cert))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_device_config_is_valid_and_serves_http_post_at_root() {
        let d = Device::default_device().expect("built-in config");
        let root = d.config.listeners[0].mount_for("/").unwrap();
        assert_eq!(root.protocol, "http");
        assert_eq!(d.addrs[0].port(), 8080);
        assert!(
            matches!(&d.config.protocols[0].handler, Handler::Wasm(m) if m == wasmgate_guests::HTTP_POST)
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Device::from_toml(
            "[device]\nname = \"x\"\nnmae = 1\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.to_string().contains("nmae"), "{e}");
    }

    #[test]
    fn unknown_builtin_guest_is_named() {
        let text =
            "[device]\nname = \"x\"\n[[protocol]]\nname = \"p\"\nmodule = \"builtin:nope\"\n";
        let e = Device::from_toml(text, "t.toml", Path::new(".")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("protocol[0].module") && msg.contains("nope"),
            "{msg}"
        );
    }

    #[test]
    fn mount_of_unknown_protocol_is_refused() {
        let text = "[device]\nname = \"x\"\n[[listener]]\nname = \"l\"\nport = 80\nmounts = { \"/\" = \"ghost\" }\n";
        let e = Device::from_toml(text, "t.toml", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("ghost"), "{e}");
    }

    /// A self-signed certificate for `name` and its key, as PEM.
    fn cert(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn tls_listener(certificates: &[(&str, &str)]) -> String {
        let mut t = String::from(
            "[device]\nname = \"x\"\n[[listener]]\nname = \"secure\"\nport = 443\nforward = 0\n",
        );
        for (c, k) in certificates {
            t.push_str(&format!(
                "[[listener.certificate]]\ncert = '''{c}'''\nkey = '''{k}'''\n"
            ));
        }
        t
    }

    #[test]
    fn listener_certificates_load_inline_and_from_files() {
        let (a, a_key) = cert("a.test");
        let d =
            Device::from_toml(&tls_listener(&[(&a, &a_key)]), "t.toml", Path::new(".")).unwrap();
        assert_eq!(
            d.config.listeners[0].tls.as_ref().unwrap().certificates(),
            1
        );

        let dir = std::env::temp_dir().join(format!("wasmgate-sim-lib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (b, b_key) = cert("b.test");
        std::fs::write(dir.join("b.pem"), &b).unwrap();
        std::fs::write(dir.join("b.key"), &b_key).unwrap();
        let text = tls_listener(&[(&a, &a_key), ("b.pem", "b.key")]);
        let d = Device::from_toml(&text, "t.toml", &dir).unwrap();
        assert_eq!(
            d.config.listeners[0].tls.as_ref().unwrap().certificates(),
            2
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_certificates_are_config_errors_naming_the_listener() {
        let (a, a_key) = cert("a.test");
        let (_, other_key) = cert("b.test");
        let cases = [
            (
                tls_listener(&[(
                    "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                    &a_key,
                )]),
                "certificate: certificate chain: ",
            ),
            (
                tls_listener(&[(&a, &other_key)]),
                "certificate: the private key does not belong to the certificate",
            ),
            (
                tls_listener(&[(&a, &a_key), (&a, &other_key)]),
                "certificate 2: the private key does not belong",
            ),
            (
                tls_listener(&[(
                    &a,
                    "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
                )]),
                "certificate: private key: ",
            ),
            (
                tls_listener(&[(&a_key, &a_key)]),
                "certificate: certificate chain: no CERTIFICATE block",
            ),
            (
                tls_listener(&[("missing.pem", &a_key)]),
                "cannot read certificate file ./missing.pem: ",
            ),
            (
                tls_listener(&[(&a, "missing.key")]),
                "cannot read key file ./missing.key: ",
            ),
            (
                tls_listener(&[]).replace("forward = 0\n", "forward = 0\ntls = \"yes\"\n"),
                "`tls = \"yes\"` is not a TLS setting: use `tls = \"device\"`",
            ),
            (
                tls_listener(&[(&a, &a_key)])
                    .replace("forward = 0\n", "forward = 0\ntls = \"device\"\n"),
                "not both",
            ),
        ];
        for (text, expected) in cases {
            let e = Device::from_toml(&text, "t.toml", Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("t.toml: listener `secure`: ") && e.contains(expected),
                "{expected}: {e}"
            );
        }
    }

    #[test]
    fn the_ca_bundle_and_client_tls_options_are_read() {
        let (ca, _) = cert("ca.test");
        let text = format!(
            "[device]\nname = \"x\"\n[tls]\nca = '''{ca}'''\n\
             [[protocol]]\nname = \"p\"\nmodule = \"builtin:ws-client\"\n\
             [[client]]\nname = \"c\"\nprotocol = \"p\"\naddress = \"h\"\nport = 1\n\
             tls = true\nskip_hostname_check = true\n"
        );
        let d = Device::from_toml(&text, "t.toml", Path::new(".")).unwrap();
        assert_eq!(d.config.trust.as_ref().map(|t| t.len()), Some(1));
        let options = d.config.clients[0].target.tls.expect("TLS");
        assert!(options.skip_hostname_check && !options.allow_self_signed);

        let inline = format!("'''{ca}'''");
        let dir = std::env::temp_dir().join(format!("wasmgate-sim-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), &ca).unwrap();
        let from_file = text.replace(&inline, "\"ca.pem\"");
        let d = Device::from_toml(&from_file, "t.toml", &dir).unwrap();
        assert_eq!(d.config.trust.as_ref().map(|t| t.len()), Some(1));
        std::fs::remove_dir_all(&dir).unwrap();

        for (bad, expected) in [
            (
                "'''-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n'''",
                "t.toml: `tls.ca`: CA bundle: ",
            ),
            (
                "\"missing-ca.pem\"",
                "t.toml: `tls.ca`: cannot read CA bundle file ./missing-ca.pem: ",
            ),
        ] {
            let text = text.replace(&inline, bad);
            let e = Device::from_toml(&text, "t.toml", Path::new(".")).unwrap_err();
            assert!(e.to_string().starts_with(expected), "{e}");
        }
    }

    #[test]
    fn client_tls_flags_map_to_the_options_and_need_tls() {
        let client = |keys: &str| {
            let text = format!(
                "[device]\nname = \"x\"\n\
                 [[protocol]]\nname = \"p\"\nmodule = \"builtin:ws-client\"\n\
                 [[client]]\nname = \"c\"\nprotocol = \"p\"\naddress = \"h\"\nport = 1\n{keys}"
            );
            Device::from_toml(&text, "t.toml", Path::new("."))
                .map(|d| d.config.clients[0].target.tls)
                .map_err(|e| e.to_string())
        };
        let options = |allow_self_signed, skip_hostname_check| {
            Ok(Some(wasmgate::tls::ClientTlsOptions {
                allow_self_signed,
                skip_hostname_check,
            }))
        };
        assert_eq!(client(""), Ok(None), "plain ws:// by default");
        assert_eq!(client("tls = false\n"), Ok(None));
        assert_eq!(client("tls = true\n"), options(false, false));
        assert_eq!(
            client("tls = true\nallow_self_signed = true\n"),
            options(true, false)
        );
        assert_eq!(
            client("tls = true\nallow_self_signed = true\nskip_hostname_check = true\n"),
            options(true, true)
        );
        for keys in [
            "allow_self_signed = true\n",
            "tls = false\nskip_hostname_check = true\n",
        ] {
            let e = client(keys).unwrap_err();
            assert!(
                e.starts_with("t.toml: `client[0]`: ") && e.contains("need `tls = true`"),
                "{keys}: {e}"
            );
        }
    }

    #[test]
    fn the_default_device_serves_https_with_its_own_certificate() {
        let mut d = Device::default_device().unwrap();
        let https = d
            .config
            .listeners
            .iter()
            .position(|l| l.name == "https")
            .unwrap();
        assert_eq!(d.addrs[https].port(), 8443);
        assert_eq!(d.device_tls, [https]);
        assert!(
            d.config.listeners[https].tls.is_none(),
            "not before it is loaded"
        );
        let plain = &d.config.listeners[0];
        let secure = &d.config.listeners[https];
        assert_eq!(
            (&plain.mounts, &plain.websocket, &plain.default_websocket),
            (&secure.mounts, &secure.websocket, &secure.default_websocket),
            "the same services as the plain listener"
        );
        let flash =
            std::env::temp_dir().join(format!("wasmgate-sim-default-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&flash); // a leftover of an earlier run
        let cert = d
            .load_device_certificate(&flash)
            .unwrap()
            .expect("asked for");
        assert!(cert.created);
        assert_eq!(cert.ca_path, flash.join("tls/ca.pem"));
        assert!(d.config.listeners[https].tls.is_some());
        std::fs::remove_dir_all(&flash).unwrap();
    }

    #[test]
    fn the_device_certificate_is_made_in_the_configured_flash_on_first_start_only() {
        let dir = std::env::temp_dir().join(format!("wasmgate-sim-flash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir); // a leftover of an earlier run
        let text = "[device]\nname = \"kitchen\"\nflash = \"my-flash\"\n\
                    [[listener]]\nname = \"a\"\nport = 443\ntls = \"device\"\n\
                    [[listener]]\nname = \"b\"\nport = 80\n\
                    [[listener]]\nname = \"c\"\nport = 8443\ntls = \"device\"\n";
        let start = || {
            let mut d = Device::from_toml(text, "t.toml", &dir).unwrap();
            assert_eq!(d.flash_dir, dir.join("my-flash"));
            let flash = d.flash_dir.clone();
            let cert = d.load_device_certificate(&flash).unwrap().unwrap();
            let with_tls: Vec<bool> = d.config.listeners.iter().map(|l| l.tls.is_some()).collect();
            assert_eq!(with_tls, [true, false, true]);
            let bytes = ["ca.pem", "ca.key", "server.pem", "server.key"]
                .map(|f| std::fs::read(flash.join("tls").join(f)).expect("made"));
            (cert, bytes)
        };
        let (first, made) = start();
        assert!(first.created);
        let (second, kept) = start();
        assert!(!second.created, "found, not made again");
        assert_eq!(second.ca_path, first.ca_path);
        assert_eq!(kept, made, "the same files");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_device_tls_listeners_no_certificate_is_made() {
        let mut d = Device::from_toml(
            "[device]\nname = \"x\"\n[[listener]]\nname = \"l\"\nport = 80\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap();
        let flash = std::env::temp_dir().join(format!("wasmgate-sim-none-{}", std::process::id()));
        assert!(d.load_device_certificate(&flash).unwrap().is_none());
        assert!(!flash.exists());
    }

    #[test]
    fn the_network_section_is_read_with_defaults() {
        let d = Device::default_device().unwrap();
        let n = &d.network;
        assert!(!n.dhcp && n.ipv6 && n.host_loopback && n.relay.is_empty());
        assert_eq!(n.link, net::LinkFaults::NONE);
        assert!(n.dns.contains_key("gateway") && n.dns.contains_key("localhost"));

        let text = "[device]\nname = \"x\"\n[network]\ndhcp = true\nipv6 = false\n\
                    host_loopback = false\nrelay = { 8080 = \"127.0.0.1:9000\" }\n\
                    dns = { \"Echo.Local.\" = \"gateway\", \"box\" = \"10.0.2.7\" }\n\
                    link = \"loss=5%,seed=3\"\n";
        let n = Device::from_toml(text, "t.toml", Path::new("."))
            .unwrap()
            .network;
        assert!(n.dhcp && !n.ipv6 && !n.host_loopback);
        assert_eq!(n.relay[&8080], "127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            n.dns["echo.local"],
            [IpAddr::V4(net::GATEWAY_V4), IpAddr::V6(net::GATEWAY_V6)]
        );
        assert_eq!(n.dns["box"], [IpAddr::V4(Ipv4Addr::new(10, 0, 2, 7))]);
        assert_eq!((n.link.loss, n.link.seed), (0.05, 3));
    }

    #[test]
    fn bad_network_keys_are_named() {
        for (keys, expected) in [
            (
                "relay = { x = \"127.0.0.1:1\" }",
                "`network.relay.x`: the key is a port",
            ),
            (
                "relay = { 80 = \"nowhere\" }",
                "`network.relay.80`: `nowhere` is not a host address",
            ),
            (
                "dns = { \"a..b\" = \"gateway\" }",
                "`network.dns.\"a..b\"`: not a DNS name",
            ),
            (
                "dns = { \"a\" = \"home\" }",
                "`home` is neither \"gateway\" nor an IP address",
            ),
            ("link = \"loss=2\"", "`network.link`: --link item `loss=2`"),
            ("colour = 1", "unknown field `colour`"),
        ] {
            let text = format!("[device]\nname = \"x\"\n[network]\n{keys}\n");
            let e = Device::from_toml(&text, "t.toml", Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("t.toml: ") && e.contains(expected),
                "{keys}: {e}"
            );
        }
    }

    #[test]
    fn limits_below_minimum_are_refused_with_their_key() {
        let text = "[device]\nname = \"x\"\n[limits]\nmax_connections = 0\n";
        let e = Device::from_toml(text, "t.toml", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("limits.max_connections"), "{e}");
    }
}
