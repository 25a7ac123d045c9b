//! A dispatch: its workgroups and waves, their initial registers, and the worker threads
//! that run resident waves round-robin in time slices.
//!
//! Waves of one dispatch only meet through memory, and some spin until another wave or the
//! host writes a flag (kfdtest's QueueTest), so no wave runs to completion before the others
//! get a turn. At most [`MAX_RESIDENT_WAVES`] waves exist at once; a worker takes whole
//! workgroups (so `s_barrier` is local to it) from a shared counter as its waves end.

use super::code::CodeCache;
use super::mem::{Memory, Scratch};
use super::wave::{Flow, LANES, MAX_VGPRS, Vgpr, Wave};
use super::{DispatchStats, IsaError, Launch};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Instructions a wave runs before the next resident wave gets its turn.
pub const SLICE: u32 = 256;
/// Waves resident at once, all workers together.
pub const MAX_RESIDENT_WAVES: usize = 2048;
/// VGPR bytes resident at once, all workers together.
pub const MAX_RESIDENT_VGPR_BYTES: usize = 64 << 20;
/// Worker threads of one dispatch, at most.
pub const MAX_WORKERS: usize = 4;
/// Work-items of one workgroup, at most (as the hardware).
pub const MAX_GROUP_ITEMS: u64 = 1024;

/// The shape of a dispatch.
#[derive(Clone, Debug)]
pub(super) struct Shape {
    /// Workgroups per axis.
    groups: [u64; 3],
    /// Work-items per workgroup per axis (a full group).
    group: [u64; 3],
    /// Work-items of the grid per axis (partial last groups), when counted in work-items.
    items: Option<[u64; 3]>,
    /// Waves per workgroup.
    pub waves_per_group: u64,
    /// VGPRs per wave.
    pub vgprs: usize,
}

impl Shape {
    pub(super) fn new(l: &Launch) -> Result<Self, IsaError> {
        let group = l.group.map(|n| u64::from(n.max(1)));
        let items_per_group = group.iter().product::<u64>();
        if items_per_group > MAX_GROUP_ITEMS {
            let why = format!("a workgroup of {items_per_group} work-items (at most {MAX_GROUP_ITEMS})");
            return Err(IsaError::Illegal { pc: l.code, why });
        }
        let grid = l.grid.map(u64::from);
        let groups =
            std::array::from_fn(|k| if l.grid_in_threads { grid[k].div_ceil(group[k]) } else { grid[k] });
        let vgprs = ((l.rsrc1 as usize & 0x3f) + 1) * 8;
        Ok(Shape {
            groups,
            group,
            items: l.grid_in_threads.then_some(grid),
            waves_per_group: items_per_group.div_ceil(LANES as u64),
            vgprs: vgprs.min(MAX_VGPRS),
        })
    }

    /// Workgroups of the dispatch.
    pub(super) fn total_groups(&self) -> u64 {
        self.groups.iter().product()
    }

    /// Initial state of wave `w` of workgroup `g` (a dispatch-wide index, X fastest).
    pub(super) fn init(&self, l: &Launch, g: u64, w: u64, wave: &mut Wave) {
        let gid = [
            g % self.groups[0],
            (g / self.groups[0]) % self.groups[1],
            g / (self.groups[0] * self.groups[1]),
        ];
        // Work-items of this group per axis: the last group of an axis may be partial.
        let have: [u64; 3] = std::array::from_fn(|k| match self.items {
            Some(items) => (items[k] - gid[k] * self.group[k]).min(self.group[k]),
            None => self.group[k],
        });
        let [nx, ny, _] = self.group;
        let mut exec = 0u64;
        let mut v0: Vgpr = [0; LANES];
        for (lane, v) in v0.iter_mut().enumerate() {
            let t = w * LANES as u64 + lane as u64;
            // 1-D groups (the common case) need no divisions.
            let (x, y, z) =
                if ny * self.group[2] == 1 { (t, 0, 0) } else { (t % nx, (t / nx) % ny, t / (nx * ny)) };
            if x < have[0] && y < have[1] && z < have[2] {
                exec |= 1 << lane;
                // gfx90a packs the work-item ids into v0 (10 bits each).
                *v = (x | y << 10 | z << 20) as u32;
            }
        }
        wave.pc = l.code;
        wave.s = [0; super::wave::SGPRS];
        wave.v.clear();
        wave.v.resize(self.vgprs, [0; LANES]);
        wave.v[0] = v0;
        wave.exec = exec;
        wave.vcc = 0;
        wave.scc = false;
        wave.m0 = 0;
        wave.group = g;
        wave.at_barrier = false;
        // SGPRs: the user data, then each enabled workgroup id, then the workgroup info.
        let user = ((l.rsrc2 >> 1) & 0x1f) as usize;
        wave.s[..user.min(16)].copy_from_slice(&l.user_data[..user.min(16)]);
        let mut next = user;
        for (k, &id) in gid.iter().enumerate() {
            if l.rsrc2 >> (7 + k) & 1 != 0 {
                wave.s[next] = id as u32;
                next += 1;
            }
        }
        if l.rsrc2 >> 10 & 1 != 0 {
            // TG_SIZE: waves in the group (5:0), this wave's index in it (11:6).
            wave.s[next] = (self.waves_per_group | w << 6) as u32;
        }
    }
}

/// What the workers share.
struct Shared<'a> {
    mem: &'a dyn Memory,
    launch: &'a Launch,
    shape: Shape,
    stop: &'a AtomicBool,
    next_group: AtomicU64,
    failed: AtomicBool,
    error: Mutex<Option<IsaError>>,
    waves: AtomicU64,
    instructions: AtomicU64,
    /// Resident waves per worker, at most.
    cap: usize,
}

impl Shared<'_> {
    fn fail(&self, e: IsaError) {
        let mut g = self.error.lock();
        if g.is_none() {
            *g = Some(e);
        }
        self.failed.store(true, Relaxed);
    }
}

/// Runs every wave of `launch` against `mem` with at most `workers` threads.
pub(super) fn run(
    mem: &dyn Memory,
    launch: &Launch,
    stop: &AtomicBool,
    workers: usize,
) -> Result<DispatchStats, IsaError> {
    let shape = Shape::new(launch)?;
    let total = shape.total_groups();
    let workers = (workers.clamp(1, MAX_WORKERS) as u64).min(total.max(1)) as usize;
    let by_memory = MAX_RESIDENT_VGPR_BYTES / (shape.vgprs * LANES * 4);
    let cap = (MAX_RESIDENT_WAVES.min(by_memory) / workers).max(shape.waves_per_group as usize);
    let sh = Shared {
        mem,
        launch,
        shape,
        stop,
        next_group: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
        waves: AtomicU64::new(0),
        instructions: AtomicU64::new(0),
        cap,
    };
    if workers == 1 {
        worker(&sh);
    } else {
        std::thread::scope(|s| {
            let spawned: Vec<_> = (0..workers)
                .filter_map(|k| {
                    let sh = &sh;
                    let t = std::thread::Builder::new()
                        .name(format!("usvm-wave{k}"))
                        .spawn_scoped(s, move || worker(sh));
                    t.map_err(|_| {
                        sh.fail(IsaError::Illegal {
                            pc: launch.code,
                            why: "cannot start a wave worker".into(),
                        })
                    })
                    .ok()
                })
                .collect();
            // Joined one by one: a scope's end only waits for the closures, and the
            // threads would outlive the dispatch for a moment.
            for t in spawned {
                if t.join().is_err() {
                    sh.fail(IsaError::Illegal { pc: launch.code, why: "a wave worker panicked".into() });
                }
            }
        });
    }
    match sh.error.into_inner() {
        Some(e) => Err(e),
        None => {
            Ok(DispatchStats { waves: sh.waves.into_inner(), instructions: sh.instructions.into_inner() })
        }
    }
}

/// One worker: takes workgroups while it has room, runs its resident waves round-robin.
fn worker(sh: &Shared<'_>) {
    let mut code = CodeCache::default();
    let mut buf = Scratch::default();
    let mut resident: Vec<Wave> = Vec::new();
    let mut spare: Vec<Wave> = Vec::new();
    let mut exhausted = false;
    loop {
        let wpg = sh.shape.waves_per_group as usize;
        while !exhausted && (resident.is_empty() || resident.len() + wpg <= sh.cap) {
            let g = sh.next_group.fetch_add(1, Relaxed);
            if g >= sh.shape.total_groups() {
                exhausted = true;
                break;
            }
            for w in 0..wpg as u64 {
                let mut wave = spare.pop().unwrap_or_else(|| Wave::new(0, 0));
                sh.shape.init(sh.launch, g, w, &mut wave);
                resident.push(wave);
            }
        }
        if resident.is_empty() {
            return;
        }
        let mut k = 0;
        while k < resident.len() {
            if sh.stop.load(Relaxed) {
                sh.fail(IsaError::Stopped);
            }
            if sh.failed.load(Relaxed) {
                return;
            }
            sh.mem.pause_point();
            match slice(sh, &mut resident[k], &mut code, &mut buf) {
                Ok(true) => {
                    sh.waves.fetch_add(1, Relaxed);
                    spare.push(resident.swap_remove(k));
                }
                Ok(false) => k += 1,
                Err(e) => return sh.fail(e),
            }
        }
        release_barriers(&mut resident);
        std::thread::yield_now();
    }
}

/// Runs one time slice of `wave`; true when the wave has ended.
fn slice(
    sh: &Shared<'_>,
    wave: &mut Wave,
    code: &mut CodeCache,
    buf: &mut Scratch,
) -> Result<bool, IsaError> {
    if wave.at_barrier {
        return Ok(false);
    }
    let mut n = 0;
    let r = loop {
        if n == SLICE || sh.failed.load(Relaxed) {
            break Ok(false);
        }
        n += 1;
        match wave.step(code, sh.mem, buf) {
            Ok(Flow::Ended) => break Ok(true),
            Ok(Flow::Barrier) => {
                wave.at_barrier = true;
                break Ok(false);
            }
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    sh.instructions.fetch_add(u64::from(n), Relaxed);
    r
}

/// Lets the waves of every workgroup whose resident waves all wait at a barrier go on.
fn release_barriers(resident: &mut [Wave]) {
    let waiting: Vec<u64> = resident.iter().filter(|w| w.at_barrier).map(|w| w.group).collect();
    for g in waiting {
        if resident.iter().filter(|w| w.group == g).all(|w| w.at_barrier) {
            for w in resident.iter_mut().filter(|w| w.group == g) {
                w.at_barrier = false;
            }
        }
    }
}
