//! Tests of the wave interpreter: golden decoder vectors, wave semantics on a map-backed
//! memory, the kfdtest shaders end to end, and dispatches through `Devices`.

mod devices;
mod golden;
mod shaders;
mod waves;

use super::mem::Memory;
use super::{DispatchStats, IsaError, Launch};
use crate::Error;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

const PAGE: u64 = 4096;

/// Memory as a map of 4 KiB pages; an access to a page not in the map is a fatal fault.
#[derive(Default)]
pub struct MapMem {
    pages: Mutex<HashMap<u64, Box<[u8; PAGE as usize]>>>,
    /// Loads made (device accesses, instruction fetches included).
    pub reads: AtomicU64,
    /// Stores made.
    pub writes: AtomicU64,
    /// Every load's (address, length).
    pub log: Mutex<Vec<(u64, usize)>>,
}

impl MapMem {
    /// Maps `[addr, addr + len)` (whole pages), zeroed.
    pub fn map(&self, addr: u64, len: u64) {
        let mut p = self.pages.lock();
        for n in addr / PAGE..(addr + len).div_ceil(PAGE) {
            p.entry(n).or_insert_with(|| Box::new([0; PAGE as usize]));
        }
    }

    /// Maps and writes `words` at `addr`.
    pub fn put(&self, addr: u64, words: &[u32]) {
        self.map(addr, 4 * words.len() as u64);
        let b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.write(addr, &b).unwrap();
    }

    /// The dword at `addr`.
    pub fn get(&self, addr: u64) -> u32 {
        let mut b = [0; 4];
        self.read_quiet(addr, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn read_quiet(&self, addr: u64, buf: &mut [u8]) -> crate::Result<()> {
        self.check(addr, buf.len(), false)?;
        let p = self.pages.lock();
        for (k, b) in buf.iter_mut().enumerate() {
            let a = addr + k as u64;
            *b = p[&(a / PAGE)][(a % PAGE) as usize];
        }
        Ok(())
    }

    /// A fault at the first page of `[addr, addr + len)` that is not mapped.
    fn check(&self, addr: u64, len: usize, write: bool) -> crate::Result<()> {
        let p = self.pages.lock();
        let end = addr.checked_add(len as u64).ok_or(Error::GpuVmFault { gpu: 0, addr, write })?;
        for n in addr / PAGE..end.div_ceil(PAGE) {
            if !p.contains_key(&n) {
                return Err(Error::GpuVmFault { gpu: 0, addr: (n * PAGE).max(addr), write });
            }
        }
        Ok(())
    }
}

impl Memory for MapMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> crate::Result<()> {
        self.reads.fetch_add(1, Relaxed);
        self.log.lock().push((addr, buf.len()));
        self.read_quiet(addr, buf)
    }

    fn write(&self, addr: u64, data: &[u8]) -> crate::Result<()> {
        self.writes.fetch_add(1, Relaxed);
        self.check(addr, data.len(), true)?;
        let mut p = self.pages.lock();
        for (k, &b) in data.iter().enumerate() {
            let a = addr + k as u64;
            p.get_mut(&(a / PAGE)).unwrap()[(a % PAGE) as usize] = b;
        }
        Ok(())
    }
}

/// RSRC1 with `vgprs` VGPRs (a multiple of 8).
pub fn rsrc1(vgprs: u32) -> u32 {
    0x000c_0000 | (vgprs / 8 - 1)
}

/// RSRC2 with `user` user SGPRs and the workgroup id X enabled.
pub fn rsrc2(user: u32) -> u32 {
    user << 1 | 1 << 7
}

/// A launch of `code` with s[0..4] = `a` and `b` (two 64-bit addresses), `groups`
/// workgroups of `items` work-items each (X only).
pub fn launch(code: u64, a: u64, b: u64, groups: u32, items: u32, vgprs: u32) -> Launch {
    let mut user_data = [0; 16];
    user_data[..4].copy_from_slice(&[a as u32, (a >> 32) as u32, b as u32, (b >> 32) as u32]);
    Launch {
        code,
        rsrc1: rsrc1(vgprs),
        rsrc2: rsrc2(4),
        rsrc3: 0,
        user_data,
        group: [items, 1, 1],
        grid: [groups, 1, 1],
        grid_in_threads: false,
    }
}

/// Runs `l` on `mem` with `workers` threads.
pub fn run(mem: &MapMem, l: &Launch, workers: usize) -> Result<DispatchStats, IsaError> {
    super::run_on(mem, l, &AtomicBool::new(false), workers)
}
