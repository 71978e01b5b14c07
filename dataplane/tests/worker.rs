//! The worker loop end to end over in-memory ports: verdicts reach the right destinations,
//! bad input is counted and survived, full rings drop under their own reason, sequential
//! mapping keeps per-flow order across workers, and after every run each buffer is back in
//! exactly one place.

use core::net::Ipv4Addr;
use linerate_dataplane::frame::BufferPool;
use linerate_dataplane::logic::Logic;
use linerate_dataplane::port::{FaultPort, Faults, MemPort, MemWire, Port};
use linerate_dataplane::shard::{Mapping, flow_hash, jump_hash};
use linerate_dataplane::synthetic::udp4_frame;
use linerate_dataplane::verdict::{DropReason, PortId, Verdict};
use linerate_dataplane::wire::{Headers, L3, parse_headers};
use linerate_dataplane::worker::{IdlePolicy, Worker, WorkerConfig, handoff_mesh};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Test logic: decides by the last octet of the IPv4 destination.
/// .1-.9 -> Forward(octet - 1), .100 -> Broadcast, .200 -> ToKernel, .250 -> Forward(999),
/// anything else -> Drop(NoRoute). Non-IP -> Drop(NotIp).
struct ByOctet;

impl Logic for ByOctet {
    fn decide(&mut self, _pkt: &mut [u8], hdr: &Headers, _in_port: PortId) -> Verdict {
        let L3::Ipv4 { dst, .. } = hdr.l3 else {
            return Verdict::Drop(DropReason::NotIp);
        };
        match dst.octets()[3] {
            o @ 1..=9 => Verdict::Forward(o as PortId - 1),
            100 => Verdict::Broadcast,
            200 => Verdict::ToKernel,
            250 => Verdict::Forward(999),
            _ => Verdict::Drop(DropReason::NoRoute),
        }
    }
}

fn cfg(id: usize, workers: usize, mapping: Mapping) -> WorkerConfig {
    WorkerConfig {
        id,
        workers,
        batch: 32,
        mapping,
        kernel_port: None,
        idle: IdlePolicy::default(),
    }
}

fn frame_to(last: u8, flow: u32, seq: u32) -> Vec<u8> {
    let mut f = udp4_frame(
        Ipv4Addr::new(198, 18, 0, (flow % 250) as u8),
        Ipv4Addr::new(10, 0, 0, last),
        1000 + flow as u16,
        9,
        64,
        flow,
    );
    // Sequence number in the payload after the flow id (the UDP checksum is not checked on
    // the forwarding path, so it may go stale here).
    f[46..50].copy_from_slice(&seq.to_be_bytes());
    f
}

fn mem_ports(n: usize, cap: usize) -> (Vec<Box<dyn Port>>, Vec<MemWire>) {
    let mut ports: Vec<Box<dyn Port>> = Vec::new();
    let mut wires = Vec::new();
    for i in 0..n {
        let (p, w) = MemPort::new(format!("m{i}"), cap);
        ports.push(Box::new(p));
        wires.push(w);
    }
    (ports, wires)
}

fn worker(n_ports: usize, cap: usize, kernel: Option<PortId>) -> (Worker<ByOctet>, Vec<MemWire>) {
    let (ports, wires) = mem_ports(n_ports, cap);
    let mut c = cfg(0, 1, Mapping::Concurrent);
    c.kernel_port = kernel;
    let pool = BufferPool::new(1024, 2048).unwrap();
    (
        Worker::new(c, pool, ports, ByOctet, vec![None], vec![]).unwrap(),
        wires,
    )
}

/// Frees whatever the wires hold and checks the pool got everything back.
fn assert_all_home(mut w: Worker<ByOctet>, wires: &mut [MemWire]) {
    for wire in wires.iter_mut() {
        let _ = wire.drain_sent(w.pool_mut());
    }
    let report = w.finish();
    assert!(report.frames_accounted(), "{report:?}");
    assert_eq!(report.pool_free, report.pool_capacity, "{report:?}");
    assert_eq!(
        report.free_after_release, report.pool_capacity,
        "{report:?}"
    );
}

#[test]
fn forwards_each_verdict_to_its_destination() {
    let (mut w, mut wires) = worker(3, 64, None);
    for last in [2u8, 3, 2, 100, 200, 250, 77] {
        wires[0]
            .inject(w.pool_mut(), &frame_to(last, 1, 0))
            .unwrap();
    }
    assert_eq!(w.poll_once().unwrap(), 7);
    let on1 = wires[1].drain_sent(w.pool_mut());
    let on2 = wires[2].drain_sent(w.pool_mut());
    let last = |v: &Vec<Vec<u8>>| v.iter().map(|f| f[33]).collect::<Vec<_>>();
    // Port 1 got the two ".2" frames and a broadcast copy; port 2 the ".3" and a copy.
    assert_eq!(last(&on1), [2, 2, 100]);
    assert_eq!(last(&on2), [3, 100]);
    assert!(
        wires[0].drain_sent(w.pool_mut()).is_empty(),
        "broadcast skips the ingress port"
    );
    let c = *w.counts();
    assert_eq!(c.rx, 7);
    assert_eq!(c.tx, 5);
    assert_eq!(c.drops_of(DropReason::NoKernelPath), 1);
    assert_eq!(
        c.drops_of(DropReason::NoRoute),
        2,
        "unknown port 999 and .77"
    );
    assert_all_home(w, &mut wires);
}

#[test]
fn to_kernel_goes_to_the_kernel_port_when_there_is_one() {
    let (mut w, mut wires) = worker(3, 64, Some(2));
    wires[0].inject(w.pool_mut(), &frame_to(200, 1, 0)).unwrap();
    w.poll_once().unwrap();
    assert_eq!(wires[2].drain_sent(w.pool_mut()).len(), 1);
    assert_all_home(w, &mut wires);
}

#[test]
fn malformed_frames_are_counted_and_survived() {
    let (mut w, mut wires) = worker(2, 256, None);
    let good = frame_to(2, 1, 0);
    let mut bad_csum = good.clone();
    bad_csum[24] ^= 0xff;
    let mut bad_len = good.clone();
    bad_len[16..18].copy_from_slice(&2000u16.to_be_bytes());
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 5],
        good[..20].to_vec(),
        bad_csum,
        bad_len,
        good.clone(),
    ];
    for i in &inputs {
        wires[0].inject(w.pool_mut(), i).unwrap();
    }
    w.poll_once().unwrap();
    assert_eq!(w.counts().drops_of(DropReason::Malformed), 5);
    assert_eq!(wires[1].drain_sent(w.pool_mut()), vec![good]);
    assert_all_home(w, &mut wires);
}

#[test]
fn full_transmit_ring_drops_as_tx_full_and_keeps_accounting() {
    let (mut w, mut wires) = worker(2, 4, None);
    // Port 0's receive ring holds 4; port 1's transmit ring holds 4 as well.
    for round in 0..3 {
        for s in 0..4 {
            wires[0]
                .inject(w.pool_mut(), &frame_to(2, 1, round * 4 + s))
                .unwrap();
        }
        w.poll_once().unwrap();
    }
    let c = *w.counts();
    assert_eq!(c.tx, 4);
    assert_eq!(c.drops_of(DropReason::TxFull), 8);
    assert_all_home(w, &mut wires);
}

#[test]
fn fault_injected_input_never_breaks_accounting() {
    let (mp0, mut wire0) = MemPort::new("f0", 256);
    let (mp1, mut wire1) = MemPort::new("f1", 256);
    let faults = Faults {
        drop_ppm: 50_000,
        corrupt_ppm: 200_000,
        duplicate_ppm: 50_000,
        reorder_ppm: 50_000,
        short_send_ppm: 200_000,
    };
    let ports: Vec<Box<dyn Port>> = vec![
        Box::new(FaultPort::new(mp0, faults, 1)),
        Box::new(FaultPort::new(mp1, faults, 2)),
    ];
    let pool = BufferPool::new(1024, 2048).unwrap();
    let mut w = Worker::new(
        cfg(0, 1, Mapping::Concurrent),
        pool,
        ports,
        ByOctet,
        vec![None],
        vec![],
    )
    .unwrap();
    for round in 0..100u32 {
        for s in 0..32 {
            wire0.inject(w.pool_mut(), &frame_to(2, s, round)).unwrap();
        }
        w.poll_once().unwrap();
        let _ = wire1.drain_sent(w.pool_mut());
    }
    let c = *w.counts();
    assert!(c.tx > 0);
    assert!(
        c.drops_of(DropReason::Malformed) > 0,
        "corruption should break some checksums"
    );
    assert_all_home(w, &mut [wire0, wire1]);
}

/// Two workers, driven alternately on one thread: packets of flows owned by the other worker
/// cross the handoff ring, are forwarded there, and each flow's order is kept.
#[test]
fn sequential_mapping_hands_off_and_keeps_flow_order() {
    let (mut txs, mut rxs) = handoff_mesh(2, 64, 2048);
    let mut workers = Vec::new();
    let mut wires = Vec::new();
    for id in (0..2).rev() {
        let (ports, w) = mem_ports(2, 512);
        let pool = BufferPool::new(2048, 2048).unwrap();
        workers.push(
            Worker::new(
                cfg(id, 2, Mapping::Sequential),
                pool,
                ports,
                ByOctet,
                txs.pop().unwrap(),
                rxs.pop().unwrap(),
            )
            .unwrap(),
        );
        wires.push(w);
    }
    workers.reverse();
    wires.reverse();
    // 16 flows, 20 packets each, all arriving at worker 0.
    let flows = 16u32;
    let mut owners = [0usize; 2];
    for seq in 0..20 {
        for flow in 0..flows {
            let f = frame_to(2, flow, seq);
            if seq == 0 {
                let h = parse_headers(&f).unwrap();
                owners[jump_hash(flow_hash(&h, &f), 2) as usize] += 1;
            }
            wires[0][0].inject(workers[0].pool_mut(), &f).unwrap();
        }
    }
    assert!(
        owners[0] > 0 && owners[1] > 0,
        "test needs flows on both workers: {owners:?}"
    );
    let mut out: Vec<Vec<u8>> = Vec::new();
    for _ in 0..40 {
        for (w, ws) in workers.iter_mut().zip(wires.iter_mut()) {
            w.poll_once().unwrap();
            out.extend(ws[1].drain_sent(w.pool_mut()));
        }
    }
    assert_eq!(out.len() as u32, flows * 20);
    let mut next = vec![0u32; flows as usize];
    for f in &out {
        let flow = u32::from_be_bytes(f[42..46].try_into().unwrap()) as usize;
        let seq = u32::from_be_bytes(f[46..50].try_into().unwrap());
        assert_eq!(seq, next[flow], "flow {flow} out of order");
        next[flow] += 1;
    }
    let handed: u64 = workers.iter().map(|w| w.counts().handoff_out).sum();
    assert_eq!(
        handed,
        owners[1] as u64 * 20,
        "exactly the packets of worker 1's flows crossed"
    );
    for (w, mut ws) in workers.into_iter().zip(wires) {
        assert_all_home(w, &mut ws);
    }
}

#[test]
fn full_handoff_ring_hands_frames_back_as_handoff_full() {
    let (mut txs, mut rxs) = handoff_mesh(2, 2, 2048);
    let (ports, mut wires) = mem_ports(2, 256);
    let pool = BufferPool::new(1024, 2048).unwrap();
    // Worker 1 exists only as the far end of the ring: nobody drains it.
    let _w1_rx = rxs.pop().unwrap();
    let mut w0 = Worker::new(
        cfg(0, 2, Mapping::Sequential),
        pool,
        ports,
        ByOctet,
        txs.remove(0),
        rxs.pop().unwrap(),
    )
    .unwrap();
    let foreign: Vec<u32> = (0..64u32)
        .filter(|&flow| {
            let f = frame_to(2, flow, 0);
            jump_hash(flow_hash(&parse_headers(&f).unwrap(), &f), 2) == 1
        })
        .take(5)
        .collect();
    for &flow in &foreign {
        wires[0]
            .inject(w0.pool_mut(), &frame_to(2, flow, 0))
            .unwrap();
    }
    w0.poll_once().unwrap();
    let c = *w0.counts();
    assert_eq!(c.handoff_out, 2, "the ring holds two");
    assert_eq!(c.drops_of(DropReason::HandoffFull), 3);
    assert_all_home(w0, &mut wires);
}

/// Real threads: two pinned-if-possible workers run until stopped; every frame is accounted.
#[test]
fn threads_run_and_stop_cleanly() {
    use linerate_dataplane::synthetic::{self as pipeline, PipelineConfig};
    use std::time::Duration;
    let cfg = PipelineConfig {
        workers: 2,
        duration: Duration::from_millis(300),
        routes: 500,
        flows: 64,
        out_ports: 2,
        malformed_ppm: 100_000,
        ..PipelineConfig::default()
    };
    // Sources steered like RSS (the default): nothing crosses; unsteered: half of it does.
    for steered in [true, false] {
        let cfg = PipelineConfig {
            steered,
            ..cfg.clone()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let report = pipeline::run(&cfg, stop.clone(), |_, _| {}).unwrap();
        assert!(stop.load(Ordering::Relaxed));
        assert_eq!(report.workers.len(), 2);
        for w in &report.workers {
            assert!(w.frames_accounted(), "{w:?}");
            assert!(w.counts.rx > 0);
        }
        let t = report.total();
        assert!(t.tx > 0);
        assert!(t.drops_of(DropReason::Malformed) > 0);
        assert_eq!(
            t.drops_of(DropReason::NoRoute),
            0,
            "every generated flow is routed"
        );
        if steered {
            assert_eq!(t.handoff_out, 0, "steered sources offer only owned flows");
        } else {
            assert!(
                t.handoff_out > 0,
                "sequential mapping over two unsteered workers hands off"
            );
        }
    }
}
