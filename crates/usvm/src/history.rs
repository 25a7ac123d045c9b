//! Why data moved: the causal record of an instance, and the diagnosis drawn from it.
//!
//! Every movement of pages (RAM -> VRAM, VRAM -> RAM, and a VRAM copy dropped because the
//! application unmapped or dropped its pages) is recorded as a [`Move`] with its [`Cause`]:
//! the SET_ATTR that prefetched, the seed's PREFERRED_LOC change, a CPU or GPU fault (with
//! its address), a VRAM eviction (and the move that needed the room), the application's
//! munmap / mremap / MADV_DONTNEED, fork, the instance going away. An eviction is linked to
//! the move it made room for; a GPU fault that brings evicted pages back is linked to the
//! eviction.
//!
//! Memory is bounded: the newest [`HISTORY_BUDGET`] moves are kept (oldest first out), and
//! per-range totals are kept for ever. [`diagnose`] is a pure function of the record: it
//! finds ping-pong, wasted prefetches, hot data evicted, and fault storms, each with the
//! memory it is about, how often, and one concrete change (the tunables are named
//! constants below).

use crate::addr::Pages;
use crate::attr::{GpuId, Location};
use crate::events::MigrateTrigger;
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};

static RECORD_BY_DEFAULT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether instances built from now on record their moves unless their builder says
/// otherwise (on at start; `usvm bench --history-cost` measures the record's cost with it).
pub fn set_record_by_default(on: bool) {
    RECORD_BY_DEFAULT.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// See [`set_record_by_default`].
pub fn record_by_default() -> bool {
    RECORD_BY_DEFAULT.load(std::sync::atomic::Ordering::Relaxed)
}

/// The granularity a fault storm's advice proposes (the kernel's default, 2 MiB).
pub const DEFAULT_GRANULARITY: u8 = 9;

/// Moves kept per instance (the oldest go first).
pub const HISTORY_BUDGET: usize = 1 << 16;
/// Round trips between two places, driven by faults, that make a ping-pong.
pub const PINGPONG_MIN_ROUND_TRIPS: u64 = 4;
/// A GPU fault bringing evicted pages back within this long makes the eviction "hot".
pub const EVICTED_HOT_WINDOW_NS: u64 = 2_000_000_000;
/// Faults on one range before a fault storm can be declared.
pub const FAULT_STORM_MIN_FAULTS: u64 = 256;
/// A fault storm moves at most this much data per fault on average.
pub const FAULT_STORM_MAX_BYTES_PER_FAULT: u64 = 64 << 10;

/// Why pages moved.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// A SET_ATTR with PREFETCH_LOC.
    Prefetch,
    /// The seed's migration on a PREFERRED_LOC change.
    PreferredLoc,
    /// A CPU access to a page whose data was in VRAM.
    CpuFault {
        /// The faulting page's address (userfaultfd reports the page).
        addr: usize,
        /// A store.
        write: bool,
    },
    /// A GPU retry fault (XNACK on).
    GpuFault {
        /// The faulting GPU.
        gpu: GpuId,
        /// The faulting address.
        addr: usize,
        /// A store.
        write: bool,
    },
    /// VRAM made room for the range at `for_addr` on `for_gpu`.
    Eviction {
        /// The GPU whose VRAM was short.
        for_gpu: GpuId,
        /// The first byte of the range that needed the room.
        for_addr: usize,
    },
    /// A decision of a policy beyond the kernel's.
    Policy {
        /// The rule that decided.
        rule: &'static str,
    },
    /// The application unmapped pages whose data was in VRAM: the VRAM copy is gone.
    Munmap,
    /// The application moved pages with mremap: their VRAM data followed them to RAM.
    Mremap,
    /// The application dropped pages (MADV_DONTNEED): the VRAM copy is gone.
    DontNeed,
    /// Before a fork, every page came back to RAM (the child gets all the data).
    Fork,
    /// The instance went away: every page came back to RAM.
    InstanceDrop,
}

impl Cause {
    /// Whether a fault (CPU or GPU) caused it.
    pub fn is_fault(&self) -> bool {
        matches!(self, Cause::CpuFault { .. } | Cause::GpuFault { .. })
    }
}

/// One movement of pages.
#[derive(Clone, Debug)]
pub struct Move {
    /// The first byte of the pages that moved.
    pub start: usize,
    /// How many pages moved.
    pub npages: usize,
    /// Where they were: system memory or a GPU.
    pub from: Location,
    /// Where they went (`Location::Undefined`: nowhere, the data was dropped).
    pub to: Location,
    /// The KFD trigger of the MIGRATE events.
    pub trigger: MigrateTrigger,
    /// Why.
    pub cause: Cause,
    /// `clock_ns()` when it started.
    pub at_ns: u64,
    /// This move's id (increasing).
    pub id: u64,
    /// The move this one is linked to: an eviction, to the move it made room for; a fault
    /// that brought evicted pages back, to the eviction.
    pub linked: Option<u64>,
}

impl Move {
    fn end(&self) -> usize {
        self.start + self.npages * crate::sys::PAGE_SIZE
    }

    fn overlaps(&self, start: usize, end: usize) -> bool {
        self.start < end && start < self.end()
    }
}

/// What a range has seen, for ever (per range, by its first byte when it first moved).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeTotals {
    /// Bytes of the range.
    pub len: usize,
    /// Moves into VRAM.
    pub to_vram: u64,
    /// Moves out of VRAM.
    pub from_vram: u64,
    /// Moves caused by faults.
    pub faults: u64,
    /// Pages moved by faults.
    pub fault_pages: u64,
    /// Fault-driven changes of direction (RAM <-> a GPU, or between GPUs).
    pub fault_turns: u64,
    /// The last fault-driven move's destination.
    last_fault_to: Option<Location>,
}

#[derive(Debug, Default)]
struct Record {
    next_id: u64,
    moves: VecDeque<Move>,
    totals: BTreeMap<usize, RangeTotals>,
}

/// An instance's causal record.
#[derive(Debug, Default)]
pub struct History {
    rec: Mutex<Record>,
}

impl History {
    /// Reserves the id of a move about to happen (so that the evictions it needs can link
    /// to it before it is recorded).
    pub fn reserve_id(&self) -> u64 {
        let mut r = self.rec.lock();
        r.next_id += 1;
        r.next_id
    }

    /// Records `m` (its `id` from [`Self::reserve_id`], or 0 for a new one) as a move of the
    /// range `[range_start, +range_len)`; returns its id. A GPU fault bringing pages back to
    /// a GPU they were recently evicted from is linked to that eviction.
    pub fn record(&self, mut m: Move, (range_start, range_len): (usize, usize)) -> u64 {
        let mut r = self.rec.lock();
        if m.id == 0 {
            r.next_id += 1;
            m.id = r.next_id;
        }
        if m.linked.is_none()
            && let Cause::GpuFault { .. } = m.cause
        {
            m.linked = r
                .moves
                .iter()
                .rev()
                .find(|e| {
                    matches!(e.cause, Cause::Eviction { .. })
                        && e.from == m.to
                        && e.overlaps(m.start, m.end())
                })
                .map(|e| e.id);
        }
        let t = r.totals.entry(range_start).or_default();
        t.len = t.len.max(range_len);
        match (m.from, m.to) {
            (_, Location::Gpu(_)) => t.to_vram += 1,
            (Location::Gpu(_), _) => t.from_vram += 1,
            _ => {}
        }
        if m.cause.is_fault() {
            t.faults += 1;
            t.fault_pages += m.npages as u64;
            if t.last_fault_to.is_some_and(|l| l != m.to) {
                t.fault_turns += 1;
            }
            t.last_fault_to = Some(m.to);
        }
        if r.moves.len() == HISTORY_BUDGET {
            r.moves.pop_front();
        }
        let id = m.id;
        r.moves.push_back(m);
        id
    }

    /// The moves of pages of `[start, start + len)`, oldest first (those still kept).
    pub fn query(&self, start: usize, len: usize) -> Vec<Move> {
        let end = start.saturating_add(len);
        self.rec.lock().moves.iter().filter(|m| m.overlaps(start, end)).cloned().collect()
    }

    /// Every kept move and every range's totals.
    pub fn snapshot(&self) -> (Vec<Move>, BTreeMap<usize, RangeTotals>) {
        let r = self.rec.lock();
        (r.moves.iter().cloned().collect(), r.totals.clone())
    }
}

/// The kinds of patterns [`diagnose`] finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FindingKind {
    /// Faults moved the same pages back and forth between two places.
    PingPong,
    /// Prefetched to a GPU, then moved away before that GPU touched them.
    WastedPrefetch,
    /// Evicted from VRAM, then faulted back onto the same GPU soon after.
    EvictedWhileHot,
    /// Many faults for little data: the granularity is too small.
    FaultStorm,
}

/// A pattern found in the record, with one concrete change.
#[derive(Clone, Debug)]
pub struct Finding {
    /// What.
    pub kind: FindingKind,
    /// The memory it is about (bytes).
    pub start: usize,
    /// Its length (bytes).
    pub len: usize,
    /// How often it happened (round trips, wasted prefetches, evictions, faults).
    pub count: u64,
    /// One concrete change, naming the attribute and the range.
    pub advice: String,
}

/// What the diagnosis knows of a range beyond the record: its current granularity.
pub trait RangeFacts {
    /// The granularity (log2 pages) of the range holding `addr`, if any.
    fn granularity(&self, addr: usize) -> Option<u8>;
}

fn loc(l: Location) -> String {
    match l {
        Location::Gpu(g) => format!("GPU {:#x}", g.0),
        Location::Sysmem => "CPU".into(),
        Location::Undefined => "nowhere".into(),
    }
}

fn span(start: usize, len: usize) -> String {
    format!("[{start:#x}, +{})", crate::history::bytes(len as u64))
}

/// Bytes as KiB / MiB / GiB.
pub fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// The patterns in `moves` (oldest first) and `totals`, worst first. `gpu_accessed(g, (a,
/// b), (start, end))` says whether GPU `g` accessed some of `[start, end)` between
/// `clock_ns` times `a` and `b` (a prefetch is wasted only when it did not).
pub fn diagnose(
    moves: &[Move],
    totals: &BTreeMap<usize, RangeTotals>,
    facts: &dyn RangeFacts,
    gpu_accessed: &dyn Fn(GpuId, (u64, u64), (usize, usize)) -> bool,
) -> Vec<Finding> {
    let mut out = Vec::new();
    ping_pong(moves, totals, &mut out);
    fault_storm(totals, facts, &mut out);
    wasted_prefetch(moves, gpu_accessed, &mut out);
    evicted_while_hot(moves, &mut out);
    out.sort_by_key(|f| std::cmp::Reverse(f.count));
    out
}

/// The ranges of `totals` for which `pick` holds, adjacent ones merged (a buffer cut into
/// several ranges is one finding): each group's start, length and totals.
fn groups(
    totals: &BTreeMap<usize, RangeTotals>,
    pick: impl Fn(&RangeTotals) -> bool,
) -> Vec<(usize, usize, Vec<&RangeTotals>)> {
    let mut out: Vec<(usize, usize, Vec<&RangeTotals>)> = Vec::new();
    for (&start, t) in totals.iter().filter(|(_, t)| pick(t)) {
        match out.last_mut() {
            Some((s, len, ts)) if *s + *len == start => {
                *len += t.len;
                ts.push(t);
            }
            _ => out.push((start, t.len, vec![t])),
        }
    }
    out
}

fn ping_pong(moves: &[Move], totals: &BTreeMap<usize, RangeTotals>, out: &mut Vec<Finding>) {
    for (start, len, ts) in groups(totals, |t| t.fault_turns / 2 >= PINGPONG_MIN_ROUND_TRIPS) {
        let trips = ts.iter().map(|t| t.fault_turns / 2).max().unwrap_or(0);
        // Between which places: the last fault-driven moves of this memory that differ.
        let mut places: Vec<Location> = Vec::new();
        for m in moves.iter().rev().filter(|m| m.cause.is_fault() && m.overlaps(start, start + len)) {
            if !places.contains(&m.to) {
                places.push(m.to);
            }
            if places.len() == 2 {
                break;
            }
        }
        let gpu = places.iter().find_map(|l| l.gpu());
        let cpu = places.contains(&Location::Sysmem);
        let gx = gpu.map_or(String::new(), |g| format!("{:#x}", g.0));
        let advice = match (gpu, cpu) {
            (Some(_), true) => format!(
                "set ACCESS_IN_PLACE for GPU {gx} on {}: it moved CPU<->GPU {trips} times (the GPU then reads it \
                 in system memory instead of pulling it over)",
                span(start, len)
            ),
            (Some(_), false) => format!(
                "set PREFERRED_LOC to GPU {gx} and ACCESS_IN_PLACE for the other GPU on {}: it moved GPU<->GPU \
                 {trips} times",
                span(start, len)
            ),
            _ => format!("set PREFERRED_LOC on {}: it moved back and forth {trips} times", span(start, len)),
        };
        out.push(Finding { kind: FindingKind::PingPong, start, len, count: trips, advice });
    }
}

fn fault_storm(totals: &BTreeMap<usize, RangeTotals>, facts: &dyn RangeFacts, out: &mut Vec<Finding>) {
    let storm = |t: &RangeTotals| {
        let moved = t.fault_pages * crate::sys::PAGE_SIZE as u64;
        t.faults >= FAULT_STORM_MIN_FAULTS && moved / t.faults.max(1) <= FAULT_STORM_MAX_BYTES_PER_FAULT
    };
    for (start, len, ts) in groups(totals, storm) {
        let faults: u64 = ts.iter().map(|t| t.faults).sum();
        let moved = ts.iter().map(|t| t.fault_pages).sum::<u64>() * crate::sys::PAGE_SIZE as u64;
        let advice = match facts.granularity(start) {
            Some(g) if g >= DEFAULT_GRANULARITY => format!(
                "prefetch {} (PREFETCH_LOC) before it is used: {faults} faults moved {} although GRANULARITY is \
                 {g} (the range is smaller than a granule)",
                span(start, len),
                bytes(moved)
            ),
            g => format!(
                "raise GRANULARITY from {} to {DEFAULT_GRANULARITY} on {}: {faults} faults moved {}",
                g.map_or("?".to_string(), |g| g.to_string()),
                span(start, len),
                bytes(moved)
            ),
        };
        out.push(Finding { kind: FindingKind::FaultStorm, start, len, count: faults, advice });
    }
}

fn wasted_prefetch(
    moves: &[Move],
    gpu_accessed: &dyn Fn(GpuId, (u64, u64), (usize, usize)) -> bool,
    out: &mut Vec<Finding>,
) {
    let mut wasted: BTreeMap<usize, (usize, u64, GpuId)> = BTreeMap::new();
    for (i, p) in moves.iter().enumerate() {
        let (Cause::Prefetch, Location::Gpu(g)) = (&p.cause, p.to) else { continue };
        let away = moves[i + 1..].iter().find(|m| m.from == p.to && m.overlaps(p.start, p.end()));
        // Moved away by the application's use of memory (a CPU fault, an eviction, another
        // prefetch); a fork, an unmap or the instance going away says nothing of the prefetch.
        let by_use = |c: &Cause| {
            !matches!(c, Cause::Fork | Cause::InstanceDrop | Cause::Munmap | Cause::Mremap | Cause::DontNeed)
        };
        if let Some(a) = away
            && by_use(&a.cause)
            && !gpu_accessed(g, (p.at_ns, a.at_ns), (p.start, p.end()))
        {
            let e = wasted.entry(p.start).or_insert((p.npages * crate::sys::PAGE_SIZE, 0, g));
            e.1 += 1;
        }
    }
    for (start, (len, count, g)) in wasted {
        let gx = format!("{:#x}", g.0);
        let advice = format!(
            "drop the PREFETCH_LOC to GPU {gx} on {} (or prefetch it right before the kernel that uses it): it was \
             prefetched and moved away before GPU {gx} touched it {count} times",
            span(start, len)
        );
        out.push(Finding { kind: FindingKind::WastedPrefetch, start, len, count, advice });
    }
}

fn evicted_while_hot(moves: &[Move], out: &mut Vec<Finding>) {
    let mut hot: BTreeMap<GpuId, (u64, usize, usize, crate::migrate::pageset::PageSet)> = BTreeMap::new();
    for f in moves.iter().filter(|m| matches!(m.cause, Cause::GpuFault { .. })) {
        let Some(id) = f.linked else { continue };
        let Some(e) = moves.iter().find(|m| m.id == id) else { continue };
        let Location::Gpu(g) = e.from else { continue };
        if f.at_ns.saturating_sub(e.at_ns) > EVICTED_HOT_WINDOW_NS {
            continue;
        }
        let h = hot.entry(g).or_insert((0, usize::MAX, 0, Default::default()));
        h.0 += 1;
        h.1 = h.1.min(f.start);
        h.2 = h.2.max(f.end());
        let first = crate::addr::PageNo::of_addr(f.start);
        h.3.insert(Pages::new(first, first + f.npages as u64 - 1));
    }
    for (g, (count, start, end, pages)) in hot {
        // Distinct pages faulted back: what would have had to stay.
        let refaulted = pages.len() as usize * crate::sys::PAGE_SIZE;
        let gx = format!("{:#x}", g.0);
        let advice = format!(
            "VRAM of GPU {gx} is about {} short of the working set: {count} evictions were faulted back soon after \
             (give the hot data PREFERRED_LOC on GPU {gx} and the cold data PREFERRED_LOC system memory, or use a GPU \
             with more VRAM)",
            bytes(refaulted as u64)
        );
        out.push(Finding { kind: FindingKind::EvictedWhileHot, start, len: end - start, count, advice });
    }
}

/// Where pages were, for a human: `loc` for reports.
pub fn describe(l: Location) -> String {
    loc(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: GpuId = GpuId(0x1111);
    const MB: usize = 1 << 20;

    fn mv(start: usize, npages: usize, from: Location, to: Location, cause: Cause, at: u64) -> Move {
        Move {
            start,
            npages,
            from,
            to,
            trigger: MigrateTrigger::Prefetch,
            cause,
            at_ns: at,
            id: 0,
            linked: None,
        }
    }

    struct Gran(u8);
    impl RangeFacts for Gran {
        fn granularity(&self, _: usize) -> Option<u8> {
            Some(self.0)
        }
    }

    fn run(h: &History, gran: u8, accessed: bool) -> Vec<Finding> {
        let (m, t) = h.snapshot();
        diagnose(&m, &t, &Gran(gran), &|_, _, _| accessed)
    }

    #[test]
    fn the_budget_keeps_the_newest_and_totals_stay() {
        let h = History::default();
        for i in 0..HISTORY_BUDGET + 10 {
            h.record(
                mv(0x10000, 1, Location::Sysmem, Location::Gpu(G), Cause::Prefetch, i as u64),
                (0x10000, 4096),
            );
        }
        let (m, t) = h.snapshot();
        assert_eq!(m.len(), HISTORY_BUDGET);
        assert_eq!(m[0].at_ns, 10, "the oldest went first");
        assert_eq!(t[&0x10000].to_vram, (HISTORY_BUDGET + 10) as u64, "totals are kept for ever");
        assert_eq!(h.query(0x10000, 4096).len(), HISTORY_BUDGET);
        assert!(h.query(0x20000, 4096).is_empty());
    }

    #[test]
    fn ping_pong_between_cpu_and_gpu_is_found_with_advice() {
        let h = History::default();
        for i in 0..10u64 {
            let (from, to, cause) = if i % 2 == 0 {
                (Location::Sysmem, Location::Gpu(G), Cause::GpuFault { gpu: G, addr: 0x40000, write: false })
            } else {
                (Location::Gpu(G), Location::Sysmem, Cause::CpuFault { addr: 0x40000, write: true })
            };
            h.record(mv(0x40000, 512, from, to, cause, i), (0x40000, 2 * MB));
        }
        let f = run(&h, 9, true);
        let p = f.iter().find(|f| f.kind == FindingKind::PingPong).expect("a ping-pong");
        assert_eq!((p.start, p.len, p.count), (0x40000, 2 * MB, 4));
        assert!(p.advice.contains("ACCESS_IN_PLACE for GPU 0x1111"), "{}", p.advice);
        assert!(p.advice.contains("[0x40000, +2 MiB)"), "{}", p.advice);
    }

    #[test]
    fn prefetches_back_and_forth_are_no_ping_pong() {
        let h = History::default();
        for i in 0..20u64 {
            let (from, to) = if i % 2 == 0 {
                (Location::Sysmem, Location::Gpu(G))
            } else {
                (Location::Gpu(G), Location::Sysmem)
            };
            h.record(mv(0x40000, 512, from, to, Cause::Prefetch, i), (0x40000, 2 * MB));
        }
        assert!(run(&h, 9, true).is_empty(), "explicit prefetches the GPU used: nothing to say");
    }

    #[test]
    fn a_fault_storm_advises_a_larger_granularity() {
        let h = History::default();
        for i in 0..300u64 {
            let c = Cause::CpuFault { addr: 0x100000 + i as usize * 4096, write: false };
            h.record(
                mv(0x100000 + i as usize * 4096, 1, Location::Gpu(G), Location::Sysmem, c, i),
                (0x100000, 64 * MB),
            );
        }
        let f = run(&h, 0, true);
        let s = f.iter().find(|f| f.kind == FindingKind::FaultStorm).expect("a storm");
        assert_eq!(s.count, 300);
        assert!(
            s.advice
                .starts_with("raise GRANULARITY from 0 to 9 on [0x100000, +64 MiB): 300 faults moved 1 MiB"),
            "{}",
            s.advice
        );
    }

    #[test]
    fn a_prefetch_moved_away_unused_is_wasted() {
        let h = History::default();
        h.record(
            mv(0x200000, 512, Location::Sysmem, Location::Gpu(G), Cause::Prefetch, 1),
            (0x200000, 2 * MB),
        );
        let c = Cause::CpuFault { addr: 0x200000, write: false };
        h.record(mv(0x200000, 512, Location::Gpu(G), Location::Sysmem, c, 2), (0x200000, 2 * MB));
        let f = run(&h, 9, false);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].kind, f[0].start, f[0].count), (FindingKind::WastedPrefetch, 0x200000, 1));
        assert!(run(&h, 9, true).is_empty(), "used by the GPU: not wasted");
    }

    #[test]
    fn a_fault_soon_after_an_eviction_links_to_it_and_is_hot() {
        let h = History::default();
        let needing = h.reserve_id();
        let mut e = mv(
            0x300000,
            512,
            Location::Gpu(G),
            Location::Sysmem,
            Cause::Eviction { for_gpu: G, for_addr: 0x900000 },
            10,
        );
        e.linked = Some(needing);
        let eid = h.record(e, (0x300000, 2 * MB));
        let c = Cause::GpuFault { gpu: G, addr: 0x300000, write: false };
        h.record(mv(0x300000, 512, Location::Sysmem, Location::Gpu(G), c, 20), (0x300000, 2 * MB));
        let m = h.query(0x300000, 4096);
        assert_eq!(m[0].linked, Some(needing), "the eviction names the move that needed the room");
        assert_eq!(m[1].linked, Some(eid), "the fault names the eviction");
        let f = run(&h, 9, true);
        let hot = f.iter().find(|f| f.kind == FindingKind::EvictedWhileHot).expect("hot eviction");
        assert!(hot.advice.contains("VRAM of GPU 0x1111 is about 2 MiB short"), "{}", hot.advice);
    }

    #[test]
    fn advice_follows_what_happened() {
        // Turns of two granules each: the last two moves go the same way; the advice still
        // names the CPU and the GPU.
        let h = History::default();
        for i in 0..24u64 {
            let (from, to, cause) = if (i / 2) % 2 == 0 {
                (Location::Sysmem, Location::Gpu(G), Cause::GpuFault { gpu: G, addr: 0x40000, write: false })
            } else {
                (Location::Gpu(G), Location::Sysmem, Cause::CpuFault { addr: 0x40000, write: true })
            };
            h.record(mv(0x40000 + (i as usize % 2) * MB, 256, from, to, cause, i), (0x40000, 2 * MB));
        }
        let f = run(&h, 9, true);
        let p = f.iter().find(|f| f.kind == FindingKind::PingPong).expect("a ping-pong");
        assert!(p.advice.starts_with("set ACCESS_IN_PLACE for GPU 0x1111"), "{}", p.advice);
        // A storm on a range whose granularity is already the default: prefetch, not "9 to 9".
        let h = History::default();
        for i in 0..300u64 {
            let c = Cause::CpuFault { addr: 0x100000, write: false };
            h.record(mv(0x100000, 1, Location::Gpu(G), Location::Sysmem, c, i), (0x100000, 4096));
        }
        let s = run(&h, 9, true).into_iter().find(|f| f.kind == FindingKind::FaultStorm).expect("a storm");
        assert!(s.advice.starts_with("prefetch [0x100000, +4 KiB)"), "{}", s.advice);
        // The same pages evicted and faulted back ten times are 2 MiB short, not 20.
        let h = History::default();
        for i in 0..10u64 {
            let e = mv(
                0x300000,
                512,
                Location::Gpu(G),
                Location::Sysmem,
                Cause::Eviction { for_gpu: G, for_addr: 0x900000 },
                10 * i,
            );
            h.record(e, (0x300000, 2 * MB));
            let c = Cause::GpuFault { gpu: G, addr: 0x300000, write: false };
            h.record(
                mv(0x300000, 512, Location::Sysmem, Location::Gpu(G), c, 10 * i + 5),
                (0x300000, 2 * MB),
            );
        }
        let hot = run(&h, 9, true).into_iter().find(|f| f.kind == FindingKind::EvictedWhileHot).expect("hot");
        assert_eq!(hot.count, 10);
        assert!(hot.advice.contains("about 2 MiB short"), "{}", hot.advice);
    }

    #[test]
    fn adjacent_ranges_make_one_finding() {
        let h = History::default();
        for r in 0..4usize {
            let base = 0x1000000 + r * 2 * MB;
            for i in 0..300u64 {
                let c = Cause::CpuFault { addr: base, write: false };
                h.record(
                    mv(base + i as usize * 4096, 1, Location::Gpu(G), Location::Sysmem, c, i),
                    (base, 2 * MB),
                );
            }
        }
        let f = run(&h, 0, true);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!((f[0].start, f[0].len, f[0].count), (0x1000000, 8 * MB, 1200));
        assert!(f[0].advice.contains("[0x1000000, +8 MiB): 1200 faults"), "{}", f[0].advice);
    }
}
