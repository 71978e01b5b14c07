//! Loom model of the SPSC ring: every interleaving of one producer and one consumer delivers
//! each value exactly once, in order, and a full ring refuses rather than overwrites.
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p linerate-dataplane --release --test loom_ring`.
#![cfg(loom)]

use linerate_dataplane::ring::channel;

#[test]
fn every_value_once_in_order() {
    loom::model(|| {
        let (mut p, mut c) = channel(2, || 0u32);
        let t = loom::thread::spawn(move || {
            let mut sent = 0u32;
            let mut refused = 0u32;
            for v in 1..=3u32 {
                if p.try_write(|s| *s = v) {
                    sent += 1;
                } else {
                    refused += 1;
                }
            }
            (sent, refused)
        });
        let mut got = Vec::new();
        for _ in 0..3 {
            if let Some(v) = c.try_read(|s| *s) {
                got.push(v);
            }
            loom::thread::yield_now();
        }
        let (sent, refused) = t.join().unwrap();
        while let Some(v) = c.try_read(|s| *s) {
            got.push(v);
        }
        assert_eq!(sent + refused, 3);
        assert_eq!(
            got.len() as u32,
            sent,
            "every accepted value arrives exactly once"
        );
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    });
}

#[test]
fn slot_contents_visible_to_consumer() {
    loom::model(|| {
        let (mut p, mut c) = channel(2, || [0u64; 2]);
        let t = loom::thread::spawn(move || {
            assert!(p.try_write(|s| *s = [7, 7]));
        });
        let mut seen = None;
        while seen.is_none() {
            seen = c.try_read(|s| *s);
            loom::thread::yield_now();
        }
        assert_eq!(
            seen,
            Some([7, 7]),
            "a published slot is never seen half-written"
        );
        t.join().unwrap();
    });
}

#[test]
fn batches_published_and_released_with_one_store_each_arrive_whole_and_in_order() {
    loom::model(|| {
        let (mut p, mut c) = channel(2, || 0u32);
        let t = loom::thread::spawn(move || {
            let mut sent = Vec::new();
            for batch in [[1u32, 2], [3, 4]] {
                for v in batch {
                    if p.write_unpublished(|s| *s = v) {
                        sent.push(v);
                    }
                }
                p.publish();
                loom::thread::yield_now();
            }
            sent
        });
        let mut got = Vec::new();
        for _ in 0..2 {
            while let Some(v) = c.read_unreleased(|s| *s) {
                got.push(v);
            }
            c.release();
            loom::thread::yield_now();
        }
        let sent = t.join().unwrap();
        while let Some(v) = c.try_read(|s| *s) {
            got.push(v);
        }
        assert_eq!(got, sent, "every accepted value once, in order");
    });
}
