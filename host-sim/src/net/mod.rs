//! The simulator's network: the device's smoltcp interface and a user-mode
//! gateway, joined by a virtual Ethernet link in memory (no root, no TAP).
//! [`link`] carries frames with seeded faults, [`phy`] is each end as a
//! smoltcp device, [`gateway`] joins the link to host sockets. Only the loop
//! here reads the clock.

pub mod dhcp;
pub mod dns;
pub mod gateway;
pub mod link;
pub mod phy;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smoltcp::wire::{Ipv4Cidr, Ipv6Cidr};
use wasmgate::Context;
use wasmgate::net::smol::{Ipv4Setup, NetConfig, SmolDriver};

pub use dns::DnsTable;
pub use gateway::{
    DEVICE_MAC, DEVICE_V4, DEVICE_V6, Forward, GATEWAY_V4, GATEWAY_V6, Gateway, GatewayConfig,
    PREFIX_V4, PREFIX_V6, default_dns,
};
pub use link::{Link, LinkFaults, LinkStats, Side};
pub use phy::LinkEnd;

/// The longest the loop sleeps when nothing is due (a backstop: host
/// sockets and deadlines wake it earlier).
pub const MAX_WAIT: Duration = Duration::from_millis(50);
/// IPv6 needs links of at least this MTU.
pub const IPV6_MIN_MTU: usize = 1280;

/// The simulated network's settings (the device config's `[network]`
/// section, and the command line).
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    /// The device takes its IPv4 address from the gateway's DHCP server
    /// (else it is 10.0.2.15/24, gateway 10.0.2.2).
    pub dhcp: bool,
    /// The device has fd00::15/64 too (router fd00::2).
    pub ipv6: bool,
    /// The device's connections to the gateway (or 127.0.0.1) on these ports
    /// go to these host addresses.
    pub relay: BTreeMap<u16, SocketAddr>,
    /// ...and on other ports to the host's loopback, same port (else they
    /// are refused).
    pub host_loopback: bool,
    /// Names the gateway's DNS answers.
    pub dns: DnsTable,
    /// The link's faults.
    pub link: LinkFaults,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            dhcp: false,
            ipv6: true,
            relay: BTreeMap::new(),
            host_loopback: true,
            dns: default_dns(),
            link: LinkFaults::NONE,
        }
    }
}

/// The device's smoltcp interface (the runtime's [`SmolDriver`]), the
/// gateway and the link between them, driven by one loop.
#[derive(Debug)]
pub struct SmolNetwork {
    link: Link,
    device_end: LinkEnd,
    gateway_end: LinkEnd,
    driver: SmolDriver,
    gateway: Gateway,
}

impl SmolNetwork {
    /// Brings up the link, the gateway (binding the `forwards` on the host)
    /// and the device's interface for `ctx`.
    ///
    /// # Errors
    ///
    /// A forward that cannot be bound (the address is in the message), IPv6
    /// on a link with an MTU under 1280, or an OS error from the poller.
    pub fn new(
        ctx: &Context,
        settings: &NetworkSettings,
        forwards: Vec<Forward>,
        now: Instant,
    ) -> io::Result<SmolNetwork> {
        let faults = settings.link;
        if settings.ipv6 && faults.mtu < IPV6_MIN_MTU {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "IPv6 needs an MTU of at least {IPV6_MIN_MTU} (the link has mtu={}); \
                     set `ipv6 = false` in [network] for a smaller one",
                    faults.mtu
                ),
            ));
        }
        let mut device_end = LinkEnd::new(faults.max_frame());
        let mut gateway_end = LinkEnd::trusting_rx(faults.max_frame());
        let gateway = Gateway::new(
            GatewayConfig {
                forwards,
                relay: settings.relay.clone(),
                host_loopback: settings.host_loopback,
                dns: settings.dns.clone(),
                ipv6: settings.ipv6,
                seed: faults.seed,
            },
            &mut gateway_end,
            now,
        )?;
        let ipv4 = if settings.dhcp {
            Ipv4Setup::Dhcp
        } else {
            Ipv4Setup::Static {
                address: Ipv4Cidr::new(DEVICE_V4, PREFIX_V4),
                gateway: Some(GATEWAY_V4),
            }
        };
        let mut net = NetConfig::small_soc(DEVICE_MAC, ipv4);
        net.ipv6 = settings
            .ipv6
            .then(|| (Ipv6Cidr::new(DEVICE_V6, PREFIX_V6), Some(GATEWAY_V6)));
        net.dns_servers = vec![GATEWAY_V4.into()];
        let driver = SmolDriver::new(ctx, net, &mut device_end, now);
        Ok(SmolNetwork {
            link: Link::new(faults),
            device_end,
            gateway_end,
            driver,
            gateway,
        })
    }

    /// The host addresses of the forwards, as bound, in the order given.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.gateway.local_addrs()
    }

    /// The device's IPv4 address now (static, or from DHCP once leased).
    pub fn device_ipv4(&self) -> Option<Ipv4Cidr> {
        self.driver.ipv4()
    }

    /// What the link did so far.
    pub fn link_stats(&self) -> LinkStats {
        self.link.stats()
    }

    /// One turn of the loop: the device, the gateway, the link; then sleep
    /// until the next deadline, a frame's arrival or host socket activity,
    /// at most `max_wait`.
    ///
    /// # Errors
    ///
    /// An OS error from the gateway's poller.
    pub fn turn(&mut self, ctx: &mut Context, max_wait: Duration) -> io::Result<()> {
        let now = Instant::now();
        shuttle(
            &mut self.link,
            &mut self.device_end,
            &mut self.gateway_end,
            now,
        );
        let device_again = self.driver.turn(ctx, &mut self.device_end, now);
        self.gateway.turn(&mut self.gateway_end, now);
        let delivered = shuttle(
            &mut self.link,
            &mut self.device_end,
            &mut self.gateway_end,
            now,
        );
        if delivered || device_again {
            // Frames to read, or work left: again at once (and the next
            // deadlines, which ask every socket, are not needed).
            return Ok(());
        }
        let device_due = self.driver.next_wake(now);
        let gateway_due = self.gateway.next_wake(now);
        let mut until = now + max_wait;
        for t in [device_due, gateway_due, self.link.next_delivery()]
            .into_iter()
            .flatten()
        {
            until = until.min(t);
        }
        let wait = until.saturating_duration_since(Instant::now());
        self.gateway.wait(wait)
    }

    /// Runs the loop until `stop` returns true (checked every turn).
    ///
    /// # Errors
    ///
    /// An OS error from the gateway's poller.
    pub fn run(&mut self, ctx: &mut Context, mut stop: impl FnMut() -> bool) -> io::Result<()> {
        while !stop() {
            self.turn(ctx, MAX_WAIT)?;
        }
        Ok(())
    }
}

/// Moves frames between the link and its two ends at `now`: what each end
/// sent goes on the link, what has arrived is handed to each end. Returns
/// true if a frame was handed to an end (the stations should run again).
pub fn shuttle(link: &mut Link, device: &mut LinkEnd, gateway: &mut LinkEnd, now: Instant) -> bool {
    while let Some(frame) = device.take_sent() {
        link.send(Side::Device, frame, now);
    }
    while let Some(frame) = gateway.take_sent() {
        link.send(Side::Gateway, frame, now);
    }
    LinkEnd::recycle(device, gateway);
    let mut delivered = false;
    while let Some(frame) = link.receive(Side::Device, now) {
        device.deliver(frame);
        delivered = true;
    }
    while let Some(frame) = link.receive(Side::Gateway, now) {
        gateway.deliver(frame);
        delivered = true;
    }
    delivered
}
