//! The doctor's readers of kernel files and their pure parsers (unit-tested on samples):
//! transparent-huge-page settings, cgroup limits and where the memory cgroup is, kernel
//! releases, capabilities.

use super::Cgroup;
use std::path::{Path, PathBuf};

/// `CAP_SYS_PTRACE`: with it, a userfaultfd serves kernel-mode faults.
pub(super) const CAP_SYS_PTRACE: u32 = 19;

/// A file's text, `None` when it cannot be read.
pub(super) fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The memory cgroup of this process and its effective limit.
pub(super) fn memory_cgroup() -> Option<Cgroup> {
    let cgroup = read("/proc/self/cgroup")?;
    let mountinfo = read("/proc/self/mountinfo")?;
    let (version, path, dirs) = cgroup_dirs(&cgroup, &mountinfo)?;
    let file = if version == 1 { "memory.limit_in_bytes" } else { "memory.max" };
    let limit = dirs.iter().filter_map(|d| read(d.join(file)).and_then(|s| parse_cgroup_limit(&s))).fold(
        None,
        |acc: Option<u64>, l| match (acc, l) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
    );
    Some(Cgroup { version, path, limit })
}

/// Where this process's memory cgroup is: the version (the v1 memory controller when it is
/// mounted, else v2), the cgroup's path, and its directory and every ancestor's up to the
/// mount's root, from `/proc/self/cgroup` and `/proc/self/mountinfo`.
pub fn cgroup_dirs(cgroup: &str, mountinfo: &str) -> Option<(u8, String, Vec<PathBuf>)> {
    let line = |want: &dyn Fn(&str, &str) -> bool| {
        cgroup.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctl, path) = (it.next()?, it.next()?, it.next()?);
            want(ctl, path).then(|| path.to_string())
        })
    };
    let mounts: Vec<(String, String, String, String)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            let g: Vec<&str> = post.split(' ').collect();
            Some((
                f.get(3)?.to_string(),
                f.get(4)?.to_string(),
                g.first()?.to_string(),
                g.get(2)?.to_string(),
            ))
        })
        .collect();
    let v1 = line(&|ctl, _| ctl.split(',').any(|c| c == "memory")).and_then(|p| {
        let m = mounts.iter().find(|m| m.2 == "cgroup" && m.3.split(',').any(|o| o == "memory"))?;
        Some((1, p, m))
    });
    let v2 = || {
        let p = line(&|ctl, _| ctl.is_empty())?;
        Some((2, p, mounts.iter().find(|m| m.2 == "cgroup2")?))
    };
    let (version, path, (root, mnt, _, _)) = v1.or_else(v2)?;
    let rel = path.strip_prefix(root.trim_end_matches('/')).unwrap_or("");
    let mut dirs = Vec::new();
    let mut d = PathBuf::from(mnt);
    dirs.push(d.clone());
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        d.push(part);
        dirs.push(d.clone());
    }
    dirs.reverse();
    Some((version, path, dirs))
}

/// The selected value of a transparent-huge-page setting: "always [madvise] never" ->
/// "madvise". A file with no brackets (one value) gives that value.
pub fn parse_thp(s: &str) -> Option<String> {
    let s = s.trim();
    if let Some((_, rest)) = s.split_once('[') {
        return rest.split_once(']').map(|(v, _)| v.to_string()).filter(|v| !v.is_empty());
    }
    (!s.is_empty() && !s.contains(' ')).then(|| s.to_string())
}

/// A cgroup memory limit: `Some(None)` for no limit ("max" in v2, and v1's page-rounded
/// 2^63 - 1 or anything from 2^62 up), `Some(Some(bytes))`, `None` when unreadable.
pub fn parse_cgroup_limit(s: &str) -> Option<Option<u64>> {
    let s = s.trim();
    if s == "max" {
        return Some(None);
    }
    let n: u64 = s.parse().ok()?;
    Some(if n >= 1 << 62 { None } else { Some(n) })
}

/// The version at the start of a kernel release: "6.8.0-45-generic" -> (6, 8, 0),
/// "6.18.44-fc" -> (6, 18, 44), "6.9-rc1" -> (6, 9, 0). `None` without a major and minor.
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32, u32)> {
    let mut nums = release.trim().split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        (digits.parse::<u32>().ok(), digits.len() == p.len())
    });
    let (major, whole) = nums.next()?;
    let major = major.filter(|_| whole)?;
    let (minor, whole) = nums.next()?;
    let minor = minor?;
    let patch = if whole { nums.next().and_then(|(p, _)| p).unwrap_or(0) } else { 0 };
    Some((major, minor, patch))
}

/// The effective capabilities of a `/proc/PID/status` text (`CapEff:` in hex).
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let v = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(v.trim(), 16).ok()
}

/// An errno as its name and message: "EPERM (Operation not permitted)".
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOSYS => "ENOSYS",
        libc::EINVAL => "EINVAL",
        libc::EFAULT => "EFAULT",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EAGAIN => "EAGAIN",
        libc::ENOSPC => "ENOSPC",
        libc::EEXIST => "EEXIST",
        _ => "errno",
    };
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    format!("{name} ({text})")
}

/// Bytes with a binary unit: "256 MiB", "1.5 GiB", "4 KiB".
pub(super) fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 { format!("{v} {}", UNITS[u]) } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thp_settings() {
        assert_eq!(parse_thp("always [madvise] never\n").as_deref(), Some("madvise"));
        assert_eq!(parse_thp("[always] madvise never").as_deref(), Some("always"));
        assert_eq!(parse_thp("always madvise [never]").as_deref(), Some("never"));
        assert_eq!(parse_thp("always defer defer+madvise [madvise] never").as_deref(), Some("madvise"));
        assert_eq!(parse_thp("[defer+madvise]").as_deref(), Some("defer+madvise"));
        assert_eq!(parse_thp("never").as_deref(), Some("never"));
        assert_eq!(parse_thp(""), None);
        assert_eq!(parse_thp("always madvise never"), None);
        assert_eq!(parse_thp("always [] never"), None);
    }

    #[test]
    fn cgroup_limits() {
        assert_eq!(parse_cgroup_limit("max\n"), Some(None));
        assert_eq!(parse_cgroup_limit("536870912\n"), Some(Some(512 << 20)));
        assert_eq!(parse_cgroup_limit("0"), Some(Some(0)));
        assert_eq!(parse_cgroup_limit("9223372036854771712"), Some(None), "v1's no limit");
        assert_eq!(parse_cgroup_limit("18446744073709551615"), Some(None));
        assert_eq!(parse_cgroup_limit(""), None);
        assert_eq!(parse_cgroup_limit("lots"), None);
        assert_eq!(parse_cgroup_limit("-1"), None);
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.8.0-45-generic"), Some((6, 8, 0)));
        assert_eq!(parse_kernel_version("6.18.44-fc-v1272"), Some((6, 18, 44)));
        assert_eq!(parse_kernel_version("6.9-rc1"), Some((6, 9, 0)));
        assert_eq!(parse_kernel_version("5.15.0"), Some((5, 15, 0)));
        assert_eq!(parse_kernel_version("6.10"), Some((6, 10, 0)));
        assert_eq!(parse_kernel_version("4.19.0+\n"), Some((4, 19, 0)));
        assert_eq!(parse_kernel_version("6.1.0.1-x"), Some((6, 1, 0)));
        assert_eq!(parse_kernel_version("6"), None);
        assert_eq!(parse_kernel_version("6rc.1"), None);
        assert_eq!(parse_kernel_version("linux"), None);
        assert_eq!(parse_kernel_version(""), None);
    }

    #[test]
    fn capabilities() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(s), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff(s).map(|c| c >> CAP_SYS_PTRACE & 1), Some(1));
        assert_eq!(parse_cap_eff("CapEff:\t0000000000000000"), Some(0));
        assert_eq!(parse_cap_eff("Name: x"), None);
    }

    #[test]
    fn cgroup_v1_memory_controller_wins() {
        let cgroup = "9:name=systemd:/\n4:memory:/jobs/a1\n1:cpu:/\n0::/\n";
        let mountinfo = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                         35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let (v, path, dirs) = cgroup_dirs(cgroup, mountinfo).unwrap();
        assert_eq!((v, path.as_str()), (1, "/jobs/a1"));
        let want = ["/sys/fs/cgroup/memory/jobs/a1", "/sys/fs/cgroup/memory/jobs", "/sys/fs/cgroup/memory"];
        assert_eq!(dirs, want.iter().map(PathBuf::from).collect::<Vec<_>>());
    }

    #[test]
    fn cgroup_v2_with_a_namespaced_root() {
        let cgroup = "0::/user.slice/session-2.scope\n";
        let mountinfo = "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let (v, _, dirs) = cgroup_dirs(cgroup, mountinfo).unwrap();
        assert_eq!(v, 2);
        assert_eq!(dirs[0], PathBuf::from("/sys/fs/cgroup/user.slice/session-2.scope"));
        assert_eq!(dirs.len(), 3);
        // A container: the mount's root is the process's own cgroup.
        let cgroup = "0::/\n";
        let mountinfo = "30 24 0:26 /docker/abc /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        let (_, _, dirs) = cgroup_dirs(cgroup, mountinfo).unwrap();
        assert_eq!(dirs, [PathBuf::from("/sys/fs/cgroup")]);
        assert_eq!(cgroup_dirs("0::/\n", ""), None);
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::EPERM), "EPERM (Operation not permitted)");
        assert_eq!(errno_name(libc::EFAULT), "EFAULT (Bad address)");
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(256 << 20), "256 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(512), "512 B");
    }
}
