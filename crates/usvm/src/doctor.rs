//! `usvm doctor`: what this machine gives usvm, and what follows from it.
//!
//! [`examine`] asks the kernel what it offers (a fresh userfaultfd's features and whether
//! it serves kernel-mode faults, transparent huge pages, memory limits, the kernel release),
//! builds an instance of the given [`Config`] and moves a few MiB to VRAM and back through
//! every path (CPU fault, GPU read, the kernel's own access through `write(2)`), and turns
//! what it found into [`Check`]s, each with what it means for an application and, where
//! something is missing, what to change. [`Report::can_run`] is the verdict.
//!
//! Nothing is changed on the machine; every system call is in `sys/probe.rs`.

mod checks;
mod parse;

use crate::sys::{self, probe};
use crate::{Attr, GpuId, Location, Residency, Svm};
use checks::checks;
use parse::{CAP_SYS_PTRACE, bytes, memory_cgroup, read};
pub use parse::{
    cgroup_dirs, errno_name, parse_cap_eff, parse_cgroup_limit, parse_kernel_version, parse_thp,
};

/// The first kernel with `UFFDIO_MOVE` (`UFFD_FEATURE_MOVE`), which usvm's migrations need.
pub const MOVE_MIN_KERNEL: (u32, u32) = (6, 8);
/// The XNACK-off accounting limit of an instance built without
/// `SvmBuilder::system_memory_limit`: this many sixteenths of physical memory.
pub const XNACK_OFF_LIMIT_SIXTEENTHS: u64 = 15;
/// Bytes the live check moves to VRAM and back (two default granules).
pub const LIVE_CHECK_BYTES: usize = 4 << 20;

/// The instance to examine: the GPUs whose XNACK mode the report explains, and the one
/// the live check builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Emulated GPUs.
    pub gpus: usize,
    /// VRAM per GPU, bytes.
    pub vram_bytes: u64,
    /// XNACK (GPU retry faults) on.
    pub xnack: bool,
    /// Default granularity, log2 pages.
    pub granularity: u8,
}

impl Default for Config {
    /// The library's defaults (`Svm::builder()`).
    fn default() -> Self {
        Config {
            gpus: crate::DEFAULT_GPUS,
            vram_bytes: crate::DEFAULT_VRAM_BYTES,
            xnack: false,
            granularity: crate::DEFAULT_GRANULARITY,
        }
    }
}

/// How much of usvm works here, by the userfaultfd this process can open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every fault is served, kernel-mode ones included: `read(2)` / `write(2)` into
    /// VRAM-resident memory work.
    AllFaults,
    /// Only user-mode faults (`UFFD_USER_MODE_ONLY`): CPU loads and stores work, system calls
    /// on VRAM-resident memory fail with `EFAULT`.
    UserModeOnly,
    /// No usable userfaultfd: usvm cannot run.
    Unavailable,
}

impl Mode {
    /// A short name: "all faults", "user-mode faults only", "unavailable".
    pub fn name(self) -> &'static str {
        match self {
            Mode::AllFaults => "all faults",
            Mode::UserModeOnly => "user-mode faults only",
            Mode::Unavailable => "unavailable",
        }
    }
}

/// What usvm needs a userfaultfd feature for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Without it usvm cannot run.
    Required,
    /// The KFD model (`usvm::kfd`, libhsakmt) needs it for SDMA queues.
    Kfd,
    /// Not used.
    Unused,
}

/// A `UFFD_FEATURE_*` bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// The name without `UFFD_FEATURE_` (`PAGEFAULT_FLAG_WP` is shown as `WP`).
    pub name: &'static str,
    /// The bit number.
    pub bit: u32,
    /// Whether the kernel offers it.
    pub present: bool,
    /// What usvm needs it for.
    pub need: Need,
    /// What it is used for (empty when unused).
    pub used_for: &'static str,
}

/// The `UFFD_FEATURE_*` bits of `linux/userfaultfd.h`: name, bit, need, use.
const FEATURES: [(&str, u32, Need, &str); 17] = [
    ("WP", 0, Need::Kfd, "write-protect faults: the KFD model's doorbells (SDMA queues)"),
    ("EVENT_FORK", 1, Need::Unused, ""),
    ("EVENT_REMAP", 2, Need::Required, "the application's mremap of SVM memory"),
    ("EVENT_REMOVE", 3, Need::Required, "the application's MADV_DONTNEED of SVM memory"),
    ("MISSING_HUGETLBFS", 4, Need::Unused, ""),
    ("MISSING_SHMEM", 5, Need::Unused, ""),
    ("EVENT_UNMAP", 6, Need::Required, "the application's munmap of SVM memory"),
    ("SIGBUS", 7, Need::Unused, ""),
    ("THREAD_ID", 8, Need::Required, "which thread faulted (SIGBUS for a fault that cannot be served)"),
    ("MINOR_HUGETLBFS", 9, Need::Unused, ""),
    ("MINOR_SHMEM", 10, Need::Unused, ""),
    ("EXACT_ADDRESS", 11, Need::Unused, ""),
    ("WP_HUGETLBFS_SHMEM", 12, Need::Unused, ""),
    ("WP_UNPOPULATED", 13, Need::Unused, ""),
    ("POISON", 14, Need::Unused, ""),
    ("WP_ASYNC", 15, Need::Unused, ""),
    ("MOVE", 16, Need::Required, "UFFDIO_MOVE: pages in and out of the application (every migration)"),
];

/// The features of `bits`, every known one listed (present or not).
pub fn features(bits: u64) -> Vec<Feature> {
    FEATURES
        .iter()
        .map(|&(name, bit, need, used_for)| Feature {
            name,
            bit,
            present: bits >> bit & 1 == 1,
            need,
            used_for,
        })
        .collect()
}

/// The userfaultfd this process can have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Userfaultfd {
    /// What works.
    pub mode: Mode,
    /// Why one for every fault (kernel-mode faults included) could not be had: the call
    /// that failed (`userfaultfd` or `UFFDIO_API`) and its errno.
    pub all_faults_error: Option<(&'static str, i32)>,
    /// Why one for user-mode faults only could not be had.
    pub user_mode_error: Option<(&'static str, i32)>,
    /// The feature bits offered (0 when none could be opened).
    pub feature_bits: u64,
    /// Every known feature.
    pub features: Vec<Feature>,
    /// `/proc/sys/vm/unprivileged_userfaultfd` (`None`: not there).
    pub unprivileged_sysctl: Option<bool>,
    /// The effective user id.
    pub euid: u32,
    /// Whether the process has `CAP_SYS_PTRACE` (`None`: unknown).
    pub cap_sys_ptrace: Option<bool>,
    /// Whether a write-protected doorbell page (the KFD model's SDMA queues) can be made.
    pub doorbell: Result<(), String>,
}

impl Userfaultfd {
    /// Whether feature `name` is offered.
    pub fn has(&self, name: &str) -> bool {
        self.features.iter().any(|f| f.name == name && f.present)
    }

    /// The required features that are missing.
    pub fn missing_required(&self) -> Vec<&'static str> {
        self.features.iter().filter(|f| f.need == Need::Required && !f.present).map(|f| f.name).collect()
    }
}

/// Transparent huge pages (`/sys/kernel/mm/transparent_hugepage`): the selected values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thp {
    /// `enabled`: always, madvise or never (`None`: no THP in this kernel).
    pub enabled: Option<String>,
    /// `defrag`: always, defer, defer+madvise, madvise or never.
    pub defrag: Option<String>,
}

/// This process's memory cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// 1 or 2.
    pub version: u8,
    /// The cgroup's path (from `/proc/self/cgroup`).
    pub path: String,
    /// The smallest limit of it and its ancestors, bytes (`None`: no limit).
    pub limit: Option<u64>,
}

/// Memory and its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memory {
    /// Physical memory, bytes.
    pub physical_bytes: u64,
    /// The memory cgroup (`None`: none found).
    pub cgroup: Option<Cgroup>,
    /// `RLIMIT_AS` (`None`: unlimited).
    pub rlimit_as: Option<u64>,
    /// `RLIMIT_MEMLOCK` (`None`: unlimited).
    pub rlimit_memlock: Option<u64>,
    /// The XNACK-off accounting limit of a default instance: 15/16 of physical memory.
    pub xnack_off_limit: u64,
    /// VRAM of all emulated GPUs together (it is this process's memory once used).
    pub vram_total: u64,
}

/// The kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
    /// Major, minor, patch, when the release starts with them.
    pub version: Option<(u32, u32, u32)>,
}

/// An emulated GPU and what its XNACK mode means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuMode {
    /// The GPU id.
    pub id: GpuId,
    /// Its VRAM, bytes.
    pub vram_bytes: u64,
    /// XNACK on.
    pub xnack: bool,
    /// What follows for applications.
    pub meaning: String,
}

/// The live check: an instance of the [`Config`] built, data moved to VRAM and back.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveCheck {
    /// Building the instance (`Err`: the error).
    pub build: Result<(), String>,
    /// The prefetch to the first GPU's VRAM put every page there.
    pub to_vram: Result<(), String>,
    /// The GPU read the data back from VRAM.
    pub gpu_read: Result<(), String>,
    /// A CPU load faulted a granule back to RAM, data intact.
    pub cpu_fault: Result<(), String>,
    /// `write(2)` from VRAM-resident memory (a kernel-mode fault), data intact.
    pub kernel_fault: Result<(), String>,
    /// Milliseconds the whole check took.
    pub millis: f64,
}

/// How a finding weighs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// As usvm wants it.
    Ok,
    /// Worth knowing; nothing to change.
    Note,
    /// usvm runs, but something does not work or is slower; the fix says what to change.
    Warn,
    /// usvm cannot run; the fix says what to change.
    Fail,
}

impl Level {
    /// "ok", "note", "warn", "FAIL".
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Note => "note",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was looked at ("kernel", "userfaultfd", "huge pages", ...).
    pub topic: &'static str,
    /// How it weighs.
    pub level: Level,
    /// What was found.
    pub found: String,
    /// What it means for usvm and its applications.
    pub meaning: String,
    /// What to change (warnings and failures).
    pub fix: Option<String>,
}

/// Everything [`examine`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The instance examined.
    pub config: Config,
    /// The kernel.
    pub kernel: Kernel,
    /// The userfaultfd.
    pub uffd: Userfaultfd,
    /// Transparent huge pages.
    pub thp: Thp,
    /// Memory limits.
    pub memory: Memory,
    /// The emulated GPUs and their XNACK mode.
    pub gpus: Vec<GpuMode>,
    /// The live check.
    pub live: LiveCheck,
    /// The findings, in the order shown.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether usvm can run here (no finding is a failure).
    pub fn can_run(&self) -> bool {
        self.checks.iter().all(|c| c.level != Level::Fail)
    }

    /// The findings of a level.
    pub fn at(&self, level: Level) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(move |c| c.level == level)
    }

    /// The verdict: "usvm can run here" (with the number of warnings, if any), or "usvm
    /// cannot run here: " and what to change.
    pub fn verdict(&self) -> String {
        if !self.can_run() {
            let fixes: Vec<String> = self.at(Level::Fail).filter_map(|c| c.fix.clone()).collect();
            return format!("usvm cannot run here: {}", fixes.join("; "));
        }
        match self.at(Level::Warn).count() {
            0 => "usvm can run here".to_string(),
            n => format!("usvm can run here, with {n} warning(s) above"),
        }
    }

    /// The effective mode in one line.
    pub fn mode_line(&self) -> String {
        let thp = match self.thp.enabled.as_deref() {
            Some("always" | "madvise") => "2 MiB pages move as one",
            Some(_) => "no huge pages: pages move one by one",
            None => "no transparent huge pages",
        };
        match self.uffd.mode {
            Mode::AllFaults if self.can_run() => {
                format!(
                    "full: every fault served, kernel-mode faults included (read(2)/write(2) work); {thp}"
                )
            }
            Mode::UserModeOnly if self.can_run() => {
                format!("user-mode faults only: read(2)/write(2) into VRAM-resident memory fail; {thp}")
            }
            _ => "none: usvm cannot run".to_string(),
        }
    }
}

/// Examines this machine for an instance of `cfg`.
pub fn examine(cfg: &Config) -> Report {
    let release = probe::kernel_release();
    let kernel = Kernel { version: parse_kernel_version(&release), release };
    let uffd = probe_userfaultfd();
    let thp = Thp {
        enabled: read("/sys/kernel/mm/transparent_hugepage/enabled").and_then(|s| parse_thp(&s)),
        defrag: read("/sys/kernel/mm/transparent_hugepage/defrag").and_then(|s| parse_thp(&s)),
    };
    let physical = sys::physical_memory_bytes();
    let memory = Memory {
        physical_bytes: physical,
        cgroup: memory_cgroup(),
        rlimit_as: probe::rlimit(probe::Rlimit::AddressSpace),
        rlimit_memlock: probe::rlimit(probe::Rlimit::Memlock),
        xnack_off_limit: physical / 16 * XNACK_OFF_LIMIT_SIXTEENTHS,
        vram_total: cfg.vram_bytes.saturating_mul(cfg.gpus as u64),
    };
    let (live, ids) = if uffd.mode == Mode::Unavailable {
        let no = || Err("not tried: no userfaultfd".to_string());
        let live = LiveCheck {
            build: no(),
            to_vram: no(),
            gpu_read: no(),
            cpu_fault: no(),
            kernel_fault: no(),
            millis: 0.0,
        };
        (live, None)
    } else {
        live_check(cfg)
    };
    let ids = ids.unwrap_or_else(|| (0..cfg.gpus).map(|i| GpuId(0x1111 * (i as u32 + 1))).collect());
    let gpus = ids
        .into_iter()
        .map(|id| GpuMode {
            id,
            vram_bytes: cfg.vram_bytes,
            xnack: cfg.xnack,
            meaning: xnack_meaning(cfg, &memory),
        })
        .collect();
    let mut r = Report { config: cfg.clone(), kernel, uffd, thp, memory, gpus, live, checks: Vec::new() };
    r.checks = checks(&r);
    r
}

/// What an emulated GPU's XNACK mode means for the application.
pub fn xnack_meaning(cfg: &Config, mem: &Memory) -> String {
    if cfg.xnack {
        "XNACK on: a GPU access to memory not mapped for it is a retry fault that usvm serves \
         (it migrates the granule to this GPU's VRAM, or maps it in place with ACCESS_IN_PLACE) \
         and the GPU kernel goes on; no prefetch is needed, but every first touch costs a \
         fault: prefetch data that kernels will use"
            .to_string()
    } else {
        format!(
            "XNACK off: a GPU access to memory not mapped for it is a fatal fault (VMFAULT, the \
             queue stops); prefetch or map (SET_ATTR ACCESS or ACCESS_IN_PLACE) before launching \
             kernels; SVM ranges count against the accounting limit of {} (15/16 of RAM), and a \
             migration evicts the GPU's queues while it runs",
            bytes(mem.xnack_off_limit)
        )
    }
}

fn probe_userfaultfd() -> Userfaultfd {
    let all = probe::userfaultfd_api(false);
    let user = probe::userfaultfd_api(true);
    let mode = match (&all, &user) {
        (Ok(_), _) => Mode::AllFaults,
        (_, Ok(_)) => Mode::UserModeOnly,
        _ => Mode::Unavailable,
    };
    let feature_bits = all.or(user).map(|a| a.features).unwrap_or(0);
    let status = read("/proc/self/status").unwrap_or_default();
    Userfaultfd {
        mode,
        all_faults_error: all.err(),
        user_mode_error: user.err(),
        feature_bits,
        features: features(feature_bits),
        unprivileged_sysctl: read("/proc/sys/vm/unprivileged_userfaultfd").map(|s| s.trim() == "1"),
        euid: probe::euid(),
        cap_sys_ptrace: parse_cap_eff(&status).map(|caps| caps >> CAP_SYS_PTRACE & 1 == 1),
        doorbell: sys::doorbell::Doorbell::new().map(|_| ()).map_err(|e| e.to_string()),
    }
}

/// Builds an instance of `cfg` and moves [`LIVE_CHECK_BYTES`] to the first GPU's VRAM and
/// back: a GPU read, then a CPU load (user-mode fault) on the second granule, then
/// `write(2)` from the first (kernel-mode fault). Returns the GPU ids when it was built.
fn live_check(cfg: &Config) -> (LiveCheck, Option<Vec<GpuId>>) {
    let t = std::time::Instant::now();
    let not = |what: &str| Err(format!("not tried: {what}"));
    let mut live = LiveCheck {
        build: Ok(()),
        to_vram: not("no instance"),
        gpu_read: not("no instance"),
        cpu_fault: not("no instance"),
        kernel_fault: not("no instance"),
        millis: 0.0,
    };
    let svm = Svm::builder()
        .gpus(cfg.gpus)
        .vram_bytes(cfg.vram_bytes)
        .xnack(cfg.xnack)
        .default_granularity(cfg.granularity)
        .build();
    let svm = match svm {
        Ok(s) => s,
        Err(e) => {
            live.build = Err(e.to_string());
            live.millis = t.elapsed().as_secs_f64() * 1e3;
            return (live, None);
        }
    };
    let ids = svm.gpu_ids();
    round_trip(&svm, ids[0], &mut live);
    drop(svm);
    live.millis = t.elapsed().as_secs_f64() * 1e3;
    (live, Some(ids))
}

fn round_trip(svm: &Svm, g: GpuId, live: &mut LiveCheck) {
    const HALF: usize = LIVE_CHECK_BYTES / 2;
    let buf = match svm.alloc(LIVE_CHECK_BYTES) {
        Ok(b) => b,
        Err(e) => {
            live.to_vram = Err(format!("allocating {}: {e}", bytes(LIVE_CHECK_BYTES as u64)));
            return;
        }
    };
    let byte = |i: usize| (i * 7 % 251) as u8;
    let data: Vec<u8> = (0..LIVE_CHECK_BYTES).map(byte).collect();
    buf.write_at(0, &data);
    let pages = LIVE_CHECK_BYTES / sys::PAGE_SIZE;
    live.to_vram = svm
        .set_attr(buf.addr(), buf.len(), &[Attr::Access(g), Attr::PrefetchLoc(Location::Gpu(g))])
        .map_err(|e| format!("SET_ATTR PREFETCH_LOC: {e}"))
        .and_then(|()| {
            let res = svm.residency(buf.addr(), pages);
            let n = res.iter().filter(|&&r| r == Residency::Vram(g)).count();
            if n == pages { Ok(()) } else { Err(format!("{n} of {pages} pages reached VRAM")) }
        });
    if live.to_vram.is_err() {
        let skip = || Err("not tried: nothing in VRAM".to_string());
        (live.gpu_read, live.cpu_fault, live.kernel_fault) = (skip(), skip(), skip());
        return;
    }
    let mut v = vec![0u8; 4096];
    live.gpu_read = svm.gpu_read(g, buf.addr() + 4096, &mut v).map_err(|e| e.to_string()).and_then(|()| {
        if v[..] == data[4096..8192] { Ok(()) } else { Err("the GPU read other data".to_string()) }
    });
    buf.read_at(HALF + 4096, &mut v);
    live.cpu_fault =
        if v[..] == data[HALF + 4096..HALF + 8192] { Ok(()) } else { Err("the CPU read other data".into()) };
    live.kernel_fault = match probe::kernel_read(buf.addr(), 4096) {
        Ok(got) if got[..] == data[..4096] => Ok(()),
        Ok(got) => Err(format!("write(2) gave other data ({} bytes)", got.len())),
        Err(errno) => Err(format!("write(2) failed: {}", errno_name(errno))),
    };
    // Whatever the kernel could not fault back, the CPU does.
    let mut all = vec![0u8; LIVE_CHECK_BYTES];
    buf.read_at(0, &mut all);
    if all != data {
        live.cpu_fault = Err("data changed on its way to VRAM and back".to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_bits() {
        let f = features(1 << 16 | 1 << 8 | 1);
        let on: Vec<&str> = f.iter().filter(|f| f.present).map(|f| f.name).collect();
        assert_eq!(on, ["WP", "THREAD_ID", "MOVE"]);
        assert_eq!(f.iter().filter(|f| f.need == Need::Required).count(), 5);
    }

    /// This machine runs usvm (the test suite needs it): the report says so, the live check
    /// passed every step, and every GPU's XNACK mode is explained.
    #[test]
    fn this_machine_can_run() {
        let cfg = Config { gpus: 2, vram_bytes: 64 << 20, xnack: true, granularity: 9 };
        let r = examine(&cfg);
        assert!(r.can_run(), "{:#?}", r.checks);
        assert!(r.verdict().starts_with("usvm can run here"), "{}", r.verdict());
        assert!(r.uffd.has("MOVE") && r.uffd.missing_required().is_empty());
        assert_eq!(r.live.build, Ok(()));
        assert_eq!(r.live.to_vram, Ok(()));
        assert_eq!(r.live.gpu_read, Ok(()));
        assert_eq!(r.live.cpu_fault, Ok(()));
        if r.uffd.mode == Mode::AllFaults {
            assert_eq!(r.live.kernel_fault, Ok(()));
        }
        assert_eq!(r.gpus.iter().map(|g| g.id).collect::<Vec<_>>(), [GpuId(0x1111), GpuId(0x2222)]);
        assert!(r.gpus.iter().all(|g| g.xnack && g.meaning.starts_with("XNACK on: ")));
        let off = examine(&Config { xnack: false, ..cfg });
        assert!(off.gpus[0].meaning.starts_with("XNACK off: a GPU access to memory not mapped"));
    }
}
