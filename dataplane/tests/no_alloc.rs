//! The per-packet path never allocates: a counting allocator watches `decide` of max mode's
//! flow learner over a multipath router while a flood of distinct 5-tuples goes through it
//! (each one a new flow: the case where a growing table would allocate and rehash).

use linerate_dataplane::fastpath::FlowLearner;
use linerate_dataplane::logic::{AnyLogic, Logic, NextHop, ReloadHandle, Router};
use linerate_dataplane::synthetic::udp4_frame;
use linerate_dataplane::verdict::Verdict;
use linerate_dataplane::wire::parse_headers;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::Ipv4Addr;
use std::sync::mpsc::sync_channel;
use std::time::Duration;

/// Counts allocations made by the thread that armed it.
struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: thread-locals may be gone while a thread exits.
        let _ = ARMED.try_with(|a| {
            if a.get() {
                COUNT.with(|c| c.set(c.get() + 1));
            }
        });
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ARMED.try_with(|a| {
            if a.get() {
                COUNT.with(|c| c.set(c.get() + 1));
            }
        });
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    COUNT.with(|c| c.get())
}

fn multipath_router() -> AnyLogic {
    let mut r = Router::new();
    for (id, port) in [(0u16, 1u16), (1, 2)] {
        r.set_next_hop(
            id,
            NextHop {
                port,
                dst_mac: [2, 0, 0, 0, 0, id as u8],
                src_mac: [2, 0, 0, 0, 1, id as u8],
            },
        );
    }
    r.set_group(0x8000, vec![(0, 3), (1, 1)]).unwrap();
    r.add_route("10.0.0.0".parse().unwrap(), 8, 0x8000).unwrap();
    AnyLogic::new(r).with_ttl_decrement(true)
}

#[test]
fn a_flood_of_new_flows_allocates_nothing_in_decide() {
    let handle = ReloadHandle::new(multipath_router());
    // A channel nobody reads: it fills, and further reports are dropped (as when the control
    // thread falls behind).
    let (tx, _rx) = sync_channel(1024);
    let mut l = FlowLearner::new(handle.reloadable(), Some(tx));
    l.tick(Duration::from_millis(1));
    // Frames built up front: building them allocates, deciding them must not.
    let flows = 300_000u32;
    let mut frames: Vec<Vec<u8>> = (0..flows)
        .map(|i| {
            let dst = Ipv4Addr::from(0x0a00_0000 | (i & 0xffff));
            udp4_frame(
                Ipv4Addr::new(192, 0, 2, (i >> 16) as u8),
                dst,
                (i % 50_000) as u16 + 1,
                9,
                64,
                i,
            )
        })
        .collect();
    let mut forwarded = [0u64; 3];
    let n = allocations_during(|| {
        for f in frames.iter_mut() {
            let Ok(h) = parse_headers(f) else { continue };
            if let Verdict::Forward(p) = l.decide(f, &h, 0) {
                forwarded[p as usize] += 1;
            }
        }
    });
    assert_eq!(n, 0, "allocations on the per-packet path");
    assert_eq!(forwarded[1] + forwarded[2], flows as u64);
    // Weighted 3:1 by flow hash.
    let share = forwarded[1] as f64 / flows as f64;
    assert!((0.72..0.78).contains(&share), "{share}");
}
