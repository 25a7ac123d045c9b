//! Instruction fetch: a code cache per dispatch (and worker) that reads whole 4 KiB pages
//! through the wave's memory, as the shader's instruction cache would, and keeps every
//! decoded instruction by address. A fresh cache per dispatch sees code rewritten between
//! dispatches.

use super::IsaError;
use super::decode::{self, Inst};
use super::mem::Memory;
use super::mem::Scratch;
use super::ops::Kind;
use super::wave::{Flow, Wave};

const PAGE: u64 = 4096;
const WORDS: usize = (PAGE / 4) as usize;

struct Page {
    words: Vec<u32>,
    decoded: Vec<Option<(Inst, u8)>>,
}

/// Fetched code pages and their decoded instructions (shaders span a page or a few: a
/// list, searched from the page used last).
#[derive(Default)]
pub struct CodeCache {
    pages: Vec<(u64, Page)>,
    last: usize,
}

impl CodeCache {
    fn page<'a>(&'a mut self, mem: &dyn Memory, n: u64) -> Result<&'a mut Page, IsaError> {
        if self.pages.get(self.last).is_none_or(|p| p.0 != n) {
            match self.pages.iter().position(|p| p.0 == n) {
                Some(k) => self.last = k,
                None => {
                    let mut b = vec![0u8; PAGE as usize];
                    mem.read(n * PAGE, &mut b).map_err(IsaError::Fault)?;
                    let words = b
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                        .collect();
                    self.pages.push((n, Page { words, decoded: vec![None; WORDS] }));
                    self.last = self.pages.len() - 1;
                }
            }
        }
        Ok(&mut self.pages[self.last].1)
    }

    /// The instruction at `pc` and its size in dwords.
    pub fn fetch(&mut self, mem: &dyn Memory, pc: u64) -> Result<(Inst, usize), IsaError> {
        if !pc.is_multiple_of(4) {
            return Err(IsaError::Illegal { pc, why: "instruction address is not dword aligned".into() });
        }
        let (n, idx) = (pc / PAGE, ((pc % PAGE) / 4) as usize);
        let page = self.page(mem, n)?;
        if let Some((i, size)) = page.decoded[idx] {
            return Ok((i, usize::from(size)));
        }
        let w0 = page.words[idx];
        let next_in_page = page.words.get(idx + 1).copied();
        let w1 = match (decode::size(w0), next_in_page) {
            (1, w) => w.unwrap_or(0),
            (_, Some(w)) => w,
            // The second dword is on the next page.
            (_, None) => self.page(mem, n + 1)?.words[0],
        };
        let size = decode::size(w0);
        let r = decode::decode(&[w0, w1][..size]);
        let (i, size) = r.map_err(|e| match e {
            IsaError::Unknown { format, op, .. } => IsaError::Unknown { pc, format, op, words: [w0, w1] },
            e => e.at(pc),
        })?;
        self.page(mem, n)?.decoded[idx] = Some((i, size as u8));
        Ok((i, size))
    }
}

impl Wave {
    /// Fetches and executes one instruction.
    pub fn step(
        &mut self,
        code: &mut CodeCache,
        mem: &dyn Memory,
        buf: &mut Scratch,
    ) -> Result<Flow, IsaError> {
        let (i, size) = code.fetch(mem, self.pc)?;
        let flow = match i.info.kind {
            Kind::SLoad(_) | Kind::Load(_) | Kind::Store(_) => {
                self.memory(&i, mem, buf)?;
                Flow::Next
            }
            Kind::V1(_)
            | Kind::V2(_)
            | Kind::V3(_)
            | Kind::VCarry { .. }
            | Kind::VCndmask
            | Kind::VCmp { .. }
            | Kind::VReadFirstLane => {
                self.valu(&i)?;
                Flow::Next
            }
            _ => self.salu(&i, size)?,
        };
        match flow {
            Flow::Next | Flow::Barrier => self.pc += 4 * size as u64,
            Flow::Jump(to) => self.pc = to,
            Flow::Ended => {}
        }
        Ok(flow)
    }
}
