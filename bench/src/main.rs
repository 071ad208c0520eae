//! `wasmgate-bench`: wasmgate and the libwebsockets baseline side by side
//! (`docs/benchmarks.md`). `tests/bench/run.sh` builds everything and runs
//! `wasmgate-bench run`; the other subcommands are its parts.

mod harness;
mod report;
mod serve;
mod ws_load;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "wasmgate-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every server under every load, side by side: lws, wasmgate on host
    /// sockets and on its smoltcp device path, and wasmgate with native
    /// handlers. Prints ratios to lws, writes JSON and a chart.
    Run(harness::RunArgs),
    /// A WebSocket echo load: N clients, one message in flight each. Prints
    /// one JSON line.
    WsLoad(ws_load::WsLoadArgs),
    /// The benchmark device in this process (OS sockets), with guest or
    /// native handlers.
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Run(args) => {
            harness::run(&args).and_then(|results| report::write(&results, &args.out))
        }
        Command::WsLoad(args) => ws_load::run(&args.into())
            .map_err(Into::into)
            .and_then(|r| {
                println!("{}", serde_json::to_string(&r)?);
                Ok(())
            }),
        Command::Serve(args) => serve::serve(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasmgate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
