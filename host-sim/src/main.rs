//! `wasmgate`: the simulator and the device tools.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use wasmgate::net::OsDriver;
use wasmgate_sim::flash::DirFlash;
use wasmgate_sim::net::{self, Forward, LinkFaults, SmolNetwork};
use wasmgate_sim::{DEFAULT_DEVICE, Device, tools};

#[derive(Debug, Parser)]
#[command(
    name = "wasmgate",
    version,
    about = "wasmgate device simulator and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a simulated device on 127.0.0.1 (the built-in default device unless
    /// --config is given).
    Sim {
        /// A device config (TOML): listeners, protocols and their guest modules,
        /// mounts, limits.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print the built-in default device's config and exit.
        #[arg(long)]
        print_default_config: bool,
        /// The device's flash folder (module store); overrides the config's
        /// `device.flash`.
        #[arg(long, value_name = "DIR")]
        flash: Option<PathBuf>,
        /// The device's network: `smoltcp` (its own TCP/IP stack behind a
        /// user-mode gateway, as on the device) or `host` (the host's
        /// sockets: fastest, no link faults).
        #[arg(long, value_enum, env = "WASMGATE_NET", default_value_t = NetMode::Smoltcp)]
        net: NetMode,
        /// Faults of the virtual link (smoltcp mode), e.g.
        /// `loss=0.05,dup=0.01,reorder=0.02,delay=20ms,jitter=5ms,mtu=1280,bw=1mbit,seed=7`;
        /// overrides `network.link`. The same seed gives the same faults.
        #[arg(long, value_name = "SPEC", value_parser = parse_link)]
        link: Option<LinkFaults>,
        /// Forward host port HOSTPORT (on the listener's address, or on ADDR)
        /// to device port DEVICEPORT: `8081:80`, `[::1]:8081:80`. Repeatable;
        /// replaces the config's `forward` of the listener on DEVICEPORT (a
        /// second one for the same port forwards another host address too,
        /// smoltcp mode only).
        #[arg(long, value_name = "[ADDR:]HOSTPORT:DEVICEPORT", value_parser = parse_forward)]
        forward: Vec<ForwardArg>,
        /// The device takes its IPv4 address by DHCP from the gateway instead
        /// of the static 10.0.2.15 (smoltcp mode).
        #[arg(long)]
        dhcp: bool,
    },
    /// Make an ed25519 key pair for signing modules: PREFIX.key (secret) and
    /// PREFIX.pub (public, for the device config's `admin.keys`).
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, value_name = "PREFIX", default_value = "wasmgate")]
        out: PathBuf,
    },
    /// Sign a guest module for a protocol.
    Sign {
        /// The module (.wasm).
        module: PathBuf,
        /// Secret key file from `wasmgate keygen`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Protocol the module is for.
        #[arg(long)]
        protocol: String,
        /// Version recorded in the manifest.
        #[arg(long, default_value = "0.1.0")]
        version: String,
        /// Output file (default: MODULE.signed.wasm).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Fuel per callback the module asks for (a device allowing less refuses it).
        #[arg(long, value_name = "N")]
        fuel: Option<u64>,
        /// Memory pages (64 KiB) the module asks for (a device allowing less refuses it).
        #[arg(long, value_name = "N")]
        max_memory_pages: Option<u32>,
    },
    /// Show a module's manifest, signature, imports and exports, and check it
    /// against the guest ABI.
    Inspect {
        /// The module (.wasm), signed or not.
        module: PathBuf,
    },
    /// Upload a module to a device's admin API.
    Upload {
        /// The module (.wasm), signed or not.
        module: PathBuf,
        /// The device, e.g. http://127.0.0.1:8080
        #[arg(long, value_name = "URL")]
        device: String,
        /// Protocol to replace.
        #[arg(long)]
        protocol: String,
        /// The device's admin token (or set WASMGATE_TOKEN).
        #[arg(long, env = "WASMGATE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Sign an unsigned module with this secret key before uploading.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("WASMGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Sim {
            print_default_config: true,
            ..
        } => {
            print!("{DEFAULT_DEVICE}");
            ExitCode::SUCCESS
        }
        Command::Sim {
            config,
            flash,
            net,
            link,
            forward,
            dhcp,
            ..
        } => report(sim(SimArgs {
            config,
            flash,
            net,
            link,
            forwards: forward,
            dhcp,
        })),
        Command::Keygen { out } => report(tools::keygen(&out).map_err(Into::into)),
        Command::Sign {
            module,
            key,
            protocol,
            version,
            out,
            fuel,
            max_memory_pages,
        } => {
            let out = out.unwrap_or_else(|| module.with_extension("signed.wasm"));
            let limits = wasmgate::store::RequestedLimits {
                fuel_per_callback: fuel,
                max_memory_pages,
            };
            report(
                tools::sign(&module, &key, &protocol, &version, limits, &out).map_err(Into::into),
            )
        }
        Command::Inspect { module } => report(
            tools::inspect(&module)
                .map(|text| print!("{text}"))
                .map_err(Into::into),
        ),
        Command::Upload {
            module,
            device,
            protocol,
            token,
            key,
        } => report(
            tools::upload(
                &device,
                &protocol,
                token.as_deref(),
                &module,
                key.as_deref(),
            )
            .map(|answer| println!("{answer}"))
            .map_err(Into::into),
        ),
    }
}

fn report(result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasmgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How the simulated device reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NetMode {
    /// The device's own smoltcp stack, a virtual link and a user-mode gateway.
    Smoltcp,
    /// The host's TCP sockets (OsDriver).
    Host,
}

/// `--forward [ADDR:]HOSTPORT:DEVICEPORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ForwardArg {
    /// The host address, or none for the listener's.
    addr: Option<std::net::IpAddr>,
    host_port: u16,
    device_port: u16,
}

fn parse_forward(s: &str) -> Result<ForwardArg, String> {
    let usage = || {
        format!(
            "`{s}`: expected HOSTPORT:DEVICEPORT or ADDR:HOSTPORT:DEVICEPORT (e.g. 8081:80, [::1]:8081:80)"
        )
    };
    let (host, device) = s.rsplit_once(':').ok_or_else(usage)?;
    let device_port: u16 = device.parse().map_err(|_| usage())?;
    if device_port == 0 {
        return Err(format!("`{s}`: the device port cannot be 0"));
    }
    if let Ok(host_port) = host.parse::<u16>() {
        return Ok(ForwardArg {
            addr: None,
            host_port,
            device_port,
        });
    }
    let addr: std::net::SocketAddr = host.parse().map_err(|_| usage())?;
    Ok(ForwardArg {
        addr: Some(addr.ip()),
        host_port: addr.port(),
        device_port,
    })
}

fn parse_link(s: &str) -> Result<LinkFaults, String> {
    s.parse()
        .map_err(|e: net::link::LinkSpecError| e.to_string())
}

#[derive(Debug)]
struct SimArgs {
    config: Option<PathBuf>,
    flash: Option<PathBuf>,
    net: NetMode,
    link: Option<LinkFaults>,
    forwards: Vec<ForwardArg>,
    dhcp: bool,
}

/// Applies the `--forward`s to the listeners' host addresses; returns the
/// extra forwards (a second host address for a device port).
fn apply_forwards(
    device: &mut Device,
    forwards: &[ForwardArg],
) -> Result<Vec<Forward>, Box<dyn std::error::Error>> {
    let mut overridden = Vec::new();
    let mut extra = Vec::new();
    for f in forwards {
        let Some(i) = device
            .config
            .listeners
            .iter()
            .position(|l| l.port == f.device_port)
        else {
            let ports: Vec<String> = device
                .config
                .listeners
                .iter()
                .map(|l| l.port.to_string())
                .collect();
            return Err(format!(
                "--forward {}: the device has no listener on port {} (its listeners: {})",
                f.host_port,
                f.device_port,
                if ports.is_empty() {
                    "none".to_string()
                } else {
                    ports.join(", ")
                }
            )
            .into());
        };
        let addr = std::net::SocketAddr::new(f.addr.unwrap_or(device.addrs[i].ip()), f.host_port);
        if overridden.contains(&i) {
            extra.push(Forward {
                host: addr,
                device_port: f.device_port,
            });
        } else {
            overridden.push(i);
            device.addrs[i] = addr;
        }
    }
    Ok(extra)
}

fn sim(args: SimArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut device = match &args.config {
        Some(path) => Device::from_file(path)?,
        None => Device::default_device()?,
    };
    let extra_forwards = apply_forwards(&mut device, &args.forwards)?;
    if args.net == NetMode::Host && !extra_forwards.is_empty() {
        return Err(
            "--forward: a second host address for a device port needs --net smoltcp".into(),
        );
    }
    let mut settings = device.network.clone();
    if let Some(link) = args.link {
        settings.link = link;
    }
    settings.dhcp |= args.dhcp;
    let flash_dir = args.flash.unwrap_or_else(|| device.flash_dir.clone());
    // The device CA's absolute path (for `curl --cacert`) and whether this
    // start made it.
    let device_ca = device.load_device_certificate(&flash_dir)?.map(|cert| {
        let made = if cert.created {
            "made now"
        } else {
            "kept in flash"
        };
        (
            std::path::absolute(&cert.ca_path).unwrap_or(cert.ca_path),
            made,
        )
    });
    let flash = DirFlash::open(&flash_dir)?;
    let now = Instant::now();
    let mut ctx = wasmgate::Context::with_flash(device.config, Box::new(flash), now)?;
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ctx.set_unix_time(now, unix);

    enum Network {
        Host(Box<OsDriver>),
        Smoltcp(Box<SmolNetwork>),
    }
    let (mut network, bound) = match args.net {
        NetMode::Host => {
            let driver = OsDriver::bind(&ctx, &device.addrs)?;
            let bound = driver.local_addrs()?;
            (Network::Host(Box::new(driver)), bound)
        }
        NetMode::Smoltcp => {
            let mut forwards: Vec<Forward> = ctx
                .config()
                .listeners
                .iter()
                .zip(&device.addrs)
                .map(|(l, addr)| Forward {
                    host: *addr,
                    device_port: l.port,
                })
                .collect();
            forwards.extend(&extra_forwards);
            let network = SmolNetwork::new(&ctx, &settings, forwards, now)?;
            let bound = network.local_addrs();
            (Network::Smoltcp(Box::new(network)), bound)
        }
    };
    let cfg = ctx.config();
    let mode = match args.net {
        NetMode::Host => "host sockets",
        NetMode::Smoltcp => "smoltcp",
    };
    println!(
        "wasmgate: device \"{}\" is running (network: {mode})",
        cfg.name
    );
    for (p, source) in cfg.protocols.iter().zip(&device.sources) {
        println!("  protocol \"{}\": {source}", p.name);
    }
    let listeners = cfg.listeners.len();
    for (i, (l, addr)) in cfg.listeners.iter().zip(&bound).enumerate() {
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        println!(
            "  listener \"{}\" (device port {}): {scheme}://{addr}/",
            l.name, l.port
        );
        for (extra, bound) in extra_forwards.iter().zip(&bound[listeners..]) {
            if extra.device_port == l.port {
                println!("    also forwarded from {scheme}://{bound}/");
            }
        }
        match (&l.tls, &device_ca) {
            (None, _) => {}
            (Some(_), Some((ca, made))) if device.device_tls.contains(&i) => {
                // The certificate names localhost, not a wildcard address.
                let host = if addr.ip().is_loopback() || addr.ip().is_unspecified() {
                    format!("localhost:{}", addr.port())
                } else {
                    addr.to_string()
                };
                println!(
                    "    TLS: the device certificate; trust the device CA ({made}): {}",
                    ca.display()
                );
                println!("      e.g. curl --cacert {} https://{host}/", ca.display());
            }
            (Some(tls), _) => match tls.certificates() {
                1 => println!("    TLS: the certificate from the config"),
                n => println!("    TLS: {n} certificates from the config, chosen by SNI"),
            },
        }
        for m in &l.mounts {
            println!("    {:<12} -> protocol \"{}\"", m.prefix, m.protocol);
        }
        if !l.websocket.is_empty() {
            let default = l.default_websocket.as_deref().unwrap_or("none");
            println!(
                "    WebSocket: {} (upgrades naming none get {default})",
                l.websocket.join(", ")
            );
        }
    }
    for c in &cfg.clients {
        let t = &c.target;
        let scheme = if t.tls.is_some() { "wss" } else { "ws" };
        println!(
            "  client \"{}\": {scheme}://{}:{}{} -> protocol \"{}\"",
            c.name, t.address, t.port, t.path, c.protocol
        );
    }
    match args.net {
        NetMode::Host => println!("  network: host sockets"),
        NetMode::Smoltcp => {
            let v4 = if settings.dhcp {
                format!("{} (DHCP)", net::DEVICE_V4)
            } else {
                net::DEVICE_V4.to_string()
            };
            let v6 = if settings.ipv6 {
                format!(" / {}", net::DEVICE_V6)
            } else {
                String::new()
            };
            println!(
                "  network: smoltcp, device {v4}{v6}, gateway {}, link: {}",
                net::GATEWAY_V4,
                settings.link
            );
            let mut relays: Vec<String> = settings
                .relay
                .iter()
                .map(|(port, to)| format!("gateway:{port} -> {to}"))
                .collect();
            relays.push(if settings.host_loopback {
                "gateway:PORT and 127.0.0.1:PORT -> host 127.0.0.1:PORT".to_string()
            } else {
                "other ports refused".to_string()
            });
            println!("    relays: {}", relays.join("; "));
            let names: Vec<&str> = settings.dns.keys().map(String::as_str).collect();
            println!("    DNS at {}: {}", net::GATEWAY_V4, names.join(", "));
        }
    }
    println!("  flash (module store): {}", flash_dir.display());
    if let Some(admin) = &cfg.admin {
        let mode = if admin.allow_unsigned {
            "development mode: unsigned modules accepted"
        } else {
            "signed modules only"
        };
        let token = if admin.allow_unsigned {
            format!("token {}", admin.token)
        } else {
            "token from the config".to_string()
        };
        println!("  admin API: /_admin/modules, /_admin/status ({token}; {mode})");
    }
    println!("  guest logs follow; stop with Ctrl-C");
    match &mut network {
        Network::Host(driver) => driver.run(&mut ctx, Duration::from_secs(1), || false)?,
        Network::Smoltcp(network) => network.run(&mut ctx, || false)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse_with_and_without_an_address() {
        assert_eq!(
            parse_forward("8081:80"),
            Ok(ForwardArg {
                addr: None,
                host_port: 8081,
                device_port: 80
            })
        );
        assert_eq!(
            parse_forward("[::1]:0:443"),
            Ok(ForwardArg {
                addr: Some("::1".parse().unwrap()),
                host_port: 0,
                device_port: 443
            })
        );
        assert_eq!(
            parse_forward("127.0.0.2:9000:80").unwrap().addr,
            Some("127.0.0.2".parse().unwrap())
        );
        for bad in ["80", "x:80", "8080:x", "8080:0", "::1:8080:80", "70000:80"] {
            assert!(parse_forward(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwards_replace_the_listener_port_and_then_add_addresses() {
        let mut d = Device::default_device().unwrap();
        let f = |s: &str| parse_forward(s).unwrap();
        let extra =
            apply_forwards(&mut d, &[f("9080:80"), f("[::1]:9081:80"), f("9443:443")]).unwrap();
        assert_eq!(d.addrs[0], "127.0.0.1:9080".parse().unwrap());
        assert_eq!(d.addrs[1], "127.0.0.1:9443".parse().unwrap());
        assert_eq!(
            extra,
            [Forward {
                host: "[::1]:9081".parse().unwrap(),
                device_port: 80
            }]
        );
        let e = apply_forwards(&mut d, &[f("9000:81")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no listener on port 81 (its listeners: 80, 443)"),
            "{e}"
        );
    }

    #[test]
    fn link_specs_and_net_modes_parse_from_the_command_line() {
        let cli = Cli::try_parse_from([
            "wasmgate",
            "sim",
            "--link",
            "loss=5%,seed=2",
            "--net",
            "host",
        ])
        .unwrap();
        let Command::Sim { link, net, .. } = cli.command else {
            panic!("sim");
        };
        assert_eq!(link.map(|l| (l.loss, l.seed)), Some((0.05, 2)));
        assert_eq!(net, NetMode::Host);
        let e = Cli::try_parse_from(["wasmgate", "sim", "--link", "delay=5"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`delay=5`: a time needs a unit"), "{e}");
    }
}
