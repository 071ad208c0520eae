//! The results of `run`: a table of ratios to libwebsockets, the targets
//! checked against them, `side_by_side.json` and `side_by_side.png`.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::harness::{Load, Results, Sample};

/// One target of the benchmarks issue, checked against this run.
#[derive(Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub wanted: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// Prints the table and the targets, writes the JSON and the chart. The
/// micro-benchmarks' JSON (`guest_vs_native.json`, `conn_memory.json`) in
/// `out`, if there, join the targets.
pub fn write(results: &Results, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    println!();
    println!(
        "Medians of {} rounds of {} s, {} connections; ratio = rate / lws rate; \
         us/op = server CPU per request, message or connection; lws/op = lws us/op / us/op",
        results.rounds, results.seconds, results.connections
    );
    println!(
        "{:<8} {:<16} {:>11} {:>7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7} {:>9}",
        "load",
        "server",
        "rate",
        "ratio",
        "p50 us",
        "p99 us",
        "srv cpu",
        "gen cpu",
        "us/op",
        "lws/op",
        "rss KiB"
    );
    for m in &results.medians {
        let ratio = lws_rate(results, m.load).map(|base| m.rate / base);
        // The server's CPU per operation against lws': its efficiency, which
        // holds even where the load generator set the pace.
        let cost =
            median_of(results, "lws", m.load).map(|l| l.server_us_per_op / m.server_us_per_op);
        println!(
            "{:<8} {:<16} {:>11.0} {:>7} {:>9.0} {:>9.0} {:>7.0}% {:>7.0}% {:>9.2} {:>7} {:>9}",
            format!("{:?}", m.load).to_lowercase(),
            m.server,
            m.rate,
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            m.p50_us,
            m.p99_us,
            m.server_cpu * 100.0,
            m.generator_cpu * 100.0,
            m.server_us_per_op,
            cost.map_or("-".into(), |c| format!("{c:.2}x")),
            m.peak_rss_kib
        );
    }
    let saturated: Vec<&Sample> = results
        .samples
        .iter()
        .filter(|s| s.generator_cpu > GENERATOR_SATURATED)
        .collect();
    println!();
    if saturated.is_empty() {
        println!(
            "Load generators: below {:.0}% of their core in every measurement: the servers set the pace.",
            GENERATOR_SATURATED * 100.0
        );
    } else {
        println!(
            "Load generators above {:.0}% of their core (the client may be the limit there):",
            GENERATOR_SATURATED * 100.0
        );
        for s in saturated {
            println!(
                "  {:?} against {} (round {}): generator {:.0}%, server {:.0}%",
                s.load,
                s.server,
                s.round + 1,
                s.generator_cpu * 100.0,
                s.server_cpu * 100.0
            );
        }
    }

    let targets = targets(results, out);
    println!();
    println!("Targets:");
    for t in &targets {
        let mark = match t.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        println!(
            "  {:<52} want {:<14} got {:<28} {mark}",
            t.what, t.wanted, t.measured
        );
    }

    let json = serde_json::json!({
        "bench": "side_by_side",
        "command": "tests/bench/run.sh",
        "results": results,
        "targets": targets,
        "micro": {
            "guest_vs_native": read_json(&out.join("guest_vs_native.json")),
            "conn_memory": read_json(&out.join("conn_memory.json")),
        },
    });
    let path = out.join("side_by_side.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")?;
    println!();
    println!("bench: wrote {}", path.display());
    let png = out.join("side_by_side.png");
    match chart(results, &png) {
        Ok(()) => println!("bench: wrote {}", png.display()),
        Err(e) => println!("bench: no chart ({e})"),
    }
    Ok(())
}

/// A generator using more than this share of its core may be what limits
/// the rate.
const GENERATOR_SATURATED: f64 = 0.9;

fn median_of<'a>(results: &'a Results, server: &str, load: Load) -> Option<&'a Sample> {
    results
        .medians
        .iter()
        .find(|m| m.server == server && m.load == load)
}

/// The server CPU per operation (µs) of `server` and of `base` under `load`,
/// each its median over the rounds.
fn costs(results: &Results, (server, base): (&str, &str), load: Load) -> Option<(f64, f64)> {
    median_of(results, server, load)
        .zip(median_of(results, base, load))
        .map(|(s, b)| (s.server_us_per_op, b.server_us_per_op))
}

fn lws_rate(results: &Results, load: Load) -> Option<f64> {
    median_of(results, "lws", load).map(|m| m.rate)
}

fn read_json(path: &Path) -> Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

fn ratio_target(
    results: &Results,
    what: &str,
    (server, base): (&str, &str),
    load: Load,
    at_least: f64,
) -> Target {
    let r = median_of(results, server, load)
        .zip(median_of(results, base, load))
        .map(|(a, b)| a.rate / b.rate);
    Target {
        what: what.into(),
        wanted: format!(">= {at_least:.1}x"),
        measured: r.map_or("-".into(), |r| format!("{r:.2}x")),
        met: r.map(|r| r >= at_least),
    }
}

fn targets(results: &Results, out: &Path) -> Vec<Target> {
    let mut t = vec![ratio_target(
        results,
        "HTTP keep-alive req/s, wasmgate / lws",
        ("wasmgate", "lws"),
        Load::Http,
        1.5,
    )];
    let p99 = median_of(results, "wasmgate", Load::Http).zip(median_of(results, "lws", Load::Http));
    t.push(Target {
        what: "HTTP keep-alive p99 latency, wasmgate vs lws".into(),
        wanted: "no worse".into(),
        measured: p99.map_or("-".into(), |(w, l)| {
            format!("{:.0} us vs {:.0} us", w.p99_us, l.p99_us)
        }),
        met: p99.map(|(w, l)| w.p99_us <= l.p99_us),
    });
    t.push(ratio_target(
        results,
        "WebSocket echo msg/s (64 B), wasmgate / lws",
        ("wasmgate", "lws"),
        Load::Ws64,
        1.5,
    ));
    t.push(ratio_target(
        results,
        "the same, pipelined (lws the limit, not the generator)",
        ("wasmgate", "lws"),
        Load::Ws64p,
        1.5,
    ));
    t.push(ratio_target(
        results,
        "HTTPS req/s, wasmgate / lws (OpenSSL)",
        ("wasmgate", "lws"),
        Load::Https,
        1.0,
    ));
    t.push(ratio_target(
        results,
        "smoltcp device path / OS-socket driver (HTTP)",
        ("wasmgate-smoltcp", "wasmgate"),
        Load::Http,
        0.5,
    ));
    t.push(ratio_target(
        results,
        "the same, 16 KiB WebSocket echoes (its slowest)",
        ("wasmgate-smoltcp", "wasmgate"),
        Load::Ws16k,
        0.5,
    ));
    // The OS driver's 16 KiB rate can be its generator's: its CPU per
    // message says what the rate may not.
    let cost = costs(results, ("wasmgate-smoltcp", "wasmgate"), Load::Ws16k);
    t.push(Target {
        what: "the same by server CPU per message".into(),
        wanted: ">= 0.5x".into(),
        measured: cost.map_or("-".into(), |(s, o)| {
            format!("{:.2}x ({o:.2} vs {s:.2} us)", o / s)
        }),
        met: cost.map(|(s, o)| o / s >= 0.5),
    });
    for (load, what) in [
        (Load::Http, "guest / native server CPU per request (HTTP)"),
        (
            Load::Ws64p,
            "guest / native server CPU per message (WS 64 B)",
        ),
    ] {
        let cost = costs(results, ("wasmgate", "wasmgate-native"), load);
        t.push(Target {
            what: what.into(),
            wanted: "<= 1.15x".into(),
            measured: cost.map_or("-".into(), |(g, n)| {
                format!("{:.2}x ({g:.2} vs {n:.2} us)", g / n)
            }),
            met: cost.map(|(g, n)| g / n <= 1.15),
        });
    }
    let micro = read_json(&out.join("guest_vs_native.json"));
    for (what, ratio, guest, native) in [
        (
            "guest / native per request, no sockets (HTTP)",
            "guest_over_native",
            "guest_ns_per_request",
            "native_ns_per_request",
        ),
        (
            "guest / native per message, no sockets (WS 64 B)",
            "ws_guest_over_native",
            "ws_guest_ns_per_message",
            "ws_native_ns_per_message",
        ),
        (
            "guest / native per message, no sockets (WS 64 B, 8 per read)",
            "ws_pipelined_guest_over_native",
            "ws_pipelined_guest_ns_per_message",
            "ws_pipelined_native_ns_per_message",
        ),
    ] {
        let r = micro[ratio].as_f64();
        t.push(Target {
            what: what.into(),
            wanted: "<= 1.15x".into(),
            measured: r.map_or("-".into(), |r| {
                format!("{r:.2}x ({} vs {} ns)", micro[guest], micro[native])
            }),
            met: r.map(|r| r <= 1.15),
        });
    }
    let memory = read_json(&out.join("conn_memory.json"));
    for (kind, limit, what) in [
        ("ws", 4096.0, "idle memory per plain WebSocket connection"),
        ("wss", 32768.0, "idle memory per TLS WebSocket connection"),
    ] {
        let bytes = memory["rows"].as_array().and_then(|rows| {
            rows.iter()
                .filter(|r| r["kind"] == kind && r["connections"] == 1000)
                .find_map(|r| r["bytes_per_conn_after_2s_idle"].as_f64())
        });
        // The connection table's slot is paid per connection too.
        let slot = memory["knobs"]["connection_table_bytes_per_slot"]
            .as_f64()
            .unwrap_or(0.0);
        t.push(Target {
            what: what.into(),
            wanted: format!("<= {} B", limit as u64),
            measured: bytes.map_or("-".into(), |b| {
                format!("{:.0} B + {slot:.0} B table slot", b)
            }),
            met: bytes.map(|b| b + slot <= limit),
        });
    }
    t
}

const COLOURS: [RGBColor; 4] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
];

/// Grouped bars: per load, each server's rate as a ratio to lws.
fn chart(results: &Results, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    register_font()?;
    let loads: Vec<Load> = Load::ALL
        .into_iter()
        .filter(|l| results.medians.iter().any(|m| m.load == *l))
        .collect();
    let servers: Vec<&str> = results.servers.iter().map(|s| s.name).collect();
    let bars: Vec<(usize, usize, f64)> = loads
        .iter()
        .enumerate()
        .flat_map(|(li, &load)| {
            servers.iter().enumerate().filter_map(move |(si, s)| {
                let rate = median_of(results, s, load)?.rate;
                Some((li, si, rate / lws_rate(results, load)?))
            })
        })
        .collect();
    let top = bars.iter().map(|b| b.2).fold(1.0, f64::max) * 1.15;

    let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "wasmgate vs libwebsockets: throughput as a ratio to lws (same machine, same run)",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..loads.len() as f64, 0f64..top)?;
    let names: Vec<String> = loads
        .iter()
        .map(|l| match l {
            Load::Http => "HTTP keep-alive".to_string(),
            Load::Https => "HTTPS keep-alive".into(),
            Load::Ws64 => "WS echo 64 B".into(),
            Load::Ws64p => format!("WS 64 B, {} in flight", crate::harness::PIPELINED),
            Load::Ws16k => "WS echo 16 KiB".into(),
            Load::Connect => "new connections".into(),
        })
        .collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .x_labels(loads.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (*x - 0.5).round();
            if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("rate / lws rate")
        .y_label_formatter(&|y| format!("{y:.1}x"))
        .draw()?;
    let width = 0.8 / servers.len() as f64;
    for (si, name) in servers.iter().enumerate() {
        let colour = COLOURS[si % COLOURS.len()];
        chart
            .draw_series(bars.iter().filter(|b| b.1 == si).map(|&(li, _, r)| {
                let x0 = li as f64 + 0.1 + si as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, r)], colour.filled())
            }))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled()));
        chart.draw_series(bars.iter().filter(|b| b.1 == si).map(|&(li, _, r)| {
            let x = li as f64 + 0.1 + si as f64 * width;
            // Text hangs below its anchor: put the anchor a line above the bar.
            Text::new(format!("{r:.2}"), (x, r + top * 0.035), ("sans-serif", 13))
        }))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// plotters draws text with a font it is given: DejaVu Sans from the system
/// (`fonts-dejavu-core`, which `tests/bench/run.sh` installs).
fn register_font() -> Result<(), Box<dyn std::error::Error>> {
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let bytes = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e}"))?;
    // plotters keeps the font for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{FONT} is not a font plotters can read"))?;
    Ok(())
}
