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
    fn small_regions_are_left_alone() {
        assert!(!advise_hugepages(&mut [0u32; 16]));
    }
}
