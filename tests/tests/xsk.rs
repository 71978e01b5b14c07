//! Our AF_XDP binding against the real kernel: a veth pair (no addresses, IPv6 off: no traffic of its own), the
//! steering program on one end, a socket on its queue 0. Frames injected into that end's RX
//! path arrive on the socket's RX ring; frames put on its TX ring leave through the peer; and
//! closing the socket gives back every UMEM chunk.

use core::net::Ipv4Addr;
use linerate_dataplane::synthetic::udp4_frame;
use linerate_dataplane::sys::Mmap;
use linerate_dataplane::xsk::{UmemArea, XdpDesc, XskConfig, XskMode, XskSocket};
use linerate_ebpf::{Action, AttachMode, Attached, Steering};
use linerate_tests::{VethPair, ifindex, privileged, run};
use std::collections::HashSet;

const CHUNK: u32 = 2048;
const CHUNKS: u64 = 1024;

fn rx_packets(name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/statistics/rx_packets"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn receive_transmit_and_account_every_chunk() {
    if !privileged("xsk::receive_transmit_and_account_every_chunk") {
        return;
    }
    let pair = VethPair::new().unwrap();
    pair.quiet_up().unwrap();
    let mut steer = Steering::load().unwrap();
    steer.set_rules(&[], Action::Xsk).unwrap();
    steer.set_neighbour_to_kernel(true).unwrap();
    assert_eq!(
        steer.attach(&pair.a, AttachMode::Driver).unwrap(),
        Attached::Driver
    );
    // The peer needs an XDP program to receive what we transmit in native mode.
    steer.attach_pass(&pair.b, AttachMode::Driver).unwrap();

    let umem = Mmap::anonymous((CHUNKS * CHUNK as u64) as usize).unwrap();
    let area = UmemArea::new(&umem, CHUNK).unwrap();
    let cfg = XskConfig {
        mode: XskMode::Auto,
        ..XskConfig::default()
    };
    let mut xsk = XskSocket::bind(&area, None, &pair.a, 0, &cfg).unwrap();
    assert!(
        !xsk.is_zero_copy(),
        "veth has no zero-copy: Auto must fall back to copy mode"
    );
    steer.bind_xsk(0, xsk.fd()).unwrap();

    // Half the chunks go on the FILL ring, half stay ours for transmitting.
    let mut free: Vec<u64> = (0..CHUNKS).map(|i| i * CHUNK as u64).collect();
    let to_fill: Vec<u64> = free.drain(..512).collect();
    assert_eq!(xsk.fill(to_fill.iter().copied()), 512);

    let frame = udp4_frame(
        Ipv4Addr::new(192, 0, 2, 1),
        Ipv4Addr::new(203, 0, 113, 1),
        1,
        2,
        60,
        7,
    );
    steer.run_live(&frame, ifindex(&pair.a), 0, 10).unwrap();
    let mut got = Vec::new();
    xsk.recv(64, |d| got.push(d));
    assert_eq!(got.len(), 10, "all ten injected frames reach the socket");
    for d in &got {
        assert_eq!(d.len as usize, frame.len());
        let base = d.addr & !(CHUNK as u64 - 1);
        assert!(to_fill.contains(&base), "received into a chunk we filled");
        assert_eq!(umem.slice(d.addr as usize, d.len as usize), &frame[..]);
    }
    let c = steer.counters().unwrap();
    assert_eq!(c[Action::Xsk as usize].packets, 10);

    // Transmit the received frames back out (no copy: their chunks are ours now) plus five
    // from our own chunks.
    let before = rx_packets(&pair.b);
    let mut tx: Vec<XdpDesc> = got.clone();
    let mut umem = umem;
    for _ in 0..5 {
        let a = free.pop().unwrap();
        umem.slice_mut(a as usize, frame.len())
            .copy_from_slice(&frame);
        tx.push(XdpDesc {
            addr: a,
            len: frame.len() as u32,
            options: 0,
        });
    }
    assert_eq!(xsk.send(tx.iter().copied()), 15);
    let mut done = Vec::new();
    for _ in 0..1000 {
        xsk.complete(64, |a| done.push(a));
        if done.len() == 15 {
            break;
        }
        xsk.kick_tx();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(done.len(), 15, "every transmitted frame completes");
    // The peer counts them in its NAPI poll, which may come after the completions.
    for _ in 0..1000 {
        if rx_packets(&pair.b) - before >= 15 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(rx_packets(&pair.b) - before, 15, "the peer received them");

    // Closing hands back the chunks still on the FILL ring; with the completed ones and the
    // ones we kept, every chunk is accounted for exactly once.
    let left = xsk.close();
    let mut all: Vec<u64> = free
        .into_iter()
        .chain(done)
        .chain(left)
        .map(|a| a & !(CHUNK as u64 - 1))
        .collect();
    all.sort_unstable();
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "no chunk twice");
    assert_eq!(all.len() as u64, CHUNKS, "no chunk lost");
    drop(steer);
    // The link goes with its last descriptor. A process another test thread is spawning at
    // that moment holds a copy of every descriptor until its exec closes them (the link's
    // too, close-on-exec or not), so the detach may lag by that long; a program still
    // attached after two seconds was not detached.
    let mut link = String::new();
    for _ in 0..200 {
        link = run("ip", &["-d", "link", "show", &pair.a]).unwrap();
        if !link.contains("prog/xdp") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        !link.contains("prog/xdp"),
        "program detached when Steering dropped: {link}"
    );
}

#[test]
fn bad_interface_and_ring_size_are_clear_errors() {
    if !privileged("xsk::bad_interface_and_ring_size_are_clear_errors") {
        return;
    }
    let umem = Mmap::anonymous(64 * CHUNK as usize).unwrap();
    let area = UmemArea::new(&umem, CHUNK).unwrap();
    let e = XskSocket::bind(&area, None, "lr-nonexistent", 0, &XskConfig::default())
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "AF_XDP socket on lr-nonexistent: no such interface"
    );
    let cfg = XskConfig {
        rx_size: 100,
        ..XskConfig::default()
    };
    let e = XskSocket::bind(&area, None, "lo", 0, &cfg).err().unwrap();
    assert_eq!(
        e.to_string(),
        "AF_XDP ring size 100 for rx must be a power of two between 64 and 65536"
    );
}

/// An RX ring that overflows loses no buffer by itself: the kernel checks for room before it
/// takes one from FILL, so closing returns every chunk not received. (Under heavy load
/// `linerate fwd` has seen one buffer short after overflows; see `Port::kept_by_kernel`.)
#[test]
fn an_overflowing_rx_ring_keeps_no_buffer() {
    if !privileged("xsk::an_overflowing_rx_ring_keeps_no_buffer") {
        return;
    }
    let pair = VethPair::new().unwrap();
    pair.quiet_up().unwrap();
    let mut steer = Steering::load().unwrap();
    steer.set_rules(&[], Action::Xsk).unwrap();
    steer.attach(&pair.a, AttachMode::Driver).unwrap();
    let umem = Mmap::anonymous((CHUNKS * CHUNK as u64) as usize).unwrap();
    let area = UmemArea::new(&umem, CHUNK).unwrap();
    let cfg = XskConfig {
        rx_size: 64,
        ..XskConfig::default()
    };
    let xsk = XskSocket::bind(&area, None, &pair.a, 0, &cfg).unwrap();
    steer.bind_xsk(0, xsk.fd()).unwrap();
    let mut xsk = xsk;
    assert_eq!(xsk.fill((0..512).map(|i| i * CHUNK as u64)), 512);
    let frame = udp4_frame(
        Ipv4Addr::new(192, 0, 2, 1),
        Ipv4Addr::new(203, 0, 113, 1),
        1,
        2,
        60,
        7,
    );
    // 200 frames, never received: 64 fill the RX ring, the rest find it full.
    steer.run_live(&frame, ifindex(&pair.a), 0, 200).unwrap();
    let stats = xsk.statistics().unwrap();
    assert_eq!(stats.rx_ring_full, 136, "{stats:?}");
    assert_eq!(xsk.close().len(), 512, "every chunk comes back");
}
