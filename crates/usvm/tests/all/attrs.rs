//! SET_ATTR / GET_ATTR semantics, case by case (kfd-svm-semantics.md sections 1-3 and test
//! ideas T1-T11).

use crate::util::*;
use usvm::uapi::*;
use usvm::{Attr, GpuId, Location, RawAttr, Svm, SvmFlags};

const UNDEF: u32 = KFD_IOCTL_SVM_LOCATION_UNDEFINED;

fn get_raw(svm: &Svm, addr: usize, size: usize, q: &mut [RawAttr]) -> i32 {
    errno(svm.svm_ioctl(KFD_IOCTL_SVM_OP_GET_ATTR, addr as u64, size as u64, q))
}

fn set_raw(svm: &Svm, addr: usize, size: usize, a: &[RawAttr]) -> i32 {
    let mut a = a.to_vec();
    errno(svm.svm_ioctl(KFD_IOCTL_SVM_OP_SET_ATTR, addr as u64, size as u64, &mut a))
}

fn pref(svm: &Svm, addr: usize, size: usize) -> Location {
    let mut q = [Attr::PreferredLoc(Location::Undefined)];
    svm.get_attr(addr, size, &mut q).unwrap();
    match q[0] {
        Attr::PreferredLoc(l) => l,
        a => panic!("{a:?}"),
    }
}

fn bounds(svm: &Svm) -> Vec<(usize, usize)> {
    svm.ranges().iter().map(|r| (r.start, r.size)).collect()
}

#[test]
fn gpu_ids_are_distinct_and_valid() {
    let svm = Svm::builder().gpus(8).build().unwrap();
    let ids = svm.gpu_ids();
    assert_eq!(ids.len(), 8);
    let mut s = ids.clone();
    s.sort();
    s.dedup();
    assert_eq!(s.len(), 8);
    assert!(ids.iter().all(|g| g.0 != 0 && g.0 != 0xffff_ffff));
    assert_eq!(Svm::builder().gpus(0).build().unwrap_err().errno(), libc::EINVAL);
    assert_eq!(Svm::builder().gpus(65).build().unwrap_err().errno(), libc::EINVAL);
    assert_eq!(Svm::builder().vram_bytes(100).build().unwrap_err().errno(), libc::EINVAL);
}

/// T1: defaults with XNACK off and on.
#[test]
fn t1_defaults() {
    for xnack in [false, true] {
        let svm = svm2(xnack);
        let g1 = svm.gpu_ids()[0];
        let a = Mapping::anon(16 * MIB, 32 * MIB);
        let mut q = [
            RawAttr::new(KFD_IOCTL_SVM_ATTR_PREFERRED_LOC, 0),
            RawAttr::new(KFD_IOCTL_SVM_ATTR_PREFETCH_LOC, 0),
            RawAttr::new(KFD_IOCTL_SVM_ATTR_SET_FLAGS, 0),
            RawAttr::new(KFD_IOCTL_SVM_ATTR_CLR_FLAGS, 0),
            RawAttr::new(KFD_IOCTL_SVM_ATTR_GRANULARITY, 0),
            RawAttr::new(KFD_IOCTL_SVM_ATTR_ACCESS, g1.0),
        ];
        assert_eq!(get_raw(&svm, a.addr, 4 * MIB, &mut q), 0);
        let vals: Vec<u32> = q[..5].iter().map(|r| r.value).collect();
        assert_eq!(vals, [UNDEF, UNDEF, 0x3, 0xffff_fffc, 9]);
        let want = if xnack { KFD_IOCTL_SVM_ATTR_ACCESS } else { KFD_IOCTL_SVM_ATTR_NO_ACCESS };
        assert_eq!(q[5], RawAttr::new(want, g1.0));
        // A new range gets the same defaults (access to all GPUs iff XNACK on).
        svm.set_attr(a.addr, 4 * MIB, &[]).unwrap();
        assert_eq!(svm.range_count(), 1);
        let r = &svm.ranges()[0];
        assert_eq!(r.flags, SvmFlags::DEFAULT);
        assert_eq!(r.granularity, 9);
        assert_eq!((r.preferred_loc, r.prefetch_loc), (Location::Undefined, Location::Undefined));
        assert_eq!(r.actual_loc, Location::Sysmem);
        assert_eq!(r.access, if xnack { svm.gpu_ids() } else { vec![] });
        let mut q2 = q;
        q2[5].ty = KFD_IOCTL_SVM_ATTR_ACCESS;
        assert_eq!(get_raw(&svm, a.addr, 4 * MIB, &mut q2), 0);
        assert_eq!(q2, q);
    }
}

/// T2: entry errors.
#[test]
fn t2_entry_errors() {
    let svm = svm2(false);
    let a = Mapping::anon(16 * MIB, 2 * MIB);
    let set = |start: u64, size: u64| errno(svm.svm_ioctl(KFD_IOCTL_SVM_OP_SET_ATTR, start, size, &mut []));
    assert_eq!(set(0, 4096), libc::EINVAL);
    assert_eq!(set(a.addr as u64, 0), libc::EINVAL);
    assert_eq!(set(a.addr as u64 + 1, 4096), libc::EINVAL);
    assert_eq!(set(a.addr as u64, 4097), libc::EINVAL);
    assert_eq!(set(a.addr as u64, !0xfff), libc::EINVAL, "start + size overflows");
    assert_eq!(set(0xffff_ffff_ffff_f000, 4096), libc::EINVAL, "ends past 2^64");
    assert_eq!(set(0x7fff_ffff_0000_0000, 4096), libc::EFAULT, "no mapping up there");
    assert_eq!(errno(svm.svm_ioctl(2, a.addr as u64, 4096, &mut [])), libc::EINVAL);
    // The entry checks come before the op check and before anything else.
    assert_eq!(errno(svm.svm_ioctl(2, 0, 4096, &mut [])), libc::EINVAL);
    // Typed API: same checks.
    assert_eq!(errno(svm.set_attr(a.addr + 1, 4096, &[])), libc::EINVAL);
    assert_eq!(errno(svm.get_attr(a.addr, 0, &mut [])), libc::EINVAL);
    assert_eq!(svm.range_count(), 0, "nothing was created");
}

/// T3: attribute errors; a failed SET leaves the state unchanged.
#[test]
fn t3_attribute_errors() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let a = Mapping::anon(16 * MIB, 2 * MIB);
    svm.set_attr(a.addr, 2 * MIB, &[Attr::Granularity(3), Attr::Access(g1)]).unwrap();
    let snapshot = format!("{:?}", svm.ranges());
    let bad: [&[RawAttr]; 7] = [
        &[RawAttr::new(KFD_IOCTL_SVM_ATTR_PREFETCH_LOC, UNDEF)],
        &[RawAttr::new(KFD_IOCTL_SVM_ATTR_ACCESS, 0xdead)],
        &[RawAttr::new(KFD_IOCTL_SVM_ATTR_ACCESS_IN_PLACE, 0xdead)],
        &[RawAttr::new(KFD_IOCTL_SVM_ATTR_NO_ACCESS, 0)],
        &[RawAttr::new(KFD_IOCTL_SVM_ATTR_PREFERRED_LOC, 0xdead)],
        &[RawAttr::new(8, 0)],
        // A bad entry after good ones still rejects the whole call.
        &[
            RawAttr::new(KFD_IOCTL_SVM_ATTR_GRANULARITY, 0),
            RawAttr::new(KFD_IOCTL_SVM_ATTR_SET_FLAGS, 0x8),
            RawAttr::new(KFD_IOCTL_SVM_ATTR_PREFETCH_LOC, 0xbeef),
        ],
    ];
    for attrs in bad {
        // Over a wider interval than the range, so a successful call would have split it.
        assert_eq!(set_raw(&svm, a.addr, 4 * MIB, attrs), libc::EINVAL, "{attrs:?}");
        assert_eq!(format!("{:?}", svm.ranges()), snapshot);
    }
    // Attribute errors come before the mapping check.
    assert_eq!(set_raw(&svm, 0x7fff_0000_0000, 4096, bad[0]), libc::EINVAL);
    assert_eq!(
        svm.set_attr(a.addr, 4096, &[Attr::PrefetchLoc(Location::Undefined)]).unwrap_err().errno(),
        libc::EINVAL
    );
    // GET: IN_PLACE and NO_ACCESS are not query types; unknown types neither.
    for ty in [KFD_IOCTL_SVM_ATTR_ACCESS_IN_PLACE, KFD_IOCTL_SVM_ATTR_NO_ACCESS, 8, 0x100] {
        let mut q = [RawAttr::new(ty, g1.0)];
        assert_eq!(get_raw(&svm, a.addr, 4096, &mut q), libc::EINVAL);
        assert_eq!(q, [RawAttr::new(ty, g1.0)], "nothing written");
    }
    // GET ACCESS of an unknown GPU: EINVAL, entries before it already written.
    let mut q = [
        RawAttr::new(KFD_IOCTL_SVM_ATTR_GRANULARITY, 77),
        RawAttr::new(KFD_IOCTL_SVM_ATTR_ACCESS, 0xdead),
        RawAttr::new(KFD_IOCTL_SVM_ATTR_SET_FLAGS, 77),
    ];
    assert_eq!(get_raw(&svm, a.addr, 4096, &mut q), libc::EINVAL);
    assert_eq!(q[0].value, 3);
    assert_eq!(q[1], RawAttr::new(KFD_IOCTL_SVM_ATTR_ACCESS, 0xdead));
    assert_eq!(q[2].value, 77, "entries after the failure are untouched");
    // The typed API reports the same.
    let mut tq = [Attr::Granularity(77), Attr::Access(GpuId(0xdead))];
    assert_eq!(errno(svm.get_attr(a.addr, 4096, &mut tq)), libc::EINVAL);
    assert_eq!(tq[0], Attr::Granularity(3));
    let mut tq = [Attr::NoAccess(g1)];
    assert_eq!(errno(svm.get_attr(a.addr, 4096, &mut tq)), libc::EINVAL);
    assert_eq!(format!("{:?}", svm.ranges()), snapshot);
    // UNDEFINED is a valid PREFERRED_LOC.
    assert_eq!(set_raw(&svm, a.addr, 4096, &[RawAttr::new(KFD_IOCTL_SVM_ATTR_PREFERRED_LOC, UNDEF)]), 0);
}

/// A GPU id of another instance is unknown here.
#[test]
fn gpu_ids_are_per_instance() {
    let one = Svm::builder().gpus(1).build().unwrap();
    let two = svm2(false);
    let a = Mapping::anon(2 * MIB, 2 * MIB);
    let g2 = two.gpu_ids()[1];
    assert_eq!(errno(one.set_attr(a.addr, 2 * MIB, &[Attr::Access(g2)])), libc::EINVAL);
    assert_eq!(errno(two.set_attr(a.addr, 2 * MIB, &[Attr::Access(g2)])), 0);
}

/// T4: the interval must be covered by mappings; GET checks that before the types.
#[test]
fn t4_mapping_errors() {
    let svm = svm2(false);
    let a = Mapping::anon(16 * MIB, 32 * MIB);
    a.punch(8 * MIB, 4 * PAGE);
    assert_eq!(errno(svm.set_attr(a.addr, 8 * MIB, &[])), 0);
    assert_eq!(errno(svm.set_attr(a.addr + 4 * MIB, 8 * MIB, &[])), libc::EFAULT, "hole");
    assert_eq!(errno(svm.set_attr(a.addr + 8 * MIB + PAGE, PAGE, &[])), libc::EFAULT, "inside hole");
    let before = bounds(&svm);
    assert_eq!(before.len(), 1);
    // GET with a bad type over the hole is EFAULT, not EINVAL.
    let mut q = [RawAttr::new(KFD_IOCTL_SVM_ATTR_NO_ACCESS, 0)];
    assert_eq!(get_raw(&svm, a.addr + 8 * MIB, PAGE, &mut q), libc::EFAULT);
    assert_eq!(get_raw(&svm, a.addr, PAGE, &mut q), libc::EINVAL);
    assert_eq!(bounds(&svm), before, "failed calls changed nothing");
}

/// Device (PFN / I/O) mappings cannot hold SVM ranges: the vDSO data page is one.
#[test]
fn t4_device_mapping_is_efault() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let Some(line) = maps.lines().find(|l| l.ends_with("[vvar]")) else {
        eprintln!("no [vvar] mapping in this process; nothing to check");
        return;
    };
    let (s, e) = line.split_whitespace().next().unwrap().split_once('-').unwrap();
    let (s, e) = (usize::from_str_radix(s, 16).unwrap(), usize::from_str_radix(e, 16).unwrap());
    let svm = svm2(false);
    assert_eq!(errno(svm.set_attr(s, e - s, &[])), libc::EFAULT);
    assert_eq!(svm.range_count(), 0);
}

/// File-backed and shared mappings take attributes (they are not migrated, but they are
/// SVM ranges all the same), as does any anonymous mapping the application made itself.
#[test]
fn file_shared_and_user_mappings_take_attributes() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    // MAP_SHARED anonymous.
    let sh = Mapping::with(2 * MIB, 2 * MIB, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1);
    svm.set_attr(sh.addr, 2 * MIB, &[Attr::PreferredLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(pref(&svm, sh.addr, 2 * MIB), Location::Gpu(g1));
    // A private file mapping.
    let f = std::fs::File::open("/proc/self/exe").unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a read-only private mapping of our own executable, unmapped below.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), 8192, libc::PROT_READ, libc::MAP_PRIVATE, f.as_raw_fd(), 0)
    };
    assert_ne!(p, libc::MAP_FAILED);
    svm.set_attr(p as usize, 8192, &[Attr::SetFlags(SvmFlags::GPU_RO)]).unwrap();
    let mut q = [Attr::SetFlags(SvmFlags::empty())];
    svm.get_attr(p as usize, 8192, &mut q).unwrap();
    assert_eq!(q[0], Attr::SetFlags(SvmFlags::DEFAULT | SvmFlags::GPU_RO));
    unmap(p as usize, 8192);
    // A Vec's heap memory (page-aligned part of it).
    let v = vec![0u8; 8 * MIB];
    let start = (v.as_ptr() as usize).next_multiple_of(PAGE);
    svm.set_attr(start, 4 * MIB, &[Attr::Granularity(0)]).unwrap();
    let mut q = [Attr::Granularity(9)];
    svm.get_attr(start, 4 * MIB, &mut q).unwrap();
    assert_eq!(q[0], Attr::Granularity(0));
    drop(v);
}

/// T5: split and aggregation.
#[test]
fn t5_split_and_aggregation() {
    let svm = svm2(false);
    let [g1, _] = svm.gpu_ids()[..] else { panic!() };
    let a = Mapping::anon(16 * MIB, 32 * MIB);
    svm.set_attr(a.addr, 8 * MIB, &[Attr::PreferredLoc(Location::Gpu(g1))]).unwrap();
    svm.set_attr(a.addr + 2 * MIB, 2 * MIB, &[Attr::PreferredLoc(Location::Sysmem)]).unwrap();
    assert_eq!(pref(&svm, a.addr, 2 * MIB), Location::Gpu(g1));
    assert_eq!(pref(&svm, a.addr + 2 * MIB, 2 * MIB), Location::Sysmem);
    assert_eq!(pref(&svm, a.addr + MIB, 2 * MIB), Location::Undefined);
    assert_eq!(pref(&svm, a.addr, 8 * MIB), Location::Undefined);
    assert_eq!(
        bounds(&svm),
        vec![(a.addr, 2 * MIB), (a.addr + 2 * MIB, 2 * MIB), (a.addr + 4 * MIB, 4 * MIB)]
    );
    // Never merged: restoring the middle leaves 3 ranges with equal attributes.
    svm.set_attr(a.addr + 2 * MIB, 2 * MIB, &[Attr::PreferredLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(svm.range_count(), 3);
    assert_eq!(pref(&svm, a.addr, 8 * MIB), Location::Gpu(g1));
}

/// T6: holes between ranges are ignored by GET.
#[test]
fn t6_holes_ignored() {
    let svm = svm2(false);
    let g1 = svm.gpu_ids()[0];
    let a = Mapping::anon(16 * MIB, 32 * MIB);
    svm.set_attr(a.addr, 2 * MIB, &[Attr::PreferredLoc(Location::Gpu(g1))]).unwrap();
    svm.set_attr(a.addr + 4 * MIB, 2 * MIB, &[Attr::PreferredLoc(Location::Gpu(g1))]).unwrap();
    assert_eq!(pref(&svm, a.addr, 6 * MIB), Location::Gpu(g1));
    // Only a hole: defaults.
    assert_eq!(pref(&svm, a.addr + 2 * MIB, 2 * MIB), Location::Undefined);
}

/// T7: flag aggregation: AND for SET_FLAGS, NOT of OR for CLR_FLAGS.
#[test]
fn t7_flags_aggregation() {
    let svm = svm2(false);
    let a = Mapping::anon(16 * MIB, 32 * MIB);
    svm.set_attr(a.addr, 2 * MIB, &[Attr::SetFlags(SvmFlags::GPU_RO)]).unwrap();
    svm.set_attr(a.addr + 2 * MIB, 2 * MIB, &[Attr::SetFlags(SvmFlags::GPU_EXEC)]).unwrap();
    let mut q = [Attr::SetFlags(SvmFlags::empty()), Attr::ClrFlags(SvmFlags::empty())];
    svm.get_attr(a.addr, 4 * MIB, &mut q).unwrap();
    assert_eq!(q[0], Attr::SetFlags(SvmFlags::from_bits_retain(0x3)));
    assert_eq!(q[1], Attr::ClrFlags(SvmFlags::from_bits_retain(0xffff_ffe4)));
    // Unknown bits are stored and reported.
    svm.set_attr(a.addr, 2 * MIB, &[Attr::SetFlags(SvmFlags::from_bits_retain(0x8000_0000))]).unwrap();
    svm.get_attr(a.addr, 2 * MIB, &mut q).unwrap();
    assert_eq!(q[0], Attr::SetFlags(SvmFlags::from_bits_retain(0x8000_000b)));
}

/// T8: access aggregation from separately ANDed bitmaps.
#[test]
fn t8_access_aggregation() {
    let svm = svm2(false);
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let a = Mapping::anon(16 * MIB, 32 * MIB);
    svm.set_attr(a.addr, 2 * MIB, &[Attr::Access(g1), Attr::Access(g2)]).unwrap();
    svm.set_attr(a.addr + 2 * MIB, 2 * MIB, &[Attr::AccessInPlace(g1), Attr::Access(g2)]).unwrap();
    let q = |off: usize, len: usize| {
        let mut q = [Attr::Access(g1), Attr::Access(g2)];
        svm.get_attr(a.addr + off, len, &mut q).unwrap();
        q
    };
    assert_eq!(q(0, 4 * MIB), [Attr::NoAccess(g1), Attr::Access(g2)]);
    assert_eq!(q(0, 2 * MIB), [Attr::Access(g1), Attr::Access(g2)]);
    assert_eq!(q(2 * MIB, 2 * MIB), [Attr::AccessInPlace(g1), Attr::Access(g2)]);
    // A hole next to a range does not lower the result.
    assert_eq!(q(2 * MIB, 6 * MIB), [Attr::AccessInPlace(g1), Attr::Access(g2)]);
}

/// T9: attributes apply in array order; access kinds are mutually exclusive per GPU.
#[test]
fn t9_order_within_one_call() {
    let svm = svm2(false);
    let [g1, g2] = svm.gpu_ids()[..] else { panic!() };
    let a = Mapping::anon(4 * MIB, 2 * MIB);
    svm.set_attr(a.addr, 2 * MIB, &[Attr::Access(g1), Attr::NoAccess(g1)]).unwrap();
    let mut q = [Attr::Access(g1)];
    svm.get_attr(a.addr, 2 * MIB, &mut q).unwrap();
    assert_eq!(q, [Attr::NoAccess(g1)]);
    svm.set_attr(a.addr, 2 * MIB, &[Attr::SetFlags(SvmFlags::GPU_RO), Attr::ClrFlags(SvmFlags::GPU_RO)])
        .unwrap();
    let mut q = [Attr::SetFlags(SvmFlags::empty())];
    svm.get_attr(a.addr, 2 * MIB, &mut q).unwrap();
    assert_eq!(q, [Attr::SetFlags(SvmFlags::DEFAULT)]);
    svm.set_attr(a.addr, 2 * MIB, &[Attr::Access(g2), Attr::AccessInPlace(g2)]).unwrap();
    let r = &svm.ranges()[0];
    assert_eq!((r.access.clone(), r.access_in_place.clone()), (vec![], vec![g2]));
    svm.set_attr(a.addr, 2 * MIB, &[Attr::AccessInPlace(g2), Attr::Access(g2)]).unwrap();
    let r = &svm.ranges()[0];
    assert_eq!((r.access.clone(), r.access_in_place.clone()), (vec![g2], vec![]));
    svm.set_attr(
        a.addr,
        2 * MIB,
        &[Attr::PreferredLoc(Location::Gpu(g1)), Attr::PreferredLoc(Location::Sysmem)],
    )
    .unwrap();
    assert_eq!(pref(&svm, a.addr, 2 * MIB), Location::Sysmem);
}

/// T10: granularity is stored as min(value, 63); GET returns the minimum.
#[test]
fn t10_granularity() {
    let svm = svm2(false);
    let a = Mapping::anon(4 * MIB, 2 * MIB);
    let gran = |off: usize, len: usize| {
        let mut q = [Attr::Granularity(0)];
        svm.get_attr(a.addr + off, len, &mut q).unwrap();
        q[0]
    };
    svm.set_attr(a.addr, 4 * MIB, &[Attr::Granularity(100)]).unwrap();
    assert_eq!(gran(0, 4 * MIB), Attr::Granularity(63));
    svm.set_attr(a.addr, 4 * MIB, &[Attr::Granularity(u32::MAX)]).unwrap();
    assert_eq!(gran(0, 4 * MIB), Attr::Granularity(63));
    svm.set_attr(a.addr, 2 * MIB, &[Attr::Granularity(0)]).unwrap();
    svm.set_attr(a.addr + 2 * MIB, 2 * MIB, &[Attr::Granularity(5)]).unwrap();
    assert_eq!(gran(0, 4 * MIB), Attr::Granularity(0));
    assert_eq!(gran(2 * MIB, 2 * MIB), Attr::Granularity(5));
}

/// T11: new ranges are cut at multiples of the maximum range size.
#[test]
fn t11_max_range_size() {
    // One GPU with 64 MiB: 2 MiB ranges.
    let small = Svm::builder().vram_bytes(64 << 20).build().unwrap();
    assert_eq!(small.max_range_bytes(), 2 * MIB);
    let a = Mapping::anon(8 * MIB, 2 * MIB);
    small.set_attr(a.addr, 8 * MIB, &[]).unwrap();
    assert_eq!(small.range_count(), 4);
    // 1 GiB: 32 MiB ranges, cut at absolute 32 MiB boundaries.
    let big = svm2(false);
    assert_eq!(big.max_range_bytes(), 32 * MIB);
    let b = Mapping::anon(64 * MIB, 32 * MIB);
    big.set_attr(b.addr + 24 * MIB, 16 * MIB, &[]).unwrap();
    assert_eq!(bounds(&big), vec![(b.addr + 24 * MIB, 8 * MIB), (b.addr + 32 * MIB, 8 * MIB)]);
    // The smallest GPU decides.
    let mixed = Svm::builder().gpus(3).vram_bytes(16 << 30).build().unwrap();
    assert_eq!(mixed.max_range_bytes(), 512 * MIB);
}

/// A SET over existing ranges and gaps fills the gaps and splits only the partial ranges.
#[test]
fn gaps_filled_between_existing_ranges() {
    let svm = Svm::builder().vram_bytes(64 << 20).build().unwrap();
    let a = Mapping::anon(8 * MIB, 2 * MIB);
    svm.set_attr(a.addr + MIB, MIB, &[Attr::Granularity(1)]).unwrap();
    svm.set_attr(a.addr + 5 * MIB, 2 * MIB, &[Attr::Granularity(2)]).unwrap();
    svm.set_attr(a.addr, 6 * MIB, &[Attr::SetFlags(SvmFlags::GPU_EXEC)]).unwrap();
    let got: Vec<(usize, usize, u32, bool)> = svm
        .ranges()
        .iter()
        .map(|r| (r.start - a.addr, r.size, r.granularity, r.flags.contains(SvmFlags::GPU_EXEC)))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, MIB, 9, true),           // gap before the first range
            (MIB, MIB, 1, true),         // the first range, inside
            (2 * MIB, 2 * MIB, 9, true), // gap, cut at the 2 MiB multiple
            (4 * MIB, MIB, 9, true),     // gap up to the second range
            (5 * MIB, MIB, 2, true),     // covered part of the second range
            (6 * MIB, MIB, 2, false),    // its tail keeps the old attributes
        ]
    );
}

/// Several instances in one process keep separate ranges and GPU sets.
#[test]
fn instances_side_by_side() {
    let a = Svm::builder().gpus(1).xnack(true).build().unwrap();
    let b = Svm::builder().gpus(3).build().unwrap();
    let m = Mapping::anon(4 * MIB, 2 * MIB);
    a.set_attr(m.addr, 2 * MIB, &[Attr::Granularity(1)]).unwrap();
    b.set_attr(m.addr + 2 * MIB, 2 * MIB, &[Attr::Granularity(2)]).unwrap();
    assert_eq!(bounds(&a), vec![(m.addr, 2 * MIB)]);
    assert_eq!(bounds(&b), vec![(m.addr + 2 * MIB, 2 * MIB)]);
    std::thread::scope(|s| {
        for (svm, base) in [(&a, m.addr), (&b, m.addr + 2 * MIB)] {
            s.spawn(move || {
                for i in 0..200usize {
                    let off = base - m.addr + (i % 16) * PAGE;
                    svm.set_attr(m.addr + off, PAGE, &[Attr::Granularity(i as u32 % 7)]).unwrap();
                }
            });
        }
    });
    assert!(a.ranges().iter().all(|r| r.access == a.gpu_ids()));
    assert!(b.ranges().iter().all(|r| r.access.is_empty()));
    // Each instance split only its own range: 16 one-page ranges and the rest.
    assert_eq!(a.range_count(), 17);
    assert_eq!(b.range_count(), 17);
}

/// alloc: 2 MiB aligned, rounded up to 4 KiB; dropping the buffer drops its ranges.
#[test]
fn alloc_and_drop() {
    let svm = svm2(false);
    let b = svm.alloc(5000).unwrap();
    assert_eq!(b.len(), 8192);
    assert_eq!(b.addr() % (2 * MIB), 0);
    assert_eq!(b.as_ptr() as usize, b.addr());
    // SAFETY: the buffer is ours, mapped read-write, and 8 KiB long.
    unsafe {
        b.as_ptr().write(7);
        assert_eq!(b.as_ptr().add(8191).read(), 0);
    }
    svm.set_attr(b.addr(), b.len(), &[Attr::Granularity(0)]).unwrap();
    assert_eq!(svm.range_count(), 1);
    let addr = b.addr();
    drop(b);
    assert_eq!(svm.range_count(), 0);
    let _ = addr; // (another thread may map the address again at once: nothing to check there)
    assert_eq!(errno(svm.alloc(0)), libc::EINVAL);
}

/// T29 (as far as this layer goes): after the whole mapping is gone and a new one takes
/// its place, GET reports defaults.
#[test]
fn t29_remap_gets_defaults() {
    let svm = svm2(false);
    let b = svm.alloc(2 * MIB).unwrap();
    let addr = b.addr();
    svm.set_attr(addr, 2 * MIB, &[Attr::PreferredLoc(Location::Sysmem)]).unwrap();
    drop(b);
    let Some(again) = Mapping::at(addr, 2 * MIB) else {
        return; // the address was taken by another thread meanwhile
    };
    assert_eq!(pref(&svm, addr, 2 * MIB), Location::Undefined);
    assert_eq!(svm.range_count(), 0);
    drop(again);
}

/// set_xnack: same mode is a no-op, and ranges keep their bitmaps.
#[test]
fn xnack_switch_keeps_bitmaps() {
    let svm = svm2(false);
    assert!(!svm.xnack());
    let a = Mapping::anon(4 * MIB, 2 * MIB);
    svm.set_attr(a.addr, 2 * MIB, &[]).unwrap();
    svm.set_xnack(true).unwrap();
    svm.set_xnack(true).unwrap();
    assert!(svm.xnack());
    svm.set_attr(a.addr + 2 * MIB, 2 * MIB, &[]).unwrap();
    let r = svm.ranges();
    assert!(r[0].access.is_empty(), "made under XNACK off");
    assert_eq!(r[1].access, svm.gpu_ids(), "made under XNACK on");
    svm.set_xnack(false).unwrap();
    assert!(!svm.xnack());
}

/// Error messages name what was wrong.
#[test]
fn errors_are_clear() {
    let svm = svm2(false);
    let e = svm.set_attr(4096, 4097, &[]).unwrap_err();
    assert!(e.to_string().contains("0x1001"), "{e}");
    let e = svm.set_attr(4096, 4096, &[Attr::Access(GpuId(0xdead))]).unwrap_err();
    assert!(e.to_string().contains("0xdead"), "{e}");
}

/// T33: XNACK off, new ranges reserve their size against the system-memory limit: beyond it
/// SET_ATTR fails with ENOMEM and creates nothing; XNACK on reserves nothing. Unmapping
/// releases the reservation.
#[test]
fn t33_system_memory_limit() {
    let svm = Svm::builder().gpus(1).system_memory_limit(8 * MIB as u64).build().unwrap();
    let a = Mapping::anon(16 * MIB, 2 * MIB);
    svm.set_attr(a.addr, 6 * MIB, &[]).unwrap();
    assert_eq!(errno(svm.set_attr(a.addr, 16 * MIB, &[])), libc::ENOMEM);
    assert_eq!(svm.range_count(), 1, "nothing was created");
    // Existing ranges cost nothing again; 2 MiB more fit exactly.
    svm.set_attr(a.addr, 8 * MIB, &[Attr::Granularity(1)]).unwrap();
    assert_eq!(errno(svm.set_attr(a.addr + 8 * MIB, PAGE, &[])), libc::ENOMEM);
    // Unmapping gives the reservation back.
    a.punch(0, 4 * MIB);
    svm.set_attr(a.addr + 8 * MIB, 4 * MIB, &[]).unwrap();
    let on = Svm::builder().gpus(1).system_memory_limit(MIB as u64).xnack(true).build().unwrap();
    let b = Mapping::anon(16 * MIB, 2 * MIB);
    on.set_attr(b.addr, 16 * MIB, &[]).unwrap();
}

/// T32: switching XNACK off reserves every range; when they do not fit it is ENOMEM and the
/// mode does not change. Switching on releases everything.
#[test]
fn t32_xnack_switch_accounting() {
    let svm = Svm::builder().gpus(1).system_memory_limit(4 * MIB as u64).xnack(true).build().unwrap();
    let a = Mapping::anon(8 * MIB, 2 * MIB);
    svm.set_attr(a.addr, 8 * MIB, &[]).unwrap();
    assert_eq!(errno(svm.set_xnack(false)), libc::ENOMEM);
    assert!(svm.xnack());
    a.punch(4 * MIB, 4 * MIB);
    assert_eq!(svm.range_count(), 1);
    svm.set_xnack(false).unwrap();
    assert!(!svm.xnack());
    assert_eq!(errno(svm.set_attr(a.addr + 4 * MIB, PAGE, &[])), libc::EFAULT, "unmapped");
    svm.set_xnack(true).unwrap();
    svm.set_xnack(false).unwrap();
}

/// One instance never touches another's ranges: SET_ATTR on anonymous memory another
/// instance manages is EADDRINUSE and changes nothing.
#[test]
fn memory_of_another_instance_is_eaddrinuse() {
    let a = svm2(false);
    let b = svm2(false);
    let m = Mapping::anon(4 * MIB, 2 * MIB);
    a.set_attr(m.addr, 2 * MIB, &[Attr::Granularity(3)]).unwrap();
    assert_eq!(errno(b.set_attr(m.addr, 4 * MIB, &[])), libc::EADDRINUSE);
    assert_eq!(b.range_count(), 0);
    b.set_attr(m.addr + 2 * MIB, 2 * MIB, &[]).unwrap();
    assert_eq!(a.range_count(), 1);
}

/// XNACK on, a GPU of instance B faults on memory instance A manages: B's range cannot
/// watch it (EADDRINUSE inside the fault), so the data stays in A's RAM, mapped in place,
/// and B keeps no VRAM for it (B held a BO for a range in system memory, which nothing
/// could evict).
#[test]
fn gpu_fault_on_memory_of_another_instance_takes_no_vram() {
    let a = svm2(false);
    let b = svm2(true);
    let m = Mapping::anon(2 * MIB, 2 * MIB);
    let data = pattern(2 * MIB, 4);
    // SAFETY: the test owns the mapping, which is 2 MiB long.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), m.addr as *mut u8, data.len()) };
    a.set_attr(m.addr, 2 * MIB, &[Attr::PreferredLoc(usvm::Location::Sysmem)]).unwrap();
    let g = b.gpu_ids()[0];
    let mut got = vec![0u8; 4096];
    b.gpu_read(g, m.addr + 4096, &mut got).unwrap();
    assert_eq!(got, data[4096..8192]);
    let s = &b.smi()[0];
    assert_eq!((s.bos, s.vram_used), (0, 0), "{s:?}");
    assert!(b.ranges().iter().all(|r| r.vram_pages == 0));
}

/// A SET_ATTR refused with EADDRINUSE changes nothing, not even which instance watches the
/// memory: the part of the interval it registered before meeting the other instance's
/// memory is let go again, and that instance can take it (it stayed with the refused one).
#[test]
fn eaddrinuse_leaves_no_registration_behind() {
    let a = svm2(false);
    let b = svm2(false);
    let m = Mapping::anon(4 * MIB, 2 * MIB);
    b.set_attr(m.addr + 2 * MIB, 2 * MIB, &[]).unwrap();
    assert_eq!(errno(a.set_attr(m.addr, 4 * MIB, &[])), libc::EADDRINUSE);
    assert_eq!(a.range_count(), 0);
    b.set_attr(m.addr, 2 * MIB, &[]).unwrap();
    assert_eq!(b.range_count(), 2);
    // A's own ranges keep being watched when a later call of A is refused.
    let n = Mapping::anon(4 * MIB, 2 * MIB);
    a.set_attr(n.addr, 2 * MIB, &[Attr::PrefetchLoc(usvm::Location::Gpu(a.gpu_ids()[0]))]).unwrap();
    b.set_attr(n.addr + 3 * MIB, MIB, &[]).unwrap();
    assert_eq!(errno(a.set_attr(n.addr, 4 * MIB, &[])), libc::EADDRINUSE);
    let mut v = [0u8; 1];
    // SAFETY: reading a page of our own mapping, whose data is in A's VRAM.
    v[0] = unsafe { std::ptr::read_volatile(n.addr as *const u8) };
    assert_eq!(v[0], 0);
    assert_eq!(a.ranges()[0].vram_pages, 0, "the CPU fault brought it back");
}
