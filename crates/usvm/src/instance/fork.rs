//! fork: a child must read correct data for every page (section 8).

use super::SvmInner;
use crate::sys;
use parking_lot::Mutex;
use std::sync::Arc;

/// Every live instance of the process, for fork.
static LIVE: Mutex<Vec<std::sync::Weak<SvmInner>>> = Mutex::new(Vec::new());
/// The instances whose lock the forking thread holds across the fork.
static HELD: Mutex<Vec<Arc<SvmInner>>> = Mutex::new(Vec::new());
static AT_FORK: std::sync::Once = std::sync::Once::new();

/// Makes `inner` known to the fork handlers (installed with the first instance).
///
/// fork: a child must read correct data for every page, but a child's copy of the address
/// space has no usvm threads and no userfaultfd registration (none is inherited without
/// EVENT_FORK), so data left in VRAM would read as zero there. Before the fork, every
/// instance moves its VRAM data back to RAM and keeps its lock until the fork is done, so
/// that nothing migrates in between: the child gets all the data, in plain RAM, and must
/// not use the instances it inherited. The parent goes on, with its data in RAM (later
/// prefetches and faults move it again).
pub(crate) fn track_for_fork(inner: &Arc<SvmInner>) {
    let mut live = LIVE.lock();
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(inner));
    drop(live);
    AT_FORK.call_once(|| sys::at_fork(before_fork, after_fork, after_fork));
}

extern "C" fn before_fork() {
    let live: Vec<Arc<SvmInner>> = LIVE.lock().iter().filter_map(|w| w.upgrade()).collect();
    let mut held = HELD.lock();
    for inner in live {
        let mut st = inner.lock_state();
        inner.evacuate_locked(&mut st, crate::history::Cause::Fork);
        inner.engine.drain_pool();
        std::mem::forget(st); // held until after_fork
        held.push(inner);
    }
}

extern "C" fn after_fork() {
    for inner in HELD.lock().drain(..) {
        sys::unlock_held(&inner.state);
    }
}
