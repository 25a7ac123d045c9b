//! The SMI event file of a GPU (`hsaKmtOpenSMI`, KFD's `AMDKFD_IOC_SMI_EVENTS`): a file
//! descriptor the application owns. It writes an 8-byte mask (bit `id - 1` for event `id`)
//! and reads the kernel's text records of that GPU, one per line; `poll(2)` works. Here the
//! descriptor is one end of a socket pair; a thread serves the other end: for each event
//! of the instance it first takes the masks written so far, then writes the record if the
//! mask lets it through. It sleeps while nothing happens and ends when the application has
//! closed its end (at the next event) or the instance goes.

use super::KfdResult;
use crate::attr::GpuId;
use crate::svm::Svm;
use crate::sys::doorbell::SocketEnd;

/// Records of every process (`KFD_SMI_EVENT_ALL_PROCESS`, bit 63); usvm has only its own.
pub const ALL_PROCESS_BIT: u64 = 1 << 63;

/// Whether `mask` lets event `id` through.
pub fn wanted(mask: u64, id: u32) -> bool {
    (1..=63).contains(&id) && mask & (1 << (id - 1)) != 0
}

/// Opens an SMI file for GPU `gpu` of `svm`; returns the application's descriptor.
pub fn open(svm: &Svm, gpu: GpuId) -> KfdResult<i32> {
    let (ours, theirs) = SocketEnd::pair()?;
    // Subscribed before the descriptor is handed out: whatever happens after the mask is
    // written is never missed.
    let stream = svm.subscribe();
    std::thread::Builder::new()
        .name("usvm-smi".into())
        .spawn(move || {
            let mut mask = 0u64;
            while let Some(ev) = stream.recv() {
                match ours.pending_u64s() {
                    Some(words) => mask = words.last().copied().unwrap_or(mask),
                    None => return,
                }
                if ev.kind.gpu() == Some(gpu)
                    && wanted(mask, ev.kind.id())
                    && !ours.write_all(format!("{ev}\n").as_bytes())
                {
                    return;
                }
            }
        })
        .map_err(|e| crate::Error::Sys { call: "spawn", errno: e.raw_os_error().unwrap_or(libc::EAGAIN) })?;
    Ok(theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_bits() {
        assert!(wanted(1 << 4, 5));
        assert!(!wanted(1 << 4, 6));
        assert!(!wanted(u64::MAX, 0));
        assert!(wanted(ALL_PROCESS_BIT | 1, 1));
    }
}
