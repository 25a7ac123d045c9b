//! parking_lot-shaped wrappers over shuttle's primitives, so that real code written for
//! parking_lot (`sched_core.rs`) runs under the model checker unchanged.

use shuttle::sync as s;
pub use shuttle::sync::RwLock;
pub use shuttle::sync::atomic::{AtomicU32, Ordering};
pub use shuttle::sync::mpsc;

/// A mutex with parking_lot's API (no poisoning: a panic fails the model anyway).
#[derive(Default)]
pub struct Mutex<T>(s::Mutex<T>);

impl<T> std::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mutex")
    }
}

/// The guard of [`Mutex`]; `None` only while a condition variable waits with it.
pub struct MutexGuard<'a, T>(Option<s::MutexGuard<'a, T>>);

impl<T> Mutex<T> {
    pub fn new(v: T) -> Self {
        Mutex(s::Mutex::new(v))
    }
    pub fn lock(&self) -> MutexGuard<'_, T> {
        MutexGuard(Some(self.0.lock().unwrap_or_else(|e| e.into_inner())))
    }
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.0.try_lock().ok().map(|g| MutexGuard(Some(g)))
    }
}

impl<T> std::ops::Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_ref().expect("guard")
    }
}

impl<T> std::ops::DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.as_mut().expect("guard")
    }
}

/// A condition variable with parking_lot's API.
#[derive(Default)]
pub struct Condvar(s::Condvar);

impl std::fmt::Debug for Condvar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Condvar")
    }
}

impl Condvar {
    pub fn new() -> Self {
        Condvar(s::Condvar::new())
    }
    pub fn wait<T>(&self, g: &mut MutexGuard<'_, T>) {
        let inner = g.0.take().expect("guard");
        g.0 = Some(self.0.wait(inner).unwrap_or_else(|e| e.into_inner()));
    }
    pub fn notify_all(&self) {
        self.0.notify_all();
    }
}
