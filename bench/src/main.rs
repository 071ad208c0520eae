//! `wasmgate-bench`: the side-by-side benchmark of wasmgate and the
//! libwebsockets baseline (see `docs/benchmarks.md`).

mod ws_load;

fn main() {}
