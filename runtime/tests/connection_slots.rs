//! Connection slots: a new connection takes the lowest free slot of the
//! table, whichever slots closed and in whatever order, until all
//! `max_connections` are busy (the context keeps where the free slots start
//! instead of searching the whole table each time).

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use wasmgate::Context;
use wasmgate::context::{AcceptError, ConnId};

fn accept(ctx: &mut Context, now: Instant) -> Result<ConnId, AcceptError> {
    ctx.accept(0, SocketAddr::from(([127, 0, 0, 1], 40000)), now)
}

#[test]
fn a_new_connection_takes_the_lowest_free_slot() {
    let now = Instant::now();
    let mut ctx = common::device("hello", wasmgate_guests::HELLO.to_vec());
    let max = ctx.config().limits.max_connections;
    let ids: Vec<ConnId> = (0..max)
        .map(|_| accept(&mut ctx, now).expect("a free slot"))
        .collect();
    let slots: Vec<usize> = ids.iter().map(|id| id.index()).collect();
    assert_eq!(slots, (0..max).collect::<Vec<_>>(), "filled in order");
    assert!(matches!(accept(&mut ctx, now), Err(AcceptError::Full)));

    // Free a high slot, then a low one: the low one is taken first.
    ctx.close(ids[5], now);
    ctx.close(ids[2], now);
    assert_eq!(accept(&mut ctx, now).expect("slot 2").index(), 2);
    assert_eq!(accept(&mut ctx, now).expect("slot 5").index(), 5);
    assert!(matches!(accept(&mut ctx, now), Err(AcceptError::Full)));

    // Free the first and then the last: both come back, lowest first, and
    // a reused slot gets a new handle.
    ctx.close(ids[0], now);
    ctx.close(ids[max - 1], now);
    let again = accept(&mut ctx, now).expect("slot 0");
    assert_eq!(again.index(), 0);
    assert_ne!(again, ids[0], "a new generation, so a new wsi");
    assert_eq!(
        accept(&mut ctx, now).expect("the last slot").index(),
        max - 1
    );
    assert!(matches!(accept(&mut ctx, now), Err(AcceptError::Full)));
}
