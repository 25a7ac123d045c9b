//! `usvm demo`: a guided run on two emulated GPUs: the SVM attribute API step by step, the
//! seed's migrations end to end, a short workload with a progress bar, and a closing
//! summary of everything that moved.

use crate::progress;
use crate::record::{Live, Recorder};
use crate::summary::{self, Settings};
use crate::table::Table;
use crate::units::bytes;
use crate::workload::{Ctx, Workload};
use anyhow::Result;
use std::sync::Arc;
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
            format!("base+{}", bytes((start - base) as u64)).replace("base+0 B", "base"),
            bytes(*size as u64),
            preferred_loc.to_string(),
            prefetch_loc.to_string(),
            actual_loc.to_string(),
            vram_pages.to_string(),
            format!("{granularity} ({})", bytes(4096u64 << granularity.min(&40))),
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
    let svm = Arc::new(Svm::builder().gpus(2).vram_bytes(256 << 20).build()?);
    let rec = Recorder::start(svm.clone(), false, false, Live::Off, |_, _| {})?;
    attributes(&svm)?;
    seed(&svm)?;
    step(13, "a short `stream` workload on both GPUs: CPU writes, GPU kernels transform, CPU checks");
    let bar = progress::bar("stream");
    let mut ctx = Ctx::new(svm.clone(), 32 << 20, 4, 1, rec.kernel_log(), bar.clone(), None);
    let outcome = Workload::Stream.run(&mut ctx);
    bar.finish_and_clear();
    let record = rec.finish();
    let ranges = svm.ranges();
    drop(ctx);
    let outcome = outcome?;
    let settings = Settings {
        gpus: 2,
        vram: 256 << 20,
        xnack: svm.xnack(),
        granularity: 9,
        size: 32 << 20,
        iterations: 4,
    };
    let s = summary::summarize("demo", settings, outcome, &record, &svm, &ranges);
    println!("\n=== Summary of the whole demo (every migration since step 1) ===");
    print!("{}", summary::render(&s));
    println!("\nmore: `usvm run --help` (workloads, --events, --trace, --plot, --smi), `usvm bench`");
    if s.outcome.mismatches > 0 {
        anyhow::bail!("{} word(s) did not hold the expected value", s.outcome.mismatches);
    }
    Ok(())
}

/// Part one: the attribute API.
fn attributes(svm: &Svm) -> Result<()> {
    const MIB: usize = 1 << 20;
    let [g1, g2] = svm.gpu_ids()[..] else { unreachable!("two GPUs were asked for") };
    println!("usvm demo: shared virtual memory with KFD SVM semantics, in user space");
    println!(
        "instance: 2 emulated GPUs ({g1}, {g2}), {} of VRAM each, XNACK {}; new ranges are at most {}",
        bytes(256 << 20),
        if svm.xnack() { "on" } else { "off" },
        bytes(svm.max_range_bytes() as u64)
    );

    step(1, "allocate a 16 MiB buffer and write to it from the CPU");
    let buf = svm.alloc(16 * MIB)?;
    let base = buf.addr();
    buf.fill(0, buf.len(), 0x5a);
    println!(
        "buffer at {base:#x}, {}; no SVM range exists yet: {} ranges",
        bytes(buf.len() as u64),
        svm.range_count()
    );

    step(2, "SET_ATTR over the whole buffer: ACCESS for both GPUs, PREFERRED_LOC = GPU 1111");
    println!("(no migration: GPU 2222 maps the range too and could not reach 1111's VRAM)");
    svm.set_attr(
        base,
        buf.len(),
        &[Attr::Access(g1), Attr::Access(g2), Attr::PreferredLoc(Location::Gpu(g1))],
    )?;
    println!("the buffer is cut into ranges of at most {} (VRAM / 32):", bytes(svm.max_range_bytes() as u64));
    show_ranges(svm, base);

    step(3, "SET_ATTR on 4 MiB in the middle: granularity 0 (4 KiB migrations), GPU read-only");
    svm.set_attr(base + 6 * MIB, 4 * MIB, &[Attr::Granularity(0), Attr::SetFlags(SvmFlags::GPU_RO)])?;
    println!("ranges that stick out are split; the covered parts change, the rest keeps its attributes:");
    show_ranges(svm, base);

    step(4, "SET_ATTR on the last 2 MiB: GPU 2222 only in place, prefetch to system memory");
    svm.set_attr(base + 14 * MIB, 2 * MIB, &[Attr::AccessInPlace(g2), Attr::PrefetchLoc(Location::Sysmem)])?;
    show_ranges(svm, base);

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
        let mut row =
            vec![format!("[base+{}, +{})", bytes(off as u64), bytes(len as u64)).replace("base+0 B", "base")];
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
    Ok(())
}

/// The KFD SMI lines of the events that arrived, indented.
fn show_events(ev: &usvm::EventStream) {
    for e in ev.try_iter() {
        println!("    {e}");
    }
}

/// Part two: the seed, end to end, on a fresh buffer.
fn seed(svm: &Svm) -> Result<()> {
    const MIB: usize = 1 << 20;
    let [g1, _g2] = svm.gpu_ids()[..] else { unreachable!("two GPUs") };
    println!("\n=== The seed: migration between RAM and VRAM on the application's own memory ===");
    step(7, "the CPU writes an 8 MiB range: 'hello from the CPU' at the start of every 4 KiB page");
    let buf = svm.alloc(8 * MIB)?;
    let base = buf.addr();
    for p in 0..buf.len() / 4096 {
        buf.write_at(p * 4096, format!("hello from the CPU, page {p:4}").as_bytes());
    }
    svm.set_attr(base, buf.len(), &[Attr::Access(g1)])?;
    println!("residency: {}", residency_line(svm, base, buf.len()));

    step(8, "SET_ATTR PREFERRED_LOC = GPU 1111 on the same address and size: the seed migrates the range");
    let ev = svm.subscribe();
    svm.set_attr(base, buf.len(), &[Attr::PreferredLoc(Location::Gpu(g1))])?;
    println!("  events (KFD SMI text: id, ns, -pid, @page(pages) from->to prefetch:preferred trigger):");
    show_events(&ev);
    println!("residency: {}", residency_line(svm, base, buf.len()));

    step(9, "a GPU kernel on 1111 reads every page from VRAM and appends ' + GPU'");
    let q = svm.create_queue(g1)?;
    let pages = buf.len() / 4096;
    q.submit(move |ctx| {
        for p in 0..pages {
            let a = base + p * 4096;
            let mut text = [0u8; 29];
            ctx.read(a, &mut text)?;
            if !text.starts_with(b"hello from the CPU") {
                return Err(usvm::Error::KernelPanic(format!("page {p}: unexpected data")));
            }
            ctx.write(a + 29, b" + GPU")?;
        }
        Ok(())
    })
    .wait()?;
    println!("kernel done; the data never left VRAM: {}", residency_line(svm, base, buf.len()));

    step(10, "the CPU reads page 700 (offset 2.7 MiB): a CPU page fault brings its 2 MiB granule back");
    let mut text = [0u8; 35];
    buf.read_at(700 * 4096, &mut text);
    println!("  the CPU read: {:?}", String::from_utf8_lossy(&text));
    show_events(&ev);
    println!("residency: {}", residency_line(svm, base, buf.len()));

    step(11, "PREFETCH_LOC = system memory: everything still in VRAM comes back");
    svm.set_attr(base, buf.len(), &[Attr::PrefetchLoc(Location::Sysmem)])?;
    show_events(&ev);
    println!("residency: {}", residency_line(svm, base, buf.len()));
    let mut ok = 0;
    for p in 0..pages {
        buf.read_at(p * 4096, &mut text);
        ok += usize::from(text.starts_with(b"hello from the CPU") && text.ends_with(b" + GPU"));
    }
    println!("pages with the CPU's text and the GPU's addition: {ok} of {pages}");

    step(12, "counters and ranges");
    let mut t = Table::new(&["gpu", "page_in", "page_out", "faults", "VRAM used"]);
    for (g, snap) in svm.gpu_ids().iter().zip(svm.smi()) {
        let c = svm.counters(*g);
        t.row(vec![
            g.to_string(),
            c.page_in.to_string(),
            c.page_out.to_string(),
            c.faults.to_string(),
            bytes(snap.vram_used),
        ]);
    }
    print!("{}", t.render());
    show_ranges(svm, base);
    Ok(())
}

/// One character per 64 KiB of `[base, base + len)`: '.' unpopulated, 's' system
/// memory, 'V' VRAM (of any GPU), 'm' mixed.
fn residency_line(svm: &Svm, base: usize, len: usize) -> String {
    let res = svm.residency(base, len / 4096);
    let mut out = String::new();
    for chunk in res.chunks(16) {
        let v = chunk.iter().filter(|r| matches!(r, usvm::Residency::Vram(_))).count();
        let s = chunk.iter().filter(|r| matches!(r, usvm::Residency::Sysmem)).count();
        out.push(match (v, s) {
            (0, 0) => '.',
            (0, _) => 's',
            (_, 0) => 'V',
            _ => 'm',
        });
    }
    out
}
