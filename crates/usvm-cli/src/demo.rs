//! `usvm demo`: the SVM attribute API, step by step, on two emulated GPUs.

use crate::table::{Table, bytes};
use anyhow::Result;
use usvm::{Attr, Location, RangeInfo, Svm, SvmFlags};

fn show_ranges(svm: &Svm, base: usize) {
    let mut t = Table::new(&[
        "start",
        "size",
        "preferred",
        "prefetch",
        "actual",
        "vram pages",
        "gran",
        "flags",
        "access",
        "in place",
    ]);
    let ids = |v: &[usvm::GpuId]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
        }
    };
    for r in svm.ranges() {
        let RangeInfo {
            start,
            size,
            preferred_loc,
            prefetch_loc,
            actual_loc,
            vram_pages,
            granularity,
            flags,
            ..
        } = &r;
        t.row(vec![
            format!("base+{}", bytes(start - base)).replace("base+0 B", "base"),
            bytes(*size),
            preferred_loc.to_string(),
            prefetch_loc.to_string(),
            actual_loc.to_string(),
            vram_pages.to_string(),
            format!("{granularity} ({})", bytes(4096 << granularity.min(&40))),
            format!("{:#x}", flags.bits()),
            ids(&r.access),
            ids(&r.access_in_place),
        ]);
    }
    print!("{}", t.render());
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

/// Runs the demo.
pub fn run() -> Result<()> {
    const MIB: usize = 1 << 20;
    let svm = Svm::builder().gpus(2).vram_bytes(256 << 20).build()?;
    let [g1, g2] = svm.gpu_ids()[..] else { unreachable!("two GPUs were asked for") };
    println!("usvm demo: shared virtual memory with KFD SVM semantics, in user space");
    println!(
        "instance: 2 emulated GPUs ({g1}, {g2}), {} of VRAM each, XNACK {}; new ranges are at most {}",
        bytes(256 << 20),
        if svm.xnack() { "on" } else { "off" },
        bytes(svm.max_range_bytes())
    );

    step(1, "allocate a 16 MiB buffer and write to it from the CPU");
    let buf = svm.alloc(16 * MIB)?;
    let base = buf.addr();
    buf.fill(0, buf.len(), 0x5a);
    println!(
        "buffer at {base:#x}, {}; no SVM range exists yet: {} ranges",
        bytes(buf.len()),
        svm.range_count()
    );

    step(2, "SET_ATTR over the whole buffer: ACCESS for both GPUs, PREFERRED_LOC = GPU 1111");
    svm.set_attr(
        base,
        buf.len(),
        &[Attr::Access(g1), Attr::Access(g2), Attr::PreferredLoc(Location::Gpu(g1))],
    )?;
    println!("the buffer is cut into ranges of at most {} (VRAM / 32):", bytes(svm.max_range_bytes()));
    show_ranges(&svm, base);

    step(3, "SET_ATTR on 4 MiB in the middle: granularity 0 (4 KiB migrations), GPU read-only");
    svm.set_attr(base + 6 * MIB, 4 * MIB, &[Attr::Granularity(0), Attr::SetFlags(SvmFlags::GPU_RO)])?;
    println!("ranges that stick out are split; the covered parts change, the rest keeps its attributes:");
    show_ranges(&svm, base);

    step(4, "SET_ATTR on the last 2 MiB: GPU 2222 only in place, prefetch to system memory");
    svm.set_attr(base + 14 * MIB, 2 * MIB, &[Attr::AccessInPlace(g2), Attr::PrefetchLoc(Location::Sysmem)])?;
    show_ranges(&svm, base);

    step(5, "GET_ATTR aggregates over several ranges");
    let mut t = Table::new(&[
        "interval",
        "preferred",
        "prefetch",
        "set flags",
        "clr flags",
        "gran",
        "gpu 1111",
        "gpu 2222",
    ]);
    for (off, len) in
        [(0, 16 * MIB), (0, 6 * MIB), (6 * MIB, 4 * MIB), (14 * MIB, 2 * MIB), (12 * MIB, 4 * MIB)]
    {
        let mut q = [
            Attr::PreferredLoc(Location::Undefined),
            Attr::PrefetchLoc(Location::Undefined),
            Attr::SetFlags(SvmFlags::empty()),
            Attr::ClrFlags(SvmFlags::empty()),
            Attr::Granularity(0),
            Attr::Access(g1),
            Attr::Access(g2),
        ];
        svm.get_attr(base + off, len, &mut q)?;
        let show = |a: &Attr| match *a {
            Attr::PreferredLoc(l) | Attr::PrefetchLoc(l) => l.to_string(),
            Attr::SetFlags(f) | Attr::ClrFlags(f) => format!("{:#x}", f.bits()),
            Attr::Granularity(g) => g.to_string(),
            Attr::Access(_) => "access".into(),
            Attr::AccessInPlace(_) => "in place".into(),
            Attr::NoAccess(_) => "no access".into(),
        };
        let mut row = vec![format!("[base+{}, +{})", bytes(off), bytes(len)).replace("base+0 B", "base")];
        row.extend(q.iter().map(show));
        t.row(row);
    }
    print!("{}", t.render());
    println!("(a location differs between ranges -> undefined; set flags = AND, clr flags = NOT of OR;");
    println!(" granularity = minimum; access = the kinds every range grants)");

    step(6, "bad input is refused with the kernel's errno and changes nothing");
    let before = svm.ranges().len();
    for (what, r) in [
        ("unaligned start", svm.set_attr(base + 1, 4096, &[])),
        ("PREFETCH_LOC = UNDEFINED", svm.set_attr(base, 4096, &[Attr::PrefetchLoc(Location::Undefined)])),
        ("unknown GPU 0xdead", svm.set_attr(base, 4096, &[Attr::Access(usvm::GpuId(0xdead))])),
        ("memory that is not mapped", svm.set_attr(4096, 4096, &[])),
    ] {
        let e = r.expect_err("bad input must be refused");
        println!("  {what:<26} -> errno {:>2} ({e})", e.errno());
    }
    assert_eq!(before, svm.ranges().len());
    let mut check = [0u8; 4];
    buf.read_at(9 * MIB, &mut check);
    println!("\nthe CPU's data is untouched: {check:02x?}; {} ranges in all", svm.range_count());
    println!("next steps of usvm (see the issues): emulated GPUs, migration to VRAM, CPU and GPU faults");
    Ok(())
}
