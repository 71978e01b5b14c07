//! A worker forwarding between two AF_XDP ports on one shared UMEM, end to end on veth pairs
//! (no addresses; nothing leaves the pairs):
//!
//! ```text
//! generator -> a0 ==veth== a1 [steering -> XskPort 0] -> worker (TTL-1, static map, MAC
//! rewrite) -> [XskPort 1] b1 ==veth== b0 [steering -> AF_XDP receiver]
//! ```
//!
//! Every generated frame arrives at b0 with the next hop's MACs, TTL decremented and valid
//! checksums, in per-flow order; afterwards every UMEM buffer is back in the worker's pool.

use linerate_dataplane::frame::BufferPool;
use linerate_dataplane::logic::{MacRewrite, StaticMap, TtlDecrement};
use linerate_dataplane::port::{Port, XskPort};
use linerate_dataplane::shard::Mapping;
use linerate_dataplane::sys::Mmap;
use linerate_dataplane::template::{Template, UdpSpec};
use linerate_dataplane::wire::{L3, checksum, checksum::PseudoHeader, parse_headers};
use linerate_dataplane::worker::{IdlePolicy, Worker, WorkerConfig, spawn};
use linerate_dataplane::xsk::{UmemArea, XskConfig, XskSocket};
use linerate_ebpf::abi::{GenConfig, GenStamp};
use linerate_ebpf::{Action, AttachMode, Generator, Steering};
use linerate_tests::{VethPair, ifindex, privileged, run};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const NEXT_HOP: [u8; 6] = [0x02, 0x4e, 0x48, 0, 0, 1];
const OUR_MAC: [u8; 6] = [0x02, 0x4c, 0x52, 0, 0, 1];

#[test]
fn worker_forwards_between_af_xdp_ports() {
    if !privileged("forward::worker_forwards_between_af_xdp_ports") {
        return;
    }
    let (a, b) = (VethPair::new().unwrap(), VethPair::new().unwrap());
    for end in [&a.a, &a.b, &b.a, &b.b] {
        run("ip", &["link", "set", end, "up"]).unwrap();
    }
    // a.b and b.b are the forwarder's ports; b.a is the receiving end.
    let mut steer_in = Steering::load().unwrap();
    steer_in.set_rules(&[], Action::Xsk).unwrap();
    steer_in.attach(&a.b, AttachMode::Driver).unwrap();
    let mut steer_out = Steering::load().unwrap();
    steer_out.set_rules(&[], Action::Xsk).unwrap();
    steer_out.attach(&b.a, AttachMode::Driver).unwrap();

    // The forwarder: one worker, two AF_XDP ports sharing its pool as UMEM.
    let pool = BufferPool::new(4096, 2048).unwrap();
    let cfg = XskConfig::default();
    let p0 = XskPort::open(&pool, None, &a.b, 0, &cfg, 1024).unwrap();
    let p1 = XskPort::open(&pool, Some(&p0), &b.b, 0, &cfg, 1024).unwrap();
    steer_in.bind_xsk(0, p0.fd().unwrap()).unwrap();
    let mut map = StaticMap::from_pairs([(0, 1)]);
    map.set_rewrite(
        1,
        Some(MacRewrite {
            dst: NEXT_HOP,
            src: OUR_MAC,
        }),
    );
    let ports: Vec<Box<dyn Port>> = vec![Box::new(p0), Box::new(p1)];
    let wcfg = WorkerConfig {
        id: 0,
        workers: 1,
        batch: 64,
        mapping: Mapping::Concurrent,
        kernel_port: None,
        idle: IdlePolicy::default(),
    };
    let worker = Worker::new(
        wcfg,
        pool,
        ports,
        TtlDecrement::new(map),
        vec![None],
        vec![],
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let handle = spawn(worker, None, stop.clone()).unwrap();

    // The receiver on b.a.
    // Room for every frame: the receiver is drained only after the generator is done.
    let rx_cfg = XskConfig {
        rx_size: 8192,
        fill_size: 8192,
        ..cfg
    };
    let umem = Mmap::anonymous(8192 * 2048).unwrap();
    let area = UmemArea::new(&umem, 2048).unwrap();
    let mut rx = XskSocket::bind(&area, None, &b.a, 0, &rx_cfg).unwrap();
    steer_out.bind_xsk(0, rx.fd()).unwrap();
    rx.fill((0..8192u64).map(|i| i * 2048));

    // 4,000 frames over 8 flows at 40k frames/s (a modest rate for copy mode on veth).
    let count = 4000u32;
    let t = Template::udp(&UdpSpec {
        src_mac: [2, 0, 0, 0, 0, 9],
        dst_mac: [2, 0, 0, 0, 0, 10],
        src: "192.0.2.1".parse().unwrap(),
        dst: "198.51.100.1".parse().unwrap(),
        base_sport: 3000,
        dport: 9,
        flows: 8,
        len: 128,
    })
    .unwrap();
    let mut g = Generator::load().unwrap();
    g.configure(GenConfig {
        nflows: 8,
        stamp_off: t.stamp_off,
        l4_off: t.l4_off,
        base_sum: t.base_sum,
        base_sport: t.base_sport,
        gap_ns: 25_000,
        max_lag_ns: 25_000 * 64,
        limit: count as u64,
        ..GenConfig::default()
    })
    .unwrap();
    while g.generated().unwrap() < count as u64 {
        g.run(&t.frame, ifindex(&a.a), 1 << 16, 64).unwrap();
    }

    let ours = |f: &[u8]| parse_headers(f).is_ok_and(|h| h.proto == 17 && h.dst_port == 9);
    let mut got: Vec<Vec<u8>> = Vec::new();
    // A deadline, not a measurement: frames cross a veth NAPI hand-over (and a worker).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        rx.recv(1024, |d| {
            let f = umem.slice(d.addr as usize, d.len as usize);
            if ours(f) {
                got.push(f.to_vec());
            }
        });
        if got.len() >= count as usize {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let report = handle.join().unwrap().unwrap();

    assert_eq!(
        got.len(),
        count as usize,
        "every frame forwarded: {:?}",
        report.counts
    );
    let mut next: HashMap<u16, u64> = HashMap::new();
    for f in &got {
        assert_eq!(&f[0..6], &NEXT_HOP, "destination MAC rewritten");
        assert_eq!(&f[6..12], &OUR_MAC, "source MAC rewritten");
        let h = parse_headers(f).unwrap();
        let L3::Ipv4 { src, dst, ttl } = h.l3 else {
            panic!("IPv4 expected")
        };
        assert_eq!(ttl, 63, "TTL decremented once");
        assert_eq!(
            checksum::sum(&f[14..34]),
            0xffff,
            "IPv4 header checksum valid"
        );
        assert!(
            PseudoHeader::V4 { src, dst }.verify(17, &f[h.l4_offset as usize..]),
            "UDP checksum valid"
        );
        let st = GenStamp::read(&f[h.l4_offset as usize + 8..]).unwrap();
        let e = next.entry(h.src_port).or_insert(0);
        assert_eq!(st.sequence(), *e, "flow {} in order", h.src_port);
        *e += 1;
    }
    assert_eq!(next.len(), 8);
    assert!(report.frames_accounted(), "{report:?}");
    assert_eq!(
        report.free_after_release, report.pool_capacity,
        "every UMEM buffer back in the pool: {report:?}"
    );
    // The link's own chatter (IPv6 MLD/ND with hop limit 1) may be dropped as expired;
    // nothing else may be.
    let c = report.counts;
    assert_eq!(
        c.dropped(),
        c.drops_of(linerate_dataplane::verdict::DropReason::TtlExpired),
        "{c:?}"
    );
}
