//! The page table of one emulated GPU: 4 KiB virtual pages to system pages or VRAM pages.
//!
//! SVM gives the GPU the CPU's virtual addresses, so a *system* entry for page `p` always
//! points at the process's own page `p`; a *VRAM* entry names the GPU that owns the memory
//! (this one, or a peer in its XGMI hive) and the VRAM page. Each entry carries the
//! writable, executable and coherent bits of KFD's PTE flags.
//!
//! Layout: a hash map from 2 MiB-aligned directories to leaves of 512 entries, so a
//! translation is one hash and one index. Readers (device accesses) hold the read lock
//! while they copy through the entries they translated; map and unmap take the write lock,
//! so when an unmap returns no access is still using the old translation (the TLB
//! shootdown of real hardware).

use crate::addr::PageNo;
use crate::addr::Pages;
use crate::gpu::GpuIdx;
use parking_lot::{RwLock, RwLockReadGuard};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const LEAF_SHIFT: u32 = 9;
const LEAF_PAGES: usize = 1 << LEAF_SHIFT;

/// A page-table entry. Encoding: bit 0 valid, 1 VRAM, 2 writable, 3 executable,
/// 4 coherent, bits 8..16 the owning GPU's index, bits 16..64 the VRAM page.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Pte(u64);

const VALID: u64 = 1 << 0;
const VRAM: u64 = 1 << 1;
const WRITE: u64 = 1 << 2;
const EXEC: u64 = 1 << 3;
const COHERENT: u64 = 1 << 4;

/// Permission and caching bits of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PteFlags {
    /// The GPU may write.
    pub writable: bool,
    /// The GPU may execute.
    pub exec: bool,
    /// Coherent (uncached) memory type.
    pub coherent: bool,
}

impl PteFlags {
    fn bits(self) -> u64 {
        (if self.writable { WRITE } else { 0 })
            | (if self.exec { EXEC } else { 0 })
            | (if self.coherent { COHERENT } else { 0 })
    }
}

/// Where a valid entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The process's own page at the same virtual address.
    System,
    /// VRAM page `page` of the GPU with index `gpu`.
    Vram {
        /// Owning GPU index.
        gpu: GpuIdx,
        /// VRAM page number.
        page: u64,
    },
}

impl Pte {
    /// No mapping.
    pub const INVALID: Pte = Pte(0);

    /// A mapping of the system page at the same virtual address.
    pub fn system(f: PteFlags) -> Pte {
        Pte(VALID | f.bits())
    }

    /// A mapping of VRAM page `page` of GPU `gpu`.
    pub fn vram(gpu: GpuIdx, page: u64, f: PteFlags) -> Pte {
        debug_assert!(gpu.get() < 256 && page < 1 << 48);
        Pte(VALID | VRAM | f.bits() | (gpu.get() as u64) << 8 | page << 16)
    }

    /// Whether the entry maps anything.
    pub fn valid(self) -> bool {
        self.0 & VALID != 0
    }

    /// Whether writes are allowed.
    pub fn writable(self) -> bool {
        self.0 & WRITE != 0
    }

    /// The permission bits.
    pub fn flags(self) -> PteFlags {
        PteFlags { writable: self.0 & WRITE != 0, exec: self.0 & EXEC != 0, coherent: self.0 & COHERENT != 0 }
    }

    /// Where the entry points (`None` when invalid).
    pub fn target(self) -> Option<Target> {
        if !self.valid() {
            None
        } else if self.0 & VRAM != 0 {
            Some(Target::Vram { gpu: GpuIdx::new(((self.0 >> 8) & 0xff) as usize), page: self.0 >> 16 })
        } else {
            Some(Target::System)
        }
    }
}

impl std::fmt::Debug for Pte {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.target() {
            None => f.write_str("Pte(invalid)"),
            Some(t) => write!(f, "Pte({t:?}, {:?})", self.flags()),
        }
    }
}

/// Multiplicative hashing for directory numbers (small integers, no adversary).
#[derive(Default)]
pub struct DirHasher(u64);

impl Hasher for DirHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

struct Leaf {
    ptes: [Pte; LEAF_PAGES],
    live: u32,
}

/// The entries of a page table (what a read guard gives access to).
#[derive(Default)]
pub struct Tables {
    dirs: HashMap<u64, Box<Leaf>, BuildHasherDefault<DirHasher>>,
    mapped: u64,
}

impl Tables {
    /// The entry of virtual page `page`.
    #[inline]
    pub fn get(&self, page: PageNo) -> Pte {
        let page = page.get();
        match self.dirs.get(&(page >> LEAF_SHIFT)) {
            Some(l) => l.ptes[(page as usize) & (LEAF_PAGES - 1)],
            None => Pte::INVALID,
        }
    }

    fn set(&mut self, page: u64, pte: Pte) {
        let dir = page >> LEAF_SHIFT;
        let i = (page as usize) & (LEAF_PAGES - 1);
        if !pte.valid() {
            let Some(l) = self.dirs.get_mut(&dir) else {
                return;
            };
            if l.ptes[i].valid() {
                l.ptes[i] = Pte::INVALID;
                l.live -= 1;
                self.mapped -= 1;
                if l.live == 0 {
                    self.dirs.remove(&dir);
                }
            }
            return;
        }
        let l = self
            .dirs
            .entry(dir)
            .or_insert_with(|| Box::new(Leaf { ptes: [Pte::INVALID; LEAF_PAGES], live: 0 }));
        if !l.ptes[i].valid() {
            l.live += 1;
            self.mapped += 1;
        }
        l.ptes[i] = pte;
    }
}

/// The page table of one GPU.
#[derive(Default)]
pub struct PageTable {
    t: RwLock<Tables>,
}

impl std::fmt::Debug for PageTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageTable({} pages mapped)", self.mapped_pages())
    }
}

impl PageTable {
    /// An empty page table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A read guard for translating and copying (held only while copying).
    pub fn read(&self) -> RwLockReadGuard<'_, Tables> {
        self.t.read()
    }

    /// Writes `npages` entries starting at virtual page `start`, entry `i` being `f(i)`.
    pub fn map(&self, start: PageNo, npages: u64, mut f: impl FnMut(u64) -> Pte) {
        let mut t = self.t.write();
        for i in 0..npages {
            t.set((start + i).get(), f(i));
        }
    }

    /// Clears the entries of `[start, last]`; returns how many were valid.
    pub fn unmap(&self, Pages { first: start, last }: Pages) -> u64 {
        let (start, last) = (start.get(), last.get());
        let mut t = self.t.write();
        let before = t.mapped;
        // Walk only the directories that exist when the interval is large.
        if last - start >= LEAF_PAGES as u64 * 4 {
            let dirs: Vec<u64> = t
                .dirs
                .keys()
                .copied()
                .filter(|d| *d >= start >> LEAF_SHIFT && *d <= last >> LEAF_SHIFT)
                .collect();
            for d in dirs {
                let lo = (d << LEAF_SHIFT).max(start);
                let hi = ((d << LEAF_SHIFT) + LEAF_PAGES as u64 - 1).min(last);
                for p in lo..=hi {
                    t.set(p, Pte::INVALID);
                }
            }
        } else {
            for p in start..=last {
                t.set(p, Pte::INVALID);
            }
        }
        before - t.mapped
    }

    /// The entry of virtual page `page`.
    pub fn get(&self, page: PageNo) -> Pte {
        self.t.read().get(page)
    }

    /// Number of valid entries.
    pub fn mapped_pages(&self) -> u64 {
        self.t.read().mapped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::pg;

    const RW: PteFlags = PteFlags { writable: true, exec: false, coherent: true };

    #[test]
    fn map_translate_unmap() {
        let pt = PageTable::new();
        pt.map(pg(1000), 600, |i| {
            if i % 2 == 0 { Pte::system(RW) } else { Pte::vram(GpuIdx::new(1), 7 + i, PteFlags::default()) }
        });
        assert_eq!(pt.mapped_pages(), 600);
        assert_eq!(pt.get(pg(1000)).target(), Some(Target::System));
        assert!(pt.get(pg(1000)).writable());
        assert_eq!(pt.get(pg(1001)).target(), Some(Target::Vram { gpu: GpuIdx::new(1), page: 8 }));
        assert!(!pt.get(pg(1001)).writable());
        assert_eq!(pt.get(pg(999)), Pte::INVALID);
        assert_eq!(pt.get(pg(1600)), Pte::INVALID);
        assert_eq!(pt.unmap(Pages::new(pg(1100), pg(1199))), 100);
        assert!(!pt.get(pg(1150)).valid());
        assert!(pt.get(pg(1200)).valid());
        // Remapping an entry does not count it twice.
        pt.map(pg(1000), 1, |_| Pte::vram(GpuIdx::new(0), 1, RW));
        assert_eq!(pt.mapped_pages(), 500);
        assert_eq!(pt.unmap(Pages::new(pg(0), pg(1 << 30))), 500);
        assert_eq!(pt.mapped_pages(), 0);
        assert!(pt.read().dirs.is_empty(), "empty leaves are freed");
    }

    #[test]
    fn flags_round_trip() {
        for w in [false, true] {
            for x in [false, true] {
                for c in [false, true] {
                    let f = PteFlags { writable: w, exec: x, coherent: c };
                    assert_eq!(Pte::system(f).flags(), f);
                    let v = Pte::vram(GpuIdx::new(63), (1 << 40) + 5, f);
                    assert_eq!(v.flags(), f);
                    assert_eq!(v.target(), Some(Target::Vram { gpu: GpuIdx::new(63), page: (1 << 40) + 5 }));
                }
            }
        }
    }
}
