//! `wire::parse_headers` on minimum-size frames: the per-packet parse cost every worker pays
//! before switching logic runs. Frames are built with the `wire` emitters from fixed values,
//! so every run measures the same bytes.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use linerate_dataplane::wire::{
    EthernetFrame, EthernetRepr, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, MacAddr, TcpFlags,
    TcpPacket, TcpRepr, UdpPacket, UdpRepr, VlanTags, ethertype, ip_proto, parse_headers,
};
use std::hint::black_box;

fn eth(et: u16) -> EthernetRepr {
    EthernetRepr {
        dst_addr: MacAddr([0x02, 0, 0, 0, 0, 0x02]),
        src_addr: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
        tags: VlanTags::Untagged,
        ethertype: et,
    }
}

/// Ethernet + IPv4 + UDP with 22 payload bytes: 64 bytes.
fn eth_ipv4_udp() -> Vec<u8> {
    let payload = [0x5a; 22];
    let udp = UdpRepr {
        src_port: 40000,
        dst_port: 4789,
        payload: &payload,
    };
    let ip = Ipv4Repr::new(
        [198, 18, 0, 1].into(),
        [198, 19, 0, 1].into(),
        ip_proto::UDP,
        udp.buffer_len(),
    );
    let eth = eth(ethertype::IPV4);
    let mut f = vec![0u8; eth.buffer_len() + ip.buffer_len() + udp.buffer_len()];
    eth.emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    let l3 = &mut f[eth.buffer_len()..];
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut *l3));
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut l3[ip.buffer_len()..]),
        &ip.pseudo_header(),
    );
    f
}

/// Ethernet + IPv6 + TCP (no options, no payload): 74 bytes.
fn eth_ipv6_tcp() -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: 40001,
        dst_port: 443,
        seq_number: 0x1234_5678,
        ack_number: 0x9abc_def0,
        flags: TcpFlags::ACK,
        window_len: 512,
        urgent_at: 0,
        options: &[],
        payload: &[],
    };
    let ip = Ipv6Repr::new(
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
        ip_proto::TCP,
        tcp.buffer_len(),
    );
    let eth = eth(ethertype::IPV6);
    let mut f = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    eth.emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    let l3 = &mut f[eth.buffer_len()..];
    ip.emit(&mut Ipv6Packet::new_unchecked(&mut *l3));
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut l3[ip.buffer_len()..]),
        &ip.pseudo_header(),
    );
    f
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire::parse_headers");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in [
        ("eth_ipv4_udp", eth_ipv4_udp()),
        ("eth_ipv6_tcp", eth_ipv6_tcp()),
    ] {
        let h = parse_headers(&frame).expect("bench frame parses");
        assert!(h.src_port != 0 && h.dst_port != 0);
        let id = BenchmarkId::new(name, format!("len={}", frame.len()));
        g.bench_function(id, |b| b.iter(|| parse_headers(black_box(&frame))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
