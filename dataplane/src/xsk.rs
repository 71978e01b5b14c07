//! AF_XDP sockets, our own binding on `libc`: UMEM registration, the four rings, bind, and the
//! ring protocol. [`XskPort`](crate::port) builds on this to move frames between the rings and
//! a worker's batches.
//!
//! The UMEM is the worker's [`BufferPool`](crate::frame::BufferPool) region, so frames received
//! on one socket can be sent on another socket of the same worker without a copy in user
//! space (the kernel copies in copy mode; zero-copy NICs do not). The first socket of a worker
//! registers the UMEM; the others bind with `XDP_SHARED_UMEM`.
//!
//! Ring protocol (as in libxdp's `xsk.h`): the producer writes descriptors, then publishes its
//! index with a Release store; the consumer reads the index with Acquire, reads descriptors,
//! then publishes its own index with Release. Each ring has one user-space side, owned by the
//! socket's worker.
#![allow(unsafe_code)]

use crate::sys::{MapLease, Mmap};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use thiserror::Error;

/// Kernel headroom in front of every received frame in copy mode (`XDP_PACKET_HEADROOM`).
pub const XDP_PACKET_HEADROOM: u64 = 256;

#[derive(Debug, Error)]
pub enum XskError {
    #[error("AF_XDP socket on {ifname} queue {queue}: {op} failed: {source}")]
    Sys {
        ifname: String,
        queue: u32,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("AF_XDP socket on {ifname}: no such interface")]
    NoInterface { ifname: String },
    #[error("AF_XDP UMEM chunk size {chunk} must be a power of two between 2048 and 4096")]
    Chunk { chunk: u32 },
    #[error("AF_XDP ring size {size} for {ring} must be a power of two between 64 and 65536")]
    RingSize { ring: &'static str, size: u32 },
    #[error("AF_XDP: zero-copy is not supported on {ifname} queue {queue} ({source})")]
    NoZeroCopy {
        ifname: String,
        queue: u32,
        #[source]
        source: io::Error,
    },
}

/// Copy or zero-copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XskMode {
    /// Zero-copy if the driver supports it, else copy (the port says which it got).
    Auto,
    Copy,
    ZeroCopy,
}

/// Ring sizes and bind options of one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskConfig {
    pub rx_size: u32,
    pub tx_size: u32,
    pub fill_size: u32,
    pub comp_size: u32,
    pub mode: XskMode,
    /// Ask the kernel to say when it needs a wakeup (fewer system calls under load).
    pub need_wakeup: bool,
    /// `SO_BUSY_POLL` microseconds (and `SO_PREFER_BUSY_POLL`), or none.
    pub busy_poll_us: Option<u32>,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            rx_size: 2048,
            tx_size: 2048,
            fill_size: 4096,
            comp_size: 4096,
            mode: XskMode::Auto,
            need_wakeup: true,
            busy_poll_us: None,
        }
    }
}

/// The memory a UMEM is registered from: an anonymous mapping divided into chunks of `chunk`
/// bytes. It can only be made from a [`Mmap`] (memory this process mapped for the purpose), and
/// every socket bound to it holds a lease on the mapping, so the kernel never writes into
/// memory that was unmapped or given to anything else.
///
/// ```compile_fail
/// // Any memory as a UMEM: refused at compile time (the fields are private).
/// let mut buf = [0u8; 4096];
/// let area = linerate_dataplane::xsk::UmemArea {
///     base: std::ptr::NonNull::new(buf.as_mut_ptr()).unwrap(),
///     len: 4096,
///     chunk: 2048,
/// };
/// ```
#[derive(Clone)]
pub struct UmemArea {
    lease: MapLease,
    chunk: u32,
}

impl UmemArea {
    /// `region` as a UMEM of `chunk`-byte chunks (a power of two from 2048 to the page size,
    /// as the kernel requires in aligned mode).
    pub fn new(region: &Mmap, chunk: u32) -> Result<UmemArea, XskError> {
        if !chunk.is_power_of_two() || !(2048..=4096).contains(&chunk) {
            return Err(XskError::Chunk { chunk });
        }
        Ok(UmemArea {
            lease: region.lease(),
            chunk,
        })
    }

    pub fn chunk(&self) -> u32 {
        self.chunk
    }

    pub fn len(&self) -> usize {
        self.lease.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lease.is_empty()
    }
}

/// One mmap'ed ring and its user-space cached indices.
struct Ring {
    map: NonNull<u8>,
    map_len: usize,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    desc: NonNull<u8>,
    size: u32,
    /// Our side's index (producer for FILL/TX, consumer for RX/COMP), not yet published.
    local: u32,
    /// Last seen index of the kernel's side (consumer rings refresh it when they run dry).
    cached: u32,
}

impl Ring {
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the ring mapping, which lives as long as `self`; the kernel only
        // ever accesses it atomically too.
        unsafe { self.producer.as_ref() }
    }
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as in `producer`.
        unsafe { self.consumer.as_ref() }
    }
    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as in `producer`.
        unsafe { self.flags.as_ref() }
    }

    /// Producer side: slots free for us to write. Always re-reads the kernel's index (once
    /// per batch): a stale one would report less room than there is, and callers size their
    /// writes by it.
    fn free(&mut self) -> u32 {
        self.cached = self.consumer().load(Ordering::Acquire);
        self.size - self.local.wrapping_sub(self.cached)
    }

    /// Consumer side: entries ready for us to read.
    fn ready(&mut self) -> u32 {
        if self.cached == self.local {
            self.cached = self.producer().load(Ordering::Acquire);
        }
        self.cached.wrapping_sub(self.local)
    }

    fn slot<T>(&self, idx: u32) -> *mut T {
        let i = (idx & (self.size - 1)) as usize;
        // SAFETY: `i < size` and the mapping holds `size` descriptors of `T` from `desc`.
        unsafe { self.desc.as_ptr().cast::<T>().add(i) }
    }

    fn needs_wakeup(&self) -> bool {
        self.flags().load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `map`/`map_len` are exactly what mmap returned; nothing borrows the ring
        // any more.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

/// An RX/TX descriptor (uapi `struct xdp_desc`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XdpDesc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

/// A bound AF_XDP socket and its rings. FILL and COMPLETION rings exist on the socket that
/// registered the UMEM and on shared sockets bound to a different (interface, queue).
pub struct XskSocket {
    fd: OwnedFd,
    rx: Ring,
    tx: Ring,
    fill: Ring,
    comp: Ring,
    ifname: String,
    queue: u32,
    zero_copy: bool,
    /// Busy polling: `recv` drives the device's RX processing itself with a recvfrom.
    busy_poll: bool,
    /// Keeps the UMEM mapped while the kernel may write into it; dropped after `fd` closes.
    _umem: UmemArea,
}

// SAFETY: the rings are plain memory shared with the kernel; moving the socket to another
// thread moves sole user-space ownership of them with it (it is not `Sync`).
unsafe impl Send for XskSocket {}

impl XskSocket {
    /// Creates a socket on `ifname` queue `queue` over `umem`. With `share` set to the socket
    /// that registered `umem`, the UMEM is shared instead of registered again.
    pub fn bind(
        umem: &UmemArea,
        share: Option<&XskSocket>,
        ifname: &str,
        queue: u32,
        cfg: &XskConfig,
    ) -> Result<XskSocket, XskError> {
        for (ring, size) in [
            ("rx", cfg.rx_size),
            ("tx", cfg.tx_size),
            ("fill", cfg.fill_size),
            ("completion", cfg.comp_size),
        ] {
            if !size.is_power_of_two() || !(64..=65536).contains(&size) {
                return Err(XskError::RingSize { ring, size });
            }
        }
        let sys = |op: &'static str| {
            let source = io::Error::last_os_error();
            XskError::Sys {
                ifname: ifname.to_string(),
                queue,
                op,
                source,
            }
        };
        let c_name = std::ffi::CString::new(ifname).map_err(|_| XskError::NoInterface {
            ifname: ifname.to_string(),
        })?;
        // SAFETY: `c_name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if ifindex == 0 {
            return Err(XskError::NoInterface {
                ifname: ifname.to_string(),
            });
        }
        // SAFETY: plain socket(2); the result is checked and owned right away.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(sys("socket(AF_XDP)"));
        }
        // SAFETY: `raw` is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let fdr = fd.as_raw_fd();

        if share.is_none() {
            let reg = libc::xdp_umem_reg {
                addr: umem.lease.addr(),
                len: umem.lease.len() as u64,
                chunk_size: umem.chunk,
                headroom: 0,
                flags: 0,
                tx_metadata_len: 0,
            };
            setsockopt(fdr, libc::XDP_UMEM_REG, &reg)
                .map_err(|_| sys("setsockopt(XDP_UMEM_REG)"))?;
        }
        // Every socket here owns its FILL/COMPLETION pair: a shared socket always binds a
        // different (interface, queue) than the one that registered the UMEM.
        setsockopt(fdr, libc::XDP_UMEM_FILL_RING, &cfg.fill_size)
            .map_err(|_| sys("setsockopt(XDP_UMEM_FILL_RING)"))?;
        setsockopt(fdr, libc::XDP_UMEM_COMPLETION_RING, &cfg.comp_size)
            .map_err(|_| sys("setsockopt(XDP_UMEM_COMPLETION_RING)"))?;
        setsockopt(fdr, libc::XDP_RX_RING, &cfg.rx_size)
            .map_err(|_| sys("setsockopt(XDP_RX_RING)"))?;
        setsockopt(fdr, libc::XDP_TX_RING, &cfg.tx_size)
            .map_err(|_| sys("setsockopt(XDP_TX_RING)"))?;

        // SAFETY: zeroed is a valid `xdp_mmap_offsets` (plain integers); the kernel fills it.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` is writable for `len` bytes.
        let r = unsafe {
            libc::getsockopt(
                fdr,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&raw mut off).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(sys("getsockopt(XDP_MMAP_OFFSETS)"));
        }
        let map =
            |o: &libc::xdp_ring_offset, size: u32, desc: usize, pgoff: u64, what: &'static str| {
                map_ring(fdr, o, size, desc, pgoff).map_err(|_| sys(what))
            };
        let rx = map(
            &off.rx,
            cfg.rx_size,
            size_of::<XdpDesc>(),
            libc::XDP_PGOFF_RX_RING as u64,
            "mmap(rx ring)",
        )?;
        let tx = map(
            &off.tx,
            cfg.tx_size,
            size_of::<XdpDesc>(),
            libc::XDP_PGOFF_TX_RING as u64,
            "mmap(tx ring)",
        )?;
        let fill = map(
            &off.fr,
            cfg.fill_size,
            8,
            libc::XDP_UMEM_PGOFF_FILL_RING,
            "mmap(fill ring)",
        )?;
        let comp = map(
            &off.cr,
            cfg.comp_size,
            8,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            "mmap(completion ring)",
        )?;

        let mut zero_copy = false;
        let try_bind = |flags: u16, shared_fd: u32| {
            let sa = libc::sockaddr_xdp {
                sxdp_family: libc::AF_XDP as u16,
                sxdp_flags: flags,
                sxdp_ifindex: ifindex,
                sxdp_queue_id: queue,
                sxdp_shared_umem_fd: shared_fd,
            };
            // SAFETY: `sa` is a valid sockaddr_xdp of the size we pass.
            let r = unsafe {
                libc::bind(
                    fdr,
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                )
            };
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        let wake = if cfg.need_wakeup {
            libc::XDP_USE_NEED_WAKEUP
        } else {
            0
        };
        match share {
            // Mode and need_wakeup are inherited from the registering socket.
            Some(first) => {
                try_bind(libc::XDP_SHARED_UMEM, first.fd.as_raw_fd() as u32).map_err(|source| {
                    XskError::Sys {
                        ifname: ifname.to_string(),
                        queue,
                        op: "bind(XDP_SHARED_UMEM)",
                        source,
                    }
                })?;
                zero_copy = first.zero_copy;
            }
            None => match cfg.mode {
                XskMode::Copy => {
                    try_bind(libc::XDP_COPY | wake, 0).map_err(|source| XskError::Sys {
                        ifname: ifname.to_string(),
                        queue,
                        op: "bind(XDP_COPY)",
                        source,
                    })?
                }
                XskMode::ZeroCopy => {
                    try_bind(libc::XDP_ZEROCOPY | wake, 0).map_err(|source| {
                        XskError::NoZeroCopy {
                            ifname: ifname.to_string(),
                            queue,
                            source,
                        }
                    })?;
                    zero_copy = true;
                }
                XskMode::Auto => match try_bind(libc::XDP_ZEROCOPY | wake, 0) {
                    Ok(()) => zero_copy = true,
                    Err(_) => {
                        try_bind(libc::XDP_COPY | wake, 0).map_err(|source| XskError::Sys {
                            ifname: ifname.to_string(),
                            queue,
                            op: "bind(XDP_COPY)",
                            source,
                        })?
                    }
                },
            },
        }
        if !zero_copy {
            // Copy mode sends at most this many frames per kick (32 unless raised, Linux 6.17+:
            // XDP_MAX_TX_SKB_BUDGET), so a batch of 64 took two kicks. Raise it to the ring;
            // an older kernel refuses and keeps 32.
            let _ = setsockopt(fdr, XDP_MAX_TX_SKB_BUDGET, &cfg.tx_size);
        }
        if let Some(us) = cfg.busy_poll_us {
            let one: i32 = 1;
            let us = us as i32;
            sock_opt(fdr, libc::SO_PREFER_BUSY_POLL, &one)
                .map_err(|_| sys("setsockopt(SO_PREFER_BUSY_POLL)"))?;
            sock_opt(fdr, libc::SO_BUSY_POLL, &us).map_err(|_| sys("setsockopt(SO_BUSY_POLL)"))?;
            let budget: i32 = 64;
            sock_opt(fdr, libc::SO_BUSY_POLL_BUDGET, &budget)
                .map_err(|_| sys("setsockopt(SO_BUSY_POLL_BUDGET)"))?;
        }
        Ok(XskSocket {
            fd,
            rx,
            tx,
            fill,
            comp,
            ifname: ifname.to_string(),
            queue,
            zero_copy,
            busy_poll: cfg.busy_poll_us.is_some(),
            _umem: umem.clone(),
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Whether the kernel runs this socket in zero-copy mode.
    pub fn is_zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Puts chunk addresses on the FILL ring for the kernel to receive into; returns how many
    /// it took (never more than there is room for).
    pub fn fill(&mut self, addrs: impl IntoIterator<Item = u64>) -> u32 {
        self.fill.produce(addrs)
    }

    /// Room on the FILL ring.
    pub fn fill_room(&mut self) -> u32 {
        self.fill.free()
    }

    /// Reads up to `max` received descriptors into `out`.
    pub fn recv(&mut self, max: u32, out: impl FnMut(XdpDesc)) -> u32 {
        if self.busy_poll {
            // With SO_PREFER_BUSY_POLL the kernel leaves this queue's RX processing to us:
            // a zero-length recvfrom runs it (up to the busy-poll budget) in our context.
            // SAFETY: recvfrom with no buffer on our socket, non-blocking.
            unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
        self.rx.consume(max, out)
    }

    /// Room on the TX ring.
    pub fn tx_room(&mut self) -> u32 {
        self.tx.free()
    }

    /// Queues descriptors for transmission (at most `tx_room()` of them are taken) and kicks
    /// the kernel if it asked for it; returns how many were queued.
    pub fn send(&mut self, descs: impl IntoIterator<Item = XdpDesc>) -> u32 {
        let n = self.tx.produce(descs);
        self.kick_tx();
        n
    }

    /// In copy mode the kernel transmits only inside `sendto`/`poll`; with need_wakeup it says
    /// when it wants one. EAGAIN/EBUSY/ENOBUFS mean "busy, try again later", not failure.
    pub fn kick_tx(&mut self) {
        if !self.zero_copy || self.tx.needs_wakeup() {
            // SAFETY: sendto with no buffer is the documented AF_XDP TX kick.
            unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
        }
    }

    /// Whether the kernel wants a wakeup to refill from the FILL ring.
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Takes completed transmissions' addresses off the COMPLETION ring.
    pub fn complete(&mut self, max: u32, out: impl FnMut(u64)) -> u32 {
        self.comp.consume(max, out)
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Kernel statistics of this socket (drops, invalid descriptors, full rings).
    pub fn statistics(&self) -> Result<libc::xdp_statistics, XskError> {
        // SAFETY: zeroed is valid for this plain struct; the kernel fills it.
        let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `st` is writable for `len` bytes.
        let r = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&raw mut st).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(XskError::Sys {
                ifname: self.ifname.clone(),
                queue: self.queue,
                op: "getsockopt(XDP_STATISTICS)",
                source: io::Error::last_os_error(),
            });
        }
        Ok(st)
    }

    /// Closes the socket and returns every chunk address still inside its rings (FILL and RX
    /// entries not yet taken, TX entries not yet sent, completions not yet read), so the
    /// caller can give them back to its pool. The ring mappings outlive the descriptor.
    pub fn close(self) -> Vec<u64> {
        let XskSocket {
            fd,
            mut rx,
            tx,
            fill,
            mut comp,
            ..
        } = self;
        drop(fd);
        let mut out: Vec<u64> = fill.unconsumed::<u64>();
        out.extend(tx.unconsumed::<XdpDesc>().into_iter().map(|d| d.addr));
        out.extend(rx.drain_ready::<XdpDesc>().into_iter().map(|d| d.addr));
        out.extend(comp.drain_ready::<u64>());
        out
    }
}

impl Ring {
    /// Producer side: entries we published that the kernel has not consumed.
    fn unconsumed<T: Copy>(&self) -> Vec<T> {
        let mut i = self.consumer().load(Ordering::Acquire);
        let mut out = Vec::new();
        while i != self.local {
            // SAFETY: [consumer, local) holds entries we wrote and published.
            out.push(unsafe { self.slot::<T>(i).read() });
            i = i.wrapping_add(1);
        }
        out
    }

    /// Consumer side: every entry the kernel published that we have not read, consumed.
    fn drain_ready<T: Copy>(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        self.consume(u32::MAX, |v| out.push(v));
        out
    }

    /// Producer side: writes as many of `items` as there is room for and publishes them;
    /// returns how many were written (the rest of the iterator is not touched).
    fn produce<T>(&mut self, items: impl IntoIterator<Item = T>) -> u32 {
        let room = self.free();
        let mut n = 0;
        for v in items.into_iter().take(room as usize) {
            // SAFETY: slot `local + n` is free (fewer than `room` written) and ours until we
            // publish the producer index below.
            unsafe { self.slot::<T>(self.local.wrapping_add(n)).write(v) };
            n += 1;
        }
        if n > 0 {
            self.local = self.local.wrapping_add(n);
            self.producer().store(self.local, Ordering::Release);
        }
        n
    }

    /// Consumer side: hands up to `max` published entries to `out` and consumes them.
    fn consume<T: Copy>(&mut self, max: u32, mut out: impl FnMut(T)) -> u32 {
        let n = self.ready().min(max);
        for i in 0..n {
            // SAFETY: entries [local, local + ready) were published by the kernel (Acquire in
            // `ready`) and are not rewritten until we move the consumer index past them.
            out(unsafe { self.slot::<T>(self.local.wrapping_add(i)).read() });
        }
        if n > 0 {
            self.local = self.local.wrapping_add(n);
            self.consumer().store(self.local, Ordering::Release);
        }
        n
    }
}

/// Sleeps until one of `sockets` has received something, or `timeout_ms` passes; returns
/// whether one is readable.
pub fn wait_readable(sockets: &[XskSocket], timeout_ms: i32) -> io::Result<bool> {
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    crate::sys::poll_readable(
        &mut fds,
        std::time::Duration::from_millis(timeout_ms.max(1) as u64),
    )
}

/// `XDP_MAX_TX_SKB_BUDGET` (linux/if_xdp.h, 6.17+; not in the libc crate yet).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a valid `T` of the size we pass.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sock_opt<T>(fd: RawFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: as in `setsockopt`.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn map_ring(
    fd: RawFd,
    off: &libc::xdp_ring_offset,
    size: u32,
    desc: usize,
    pgoff: u64,
) -> io::Result<Ring> {
    let map_len = off.desc as usize + size as usize * desc;
    // SAFETY: mapping the kernel's ring at its documented page offset; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            pgoff as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
    // SAFETY: the offsets come from the kernel and lie inside the mapping of `map_len` bytes.
    let at = |o: u64| unsafe { NonNull::new_unchecked(base.as_ptr().add(o as usize)) };
    let producer = at(off.producer).cast::<AtomicU32>();
    let consumer = at(off.consumer).cast::<AtomicU32>();
    let local = {
        // SAFETY: just mapped; reading the initial indices (both zero on a new ring).
        unsafe { producer.as_ref().load(Ordering::Relaxed) }
    };
    Ok(Ring {
        map: base,
        map_len,
        producer,
        consumer,
        flags: at(off.flags).cast::<AtomicU32>(),
        desc: at(off.desc),
        size,
        local,
        cached: local,
    })
}
