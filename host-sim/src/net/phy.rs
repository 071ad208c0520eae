//! One end of the virtual link as a smoltcp [`Device`]: frames the link
//! delivered wait in `rx`, frames the interface sent wait in `tx` until the
//! loop puts them on the [`Link`](super::link::Link). Plain queues: no clock,
//! no faults (the link does those). A frame's buffer is used again for a
//! later frame ([`LinkEnd::recycle`]) instead of going back to the allocator.

use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Frames an end holds for sending at most; past it the interface is told
/// the device is busy (`transmit` gives no token) and tries again later.
pub const TX_QUEUE_FRAMES: usize = 256;
/// Buffers of frames already read that an end keeps for its next sends, at
/// most: as many as it may queue to send ([`TX_QUEUE_FRAMES`]), since with
/// tens of connections a turn moves hundreds of frames each way (with 64,
/// half the frames under 50 WebSocket clients were still new allocations).
/// A frame of the default MTU is 1,514 bytes: 384 KiB per list, two lists
/// per end, in the simulator's own memory.
pub const SPARE_FRAMES: usize = TX_QUEUE_FRAMES;

/// One end of the link (medium Ethernet).
#[derive(Debug)]
pub struct LinkEnd {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    /// Buffers of the frames this end read (at most [`SPARE_FRAMES`]),
    /// until [`recycle`](Self::recycle).
    read: Vec<Vec<u8>>,
    /// Buffers for the frames this end sends next.
    free: Vec<Vec<u8>>,
    max_frame: usize,
    checksum: ChecksumCapabilities,
}

impl LinkEnd {
    /// An end for frames of at most `max_frame` bytes (MTU + 14), that
    /// computes every checksum it sends and verifies every one it receives,
    /// as the device's network interface does.
    pub fn new(max_frame: usize) -> LinkEnd {
        LinkEnd {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            read: Vec::new(),
            free: Vec::new(),
            max_frame,
            checksum: ChecksumCapabilities::default(),
        }
    }

    /// An end like [`new`](Self::new)'s that computes the checksums it
    /// sends but does not verify those it receives: the gateway's end. The
    /// link drops, delays, reorders and duplicates frames but never changes
    /// a byte of one, so verifying them again on the simulator's side
    /// would only cost time (a sixth of the gateway's work per data
    /// segment); the device's end still verifies everything.
    pub fn trusting_rx(max_frame: usize) -> LinkEnd {
        let mut end = LinkEnd::new(max_frame);
        let c = &mut end.checksum;
        (c.ipv4, c.udp, c.tcp, c.icmpv4, c.icmpv6) = (
            Checksum::Tx,
            Checksum::Tx,
            Checksum::Tx,
            Checksum::Tx,
            Checksum::Tx,
        );
        end
    }

    /// Hands the buffers of the frames both ends have read to the ends'
    /// next sends, the end with fewer spare first, each keeping at most
    /// [`SPARE_FRAMES`]. Frames mostly flow one way (a transfer's data
    /// segments one way, ACKs the other), so the pool is shared.
    pub fn recycle(a: &mut LinkEnd, b: &mut LinkEnd) {
        for frame in a.read.drain(..).chain(b.read.drain(..)) {
            let to = if a.free.len() <= b.free.len() {
                &mut a.free
            } else {
                &mut b.free
            };
            if to.len() < SPARE_FRAMES {
                to.push(frame);
            }
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
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((
            RxToken {
                frame,
                read: &mut self.read,
            },
            TxToken {
                tx: &mut self.tx,
                free: &mut self.free,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        (self.tx.len() < TX_QUEUE_FRAMES).then_some(TxToken {
            tx: &mut self.tx,
            free: &mut self.free,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.max_frame;
        caps.checksum = self.checksum.clone();
        caps
    }
}

/// A received frame.
#[derive(Debug)]
pub struct RxToken<'a> {
    frame: Vec<u8>,
    read: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let r = f(&self.frame);
        if self.read.len() < SPARE_FRAMES {
            self.read.push(self.frame);
        }
        r
    }
}

/// Room for one frame to send.
#[derive(Debug)]
pub struct TxToken<'a> {
    tx: &'a mut VecDeque<Vec<u8>>,
    free: &'a mut Vec<Vec<u8>>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = self.free.pop().unwrap_or_default();
        // A used buffer keeps its old bytes, as a network card's ring does:
        // smoltcp writes every field of the frame (only the unused word of
        // an ICMP "unreachable" or "time exceeded" may keep old bytes, which
        // no reader looks at and the checksum covers as sent), so only the
        // part past the old frame's end is zeroed. Zeroing the whole frame
        // first was 1% of the simulator's work.
        frame.resize(len, 0);
        let r = f(&mut frame);
        self.tx.push_back(frame);
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
    fn read_frames_buffers_carry_the_next_frames_sent_by_either_end() {
        let now = Instant::from_millis(0);
        let (mut a, mut b) = (LinkEnd::new(1514), LinkEnd::new(1514));
        for _ in 0..3 {
            b.deliver(vec![7; 1514]);
        }
        let mut read = Vec::new();
        while let Some((rx, _)) = b.receive(now) {
            read.push(rx.consume(|f| f.as_ptr() as usize));
        }
        LinkEnd::recycle(&mut a, &mut b);
        // Shared out, the end with fewer spare first: two for a, one for b.
        a.transmit(now).unwrap().consume(60, |f| f.fill(1));
        a.transmit(now).unwrap().consume(60, |f| f.fill(1));
        b.transmit(now).unwrap().consume(60, |f| f.fill(1));
        let mut sent: Vec<usize> = std::iter::from_fn(|| a.take_sent())
            .chain(std::iter::from_fn(|| b.take_sent()))
            .map(|f| {
                assert_eq!(f, vec![1; 60], "a reused buffer holds only the new frame");
                f.as_ptr() as usize
            })
            .collect();
        sent.sort_unstable();
        read.sort_unstable();
        assert_eq!(
            sent, read,
            "every frame sent went out in a read frame's buffer"
        );
        // The pool is bounded, also between recycles.
        for _ in 0..3 * SPARE_FRAMES {
            b.deliver(vec![0; 64]);
            b.receive(now).unwrap().0.consume(|_| ());
        }
        assert_eq!(b.read.len(), SPARE_FRAMES);
        LinkEnd::recycle(&mut a, &mut b);
        for _ in 0..SPARE_FRAMES {
            a.deliver(vec![0; 64]);
            a.receive(now).unwrap().0.consume(|_| ());
        }
        LinkEnd::recycle(&mut a, &mut b);
        assert_eq!((a.free.len(), b.free.len()), (SPARE_FRAMES, SPARE_FRAMES));
    }

    #[test]
    fn only_the_trusting_end_skips_verifying_what_it_receives() {
        let device = LinkEnd::new(1514).capabilities().checksum;
        assert!(device.tcp.rx() && device.tcp.tx() && device.ipv4.rx() && device.udp.rx());
        let gateway = LinkEnd::trusting_rx(1514).capabilities().checksum;
        for c in [
            gateway.ipv4,
            gateway.udp,
            gateway.tcp,
            gateway.icmpv4,
            gateway.icmpv6,
        ] {
            assert!(
                !c.rx() && c.tx(),
                "computes what it sends, trusts what it gets"
            );
        }
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
