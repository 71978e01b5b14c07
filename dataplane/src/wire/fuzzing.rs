//! Drivers shared by the fuzz targets in `dataplane/fuzz/` and the property tests: feed
//! arbitrary bytes through every view's `new_checked`, every getter and every `Repr::parse`,
//! and check the invariants `parse_headers` promises. Built for tests and under the `fuzzing`
//! feature only.

use super::checksum::PseudoHeader;
use super::ipv6::ext;
use super::*;
use core::hint::black_box;
use core::net::{Ipv4Addr, Ipv6Addr};

const PH4: PseudoHeader = PseudoHeader::V4 {
    src: Ipv4Addr::new(192, 0, 2, 1),
    dst: Ipv4Addr::new(192, 0, 2, 2),
};
const PH6: PseudoHeader = PseudoHeader::V6 {
    src: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
    dst: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
};

/// Every view over `data` as if it were that view's header, then over the L3 and L4 bytes
/// of `data` read as a frame, so that seeds of real frames reach every layer.
pub fn views(data: &[u8]) {
    each_view(data);
    let Ok(f) = EthernetFrame::new_checked(data) else {
        return;
    };
    let l3 = f.payload();
    each_view(l3);
    if let Ok(ip) = Ipv4Packet::new_checked(l3) {
        each_view(ip.payload());
    }
    if let Ok(ip) = Ipv6Packet::new_checked(l3)
        && let Ok(up) = ext::walk(ip.next_header(), ip.payload())
    {
        each_view(&ip.payload()[up.offset..]);
    }
}

fn each_view(data: &[u8]) {
    ethernet(data);
    arp(data);
    ipv4(data);
    ipv6(data);
    icmpv4(data);
    icmpv6(data);
    udp(data);
    tcp(data);
}

/// `parse_headers`, checking that what it returns can be indexed and agrees with the views.
pub fn parse_headers(data: &[u8]) {
    let Ok(h) = super::parse_headers(data) else {
        return;
    };
    let (l3, l4) = (h.l3_offset as usize, h.l4_offset as usize);
    assert!(
        l3 <= l4 && l4 <= data.len(),
        "offsets {l3}/{l4} past a {}-byte frame",
        data.len()
    );
    let eth = EthernetFrame::new_checked(data).expect("parse_headers accepted the frame");
    assert_eq!(eth.header_len(), l3);
    match h.l3 {
        L3::Ipv4 { src, .. } => {
            let ip = Ipv4Packet::new_checked(&data[l3..]).expect("IPv4 header accepted");
            assert!(ip.verify_checksum());
            assert_eq!(ip.src_addr(), src);
        }
        L3::Ipv6 { dst, .. } => {
            let ip = Ipv6Packet::new_checked(&data[l3..]).expect("IPv6 header accepted");
            assert_eq!(ip.dst_addr(), dst);
        }
        L3::Arp => {
            ArpPacket::new_checked(&data[l3..]).expect("ARP accepted");
        }
        L3::Other => assert_eq!(l3, l4),
    }
    if h.src_port != 0 || h.dst_port != 0 {
        assert!(data.len() >= l4 + 4, "ports read past the frame");
    }
    if h.proto == ip_proto::TCP && (h.src_port, h.dst_port) != (0, 0) {
        TcpPacket::new_checked(&data[l4..]).expect("TCP header accepted");
    }
}

pub fn ethernet(data: &[u8]) {
    let Ok(f) = EthernetFrame::new_checked(data) else {
        return;
    };
    black_box((
        f.dst_addr(),
        f.src_addr(),
        f.ethertype(),
        f.tag_count(),
        f.header_len(),
    ));
    black_box((f.inner_ethertype(), f.payload()));
    for i in 0..=ethernet::MAX_TAGS {
        black_box(f.tag_tpid(i));
        if let Some(t) = f.vlan_tag(i) {
            black_box((
                t.tci(),
                t.pcp(),
                t.dei(),
                t.vid(),
                t.ethertype(),
                t.payload(),
            ));
        }
    }
    let _ = black_box(EthernetRepr::parse(&f));
    if let Ok(t) = VlanTag::new_checked(data) {
        black_box((t.tci(), t.vid(), t.payload()));
    }
}

pub fn arp(data: &[u8]) {
    let Ok(p) = ArpPacket::new_checked(data) else {
        return;
    };
    black_box((
        p.hardware_type(),
        p.protocol_type(),
        p.hardware_len(),
        p.protocol_len(),
    ));
    black_box((
        p.operation(),
        p.source_hardware_addr(),
        p.source_protocol_addr(),
    ));
    black_box((p.target_hardware_addr(), p.target_protocol_addr()));
    let _ = black_box(ArpRepr::parse(&p));
}

pub fn ipv4(data: &[u8]) {
    let Ok(p) = Ipv4Packet::new_checked(data) else {
        return;
    };
    black_box((
        p.version(),
        p.header_len(),
        p.dscp(),
        p.ecn(),
        p.total_len(),
        p.ident(),
    ));
    black_box((
        p.dont_frag(),
        p.more_frags(),
        p.frag_offset(),
        p.ttl(),
        p.protocol(),
    ));
    black_box((
        p.checksum(),
        p.src_addr(),
        p.dst_addr(),
        p.options(),
        p.payload(),
    ));
    black_box((p.verify_checksum(), p.pseudo_header()));
    let _ = black_box(Ipv4Repr::parse(&p));
    // The in-place rewrite a router does must not panic either.
    let mut copy = [0u8; 64];
    let n = data.len().min(64);
    copy[..n].copy_from_slice(&data[..n]);
    if let Ok(mut p) = Ipv4Packet::new_checked(&mut copy[..n]) {
        black_box(p.dec_ttl_update_checksum());
    }
}

pub fn ipv6(data: &[u8]) {
    let Ok(p) = Ipv6Packet::new_checked(data) else {
        return;
    };
    black_box((
        p.version(),
        p.traffic_class(),
        p.flow_label(),
        p.payload_len(),
    ));
    black_box((
        p.next_header(),
        p.hop_limit(),
        p.src_addr(),
        p.dst_addr(),
        p.pseudo_header(),
    ));
    let _ = black_box(Ipv6Repr::parse(&p));
    if let Ok(up) = ext::walk(p.next_header(), p.payload()) {
        assert!(
            up.offset <= p.payload().len(),
            "walk ended past the payload"
        );
    }
}

pub fn icmpv4(data: &[u8]) {
    let Ok(p) = Icmpv4Packet::new_checked(data) else {
        return;
    };
    black_box((
        p.msg_type(),
        p.msg_code(),
        p.checksum(),
        p.echo_ident(),
        p.echo_seq_no(),
    ));
    black_box((p.verify_checksum(), p.payload()));
    let _ = black_box(Icmpv4Repr::parse(&p));
}

pub fn icmpv6(data: &[u8]) {
    let Ok(p) = Icmpv6Packet::new_checked(data) else {
        return;
    };
    black_box((
        p.msg_type(),
        p.msg_code(),
        p.checksum(),
        p.echo_ident(),
        p.echo_seq_no(),
    ));
    black_box((p.target_addr(), p.payload()));
    if let PseudoHeader::V6 { src, dst } = PH6 {
        black_box(p.verify_checksum(src, dst));
        let _ = black_box(Icmpv6Repr::parse(&p, src, dst));
    }
}

pub fn udp(data: &[u8]) {
    let Ok(p) = UdpPacket::new_checked(data) else {
        return;
    };
    black_box((
        p.src_port(),
        p.dst_port(),
        p.len(),
        p.checksum(),
        p.payload(),
    ));
    for ph in [PH4, PH6] {
        black_box(p.verify_checksum(&ph));
        let _ = black_box(UdpRepr::parse(&p, &ph));
    }
}

pub fn tcp(data: &[u8]) {
    let Ok(p) = TcpPacket::new_checked(data) else {
        return;
    };
    black_box((
        p.src_port(),
        p.dst_port(),
        p.seq_number(),
        p.ack_number(),
        p.header_len(),
    ));
    black_box((
        p.flags(),
        p.fin(),
        p.syn(),
        p.rst(),
        p.psh(),
        p.ack(),
        p.urg(),
        p.ece(),
    ));
    black_box((
        p.cwr(),
        p.window_len(),
        p.checksum(),
        p.urgent_at(),
        p.options(),
    ));
    black_box(p.payload());
    for ph in [PH4, PH6] {
        black_box(p.verify_checksum(&ph));
        let _ = black_box(TcpRepr::parse(&p, &ph));
    }
}

#[cfg(test)]
mod tests {
    use super::super::frames;
    use proptest::prelude::*;

    /// The checked-in seeds, paired with the frames the unit tests use.
    macro_rules! seeds {
        ($($file:literal => $frame:expr),* $(,)?) => {
            [$((
                &include_bytes!(concat!("../../fuzz/seeds/parse_headers/", $file))[..],
                &include_bytes!(concat!("../../fuzz/seeds/wire_views/", $file))[..],
                &$frame[..],
            )),*]
        };
    }

    #[test]
    fn seeds_are_the_test_frames_and_run_clean() {
        let seeds = seeds![
            "arp_request.bin" => frames::ARP_REQUEST,
            "dns_query_v4.bin" => frames::DNS_QUERY_V4,
            "icmpv4_echo.bin" => frames::ICMPV4_ECHO,
            "icmpv6_echo.bin" => frames::ICMPV6_ECHO,
            "icmpv6_ns.bin" => frames::ICMPV6_NS,
            "ipv4_frag_first.bin" => frames::IPV4_FRAG_FIRST,
            "ipv4_frag_last.bin" => frames::IPV4_FRAG_LAST,
            "ipv6_hbh_frag_first.bin" => frames::IPV6_HBH_FRAG_FIRST,
            "ipv6_hbh_frag_last.bin" => frames::IPV6_HBH_FRAG_LAST,
            "mld_report_hbh.bin" => frames::MLD_REPORT_HBH,
            "tcp_syn_v4_vlan.bin" => frames::TCP_SYN_V4_VLAN,
            "tcp_syn_v6.bin" => frames::TCP_SYN_V6,
        ];
        for (a, b, frame) in seeds {
            assert_eq!((a, b), (frame, frame));
            for len in 0..=frame.len() {
                super::views(&frame[..len]);
                super::parse_headers(&frame[..len]);
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_through_all_views(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            super::views(&data);
        }
    }
}
