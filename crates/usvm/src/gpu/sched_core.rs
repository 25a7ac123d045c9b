// The queue-scheduling core of one GPU: eviction is reference counted, and evicting waits
// until no device access is in flight (as quiescing a real queue waits for its waves).
//
// Included by `gpu/mod.rs` with parking_lot's `Mutex` and `Condvar` and std's `AtomicU32`
// and `Ordering`, and by the shuttle models in `tests/protocols` with model-checked
// primitives of the same API, so the models run this very code. The including module
// provides those four names; this file names nothing else.

/// Queue scheduling state of one GPU: eviction is reference counted, and evicting waits
/// until no device access is in flight (as quiescing a real queue waits for its waves).
#[derive(Debug, Default)]
pub(crate) struct Sched {
    /// Mirror of `count` for the lock-free check on every access.
    evicted: AtomicU32,
    /// Device accesses between `enter` and `leave`.
    active: AtomicU32,
    count: Mutex<u32>,
    cv: Condvar,
}

impl Sched {
    /// Evicts (reference counted), then waits until no device access is in flight.
    pub(crate) fn evict(&self) {
        let mut c = self.count.lock();
        *c += 1;
        self.evicted.store(*c, Ordering::SeqCst);
        while self.active.load(Ordering::SeqCst) > 0 {
            self.cv.wait(&mut c);
        }
    }

    /// Evicts without waiting: succeeds only when no device access is in flight (and then
    /// none can start until `restore`); otherwise changes nothing. For a thread that must
    /// never wait for a device access, since one may be waiting for it.
    pub(crate) fn try_evict(&self) -> bool {
        let mut c = self.count.lock();
        *c += 1;
        self.evicted.store(*c, Ordering::SeqCst);
        // An access counts itself active before it looks at `evicted`: if none is active
        // now, every later one sees the eviction and waits.
        if self.active.load(Ordering::SeqCst) == 0 {
            return true;
        }
        *c -= 1;
        self.evicted.store(*c, Ordering::SeqCst);
        if *c == 0 {
            self.cv.notify_all();
        }
        false
    }

    /// Drops one eviction; the last one lets the waiting accesses go.
    pub(crate) fn restore(&self) {
        let mut c = self.count.lock();
        debug_assert!(*c > 0, "restore without eviction");
        *c = c.saturating_sub(1);
        self.evicted.store(*c, Ordering::SeqCst);
        if *c == 0 {
            self.cv.notify_all();
        }
    }

    /// Whether the queues are evicted.
    pub(crate) fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire) > 0
    }

    /// Marks a device access in flight, first waiting while the queues are evicted.
    pub(crate) fn enter(&self) {
        loop {
            self.active.fetch_add(1, Ordering::SeqCst);
            if self.evicted.load(Ordering::SeqCst) == 0 {
                return;
            }
            self.leave();
            let mut c = self.count.lock();
            while *c > 0 {
                self.cv.wait(&mut c);
            }
        }
    }

    /// Ends a device access; wakes an eviction waiting for it.
    pub(crate) fn leave(&self) {
        if self.active.fetch_sub(1, Ordering::SeqCst) == 1 && self.evicted.load(Ordering::SeqCst) > 0 {
            let _g = self.count.lock();
            self.cv.notify_all();
        }
    }
}
