//! Fences: one-shot completion signals carrying a result, shared by the copy engine and
//! the compute queues.

use crate::error::{Error, Result};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
struct FenceState {
    result: Mutex<Option<Result<()>>>,
    cv: Condvar,
}

/// Signalled once, when the work it guards has finished; [`Fence::wait`] returns the work's
/// result (a kernel's result, or a copy chunk's).
#[derive(Clone, Debug)]
pub struct Fence {
    state: Arc<FenceState>,
}

impl Fence {
    /// An unsignalled fence.
    pub(crate) fn new() -> Self {
        Fence { state: Arc::new(FenceState { result: Mutex::new(None), cv: Condvar::new() }) }
    }

    /// Signals the fence. A second signal is ignored (a fence signals once).
    pub(crate) fn signal(&self, r: Result<()>) {
        let mut g = self.state.result.lock();
        if g.is_none() {
            *g = Some(r);
            self.state.cv.notify_all();
        }
    }

    /// Blocks until the fence is signalled; returns the guarded work's result.
    pub fn wait(&self) -> Result<()> {
        let mut g = self.state.result.lock();
        while g.is_none() {
            self.state.cv.wait(&mut g);
        }
        g.clone().expect("signalled")
    }

    /// Like [`Fence::wait`], giving up after `timeout` with `ETIME`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        let mut g = self.state.result.lock();
        let deadline = std::time::Instant::now() + timeout;
        while g.is_none() {
            if self.state.cv.wait_until(&mut g, deadline).timed_out() && g.is_none() {
                return Err(Error::Timeout);
            }
        }
        g.clone().expect("signalled")
    }

    /// Whether the fence has been signalled.
    pub fn is_signaled(&self) -> bool {
        self.state.result.lock().is_some()
    }
}
