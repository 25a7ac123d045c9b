//! Why data moved, as the command line shows and stores it: the library's causal record
//! (`Svm::history`) and its diagnosis (`Svm::diagnose`) turned into serializable values
//! (the summary's `findings`, the trace file's `usvmMoves`, `usvmRanges`, `usvmFindings`),
//! the findings as a text table, and one move told in words (`usvm explain`).

use crate::units::bytes;
use serde::{Deserialize, Serialize};
use usvm::{Cause, Finding, FindingKind, Location, MigrateTrigger, Move, RangeInfo};

/// A place, as the records write it: `sysmem`, a GPU id in hexadecimal, or `none` (data
/// dropped, or no location).
pub fn loc_text(l: Location) -> String {
    match l {
        Location::Sysmem => "sysmem".into(),
        Location::Gpu(g) => format!("{:#x}", g.0),
        Location::Undefined => "none".into(),
    }
}

/// A place of the records, for a human: "system memory", "GPU 0x1111", "nowhere".
pub fn loc_words(l: &str) -> String {
    match l {
        "sysmem" => "system memory".into(),
        "none" => "nowhere".into(),
        g => format!("GPU {g}"),
    }
}

/// `[0x7f00..., +2 MiB)`.
pub fn span_text(start: u64, len: u64) -> String {
    format!("[{start:#x}, +{})", bytes(len))
}

/// Why pages moved (the library's [`Cause`]), as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CauseRec {
    /// A SET_ATTR with PREFETCH_LOC.
    Prefetch,
    /// The seed's migration on a PREFERRED_LOC change (a SET_ATTR).
    PreferredLoc,
    /// A CPU access to a page whose data was in VRAM.
    CpuFault {
        /// The faulting address.
        addr: u64,
        /// A store.
        write: bool,
    },
    /// A GPU retry fault.
    GpuFault {
        /// The faulting GPU (hexadecimal).
        gpu: String,
        /// The faulting address.
        addr: u64,
        /// A store.
        write: bool,
    },
    /// VRAM made room for the range at `for_addr` on `for_gpu`.
    Eviction {
        /// The GPU whose VRAM was short (hexadecimal).
        for_gpu: String,
        /// The first byte of the range that needed the room.
        for_addr: u64,
    },
    /// A rule of a policy beyond the kernel's.
    Policy {
        /// The rule.
        rule: String,
    },
    /// The application unmapped the pages: the VRAM copy is gone.
    Munmap,
    /// The application moved the pages with mremap: the data followed them to RAM.
    Mremap,
    /// The application dropped the pages (MADV_DONTNEED): the VRAM copy is gone.
    DontNeed,
    /// Every page came back to RAM before a fork.
    Fork,
    /// The instance went away: every page came back to RAM.
    InstanceDrop,
    /// A cause newer than this program.
    Other {
        /// The library's description of it.
        what: String,
    },
}

impl CauseRec {
    fn of(c: &Cause) -> Self {
        match c {
            Cause::Prefetch => CauseRec::Prefetch,
            Cause::PreferredLoc => CauseRec::PreferredLoc,
            Cause::CpuFault { addr, write } => CauseRec::CpuFault { addr: *addr as u64, write: *write },
            Cause::GpuFault { gpu, addr, write } => {
                CauseRec::GpuFault { gpu: format!("{:#x}", gpu.0), addr: *addr as u64, write: *write }
            }
            Cause::Eviction { for_gpu, for_addr } => {
                CauseRec::Eviction { for_gpu: format!("{:#x}", for_gpu.0), for_addr: *for_addr as u64 }
            }
            Cause::Policy { rule } => CauseRec::Policy { rule: rule.to_string() },
            Cause::Munmap => CauseRec::Munmap,
            Cause::Mremap => CauseRec::Mremap,
            Cause::DontNeed => CauseRec::DontNeed,
            Cause::Fork => CauseRec::Fork,
            Cause::InstanceDrop => CauseRec::InstanceDrop,
            other => CauseRec::Other { what: format!("{other:?}") },
        }
    }

    /// The cause in a few words ("GPU 0x1111 read fault at 0x7f..."), without the places.
    pub fn words(&self) -> String {
        let rw = |w: bool| if w { "write" } else { "read" };
        match self {
            CauseRec::Prefetch => "SET_ATTR PREFETCH_LOC".into(),
            CauseRec::PreferredLoc => "SET_ATTR PREFERRED_LOC".into(),
            CauseRec::CpuFault { addr, write } => format!("CPU {} fault at {addr:#x}", rw(*write)),
            CauseRec::GpuFault { gpu, addr, write } => format!("GPU {gpu} {} fault at {addr:#x}", rw(*write)),
            CauseRec::Eviction { for_gpu, for_addr } => {
                format!("eviction, making room on GPU {for_gpu} for the range at {for_addr:#x}")
            }
            CauseRec::Policy { rule } => format!("policy rule {rule}"),
            CauseRec::Munmap => "the application's munmap".into(),
            CauseRec::Mremap => "the application's mremap".into(),
            CauseRec::DontNeed => "the application's MADV_DONTNEED".into(),
            CauseRec::Fork => "fork".into(),
            CauseRec::InstanceDrop => "the instance went away".into(),
            CauseRec::Other { what } => what.clone(),
        }
    }
}

/// One movement of pages (the library's [`Move`]), as stored in a trace file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MoveRec {
    /// The move's id (increasing; evictions and faults link to others by it).
    pub id: u64,
    /// First byte of the pages that moved.
    pub start: u64,
    /// Pages that moved.
    pub pages: u64,
    /// Where they were ([`loc_text`]).
    pub from: String,
    /// Where they went ([`loc_text`]; `none`: the data was dropped).
    pub to: String,
    /// The KFD trigger of its MIGRATE events.
    pub trigger: String,
    /// Why.
    pub cause: CauseRec,
    /// `clock_ns()` when it started.
    pub at_ns: u64,
    /// The move it is linked to: an eviction, to the move it made room for; a GPU fault that
    /// brought evicted pages back, to the eviction.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub linked: Option<u64>,
}

/// The name of a MIGRATE trigger ("prefetch", "gpu fault", "cpu fault", "eviction").
pub fn trigger_name(t: MigrateTrigger) -> &'static str {
    match t {
        MigrateTrigger::Prefetch => "prefetch",
        MigrateTrigger::PagefaultGpu => "gpu fault",
        MigrateTrigger::PagefaultCpu => "cpu fault",
        MigrateTrigger::TtmEviction => "eviction",
        _ => "other",
    }
}

impl MoveRec {
    /// The stored form of `m`.
    pub fn of(m: &Move) -> Self {
        MoveRec {
            id: m.id,
            start: m.start as u64,
            pages: m.npages as u64,
            from: loc_text(m.from),
            to: loc_text(m.to),
            trigger: trigger_name(m.trigger).into(),
            cause: CauseRec::of(&m.cause),
            at_ns: m.at_ns,
            linked: m.linked,
        }
    }

    /// Bytes that moved.
    pub fn bytes(&self) -> u64 {
        self.pages * 4096
    }

    /// Whether it moved some of `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.start + self.bytes()
    }
}

/// The name of a finding's kind, as stored and shown.
pub fn kind_name(k: FindingKind) -> &'static str {
    match k {
        FindingKind::PingPong => "ping-pong",
        FindingKind::WastedPrefetch => "wasted prefetch",
        FindingKind::EvictedWhileHot => "evicted while hot",
        FindingKind::FaultStorm => "fault storm",
        _ => "other",
    }
}

/// A pattern `Svm::diagnose` found, with its one concrete change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FindingRec {
    /// `ping-pong`, `wasted prefetch`, `evicted while hot` or `fault storm`.
    pub kind: String,
    /// First byte of the memory it is about.
    pub start: u64,
    /// Its length in bytes.
    pub len: u64,
    /// `[start, +len)`, for humans.
    pub memory: String,
    /// How often it happened (round trips, wasted prefetches, evictions, faults).
    pub count: u64,
    /// What to change, naming the attribute and the range.
    pub advice: String,
}

impl FindingRec {
    /// The stored form of `f`.
    pub fn of(f: &Finding) -> Self {
        let (start, len) = (f.start as u64, f.len as u64);
        FindingRec {
            kind: kind_name(f.kind).into(),
            start,
            len,
            memory: span_text(start, len),
            count: f.count,
            advice: f.advice.clone(),
        }
    }
}

/// A range as the run left it, as stored in a trace file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RangeRec {
    /// First byte.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// Where its data is: `sysmem` or the GPU holding (some of) its pages.
    pub location: String,
    /// Pages in VRAM.
    pub vram_pages: u64,
    /// PREFERRED_LOC ([`loc_text`]).
    pub preferred_loc: String,
    /// PREFETCH_LOC ([`loc_text`]).
    pub prefetch_loc: String,
    /// GRANULARITY (log2 pages).
    pub granularity: u32,
}

impl RangeRec {
    /// The stored form of `r`.
    pub fn of(r: &RangeInfo) -> Self {
        let location = if r.vram_pages > 0 { loc_text(r.actual_loc) } else { "sysmem".into() };
        RangeRec {
            start: r.start as u64,
            size: r.size as u64,
            location,
            vram_pages: r.vram_pages as u64,
            preferred_loc: loc_text(r.preferred_loc),
            prefetch_loc: loc_text(r.prefetch_loc),
            granularity: r.granularity,
        }
    }
}

/// Width of the findings table.
const WIDTH: usize = 110;
/// Findings the table shows at most (the worst).
const SHOWN: usize = 8;

/// The findings as a table (kind, memory, count, advice; the advice wrapped in its column),
/// with a heading; a line saying so when there is none.
pub fn render_findings(list: &[FindingRec]) -> String {
    if list.is_empty() {
        return "\nwhy data moved: nothing to change (no ping-pong, wasted prefetch, hot eviction or fault \
                storm)\n"
            .into();
    }
    let mut out = format!("\nwhy data moved: {} finding(s), worst first\n", list.len());
    let kw = list.iter().map(|f| f.kind.len()).chain([4]).max().unwrap_or(4);
    let mw = list.iter().map(|f| f.memory.len()).chain([6]).max().unwrap_or(6);
    let cw = list.iter().map(|f| f.count.to_string().len()).chain([5]).max().unwrap_or(5);
    let indent = kw + mw + cw + 6;
    out += &format!("{:<kw$}  {:<mw$}  {:>cw$}  advice\n", "kind", "memory", "count");
    out += &format!("{}  {}  {}  {}\n", "-".repeat(kw), "-".repeat(mw), "-".repeat(cw), "-".repeat(6));
    for f in list.iter().take(SHOWN) {
        let advice = crate::doctor::wrap(&f.advice, indent, WIDTH);
        out += &format!("{:<kw$}  {:<mw$}  {:>cw$}  {advice}\n", f.kind, f.memory, f.count);
    }
    if list.len() > SHOWN {
        out += &format!("... and {} more (--json lists them all)\n", list.len() - SHOWN);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use usvm::GpuId;

    #[test]
    fn moves_keep_their_cause_and_link() {
        let m = Move {
            start: 0x7f00_0000_0000,
            npages: 512,
            from: Location::Gpu(GpuId(0x1111)),
            to: Location::Sysmem,
            trigger: MigrateTrigger::TtmEviction,
            cause: Cause::Eviction { for_gpu: GpuId(0x1111), for_addr: 0x7f00_0020_0000 },
            at_ns: 5,
            id: 9,
            linked: Some(8),
        };
        let r = MoveRec::of(&m);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 9, "start": 0x7f00_0000_0000u64, "pages": 512, "from": "0x1111",
                "to": "sysmem", "trigger": "eviction",
                "cause": {"kind": "eviction", "for_gpu": "0x1111", "for_addr": 0x7f00_0020_0000u64},
                "at_ns": 5, "linked": 8})
        );
        assert_eq!(serde_json::from_value::<MoveRec>(v).unwrap(), r);
        assert!(r.overlaps(0x7f00_001f_f000, 0x7f00_0020_0000) && !r.overlaps(0x7f00_0020_0000, u64::MAX));
        let f = CauseRec::of(&Cause::GpuFault { gpu: GpuId(0x2222), addr: 0x1000, write: true });
        assert_eq!(f.words(), "GPU 0x2222 write fault at 0x1000");
        assert_eq!(loc_words(&r.from), "GPU 0x1111");
        assert_eq!(loc_words(&r.to), "system memory");
    }

    #[test]
    fn findings_render_as_a_table_with_the_advice_wrapped() {
        let f = FindingRec {
            kind: "ping-pong".into(),
            start: 0x7f00_0000_0000,
            len: 8 << 20,
            memory: span_text(0x7f00_0000_0000, 8 << 20),
            count: 15,
            advice: "set ACCESS_IN_PLACE for GPU 0x1111 on [0x7f0000000000, +8 MiB): it moved CPU<->GPU 15 \
                     times (the GPU then reads it in system memory instead of pulling it over)"
                .into(),
        };
        let text = render_findings(std::slice::from_ref(&f));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "why data moved: 1 finding(s), worst first");
        assert!(lines[2].starts_with("kind       memory") && lines[2].ends_with("count  advice"), "{text}");
        assert!(
            lines[4].starts_with("ping-pong  [0x7f0000000000, +8 MiB)     15  set ACCESS_IN_PLACE"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH), "{text}");
        assert!(lines.len() > 5 && lines[5].starts_with(&" ".repeat(41)), "wrapped under advice: {text}");
        assert!(render_findings(&[]).contains("nothing to change"));
        let many = render_findings(&vec![f; SHOWN + 3]);
        assert_eq!(many.lines().filter(|l| l.starts_with("ping-pong")).count(), SHOWN);
        assert!(many.ends_with("... and 3 more (--json lists them all)\n"), "{many}");
    }
}
