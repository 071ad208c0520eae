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

/// What the bench device lets its guests have: `ws-echo-64` keeps 64 sessions
/// of three 4 KiB pieces (12 KiB a session; 14 pages of linear memory with
/// its 64 KiB stack).
pub const GUEST_LIMITS: GuestLimits = GuestLimits {
    max_memory_pages: wasmgate_guests::WS_ECHO_64_MEMORY_PAGES,
    max_session_data_size: wasmgate_guests::WS_ECHO_64_SESSION_BYTES,
    ..GuestLimits::DEFAULT
};

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
        guest: GUEST_LIMITS,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::thread;

    use super::*;
    use crate::ws_load::{self, WsLoad};

    /// The bench device with its guests (`ws-echo-64` under `GUEST_LIMITS`)
    /// on the OS driver, in a thread until `stop` is set.
    fn serve_guests(stop: Arc<AtomicBool>) -> (SocketAddr, thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let handle = thread::spawn(move || {
            let mut ctx = Context::new(device(Handlers::Guest, 128), Instant::now())
                .expect("the bench device starts with its guests");
            let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
            let mut driver = OsDriver::bind(&ctx, &[addr]).expect("binds");
            tx.send(driver.local_addrs().expect("bound")[0])
                .expect("send");
            driver
                .run(&mut ctx, Duration::from_millis(20), || {
                    stop.load(Ordering::Relaxed)
                })
                .expect("serves");
        });
        (rx.recv().expect("the server starts"), handle)
    }

    /// What `run` asks of the echo guest: 50 clients at once, 16 KiB
    /// messages (four 4 KiB pieces each, queued in the session while the tx
    /// buffer is full) and small ones eight in flight, every echo checked.
    #[test]
    fn the_bench_echo_guest_serves_50_clients_with_large_and_pipelined_messages() {
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, server) = serve_guests(stop.clone());
        for (size, in_flight) in [(16 * 1024, 1), (64, 8)] {
            let result = ws_load::run(&WsLoad {
                addr,
                path: "/".to_owned(),
                clients: 50,
                in_flight,
                size,
                warmup: Duration::from_millis(100),
                duration: Duration::from_millis(300),
                spin: crate::harness::GENERATOR_SPIN,
            })
            .expect("the load runs");
            assert_eq!(result.errors, 0, "{size} B: {result:?}");
            assert!(result.messages >= 50, "{size} B: {result:?}");
        }
        stop.store(true, Ordering::Relaxed);
        server.join().expect("the server stops");
    }
}
