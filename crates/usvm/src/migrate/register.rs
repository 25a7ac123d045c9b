//! Watching the application's memory with the instance's userfaultfd.

use super::*;
use crate::addr::Pages;

/// Registers the anonymous private memory of `r` with the userfaultfd (once per range):
/// from then on its missing pages fault to usvm, and the application's munmap, mremap and
/// MADV_DONTNEED of it are reported.
pub fn register(engine: &Engine, r: &mut SvmRange) -> Result<()> {
    if r.registered {
        return Ok(());
    }
    register_interval(engine, r.pages())?;
    r.registered = true;
    Ok(())
}

/// Registers the anonymous private memory of the pages `[first, last]`, which this
/// instance does not watch yet, with the userfaultfd. `EADDRINUSE` when another instance
/// watches some of it; on any error, what this call registered is unregistered again, so
/// a refused call leaves nothing behind (that memory stayed watched by this instance, and
/// the other could never take it).
pub fn register_interval(engine: &Engine, pages: Pages) -> Result<()> {
    let mut done: Vec<(usize, usize)> = Vec::new();
    let mut result = Ok(());
    for piece in vma::mapped_pieces(pages) {
        let p = match piece {
            Ok(p) => p,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        if p.vma.migratable() {
            let (addr, len) = (p.first.addr(), (p.last - p.first + 1) as usize * PAGE_SIZE);
            match engine.uffd.register(addr, len) {
                Ok(()) => done.push((addr, len)),
                Err(e) => {
                    result = Err(match e {
                        Error::Sys { errno: libc::EBUSY, .. } => {
                            Error::AddressInUse { addr: p.first.addr() as u64 }
                        }
                        e => e,
                    });
                    break;
                }
            }
        }
    }
    if result.is_err() {
        for (addr, len) in done {
            let _ = engine.uffd.unregister(addr, len);
        }
    }
    result
}

/// Undoes [`register_interval`] for `[first, last]` (a refused call rolling back).
pub fn unregister_interval(engine: &Engine, pages: Pages) {
    for p in vma::mapped_pieces(pages).map_while(Result::ok) {
        if p.vma.migratable() {
            let len = (p.last - p.first + 1) as usize * PAGE_SIZE;
            let _ = engine.uffd.unregister(p.first.addr(), len);
        }
    }
}
