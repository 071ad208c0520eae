//! `wasmgate`: the simulator and the device tools.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use wasmgate::net::OsDriver;
use wasmgate_sim::flash::DirFlash;
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
        Command::Sim { config, flash, .. } => report(sim(config, flash)),
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

fn sim(config: Option<PathBuf>, flash: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let mut device = match &config {
        Some(path) => Device::from_file(path)?,
        None => Device::default_device()?,
    };
    let flash_dir = flash.unwrap_or_else(|| device.flash_dir.clone());
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
    let mut driver = OsDriver::bind(&ctx, &device.addrs)?;
    let bound = driver.local_addrs()?;
    let cfg = ctx.config();
    println!(
        "wasmgate: device \"{}\" is running (network: host sockets)",
        cfg.name
    );
    for (p, source) in cfg.protocols.iter().zip(&device.sources) {
        println!("  protocol \"{}\": {source}", p.name);
    }
    for (i, (l, addr)) in cfg.listeners.iter().zip(&bound).enumerate() {
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        println!(
            "  listener \"{}\" (device port {}): {scheme}://{addr}/",
            l.name, l.port
        );
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
    driver.run(&mut ctx, Duration::from_secs(1), || false)?;
    Ok(())
}
