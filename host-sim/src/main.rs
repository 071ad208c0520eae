//! `wasmgate`: the simulator and the device tools.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use wasmgate::net::OsDriver;
use wasmgate_sim::{DEFAULT_DEVICE, Device};

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
        Command::Sim { config, .. } => match sim(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wasmgate: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn sim(config: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let device = match &config {
        Some(path) => Device::from_file(path)?,
        None => Device::default_device()?,
    };
    let mut ctx = wasmgate::Context::new(device.config, Instant::now())?;
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
    for (l, addr) in cfg.listeners.iter().zip(&bound) {
        println!(
            "  listener \"{}\" (device port {}): http://{addr}/",
            l.name, l.port
        );
        for m in &l.mounts {
            println!("    {:<12} -> protocol \"{}\"", m.prefix, m.protocol);
        }
    }
    println!("  guest logs follow; stop with Ctrl-C");
    driver.run(&mut ctx, Duration::from_secs(1), || false)?;
    Ok(())
}
