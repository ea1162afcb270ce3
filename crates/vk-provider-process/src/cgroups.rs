//! Per-container cgroups for the `process` provider: CPU and memory limits, usage for the
//! stats endpoints, OOM-kill counts for `OOMKilled`, and the cleanup that kills whatever a pod
//! left behind.
//!
//! Layout: `<base>/<name>/<pod uid>/<container>`, where `<name>` is a directory only vkubelet
//! uses (normally `vkubelet`) and that holds nothing but pod cgroups. Limits are set on the
//! container cgroups; the pod level exists so a pod can be removed in one go.
//!
//! Where `<base>` is, per version (see [`Cgroups::detect`]):
//! - **v2 (unified)**: the root of the cgroup2 mount as this process sees it. A v2 cgroup that
//!   holds processes may not hand controllers to its children ("no internal processes"), and
//!   vkubelet's own cgroup holds vkubelet, so nesting below it would mean moving vkubelet itself.
//!   The real root is exempt from that rule; inside a container with its own cgroup namespace the
//!   visible root is not, and when it still holds processes and has not enabled `cpu` and
//!   `memory` for its children, detection fails and says so.
//! - **v1 (legacy or hybrid)**: vkubelet's own cgroup in each hierarchy (from `/proc/self/cgroup`,
//!   mapped through the mount's root). v1 lets a cgroup hold processes and children at once, and
//!   nesting keeps pods inside whatever limits and cleanup apply to vkubelet (a container, a
//!   systemd unit, a sandbox) instead of escaping to the host's root. A vkubelet restarted in a
//!   different cgroup therefore no longer sees the old pods' cgroups in [`Cgroups::pods`].
//!
//! v2 is chosen when the cgroup2 mount offers both `cpu` and `memory`; otherwise v1 when
//! hierarchies with `cpu`, `cpuacct` and `memory` are mounted (a hybrid host's cgroup2 mount has
//! no controllers, so it lands here).
//!
//! Limits follow the kubelet's conversions: CFS quota over a 100 ms period, shares (v1) or
//! weight (v2) from the CPU request, and swap forbidden where the kernel can account it. A
//! container without a CPU request gets the kubelet's best-effort minimum (2 shares, weight 1).
//!
//! Not done: pod-level limits (the sum of the containers'), the cpuset, pids, io and hugetlb
//! controllers, and freezing a pod before killing it (the kill loop repeats instead).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{debug, warn};
use vk_provider_api::quantity::Amount;

/// The CFS period the kubelet uses, in microseconds.
const CFS_PERIOD_US: u64 = 100_000;
/// The kernel rejects quotas below 1 ms.
const MIN_QUOTA_US: u64 = 1_000;
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;
const SHARES_PER_CPU: u64 = 1_024;
/// How long [`Cgroups::remove_pod`] waits for killed processes to leave their cgroups.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(3);
const REMOVE_POLL: Duration = Duration::from_millis(20);
const MOUNTINFO: &str = "/proc/self/mountinfo";
const SELF_CGROUP: &str = "/proc/self/cgroup";
const PROCS: &str = "cgroup.procs";
const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Limits cannot be enforced on this host; the text says why.
    #[error("resource limits cannot be enforced: {0}")]
    Unavailable(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("{}: cannot parse {content:?}", path.display())]
    Parse { path: PathBuf, content: String },
    #[error("{}: processes {pids:?} are still in it after being killed", path.display())]
    Busy { path: PathBuf, pids: Vec<u32> },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A container's CPU and memory limits; `None` means unlimited (or, for the request, the
/// best-effort minimum).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_limit_millis: Option<u64>,
    pub cpu_request_millis: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
}

impl Limits {
    /// Reads `resources`. A zero limit is no limit (as for the kubelet), and a missing CPU
    /// request defaults to the limit, as the API server would have done; a pod that did not
    /// come through the API server is treated alike. Unparsable quantities are ignored with a
    /// warning, since the API server rejects them and nothing better can be done here.
    pub fn for_container(c: &Container) -> Limits {
        let res = c.resources.as_ref();
        let get = |map: Option<&BTreeMap<String, Quantity>>, key: &str, scale: u32| {
            let q = map?.get(key)?;
            let parsed = parse_quantity(&q.0, scale);
            if parsed.is_none() {
                warn!(container = %c.name, resource = key, quantity = %q.0, "ignoring an unparsable quantity");
            }
            parsed
        };
        let limits = res.and_then(|r| r.limits.as_ref());
        let requests = res.and_then(|r| r.requests.as_ref());
        let cpu_limit = get(limits, "cpu", 3).filter(|&m| m > 0);
        Limits {
            cpu_limit_millis: cpu_limit,
            cpu_request_millis: get(requests, "cpu", 3).or(cpu_limit),
            memory_limit_bytes: get(limits, "memory", 0).filter(|&b| b > 0),
        }
    }
}

/// A Kubernetes quantity in millis (CPU), rounded up as `Quantity.MilliValue()` does.
pub fn parse_cpu_millis(q: &str) -> Option<u64> {
    parse_quantity(q, 3)
}

/// A Kubernetes quantity as a whole number (bytes), rounded up as `Quantity.Value()` does.
pub fn parse_bytes(q: &str) -> Option<u64> {
    parse_quantity(q, 0)
}

/// `ceil(q * 10^scale)` (scale 0 or 3) for a non-negative quantity, through the contract's one
/// quantity parser, so `0.1Gi` and `1.5m` round the way the API server's do.
fn parse_quantity(q: &str, scale: u32) -> Option<u64> {
    let amount = Amount::parse(q).ok()?;
    if amount < Amount::ZERO {
        return None;
    }
    let value = match scale {
        0 => amount.value(),
        3 => amount.milli_value(),
        _ => return None,
    };
    u64::try_from(value).ok()
}

/// The kubelet's `MilliCPUToShares`.
pub fn cpu_shares(request_millis: Option<u64>) -> u64 {
    let millis = request_millis.unwrap_or(0);
    if millis == 0 {
        return MIN_SHARES;
    }
    (millis.saturating_mul(SHARES_PER_CPU) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// The kubelet's (and runc's) shares → `cpu.weight` conversion: [2, 262144] onto [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + ((shares - MIN_SHARES) * 9999) / (MAX_SHARES - MIN_SHARES)
}

/// The kubelet's `MilliCPUToQuota` for [`CFS_PERIOD_US`]; `None` is no quota.
fn cpu_quota_us(limit_millis: Option<u64>) -> Option<u64> {
    let millis = limit_millis.filter(|&m| m > 0)?;
    Some((millis.saturating_mul(CFS_PERIOD_US) / 1000).max(MIN_QUOTA_US))
}

/// Resource usage of one container, as the stats endpoints report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub cpu_usage_nanos: u64,
    pub memory_usage_bytes: u64,
    /// Usage less inactive page cache, as the kubelet computes it (and evicts by).
    pub memory_working_set_bytes: u64,
}

/// Pod UIDs, container names and the top directory's name become path components, so only
/// plain names pass: no separators, no `.`/`..`, nothing hidden, nothing exotic.
fn validate(name: &str) -> Result<&str, CgroupError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("longer than 255 bytes")
    } else if name.starts_with('.') {
        Some("starts with '.'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Some("only ASCII letters, digits, '-', '_' and '.' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CgroupError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(name),
    }
}

/// The directories of one cgroup (or of the base) in each place a controller lives. On v2 all
/// three are the same directory; on v1 `cpu` and `cpuacct` are often co-mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dirs {
    cpu: PathBuf,
    cpuacct: PathBuf,
    memory: PathBuf,
}

impl Dirs {
    fn same(dir: PathBuf) -> Dirs {
        Dirs {
            cpu: dir.clone(),
            cpuacct: dir.clone(),
            memory: dir,
        }
    }

    /// Callers pass only names that went through [`validate`].
    fn join(&self, name: &str) -> Dirs {
        Dirs {
            cpu: self.cpu.join(name),
            cpuacct: self.cpuacct.join(name),
            memory: self.memory.join(name),
        }
    }

    fn distinct(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = Vec::with_capacity(3);
        for d in [&self.cpu, &self.cpuacct, &self.memory] {
            if !out.contains(&d.as_path()) {
                out.push(d);
            }
        }
        out
    }
}

/// The host's cgroups as vkubelet uses them; see the module docs for the layout.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: CgroupVersion,
    /// `<base>/<name>` per controller.
    top: Dirs,
}

impl Cgroups {
    /// Detect the host's cgroups and prepare `<base>/<name>` (normally `vkubelet`).
    /// `Err(Unavailable)` says why limits cannot be enforced here: no cgroupfs, read-only, not
    /// root, `cpu`/`memory` controller missing, or a v2 root that holds processes.
    pub fn detect(name: &str) -> Result<Self, CgroupError> {
        validate(name)?;
        let mountinfo = fs::read_to_string(MOUNTINFO)
            .map_err(|e| CgroupError::Unavailable(format!("reading {MOUNTINFO}: {e}")))?;
        // Without our own membership the hierarchy roots still work, so this is not fatal.
        let own = fs::read_to_string(SELF_CGROUP).unwrap_or_default();
        let (version, base) = choose(&mountinfo, &own).map_err(CgroupError::Unavailable)?;
        debug!(?version, ?base, "cgroups detected");
        Self::prepare(version, base, name)
    }

    /// Like [`Cgroups::detect`], rooted at a given tree, so parsing and writes can be tested
    /// without privileges. v1: `<root>/cpu,cpuacct` (or `<root>/cpu` and `<root>/cpuacct`) and
    /// `<root>/memory`; v2: `<root>` with a `cgroup.controllers` listing `cpu` and `memory`.
    pub fn at(version: CgroupVersion, root: &Path, name: &str) -> Result<Self, CgroupError> {
        validate(name)?;
        let base = match version {
            CgroupVersion::V2 => Dirs::same(root.to_owned()),
            CgroupVersion::V1 => {
                let both = root.join("cpu,cpuacct");
                if both.is_dir() {
                    Dirs {
                        cpu: both.clone(),
                        cpuacct: both,
                        memory: root.join("memory"),
                    }
                } else {
                    Dirs {
                        cpu: root.join("cpu"),
                        cpuacct: root.join("cpuacct"),
                        memory: root.join("memory"),
                    }
                }
            }
        };
        Self::prepare(version, base, name)
    }

    fn prepare(version: CgroupVersion, base: Dirs, name: &str) -> Result<Self, CgroupError> {
        let unavailable = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
            CgroupError::Unavailable(format!("{what} {}: {e}", path.display()))
        };
        for dir in base.distinct() {
            if !dir.is_dir() {
                return Err(CgroupError::Unavailable(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
        }
        let top = base.join(name);
        match version {
            CgroupVersion::V2 => {
                let controllers = base.cpu.join("cgroup.controllers");
                let offered = fs::read_to_string(&controllers)
                    .map_err(|e| unavailable("reading", &controllers, &e))?;
                if !has_cpu_and_memory(&offered) {
                    return Err(CgroupError::Unavailable(format!(
                        "{} offers {:?}, not both cpu and memory (bound to a v1 hierarchy, or not delegated to this container?)",
                        controllers.display(),
                        offered.trim()
                    )));
                }
                let hint = format!(
                    "start vkubelet in a child cgroup of it (e.g. move the processes in it into {}/init)",
                    base.cpu.display()
                );
                enable_controllers(&base.cpu)
                    .map_err(|e| v2_enable_unavailable(&base.cpu, e, &hint))?;
                make_dir(&top.cpu).map_err(|e| unavailable("creating", &top.cpu, &e))?;
                let hint = "nothing but vkubelet's pod cgroups belongs in it";
                enable_controllers(&top.cpu)
                    .map_err(|e| v2_enable_unavailable(&top.cpu, e, hint))?;
            }
            CgroupVersion::V1 => {
                for dir in top.distinct() {
                    make_dir(dir).map_err(|e| unavailable("creating", dir, &e))?;
                }
            }
        }
        Ok(Cgroups { version, top })
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The directories that hold the pod cgroups (one on v2, one per hierarchy on v1), for
    /// telling a person where limits are enforced.
    pub fn base_dirs(&self) -> Vec<PathBuf> {
        self.top
            .distinct()
            .into_iter()
            .map(Path::to_owned)
            .collect()
    }

    /// Create (or reuse) `<pod_uid>/<container>` and apply `limits`; unset limits are written
    /// as unlimited so a reused cgroup does not keep an old value.
    pub fn create(
        &self,
        pod_uid: &str,
        container: &str,
        limits: &Limits,
    ) -> Result<ContainerCgroup, CgroupError> {
        let pod = self.top.join(validate(pod_uid)?);
        let dirs = pod.join(validate(container)?);
        match self.version {
            CgroupVersion::V2 => {
                make_dir(&pod.cpu).map_err(io_err(&pod.cpu))?;
                enable_controllers(&pod.cpu)?;
                make_dir(&dirs.cpu).map_err(io_err(&dirs.cpu))?;
                write_limits_v2(&dirs.cpu, limits)?;
            }
            CgroupVersion::V1 => {
                for (p, d) in pod.distinct().into_iter().zip(dirs.distinct()) {
                    make_dir(p).map_err(io_err(p))?;
                    make_dir(d).map_err(io_err(d))?;
                }
                write_limits_v1(&dirs, limits)?;
            }
        }
        debug!(pod = pod_uid, container, ?limits, "container cgroup ready");
        Ok(ContainerCgroup {
            version: self.version,
            dirs: Ok(dirs),
        })
    }

    /// A handle for an existing container cgroup (after a restart). An invalid name gives a
    /// handle whose operations fail (or report nothing), since this cannot return an error.
    pub fn container(&self, pod_uid: &str, container: &str) -> ContainerCgroup {
        let dirs = validate(pod_uid)
            .and_then(|_| validate(container))
            .map(|_| self.top.join(pod_uid).join(container))
            .map_err(|e| match e {
                CgroupError::InvalidName { name, reason } => (name, reason),
                other => (other.to_string(), "invalid"),
            });
        ContainerCgroup {
            version: self.version,
            dirs,
        }
    }

    /// SIGKILL every process left in the pod's cgroups (`cgroup.kill` on v2 when the kernel
    /// has it, and `cgroup.procs` plus kill(2) regardless, to catch the rest), then remove the
    /// directories, children first, retrying while the processes exit (up to 3 s). Ok if there is
    /// none. The file work of each attempt runs on the blocking pool; the waits between attempts
    /// are timers, so no thread is held while processes die.
    pub async fn remove_pod(&self, pod_uid: &str) -> Result<(), CgroupError> {
        let deadline = tokio::time::Instant::now() + REMOVE_TIMEOUT;
        let mut first = true;
        loop {
            let (this, uid) = (self.clone(), pod_uid.to_string());
            let attempt = tokio::task::spawn_blocking(move || this.remove_pod_once(&uid, first))
                .await
                .map_err(|e| CgroupError::Unavailable(format!("removal task failed: {e}")))?;
            first = false;
            match attempt {
                Ok(()) => return Ok(()),
                Err(e @ CgroupError::InvalidName { .. }) => return Err(e),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(REMOVE_POLL).await,
            }
        }
    }

    /// One attempt of [`Self::remove_pod`] (blocking): kill what is left, remove the directories.
    /// `first` also writes `cgroup.kill` on v2. An error names what is still there.
    fn remove_pod_once(&self, pod_uid: &str, first: bool) -> Result<(), CgroupError> {
        let pod = self.top.join(validate(pod_uid)?);
        let dirs: Vec<&Path> = pod.distinct().into_iter().filter(|d| d.is_dir()).collect();
        if dirs.is_empty() {
            return Ok(());
        }
        if first && self.version == CgroupVersion::V2 {
            for dir in &dirs {
                let kill_file = dir.join("cgroup.kill");
                if kill_file.exists()
                    && let Err(e) = fs::write(&kill_file, "1")
                {
                    warn!(path = %kill_file.display(), error = %e, "cgroup.kill failed; killing one by one");
                }
            }
        }
        let mut pids = Vec::new();
        for dir in &dirs {
            tree_pids(dir, &mut pids);
        }
        for &pid in &pids {
            kill_pid(pid);
        }
        let mut last_err = None;
        for dir in &dirs {
            if let Err(e) = remove_tree(dir) {
                last_err = Some(e);
            }
        }
        match last_err {
            None => {
                debug!(pod = pod_uid, "pod cgroups removed");
                Ok(())
            }
            Some(CgroupError::Io { path, .. }) if !pids.is_empty() => {
                Err(CgroupError::Busy { path, pids })
            }
            Some(other) => Err(other),
        }
    }

    /// Pod UIDs that have cgroups (for cleanup after a crash).
    pub fn pods(&self) -> Vec<String> {
        let mut out = Vec::new();
        for dir in self.top.distinct() {
            for name in subdirs(dir) {
                if validate(&name).is_ok() {
                    out.push(name);
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct ContainerCgroup {
    version: CgroupVersion,
    /// `Err` keeps the rejected name for the error a handle from [`Cgroups::container`] gives.
    dirs: Result<Dirs, (String, &'static str)>,
}

impl ContainerCgroup {
    fn dirs(&self) -> Result<&Dirs, CgroupError> {
        self.dirs
            .as_ref()
            .map_err(|(name, reason)| CgroupError::InvalidName {
                name: name.clone(),
                reason,
            })
    }

    /// The files a process writes its pid into to join (one per hierarchy on v1). These are
    /// `cgroup.procs`, not `tasks`, so a multi-threaded process moves whole.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .map(|d| d.distinct().into_iter().map(|d| d.join(PROCS)).collect())
            .unwrap_or_default()
    }

    pub fn join(&self, pid: u32) -> Result<(), CgroupError> {
        self.dirs()?;
        for file in self.procs_files() {
            fs::write(&file, pid.to_string()).map_err(io_err(&file))?;
        }
        Ok(())
    }

    /// v2: `cpu.stat` usage_usec, `memory.current`, `memory.stat` inactive_file; v1:
    /// `cpuacct.usage`, `memory.usage_in_bytes`, `memory.stat` total_inactive_file.
    pub fn usage(&self) -> Result<Usage, CgroupError> {
        let d = self.dirs()?;
        let (cpu_usage_nanos, memory_usage_bytes, inactive_key) = match self.version {
            CgroupVersion::V2 => {
                let stat = d.cpu.join("cpu.stat");
                let usec = required_key(&stat, "usage_usec")?;
                let current = read_u64(&d.memory.join("memory.current"))?;
                (usec.saturating_mul(1000), current, "inactive_file")
            }
            CgroupVersion::V1 => {
                let nanos = read_u64(&d.cpuacct.join("cpuacct.usage"))?;
                let usage = read_u64(&d.memory.join("memory.usage_in_bytes"))?;
                (nanos, usage, "total_inactive_file")
            }
        };
        let stat = d.memory.join("memory.stat");
        let text = fs::read_to_string(&stat).map_err(io_err(&stat))?;
        let inactive = key_value(&text, inactive_key).unwrap_or(0);
        Ok(Usage {
            cpu_usage_nanos,
            memory_usage_bytes,
            memory_working_set_bytes: memory_usage_bytes.saturating_sub(inactive),
        })
    }

    /// How many processes the kernel OOM-killed in this cgroup so far (v2: `memory.events`
    /// `oom_kill`; v1: the `oom_kill` line of `memory.oom_control`, kernel 4.13 and later).
    /// 0 when the kernel does not count it: guessing from `memory.failcnt` would call a
    /// container that merely hit its limit (and reclaimed) OOM-killed.
    pub fn oom_kills(&self) -> u64 {
        let Ok(d) = self.dirs() else { return 0 };
        let file = match self.version {
            CgroupVersion::V2 => d.memory.join("memory.events"),
            CgroupVersion::V1 => d.memory.join("memory.oom_control"),
        };
        fs::read_to_string(file)
            .ok()
            .and_then(|t| key_value(&t, "oom_kill"))
            .unwrap_or(0)
    }

    /// The processes in this cgroup (in any of its hierarchies on v1), sorted.
    pub fn pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for file in self.procs_files() {
            out.extend(read_pids(&file));
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// A cgroup directory may already exist (a restarted container, a second container of the
/// same pod racing this one); that is fine.
fn make_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

fn has_cpu_and_memory(list: &str) -> bool {
    let words: Vec<&str> = list.split_whitespace().collect();
    words.contains(&"cpu") && words.contains(&"memory")
}

/// Hand `cpu` and `memory` to `dir`'s children, unless they already are: writing is refused
/// when `dir` holds processes (EBUSY), even if nothing would change.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    if fs::read_to_string(&file).is_ok_and(|t| has_cpu_and_memory(&t)) {
        return Ok(());
    }
    fs::write(&file, "+cpu +memory").map_err(io_err(&file))
}

fn v2_enable_unavailable(dir: &Path, e: CgroupError, hint: &str) -> CgroupError {
    let busy = matches!(&e, CgroupError::Io { source, .. } if source.kind() == io::ErrorKind::ResourceBusy);
    if busy {
        CgroupError::Unavailable(format!(
            "{} holds processes of its own, so cgroup v2 refuses to give its children the cpu and memory controllers; {hint}",
            dir.display()
        ))
    } else {
        CgroupError::Unavailable(format!(
            "cannot enable cpu and memory for {}'s children: {e} (not root, or a read-only cgroupfs?)",
            dir.display()
        ))
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path))
}

fn write_limits_v2(dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
    let quota =
        cpu_quota_us(limits.cpu_limit_millis).map_or_else(|| "max".to_owned(), |q| q.to_string());
    write(&dir.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
    let weight = shares_to_weight(cpu_shares(limits.cpu_request_millis));
    write(&dir.join("cpu.weight"), &weight.to_string())?;
    let memory = limits
        .memory_limit_bytes
        .map_or_else(|| "max".to_owned(), |b| b.to_string());
    write(&dir.join("memory.max"), &memory)?;
    // Absent when the kernel does not account swap; then there is nothing to forbid with.
    let swap = dir.join("memory.swap.max");
    if swap.exists() {
        write(&swap, "0")?;
    }
    Ok(())
}

fn write_limits_v1(dirs: &Dirs, limits: &Limits) -> Result<(), CgroupError> {
    // Period before quota: the kernel checks the quota against the period already set.
    write(
        &dirs.cpu.join("cpu.cfs_period_us"),
        &CFS_PERIOD_US.to_string(),
    )?;
    let quota =
        cpu_quota_us(limits.cpu_limit_millis).map_or_else(|| "-1".to_owned(), |q| q.to_string());
    write(&dirs.cpu.join("cpu.cfs_quota_us"), &quota)?;
    let shares = cpu_shares(limits.cpu_request_millis);
    write(&dirs.cpu.join("cpu.shares"), &shares.to_string())?;
    let memory = limits
        .memory_limit_bytes
        .map_or_else(|| "-1".to_owned(), |b| b.to_string());
    // The kernel keeps memsw >= memory at every step, so a reused cgroup whose old limit is
    // below the new one needs memsw lifted first; then memsw = memory forbids swap.
    let memsw = dirs.memory.join("memory.memsw.limit_in_bytes");
    let has_memsw = memsw.exists();
    if has_memsw {
        write(&memsw, "-1")?;
    }
    write(&dirs.memory.join("memory.limit_in_bytes"), &memory)?;
    if has_memsw && limits.memory_limit_bytes.is_some() {
        write(&memsw, &memory)?;
    }
    Ok(())
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    text.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_owned(),
        content: text,
    })
}

/// The value of `key` in a flat-keyed file (`key value` per line).
fn key_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn required_key(path: &Path, key: &str) -> Result<u64, CgroupError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    key_value(&text, key).ok_or_else(|| CgroupError::Parse {
        path: path.to_owned(),
        content: text,
    })
}

fn read_pids(file: &Path) -> Vec<u32> {
    fs::read_to_string(file)
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Every pid in `dir` and the cgroups below it.
fn tree_pids(dir: &Path, out: &mut Vec<u32>) {
    out.extend(read_pids(&dir.join(PROCS)));
    for child in subdirs(dir) {
        tree_pids(&dir.join(child), out);
    }
}

fn kill_pid(pid: u32) {
    // Neither init nor vkubelet itself belongs in a pod cgroup; never kill them on the word
    // of a file.
    if pid <= 1 || pid == std::process::id() {
        return;
    }
    let Ok(raw) = i32::try_from(pid) else { return };
    match kill(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => warn!(pid, error = %e, "killing a process left in a pod cgroup"),
    }
}

/// rmdir `dir` after its child cgroups. cgroupfs removes a directory that holds only its
/// interface files and answers EBUSY while children or processes remain; only an ordinary
/// directory (a fake tree in tests) answers ENOTEMPTY, and only then are its plain files
/// removed.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for child in subdirs(dir) {
        remove_tree(&dir.join(child))?;
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_file()) {
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
            fs::remove_dir(dir).map_err(io_err(dir))
        }
        Err(e) => Err(CgroupError::Io {
            path: dir.to_owned(),
            source: e,
        }),
    }
}

/// One line of `/proc/self/mountinfo` that matters here.
#[derive(Debug)]
struct Mount {
    /// The path inside the filesystem that is mounted (not `/` for a bind of a subtree).
    root: String,
    mount_point: PathBuf,
    fstype: String,
    read_only: bool,
    /// Super options; for cgroup v1 they name the hierarchy's controllers.
    options: Vec<String>,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?.to_owned();
            let _source = right.next()?;
            let options: Vec<String> = right.next()?.split(',').map(str::to_owned).collect();
            let mount_opts = left.get(5)?;
            let read_only =
                mount_opts.split(',').any(|o| o == "ro") || options.iter().any(|o| o == "ro");
            Some(Mount {
                root: unescape(left.get(3)?),
                mount_point: PathBuf::from(unescape(left.get(4)?)),
                fstype,
                read_only,
                options,
            })
        })
        .collect()
}

/// `(controllers, path)` per line of `/proc/self/cgroup`; v2's line has no controllers.
fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            let controllers = controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            Some((controllers, path.to_owned()))
        })
        .collect()
}

/// `mount_point` plus our own cgroup `own` relative to the mount's `root`, when `own` is
/// below it and the directory exists; otherwise the mount point itself (a bind of some other
/// subtree, or a cgroup namespace that shows us as `/../..`).
fn nested(mount: &Mount, own: Option<&str>) -> PathBuf {
    let Some(own) = own else {
        return mount.mount_point.clone();
    };
    let root = mount.root.trim_end_matches('/');
    let rel = if root.is_empty() {
        Some(own)
    } else if own == root {
        Some("")
    } else {
        own.strip_prefix(root).filter(|r| r.starts_with('/'))
    };
    let Some(rel) = rel else {
        return mount.mount_point.clone();
    };
    let mut dir = mount.mount_point.clone();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(part) => dir.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return mount.mount_point.clone(),
        }
    }
    if dir.is_dir() {
        dir
    } else {
        mount.mount_point.clone()
    }
}

/// Pick the version and the base directories from mountinfo and `/proc/self/cgroup`, reading
/// `cgroup.controllers` of a cgroup2 mount to see whether it has the controllers. The error
/// says what was found and why it does not do.
fn choose(mountinfo: &str, own: &str) -> Result<(CgroupVersion, Dirs), String> {
    let mounts = parse_mountinfo(mountinfo);
    let own = parse_proc_cgroup(own);
    let mut reasons = Vec::new();

    if let Some(m) = mounts.iter().find(|m| m.fstype == "cgroup2") {
        let file = m.mount_point.join("cgroup.controllers");
        match fs::read_to_string(&file) {
            Ok(list) if has_cpu_and_memory(&list) => {
                if m.read_only {
                    reasons.push(format!(
                        "the cgroup2 mount at {} is read-only",
                        m.mount_point.display()
                    ));
                } else {
                    return Ok((CgroupVersion::V2, Dirs::same(m.mount_point.clone())));
                }
            }
            Ok(list) => reasons.push(format!(
                "the cgroup2 mount at {} offers {:?}, not both cpu and memory",
                m.mount_point.display(),
                list.trim()
            )),
            Err(e) => reasons.push(format!("reading {}: {e}", file.display())),
        }
    }

    let v1 = |controller: &str| {
        mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == controller))
    };
    let own_path = |controller: &str| {
        own.iter()
            .find(|(cs, _)| cs.iter().any(|c| c == controller))
            .map(|(_, p)| p.as_str())
    };
    match (v1("cpu"), v1("cpuacct"), v1("memory")) {
        (Some(cpu), Some(cpuacct), Some(memory)) => {
            if let Some(ro) = [cpu, cpuacct, memory].into_iter().find(|m| m.read_only) {
                reasons.push(format!(
                    "the cgroup v1 mount at {} is read-only",
                    ro.mount_point.display()
                ));
            } else {
                return Ok((
                    CgroupVersion::V1,
                    Dirs {
                        cpu: nested(cpu, own_path("cpu")),
                        cpuacct: nested(cpuacct, own_path("cpuacct")),
                        memory: nested(memory, own_path("memory")),
                    },
                ));
            }
        }
        (cpu, cpuacct, memory) => {
            let missing: Vec<&str> = [("cpu", cpu), ("cpuacct", cpuacct), ("memory", memory)]
                .into_iter()
                .filter(|(_, m)| m.is_none())
                .map(|(n, _)| n)
                .collect();
            if missing.len() < 3 || reasons.is_empty() {
                reasons.push(format!(
                    "no cgroup v1 hierarchy is mounted for {}",
                    missing.join(", ")
                ));
            }
        }
    }
    if !mounts
        .iter()
        .any(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
    {
        return Err("no cgroup filesystem is mounted".to_owned());
    }
    Err(reasons.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A temporary directory removed on drop (the crate has no tempfile dependency).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "vk-cgroups-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn read(p: impl AsRef<Path>) -> String {
        fs::read_to_string(p).unwrap()
    }

    fn v1_tree(co_mounted: bool) -> TempDir {
        let t = TempDir::new();
        if co_mounted {
            fs::create_dir(t.0.join("cpu,cpuacct")).unwrap();
        } else {
            fs::create_dir(t.0.join("cpu")).unwrap();
            fs::create_dir(t.0.join("cpuacct")).unwrap();
        }
        fs::create_dir(t.0.join("memory")).unwrap();
        t
    }

    fn v2_tree() -> TempDir {
        let t = TempDir::new();
        fs::write(
            t.0.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        t
    }

    #[test]
    fn quantities() {
        let cpu = [
            ("500m", Some(500)),
            ("2", Some(2000)),
            ("0.5", Some(500)),
            (".5", Some(500)),
            ("1.", Some(1000)),
            ("1.5m", Some(2)),
            ("100u", Some(1)),
            ("250000000n", Some(250)),
            ("1e-3", Some(1)),
            ("2E1", Some(20_000)),
            ("+3", Some(3000)),
            ("0", Some(0)),
            ("-0", Some(0)),
            ("1k", Some(1_000_000)),
        ];
        for (q, want) in cpu {
            assert_eq!(parse_cpu_millis(q), want, "cpu {q}");
        }
        let bytes = [
            ("128Mi", Some(134_217_728)),
            ("1Ki", Some(1024)),
            ("1Gi", Some(1 << 30)),
            ("1Ti", Some(1 << 40)),
            ("1Pi", Some(1 << 50)),
            ("1Ei", Some(1 << 60)),
            ("1G", Some(1_000_000_000)),
            ("1k", Some(1000)),
            ("1M", Some(1_000_000)),
            ("1T", Some(1_000_000_000_000)),
            ("1P", Some(1_000_000_000_000_000)),
            ("1E", Some(1_000_000_000_000_000_000)),
            ("1e9", Some(1_000_000_000)),
            ("1E3", Some(1000)),
            ("1e+2", Some(100)),
            ("100", Some(100)),
            ("0.1Gi", Some(107_374_183)),
            ("1.5Gi", Some(1_610_612_736)),
            ("129e6", Some(129_000_000)),
            ("123456789012345678901234567890e-20", Some(1_234_567_891)),
            ("0.000000000000000000000000000000000000000001", Some(1)),
            (" 64Mi ", Some(67_108_864)),
            ("0.00", Some(0)),
            ("1m", Some(1)),
        ];
        for (q, want) in bytes {
            assert_eq!(parse_bytes(q), want, "bytes {q}");
        }
        let bad = [
            "",
            "-1",
            "-1Mi",
            "abc",
            "1Qi",
            "1.2.3",
            ".",
            "Mi",
            "1 Mi",
            "1e",
            "1e+",
            "1ee3",
            "1KiB",
            "16Ei",
            "1e30",
            "1.5e999999999999",
            "1mi",
        ];
        for q in bad {
            assert_eq!(parse_bytes(q), None, "bytes {q:?} should be rejected");
        }
    }

    #[test]
    fn shares_and_weights() {
        assert_eq!(cpu_shares(None), 2);
        assert_eq!(cpu_shares(Some(0)), 2);
        assert_eq!(cpu_shares(Some(1)), 2);
        assert_eq!(cpu_shares(Some(100)), 102);
        assert_eq!(cpu_shares(Some(500)), 512);
        assert_eq!(cpu_shares(Some(1000)), 1024);
        assert_eq!(cpu_shares(Some(1_000_000)), 262_144);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(102), 4);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(shares_to_weight(u64::MAX), 10_000);
        assert_eq!(cpu_quota_us(None), None);
        assert_eq!(cpu_quota_us(Some(0)), None);
        assert_eq!(cpu_quota_us(Some(1)), Some(1000));
        assert_eq!(cpu_quota_us(Some(250)), Some(25_000));
        assert_eq!(cpu_quota_us(Some(2000)), Some(200_000));
    }

    #[test]
    fn limits_from_container() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "app",
            "resources": {
                "limits": {"cpu": "500m", "memory": "128Mi"},
                "requests": {"cpu": "0.25"}
            }
        }))
        .unwrap();
        assert_eq!(
            Limits::for_container(&c),
            Limits {
                cpu_limit_millis: Some(500),
                cpu_request_millis: Some(250),
                memory_limit_bytes: Some(134_217_728),
            }
        );
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "app",
            "resources": {"limits": {"cpu": "2", "memory": "0"}}
        }))
        .unwrap();
        assert_eq!(
            Limits::for_container(&c),
            Limits {
                cpu_limit_millis: Some(2000),
                cpu_request_millis: Some(2000),
                memory_limit_bytes: None,
            }
        );
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "app",
            "resources": {"limits": {"memory": "1G"}, "requests": {"cpu": "100m"}}
        }))
        .unwrap();
        assert_eq!(
            Limits::for_container(&c),
            Limits {
                cpu_limit_millis: None,
                cpu_request_millis: Some(100),
                memory_limit_bytes: Some(1_000_000_000),
            }
        );
        let c: Container = serde_json::from_value(serde_json::json!({"name": "app"})).unwrap();
        assert_eq!(Limits::for_container(&c), Limits::default());
    }

    #[test]
    fn v1_writes_limits() {
        let t = v1_tree(true);
        let cg = Cgroups::at(CgroupVersion::V1, &t.0, "vkubelet").unwrap();
        assert_eq!(cg.version(), CgroupVersion::V1);
        let base = t.0.join("cpu,cpuacct/vkubelet");
        let mem = t.0.join("memory/vkubelet");
        assert!(base.is_dir() && mem.is_dir());
        // Present memsw means the kernel accounts swap; it must end equal to the limit.
        fs::create_dir_all(mem.join("pod1/app")).unwrap();
        fs::write(mem.join("pod1/app/memory.memsw.limit_in_bytes"), "x").unwrap();
        let limits = Limits {
            cpu_limit_millis: Some(500),
            cpu_request_millis: Some(250),
            memory_limit_bytes: Some(64 << 20),
        };
        let c = cg.create("pod1", "app", &limits).unwrap();
        let cpu = base.join("pod1/app");
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(cpu.join("cpu.shares")), "256");
        let m = mem.join("pod1/app");
        assert_eq!(read(m.join("memory.limit_in_bytes")), "67108864");
        assert_eq!(read(m.join("memory.memsw.limit_in_bytes")), "67108864");
        assert_eq!(
            c.procs_files(),
            vec![cpu.join("cgroup.procs"), m.join("cgroup.procs")]
        );
        c.join(4242).unwrap();
        assert_eq!(read(cpu.join("cgroup.procs")), "4242");
        assert_eq!(read(m.join("cgroup.procs")), "4242");
        assert_eq!(c.pids(), vec![4242]);

        // Reuse with nothing set: everything back to unlimited, no stale value.
        cg.create("pod1", "app", &Limits::default()).unwrap();
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "-1");
        assert_eq!(read(cpu.join("cpu.shares")), "2");
        assert_eq!(read(m.join("memory.limit_in_bytes")), "-1");
        assert_eq!(read(m.join("memory.memsw.limit_in_bytes")), "-1");

        // Without memsw nothing creates it.
        let c2 = cg.create("pod1", "side", &limits).unwrap();
        assert!(!mem.join("pod1/side/memory.memsw.limit_in_bytes").exists());
        assert_eq!(c2.procs_files().len(), 2);
    }

    #[test]
    fn v1_separate_cpu_and_cpuacct() {
        let t = v1_tree(false);
        let cg = Cgroups::at(CgroupVersion::V1, &t.0, "vk").unwrap();
        let c = cg.create("p", "c", &Limits::default()).unwrap();
        assert_eq!(
            c.procs_files(),
            vec![
                t.0.join("cpu/vk/p/c/cgroup.procs"),
                t.0.join("cpuacct/vk/p/c/cgroup.procs"),
                t.0.join("memory/vk/p/c/cgroup.procs"),
            ]
        );
        assert!(t.0.join("cpuacct/vk/p/c").is_dir());
        assert_eq!(read(t.0.join("cpu/vk/p/c/cpu.cfs_quota_us")), "-1");
        assert!(!t.0.join("cpuacct/vk/p/c/cpu.cfs_quota_us").exists());
        assert_eq!(cg.base_dirs().len(), 3);
    }

    #[test]
    fn v2_writes_limits() {
        let t = v2_tree();
        let cg = Cgroups::at(CgroupVersion::V2, &t.0, "vkubelet").unwrap();
        assert_eq!(cg.version(), CgroupVersion::V2);
        assert_eq!(read(t.0.join("cgroup.subtree_control")), "+cpu +memory");
        let top = t.0.join("vkubelet");
        assert_eq!(read(top.join("cgroup.subtree_control")), "+cpu +memory");
        fs::create_dir_all(top.join("pod1/app")).unwrap();
        fs::write(top.join("pod1/app/memory.swap.max"), "max").unwrap();
        let limits = Limits {
            cpu_limit_millis: Some(1500),
            cpu_request_millis: Some(1000),
            memory_limit_bytes: Some(128 << 20),
        };
        let c = cg.create("pod1", "app", &limits).unwrap();
        let d = top.join("pod1/app");
        assert_eq!(
            read(top.join("pod1/cgroup.subtree_control")),
            "+cpu +memory"
        );
        assert_eq!(read(d.join("cpu.max")), "150000 100000");
        assert_eq!(read(d.join("cpu.weight")), "39");
        assert_eq!(read(d.join("memory.max")), "134217728");
        assert_eq!(read(d.join("memory.swap.max")), "0");
        assert_eq!(c.procs_files(), vec![d.join("cgroup.procs")]);

        cg.create("pod1", "app", &Limits::default()).unwrap();
        assert_eq!(read(d.join("cpu.max")), "max 100000");
        assert_eq!(read(d.join("cpu.weight")), "1");
        assert_eq!(read(d.join("memory.max")), "max");

        let c2 = cg.create("pod1", "side", &limits).unwrap();
        assert!(!top.join("pod1/side/memory.swap.max").exists());
        assert_eq!(c2.procs_files(), vec![top.join("pod1/side/cgroup.procs")]);
    }

    #[test]
    fn v2_leaves_enabled_controllers_alone() {
        let t = v2_tree();
        // A root that already delegates must not be written: with processes in it the kernel
        // would answer EBUSY even for a no-op.
        fs::write(t.0.join("cgroup.subtree_control"), "cpu io memory\n").unwrap();
        Cgroups::at(CgroupVersion::V2, &t.0, "vkubelet").unwrap();
        assert_eq!(read(t.0.join("cgroup.subtree_control")), "cpu io memory\n");
    }

    #[test]
    fn unavailable_trees() {
        let t = TempDir::new();
        for v in [CgroupVersion::V1, CgroupVersion::V2] {
            let e = Cgroups::at(v, &t.0, "vkubelet").unwrap_err();
            assert!(matches!(e, CgroupError::Unavailable(_)), "{v:?}: {e}");
        }
        fs::write(t.0.join("cgroup.controllers"), "cpuset io pids\n").unwrap();
        let e = Cgroups::at(CgroupVersion::V2, &t.0, "vkubelet").unwrap_err();
        assert!(
            matches!(&e, CgroupError::Unavailable(m) if m.contains("not both cpu and memory")),
            "{e}"
        );
        let t = v1_tree(true);
        fs::remove_dir(t.0.join("memory")).unwrap();
        let e = Cgroups::at(CgroupVersion::V1, &t.0, "vkubelet").unwrap_err();
        assert!(
            matches!(&e, CgroupError::Unavailable(m) if m.contains("memory")),
            "{e}"
        );
    }

    #[test]
    fn usage_and_oom_v2() {
        let t = v2_tree();
        let cg = Cgroups::at(CgroupVersion::V2, &t.0, "vkubelet").unwrap();
        let c = cg.create("p", "c", &Limits::default()).unwrap();
        let d = t.0.join("vkubelet/p/c");
        fs::write(
            d.join("cpu.stat"),
            "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n",
        )
        .unwrap();
        fs::write(d.join("memory.current"), "10485760\n").unwrap();
        fs::write(
            d.join("memory.stat"),
            "anon 100\nfile 200\nactive_file 5\ninactive_file 4194304\n",
        )
        .unwrap();
        assert_eq!(
            c.usage().unwrap(),
            Usage {
                cpu_usage_nanos: 1_234_000,
                memory_usage_bytes: 10_485_760,
                memory_working_set_bytes: 6_291_456,
            }
        );
        // More inactive cache than usage (they are sampled apart) must not wrap.
        fs::write(d.join("memory.stat"), "inactive_file 99999999\n").unwrap();
        assert_eq!(c.usage().unwrap().memory_working_set_bytes, 0);
        assert_eq!(c.oom_kills(), 0);
        fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(c.oom_kills(), 2);
        fs::write(d.join("cpu.stat"), "user_usec 1\n").unwrap();
        assert!(matches!(c.usage(), Err(CgroupError::Parse { .. })));
    }

    #[test]
    fn usage_and_oom_v1() {
        let t = v1_tree(true);
        let cg = Cgroups::at(CgroupVersion::V1, &t.0, "vkubelet").unwrap();
        let c = cg.create("p", "c", &Limits::default()).unwrap();
        let cpu = t.0.join("cpu,cpuacct/vkubelet/p/c");
        let mem = t.0.join("memory/vkubelet/p/c");
        fs::write(cpu.join("cpuacct.usage"), "987654321\n").unwrap();
        fs::write(mem.join("memory.usage_in_bytes"), "8192000\n").unwrap();
        fs::write(
            mem.join("memory.stat"),
            "cache 1\ninactive_file 7\ntotal_cache 1\ntotal_inactive_file 192000\n",
        )
        .unwrap();
        assert_eq!(
            c.usage().unwrap(),
            Usage {
                cpu_usage_nanos: 987_654_321,
                memory_usage_bytes: 8_192_000,
                memory_working_set_bytes: 8_000_000,
            }
        );
        fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\n",
        )
        .unwrap();
        assert_eq!(c.oom_kills(), 0, "an old kernel without the counter");
        fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
        )
        .unwrap();
        assert_eq!(c.oom_kills(), 5);
        fs::write(mem.join("memory.usage_in_bytes"), "lots\n").unwrap();
        assert!(matches!(c.usage(), Err(CgroupError::Parse { .. })));
    }

    #[test]
    fn invalid_names_rejected() {
        let t = v2_tree();
        let cg = Cgroups::at(CgroupVersion::V2, &t.0, "vkubelet").unwrap();
        let long = "a".repeat(256);
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", ".hidden", "a\0b", "a b", "x\n", &long,
        ] {
            assert!(
                matches!(
                    cg.create(bad, "c", &Limits::default()),
                    Err(CgroupError::InvalidName { .. })
                ),
                "pod {bad:?}"
            );
            assert!(
                matches!(
                    cg.create("p", bad, &Limits::default()),
                    Err(CgroupError::InvalidName { .. })
                ),
                "container {bad:?}"
            );
            assert!(matches!(
                cg.remove_pod_blocking(bad),
                Err(CgroupError::InvalidName { .. })
            ));
            let h = cg.container(bad, "c");
            assert!(h.procs_files().is_empty());
            assert!(matches!(h.join(1), Err(CgroupError::InvalidName { .. })));
            assert!(matches!(h.usage(), Err(CgroupError::InvalidName { .. })));
            assert_eq!(h.oom_kills(), 0);
            assert!(h.pids().is_empty());
            assert!(matches!(
                Cgroups::at(CgroupVersion::V2, &t.0, bad),
                Err(CgroupError::InvalidName { .. })
            ));
        }
        // Nothing escaped the tree.
        assert!(!t.0.join("x").exists() && !t.0.join("c").exists());
        for ok in ["7c9e6679-7425-40de-944b-e07fc1f90ae7", "app", "a.b", "A_1"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn pods_and_removal_in_fake_trees() {
        for (v, t) in [
            (CgroupVersion::V1, v1_tree(false)),
            (CgroupVersion::V2, v2_tree()),
        ] {
            let cg = Cgroups::at(v, &t.0, "vkubelet").unwrap();
            assert!(cg.pods().is_empty());
            cg.create("pod-b", "c1", &Limits::default()).unwrap();
            cg.create("pod-b", "c2", &Limits::default()).unwrap();
            cg.create("pod-a", "c1", &Limits::default()).unwrap();
            // A stray file or odd directory is not a pod.
            fs::write(cg.top.cpu.join("cgroup.procs"), "").unwrap();
            fs::create_dir(cg.top.memory.join(".tmp")).unwrap();
            assert_eq!(cg.pods(), vec!["pod-a", "pod-b"], "{v:?}");
            cg.remove_pod_blocking("pod-b").unwrap();
            assert_eq!(cg.pods(), vec!["pod-a"], "{v:?}");
            for d in cg.base_dirs() {
                assert!(!d.join("pod-b").exists());
                assert!(d.join("pod-a/c1").is_dir());
            }
            cg.remove_pod_blocking("pod-b").unwrap();
            cg.remove_pod_blocking("never-existed").unwrap();
            let h = cg.container("pod-a", "c1");
            assert_eq!(
                h.procs_files(),
                cg.create("pod-a", "c1", &Limits::default())
                    .unwrap()
                    .procs_files()
            );
        }
    }

    #[test]
    fn chooses_from_mountinfo() {
        let t = TempDir::new();
        let root = &t.0;
        // Hybrid: an empty unified mount, separate cpu and cpuacct, memory nested.
        for d in ["unified", "cpu", "cpuacct", "memory/sandbox/abc"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        let r = root.display();
        let hybrid = format!(
            "31 23 0:28 / {r} rw,relatime - tmpfs tmpfs rw,mode=755\n\
             32 31 0:29 / {r}/cpu rw,relatime - cgroup cgroup rw,cpu\n\
             33 31 0:30 / {r}/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n\
             35 31 0:32 / {r}/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n\
             40 31 0:37 / {r}/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
             41 31 0:38 / {r}/unified rw,relatime - cgroup2 cgroup2 rw\n"
        );
        let own = "9:name=systemd:/\n4:memory:/sandbox/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";
        let (v, dirs) = choose(&hybrid, own).unwrap();
        assert_eq!(v, CgroupVersion::V1);
        assert_eq!(
            dirs,
            Dirs {
                cpu: root.join("cpu"),
                cpuacct: root.join("cpuacct"),
                memory: root.join("memory/sandbox/abc"),
            }
        );
        // A membership whose directory is not visible, or that climbs out, uses the mount.
        let own = "4:memory:/elsewhere\n2:cpuacct:/../..\n1:cpu:/\n";
        let (_, dirs) = choose(&hybrid, own).unwrap();
        assert_eq!(dirs.memory, root.join("memory"));
        assert_eq!(dirs.cpuacct, root.join("cpuacct"));

        // A container's bind of its own subtree (mount root = our path): the mount itself.
        let co = format!(
            "32 31 0:29 /docker/x {r}/cpu rw - cgroup cgroup rw,cpu,cpuacct\n\
             35 31 0:32 /docker/x {r}/memory rw - cgroup cgroup rw,memory\n"
        );
        let own = "4:memory:/docker/x\n2:cpu,cpuacct:/docker/x\n";
        let (v, dirs) = choose(&co, own).unwrap();
        assert_eq!(v, CgroupVersion::V1);
        assert_eq!(
            dirs,
            Dirs {
                cpu: root.join("cpu"),
                cpuacct: root.join("cpu"),
                memory: root.join("memory")
            }
        );

        // Unified with both controllers wins; the base is the mount, not our own cgroup.
        let u = root.join("my cg");
        fs::create_dir_all(u.join("system.slice")).unwrap();
        fs::write(u.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        let unified =
            format!("30 23 0:26 / {r}/my\\040cg rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n");
        let (v, dirs) = choose(&unified, "0::/system.slice\n").unwrap();
        assert_eq!(v, CgroupVersion::V2);
        assert_eq!(dirs, Dirs::same(u.clone()));

        let ro = unified.replace("rw,nosuid", "ro,nosuid");
        let e = choose(&ro, "0::/\n").unwrap_err();
        assert!(e.contains("read-only"), "{e}");

        let e = choose(&hybrid.replace("rw,memory", "rw,blkio"), "").unwrap_err();
        assert!(e.contains("offers \"hugetlb\""), "{e}");
        assert!(
            e.contains("no cgroup v1 hierarchy is mounted for memory"),
            "{e}"
        );

        let ro1 = hybrid.replace("- cgroup cgroup rw,cpu\n", "- cgroup cgroup ro,cpu\n");
        let e = choose(&ro1, "").unwrap_err();
        assert!(e.contains("read-only"), "{e}");

        let e = choose("22 1 0:5 / /proc rw - proc proc rw\n", "").unwrap_err();
        assert_eq!(e, "no cgroup filesystem is mounted");
    }

    use std::time::Instant;

    impl Cgroups {
        /// [`Cgroups::remove_pod`] for synchronous tests.
        fn remove_pod_blocking(&self, pod_uid: &str) -> Result<(), CgroupError> {
            let deadline = Instant::now() + REMOVE_TIMEOUT;
            let mut first = true;
            loop {
                match self.remove_pod_once(pod_uid, first) {
                    Ok(()) => return Ok(()),
                    Err(e @ CgroupError::InvalidName { .. }) => return Err(e),
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(_) => std::thread::sleep(REMOVE_POLL),
                }
                first = false;
            }
        }
    }

    /// Removes a real test pod and the test's top directories even when an assertion fails.
    struct Cleanup<'a>(&'a Cgroups, &'static str);

    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = self.0.remove_pod_blocking(self.1);
            for d in self.0.base_dirs() {
                let _ = remove_tree(&d);
            }
        }
    }

    /// Whether a test that cannot run here must fail rather than skip: under CI (`CI=true`) or
    /// with `VKUBELET_TEST_REQUIRE_CLUSTER` set, as for the cluster tests. CI machines have
    /// writable cgroups (at least the v1 memory controller), so a skip there hides a bug.
    fn must_run() -> bool {
        ["CI", "VKUBELET_TEST_REQUIRE_CLUSTER"].iter().any(|name| {
            std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        })
    }

    /// Skip (printing why) outside CI; fail under it.
    fn skip(why: &str) {
        assert!(
            !must_run(),
            "{why}; CI=true or VKUBELET_TEST_REQUIRE_CLUSTER is set, so this test fails instead \
             of skipping"
        );
        eprintln!("skipping: {why}");
    }

    fn detect_or_skip(tag: &str) -> Option<Cgroups> {
        let name = format!("vkubelet-test-{}-{tag}", std::process::id());
        match Cgroups::detect(&name) {
            Ok(cg) => Some(cg),
            Err(e) => {
                skip(&format!("host cgroups unavailable: {e}"));
                None
            }
        }
    }

    /// Polls `f` until it holds; `false` if it never did (the bound only ends a hung wait).
    fn wait_until(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn real_host_cgroup() {
        use std::io::Write;
        use std::os::unix::process::ExitStatusExt;
        let Some(cg) = detect_or_skip("real") else {
            return;
        };
        let _cleanup = Cleanup(&cg, "test-pod");
        eprintln!("detected {:?} at {:?}", cg.version(), cg.base_dirs());
        let limits = Limits {
            cpu_limit_millis: Some(500),
            cpu_request_millis: Some(100),
            memory_limit_bytes: Some(64 << 20),
        };
        let c = cg.create("test-pod", "sleeper", &limits).unwrap();
        // Reusing an existing cgroup must work on the real filesystem too.
        let c = {
            drop(c);
            cg.create("test-pod", "sleeper", &limits).unwrap()
        };
        let mem_file = match cg.version() {
            CgroupVersion::V1 => c.dirs().unwrap().memory.join("memory.limit_in_bytes"),
            CgroupVersion::V2 => c.dirs().unwrap().memory.join("memory.max"),
        };
        assert_eq!(read(&mem_file).trim(), "67108864");
        // The shell waits for a line so it is in the cgroup before it forks `sleep`.
        let mut child = Command::new("sh")
            .args(["-c", "read _; sleep 30"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        c.join(child.id()).unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert!(c.pids().contains(&child.id()));
        assert!(
            wait_until(|| c.pids().len() >= 2),
            "sleep not in the cgroup: {:?}",
            c.pids()
        );
        assert!(
            wait_until(|| c.usage().is_ok_and(|u| u.memory_usage_bytes > 0)),
            "usage {:?}",
            c.usage()
        );
        assert_eq!(cg.pods(), vec!["test-pod"]);
        let handle = cg.container("test-pod", "sleeper");
        assert_eq!(handle.procs_files(), c.procs_files());

        cg.remove_pod_blocking("test-pod").unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{status:?}");
        for d in cg.base_dirs() {
            assert!(!d.join("test-pod").exists(), "{}", d.display());
        }
        assert!(cg.pods().is_empty());
    }

    #[test]
    fn real_host_oom_kill() {
        use std::io::Write;
        use std::os::unix::process::ExitStatusExt;
        let Some(cg) = detect_or_skip("oom") else {
            return;
        };
        let _cleanup = Cleanup(&cg, "oom-pod");
        let limits = Limits {
            memory_limit_bytes: Some(32 << 20),
            ..Limits::default()
        };
        let c = cg.create("oom-pod", "hog", &limits).unwrap();
        let before = c.oom_kills();
        // On v1 charges do not move with a process, so python must start inside the cgroup.
        let mut child = match Command::new("sh")
            .args([
                "-c",
                "read _; exec python3 -c 'b = bytearray(200 * 1024 * 1024); print(len(b))'",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                skip(&format!("cannot run sh: {e}"));
                return;
            }
        };
        c.join(child.id()).unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let status = child.wait().unwrap();
        let after = c.oom_kills();
        cg.remove_pod_blocking("oom-pod").unwrap();
        if status.code() == Some(127) {
            skip("no python3 to allocate memory with");
            return;
        }
        assert_eq!(status.signal(), Some(9), "{status:?}");
        assert!(after > before, "oom_kill {before} -> {after}");
    }
}
