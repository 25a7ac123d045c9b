//! From what the doctor found to [`Check`]s: what each finding means for usvm and its
//! applications, how it weighs, and what to change.

use super::parse::{bytes, errno_name};
use super::{Check, Level, MOVE_MIN_KERNEL, Mode, Need, Report};

/// What gives a userfaultfd the kernel-mode faults.
const PRIVILEGE_FIX: &str = "run as root or with CAP_SYS_PTRACE (e.g. `setcap cap_sys_ptrace+ep` on the \
     binary), or allow it to every user: `sysctl -w vm.unprivileged_userfaultfd=1`";
/// What to do when a step that should work did not.
const BUG_FIX: &str = "this should work on any kernel that passed the checks above: run `cargo test -p usvm` \
     here and report what fails";

fn check(topic: &'static str, level: Level, found: String, meaning: impl Into<String>) -> Check {
    Check { topic, level, found, meaning: meaning.into(), fix: None }
}

fn with_fix(mut c: Check, fix: impl Into<String>) -> Check {
    c.fix = Some(fix.into());
    c
}

/// Every finding of `r`, in the order shown.
pub(super) fn checks(r: &Report) -> Vec<Check> {
    let mut v = vec![kernel(r), userfaultfd(r)];
    v.extend(features(r));
    v.extend(kernel_faults(r));
    v.push(doorbells(r));
    v.push(huge_pages(r));
    v.extend(memory(r));
    v.extend(live(r));
    v
}

fn kernel(r: &Report) -> Check {
    let found = format!("Linux {}", r.kernel.release);
    let (maj, min) = MOVE_MIN_KERNEL;
    let need = format!("UFFDIO_MOVE, which every migration uses, is in Linux {maj}.{min} and newer");
    match r.kernel.version {
        Some((a, b, _)) if (a, b) >= MOVE_MIN_KERNEL => check("kernel", Level::Ok, found, need),
        Some(_) if r.uffd.has("MOVE") => {
            check("kernel", Level::Note, found, format!("{need}; this one has it all the same (a backport)"))
        }
        Some(_) => {
            with_fix(check("kernel", Level::Fail, found, need), format!("boot Linux {maj}.{min} or newer"))
        }
        None => check("kernel", Level::Note, found, "release not understood: the userfaultfd probe decides"),
    }
}

fn userfaultfd(r: &Report) -> Check {
    let u = &r.uffd;
    let err = |e: Option<(&str, i32)>| {
        e.map_or(String::new(), |(call, errno)| format!("{call}: {}", errno_name(errno)))
    };
    match u.mode {
        Mode::AllFaults => check(
            "userfaultfd",
            Level::Ok,
            "opened for every fault, kernel-mode ones included".into(),
            "CPU accesses to data in VRAM fault it back to RAM, wherever they happen",
        ),
        Mode::UserModeOnly => check(
            "userfaultfd",
            Level::Ok,
            format!("opened for user-mode faults only (every fault: {})", err(u.all_faults_error)),
            "CPU loads and stores on data in VRAM fault it back to RAM (see read(2)/write(2) below)",
        ),
        Mode::Unavailable => {
            let e = u.user_mode_error.or(u.all_faults_error);
            let fix = match e {
                Some(("userfaultfd", libc::ENOSYS)) => {
                    "a kernel built with userfaultfd (CONFIG_USERFAULTFD=y), Linux 6.8 or newer".to_string()
                }
                Some(("userfaultfd", libc::EPERM | libc::EACCES)) => "allow the userfaultfd system call: a seccomp \
                     filter refuses it (containers: a seccomp profile that allows userfaultfd, e.g. `docker run \
                     --security-opt seccomp=unconfined`)"
                    .to_string(),
                _ => "a kernel with a working userfaultfd (Linux 6.8 or newer)".to_string(),
            };
            with_fix(
                check(
                    "userfaultfd",
                    Level::Fail,
                    format!("none: {}", err(e)),
                    "usvm catches CPU accesses to data in VRAM with userfaultfd; without it nothing migrates",
                ),
                fix,
            )
        }
    }
}

fn features(r: &Report) -> Option<Check> {
    let u = &r.uffd;
    if u.mode == Mode::Unavailable {
        return None;
    }
    let missing = u.missing_required();
    let used: Vec<&str> =
        u.features.iter().filter(|f| f.need != Need::Unused && f.present).map(|f| f.name).collect();
    let other: Vec<&str> =
        u.features.iter().filter(|f| f.need == Need::Unused && f.present).map(|f| f.name).collect();
    let found = format!(
        "{} (used); also {}",
        used.join(", "),
        if other.is_empty() { "none".into() } else { other.join(", ") }
    );
    if missing.is_empty() {
        return Some(check(
            "features",
            Level::Ok,
            found,
            "MOVE takes pages out of and back into the application; EVENT_UNMAP, EVENT_REMAP and \
             EVENT_REMOVE follow its munmap, mremap and MADV_DONTNEED; THREAD_ID names the faulting \
             thread (usvm sends SIGBUS itself, it does not use the SIGBUS feature)",
        ));
    }
    let used_for: Vec<String> = u
        .features
        .iter()
        .filter(|f| missing.contains(&f.name))
        .map(|f| format!("{} ({})", f.name, f.used_for))
        .collect();
    let (maj, min) = MOVE_MIN_KERNEL;
    Some(with_fix(
        check(
            "features",
            Level::Fail,
            format!("missing {}; offered: {found}", missing.join(", ")),
            format!("usvm needs {}", used_for.join(", ")),
        ),
        format!("boot Linux {maj}.{min} or newer, which has every feature usvm needs"),
    ))
}

fn kernel_faults(r: &Report) -> Option<Check> {
    let u = &r.uffd;
    let mut why = Vec::new();
    if u.euid == 0 {
        why.push("running as root".to_string());
    } else {
        why.push(format!("running as uid {}", u.euid));
    }
    match u.cap_sys_ptrace {
        Some(true) if u.euid != 0 => why.push("with CAP_SYS_PTRACE".into()),
        Some(false) => why.push("without CAP_SYS_PTRACE".into()),
        _ => {}
    }
    match u.unprivileged_sysctl {
        Some(on) => why.push(format!("vm.unprivileged_userfaultfd={}", u8::from(on))),
        None => why.push("no vm.unprivileged_userfaultfd".into()),
    }
    let found = why.join(", ");
    match u.mode {
        Mode::AllFaults => Some(check(
            "read(2)/write(2)",
            Level::Ok,
            found,
            "system calls given memory whose data is in VRAM (read(2), write(2), ...) work: the \
             kernel's own faults come to usvm too",
        )),
        Mode::UserModeOnly => Some(with_fix(
            check(
                "read(2)/write(2)",
                Level::Warn,
                found,
                "only user-mode faults are served: read(2), write(2) and other system calls given \
                 memory whose data is in VRAM fail with EFAULT (prefetch it to system memory first)",
            ),
            PRIVILEGE_FIX,
        )),
        Mode::Unavailable => None,
    }
}

fn doorbells(r: &Report) -> Check {
    let u = &r.uffd;
    match &u.doorbell {
        Ok(()) => check(
            "doorbells",
            Level::Ok,
            "write-protect faults (WP) work".into(),
            "the KFD model's SDMA queues (libhsakmt) notice doorbell stores without polling",
        ),
        Err(e) => {
            let fix = if !u.has("WP") {
                "a kernel with userfaultfd write-protect (CONFIG_HAVE_ARCH_USERFAULTFD_WP: x86-64, or arm64 \
                 from Linux 6.10)"
            } else {
                PRIVILEGE_FIX
            };
            with_fix(
                check(
                    "doorbells",
                    Level::Warn,
                    e.clone(),
                    "SDMA queues of the KFD model (hsaKmtCreateQueue) cannot be made; SVM and the Rust \
                     API work",
                ),
                fix,
            )
        }
    }
}

fn huge_pages(r: &Report) -> Check {
    let t = &r.thp;
    let Some(enabled) = t.enabled.as_deref() else {
        return check(
            "huge pages",
            Level::Note,
            "no transparent huge pages in this kernel".into(),
            "every 4 KiB page moves on its own: a 2 MiB granule takes 512 moves",
        );
    };
    let defrag = t.defrag.as_deref().unwrap_or("?");
    let found = format!("enabled {enabled}, defrag {defrag}");
    if enabled == "never" {
        return with_fix(
            check(
                "huge pages",
                Level::Warn,
                found,
                "usvm's MADV_HUGEPAGE is ignored: every 4 KiB page moves on its own, a 2 MiB granule \
                 takes 512 moves (migrations are several times slower)",
            ),
            "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled",
        );
    }
    let mut meaning = "usvm asks for huge pages (MADV_HUGEPAGE) on its buffers, staging and pool: a 2 MiB \
                       granule moves as one page-table entry"
        .to_string();
    if matches!(defrag, "never" | "defer") {
        meaning += &format!(
            "; with defrag {defrag}, a first touch gets 4 KiB pages when memory is fragmented, and \
             those granules move page by page"
        );
    }
    check("huge pages", Level::Ok, found, meaning)
}

fn memory(r: &Report) -> Vec<Check> {
    let m = &r.memory;
    let cfg = &r.config;
    let vram = format!("{} GPU(s) x {} = {}", cfg.gpus, bytes(cfg.vram_bytes), bytes(m.vram_total));
    vec![
        ram(r, &vram),
        cgroup(r, &vram),
        xnack_off_limit(r),
        rlimit_as(r),
        check(
            "RLIMIT_MEMLOCK",
            Level::Note,
            m.rlimit_memlock.map_or("unlimited".into(), bytes),
            "usvm locks no memory; SVM memory the application mlock()s still moves (copied, not moved: slower)",
        ),
    ]
}

fn ram(r: &Report, vram: &str) -> Check {
    let m = &r.memory;
    let ram = check(
        "memory",
        Level::Ok,
        format!("{} of RAM; emulated VRAM {vram}", bytes(m.physical_bytes)),
        "emulated VRAM is this process's own memory, committed as it fills",
    );
    if m.vram_total <= m.physical_bytes {
        return ram;
    }
    with_fix(
        Check {
            level: Level::Warn,
            meaning: format!("{}: more than the RAM, filling it ends in swap or the OOM killer", ram.meaning),
            ..ram
        },
        "less VRAM (--vram) or fewer GPUs",
    )
}

fn xnack_off_limit(r: &Report) -> Check {
    let accounting = format!("{} (15/16 of RAM)", bytes(r.memory.xnack_off_limit));
    if r.config.xnack {
        check(
            "XNACK-off limit",
            Level::Note,
            accounting,
            "applies with XNACK off only: SVM ranges may then cover at most this much (SET_ATTR beyond it fails \
             with ENOMEM; SvmBuilder::system_memory_limit changes it)",
        )
    } else {
        check(
            "XNACK-off limit",
            Level::Ok,
            accounting,
            "with XNACK off, SVM ranges may cover at most this much: SET_ATTR beyond it fails with ENOMEM \
             (SvmBuilder::system_memory_limit changes it)",
        )
    }
}

fn rlimit_as(r: &Report) -> Check {
    let m = &r.memory;
    match m.rlimit_as {
        None => check("RLIMIT_AS", Level::Ok, "unlimited".into(), "room to reserve the emulated VRAM"),
        Some(l) if l < m.vram_total => with_fix(
            check(
                "RLIMIT_AS",
                Level::Fail,
                bytes(l),
                format!(
                    "the emulated VRAM ({}) is reserved as address space: it does not fit",
                    bytes(m.vram_total)
                ),
            ),
            format!(
                "`ulimit -v unlimited`, or less VRAM: --vram {}M per GPU keeps half the limit for the rest",
                (l / 2 / r.config.gpus.max(1) as u64) >> 20
            ),
        ),
        Some(l) => check(
            "RLIMIT_AS",
            Level::Note,
            bytes(l),
            format!("the emulated VRAM takes {} of it as address space", bytes(m.vram_total)),
        ),
    }
}

fn cgroup(r: &Report, vram: &str) -> Check {
    let m = &r.memory;
    let Some(cg) = &m.cgroup else {
        return check("cgroup", Level::Note, "no memory cgroup found".into(), "only the RAM limits memory");
    };
    let file = if cg.version == 1 { "memory.limit_in_bytes" } else { "memory.max" };
    let Some(limit) = cg.limit else {
        return check(
            "cgroup",
            Level::Ok,
            format!("v{} {}: {file} unlimited", cg.version, cg.path),
            "only the RAM limits this process's memory, emulated VRAM included",
        );
    };
    let found = format!("v{} {}: {file} {}", cg.version, cg.path, bytes(limit));
    if limit < m.vram_total {
        return with_fix(
            check(
                "cgroup",
                Level::Warn,
                found,
                format!(
                    "the emulated VRAM ({vram}) is more than the cgroup allows: filling it ends in the OOM killer"
                ),
            ),
            format!("raise the cgroup's {file}, or less VRAM (--vram)"),
        );
    }
    let mut meaning =
        format!("{} left beyond the emulated VRAM when it is full", bytes(limit - m.vram_total));
    if !r.config.xnack && limit < m.xnack_off_limit {
        meaning += &format!(
            "; the XNACK-off accounting admits ranges up to {}, more than this: the OOM killer can come \
             before ENOMEM (SvmBuilder::system_memory_limit lowers it)",
            bytes(m.xnack_off_limit)
        );
    }
    check("cgroup", Level::Ok, found, meaning)
}

fn live(r: &Report) -> Vec<Check> {
    let l = &r.live;
    let cfg = &r.config;
    if r.uffd.mode == Mode::Unavailable {
        return Vec::new();
    }
    let what = format!(
        "{} GPU(s) x {}, XNACK {}",
        cfg.gpus,
        bytes(cfg.vram_bytes),
        if cfg.xnack { "on" } else { "off" }
    );
    if let Err(e) = &l.build {
        return vec![build_failure(r, &what, e)];
    }
    let mut v = Vec::new();
    let gpu = r.gpus.first().map_or(String::new(), |g| format!("{:#x}", g.id.0));
    for (step, res) in
        [("prefetch to VRAM", &l.to_vram), ("GPU read", &l.gpu_read), ("CPU fault", &l.cpu_fault)]
    {
        if let Err(e) = res {
            v.push(with_fix(
                check(
                    "live check",
                    Level::Fail,
                    format!("{step}: {e}"),
                    "data does not move between RAM and VRAM here",
                ),
                BUG_FIX,
            ));
        }
    }
    v.extend(kernel_fault(r));
    if v.iter().all(|c| c.level < Level::Warn) {
        let moved = format!(
            "built {what}; {} to GPU {gpu}'s VRAM and back in {:.1} ms",
            bytes(super::LIVE_CHECK_BYTES as u64),
            l.millis
        );
        let paths = if l.kernel_fault.is_ok() {
            "prefetch, GPU read from VRAM, CPU fault and write(2) from VRAM-resident memory moved the right data"
        } else {
            "prefetch, GPU read from VRAM and CPU fault moved the right data"
        };
        v.insert(0, check("live check", Level::Ok, moved, paths));
    }
    v
}

/// The live check could not even build the instance.
fn build_failure(r: &Report, what: &str, e: &str) -> Check {
    let c = check(
        "live check",
        Level::Fail,
        format!("building {what}: {e}"),
        "usvm cannot make its instance here",
    );
    let short_of_memory = e.contains("os error 12") || e.contains("ENOMEM");
    let as_limit = r.memory.rlimit_as.is_some_and(|l| l < r.memory.vram_total);
    match (short_of_memory, as_limit) {
        // RLIMIT_AS above says what to change.
        (true, true) => c,
        (true, false) => with_fix(c, "more memory or address space (`ulimit -v`), or less VRAM (--vram)"),
        _ => with_fix(c, BUG_FIX),
    }
}

/// What the live check's write(2) from VRAM-resident memory says.
fn kernel_fault(r: &Report) -> Option<Check> {
    match (&r.live.kernel_fault, r.uffd.mode) {
        (Ok(()), _) => None,
        (Err(e), Mode::UserModeOnly) => Some(check(
            "live check",
            Level::Note,
            format!("write(2) from VRAM-resident memory: {e}"),
            "as the read(2)/write(2) warning says",
        )),
        (Err(e), _) => Some(with_fix(
            check(
                "live check",
                Level::Warn,
                format!("write(2) from VRAM-resident memory: {e}"),
                "kernel-mode faults were not served although the userfaultfd accepts them",
            ),
            BUG_FIX,
        )),
    }
}
