//! Resource use of other processes (vkubelet, the null kubelet, kube-apiserver, etcd) and of the
//! generator itself, read from /proc: resident set size and CPU seconds (user + system, all
//! threads). A sampler keeps the peak RSS between phase marks, because a peak that lasts a few
//! hundred milliseconds is exactly what a single reading at the end would miss.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reading {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

/// Reads `/proc/<pid>` (or `/proc/self`); `None` once the process is gone.
pub fn read(pid: Option<u32>) -> Option<Reading> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_string(),
    };
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    Some(Reading {
        rss_bytes: parse_vm_rss(&status)?,
        cpu_seconds: parse_cpu_ticks(&stat)? as f64 / ticks_per_second(),
    })
}

fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// `VmRSS:   12345 kB` from /proc/PID/status, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// utime + stime (fields 14 and 15) from /proc/PID/stat. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resource use of one process over one run, as reported.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    /// Before the first create.
    pub idle_rss_mb: f64,
    /// Highest sample over the whole run (sampled every 100 ms).
    pub peak_rss_mb: f64,
    /// Median of the samples taken while all N pods were Running and the burst had settled.
    pub steady_rss_mb: f64,
    /// CPU seconds from the first create until all pods were Running.
    pub cpu_s_burst: f64,
    /// CPU seconds from the first delete until all pods were gone.
    pub cpu_s_delete: f64,
    /// CPU seconds over the whole run (create, settle, delete).
    pub cpu_s_total: f64,
    /// cpu_s_burst divided by the burst's wall time: cores this process kept busy.
    pub cores_burst: f64,
}

#[derive(Default)]
struct SamplerState {
    peak_rss: u64,
    /// Samples collected while `collecting` is set (the steady window).
    window: Vec<u64>,
    collecting: bool,
}

/// Samples one process every 100 ms until dropped.
pub struct Sampler {
    pub pid: u32,
    state: Arc<Mutex<SamplerState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(pid: u32) -> Self {
        let state = Arc::new(Mutex::new(SamplerState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let Some(r) = read(Some(pid)) else { return };
                let mut s = shared.lock();
                s.peak_rss = s.peak_rss.max(r.rss_bytes);
                if s.collecting {
                    s.window.push(r.rss_bytes);
                }
            }
        });
        Self { pid, state, task }
    }

    pub fn read(&self) -> Option<Reading> {
        let r = read(Some(self.pid))?;
        let mut s = self.state.lock();
        s.peak_rss = s.peak_rss.max(r.rss_bytes);
        Some(r)
    }

    /// Start or stop collecting the steady-state window.
    pub fn collect_window(&self, on: bool) {
        self.state.lock().collecting = on;
    }

    pub fn peak_rss(&self) -> u64 {
        self.state.lock().peak_rss
    }

    /// Median RSS of the steady window (0 when it is empty).
    pub fn window_median(&self) -> u64 {
        let mut w = self.state.lock().window.clone();
        w.sort_unstable();
        w.get(w.len() / 2).copied().unwrap_or(0)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn mb(bytes: u64) -> f64 {
    round2(bytes as f64 / 1_000_000.0)
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The 1/5/15-minute load averages (the machine is shared: each run records them).
pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name_even_with_spaces_and_parens() {
        let stat =
            "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 1 1 1";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tvkubelet\nVmPeak:\t  999 kB\nVmRSS:\t   2048 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let r = read(None).expect("/proc/self");
        assert!(r.rss_bytes > 0);
    }
}
