//! `usvm explain TRACE ADDR`: why is the data at ADDR where it is? Reads the causal record
//! a run stored in its trace (`usvm run ... --trace TRACE`: `usvmMoves`, `usvmRanges`,
//! `usvmFindings`) and tells the chain of moves of the page holding ADDR, oldest first, each
//! with its cause and the move it is linked to (the migration an eviction made room for, the
//! eviction a GPU fault undid), then where the data is now and the findings on that memory.

use crate::why::{CauseRec, FindingRec, MoveRec, RangeRec, loc_words, span_text};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

/// `usvm explain` options.
#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    /// A trace written by `usvm run ... --trace FILE`.
    pub trace: PathBuf,
    /// The address (hexadecimal with 0x, or decimal).
    #[arg(value_parser = parse_addr)]
    pub addr: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn parse_addr(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim().replace('_', "");
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    r.map_err(|_| format!("bad address '{s}': use hexadecimal (0x7f...) or decimal"))
}

/// What `usvm explain` reads of a trace file (the viewers' keys are skipped).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Saved {
    /// The trace's clock origin.
    #[serde(default)]
    pub other_data: Origin,
    /// The causal record.
    pub usvm_moves: Option<Vec<MoveRec>>,
    /// The ranges at the end of the run.
    #[serde(default)]
    pub usvm_ranges: Vec<RangeRec>,
    /// The findings at the end of the run.
    #[serde(default)]
    pub usvm_findings: Vec<FindingRec>,
}

/// The trace's `otherData`, as far as explain needs it.
#[derive(Deserialize, Debug, Default)]
pub struct Origin {
    /// `clock_ns` at the trace's time 0.
    #[serde(default)]
    pub t0_ns: u64,
}

/// One move of the chain.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Step {
    /// The move.
    #[serde(flatten)]
    pub mv: MoveRec,
    /// When it started, milliseconds into the run.
    pub ms: f64,
    /// Why, in words (the linked move included).
    pub why: String,
}

/// Where the data is at the end of the run.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Now {
    /// `sysmem`, a GPU id (hexadecimal) or `none` (the data was dropped).
    pub location: String,
    /// In words.
    pub text: String,
    /// The move that put it there, if the record has it.
    pub since: Option<u64>,
}

/// The answer to "why is ADDR where it is".
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Answer {
    /// The address asked about.
    pub addr: u64,
    /// Its page.
    pub page: u64,
    /// The range holding it at the end of the run.
    pub range: Option<RangeRec>,
    /// Its moves, oldest first.
    pub moves: Vec<Step>,
    /// Where the data is now.
    pub now: Now,
    /// The findings on memory holding the page.
    pub findings: Vec<FindingRec>,
    /// The record was full (65536 moves): older moves of the page may have been dropped.
    pub record_full: bool,
}

/// The record keeps this many moves (`usvm::history::HISTORY_BUDGET`).
const RECORD_BUDGET: usize = 1 << 16;

fn ms(saved: &Saved, ns: u64) -> f64 {
    ns.saturating_sub(saved.other_data.t0_ns) as f64 / 1e6
}

/// Where a move's pages were. The record says a move into a GPU whose range already had
/// pages there came "from" that GPU: its pages came from system memory.
fn from_words(m: &MoveRec) -> String {
    if m.from == m.to && m.to != "sysmem" { loc_words("sysmem") } else { loc_words(&m.from) }
}

/// A linked move in a few words: `[0x.., +2 MiB) (#12: GPU 0x1111 read fault at 0x..)`.
fn linked_words(l: &MoveRec) -> String {
    format!("{} (#{}: {})", span_text(l.start, l.bytes()), l.id, l.cause.words())
}

/// Why `m` happened, in words, with the move it is linked to (from `by_id`).
pub fn why(m: &MoveRec, by_id: &HashMap<u64, &MoveRec>, saved: &Saved) -> String {
    let link = m.linked.and_then(|id| by_id.get(&id).copied());
    let (from, to) = (from_words(m), loc_words(&m.to));
    match &m.cause {
        CauseRec::Prefetch => format!("prefetched to {to} (SET_ATTR PREFETCH_LOC)"),
        CauseRec::PreferredLoc => format!("moved to {to} by a SET_ATTR of PREFERRED_LOC (the seed's rule)"),
        CauseRec::CpuFault { .. } => format!("brought back from {from} by a {}", m.cause.words()),
        CauseRec::GpuFault { .. } => {
            let mut s = format!("pulled into {to} by a {}", m.cause.words());
            if let Some(e) = link {
                s += &format!(
                    ", {:.1} ms after it was evicted from there (#{})",
                    ms(saved, m.at_ns) - ms(saved, e.at_ns),
                    e.id
                );
            }
            s
        }
        CauseRec::Eviction { for_gpu, for_addr } => match link {
            Some(l) => format!("evicted from {from} to make room for {}", linked_words(l)),
            None => format!(
                "evicted from {from} to make room for the range at {for_addr:#x} on GPU {for_gpu} (that move \
                 moved nothing or left the record)"
            ),
        },
        CauseRec::Munmap | CauseRec::DontNeed => {
            format!("its copy in {from} was dropped: {}", m.cause.words())
        }
        CauseRec::Mremap => format!("moved from {from} to {to}: it followed the application's mremap"),
        CauseRec::Fork => format!("brought back from {from} before a fork (the child gets all the data)"),
        CauseRec::InstanceDrop => format!("brought back from {from}: the instance went away"),
        CauseRec::Policy { .. } | CauseRec::Other { .. } => {
            format!("moved from {from} to {to}: {}", m.cause.words())
        }
    }
}

/// Answers for the page holding `addr` in `saved`.
pub fn answer(saved: &Saved, addr: u64) -> Result<Answer> {
    let Some(all) = &saved.usvm_moves else {
        bail!("this trace holds no causal record (usvmMoves): write it with `usvm run ... --trace FILE`");
    };
    let page = addr & !4095;
    let by_id: HashMap<u64, &MoveRec> = all.iter().map(|m| (m.id, m)).collect();
    let mut mine: Vec<&MoveRec> = all.iter().filter(|m| m.overlaps(page, page + 4096)).collect();
    mine.sort_by_key(|m| (m.at_ns, m.id));
    let range = saved.usvm_ranges.iter().find(|r| r.start <= page && page < r.start + r.size).cloned();
    if mine.is_empty() && range.is_none() {
        bail!(
            "{addr:#x} is in no SVM range of this run and no move touched it (the run's ranges: {})",
            ranges_text(&saved.usvm_ranges)
        );
    }
    let moves: Vec<Step> = mine
        .iter()
        .map(|m| Step { mv: (*m).clone(), ms: ms(saved, m.at_ns), why: why(m, &by_id, saved) })
        .collect();
    let now = match mine.last() {
        Some(m) => Now {
            location: m.to.clone(),
            text: match m.to.as_str() {
                "sysmem" => "in system memory".into(),
                "none" => "nowhere: the application dropped it".into(),
                g => format!("in the VRAM of GPU {g}"),
            },
            since: Some(m.id),
        },
        None => Now {
            location: "sysmem".into(),
            text: "in system memory: no move of this page is in the record (it stayed where the \
                   application wrote it)"
                .into(),
            since: None,
        },
    };
    let findings = saved
        .usvm_findings
        .iter()
        .filter(|f| f.start <= page && page < f.start + f.len.max(1))
        .cloned()
        .collect();
    Ok(Answer { addr, page, range, moves, now, findings, record_full: all.len() >= RECORD_BUDGET })
}

fn ranges_text(ranges: &[RangeRec]) -> String {
    let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else { return "none".into() };
    let end = last.start + last.size;
    format!("{} range(s) from {:#x} to {end:#x}", ranges.len(), first.start)
}

/// Width of the text answer.
const WIDTH: usize = 110;
/// Where a move's explanation starts.
const INDENT: usize = 8;

/// An attribute's location in words ("unset" for none).
fn attr_words(l: &str) -> String {
    if l == "none" { "unset".into() } else { loc_words(l) }
}

/// The answer as text.
pub fn render(a: &Answer) -> String {
    let mut head = format!("{:#x} is in page {:#x}", a.addr, a.page);
    if let Some(r) = &a.range {
        head += &format!(
            " of the range {} (PREFERRED_LOC {}, PREFETCH_LOC {}, GRANULARITY {})",
            span_text(r.start, r.size),
            attr_words(&r.preferred_loc),
            attr_words(&r.prefetch_loc),
            r.granularity
        );
    }
    let mut out = format!("{}\n", crate::doctor::wrap(&head, 2, WIDTH));
    if a.record_full {
        out += "(the record was full: the oldest moves of the run are no longer in it)\n";
    }
    if !a.moves.is_empty() {
        out += &format!("its moves, oldest first ({}):\n", a.moves.len());
    }
    let pad = " ".repeat(INDENT);
    for s in &a.moves {
        let m = &s.mv;
        out += &format!(
            "  #{:<5} {:>10.3} ms  {} -> {}  {}\n",
            m.id,
            s.ms,
            from_words(m),
            loc_words(&m.to),
            span_text(m.start, m.bytes())
        );
        out += &format!("{pad}{}\n", crate::doctor::wrap(&s.why, INDENT, WIDTH));
    }
    let since = match a.now.since.and_then(|id| a.moves.iter().find(|s| s.mv.id == id)) {
        Some(s) => format!(" (since #{}, {:.3} ms)", s.mv.id, s.ms),
        None => String::new(),
    };
    out += &format!("now: {}\n", crate::doctor::wrap(&format!("{}{since}", a.now.text), 5, WIDTH));
    for f in &a.findings {
        out += &format!("finding: {} on {}, {} time(s)\n", f.kind, f.memory, f.count);
        out += &format!("{pad}{}\n", crate::doctor::wrap(&f.advice, INDENT, WIDTH));
    }
    out
}

/// `usvm explain`.
pub fn run(a: &ExplainArgs) -> Result<()> {
    let text = std::fs::read(&a.trace).with_context(|| format!("cannot read {}", a.trace.display()))?;
    let saved: Saved = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a usvm trace (Chrome-trace JSON)", a.trace.display()))?;
    let ans = answer(&saved, a.addr)?;
    if a.json {
        crate::progress::out(&format!("{}\n", serde_json::to_string(&ans)?));
    } else {
        crate::progress::out(&render(&ans));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(id: u64, start: u64, (from, to): (&str, &str), cause: CauseRec, at_ms: u64) -> MoveRec {
        MoveRec {
            id,
            start,
            pages: 512,
            from: from.into(),
            to: to.into(),
            trigger: "gpu fault".into(),
            cause,
            at_ns: 1_000_000_000 + at_ms * 1_000_000,
            linked: None,
        }
    }

    const A: u64 = 0x7f00_0000_0000;
    const B: u64 = 0x7f00_0020_0000;

    fn saved() -> Saved {
        let fault = |addr| CauseRec::GpuFault { gpu: "0x1111".into(), addr, write: false };
        let mut evict =
            mv(3, A, ("0x1111", "sysmem"), CauseRec::Eviction { for_gpu: "0x1111".into(), for_addr: B }, 20);
        evict.linked = Some(2);
        let mut back = mv(4, A, ("sysmem", "0x1111"), fault(A + 0x1000), 30);
        back.linked = Some(3);
        Saved {
            other_data: Origin { t0_ns: 1_000_000_000 },
            usvm_moves: Some(vec![
                mv(1, A, ("sysmem", "0x1111"), CauseRec::Prefetch, 10),
                mv(2, B, ("sysmem", "0x1111"), fault(B), 19),
                evict,
                back,
            ]),
            usvm_ranges: vec![RangeRec {
                start: A,
                size: 2 << 20,
                location: "0x1111".into(),
                vram_pages: 512,
                preferred_loc: "none".into(),
                prefetch_loc: "0x1111".into(),
                granularity: 9,
            }],
            usvm_findings: vec![],
        }
    }

    #[test]
    fn the_chain_of_a_page_names_each_cause_and_link() {
        let s = saved();
        let a = answer(&s, A + 0x1234).unwrap();
        assert_eq!(a.page, A + 0x1000);
        let ids: Vec<u64> = a.moves.iter().map(|m| m.mv.id).collect();
        assert_eq!(ids, [1, 3, 4], "B's move is not this page's");
        assert_eq!(a.moves[0].why, "prefetched to GPU 0x1111 (SET_ATTR PREFETCH_LOC)");
        assert_eq!(
            a.moves[1].why,
            format!(
                "evicted from GPU 0x1111 to make room for [{B:#x}, +2 MiB) (#2: GPU 0x1111 read fault at {B:#x})"
            )
        );
        assert_eq!(
            a.moves[2].why,
            format!(
                "pulled into GPU 0x1111 by a GPU 0x1111 read fault at {:#x}, 10.0 ms after it was evicted from \
                 there (#3)",
                A + 0x1000
            )
        );
        assert_eq!((a.now.location.as_str(), a.now.since), ("0x1111", Some(4)));
        let text = render(&a);
        assert!(text.contains("now: in the VRAM of GPU 0x1111 (since #4, 30.000 ms)"), "{text}");
        assert!(
            text.contains("  #3         20.000 ms  GPU 0x1111 -> system memory  [0x7f0000000000, +2 MiB)\n"),
            "{text}"
        );
    }

    #[test]
    fn an_address_of_no_range_is_an_error_and_an_unmoved_page_stayed_in_ram() {
        let mut s = saved();
        assert!(answer(&s, 0x1000).unwrap_err().to_string().contains("in no SVM range"));
        s.usvm_moves = Some(vec![]);
        let a = answer(&s, A).unwrap();
        assert!(a.moves.is_empty() && a.now.location == "sysmem" && a.now.since.is_none());
        s.usvm_moves = None;
        assert!(answer(&s, A).unwrap_err().to_string().contains("no causal record"));
        assert_eq!(parse_addr("0x7F00_0000_1000"), Ok(0x7f00_0000_1000));
        assert_eq!(parse_addr("4096"), Ok(4096));
        assert!(parse_addr("zz").is_err());
    }
}
