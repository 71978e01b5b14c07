//! The XDP steering program as a table of {input frame, set-up, expected verdict, expected
//! output}, each row run through `BPF_PROG_TEST_RUN` in the kernel (root only).

use core::net::{Ipv4Addr, Ipv6Addr};
use linerate_dataplane::synthetic::udp4_frame;
use linerate_dataplane::wire::checksum;
use linerate_ebpf::abi::{Counter, XdpMd};
use linerate_ebpf::{Action, FlowEntry, FlowKey, Rule, Steering};
use linerate_tests::privileged;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

fn udp4(dst: [u8; 4], dport: u16, ttl: u8) -> Vec<u8> {
    let mut f = udp4_frame(
        Ipv4Addr::new(192, 0, 2, 1),
        Ipv4Addr::from(dst),
        4000,
        dport,
        64,
        0,
    );
    set_ttl(&mut f, ttl);
    f
}

fn set_ttl(f: &mut [u8], ttl: u8) {
    f[22] = ttl;
    f[24..26].fill(0);
    let c = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

fn vlan(mut f: Vec<u8>, vid: u16) -> Vec<u8> {
    let mut tag = vec![0x81, 0x00];
    tag.extend_from_slice(&vid.to_be_bytes());
    f.splice(12..12, tag);
    f
}

/// Ethernet + IPv6 + (UDP or ICMPv6 with `icmp_type`) — the program reads no L4 checksum.
fn ipv6(dst: Ipv6Addr, next: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(l4);
    f
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 2, 192, 0, 2, 1]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 0, 2, 2]);
    f.resize(60, 0);
    f
}

fn counts(s: &Steering) -> [Counter; Action::COUNT] {
    s.counters().unwrap()
}

fn delta(before: &[Counter; Action::COUNT], after: &[Counter; Action::COUNT], a: Action) -> u64 {
    after[a as usize].packets - before[a as usize].packets
}

struct Row {
    name: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    counted: Action,
}

#[test]
fn rules_and_default_policy_table() {
    if !privileged("steer::rules_and_default_policy_table") {
        return;
    }
    let mut s = Steering::load().expect("load steering program");
    let rules = [
        Rule::any(Action::Drop).proto(17).dports(53, 53),
        Rule::any(Action::Pass)
            .proto(6)
            .dst_v4(Ipv4Addr::new(10, 0, 0, 0), 8),
        Rule::any(Action::Drop).dst_v6("2001:db8:dead::".parse().unwrap(), 48),
        Rule::any(Action::Pass)
            .dst_v4(Ipv4Addr::new(198, 51, 100, 0), 24)
            .dports(1000, 2000),
    ];
    s.set_rules(&rules, Action::Xsk).unwrap();
    let mut tcp10 = udp4([10, 1, 2, 3], 80, 64);
    tcp10[23] = 6; // protocol TCP (checksum left stale: the program does not read it)
    let icmp6_ns = [135u8, 0, 0, 0, 0, 0, 0, 0];
    let table = [
        Row {
            name: "ARP goes to the kernel",
            frame: arp_request(),
            verdict: XDP_PASS,
            counted: Action::Pass,
        },
        Row {
            name: "IPv6 neighbour solicitation goes to the kernel",
            frame: ipv6("ff02::1:ff00:1".parse().unwrap(), 58, &icmp6_ns),
            verdict: XDP_PASS,
            counted: Action::Pass,
        },
        Row {
            name: "UDP to port 53 is dropped",
            frame: udp4([203, 0, 113, 9], 53, 64),
            verdict: XDP_DROP,
            counted: Action::Drop,
        },
        Row {
            name: "VLAN-tagged UDP to port 53 is dropped too",
            frame: vlan(udp4([203, 0, 113, 9], 53, 64), 100),
            verdict: XDP_DROP,
            counted: Action::Drop,
        },
        Row {
            name: "TCP into 10/8 passes",
            frame: tcp10,
            verdict: XDP_PASS,
            counted: Action::Pass,
        },
        Row {
            name: "port range inside a prefix passes",
            frame: udp4([198, 51, 100, 7], 1500, 64),
            verdict: XDP_PASS,
            counted: Action::Pass,
        },
        Row {
            name: "outside the port range: default (AF_XDP), no socket bound -> kernel",
            frame: udp4([198, 51, 100, 7], 2001, 64),
            verdict: XDP_PASS,
            counted: Action::NoXsk,
        },
        Row {
            name: "IPv6 into a denied /48 is dropped",
            frame: ipv6(
                "2001:db8:dead:1::5".parse().unwrap(),
                17,
                &[0x10, 0, 0, 80, 0, 8, 0, 0],
            ),
            verdict: XDP_DROP,
            counted: Action::Drop,
        },
        Row {
            name: "IPv6 next to the /48 takes the default",
            frame: ipv6(
                "2001:db8:deae::5".parse().unwrap(),
                17,
                &[0x10, 0, 0, 80, 0, 8, 0, 0],
            ),
            verdict: XDP_PASS,
            counted: Action::NoXsk,
        },
        Row {
            name: "a truncated frame goes to the kernel",
            frame: udp4([1, 2, 3, 4], 9, 64)[..20].to_vec(),
            verdict: XDP_PASS,
            counted: Action::Pass,
        },
    ];
    for row in table {
        let before = counts(&s);
        let (verdict, out) = s.test_run(&row.frame, None).unwrap();
        let after = counts(&s);
        assert_eq!(verdict, row.verdict, "{}", row.name);
        assert_eq!(
            out, row.frame,
            "{}: the program must not modify the frame",
            row.name
        );
        assert_eq!(
            delta(&before, &after, row.counted),
            1,
            "{}: counted under {}",
            row.name,
            row.counted.name()
        );
        let total: u64 = Action::ALL.iter().map(|&a| delta(&before, &after, a)).sum();
        assert_eq!(total, 1, "{}: counted exactly once", row.name);
    }
}

#[test]
fn max_mode_rewrites_cached_flows_and_route_changes_invalidate_them() {
    if !privileged("steer::max_mode_rewrites_cached_flows_and_route_changes_invalidate_them") {
        return;
    }
    let mut s = Steering::load().unwrap();
    s.set_rules(&[], Action::Pass).unwrap();
    s.set_fastpath(true).unwrap();
    // Loopback's ifindex (1) is a valid devmap target; test runs do not transmit.
    s.set_tx_port(0, 1).unwrap();
    let frame = udp4([203, 0, 113, 5], 7000, 64);
    let mut key = FlowKey {
        family: 4,
        proto: 17,
        sport_be: 4000u16.to_be(),
        dport_be: 7000u16.to_be(),
        ..FlowKey::default()
    };
    key.src[..4].copy_from_slice(&[192, 0, 2, 1]);
    key.dst[..4].copy_from_slice(&[203, 0, 113, 5]);
    let entry = FlowEntry {
        port: 0,
        dst_mac: [0x02, 0xaa, 0, 0, 0, 1],
        src_mac: [0x02, 0xbb, 0, 0, 0, 2],
        dec_ttl: 1,
        ..FlowEntry::default()
    };

    // Not cached yet: the rules decide.
    assert_eq!(s.test_run(&frame, None).unwrap().0, XDP_PASS);

    s.cache_flow(key, entry).unwrap();
    let (verdict, out) = s.test_run(&frame, None).unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(&out[0..6], &entry.dst_mac);
    assert_eq!(&out[6..12], &entry.src_mac);
    assert_eq!(out[22], 63, "TTL decremented");
    assert_eq!(
        checksum::sum(&out[14..34]),
        0xffff,
        "IPv4 header checksum still valid"
    );
    assert_eq!(
        &out[12..],
        &{
            let mut e = frame.clone();
            set_ttl(&mut e, 63);
            e
        }[12..]
    );
    let cached = s.flow(&key).unwrap().expect("still cached");
    assert_eq!((cached.packets, cached.bytes), (1, frame.len() as u64));

    // TTL 1 would expire: not fast-pathed, counted, and handed to the rules.
    let before = counts(&s);
    let (verdict, out) = s.test_run(&udp4([203, 0, 113, 5], 7000, 1), None).unwrap();
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out[22], 1, "untouched");
    assert_eq!(delta(&before, &counts(&s), Action::Expired), 1);

    // A route change invalidates every cached flow at once.
    s.invalidate_flows().unwrap();
    assert_eq!(s.test_run(&frame, None).unwrap().0, XDP_PASS);
    assert!(
        s.flow(&key).unwrap().is_none(),
        "the stale entry was deleted by the program"
    );

    // Aging removes flows whose count stopped changing, and keeps busy ones.
    s.cache_flow(key, entry).unwrap();
    assert_eq!(s.age_flows(0, 10).unwrap(), 0, "first seen");
    s.test_run(&frame, None).unwrap();
    assert_eq!(s.age_flows(20, 10).unwrap(), 0, "a packet since: busy");
    assert_eq!(s.age_flows(25, 10).unwrap(), 0, "idle, not long enough");
    assert_eq!(s.age_flows(31, 10).unwrap(), 1, "idle for longer than 10");
    assert!(s.flow(&key).unwrap().is_none());

    // A route change to one prefix removes only the flows inside it; others keep their
    // kernel path.
    let mut other = key;
    other.dst[..4].copy_from_slice(&[198, 51, 100, 7]);
    s.cache_flow(key, entry).unwrap();
    s.cache_flow(other, entry).unwrap();
    let gone = s
        .forget_flows_where(&mut |k| k.family == 4 && k.dst[..3] == [203, 0, 113])
        .unwrap();
    assert_eq!(gone, 1);
    assert!(s.flow(&key).unwrap().is_none());
    assert!(s.flow(&other).unwrap().is_some());
    assert_eq!(
        s.test_run(&frame, None).unwrap().0,
        XDP_PASS,
        "decided afresh"
    );
}

#[test]
fn rx_queue_without_socket_falls_back_to_kernel() {
    if !privileged("steer::rx_queue_without_socket_falls_back_to_kernel") {
        return;
    }
    let s = Steering::load().unwrap();
    let ctx = XdpMd {
        data_end: 64,
        ingress_ifindex: 1,
        rx_queue_index: 0,
        ..XdpMd::default()
    };
    let before = counts(&s);
    let (verdict, _) = s
        .test_run(&udp4([203, 0, 113, 1], 9, 64), Some(ctx))
        .unwrap();
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(delta(&before, &counts(&s), Action::NoXsk), 1);
}

#[test]
fn too_many_rules_is_a_clear_error() {
    if !privileged("steer::too_many_rules_is_a_clear_error") {
        return;
    }
    let mut s = Steering::load().unwrap();
    let rules = vec![Rule::any(Action::Pass); 65];
    let e = s.set_rules(&rules, Action::Xsk).unwrap_err();
    assert_eq!(
        e.to_string(),
        "65 steering rules given; the program holds at most 64"
    );
}
