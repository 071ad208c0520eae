//! `wasmgate-bench run`: every server under the same loads, side by side.
//!
//! The servers run pinned to core 0 and the load generators to core 1
//! (`taskset`). Each round runs every load against every server, in an order
//! that rotates from round to round; the median of the rounds is compared to
//! libwebsockets' as a ratio. While a load runs, the server's and the
//! generator's CPU time are sampled from `/proc`, so that a saturated
//! generator (the limit being the client, not the server) shows.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::serve;
use crate::ws_load::WsLoadResult;

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The libwebsockets baseline binary (built by `tests/bench/run.sh`).
    #[arg(long, value_name = "FILE")]
    pub lws: PathBuf,
    /// The `wasmgate` simulator binary (release build).
    #[arg(long, value_name = "FILE")]
    pub wasmgate: PathBuf,
    /// Rounds; the median of them is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds each load runs against each server, per round.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Concurrent connections of every load.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Where the results go (JSON, PNG, the servers' logs).
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    pub out: PathBuf,
    /// Run only these loads (comma-separated: http,https,ws64,ws64p,ws16k,connect).
    #[arg(long, value_delimiter = ',')]
    pub loads: Vec<Load>,
    /// Microseconds `ws-load` asks for readiness without blocking before it
    /// blocks (0: it blocks at once, and the servers pay for waking it).
    #[arg(long, default_value_t = GENERATOR_SPIN.as_micros() as u64)]
    pub spin_us: u64,
}

/// A load, the same for every server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    /// `wrk`: keep-alive `GET /`.
    Http,
    /// `wrk`: keep-alive `GET /` over TLS.
    Https,
    /// `ws-load`: echo of 64-byte messages, one in flight per client.
    Ws64,
    /// `ws-load`: echo of 64-byte messages, [`PIPELINED`] in flight per
    /// client.
    #[value(name = "ws64p")]
    Ws64p,
    /// `ws-load`: echo of 16 KiB messages.
    Ws16k,
    /// `wrk` with `Connection: close`: a new connection per request.
    Connect,
}

impl Load {
    pub const ALL: [Load; 6] = [
        Load::Http,
        Load::Https,
        Load::Ws64,
        Load::Ws64p,
        Load::Ws16k,
        Load::Connect,
    ];

    /// What the rate counts.
    pub fn unit(self) -> &'static str {
        match self {
            Load::Ws64 | Load::Ws64p | Load::Ws16k => "msg/s",
            Load::Connect => "conn/s",
            Load::Http | Load::Https => "req/s",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Load::Http => "http",
            Load::Https => "https",
            Load::Ws64 => "ws64",
            Load::Ws64p => "ws64p",
            Load::Ws16k => "ws16k",
            Load::Connect => "connect",
        }
    }
}

/// A measurement during which the hypervisor took more than this share of
/// core 0 or 1 is made again (at most `STALL_RETRIES` times).
const STEAL_LIMIT: f64 = 0.05;
/// ...and one during which the other servers, which share core 0, used more
/// than this share of it: one still busy with the previous load (lws can
/// spin on its core for seconds after the new-connections load).
const OTHERS_LIMIT: f64 = 0.10;
const STALL_RETRIES: usize = 2;
/// Before a measurement, the servers together must use no more than this
/// share of core 0 over `SETTLE_WINDOW` (5 ticks of 10 ms: idle servers'
/// timers cross a tick now and then), waiting at most `SETTLE_LIMIT`.
const QUIET: f64 = 0.10;
const SETTLE_WINDOW: Duration = Duration::from_millis(500);
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Messages in flight per client in the pipelined WebSocket load.
pub const PIPELINED: usize = 8;
/// How long `ws-load` asks for readiness without blocking before it blocks
/// (`--spin-us`), unless `run --spin-us` says otherwise. A generator that
/// sleeps between echoes is woken by the server's next write, and the
/// wake-up (on this virtual machine an interrupt to the generator's core
/// through the hypervisor, about 3.5 µs) is paid by the server inside its
/// `sendto`: a server slower than the generator pays it for most of its
/// writes, a faster one almost never. The same setting for every server
/// takes that cost out of the figures of those that paid it and changes
/// nothing for the others; its spinning is counted apart
/// (`Sample::generator_idle`).
pub const GENERATOR_SPIN: Duration = Duration::from_micros(200);

/// One measurement: a load against a server for one round.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub server: &'static str,
    pub load: Load,
    pub round: usize,
    /// Requests, messages or connections per second.
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Socket errors or bad echoes the generator saw.
    pub errors: u64,
    /// Share of one core the server and the generator used while the load
    /// ran (1.0 = a whole core).
    pub server_cpu: f64,
    /// For `ws-load`, its work only: the time it spent spinning
    /// ([`GENERATOR_SPIN`]) is in `generator_idle`.
    pub generator_cpu: f64,
    /// Share of its core `ws-load` spent asking for readiness and finding
    /// none (zero for wrk, which does not spin).
    pub generator_idle: f64,
    /// The server's CPU time per request, message or connection
    /// (microseconds): its cost, whether or not it was the limit.
    pub server_us_per_op: f64,
    /// Share of a core the hypervisor gave to others (`steal` in
    /// `/proc/stat`) while the load ran: the larger of cores 0 and 1.
    pub steal: f64,
    /// Share of core 0 the other servers' processes used while the load ran.
    pub others: f64,
    /// Server process RSS right after the load, and its peak so far (KiB).
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

impl Sample {
    /// Why the rate says little about the server, if something else took
    /// its core or the generator's.
    fn disturbance(&self) -> Option<String> {
        if self.steal > STEAL_LIMIT {
            // A virtual machine whose host is busy: both programs wait and
            // the rate says nothing about either.
            Some(format!(
                "{:.0}% of a core stolen by the hypervisor",
                self.steal * 100.0
            ))
        } else if self.others > OTHERS_LIMIT {
            Some(format!(
                "the other servers used {:.0}% of the server's core",
                self.others * 100.0
            ))
        } else {
            None
        }
    }
}

/// A server process (or two: lws serves TLS from a second one).
#[derive(Debug)]
struct Server {
    name: &'static str,
    what: &'static str,
    children: Vec<Child>,
    /// Where each load goes, and the PID serving it.
    plain: Endpoint,
    tls: Option<Endpoint>,
}

#[derive(Debug, Clone, Copy)]
struct Endpoint {
    addr: SocketAddr,
    pid: u32,
}

impl Server {
    fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.children.iter().map(Child::id)
    }

    fn endpoint(&self, load: Load) -> Option<Endpoint> {
        match load {
            Load::Https => self.tls,
            _ => Some(self.plain),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The whole run's results, as written to `side_by_side.json`.
#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub rounds: usize,
    pub seconds: u64,
    pub connections: usize,
    /// `ws-load`'s `--spin-us`.
    pub generator_spin_us: u64,
    pub servers: Vec<ServerInfo>,
    pub samples: Vec<Sample>,
    pub medians: Vec<Sample>,
}

#[derive(Debug, Serialize)]
pub struct ServerInfo {
    pub name: &'static str,
    pub what: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub lws_version: String,
}

/// Runs everything; returns the results (also written to `out`).
pub fn run(args: &RunArgs) -> Result<Results, Box<dyn std::error::Error>> {
    let loads: Vec<Load> = if args.loads.is_empty() {
        Load::ALL.to_vec()
    } else {
        args.loads.clone()
    };
    std::fs::create_dir_all(&args.out)?;
    let work = args.out.join("side_by_side");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let me = std::env::current_exe()?;

    println!("bench: starting the servers (pinned to core 0)");
    let servers = start_servers(args, &work, &me)?;
    for s in &servers {
        let tls = s
            .tls
            .map(|t| format!(", TLS on {}", t.addr))
            .unwrap_or_default();
        println!("  {:<16} {} on {}{tls}", s.name, s.what, s.plain.addr);
    }
    let lws_version = read_lws_version(&work.join("lws.log"));

    let total = args.rounds * loads.len() * servers.len();
    let mut samples = Vec::new();
    let started = Instant::now();
    for round in 0..args.rounds {
        for &load in &loads {
            // Rotate who goes first, so that no server always follows the same one.
            let order = (0..servers.len()).map(|i| (i + round) % servers.len());
            for i in order {
                let server = &servers[i];
                let Some(endpoint) = server.endpoint(load) else {
                    continue;
                };
                let done = samples.len() + 1;
                let label = format!(
                    "bench: [{done:>3}/{total}] round {} {:<8} {:<16} ",
                    round + 1,
                    load.name(),
                    server.name
                );
                let others: Vec<u32> = servers
                    .iter()
                    .flat_map(Server::pids)
                    .filter(|&p| p != endpoint.pid)
                    .collect();
                settle(&servers);
                print!("{label}");
                let mut sample = measure(args, &me, server.name, load, round, endpoint, &others)?;
                for _ in 0..STALL_RETRIES {
                    let Some(why) = sample.disturbance() else {
                        break;
                    };
                    println!("{why}: measuring again");
                    std::thread::sleep(Duration::from_secs(1));
                    settle(&servers);
                    print!("{label}");
                    sample = measure(args, &me, server.name, load, round, endpoint, &others)?;
                }
                let disturbed = sample
                    .disturbance()
                    .map(|why| format!("  (still after {STALL_RETRIES} repeats: {why})"))
                    .unwrap_or_default();
                println!(
                    "{:>10.0} {:<6} p50 {:>8.0} us  p99 {:>8.0} us  cpu server {:>3.0}% generator {:>3.0}%{}{disturbed}",
                    sample.rate,
                    load.unit(),
                    sample.p50_us,
                    sample.p99_us,
                    sample.server_cpu * 100.0,
                    sample.generator_cpu * 100.0,
                    if sample.errors > 0 {
                        format!("  errors {}", sample.errors)
                    } else {
                        String::new()
                    }
                );
                samples.push(sample);
            }
        }
    }
    println!(
        "bench: {} measurements in {:.0} s",
        samples.len(),
        started.elapsed().as_secs_f64()
    );
    let medians = medians(&samples, &servers, &loads);
    Ok(Results {
        machine: machine(lws_version),
        rounds: args.rounds,
        seconds: args.seconds,
        connections: args.connections,
        generator_spin_us: args.spin_us,
        servers: servers
            .iter()
            .map(|s| ServerInfo {
                name: s.name,
                what: s.what,
            })
            .collect(),
        samples,
        medians,
    })
}

/// Per server and load, the round with the median rate, with its p50, p99
/// and server CPU per operation each replaced by their own median over the
/// rounds (generator CPU and RSS stay that round's). The p99 of the one
/// round whose rate was the median is that round's luck: one pause of the
/// machine in it decides it, in either direction.
fn medians(samples: &[Sample], servers: &[Server], loads: &[Load]) -> Vec<Sample> {
    let mut out = Vec::new();
    for &load in loads {
        for s in servers {
            let mut runs: Vec<&Sample> = samples
                .iter()
                .filter(|x| x.server == s.name && x.load == load)
                .collect();
            if runs.is_empty() {
                continue;
            }
            runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
            let mut m = runs[runs.len() / 2].clone();
            m.p50_us = median(runs.iter().map(|r| r.p50_us));
            m.p99_us = median(runs.iter().map(|r| r.p99_us));
            m.server_us_per_op = median(runs.iter().map(|r| r.server_us_per_op));
            out.push(m);
        }
    }
    out
}

/// The median of `values` (the upper one of an even count); `values` is
/// not empty.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A free port on 127.0.0.1 (bound, then released for the server to take).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `cmd` pinned to core 0, its output to `log`, and waits until `addr`
/// accepts connections.
fn start(
    name: &str,
    mut cmd: Command,
    log: &Path,
    addrs: &[SocketAddr],
) -> Result<Child, Box<dyn std::error::Error>> {
    let out = std::fs::File::create(log)?;
    cmd.stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name} ({cmd:?}): {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    for addr in addrs {
        while TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = child.try_wait()? {
                return Err(format!(
                    "{name} exited ({status}) before listening on {addr}; its log: {}",
                    log.display()
                )
                .into());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!(
                    "{name} did not listen on {addr} within 20 s; its log: {}",
                    log.display()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(child)
}

fn pinned(core: u32, program: &Path) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(core.to_string()).arg(program);
    cmd
}

/// The connection table of every wasmgate server: room for the load's
/// connections, a few stragglers of the previous load and the harness's
/// readiness probes.
fn device_connections(load_connections: usize) -> usize {
    load_connections * 2 + 16
}

/// The simulator's bench device: `hello` at `/`, the 64-session echo guest
/// for WebSocket upgrades, plain and TLS (the device certificate).
fn device_config(http: u16, https: u16, connections: usize) -> String {
    let max_connections = device_connections(connections);
    let pages = serve::GUEST_LIMITS.max_memory_pages;
    let session = serve::GUEST_LIMITS.max_session_data_size;
    format!(
        r#"# Written by wasmgate-bench run: the benchmark device.
[device]
name = "wasmgate bench device"

[limits]
max_connections = {max_connections}

[guest]   # ws-echo-64's 64 sessions of three 4 KiB pieces
max_memory_pages = {pages}
max_session_data_size = {session}

[[protocol]]
name = "hello"
module = "builtin:hello"

[[protocol]]
name = "echo_server"
module = "builtin:ws-echo-64"

[[listener]]
name = "http"
port = 80
forward = {http}
mounts = {{ "/" = "hello" }}
websocket = ["echo_server"]
default_websocket = "echo_server"

[[listener]]
name = "https"
port = 443
forward = {https}
tls = "device"
mounts = {{ "/" = "hello" }}
websocket = ["echo_server"]
default_websocket = "echo_server"
"#
    )
}

fn start_servers(
    args: &RunArgs,
    work: &Path,
    me: &Path,
) -> Result<Vec<Server>, Box<dyn std::error::Error>> {
    let mut servers = Vec::new();
    let localhost = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

    // wasmgate on the host's sockets first: it makes the device certificate
    // that every TLS server then uses.
    for (name, what, net) in [
        (
            "wasmgate",
            "wasmgate sim --net host: guests, OS-socket driver",
            "host",
        ),
        (
            "wasmgate-smoltcp",
            "wasmgate sim --net smoltcp: guests, device TCP/IP stack behind the gateway",
            "smoltcp",
        ),
    ] {
        let (http, https) = (free_port()?, free_port()?);
        let dir = work.join(name);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("device.toml");
        std::fs::write(&config, device_config(http, https, args.connections))?;
        let flash = dir.join("flash");
        if name != "wasmgate" {
            // The same certificate as the first device.
            copy_dir(&work.join("wasmgate/flash/tls"), &flash.join("tls"))?;
        }
        let mut cmd = pinned(0, &args.wasmgate);
        cmd.args(["sim", "--net", net, "--config"])
            .arg(&config)
            .arg("--flash")
            .arg(&flash)
            .env("WASMGATE_LOG", "warn");
        let child = start(
            name,
            cmd,
            &dir.join("server.log"),
            &[localhost(http), localhost(https)],
        )?;
        let pid = child.id();
        servers.push(Server {
            name,
            what,
            children: vec![child],
            plain: Endpoint {
                addr: localhost(http),
                pid,
            },
            tls: Some(Endpoint {
                addr: localhost(https),
                pid,
            }),
        });
    }

    let (cert, key) = (
        work.join("wasmgate/flash/tls/server.pem"),
        work.join("wasmgate/flash/tls/server.key"),
    );
    let (plain, tls) = (free_port()?, free_port()?);
    let mut cmd = pinned(0, &args.lws);
    cmd.arg(plain.to_string());
    let lws_plain = start("lws", cmd, &work.join("lws.log"), &[localhost(plain)])?;
    let mut cmd = pinned(0, &args.lws);
    cmd.arg(tls.to_string()).arg(&cert).arg(&key);
    let lws_tls = start(
        "lws (TLS)",
        cmd,
        &work.join("lws-tls.log"),
        &[localhost(tls)],
    )?;
    let (plain_pid, tls_pid) = (lws_plain.id(), lws_tls.id());
    servers.insert(
        0,
        Server {
            name: "lws",
            what: "libwebsockets baseline (tests/bench/lws-baseline.c; OpenSSL for TLS)",
            children: vec![lws_plain, lws_tls],
            plain: Endpoint {
                addr: localhost(plain),
                pid: plain_pid,
            },
            tls: Some(Endpoint {
                addr: localhost(tls),
                pid: tls_pid,
            }),
        },
    );

    let port = free_port()?;
    let mut cmd = pinned(0, me);
    cmd.args(["serve", "--handlers", "native", "--addr"])
        .arg(localhost(port).to_string())
        .arg("--max-connections")
        .arg(device_connections(args.connections).to_string());
    let native = start(
        "wasmgate-native",
        cmd,
        &work.join("native.log"),
        &[localhost(port)],
    )?;
    let pid = native.id();
    servers.push(Server {
        name: "wasmgate-native",
        what: "the same runtime and OS-socket driver, handlers compiled in (no interpreter)",
        children: vec![native],
        plain: Endpoint {
            addr: localhost(port),
            pid,
        },
        tls: None,
    });
    Ok(servers)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// Runs one load against one server.
fn measure(
    args: &RunArgs,
    me: &Path,
    server: &'static str,
    load: Load,
    round: usize,
    endpoint: Endpoint,
    others: &[u32],
) -> Result<Sample, Box<dyn std::error::Error>> {
    let seconds = args.seconds;
    let c = args.connections.to_string();
    let mut cmd;
    match load {
        Load::Http | Load::Https | Load::Connect => {
            let scheme = if load == Load::Https { "https" } else { "http" };
            cmd = pinned(1, Path::new("wrk"));
            cmd.args(["-t1", "-c", &c, "--latency", "-d"])
                .arg(format!("{seconds}s"))
                .arg(format!("{scheme}://{}/", endpoint.addr));
            if load == Load::Connect {
                cmd.args(["-H", "Connection: close"]);
            }
        }
        Load::Ws64 | Load::Ws64p | Load::Ws16k => {
            let (size, in_flight) = match load {
                Load::Ws64 => (64, 1),
                Load::Ws64p => (64, PIPELINED),
                _ => (16 * 1024, 1),
            };
            cmd = pinned(1, me);
            cmd.args(["ws-load", "--clients", &c, "--size"])
                .arg(size.to_string())
                .arg("--in-flight")
                .arg(in_flight.to_string())
                .arg("--addr")
                .arg(endpoint.addr.to_string())
                .arg("--warmup-ms")
                .arg("1000")
                .arg("--duration-ms")
                .arg((seconds * 1000).to_string())
                .arg("--spin-us")
                .arg(args.spin_us.to_string());
        }
    }
    let (output, mut cpu) = run_sampled(cmd, endpoint.pid, others)?;
    let mut generator_idle = 0.0;
    let (rate, p50_us, p99_us, errors) = match load {
        Load::Ws64 | Load::Ws64p | Load::Ws16k => {
            let line = output.lines().last().unwrap_or_default();
            let r: WsLoadResult = serde_json::from_str(line)
                .map_err(|e| format!("ws-load printed no result ({e}): {output}"))?;
            // Its own account of the measured period, which tells spinning
            // from work; `/proc` sees only a busy process.
            if r.seconds > 0.0 {
                generator_idle = r.idle_seconds / r.seconds;
                cpu.generator = ((r.cpu_seconds - r.idle_seconds) / r.seconds).max(0.0);
            }
            (r.msgs_per_sec, r.p50_us, r.p99_us, r.errors)
        }
        _ => parse_wrk(&output)?,
    };
    if rate <= 0.0 {
        return Err(format!(
            "{server} answered nothing under the {} load:\n{output}",
            load.name()
        )
        .into());
    }
    let (rss_kib, peak_rss_kib) = rss(endpoint.pid);
    Ok(Sample {
        server,
        load,
        round,
        rate,
        p50_us,
        p99_us,
        errors,
        server_cpu: cpu.server,
        generator_cpu: cpu.generator,
        generator_idle,
        server_us_per_op: cpu.server * 1e6 / rate,
        steal: cpu.steal,
        others: cpu.others,
        rss_kib,
        peak_rss_kib,
    })
}

#[derive(Debug, Default)]
struct Cpu {
    server: f64,
    generator: f64,
    steal: f64,
    others: f64,
}

/// Runs the generator to its end, sampling its, the server's and the `others`'
/// CPU time every 250 ms; the shares are taken from the second sample (after
/// the connections are up) to the last one.
fn run_sampled(
    mut cmd: Command,
    server: u32,
    others: &[u32],
) -> Result<(String, Cpu), Box<dyn std::error::Error>> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the load generator ({cmd:?}): {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let generator = child.id();
    let mut samples: Vec<(Instant, u64, u64, [u64; 2], u64)> = Vec::new();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let (Some(s), Some(g)) = (cpu_ticks(server), cpu_ticks(generator)) {
            samples.push((
                Instant::now(),
                s,
                g,
                steal_ticks().unwrap_or_default(),
                total_ticks(others.iter().copied()),
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let output = reader.join().unwrap_or_default();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        return Err(format!("the load generator failed ({status}): {err}{output}").into());
    }
    let mut cpu = Cpu::default();
    if let (Some(first), Some(last)) = (samples.get(1), samples.last()) {
        let secs = last.0.duration_since(first.0).as_secs_f64();
        if secs > 0.0 {
            cpu.server = (last.1 - first.1) as f64 / TICKS_PER_SEC / secs;
            cpu.generator = (last.2 - first.2) as f64 / TICKS_PER_SEC / secs;
            let stolen = (0..2).map(|i| last.3[i].saturating_sub(first.3[i]));
            cpu.steal = stolen.max().unwrap_or(0) as f64 / TICKS_PER_SEC / secs;
            cpu.others = last.4.saturating_sub(first.4) as f64 / TICKS_PER_SEC / secs;
        }
    }
    Ok((output, cpu))
}

/// Linux's USER_HZ: the unit of `/proc/PID/stat`'s CPU times.
pub const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU time of a process and its threads, in ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The CPU time of the processes in `pids` that are still there, in ticks.
fn total_ticks(pids: impl IntoIterator<Item = u32>) -> u64 {
    pids.into_iter().filter_map(cpu_ticks).sum()
}

/// Waits until the servers together use at most `QUIET` of core 0 (the
/// previous load's leftovers are over, and with at least one
/// `SETTLE_WINDOW`, TIME_WAIT and the servers' timers have had their turn),
/// at most `SETTLE_LIMIT`; past that, says which servers are still busy and
/// goes on.
fn settle(servers: &[Server]) {
    let ticks = |s: &Server| total_ticks(s.pids());
    let started = Instant::now();
    loop {
        let before: Vec<u64> = servers.iter().map(ticks).collect();
        std::thread::sleep(SETTLE_WINDOW);
        let mut busy: Vec<(&str, f64)> = servers
            .iter()
            .zip(&before)
            .map(|(s, &t0)| {
                let used = ticks(s).saturating_sub(t0) as f64 / TICKS_PER_SEC;
                (s.name, used / SETTLE_WINDOW.as_secs_f64())
            })
            .collect();
        let total: f64 = busy.iter().map(|&(_, b)| b).sum();
        if total <= QUIET {
            return;
        }
        if started.elapsed() >= SETTLE_LIMIT {
            busy.sort_by(|a, b| b.1.total_cmp(&a.1));
            let names: Vec<String> = busy
                .iter()
                .filter(|&&(_, b)| b > 0.0)
                .map(|&(name, b)| format!("{name} {:.0}%", b * 100.0))
                .collect();
            println!(
                "bench: the servers still use {:.0}% of core 0 {} s after the last load ({}); measuring anyway",
                total * 100.0,
                SETTLE_LIMIT.as_secs(),
                names.join(", ")
            );
            return;
        }
    }
}

/// Time the hypervisor gave to others on cores 0 and 1 (`steal`, the eighth
/// value of a core's line in `/proc/stat`), in ticks.
fn steal_ticks() -> Option<[u64; 2]> {
    parse_steal(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_steal(stat: &str) -> Option<[u64; 2]> {
    let mut out = [0; 2];
    for (i, core) in ["cpu0 ", "cpu1 "].into_iter().enumerate() {
        let line = stat.lines().find(|l| l.starts_with(core))?;
        out[i] = line.split_whitespace().nth(8)?.parse().ok()?;
    }
    Some(out)
}

/// Resident and peak resident set size of a process, in KiB.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Rate, p50 and p99 (microseconds) and errors from wrk's `--latency` output.
fn parse_wrk(out: &str) -> Result<(f64, f64, f64, u64), Box<dyn std::error::Error>> {
    let mut rate = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rate = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = wrk_duration_us(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = wrk_duration_us(v.trim());
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            errors += v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    match (rate, p50, p99) {
        (Some(r), Some(a), Some(b)) => Ok((r, a, b, errors)),
        _ => Err(format!("cannot read wrk's output:\n{out}").into()),
    }
}

/// `343.00us`, `1.34ms`, `2.00s` in microseconds.
fn wrk_duration_us(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        _ => return None,
    })
}

fn read_lws_version(log: &Path) -> String {
    let Ok(file) = std::fs::File::open(log) else {
        return String::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            let v = l.split("libwebsockets ").nth(1)?;
            Some(
                v.split_whitespace()
                    .next()?
                    .trim_end_matches('-')
                    .to_string(),
            )
        })
        .unwrap_or_default()
}

fn machine(lws_version: String) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        lws_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_latency_and_cost_is_its_own_median_over_the_rounds() {
        let sample = |round, rate, p99_us, server_us_per_op| Sample {
            server: "wasmgate",
            load: Load::Http,
            round,
            rate,
            p50_us: p99_us / 4.0,
            p99_us,
            errors: 0,
            server_cpu: 0.9,
            generator_cpu: 0.9,
            generator_idle: 0.0,
            server_us_per_op,
            steal: 0.0,
            others: 0.0,
            rss_kib: round as u64,
            peak_rss_kib: 0,
        };
        // The round with the median rate (round 2) had the worst p99.
        let samples = [
            sample(1, 100.0, 500.0, 6.0),
            sample(2, 120.0, 3_000.0, 5.0),
            sample(3, 140.0, 600.0, 7.0),
        ];
        let server = Server {
            name: "wasmgate",
            what: "a name only",
            children: Vec::new(),
            plain: Endpoint {
                addr: "127.0.0.1:9".parse().unwrap(),
                pid: 0,
            },
            tls: None,
        };
        let m = medians(&samples, &[server], &[Load::Http]);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].round, m[0].rate, m[0].rss_kib), (2, 120.0, 2));
        assert_eq!(m[0].p99_us, 600.0);
        assert_eq!(m[0].p50_us, 150.0);
        assert_eq!(m[0].server_us_per_op, 6.0);
    }

    #[test]
    fn steal_is_read_for_cores_0_and_1() {
        let stat = "cpu  1137348 0 228037 1369999 4399 0 88097 6296 0 0\n\
                    cpu0 584739 0 113877 671767 2141 0 41819 2869 0 0\n\
                    cpu1 552609 0 114159 698232 2257 0 46278 3426 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(parse_steal(stat), Some([2869, 3426]));
        assert_eq!(parse_steal("cpu0 1 2 3\n"), None, "a short line");
    }

    /// A stand-in server: a shell spinning on a core until it is killed.
    fn spinning_server() -> Server {
        let child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("sh runs");
        let pid = child.id();
        Server {
            name: "spinner",
            what: "a busy loop",
            children: vec![child],
            plain: Endpoint {
                addr: "127.0.0.1:9".parse().unwrap(),
                pid,
            },
            tls: None,
        }
    }

    #[test]
    fn settle_waits_until_a_busy_server_is_quiet() {
        let mut server = spinning_server();
        let pid = server.plain.pid;
        let before = total_ticks([pid]);
        std::thread::sleep(Duration::from_millis(300));
        assert!(total_ticks([pid]) > before, "the spinner uses CPU");
        let stop_after = Duration::from_millis(800);
        let waited = std::thread::scope(|scope| {
            let servers = std::slice::from_ref(&server);
            let waiter = scope.spawn(|| {
                let started = Instant::now();
                settle(servers);
                started.elapsed()
            });
            std::thread::sleep(stop_after);
            // SIGSTOP: the process stays (as a stopped server would) but
            // uses no more CPU. The shell's own `kill`: no procps needed.
            let stopped = Command::new("sh")
                .args(["-c", &format!("kill -STOP {pid}")])
                .status()
                .is_ok_and(|s| s.success());
            assert!(stopped, "cannot stop the spinner");
            waiter.join().unwrap()
        });
        assert!(
            waited >= stop_after,
            "settle returned while the server was busy: {waited:?}"
        );
        assert!(waited < SETTLE_LIMIT, "settle missed the quiet: {waited:?}");
        let _ = server.children[0].kill();
    }

    #[test]
    fn wrk_output_is_read() {
        let out = "Running 5s test @ http://127.0.0.1:7681/\n  1 threads and 50 connections\n\
            Latency Distribution\n     50%  343.00us\n     75%  500.00us\n     90%    1.00ms\n     99%    1.34ms\n\
            665000 requests in 5.00s, 50.00MB read\n  Socket errors: connect 0, read 7, write 1, timeout 0\n\
            Non-2xx or 3xx responses: 2\nRequests/sec: 132975.39\nTransfer/sec:     10.00MB\n";
        let (rate, p50, p99, errors) = parse_wrk(out).expect("parsed");
        assert_eq!(rate, 132975.39);
        assert_eq!(p50, 343.0);
        assert_eq!(p99, 1340.0);
        assert_eq!(errors, 10);
        assert!(parse_wrk("wrk: connection refused").is_err());
    }

    #[test]
    fn cpu_time_and_rss_of_this_process_are_read() {
        let pid = std::process::id();
        let before = cpu_ticks(pid).expect("own stat");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(300) {
            std::hint::black_box(0u64);
        }
        assert!(cpu_ticks(pid).expect("own stat") > before);
        let (rss, peak) = rss(pid);
        assert!(rss > 0 && peak >= rss, "{rss} {peak}");
    }
}
