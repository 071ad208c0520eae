//! The gateway's DHCPv4 server, the least that serves one device: every
//! DISCOVER gets an OFFER of the one device address, a REQUEST for it an ACK
//! (a REQUEST for another address a NAK). Bytes in, bytes out; the gateway
//! moves them over UDP 67/68. smoltcp has a DHCP client but no server.

use std::net::Ipv4Addr;
use std::time::Duration;

use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress};

/// DHCP option 6: domain name servers.
const OPTION_DNS: u8 = 6;

/// What the server hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpServer {
    /// The server's own address (the server identifier).
    pub server: Ipv4Addr,
    /// The address offered to the device.
    pub offer: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// Default router.
    pub router: Ipv4Addr,
    /// DNS server.
    pub dns: Ipv4Addr,
    /// Lease time.
    pub lease: Duration,
}

/// An answer to send, and where: broadcast to a client without an address,
/// unicast to one that has it (renewing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpAnswer {
    /// UDP payload (to the client's port 68).
    pub payload: Vec<u8>,
    /// Destination address.
    pub to: Ipv4Addr,
    /// What the answer says.
    pub kind: DhcpMessageType,
}

impl DhcpServer {
    /// The answer to a client's message (a UDP payload sent to port 67), or
    /// `None` when there is nothing to say (not a request, a message for
    /// another server, a RELEASE...).
    pub fn answer(&self, request: &[u8]) -> Option<DhcpAnswer> {
        let packet = DhcpPacket::new_checked(request).ok()?;
        let req = DhcpRepr::parse(&packet).ok()?;
        let kind = match req.message_type {
            DhcpMessageType::Discover => DhcpMessageType::Offer,
            DhcpMessageType::Request => {
                if req.server_identifier.is_some_and(|s| s != self.server) {
                    return None; // the client took another server's offer
                }
                let wanted = req.requested_ip.unwrap_or(req.client_ip);
                if wanted == self.offer {
                    DhcpMessageType::Ack
                } else {
                    DhcpMessageType::Nak
                }
            }
            _ => return None,
        };
        Some(self.reply(
            kind,
            req.transaction_id,
            req.client_hardware_address,
            req.client_ip,
        ))
    }

    fn reply(
        &self,
        kind: DhcpMessageType,
        transaction_id: u32,
        client: EthernetAddress,
        client_ip: Ipv4Addr,
    ) -> DhcpAnswer {
        let nak = kind == DhcpMessageType::Nak;
        let dns = self.dns.octets();
        let options = [DhcpOption {
            kind: OPTION_DNS,
            data: &dns,
        }];
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        let repr = DhcpRepr {
            message_type: kind,
            transaction_id,
            secs: 0,
            client_hardware_address: client,
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: if nak {
                Ipv4Addr::UNSPECIFIED
            } else {
                self.offer
            },
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: (!nak).then_some(self.router),
            subnet_mask: (!nak).then_some(Ipv4Addr::from(mask)),
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(self.server),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: (!nak).then_some(self.lease.as_secs().min(u64::from(u32::MAX)) as u32),
            renew_duration: None,
            rebind_duration: None,
            additional_options: if nak { &[] } else { &options },
        };
        let mut payload = vec![0; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
            .expect("the buffer is the repr's own length");
        // A client that has its address (renewing) gets a unicast answer.
        let to = if client_ip.is_unspecified() || nak {
            Ipv4Addr::BROADCAST
        } else {
            client_ip
        };
        DhcpAnswer { payload, to, kind }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x15]);

    fn server() -> DhcpServer {
        DhcpServer {
            server: Ipv4Addr::new(10, 0, 2, 2),
            offer: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            router: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 2),
            lease: Duration::from_secs(3600),
        }
    }

    fn client_message(
        kind: DhcpMessageType,
        requested_ip: Option<Ipv4Addr>,
        server_identifier: Option<Ipv4Addr>,
    ) -> Vec<u8> {
        let repr = DhcpRepr {
            message_type: kind,
            transaction_id: 0x1234_5678,
            secs: 0,
            client_hardware_address: MAC,
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip,
            client_identifier: Some(MAC),
            server_identifier,
            parameter_request_list: Some(&[1, 3, 6]),
            dns_servers: None,
            max_size: Some(1432),
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut buf = vec![0; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        buf
    }

    fn parse(
        answer: &DhcpAnswer,
    ) -> (
        DhcpMessageType,
        Ipv4Addr,
        Option<Ipv4Addr>,
        Vec<Ipv4Addr>,
        Option<u32>,
        Option<Ipv4Addr>,
    ) {
        let packet = DhcpPacket::new_checked(&answer.payload[..]).unwrap();
        let repr = DhcpRepr::parse(&packet).unwrap();
        assert_eq!(repr.transaction_id, 0x1234_5678);
        assert_eq!(repr.client_hardware_address, MAC);
        assert_eq!(repr.server_identifier, Some(Ipv4Addr::new(10, 0, 2, 2)));
        (
            repr.message_type,
            repr.your_ip,
            repr.router,
            repr.dns_servers
                .map(|d| d.iter().copied().collect())
                .unwrap_or_default(),
            repr.lease_duration,
            repr.subnet_mask,
        )
    }

    #[test]
    fn a_discover_gets_an_offer_of_the_device_address() {
        let answer = server()
            .answer(&client_message(DhcpMessageType::Discover, None, None))
            .expect("an answer");
        assert_eq!(answer.to, Ipv4Addr::BROADCAST);
        assert_eq!(answer.kind, DhcpMessageType::Offer);
        let gw = Ipv4Addr::new(10, 0, 2, 2);
        assert_eq!(
            parse(&answer),
            (
                DhcpMessageType::Offer,
                Ipv4Addr::new(10, 0, 2, 15),
                Some(gw),
                vec![gw],
                Some(3600),
                Some(Ipv4Addr::new(255, 255, 255, 0)),
            )
        );
    }

    #[test]
    fn a_request_for_the_offer_is_acked_and_for_another_address_naked() {
        let s = server();
        let gw_addr = Ipv4Addr::new(10, 0, 2, 2);
        let gw = Some(gw_addr);
        let ack = s
            .answer(&client_message(
                DhcpMessageType::Request,
                Some(Ipv4Addr::new(10, 0, 2, 15)),
                gw,
            ))
            .unwrap();
        let (kind, yiaddr, router, dns, lease, _) = parse(&ack);
        assert_eq!(kind, DhcpMessageType::Ack);
        assert_eq!(yiaddr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!((router, dns, lease), (gw, vec![gw_addr], Some(3600)));

        let nak = s
            .answer(&client_message(
                DhcpMessageType::Request,
                Some(Ipv4Addr::new(10, 0, 2, 99)),
                gw,
            ))
            .unwrap();
        assert_eq!(parse(&nak).0, DhcpMessageType::Nak);
        assert_eq!(parse(&nak).1, Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn messages_for_another_server_or_of_other_kinds_get_no_answer() {
        let s = server();
        let other = Some(Ipv4Addr::new(10, 0, 2, 3));
        assert!(
            s.answer(&client_message(
                DhcpMessageType::Request,
                Some(Ipv4Addr::new(10, 0, 2, 15)),
                other
            ))
            .is_none()
        );
        assert!(
            s.answer(&client_message(DhcpMessageType::Release, None, None))
                .is_none()
        );
        assert!(s.answer(b"not dhcp").is_none());
        assert!(s.answer(&[]).is_none());
    }
}
