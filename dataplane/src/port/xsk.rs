//! [`XskPort`]: a [`Port`] over an AF_XDP socket whose UMEM is the worker's [`BufferPool`].
//!
//! The port keeps the FILL ring topped up from the pool, hands received descriptors to the
//! worker as frames (no copy: they already are frames of the pool), puts sent frames on the TX
//! ring and returns completed ones to the pool. Frames lent to the kernel (on FILL, or sent
//! and not completed) are counted in [`Port::held`] and all come back on [`Port::release`].

use super::{Port, PortError};
use crate::batch::Batch;
use crate::frame::{BufferPool, Frame};
use crate::xsk::{XdpDesc, XskConfig, XskError, XskSocket};
use std::os::fd::RawFd;

/// One AF_XDP socket (interface, queue) owned by a worker.
pub struct XskPort {
    name: String,
    sock: Option<XskSocket>,
    /// Keep this many buffers on the FILL ring.
    fill_target: u32,
    /// Buffers lent through FILL and not yet received back through RX.
    in_fill: u32,
    /// Frames put on TX and not yet completed.
    in_tx: u32,
    scratch: Vec<u64>,
    /// Set by `release`; see [`Port::kept_by_kernel`].
    kept_by_kernel: usize,
}

impl XskPort {
    /// Opens `ifname` queue `queue` on `pool`. The first port of a worker registers the pool
    /// as UMEM; pass it as `share` to the worker's other ports. `fill_target` buffers are kept
    /// on the FILL ring (at most the ring's size).
    pub fn open(
        pool: &BufferPool,
        share: Option<&XskPort>,
        ifname: &str,
        queue: u32,
        cfg: &XskConfig,
        fill_target: u32,
    ) -> Result<XskPort, XskError> {
        let sock = XskSocket::bind(
            &pool.umem_area()?,
            share.and_then(|p| p.sock.as_ref()),
            ifname,
            queue,
            cfg,
        )?;
        Ok(XskPort {
            name: format!("{ifname}:{queue}"),
            sock: Some(sock),
            fill_target: fill_target.min(cfg.fill_size),
            in_fill: 0,
            in_tx: 0,
            scratch: Vec::with_capacity(cfg.fill_size as usize),
            kept_by_kernel: 0,
        })
    }

    /// The socket's descriptor, for the steering program's XSKMAP.
    pub fn fd(&self) -> Option<RawFd> {
        self.sock.as_ref().map(XskSocket::fd)
    }

    pub fn is_zero_copy(&self) -> bool {
        self.sock.as_ref().is_some_and(XskSocket::is_zero_copy)
    }

    /// Frames put on TX whose completion has not come back yet (the port must be visited,
    /// through [`Port::reclaim`], until this is zero).
    pub fn tx_in_flight(&self) -> u32 {
        self.in_tx
    }

    /// Kernel statistics of the socket.
    pub fn statistics(&self) -> Option<Result<libc::xdp_statistics, XskError>> {
        self.sock.as_ref().map(XskSocket::statistics)
    }

    /// Tops the FILL ring up to its target from `pool` (`recv` does this first; a caller that
    /// just gave received frames back calls it after, so the kernel is never left without a
    /// buffer to receive the next frame into while the worker waits for it).
    pub fn refill(&mut self, pool: &mut BufferPool) {
        let Some(sock) = self.sock.as_mut() else {
            return;
        };
        let want = self
            .fill_target
            .saturating_sub(self.in_fill)
            .min(sock.fill_room());
        if want == 0 {
            return;
        }
        self.scratch.clear();
        for _ in 0..want {
            let Some(f) = pool.alloc() else { break };
            self.scratch.push(f.into_raw().0);
        }
        let took = sock.fill(self.scratch.iter().copied()) as usize;
        self.in_fill += took as u32;
        // The ring had room for all of them; anything it did not take goes back.
        for &a in &self.scratch[took..] {
            pool.free(Frame::from_raw(a, 0));
        }
    }
}

impl Port for XskPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError> {
        self.refill(pool);
        let Some(sock) = self.sock.as_mut() else {
            return Ok(0);
        };
        let room = batch.room() as u32;
        let n = sock.recv(room, |d| {
            // Cannot fail (at most `room` descriptors are read); freeing keeps it accounted.
            if let Err(f) = batch.push(Frame::from_raw(d.addr, d.len)) {
                pool.free(f);
            }
        });
        self.in_fill -= n;
        Ok(n as usize)
    }

    fn send(&mut self, _pool: &mut BufferPool, batch: &mut Batch) -> Result<usize, PortError> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(0);
        };
        let n = batch.len().min(sock.tx_room() as usize);
        let taken = sock.send(batch.drain_front(n).map(|f| {
            let (addr, len) = f.into_raw();
            XdpDesc {
                addr,
                len,
                options: 0,
            }
        }));
        debug_assert_eq!(taken as usize, n, "TX room counted above");
        self.in_tx += taken;
        Ok(n)
    }

    fn reclaim(&mut self, pool: &mut BufferPool) -> usize {
        let Some(sock) = self.sock.as_mut() else {
            return 0;
        };
        let n = sock.complete(u32::MAX, |addr| pool.free(Frame::from_raw(addr, 0)));
        self.in_tx -= n;
        if self.in_tx > 0 {
            // Copy mode transmits only when kicked; keep kicking while frames are in flight.
            sock.kick_tx();
        }
        n as usize
    }

    fn held(&self) -> usize {
        (self.in_fill + self.in_tx) as usize
    }

    fn wait_fd(&self) -> Option<RawFd> {
        self.fd()
    }

    fn release(&mut self, pool: &mut BufferPool) {
        let Some(mut sock) = self.sock.take() else {
            return;
        };
        // Let in-flight transmissions complete before closing: frames the kernel took off the
        // TX ring come back only through COMPLETION (those still on the ring come back from
        // `close`). Wait while they keep coming, up to 200 ms without progress, so a loaded
        // machine that completes slowly still gets every frame back.
        let mut progress = std::time::Instant::now();
        while self.in_tx > 0 && progress.elapsed() < std::time::Duration::from_millis(200) {
            let n = sock.complete(u32::MAX, |addr| pool.free(Frame::from_raw(addr, 0)));
            if n > 0 {
                self.in_tx -= n;
                progress = std::time::Instant::now();
            } else {
                sock.kick_tx();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
        let overflowed = sock.statistics().is_ok_and(|s| s.rx_ring_full > 0);
        self.kept_by_kernel = usize::from(overflowed && self.in_fill > 0);
        for addr in sock.close() {
            pool.free(Frame::from_raw(addr, 0));
        }
        self.in_fill = 0;
        self.in_tx = 0;
    }

    fn kept_by_kernel(&self) -> usize {
        self.kept_by_kernel
    }
}
