//! Model-checked models of usvm's lock protocols, run with shuttle (random and PCT
//! schedulers). Each model mirrors the real functions step by step (the comments name
//! them) and uses the real queue scheduler core (`src/gpu/sched_core.rs`, included with
//! shuttle's primitives). Each states the property it checks, and each has mutation tests:
//! a plausible protocol bug, switched on in the model, that the checker must report (a
//! deadlock, a lost update or a use after free). See docs/RELIABILITY.md.
//!
//! `USVM_MODEL_ITERS` (default 5000) sets the iterations per scheduler,
//! `USVM_MODEL_SEED` the seed (default fixed, so a run is reproducible).

mod kernel;
mod model_a_cpu_fault;
mod model_b_notifier;
mod model_c_restore;
mod model_d_vram;
mod model_e_fork;
mod shim;

use shuttle::scheduler::{PctScheduler, RandomScheduler};
use shuttle::{Config, Runner};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// The real queue-scheduler core of `src/gpu/mod.rs`, with shuttle's primitives.
pub mod sched {
    #[allow(unused_imports)]
    use crate::shim::{AtomicU32, Condvar, Mutex, Ordering};
    include!("../../src/gpu/sched_core.rs");
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Iterations per scheduler.
pub fn iters() -> usize {
    env_num("USVM_MODEL_ITERS", 5000) as usize
}

fn seed() -> u64 {
    env_num("USVM_MODEL_SEED", 0x05f5_e100)
}

/// Checks `f` with the random scheduler, then with PCT (depth 3), `iters()` each.
pub fn check<F: Fn() + Send + Sync + 'static>(f: F) {
    let f = Arc::new(f);
    let g = f.clone();
    Runner::new(RandomScheduler::new_from_seed(seed(), iters()), Config::new()).run(move || g());
    Runner::new(PctScheduler::new_from_seed(seed(), 3, iters()), Config::new()).run(move || f());
}

/// Checks a mutated model, which must fail: returns the checker's failure message, which
/// must contain `expect` ("deadlock", or the text of the property's assertion).
pub fn must_catch<F: Fn() + Send + Sync + 'static>(expect: &str, f: F) {
    // A mutation is caught long before the full iteration count; allow more for longer
    // searches, at least 2000.
    let n = iters().max(2000);
    let f = Arc::new(f);
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let res = catch_unwind(AssertUnwindSafe(|| {
        let g = f.clone();
        Runner::new(RandomScheduler::new_from_seed(seed(), n), Config::new()).run(move || g());
        let g = f.clone();
        Runner::new(PctScheduler::new_from_seed(seed(), 3, n), Config::new()).run(move || g());
    }));
    std::panic::set_hook(prev);
    let err = res.expect_err("the mutation was not caught");
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains(expect), "caught, but not as expected ({expect}): {msg}");
}
