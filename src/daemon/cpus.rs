//! How many CPUs `workers = auto` may use: the affinity mask
//! ([`sys::available_cpus`](crate::sys::available_cpus)), capped by the CPU
//! quota of the process's cgroup.
//!
//! A container started with `--cpus 2` on a 64-core host keeps all 64 CPUs
//! in its affinity mask; only the CFS bandwidth quota says that it gets two
//! CPUs' worth of time. Sixty-four workers would then share two CPUs and
//! each be throttled, so `auto` counts the quota too, as the Go runtime
//! (GOMAXPROCS) and the JVM (`-XX:+UseContainerSupport`) do:
//! `ceil(quota / period)`, at least 1.
//!
//! Where the quota is read:
//! - cgroup v2: `cpu.max` (`"max 100000"` = no limit, `"150000 100000"` =
//!   1.5 CPUs) in the process's cgroup directory (`0::/path` in
//!   `/proc/self/cgroup`) under the `cgroup2` mount.
//! - cgroup v1 (also the `cpu` controller of a hybrid setup, where the v2
//!   tree has no controllers): `cpu.cfs_quota_us` (`-1` = no limit) and
//!   `cpu.cfs_period_us` under the mount of the `cpu` controller.
//!
//! A limit set on a parent cgroup binds its children too, so every level
//! from the process's cgroup up to the mount's root is read and the smallest
//! limit wins. The mount's root (the 4th field of `/proc/self/mountinfo`) is
//! cut from the path `/proc/self/cgroup` gives: without a cgroup namespace a
//! container sees its host-side path there, and its `/sys/fs/cgroup` is
//! mounted from that path. Anything missing or unreadable means "no limit":
//! the quota can only lower the affinity count, never raise it or fail.
//!
//! The parsing is pure (text in, numbers out) and unit-tested; [`available`]
//! is the only function that reads files.

use std::path::{Path, PathBuf};

/// The CPUs `workers = auto` resolves to: the affinity count, capped by the
/// cgroup CPU quota, at least 1.
pub fn available() -> usize {
    let affinity = crate::sys::available_cpus();
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let quota = quota_cpus(
        read("/proc/self/cgroup".as_ref()).as_deref(),
        read("/proc/self/mountinfo".as_ref()).as_deref(),
        read,
    );
    cap(affinity, quota)
}

/// `affinity` lowered to `quota` when there is one, at least 1.
pub fn cap(affinity: usize, quota: Option<usize>) -> usize {
    quota.map_or(affinity, |q| affinity.min(q)).max(1)
}

/// A CFS bandwidth limit: `quota` microseconds of CPU time per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// CPU time allowed per period, in microseconds.
    pub quota: u64,
    /// The period, in microseconds.
    pub period: u64,
}

impl Quota {
    /// Whole CPUs the limit amounts to, rounded up (1.5 CPUs' worth of time
    /// keeps two workers busy part of the time), at least 1.
    pub fn cpus(self) -> usize {
        usize::try_from(self.quota.div_ceil(self.period)).unwrap_or(usize::MAX).max(1)
    }
}

/// Parses cgroup v2 `cpu.max`: `"$MAX $PERIOD"`, `$MAX` being `max` for no
/// limit. `None` for no limit or text that is not a limit.
pub fn parse_cpu_max(text: &str) -> Option<Quota> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    // The kernel always prints the period; 100 ms is its default.
    let period = fields.next().map_or(Some(100_000), |p| p.parse().ok())?;
    if quota == "max" {
        return None;
    }
    limit(quota.parse().ok()?, period)
}

/// Parses cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`; a quota of
/// `-1` is no limit.
pub fn parse_cfs(quota: &str, period: &str) -> Option<Quota> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: u64 = period.trim().parse().ok()?;
    limit(u64::try_from(quota).ok()?, period)
}

fn limit(quota: u64, period: u64) -> Option<Quota> {
    (quota > 0 && period > 0).then_some(Quota { quota, period })
}

/// The process's cgroups, from `/proc/self/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// The cgroup v2 path (the `0::PATH` line).
    pub unified: Option<String>,
    /// The cgroup v1 path of the hierarchy that holds the `cpu` controller.
    pub cpu_v1: Option<String>,
}

/// Parses `/proc/self/cgroup`: lines `ID:CONTROLLERS:PATH`, where the v2
/// hierarchy is ID 0 with no controllers and a v1 hierarchy names its
/// controllers comma-separated (`4:cpu,cpuacct:/user.slice`).
pub fn parse_proc_cgroup(text: &str) -> Membership {
    let mut m = Membership::default();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            m.unified = Some(path.to_owned());
        } else if controllers.split(',').any(|c| c == "cpu") {
            m.cpu_v1 = Some(path.to_owned());
        }
    }
    m
}

/// A cgroup file system mount, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// The cgroup path of the hierarchy that is mounted (usually `/`).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
}

/// The cgroup mounts of `/proc/self/mountinfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupMounts {
    /// The first `cgroup2` mount.
    pub unified: Option<CgroupMount>,
    /// The first v1 `cgroup` mount whose options name the `cpu` controller.
    pub cpu_v1: Option<CgroupMount>,
}

/// Parses `/proc/self/mountinfo` (proc(5)): `ID PARENT MAJ:MIN ROOT
/// MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`; for a v1
/// cgroup the controllers are among the super options.
pub fn parse_mountinfo(text: &str) -> CgroupMounts {
    let mut mounts = CgroupMounts::default();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(mount_point), Some(fstype)) = (left.get(3), left.get(4), right.first()) else {
            continue;
        };
        let mount = || CgroupMount { root: unescape(root), mount_point: PathBuf::from(unescape(mount_point)) };
        match *fstype {
            "cgroup2" if mounts.unified.is_none() => mounts.unified = Some(mount()),
            "cgroup"
                if mounts.cpu_v1.is_none() && right.get(2).is_some_and(|opts| opts.split(',').any(|o| o == "cpu")) =>
            {
                mounts.cpu_v1 = Some(mount())
            }
            _ => {}
        }
    }
    mounts
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(c) if bytes[i] == b'\\' => {
                out.push(c);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directories from the process's cgroup up to the mount's root, the
/// process's own first; empty when the path is not under the mount's root.
pub fn cgroup_dirs(mount: &CgroupMount, cgroup_path: &str) -> Vec<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let Some(rel) = cgroup_path.strip_prefix(root) else { return Vec::new() };
    if !(rel.is_empty() || rel.starts_with('/')) {
        return Vec::new(); // `/a` is no root of `/ab`
    }
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    if parts.contains(&"..") {
        return Vec::new(); // outside the mount (a cgroup namespace's view)
    }
    (0..=parts.len()).rev().map(|n| parts[..n].iter().fold(mount.mount_point.clone(), |d, p| d.join(p))).collect()
}

/// The CPU quota in whole CPUs (the smallest limit on the way up, v2 and
/// v1), or `None` when nothing limits the process. `cgroup` and `mountinfo`
/// are the texts of `/proc/self/cgroup` and `/proc/self/mountinfo`; `read`
/// returns a file's text, `None` when it cannot be read.
pub fn quota_cpus(
    cgroup: Option<&str>,
    mountinfo: Option<&str>,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<usize> {
    let membership = parse_proc_cgroup(cgroup?);
    let mounts = parse_mountinfo(mountinfo?);
    let mut limits = Vec::new();
    if let (Some(mount), Some(path)) = (&mounts.unified, &membership.unified) {
        for dir in cgroup_dirs(mount, path) {
            limits.extend(read(&dir.join("cpu.max")).as_deref().and_then(parse_cpu_max));
        }
    }
    if let (Some(mount), Some(path)) = (&mounts.cpu_v1, &membership.cpu_v1) {
        for dir in cgroup_dirs(mount, path) {
            let quota = read(&dir.join("cpu.cfs_quota_us"));
            let period = read(&dir.join("cpu.cfs_period_us"));
            if let (Some(q), Some(p)) = (quota, period) {
                limits.extend(parse_cfs(&q, &p));
            }
        }
    }
    limits.into_iter().map(Quota::cpus).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn cpu_max() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(Quota { quota: 150_000, period: 100_000 }));
        assert_eq!(parse_cpu_max("50000"), Some(Quota { quota: 50_000, period: 100_000 }));
        for bad in ["", "\n", "max", "0 100000", "100000 0", "-1 100000", "x 100000", "100000 y"] {
            assert_eq!(parse_cpu_max(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cfs() {
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("200000\n", "100000\n"), Some(Quota { quota: 200_000, period: 100_000 }));
        for (q, p) in [("", "100000"), ("100000", ""), ("0", "100000"), ("100000", "0"), ("many", "100000")] {
            assert_eq!(parse_cfs(q, p), None, "{q:?} {p:?}");
        }
    }

    #[test]
    fn quota_rounds_up_to_whole_cpus() {
        let q = |quota, period| Quota { quota, period }.cpus();
        assert_eq!(q(100_000, 100_000), 1);
        assert_eq!(q(150_000, 100_000), 2);
        assert_eq!(q(200_000, 100_000), 2);
        assert_eq!(q(200_001, 100_000), 3);
        assert_eq!(q(10_000, 100_000), 1, "a tenth of a CPU is still one worker");
        assert_eq!(q(u64::MAX, 1), usize::MAX);
    }

    #[test]
    fn cap_lowers_never_raises() {
        assert_eq!(cap(8, None), 8);
        assert_eq!(cap(8, Some(2)), 2);
        assert_eq!(cap(2, Some(8)), 2);
        assert_eq!(cap(0, None), 1);
        assert_eq!(cap(4, Some(0)), 1);
    }

    #[test]
    fn proc_cgroup_v2_v1_and_hybrid() {
        let v2 = parse_proc_cgroup("0::/system.slice/rot13d.service\n");
        assert_eq!(v2, Membership { unified: Some("/system.slice/rot13d.service".into()), cpu_v1: None });
        let hybrid =
            parse_proc_cgroup("12:pids:/\n4:cpu,cpuacct:/machine.slice/libpod-ab.scope\n1:name=systemd:/x\n0::/x\n");
        assert_eq!(hybrid.cpu_v1.as_deref(), Some("/machine.slice/libpod-ab.scope"));
        assert_eq!(hybrid.unified.as_deref(), Some("/x"));
        // `cpuacct` or `cpuset` alone is not the cpu controller; a path may hold ':'.
        let other = parse_proc_cgroup("3:cpuset:/a\n2:cpuacct:/b\n1:cpu:/c:d\ngarbage\n");
        assert_eq!(other, Membership { unified: None, cpu_v1: Some("/c:d".into()) });
    }

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/l
30 22 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 /machine.slice/libpod-ab.scope /sys/fs/cgroup/cpu,cpuacct ro,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
32 30 0:28 /machine.slice/libpod-ab.scope /sys/fs/cgroup/cpuset ro - cgroup cgroup rw,cpuset
33 30 0:29 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
34 22 0:30 / /mnt/with\\040space rw - cgroup2 cgroup2 rw
";

    #[test]
    fn mountinfo_finds_cgroup2_and_the_cpu_controller() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(
            m.cpu_v1,
            Some(CgroupMount {
                root: "/machine.slice/libpod-ab.scope".into(),
                mount_point: "/sys/fs/cgroup/cpu,cpuacct".into()
            })
        );
        assert_eq!(m.unified, Some(CgroupMount { root: "/".into(), mount_point: "/sys/fs/cgroup/unified".into() }));
        let spaced = parse_mountinfo(&MOUNTINFO.lines().last().map(|l| format!("{l}\n")).unwrap_or_default());
        assert_eq!(spaced.unified.map(|m| m.mount_point), Some(PathBuf::from("/mnt/with space")));
        assert_eq!(parse_mountinfo("nonsense\n\n1 2 3 - cgroup2\n"), CgroupMounts::default());
    }

    #[test]
    fn dirs_walk_up_to_the_mount_root() {
        let mount = CgroupMount { root: "/".into(), mount_point: "/sys/fs/cgroup".into() };
        assert_eq!(
            cgroup_dirs(&mount, "/system.slice/rot13d.service"),
            vec![
                PathBuf::from("/sys/fs/cgroup/system.slice/rot13d.service"),
                PathBuf::from("/sys/fs/cgroup/system.slice"),
                PathBuf::from("/sys/fs/cgroup"),
            ]
        );
        assert_eq!(cgroup_dirs(&mount, "/"), vec![PathBuf::from("/sys/fs/cgroup")]);
        // Without a cgroup namespace the container's mount root is its host path.
        let inner = CgroupMount { root: "/machine.slice/c.scope".into(), mount_point: "/sys/fs/cgroup/cpu".into() };
        assert_eq!(cgroup_dirs(&inner, "/machine.slice/c.scope"), vec![PathBuf::from("/sys/fs/cgroup/cpu")]);
        assert_eq!(
            cgroup_dirs(&inner, "/machine.slice/c.scope/sub"),
            vec![PathBuf::from("/sys/fs/cgroup/cpu/sub"), PathBuf::from("/sys/fs/cgroup/cpu")]
        );
        assert!(cgroup_dirs(&inner, "/machine.slice/c.scopex").is_empty());
        assert!(cgroup_dirs(&inner, "/user.slice").is_empty());
        assert!(cgroup_dirs(&mount, "/../../x").is_empty());
    }

    fn files(list: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = list.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())).collect();
        move |p: &Path| map.get(p).cloned()
    }

    const V2_MOUNT: &str = "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";

    #[test]
    fn v2_quota_of_the_container() {
        // A container with a cgroup namespace: its cgroup is "/".
        let read = files(&[("/sys/fs/cgroup/cpu.max", "200000 100000\n")]);
        assert_eq!(quota_cpus(Some("0::/\n"), Some(V2_MOUNT), read), Some(2));
    }

    #[test]
    fn v2_smallest_limit_on_the_way_up_wins() {
        let read = files(&[
            ("/sys/fs/cgroup/a/b/cpu.max", "max 100000\n"),
            ("/sys/fs/cgroup/a/cpu.max", "300000 100000\n"),
            ("/sys/fs/cgroup/cpu.max", "500000 100000\n"),
        ]);
        assert_eq!(quota_cpus(Some("0::/a/b\n"), Some(V2_MOUNT), &read), Some(3));
        let read =
            files(&[("/sys/fs/cgroup/a/b/cpu.max", "max 100000\n"), ("/sys/fs/cgroup/a/cpu.max", "max 100000\n")]);
        assert_eq!(quota_cpus(Some("0::/a/b\n"), Some(V2_MOUNT), read), None);
    }

    #[test]
    fn v1_quota_on_a_hybrid_host() {
        let cgroup = "4:cpu,cpuacct:/machine.slice/libpod-ab.scope\n0::/\n";
        let read = files(&[
            ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "150000\n"),
            ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(quota_cpus(Some(cgroup), Some(MOUNTINFO), read), Some(2));
        let unlimited = files(&[
            ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n"),
            ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(quota_cpus(Some(cgroup), Some(MOUNTINFO), unlimited), None);
    }

    #[test]
    fn nothing_readable_is_no_limit() {
        assert_eq!(quota_cpus(None, Some(V2_MOUNT), files(&[])), None);
        assert_eq!(quota_cpus(Some("0::/\n"), None, files(&[])), None);
        assert_eq!(quota_cpus(Some("0::/\n"), Some(V2_MOUNT), files(&[])), None);
        assert_eq!(quota_cpus(Some("0::/\n"), Some(V2_MOUNT), files(&[("/sys/fs/cgroup/cpu.max", "junk")])), None);
    }

    #[test]
    fn available_is_at_most_the_affinity_count() {
        let n = available();
        assert!(n >= 1 && n <= crate::sys::available_cpus().max(1), "{n}");
    }
}
