//! The gateway's DNS server: A and AAAA answers from a fixed table of names,
//! NXDOMAIN for every other name. Bytes in, bytes out (one UDP payload each);
//! no recursion, nothing asked of the host's resolver.

use std::collections::BTreeMap;
use std::net::IpAddr;

use smoltcp::wire::{DnsFlags, DnsOpcode, DnsPacket, DnsQueryType, DnsQuestion, DnsRcode};

/// Time to live of the answers, seconds.
pub const TTL: u32 = 60;
const HEADER: usize = 12;
const CLASS_IN: u16 = 1;

/// Names (lower case, no trailing dot) and their addresses.
pub type DnsTable = BTreeMap<String, Vec<IpAddr>>;

/// The answer to a query (a UDP payload sent to port 53), or `None` for
/// something that is not a query at all (a response, a runt).
pub fn answer(query: &[u8], table: &DnsTable) -> Option<Vec<u8>> {
    let packet = DnsPacket::new_checked(query).ok()?;
    if packet.flags().contains(DnsFlags::RESPONSE) {
        return None;
    }
    let id = packet.transaction_id();
    let rd = packet.flags() & DnsFlags::RECURSION_DESIRED;
    if packet.opcode() != DnsOpcode::Query {
        return Some(header_only(id, rd, packet.opcode(), DnsRcode::NotImp));
    }
    if packet.question_count() != 1 {
        return Some(header_only(id, rd, DnsOpcode::Query, DnsRcode::FormErr));
    }
    let Ok((_, question)) = DnsQuestion::parse(packet.payload()) else {
        return Some(header_only(id, rd, DnsOpcode::Query, DnsRcode::FormErr));
    };
    let mut labels = Vec::new();
    for label in packet.parse_name(question.name) {
        let Ok(label) = label else {
            return Some(header_only(id, rd, DnsOpcode::Query, DnsRcode::FormErr));
        };
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
    }
    let name = labels.join(".");
    let (rcode, addrs): (DnsRcode, Vec<IpAddr>) = match table.get(&name) {
        None => (DnsRcode::NXDomain, Vec::new()),
        Some(addrs) => (
            DnsRcode::NoError,
            addrs
                .iter()
                .copied()
                .filter(|a| match question.type_ {
                    DnsQueryType::A => a.is_ipv4(),
                    DnsQueryType::Aaaa => a.is_ipv6(),
                    _ => false,
                })
                .collect(),
        ),
    };
    let mut out = header_only(id, rd, DnsOpcode::Query, rcode);
    out[4..6].copy_from_slice(&1u16.to_be_bytes());
    out[6..8].copy_from_slice(&(addrs.len() as u16).to_be_bytes());
    let start = out.len();
    out.resize(start + question.buffer_len(), 0);
    question.emit(&mut out[start..]);
    for addr in addrs {
        // The name is the question's, by pointer (offset 12).
        out.extend_from_slice(&[0xC0, HEADER as u8]);
        let (kind, data): (DnsQueryType, Vec<u8>) = match addr {
            IpAddr::V4(a) => (DnsQueryType::A, a.octets().to_vec()),
            IpAddr::V6(a) => (DnsQueryType::Aaaa, a.octets().to_vec()),
        };
        out.extend_from_slice(&u16::from(kind).to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}

/// A response header with no records: authoritative, not recursive.
fn header_only(id: u16, rd: DnsFlags, opcode: DnsOpcode, rcode: DnsRcode) -> Vec<u8> {
    let flags = DnsFlags::RESPONSE | DnsFlags::AUTHORITATIVE | rd;
    let bits = flags.bits() | (u16::from(u8::from(opcode)) << 11) | u16::from(u8::from(rcode));
    let mut out = vec![0; HEADER];
    out[0..2].copy_from_slice(&id.to_be_bytes());
    out[2..4].copy_from_slice(&bits.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{DnsRecord, DnsRecordData, DnsRepr};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn table() -> DnsTable {
        let gw = vec![
            IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)),
            IpAddr::V6("fd00::2".parse::<Ipv6Addr>().unwrap()),
        ];
        BTreeMap::from([
            ("gateway".to_string(), gw.clone()),
            ("host.wasmgate".to_string(), gw),
            (
                "localhost".to_string(),
                vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ),
        ])
    }

    /// A query as smoltcp's DNS socket sends it.
    fn query(name: &str, type_: DnsQueryType) -> Vec<u8> {
        let mut raw = Vec::new();
        for label in name.split('.') {
            raw.push(label.len() as u8);
            raw.extend_from_slice(label.as_bytes());
        }
        raw.push(0);
        let repr = DnsRepr {
            transaction_id: 0xBEEF,
            opcode: DnsOpcode::Query,
            flags: DnsFlags::RECURSION_DESIRED,
            question: DnsQuestion { name: &raw, type_ },
        };
        let mut buf = vec![0; repr.buffer_len()];
        repr.emit(&mut DnsPacket::new_unchecked(&mut buf[..]));
        buf
    }

    /// (rcode, addresses) of a response, checking its header and question.
    fn parse(response: &[u8], type_: DnsQueryType) -> (DnsRcode, Vec<IpAddr>) {
        let p = DnsPacket::new_checked(response).unwrap();
        assert_eq!(p.transaction_id(), 0xBEEF);
        assert!(
            p.flags()
                .contains(DnsFlags::RESPONSE | DnsFlags::RECURSION_DESIRED)
        );
        assert_eq!(p.opcode(), DnsOpcode::Query);
        assert_eq!(p.question_count(), 1);
        let (mut rest, q) = DnsQuestion::parse(p.payload()).unwrap();
        assert_eq!(q.type_, type_);
        let mut addrs = Vec::new();
        for _ in 0..p.answer_record_count() {
            let (more, record): (&[u8], DnsRecord<'_>) = DnsRecord::parse(rest).unwrap();
            rest = more;
            assert_eq!(record.ttl, TTL);
            let name: Vec<&[u8]> = p.parse_name(record.name).map(Result::unwrap).collect();
            let asked: Vec<&[u8]> = p.parse_name(q.name).map(Result::unwrap).collect();
            assert_eq!(name, asked, "the answer names the question");
            match record.data {
                DnsRecordData::A(a) => addrs.push(IpAddr::V4(a)),
                DnsRecordData::Aaaa(a) => addrs.push(IpAddr::V6(a)),
                other => panic!("unexpected record {other:?}"),
            }
        }
        assert!(rest.is_empty());
        (p.rcode(), addrs)
    }

    #[test]
    fn known_names_get_their_a_and_aaaa_records() {
        let t = table();
        let a = answer(&query("gateway", DnsQueryType::A), &t).unwrap();
        assert_eq!(
            parse(&a, DnsQueryType::A),
            (
                DnsRcode::NoError,
                vec![IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2))]
            )
        );
        let aaaa = answer(&query("Host.Wasmgate", DnsQueryType::Aaaa), &t).unwrap();
        assert_eq!(
            parse(&aaaa, DnsQueryType::Aaaa),
            (DnsRcode::NoError, vec!["fd00::2".parse().unwrap()]),
            "names are case-insensitive"
        );
        let none = answer(&query("localhost", DnsQueryType::Aaaa), &t).unwrap();
        assert_eq!(
            parse(&none, DnsQueryType::Aaaa),
            (DnsRcode::NoError, vec![]),
            "a known name without that kind of address: no records, no error"
        );
    }

    #[test]
    fn unknown_names_are_nxdomain() {
        let r = answer(&query("example.com", DnsQueryType::A), &table()).unwrap();
        assert_eq!(parse(&r, DnsQueryType::A), (DnsRcode::NXDomain, vec![]));
    }

    #[test]
    fn responses_and_runts_get_nothing_and_odd_queries_an_error() {
        let t = table();
        let mut q = query("gateway", DnsQueryType::A);
        assert!(answer(&q[..5], &t).is_none());
        q[2] |= 0x80; // a response
        assert!(answer(&q, &t).is_none());

        let mut q = query("gateway", DnsQueryType::A);
        q[5] = 2; // two questions
        let r = answer(&q, &t).unwrap();
        assert_eq!(
            DnsPacket::new_checked(&r[..]).unwrap().rcode(),
            DnsRcode::FormErr
        );

        let mut q = query("gateway", DnsQueryType::A);
        q[2] |= 0x01 << 3; // opcode 1 (status)
        let r = answer(&q, &t).unwrap();
        assert_eq!(
            DnsPacket::new_checked(&r[..]).unwrap().rcode(),
            DnsRcode::NotImp
        );
    }
}
