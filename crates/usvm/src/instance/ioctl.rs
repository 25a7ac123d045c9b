//! SET_ATTR and GET_ATTR (`svm_range_set_attr`, `svm_range_get_attr`) after the entry
//! checks: attribute validation, the ranges' update, the migrations they ask for and the
//! GPU mapping step (sections 1.7, 4.2, 7).

use super::{SvmInner, SvmState};
use crate::addr::Pages;
use crate::attr::{Attr, Location, SvmFlags};
use crate::error::{Error, Result};
use crate::events::MigrateTrigger;
use crate::history::Cause;
use crate::map;
use crate::migrate;
use crate::policy;
use crate::range::tree::Aggregate;
use crate::range::{AttrOp, GpuMask, PageNo};
use crate::sys::{PAGE_SHIFT, PAGE_SIZE, vma};
use crate::uapi::{self, RawAttr};

impl SvmInner {
    /// `svm_range_check_attr`: every attribute valid, GPU ids resolved to indices.
    pub(super) fn check_attrs(&self, attrs: &[Attr]) -> Result<Vec<AttrOp>> {
        let loc = |l: Location| -> Result<Location> {
            match l {
                Location::Gpu(g) => self.gpu(g).map(|_| l),
                _ => Ok(l),
            }
        };
        attrs
            .iter()
            .map(|a| {
                Ok(match *a {
                    Attr::PreferredLoc(l) => AttrOp::Preferred(loc(l)?),
                    Attr::PrefetchLoc(Location::Undefined) => return Err(Error::UndefinedPrefetch),
                    Attr::PrefetchLoc(l) => AttrOp::Prefetch(loc(l)?),
                    Attr::Access(g) => AttrOp::Access(self.gpu(g)?),
                    Attr::AccessInPlace(g) => AttrOp::AccessInPlace(self.gpu(g)?),
                    Attr::NoAccess(g) => AttrOp::NoAccess(self.gpu(g)?),
                    Attr::SetFlags(f) => AttrOp::SetFlags(f),
                    Attr::ClrFlags(f) => AttrOp::ClrFlags(f),
                    Attr::Granularity(v) => AttrOp::Granularity(v),
                })
            })
            .collect()
    }

    /// `svm_range_is_valid`'s second half: no page of `[start, last]` belongs to a KFD
    /// buffer object (EADDRINUSE).
    pub(super) fn check_not_kfd(&self, pages: Pages) -> Result<()> {
        match self.kfd_bos.lock().first_in(pages) {
            Some(p) => Err(Error::AddressInUse { addr: p.addr() as u64 }),
            None => Ok(()),
        }
    }

    /// Watches the anonymous memory of `[start, last]` that no range of this instance watches
    /// yet: from now on the application's munmap, mremap and MADV_DONTNEED of it reach usvm as
    /// the MMU notifier's do. Done before anything changes: memory another instance watches is
    /// refused (EADDRINUSE), and a refused call unregisters what it registered (never what the
    /// instance watched before).
    fn watch(&self, st: &SvmState, start: PageNo, last: PageNo) -> Result<()> {
        let mut unwatched: Vec<(PageNo, PageNo)> = Vec::new();
        let mut next = start;
        for r in st.tree.overlapping(Pages::new(start, last)).filter(|r| r.registered) {
            if r.start > next {
                unwatched.push((next, r.start - 1));
            }
            next = r.last + 1;
        }
        if next <= last {
            unwatched.push((next, last));
        }
        for (i, &(s, l)) in unwatched.iter().enumerate() {
            if let Err(e) = migrate::register_interval(&self.engine, Pages::new(s, l)) {
                for &(s, l) in &unwatched[..i] {
                    migrate::unregister_interval(&self.engine, Pages::new(s, l));
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// `svm_range_set_attr` after the entry checks.
    pub(crate) fn set_attr(&self, pages: Pages, attrs: &[Attr]) -> Result<()> {
        let Pages { first: start, last } = pages;
        let ops = self.check_attrs(attrs)?;
        let mut st = self.lock_state();
        check_mapped(start, last)?;
        self.check_not_kfd(pages)?;
        let xnack = st.xnack;
        // XNACK off: the new ranges reserve their size against the system-memory limit;
        // beyond it the whole call fails with ENOMEM and changes nothing (section 1.7).
        let gap_pages = st.tree.gap_pages(pages);
        let new_bytes = if xnack { 0 } else { gap_pages << PAGE_SHIFT };
        if st.reserved_bytes + new_bytes > self.system_memory_limit {
            return Err(Error::NoMemory { bytes: new_bytes });
        }
        self.watch(&st, start, last)?;
        let defaults = self.new_range_attrs(xnack);
        let out = st.tree.add(start, last, &ops, &defaults, self.max_range_pages, !xnack);
        st.reserved_bytes += new_bytes;
        // The updated ranges lie inside the interval just registered.
        for s in &out.updated {
            if let Some(r) = st.tree.get_mut(*s) {
                r.registered = true;
            }
        }
        let update_mapping = policy::ops_update_mapping(&ops, xnack, !out.remap.is_empty());
        let asks_prefetch = ops.iter().any(|o| matches!(o, AttrOp::Prefetch(_)));
        // Per range, the last error wins and does not stop the others (section 1.7).
        let mut result = Ok(());
        for (&s, &old_pref) in out.updated.iter().zip(&out.old_preferred) {
            // Step 9a: the migration the range's (sticky) PREFETCH_LOC asks for, or the
            // seed's migration on a PREFERRED_LOC change.
            let migrated = match self.trigger_migration(&mut st, s, old_pref, asks_prefetch) {
                Ok(m) => m,
                Err(e) => {
                    // The kernel leaves a range whose migration failed unmapped by this call.
                    result = Err(e);
                    continue;
                }
            };
            let Some(r) = st.tree.get_mut(s) else { continue };
            let always = r.attrs.flags.contains(SvmFlags::GPU_ALWAYS_MAPPED);
            if migrated && (!xnack || always) && r.mapped_to_gpu {
                continue; // the migration's restore work remapped it
            }
            if !migrated && !update_mapping {
                continue;
            }
            if let Err(e) = self.map_range(&mut st, s, xnack) {
                result = Err(e);
            }
        }
        // Step 10: pieces split off at a boundary that is not granule aligned.
        for s in &out.remap {
            if let Err(e) = self.map_range(&mut st, *s, xnack) {
                result = Err(e);
            }
        }
        result
    }

    /// `svm_range_trigger_migration` for the range starting at `s`, plus the seed's rule:
    /// a PREFERRED_LOC change from system (or undefined) to a GPU migrates the range to
    /// that GPU (downgraded to system memory, as a prefetch is, when a GPU mapping the range
    /// is outside the target's hive), from a GPU to system migrates it back (unless the call
    /// prefetches, or the instance was built with `migrate_on_preferred_loc(false)`). Returns whether a
    /// migration ran; errors going to system memory are returned, failures to VRAM are not.
    pub(super) fn trigger_migration(
        &self,
        st: &mut SvmState,
        s: PageNo,
        old_pref: Location,
        asks_prefetch: bool,
    ) -> Result<bool> {
        let xnack = st.xnack;
        let Some(r) = st.tree.get(s) else { return Ok(false) };
        let (first, last) = (r.start, r.last);
        let flags = (self.migrate_on_preferred_loc, asks_prefetch, xnack);
        // The range's PREFETCH_LOC decides when it names a place; the seed's rule otherwise.
        let cause =
            if r.attrs.prefetch_loc == Location::Undefined { Cause::PreferredLoc } else { Cause::Prefetch };
        let gpu_idx = |g: crate::attr::GpuId| self.gpu_idx(g.0).expect("checked GPU");
        match policy::set_attr_move(&r.attrs, old_pref, flags, r.actual_loc, gpu_idx, |a, b| {
            self.devs.same_hive(a, b)
        }) {
            policy::Move::Stay => Ok(false),
            policy::Move::ToSysmem => self
                .move_to_ram(st, s, Pages::new(first, last), MigrateTrigger::Prefetch, cause)
                .map(|_| true),
            // A failed migration to VRAM leaves the data in RAM, silently (section 4.2), and
            // does not count as migrated: the mapping step then runs as without it (taken
            // for done, it skipped the remap of a GPU_RO change, and under XNACK on mapped
            // every ACCESS GPU).
            policy::Move::ToGpu(idx) => Ok(self
                .move_to_vram(st, s, Pages::new(first, last), idx, (MigrateTrigger::Prefetch, cause))
                .is_ok()),
        }
    }

    /// Validates and maps the whole range starting at `s` on its GPU set (section 7.1).
    pub(super) fn map_range(&self, st: &mut SvmState, s: PageNo, xnack: bool) -> Result<()> {
        let Some(r) = st.tree.get_mut(s) else {
            return Ok(());
        };
        let actual = self.gpu_of(r.actual_loc);
        let gpus = policy::gpus_to_map(&r.attrs, actual, r.mapped_to_gpu, xnack);
        let (first, last) = (r.start, r.last);
        map::validate_and_map(&self.devs, r, gpus, first, last)
    }

    /// `svm_range_get_attr` after the entry checks.
    pub(crate) fn get_attr(&self, pages: Pages, attrs: &mut [RawAttr]) -> Result<()> {
        let Pages { first: start, last } = pages;
        let st = self.lock_state();
        check_mapped(start, last)?;
        self.check_not_kfd(pages)?;
        for a in attrs.iter() {
            match a.ty {
                uapi::KFD_IOCTL_SVM_ATTR_PREFERRED_LOC
                | uapi::KFD_IOCTL_SVM_ATTR_PREFETCH_LOC
                | uapi::KFD_IOCTL_SVM_ATTR_ACCESS
                | uapi::KFD_IOCTL_SVM_ATTR_SET_FLAGS
                | uapi::KFD_IOCTL_SVM_ATTR_CLR_FLAGS
                | uapi::KFD_IOCTL_SVM_ATTR_GRANULARITY => {}
                uapi::KFD_IOCTL_SVM_ATTR_ACCESS_IN_PLACE | uapi::KFD_IOCTL_SVM_ATTR_NO_ACCESS => {
                    return Err(Error::BadQueryType(a.ty));
                }
                ty => return Err(Error::UnknownAttrType(ty)),
            }
        }
        let agg = st.tree.aggregate(pages, self.supported).unwrap_or_else(|| {
            // Nothing overlaps: the attributes a new range would get.
            let d = self.new_range_attrs(st.xnack);
            Aggregate {
                preferred_loc: d.preferred_loc,
                prefetch_loc: d.prefetch_loc,
                flags_and: d.flags,
                flags_or: d.flags,
                granularity: d.granularity,
                access: d.access,
                access_in_place: GpuMask::EMPTY,
            }
        });
        drop(st);
        for a in attrs.iter_mut() {
            match a.ty {
                uapi::KFD_IOCTL_SVM_ATTR_PREFERRED_LOC => a.value = agg.preferred_loc.to_raw(),
                uapi::KFD_IOCTL_SVM_ATTR_PREFETCH_LOC => a.value = agg.prefetch_loc.to_raw(),
                uapi::KFD_IOCTL_SVM_ATTR_ACCESS => {
                    let idx = self.gpu_idx(a.value).ok_or(Error::UnknownGpu(a.value))?;
                    a.ty = if agg.access.contains(idx) {
                        uapi::KFD_IOCTL_SVM_ATTR_ACCESS
                    } else if agg.access_in_place.contains(idx) {
                        uapi::KFD_IOCTL_SVM_ATTR_ACCESS_IN_PLACE
                    } else {
                        uapi::KFD_IOCTL_SVM_ATTR_NO_ACCESS
                    };
                }
                uapi::KFD_IOCTL_SVM_ATTR_SET_FLAGS => a.value = agg.flags_and.bits(),
                uapi::KFD_IOCTL_SVM_ATTR_CLR_FLAGS => a.value = !agg.flags_or.bits(),
                uapi::KFD_IOCTL_SVM_ATTR_GRANULARITY => a.value = u32::from(agg.granularity),
                _ => unreachable!("query types were checked"),
            }
        }
        Ok(())
    }
}

/// `svm_range_is_valid`: every page of `[start, last]` must lie in an ordinary mapping of
/// the process, with no hole and no device (I/O, PFN) mapping, else EFAULT.
fn check_mapped(start: PageNo, last: PageNo) -> Result<()> {
    for piece in vma::pieces(Pages::new(start, last)) {
        let v = piece?.vma;
        if v.kind == vma::VmaKind::Device {
            return Err(Error::DeviceMapping { addr: v.start as u64, name: "I/O or PFN mapping".into() });
        }
    }
    Ok(())
}

/// Entry checks of the SVM ioctl: start and size non-zero, 4 KiB aligned, and
/// `start + size` without overflow. Returns the inclusive page interval.
pub(crate) fn check_interval(start: u64, size: u64) -> Result<(PageNo, PageNo)> {
    let page = PAGE_SIZE as u64 - 1;
    let bad = Error::BadInterval { start, size };
    if start & page != 0 || size & page != 0 || start == 0 || size == 0 {
        return Err(bad);
    }
    let end = start.checked_add(size).filter(|&e| e <= usize::MAX as u64).ok_or(bad)?;
    Ok((PageNo::new(start >> PAGE_SHIFT), PageNo::new((end >> PAGE_SHIFT) - 1)))
}
