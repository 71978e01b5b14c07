//! The kernel-side generator end to end: frames replayed by BPF_PROG_RUN (live frames) leave
//! one end of a veth pair with XDP_TX and arrive, through our steering program, on an AF_XDP
//! socket on the other end — every one with a valid UDP checksum, its flow's source port, a
//! gapless per-flow sequence and a send time.

use linerate_dataplane::sys::Mmap;
use linerate_dataplane::template::{Template, UdpSpec};
use linerate_dataplane::wire::{L3, checksum::PseudoHeader, parse_headers};
use linerate_dataplane::xsk::{UmemArea, XskConfig, XskSocket};
use linerate_ebpf::abi::{GenConfig, GenStamp};
use linerate_ebpf::{Action, AttachMode, Generator, Steering};
use linerate_tests::{VethPair, ifindex, privileged, run};
use std::collections::HashMap;

fn run_gen(src: &str, dst: &str, len: usize, flows: u32, count: u32) {
    let pair = VethPair::new().unwrap();
    for end in [&pair.a, &pair.b] {
        run("ip", &["link", "set", end, "up"]).unwrap();
    }
    let mut steer = Steering::load().unwrap();
    steer.set_rules(&[], Action::Xsk).unwrap();
    steer.attach(&pair.b, AttachMode::Driver).unwrap();
    let umem = Mmap::anonymous(4096 * 2048).unwrap();
    let area = UmemArea::new(&umem, 2048).unwrap();
    let mut xsk = XskSocket::bind(&area, None, &pair.b, 0, &XskConfig::default()).unwrap();
    steer.bind_xsk(0, xsk.fd()).unwrap();
    assert_eq!(xsk.fill((0..4096u64).map(|i| i * 2048)), 4096);

    let t = Template::udp(&UdpSpec {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        base_sport: 2000,
        dport: 9,
        flows,
        len,
    })
    .unwrap();
    let mut g = Generator::load().unwrap();
    g.configure(GenConfig {
        nflows: flows,
        stamp_off: t.stamp_off,
        l4_off: t.l4_off,
        base_sum: t.base_sum,
        base_sport: t.base_sport,
        limit: count as u64,
        max_lag_ns: 0,
        ..GenConfig::default()
    })
    .unwrap();
    // Twice the iterations: the limit must stop it at exactly `count`.
    g.run(&t.frame, ifindex(&pair.a), 2 * count, 64).unwrap();
    assert_eq!(g.generated().unwrap(), count as u64);

    // The link also carries the kernel's own chatter (IPv6 MLD reports after link-up): keep
    // only our frames, UDP to port 9.
    let ours = |f: &[u8]| parse_headers(f).is_ok_and(|h| h.proto == 17 && h.dst_port == 9);
    let mut got = Vec::new();
    // A deadline, not a measurement: frames cross a veth NAPI hand-over (and a worker).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        xsk.recv(1024, |d| {
            if ours(umem.slice(d.addr as usize, d.len as usize)) {
                got.push(d)
            }
        });
        if got.len() >= count as usize {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(got.len(), count as usize, "every generated frame arrives");
    let mut next: HashMap<(u8, u16), u64> = HashMap::new();
    let mut last_ns = 0;
    for d in &got {
        let f = umem.slice(d.addr as usize, d.len as usize);
        assert_eq!(f.len(), len);
        let h = parse_headers(f).unwrap();
        let ph = match h.l3 {
            L3::Ipv4 { src, dst, .. } => PseudoHeader::V4 { src, dst },
            L3::Ipv6 { src, dst, .. } => PseudoHeader::V6 { src, dst },
            L3::Arp | L3::Other => panic!("not IP"),
        };
        let l4 = h.l4_offset as usize;
        assert!(ph.verify(17, &f[l4..]), "UDP checksum of a generated frame");
        let flow = h.src_port - 2000;
        assert!((flow as u32) < flows);
        let st = GenStamp::read(&f[l4 + 8..]).unwrap();
        let expect = next.entry((st.stream(), flow)).or_insert(0);
        assert_eq!(st.sequence(), *expect, "flow {flow}: gapless, in order");
        *expect += 1;
        // One sending thread: frames arrive in send order, so send times never go back.
        assert!(st.tx_ns > 0 && st.tx_ns >= last_ns, "send times advance");
        last_ns = st.tx_ns;
    }
    assert_eq!(next.len() as u32, flows, "every flow was generated");
}

#[test]
fn ipv4_minimum_frames() {
    if !privileged("gen::ipv4_minimum_frames") {
        return;
    }
    run_gen("192.0.2.1", "198.51.100.1", 60, 8, 1000);
}

#[test]
fn ipv6_odd_sized_frames() {
    if !privileged("gen::ipv6_odd_sized_frames") {
        return;
    }
    run_gen("2001:db8::1", "2001:db8::2", 1001, 3, 300);
}
