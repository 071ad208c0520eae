//! `wasmgate-bench serve`: the benchmark device in this process, on the OS
//! socket driver, with its handlers as WebAssembly guests or compiled in. The
//! two differ only in the handler, so their ratio is the interpreter's price
//! on a real socket path.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wasmgate::config::{GuestLimits, Handler, Limits, Listener, Mount, Protocol};
use wasmgate::context::native::{Echo, Hello};
use wasmgate::net::OsDriver;
use wasmgate::{Config, Context};

/// Which handlers answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Handlers {
    /// `hello` and `ws-echo-64`, the guests the simulator's bench device runs.
    Guest,
    /// The runtime's native `Hello` and `Echo`, doing the same.
    Native,
}

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7690")]
    pub addr: SocketAddr,
    /// The handlers.
    #[arg(long, value_enum, default_value_t = Handlers::Native)]
    pub handlers: Handlers,
    /// Connection table size.
    #[arg(long, default_value_t = 128)]
    pub max_connections: usize,
}

/// The benchmark device: `GET` anything → `hello world`, a WebSocket upgrade
/// → echo. The same mounts and limits as the simulator's bench device.
pub fn device(handlers: Handlers, max_connections: usize) -> Config {
    let (hello, echo) = match handlers {
        Handlers::Guest => (
            Handler::Wasm(wasmgate_guests::HELLO.to_vec()),
            Handler::Wasm(wasmgate_guests::WS_ECHO_64.to_vec()),
        ),
        Handlers::Native => (
            Handler::Native(|| Box::new(Hello)),
            Handler::Native(|| Box::new(Echo)),
        ),
    };
    Config {
        name: "wasmgate bench device".into(),
        listeners: vec![Listener {
            name: "http".into(),
            port: 80,
            mounts: vec![Mount {
                prefix: "/".into(),
                protocol: "hello".into(),
            }],
            websocket: vec!["echo_server".into()],
            default_websocket: Some("echo_server".into()),
            tls: None,
        }],
        protocols: vec![
            Protocol {
                name: "hello".into(),
                handler: hello,
            },
            Protocol {
                name: "echo_server".into(),
                handler: echo,
            },
        ],
        limits: Limits {
            max_connections,
            ..Limits::DEFAULT
        },
        guest: GuestLimits {
            max_memory_pages: 8,
            ..GuestLimits::DEFAULT
        },
        admin: None,
        clients: Vec::new(),
        trust: None,
    }
}

/// Serves until killed.
pub fn serve(args: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut ctx = Context::new(device(args.handlers, args.max_connections), Instant::now())?;
    let mut driver = OsDriver::bind(&ctx, &[args.addr])?;
    let bound = driver.local_addrs()?;
    // The harness waits for this line.
    println!(
        "wasmgate-bench serve: {:?} handlers listening on http://{}/",
        args.handlers, bound[0]
    );
    driver.run(&mut ctx, Duration::from_secs(1), || false)?;
    Ok(())
}
