//! Host calls are paid from the callback's fuel, and a guest cannot flood the
//! log: work a guest asks of the host is bounded like its own instructions.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use wasmgate::Context;

/// A guest whose `HTTP` callback calls `lws_log` with 512 bytes `$n` times,
/// then answers 200 with `lws_return_http_status`.
fn log_loop_guest(n: u32) -> Vec<u8> {
    let wat = format!(
        r#"(module
            (import "lws" "lws_log" (func $log (param i32 i32 i32) (result i32)))
            (import "lws" "lws_return_http_status" (func $status (param i32 i32 i32 i32) (result i32)))
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
                  (drop (call $log (i32.const 1024) (i32.const 2048) (i32.const 512)))
                  (local.set $i (i32.add (local.get $i) (i32.const 1)))
                  (br $again)))
              (drop (call $status (local.get $wsi) (i32.const 200) (i32.const 0) (i32.const 0)))
              (i32.const 0)))"#
    );
    wat::parse_str(wat).expect("test WAT parses")
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

/// Counts events whose target is `guest` (what guests log).
struct CountGuestLines(Arc<AtomicUsize>);

impl Subscriber for CountGuestLines {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if event.metadata().target() == "guest" {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn a_few_host_calls_fit_the_fuel_budget() {
    assert_eq!(get_status(&mut device(log_loop_guest(10))), 200);
}

#[test]
fn host_calls_are_paid_from_the_callbacks_fuel() {
    // 1000 calls are ~10k instructions of the guest's own, but 1000 x 512 bytes
    // of logging costs more than the default 5M fuel: the callback is stopped.
    assert_eq!(get_status(&mut device(log_loop_guest(1000))), 500);
}

#[test]
fn one_callback_logs_at_most_32_lines() {
    let lines = Arc::new(AtomicUsize::new(0));
    let subscriber = CountGuestLines(lines.clone());
    tracing::subscriber::with_default(subscriber, || {
        // Another test's thread may have cached "nobody listens" for the
        // guest log call site before this subscriber existed: ask again.
        tracing::callsite::rebuild_interest_cache();
        assert_eq!(get_status(&mut device(log_loop_guest(100))), 200);
    });
    assert_eq!(lines.load(Ordering::Relaxed), 32);
}
