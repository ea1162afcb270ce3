//! Benchmark (not a test): the CPU time vkubelet's process provider spends on idle pods.
//!
//! Drives the provider through its Rust API, as `tests/streams.rs` does (no cluster needed, but
//! root, bubblewrap and, for the real setup, cgroups): creates `IDLE_PODS` pods (default 100)
//! running `sleep 3600`, waits until every container runs, lets them settle, then reads this process's
//! CPU time (user + system of `getrusage(RUSAGE_SELF)`, every thread; the shims and containers
//! are other processes and are not counted) and its context switches before and after
//! `IDLE_SECONDS` (default 60) of idling. Then it deletes the pods and removes its files.
//!
//! ```sh
//! cargo bench -p vk-provider-process --bench idle_cpu            # 100 pods, 60 s
//! IDLE_PODS=20 IDLE_SECONDS=10 cargo bench -p vk-provider-process --bench idle_cpu
//! ```

// A benchmark program: a failed expectation ends it.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use vk_provider_api::{PodKey, PodUpdate, Provider, ProviderSinks, ResolvedPod};
use vk_provider_process::{ProcessConfig, ProcessProvider};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's CPU time (user + system, every thread, exited ones included) in seconds, and
/// its context switches (voluntary + involuntary: roughly, how often its threads slept and woke).
fn usage() -> (f64, i64) {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    (
        secs(u.user_time()) + secs(u.system_time()),
        u.voluntary_context_switches() + u.involuntary_context_switches(),
    )
}

fn pod(i: u64) -> ResolvedPod {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("idle-{i}"), "namespace": "bench", "uid": format!("idle-uid-{i}")},
        "spec": {"containers": [{"name": "main", "image": "host", "command": ["sleep", "3600"]}]}
    }))
    .unwrap();
    ResolvedPod::new(PodKey::of(&pod).unwrap(), Arc::new(pod))
}

/// Kills whatever the run leaves behind (it panicked, or deletion timed out): every process
/// whose command line names the run's directory.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let needle = self.0.to_string_lossy().into_owned();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for pid in entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&needle) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn bench(pods: u64, seconds: u64) {
    let dir = std::env::temp_dir().join(format!("vk-idle-cpu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = Cleanup(dir.clone());
    let cfg = ProcessConfig::parse(
        &serde_json::json!({
            "stateDir": dir.join("state"),
            "secretsDir": dir.join("secrets"),
            "shimCommand": [env!("CARGO_BIN_EXE_vk-process-shim")],
        })
        .to_string(),
    )
    .unwrap();
    let provider = ProcessProvider::new(cfg, "127.0.0.1".into());
    let updates = Arc::new(AtomicUsize::new(0));
    let gone = Arc::new(AtomicUsize::new(0));
    let (u, g) = (updates.clone(), gone.clone());
    provider
        .start(ProviderSinks::new(
            move |_, update| match update {
                PodUpdate::Status(_) => {
                    u.fetch_add(1, Ordering::Relaxed);
                }
                PodUpdate::Gone => {
                    g.fetch_add(1, Ordering::Relaxed);
                }
                PodUpdate::Event { .. } => {}
            },
            || {},
        ))
        .await
        .unwrap();

    let started = Instant::now();
    let all: Vec<ResolvedPod> = (0..pods).map(pod).collect();
    for p in &all {
        provider.create_pod(p).await.unwrap();
    }
    let running = |p: &ResolvedPod| {
        provider
            .processes(&p.key.uid)
            .is_some_and(|m| m.contains_key("main"))
    };
    while !all.iter().all(running) {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the pods did not all start in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{pods} pods running after {:.1} s; settling 5 s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    let ((cpu0, ctx0), upd0) = (usage(), updates.load(Ordering::Relaxed));
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let wall = t0.elapsed().as_secs_f64();
    let ((cpu1, ctx1), upd1) = (usage(), updates.load(Ordering::Relaxed));
    assert!(all.iter().all(running), "a pod stopped while idling");

    let cpu_secs = cpu1 - cpu0;
    println!(
        "idle_cpu: {pods} idle pods, {wall:.1} s: {cpu_secs:.3} CPU seconds ({:.3}% of one core), {} context switches, {} status updates",
        cpu_secs / wall * 100.0,
        ctx1 - ctx0,
        upd1 - upd0
    );

    for p in &all {
        provider
            .delete_pod(&p.key, Duration::from_secs(0))
            .await
            .unwrap();
    }
    let deleting = Instant::now();
    while gone.load(Ordering::Relaxed) < all.len() && deleting.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = provider.cleanup_all().await;
}

fn main() {
    let pods = env_num("IDLE_PODS", 100);
    let seconds = env_num("IDLE_SECONDS", 60);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(pods, seconds));
}
