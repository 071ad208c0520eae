//! One end of the virtual link as a smoltcp [`Device`]: frames the link
//! delivered wait in `rx`, frames the interface sent wait in `tx` until the
//! loop puts them on the [`Link`](super::link::Link). Plain queues: no clock,
//! no faults (the link does those).

use std::collections::VecDeque;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Frames an end holds for sending at most; past it the interface is told
/// the device is busy (`transmit` gives no token) and tries again later.
pub const TX_QUEUE_FRAMES: usize = 256;

/// One end of the link (medium Ethernet).
#[derive(Debug)]
pub struct LinkEnd {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    max_frame: usize,
}

impl LinkEnd {
    /// An end for frames of at most `max_frame` bytes (MTU + 14).
    pub fn new(max_frame: usize) -> LinkEnd {
        LinkEnd {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            max_frame,
        }
    }

    /// A frame arrived from the link.
    pub fn deliver(&mut self, frame: Vec<u8>) {
        self.rx.push_back(frame);
    }

    /// The next frame the interface sent.
    pub fn take_sent(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// Frames that arrived and are not yet read by the interface.
    pub fn pending(&self) -> impl Iterator<Item = &[u8]> {
        self.rx.iter().map(Vec::as_slice)
    }

    /// True when no frame waits in either direction.
    pub fn is_idle(&self) -> bool {
        self.rx.is_empty() && self.tx.is_empty()
    }
}

impl Device for LinkEnd {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        (self.tx.len() < TX_QUEUE_FRAMES).then_some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.max_frame;
        caps
    }
}

/// A received frame.
#[derive(Debug)]
pub struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

/// Room for one frame to send.
#[derive(Debug)]
pub struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::{RxToken as _, TxToken as _};

    #[test]
    fn frames_sent_come_out_in_order_and_delivered_ones_are_received() {
        let mut end = LinkEnd::new(1514);
        assert_eq!(end.capabilities().ip_mtu(), 1500);
        let now = Instant::from_millis(0);
        end.transmit(now)
            .unwrap()
            .consume(3, |b| b.copy_from_slice(b"one"));
        end.transmit(now)
            .unwrap()
            .consume(3, |b| b.copy_from_slice(b"two"));
        assert_eq!(end.take_sent().as_deref(), Some(&b"one"[..]));
        assert_eq!(end.take_sent().as_deref(), Some(&b"two"[..]));
        assert!(end.take_sent().is_none());

        end.deliver(b"in".to_vec());
        assert_eq!(end.pending().count(), 1);
        let (rx, _tx) = end.receive(now).unwrap();
        assert_eq!(rx.consume(|b| b.to_vec()), b"in");
        assert!(end.receive(now).is_none());
        assert!(end.is_idle());
    }

    #[test]
    fn a_full_send_queue_refuses_tokens() {
        let mut end = LinkEnd::new(1514);
        let now = Instant::from_millis(0);
        for _ in 0..TX_QUEUE_FRAMES {
            end.transmit(now).unwrap().consume(1, |_| ());
        }
        assert!(end.transmit(now).is_none());
        end.take_sent();
        assert!(end.transmit(now).is_some());
    }
}
