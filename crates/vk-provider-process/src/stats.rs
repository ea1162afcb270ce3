//! CPU and memory usage of a container, for `/stats/summary` and `/metrics/resource`: from its
//! cgroup when limits are enforced, otherwise summed over the processes of its PID namespace
//! (every process of a sandbox shares the namespace of the sandbox's PID 1).

use std::path::Path;

use crate::procs::ProcessId;

/// Cumulative CPU time and current memory of one container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerUsage {
    pub cpu_usage_nanos: u64,
    pub memory_working_set_bytes: u64,
    pub memory_rss_bytes: u64,
}

/// Usage of the processes in `container`'s PID namespace, read from `/proc`.
pub fn from_proc(container: ProcessId) -> Option<ContainerUsage> {
    if !container.is_alive() {
        return None;
    }
    let proc_root = Path::new("/proc");
    let ns = std::fs::read_link(proc_root.join(container.pid.to_string()).join("ns/pid")).ok()?;
    let ticks = clock_ticks_per_second();
    let page = page_size();
    let mut usage = ContainerUsage::default();
    for entry in std::fs::read_dir(proc_root).ok()?.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_none_or(|s| s.parse::<u32>().is_err())
        {
            continue;
        }
        let dir = entry.path();
        if std::fs::read_link(dir.join("ns/pid")).ok().as_ref() != Some(&ns) {
            continue;
        }
        // The namespace's processes, not the bubblewrap parent outside it (it shares no ns).
        let Some((cpu_ticks, rss_pages)) = cpu_and_rss(&dir) else {
            continue;
        };
        usage.cpu_usage_nanos += cpu_ticks * 1_000_000_000 / ticks;
        usage.memory_rss_bytes += rss_pages * page;
    }
    usage.memory_working_set_bytes = usage.memory_rss_bytes;
    Some(usage)
}

/// utime + stime (ticks) and RSS (pages) from `/proc/<pid>/stat`.
fn cpu_and_rss(dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join("stat")).ok()?;
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    // After the name, field 3 is at index 0: utime is field 14, stime 15, rss 24.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)? + field(15)?, field(24)?))
}

fn clock_ticks_per_second() -> u64 {
    // USER_HZ is 100 on every Linux architecture vkubelet runs on; the kernel reports
    // /proc times in it regardless of the internal tick rate.
    100
}

fn page_size() -> u64 {
    // From the kernel's own accounting: KernelPageSize of our first mapping.
    std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("KernelPageSize:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rss_from_stat() {
        let dir = std::env::temp_dir().join(format!("vk-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut fields: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        fields[14 - 3] = "150".into();
        fields[15 - 3] = "50".into();
        fields[24 - 3] = "1000".into();
        std::fs::write(dir.join("stat"), format!("7 (a b) {}\n", fields.join(" "))).unwrap();
        assert_eq!(cpu_and_rss(&dir), Some((200, 1000)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn own_namespace_has_usage() {
        let me = ProcessId::of(std::process::id()).unwrap();
        let u = from_proc(me).unwrap();
        assert!(u.memory_rss_bytes > 0);
        assert_eq!(page_size() % 4096, 0);
    }
}
