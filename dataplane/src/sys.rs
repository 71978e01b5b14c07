//! Memory hints for large lookup tables: huge-page advice (the packet core's only system call
//! outside ports) and cache prefetch.
//!
//! A DIR-24-8 first level is 64 MiB; packets of many flows touch it at random, and with 4 KiB
//! pages nearly every lookup is a TLB miss and a page walk. Backed by 2 MiB pages the whole
//! table needs 32 TLB entries. [`HugeTable`] asks for transparent huge pages with
//! `madvise(MADV_HUGEPAGE)` before the table is first written (when the kernel's THP mode is
//! `madvise`, as on Debian; with `always` it changes nothing, with `never` it is ignored).
#![allow(unsafe_code)]

use std::ops::{Deref, DerefMut};

const PAGE: usize = 4096;
const HUGE: usize = 2 << 20;

/// Asks the kernel to back `mem` with huge pages; returns whether it accepted. Regions smaller
/// than one huge page are left alone.
pub fn advise_hugepages(mem: &mut [u32]) -> bool {
    let len = std::mem::size_of_val(mem);
    if len < HUGE {
        return false;
    }
    let start = mem.as_mut_ptr() as usize;
    let aligned = (start + PAGE - 1) & !(PAGE - 1);
    let end = (start + len) & !(PAGE - 1);
    if end <= aligned {
        return false;
    }
    // SAFETY: [aligned, end) is page-aligned and lies inside `mem`, which we hold mutably.
    // MADV_HUGEPAGE only changes how the kernel backs those pages, never their contents, so no
    // reference into `mem` can observe it.
    unsafe {
        libc::madvise(
            aligned as *mut libc::c_void,
            end - aligned,
            libc::MADV_HUGEPAGE,
        ) == 0
    }
}

/// Sets TCP_NOTSENT_LOWAT on TCP socket `fd`: a write then fails with EAGAIN (and POLLOUT
/// waits) once `bytes` are written but unsent, so little waits in the socket beyond what the
/// network takes (nix has no wrapper for this option). Used by the emulator's flow senders
/// and the relay.
pub fn tcp_notsent_lowat(fd: std::os::fd::BorrowedFd<'_>, bytes: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = bytes.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: `v` lives across the call and its size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Counter `name` of network interface `dev` in the calling thread's namespace, from
/// `/sys/class/net/<dev>/statistics/` (`rx_dropped`, `tx_dropped`, `rx_missed_errors`...);
/// `None` when it cannot be read.
pub fn if_counter(dev: &str, name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/statistics/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns` reads, so the sink can
/// subtract a generator's send time from its receive time.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until one of `fds` is readable or `timeout` passes (an interrupted wait counts as a
/// timeout); returns whether one is readable.
pub fn poll_readable(
    fds: &mut [libc::pollfd],
    timeout: std::time::Duration,
) -> std::io::Result<bool> {
    for p in fds.iter_mut() {
        p.events = libc::POLLIN;
        p.revents = 0;
    }
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: `fds` is a valid, writable array of `fds.len()` pollfd for the call's duration.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    match r {
        -1 => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        n => Ok(n > 0),
    }
}

/// Hints the CPU to bring the cache line holding `value` into cache, without waiting for it.
/// Workers call this for a whole batch before deciding, so the lookups' cache misses overlap.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 never faults and has no architectural effect; the pointer comes from
    // a reference, so it is valid anyway.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// An anonymous, page-aligned, zero-filled mapping: the memory an AF_XDP UMEM is registered
/// from. The kernel reads and writes it (frames on the FILL and TX rings), so it is only ever
/// accessed through raw pointers and short-lived slices of single frames, never as one Rust
/// reference to the whole region.
pub struct Mmap {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    /// Unmaps when the last of this value and its [`MapLease`]s is gone.
    mapping: std::sync::Arc<Mapping>,
}

/// The mapping itself, unmapped on drop.
struct Mapping {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: only the address and length are kept; nothing is read through them here.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping `Mmap::anonymous` created; every `Mmap` and `MapLease`
        // naming it is gone (this is the last `Arc`), so nothing can reach it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Keeps a mapping alive without giving access to its bytes: what a kernel object that
/// writes into the region (an AF_XDP socket with the region as its UMEM) holds, so the memory
/// cannot be unmapped under it while the owning [`Mmap`] goes away first.
#[derive(Clone)]
pub struct MapLease(std::sync::Arc<Mapping>);

impl MapLease {
    /// The region's first byte, for registering it with the kernel.
    pub fn addr(&self) -> u64 {
        self.0.ptr.as_ptr() as u64
    }

    pub fn len(&self) -> usize {
        self.0.len
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }
}

// SAFETY: the mapping is plain memory owned by this value; moving it to another thread moves
// that ownership.
unsafe impl Send for Mmap {}

impl Mmap {
    /// Maps `len` bytes (rounded up to a page), asking for huge pages when `len` allows.
    pub fn anonymous(len: usize) -> std::io::Result<Mmap> {
        let len = len.div_ceil(PAGE) * PAGE;
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr =
            std::ptr::NonNull::new(p.cast::<u8>()).ok_or_else(std::io::Error::last_os_error)?;
        if len >= HUGE {
            // SAFETY: the range is exactly our fresh mapping; the advice changes no contents.
            unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
        }
        Ok(Mmap {
            ptr,
            len,
            mapping: std::sync::Arc::new(Mapping { ptr, len }),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A lease that keeps the mapping in place as long as it lives (see [`MapLease`]).
    pub fn lease(&self) -> MapLease {
        MapLease(self.mapping.clone())
    }

    /// The bytes `[start, start + len)`.
    ///
    /// # Panics
    /// If the range is outside the mapping.
    #[inline]
    pub fn slice(&self, start: usize, len: usize) -> &[u8] {
        assert!(
            start <= self.len && len <= self.len - start,
            "range outside mapping"
        );
        // SAFETY: in bounds (checked); the caller owns the frame this range belongs to, so the
        // kernel is not writing it (frames on kernel rings are owned by no `Frame` value).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), len) }
    }

    /// The bytes `[start, start + len)`, writable.
    ///
    /// # Panics
    /// If the range is outside the mapping.
    #[inline]
    pub fn slice_mut(&mut self, start: usize, len: usize) -> &mut [u8] {
        assert!(
            start <= self.len && len <= self.len - start,
            "range outside mapping"
        );
        // SAFETY: as in `slice`; `&mut self` keeps this the only slice we hand out.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), len) }
    }

    /// Copies `len` bytes from `src` to `dst` offsets (ranges may not overlap).
    pub fn copy_within(&mut self, src: usize, dst: usize, len: usize) {
        assert!(
            src.max(dst) <= self.len && len <= self.len - src.max(dst),
            "range outside mapping"
        );
        assert!(src + len <= dst || dst + len <= src, "overlapping copy");
        // SAFETY: both ranges are in bounds and disjoint (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(src),
                self.ptr.as_ptr().add(dst),
                len,
            )
        };
    }
}

/// A zero-initialised table of `u32` that asks for huge pages, also when cloned.
pub struct HugeTable(Box<[u32]>);

impl HugeTable {
    pub fn zeroed(len: usize) -> HugeTable {
        // `vec![0; n]` is a zeroed allocation (fresh, untouched pages for large n), so the
        // advice lands before the first write faults pages in.
        let mut b = vec![0u32; len].into_boxed_slice();
        advise_hugepages(&mut b);
        HugeTable(b)
    }
}

impl Clone for HugeTable {
    fn clone(&self) -> Self {
        let mut t = HugeTable::zeroed(self.0.len());
        t.0.copy_from_slice(&self.0);
        t
    }
}

impl Deref for HugeTable {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        &self.0
    }
}

impl DerefMut for HugeTable {
    fn deref_mut(&mut self) -> &mut [u32] {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_lease_keeps_the_region_mapped_after_its_owner_is_gone() {
        let mut m = Mmap::anonymous(1 << 16).unwrap();
        m.slice_mut(4096, 4).copy_from_slice(b"kept");
        let lease = m.lease();
        drop(m);
        // SAFETY: the test's point: the lease alone keeps these bytes mapped and unchanged
        // (unmapped, this would fault; mapped anew, it would read zeros).
        let bytes = unsafe { std::slice::from_raw_parts(lease.0.ptr.as_ptr().add(4096), 4) };
        assert_eq!(bytes, b"kept");
    }

    use super::*;

    #[test]
    fn clone_copies_contents() {
        let mut t = HugeTable::zeroed(1 << 20);
        t[12345] = 7;
        let c = t.clone();
        assert_eq!(c[12345], 7);
        assert_eq!(c.len(), 1 << 20);
    }

    #[test]
    fn mmap_is_zeroed_page_aligned_and_bounds_checked() {
        let mut m = Mmap::anonymous(10_000).unwrap();
        assert_eq!(m.len(), 12_288);
        assert_eq!(m.lease().addr() as usize % 4096, 0);
        assert!(m.slice(0, m.len()).iter().all(|&b| b == 0));
        m.slice_mut(4096, 3).copy_from_slice(&[1, 2, 3]);
        m.copy_within(4096, 8192, 3);
        assert_eq!(m.slice(8192, 3), &[1, 2, 3]);
        assert!(std::panic::catch_unwind(|| m.slice(12_000, 1000).len()).is_err());
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(monotonic_ns() >= a + 1_000_000);
    }

    #[test]
    fn small_regions_are_left_alone() {
        assert!(!advise_hugepages(&mut [0u32; 16]));
    }
}
