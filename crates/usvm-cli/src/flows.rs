//! The trace's causal links: every move of the library's record (`Svm::history`) matched to
//! the MIGRATE spans of its migration, and flow arrows from its cause to them.
//!
//! - A GPU fault's PAGE_FAULT span (same GPU, faulting page, open when the move started)
//!   points to the migration it caused.
//! - A CPU fault and a SET_ATTR (PREFETCH_LOC, or the seed's PREFERRED_LOC change) have no
//!   event of their own: each gets a span on a CPU-side track (`CPU faults`, `SET_ATTR`), from
//!   when the move started to when its migration ended, and points to it.
//! - An eviction's migration points to the migration that needed the room (its `linked`
//!   move), and to the GPU fault's migration that brought the pages back (`made room for`,
//!   `brought back`).
//!
//! Matching: migrations run one at a time (under the instance's lock; the evictions a
//! migration needs run inside it), so a move's MIGRATE spans start after the move started
//! and before the next move (its own evictions aside) started. Among those, its first span
//! is the first with the move's places whose pages hold the move's first page (a move
//! between two GPUs is two spans, through system memory; the way out of the first GPU moves
//! the whole range); when a range lies over several mappings, the next pieces follow
//! contiguously until they cover the pages the move moved.

use crate::record::Record;
use crate::trace::{Args, CPU_TID, Event, PID, Scope, hex, thread};
use crate::why::{CauseRec, MoveRec};
use std::collections::{HashMap, HashSet};
use usvm::{Cause, Location, Move};

/// A MIGRATE span of the trace.
#[derive(Clone, Debug)]
pub struct MigrateSpan {
    /// First page (address >> 12).
    pub page: u64,
    /// Pages.
    pub npages: u64,
    /// Source: 0 or a GPU id.
    pub from: u32,
    /// Destination: 0 or a GPU id.
    pub to: u32,
    /// Start and end, `clock_ns` nanoseconds.
    pub ns: (u64, u64),
    /// Its track.
    pub tid: u64,
}

/// A GPU fault span (PAGE_FAULT_START to END) of the trace.
#[derive(Clone, Debug)]
pub struct FaultSpan {
    /// The faulting page (address >> 12).
    pub page: u64,
    /// The GPU id.
    pub gpu: u32,
    /// Start and end, `clock_ns` nanoseconds.
    pub ns: (u64, u64),
    /// Its track.
    pub tid: u64,
}

/// Where a flow arrow starts or ends: a point inside a slice of a track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    /// The track.
    pub tid: u64,
    /// When, `clock_ns` nanoseconds (strictly inside the slice, before its children).
    pub ns: u64,
}

/// One flow arrow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// `cause`, `made room for` or `brought back`.
    pub name: &'static str,
    /// From (the cause).
    pub from: Point,
    /// To (the effect).
    pub to: Point,
}

/// What a CPU-side span stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// A CPU fault.
    CpuFault,
    /// A SET_ATTR.
    SetAttr,
}

/// A span the trace draws on a CPU-side track for a cause that has no event of its own.
#[derive(Clone, Debug)]
pub struct CauseSpan {
    /// CPU fault or SET_ATTR.
    pub side: Side,
    /// Its lane (0: the first track of its kind; more when such spans overlap).
    pub lane: usize,
    /// Start and end, `clock_ns` nanoseconds.
    pub ns: (u64, u64),
    /// The index of its move.
    pub mv: usize,
}

/// Everything [`link`] finds.
#[derive(Debug, Default)]
pub struct Links {
    /// The move of each MIGRATE span, when found.
    pub move_of: Vec<Option<usize>>,
    /// The CPU-side spans, by start.
    pub causes: Vec<CauseSpan>,
    /// The arrows.
    pub flows: Vec<Flow>,
}

/// A point just inside `(start, end)`: 10 ns in, or half way when shorter.
fn inside((start, end): (u64, u64)) -> u64 {
    start + (end.saturating_sub(start) / 2).min(10)
}

fn raw(l: Location) -> Option<u32> {
    match l {
        Location::Sysmem => Some(0),
        Location::Gpu(g) => Some(g.0),
        Location::Undefined => None,
    }
}

/// The legs of a move as MIGRATE spans show them: (from, to) with 0 for system memory.
/// Between two GPUs the data goes through system memory (two spans); a move "from" the GPU
/// it goes to started with some of the range there already: its pages came from RAM.
fn legs(m: &Move) -> Vec<(u32, u32)> {
    match (raw(m.from), raw(m.to)) {
        (Some(f), Some(t)) if f != 0 && t != 0 && f != t => vec![(f, 0), (0, t)],
        (Some(f), Some(t)) if f == t && t != 0 => vec![(0, t)],
        (Some(f), Some(t)) if f != t => vec![(f, t)],
        _ => Vec::new(),
    }
}

/// When each move's migration is over at the latest: when the next move starts, the
/// evictions it made (which run inside it) aside. Migrations run one at a time.
fn windows(moves: &[Move], order: &[usize]) -> Vec<u64> {
    let mut end = vec![u64::MAX; moves.len()];
    for (k, &mi) in order.iter().enumerate() {
        let id = moves[mi].id;
        let inside = |m: &Move| matches!(m.cause, Cause::Eviction { .. }) && m.linked == Some(id);
        if let Some(&next) = order[k + 1..].iter().find(|&&n| !inside(&moves[n])) {
            end[mi] = moves[next].at_ns;
        }
    }
    end
}

/// The MIGRATE spans of each move (and the reverse map): per leg, the first span after the
/// move started, before its window ends, whose pages hold the move's first page; then the
/// pieces that follow on contiguously until they cover the pages the move moved.
fn match_spans(moves: &[Move], spans: &[MigrateSpan]) -> (Vec<Vec<usize>>, Vec<Option<usize>>) {
    let mut by_start: Vec<usize> = (0..spans.len()).collect();
    by_start.sort_by_key(|&i| spans[i].ns.0);
    let mut order: Vec<usize> = (0..moves.len()).collect();
    order.sort_by_key(|&i| (moves[i].at_ns, moves[i].id));
    let ends = windows(moves, &order);
    let mut move_of: Vec<Option<usize>> = vec![None; spans.len()];
    let mut spans_of = vec![Vec::new(); moves.len()];
    for &mi in &order {
        let m = &moves[mi];
        let page = (m.start >> 12) as u64;
        let lo = by_start.partition_point(|&i| spans[i].ns.0 < m.at_ns);
        let hi = by_start.partition_point(|&i| spans[i].ns.0 < ends[mi]);
        let window = &by_start[lo..hi];
        for leg in legs(m) {
            let holds = |i: usize| spans[i].page <= page && page < spans[i].page + spans[i].npages.max(1);
            let first = window
                .iter()
                .copied()
                .find(|&i| move_of[i].is_none() && (spans[i].from, spans[i].to) == leg && holds(i));
            let Some(si) = first else { continue };
            move_of[si] = Some(mi);
            spans_of[mi].push(si);
            let (mut last, mut covered) = (si, spans[si].npages);
            while covered < m.npages as u64 {
                let next_page = spans[last].page + spans[last].npages;
                let next = window.iter().copied().find(|&i| {
                    move_of[i].is_none() && (spans[i].from, spans[i].to) == leg && spans[i].page == next_page
                });
                let Some(n) = next else { break };
                move_of[n] = Some(mi);
                spans_of[mi].push(n);
                (last, covered) = (n, covered + spans[n].npages);
            }
        }
    }
    (spans_of, move_of)
}

/// Lanes for CPU-side spans: the first lane free at each span's start.
fn lanes(causes: &mut [CauseSpan]) {
    causes.sort_by_key(|c| c.ns.0);
    let mut ends: HashMap<Side, Vec<u64>> = HashMap::new();
    for c in causes.iter_mut() {
        let e = ends.entry(c.side).or_default();
        c.lane = match e.iter().position(|&end| end <= c.ns.0) {
            Some(l) => l,
            None => {
                e.push(0);
                e.len() - 1
            }
        };
        e[c.lane] = c.ns.1;
    }
}

/// Matches `moves` to the trace's MIGRATE and fault spans and finds the arrows; `lane_tid`
/// gives the track of a CPU-side lane.
pub fn link(
    moves: &[Move],
    spans: &[MigrateSpan],
    faults: &[FaultSpan],
    lane_tid: impl Fn(Side, usize) -> u64,
) -> Links {
    let (spans_of, move_of) = match_spans(moves, spans);
    let by_id: HashMap<u64, usize> = moves.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
    let mut faults_at: HashMap<(u32, u64), Vec<usize>> = HashMap::new();
    for (i, f) in faults.iter().enumerate() {
        faults_at.entry((f.gpu, f.page)).or_default().push(i);
    }
    let point = |si: usize| Point { tid: spans[si].tid, ns: inside(spans[si].ns) };
    let mut causes = Vec::new();
    for (mi, m) in moves.iter().enumerate() {
        let Some((&first, &last)) = spans_of[mi].first().zip(spans_of[mi].last()) else { continue };
        let ns = (m.at_ns.min(spans[first].ns.0), spans[last].ns.1);
        let side = match m.cause {
            Cause::CpuFault { .. } => Side::CpuFault,
            Cause::Prefetch | Cause::PreferredLoc => Side::SetAttr,
            _ => continue,
        };
        causes.push(CauseSpan { side, lane: 0, ns, mv: mi });
    }
    lanes(&mut causes);
    let mut flows = Vec::new();
    for c in &causes {
        let from = Point { tid: lane_tid(c.side, c.lane), ns: inside(c.ns) };
        flows.extend(spans_of[c.mv].iter().map(|&si| Flow { name: "cause", from, to: point(si) }));
    }
    for (mi, m) in moves.iter().enumerate() {
        let Some(&first) = spans_of[mi].first() else { continue };
        match m.cause {
            Cause::GpuFault { gpu, addr, .. } => {
                let key = (gpu.0, (addr >> 12) as u64);
                let fault = faults_at.get(&key).and_then(|v| {
                    v.iter().rev().find(|&&i| faults[i].ns.0 <= m.at_ns && m.at_ns <= faults[i].ns.1)
                });
                if let Some(&fi) = fault {
                    let from = Point { tid: faults[fi].tid, ns: inside(faults[fi].ns) };
                    flows.extend(spans_of[mi].iter().map(|&si| Flow { name: "cause", from, to: point(si) }));
                }
                // Pages evicted shortly before, brought back by this fault.
                let evicted = m.linked.and_then(|id| by_id.get(&id)).and_then(|&e| spans_of[e].first());
                if let Some(&es) = evicted {
                    flows.push(Flow { name: "brought back", from: point(es), to: point(first) });
                }
            }
            Cause::Eviction { .. } => {
                let needing = m.linked.and_then(|id| by_id.get(&id)).and_then(|&n| spans_of[n].first());
                if let Some(&ns) = needing {
                    flows.push(Flow { name: "made room for", from: point(first), to: point(ns) });
                }
            }
            _ => {}
        }
    }
    Links { move_of, causes, flows }
}

/// The first SET_ATTR track.
const SET_ATTR_TID: u64 = 50;
/// Tracks of one kind of CPU-side span at most (more overlapping ones share the last).
const LANES: usize = 16;

/// The track of lane `lane` of CPU-side spans of kind `side`.
fn lane_tid(side: Side, lane: usize) -> u64 {
    let base = match side {
        Side::CpuFault => CPU_TID,
        Side::SetAttr => SET_ATTR_TID,
    };
    base + lane.min(LANES - 1) as u64
}

/// The causal links as trace events: names each MIGRATE span's move and cause (`migr`: the
/// spans and their events' places in `out`), draws the CPU-fault and SET_ATTR spans (an
/// instant for a CPU fault, `cpu_faults`: (ns, page, from), whose move the record no longer
/// holds) and the flow arrows.
pub fn trace_events(
    rec: &Record,
    migr: &[(MigrateSpan, usize)],
    gpu_faults: &[FaultSpan],
    cpu_faults: &[(u64, u64, u32)],
    out: &mut Vec<Event>,
) {
    let us = |ns: u64| ns.saturating_sub(rec.t0) as f64 / 1e3;
    let spans: Vec<MigrateSpan> = migr.iter().map(|(m, _)| m.clone()).collect();
    let links = link(&rec.moves, &spans, gpu_faults, lane_tid);
    let recs: Vec<MoveRec> = rec.moves.iter().map(MoveRec::of).collect();
    for (si, &(_, at)) in migr.iter().enumerate() {
        let Some(mi) = links.move_of[si] else { continue };
        if let Event::Complete { args: Args::Migration { move_id, cause, .. }, .. } = &mut out[at] {
            *move_id = Some(recs[mi].id);
            *cause = Some(recs[mi].cause.words());
        }
    }
    // CPU faults whose migration has no move (the record dropped it): an instant, as before.
    let moved: HashSet<(u64, u64)> = migr
        .iter()
        .zip(&links.move_of)
        .filter(|(_, m)| m.is_some())
        .map(|((s, _), _)| (s.ns.0, s.page))
        .collect();
    for &(ns, page, from) in cpu_faults.iter().filter(|&&(ns, page, _)| !moved.contains(&(ns, page))) {
        let args = Args::CpuFault { addr: hex(page << 12), from: hex(from) };
        out.push(Event::Instant {
            s: Scope::Thread,
            name: "cpu fault",
            pid: PID,
            tid: CPU_TID,
            ts: us(ns),
            args,
        });
    }
    cause_spans(rec, &links.causes, &recs, out);
    for (id, f) in links.flows.iter().enumerate() {
        let id = id as u64 + 1;
        let (name, cat) = (f.name, "cause");
        out.push(Event::FlowStart { name, cat, id, pid: PID, tid: f.from.tid, ts: us(f.from.ns) });
        out.push(Event::FlowEnd { name, cat, id, pid: PID, tid: f.to.tid, ts: us(f.to.ns), bp: "e" });
    }
}

/// The CPU-fault and SET_ATTR spans, on their lanes' tracks (named as they first appear).
fn cause_spans(rec: &Record, causes: &[CauseSpan], recs: &[MoveRec], out: &mut Vec<Event>) {
    let us = |ns: u64| ns.saturating_sub(rec.t0) as f64 / 1e3;
    let mut named: HashSet<u64> = [CPU_TID].into();
    for c in causes {
        let tid = lane_tid(c.side, c.lane);
        if named.insert(tid) {
            let title = match c.side {
                Side::CpuFault => "CPU faults",
                Side::SetAttr => "SET_ATTR",
            };
            let n = (tid - lane_tid(c.side, 0)) as usize;
            out.extend(thread(tid, if n == 0 { title.into() } else { format!("{title} ({})", n + 1) }));
        }
        let m = &recs[c.mv];
        let name = match &m.cause {
            CauseRec::CpuFault { write: true, .. } => "cpu write fault",
            CauseRec::CpuFault { .. } => "cpu read fault",
            CauseRec::PreferredLoc => "SET_ATTR PREFERRED_LOC",
            _ => "SET_ATTR PREFETCH_LOC",
        };
        out.push(Event::Complete {
            name: name.into(),
            cat: if c.side == Side::CpuFault { "fault" } else { "set_attr" },
            pid: PID,
            tid,
            ts: us(c.ns.0),
            dur: us(c.ns.1) - us(c.ns.0),
            args: Args::Cause {
                cause: m.cause.words(),
                move_id: m.id,
                addr: hex(m.start),
                bytes: m.bytes(),
                to: hex(rec.moves[c.mv].to.gpu().map_or(0, |g| g.0)),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use usvm::{GpuId, MigrateTrigger};

    const G: GpuId = GpuId(0x1111);
    const H: GpuId = GpuId(0x2222);
    const COPY: u64 = 101;
    const FAULTS: u64 = 102;

    fn mv(id: u64, page: u64, (from, to): (Location, Location), cause: Cause, at_ns: u64) -> Move {
        Move {
            start: (page << 12) as usize,
            npages: 512,
            from,
            to,
            trigger: MigrateTrigger::Prefetch,
            cause,
            at_ns,
            id,
            linked: None,
        }
    }

    fn span(page: u64, from: u32, to: u32, ns: (u64, u64)) -> MigrateSpan {
        MigrateSpan { page, npages: 512, from, to, ns, tid: COPY }
    }

    fn tid(side: Side, lane: usize) -> u64 {
        match side {
            Side::CpuFault => 1 + lane as u64,
            Side::SetAttr => 50 + lane as u64,
        }
    }

    #[test]
    fn each_move_gets_its_spans_and_its_cause_points_to_them() {
        let (sys, g) = (Location::Sysmem, Location::Gpu(G));
        let mut evict = mv(3, 0x900, (g, sys), Cause::Eviction { for_gpu: G, for_addr: 0x200 << 12 }, 2100);
        evict.linked = Some(2);
        let mut back =
            mv(4, 0x900, (sys, g), Cause::GpuFault { gpu: G, addr: 0x900 << 12, write: false }, 5000);
        back.linked = Some(3);
        let moves = vec![
            mv(1, 0x100, (sys, g), Cause::Prefetch, 1000),
            evict,
            mv(2, 0x200, (sys, g), Cause::GpuFault { gpu: G, addr: (0x200 << 12) + 8, write: true }, 2000),
            back,
            mv(5, 0x900, (g, sys), Cause::CpuFault { addr: 0x900 << 12, write: false }, 7000),
        ];
        let spans = vec![
            span(0x100, 0, G.0, (1010, 1500)),
            // A migration that moved nothing (no move) before the eviction's.
            span(0x900, G.0, 0, (2050, 2060)),
            span(0x900, G.0, 0, (2110, 2900)),
            span(0x200, 0, G.0, (2950, 3500)),
            span(0x900, 0, G.0, (5010, 5500)),
            span(0x900, G.0, 0, (7010, 7400)),
        ];
        let faults = vec![
            FaultSpan { page: 0x200, gpu: G.0, ns: (1990, 3600), tid: FAULTS },
            FaultSpan { page: 0x900, gpu: G.0, ns: (4990, 5600), tid: FAULTS },
        ];
        let l = link(&moves, &spans, &faults, tid);
        // The second span is a migration that moved nothing: no move's.
        assert_eq!(l.move_of, [Some(0), None, Some(1), Some(2), Some(3), Some(4)]);
        let at = |si: usize| Point { tid: COPY, ns: spans[si].ns.0 + 10 };
        let want = [
            Flow { name: "cause", from: Point { tid: 50, ns: 1010 }, to: at(0) },
            Flow { name: "cause", from: Point { tid: 1, ns: 7010 }, to: at(5) },
            Flow { name: "made room for", from: at(2), to: at(3) },
            Flow { name: "cause", from: Point { tid: FAULTS, ns: 2000 }, to: at(3) },
            Flow { name: "cause", from: Point { tid: FAULTS, ns: 5000 }, to: at(4) },
            Flow { name: "brought back", from: at(2), to: at(4) },
        ];
        for w in &want {
            assert!(l.flows.contains(w), "no {w:?} in {:#?}", l.flows);
        }
        assert_eq!(l.flows.len(), want.len());
        let sides: Vec<_> = l.causes.iter().map(|c| (c.side, c.ns)).collect();
        assert_eq!(sides, [(Side::SetAttr, (1000, 1500)), (Side::CpuFault, (7000, 7400))]);
    }

    #[test]
    fn a_move_between_gpus_is_two_spans_and_overlapping_causes_get_lanes() {
        let (g, h, sys) = (Location::Gpu(G), Location::Gpu(H), Location::Sysmem);
        let mut moves = vec![
            mv(1, 0x100, (g, h), Cause::Prefetch, 100),
            mv(2, 0x300, (g, sys), Cause::CpuFault { addr: 0x300 << 12, write: true }, 1000),
            mv(3, 0x500, (g, sys), Cause::CpuFault { addr: 0x500 << 12, write: true }, 1100),
        ];
        moves[1].npages = 1024; // a range over two mappings
        let spans = vec![
            span(0x100, G.0, 0, (110, 200)),
            span(0x100, 0, H.0, (210, 300)),
            // Two pieces of one move (two mappings under the range).
            span(0x300, G.0, 0, (1010, 1050)),
            span(0x300 + 512, G.0, 0, (1060, 1400)),
            span(0x500, G.0, 0, (1110, 1200)),
            // The next range's migration, right after: not a piece of the one before.
            span(0x500 + 512, G.0, 0, (1210, 1300)),
        ];
        let l = link(&moves, &spans, &[], tid);
        assert_eq!(l.move_of, [Some(0), Some(0), Some(1), Some(1), Some(2), None]);
        let lanes: Vec<_> = l.causes.iter().map(|c| (c.side, c.lane)).collect();
        assert_eq!(lanes, [(Side::SetAttr, 0), (Side::CpuFault, 0), (Side::CpuFault, 1)]);
        assert_eq!(l.flows.iter().filter(|f| f.from.tid == 2).count(), 1, "the second lane's fault");
    }

    #[test]
    fn legs_follow_the_range_and_a_missing_span_is_not_taken_from_a_later_move() {
        let (g, h, sys) = (Location::Gpu(G), Location::Gpu(H), Location::Sysmem);
        let fault =
            |gpu: GpuId, page: u64| Cause::GpuFault { gpu, addr: (page << 12) as usize, write: false };
        let mut moves = vec![
            // The range was partly on G already: its pages came from RAM (one leg, 0 -> G).
            mv(1, 0x130, (g, g), fault(G, 0x130), 100),
            // G -> H of a granule: the way out of G moves the whole range (from 0x100).
            mv(2, 0x230, (g, h), fault(H, 0x230), 1000),
            // A CPU fault whose span the trace lacks (events dropped).
            mv(3, 0x400, (g, sys), Cause::CpuFault { addr: 0x400 << 12, write: false }, 2000),
        ];
        for m in &mut moves {
            m.npages = 1;
        }
        let spans = vec![
            MigrateSpan { page: 0x130, npages: 1, from: 0, to: G.0, ns: (110, 200), tid: COPY },
            MigrateSpan { page: 0x200, npages: 512, from: G.0, to: 0, ns: (1010, 1100), tid: COPY },
            MigrateSpan { page: 0x230, npages: 1, from: 0, to: H.0, ns: (1110, 1200), tid: COPY },
            // A later migration of the same page and places, by a move the record lost.
            MigrateSpan { page: 0x400, npages: 1, from: G.0, to: 0, ns: (3010, 3100), tid: COPY },
        ];
        let later = mv(4, 0x500, (sys, g), Cause::Prefetch, 3000);
        moves.push(later);
        let l = link(&moves, &spans, &[], tid);
        assert_eq!(l.move_of, [Some(0), Some(1), Some(1), None]);
    }
}
