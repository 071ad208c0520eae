//! Host calls are paid from the callback's fuel, and a guest cannot flood the
//! log: work a guest asks of the host is bounded like its own instructions.

mod common;

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use wasmgate::Context;

/// A guest (protocol `logs`) whose `HTTP` callback runs `each` `$n` times in
/// a loop, then `after`; `imports` declares the host functions they call.
fn looping_guest(imports: &str, each: &str, n: u32, after: &str) -> Vec<u8> {
    let wat = format!(
        r#"(module
            {imports}
            (memory (export "memory") 1)
            (data (i32.const 0) "\01\00\00\00\00\01\00\00\00\02\00\00\00\04\00\00\08\00\00\00\04\00\00\00\00\03\00\00\04\00\00\00")
            (data (i32.const 768) "logs")
            (func (export "wasmgate_protocol") (result i32) (i32.const 0))
            (func (export "callback") (param $wsi i32) (param $reason i32) (param i32 i32 i32) (result i32)
              (local $i i32)
              (if (i32.ne (local.get $reason) (i32.const 12)) (then (return (i32.const 0))))
              (block $done
                (loop $again
                  (br_if $done (i32.ge_u (local.get $i) (i32.const {n})))
                  {each}
                  (local.set $i (i32.add (local.get $i) (i32.const 1)))
                  (br $again)))
              {after}
              (i32.const 0)))"#
    );
    wat::parse_str(wat).expect("test WAT parses")
}

/// A guest whose `HTTP` callback calls `lws_log` with 512 bytes `$n` times,
/// then answers 200 with `lws_return_http_status`.
fn log_loop_guest(n: u32) -> Vec<u8> {
    looping_guest(
        r#"(import "lws" "lws_log" (func $log (param i32 i32 i32) (result i32)))
           (import "lws" "lws_return_http_status" (func $status (param i32 i32 i32 i32) (result i32)))"#,
        "(drop (call $log (i32.const 1024) (i32.const 2048) (i32.const 512)))",
        n,
        "(drop (call $status (local.get $wsi) (i32.const 200) (i32.const 0) (i32.const 0)))",
    )
}

/// The tests of this file run one at a time: tracing caches per call site
/// whether anyone listens, and a guest logging on another test's thread
/// while the first recording installs `GuestLines`' global subscriber could
/// leave "nobody" in that cache after the subscriber's own rebuild of it.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn device(module: Vec<u8>) -> Context {
    common::device("logs", module)
}

/// The status code of the answer to one GET.
fn get_status(ctx: &mut Context) -> u16 {
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    let now = Instant::now();
    let id = ctx.accept(0, peer, now).expect("a free slot");
    ctx.receive(id, b"GET / HTTP/1.1\r\nHost: d\r\n\r\n", now);
    ctx.service(now);
    let tx = ctx.transmit(id).to_vec();
    ctx.close(id, now);
    let text = String::from_utf8_lossy(&tx);
    text[9..12]
        .parse()
        .unwrap_or_else(|_| panic!("a status line: {text}"))
}

#[test]
fn a_few_host_calls_fit_the_fuel_budget() {
    let _serial = one_at_a_time();
    assert_eq!(get_status(&mut device(log_loop_guest(10))), 200);
}

#[test]
fn host_calls_are_paid_from_the_callbacks_fuel() {
    let _serial = one_at_a_time();
    // 1000 calls are ~10k instructions of the guest's own, but 1000 x 512 bytes
    // of logging costs more than the default 5M fuel: the callback is stopped.
    assert_eq!(get_status(&mut device(log_loop_guest(1000))), 500);
}

#[test]
fn one_callback_logs_at_most_32_lines() {
    let _serial = one_at_a_time();
    let log = common::GuestLines::default();
    log.record(|| assert_eq!(get_status(&mut device(log_loop_guest(100))), 200));
    assert_eq!(log.lines().len(), 32);
}

/// A guest whose `HTTP` callback calls `lws_is_ssl` (a host call that
/// handles no bytes, so it costs the base price only) `$n` times and returns 0.
fn cheap_call_guest(n: u32) -> Vec<u8> {
    looping_guest(
        r#"(import "lws" "lws_is_ssl" (func $is_ssl (param i32) (result i32)))"#,
        "(drop (call $is_ssl (local.get $wsi)))",
        n,
        "",
    )
}

/// Fuel one `HTTP` callback of `cheap_call_guest(n)` uses, with `fuel` per
/// callback; `Err` if it did not return.
fn cheap_calls(n: u32, fuel: u64) -> (Result<i32, wasmgate::guest::Fault>, u64) {
    use wasmgate::config::GuestLimits;
    use wasmgate::guest::{Guest, reason};
    let limits = GuestLimits {
        fuel_per_callback: fuel,
        ..GuestLimits::DEFAULT
    };
    let guest = Guest::load(&Guest::engine(), "logs", &cheap_call_guest(n), limits)
        .expect("the guest loads");
    let mut instance = guest.instantiate(0).expect("starts");
    let before = instance.fuel_used();
    let outcome = instance.call(reason::HTTP, 1, None, b"/", None, 0);
    (outcome.result, instance.fuel_used() - before)
}

#[test]
fn cheap_host_calls_are_counted_when_the_callback_ends() {
    let _serial = one_at_a_time();
    // Three calls owe 300 units: less than a settlement, so they are taken
    // when the callback returns. Twenty-five owe 2,500: settled on the way too.
    let (none, base) = cheap_calls(0, 1_000_000);
    assert_eq!(none, Ok(0));
    for n in [3u32, 25] {
        let (result, used) = cheap_calls(n, 1_000_000);
        assert_eq!(result, Ok(0), "{n} calls");
        let host = u64::from(n) * 100;
        assert!(
            used >= base + host,
            "{n} calls used {used} fuel: the guest's own {base} plus at least {host} for the host"
        );
        // The guest's own loop costs a few units per turn, not a hundred.
        assert!(
            used < base + host + u64::from(n) * 50,
            "{n} calls used {used}"
        );
    }
}

#[test]
fn a_loop_of_cheap_host_calls_runs_out_of_fuel() {
    let _serial = one_at_a_time();
    // 1,000 turns of the loop cost the guest some thousands of units of its
    // own instructions, less than 20,000; the host's 100 per call is 100,000.
    let (result, _) = cheap_calls(1_000, 20_000);
    assert_eq!(result, Err(wasmgate::guest::Fault::OutOfFuel));
    // Forty calls (4,000 units) fit the same budget.
    assert_eq!(cheap_calls(40, 20_000).0, Ok(0));
}
