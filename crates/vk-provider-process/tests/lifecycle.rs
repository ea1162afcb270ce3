//! The pod lifecycle against real sandboxed processes (no cluster needed): exits seen and
//! restarted, a shim killed from outside, the grace period, `activeDeadlineSeconds`, crash-loop
//! backoff, and adoption by a restarted provider of shims that are not its children. These are
//! the transitions the pod task learns of from events (inotify, pidfds, timers) instead of
//! polling.

// Test code: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use parking_lot::Mutex;
use vk_provider_api::{PodKey, PodUpdate, Provider, ProviderSinks, ResolvedPod};
use vk_provider_process::{ProcessConfig, ProcessProvider};

/// The latest status per pod UID (`None` once gone).
type Latest = Arc<Mutex<HashMap<String, Option<Arc<PodStatus>>>>>;

fn bwrap_missing() -> bool {
    if std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .is_ok()
    {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "bubblewrap is required under CI"
    );
    eprintln!("skipping: bubblewrap is not installed");
    true
}

/// Kills whatever a test leaves running: every process whose command line names its directory.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vk-process-lc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for Dir {
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

async fn provider(dir: &Path) -> (ProcessProvider, Latest) {
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
    let latest: Latest = Arc::new(Mutex::new(HashMap::new()));
    let sink = latest.clone();
    provider
        .start(ProviderSinks::new(
            move |uid, update| match update {
                PodUpdate::Status(s) => {
                    sink.lock().insert(uid.to_string(), Some(s));
                }
                PodUpdate::Gone => {
                    sink.lock().insert(uid.to_string(), None);
                }
                PodUpdate::Event { .. } => {}
            },
            || {},
        ))
        .await
        .unwrap();
    (provider, latest)
}

fn pod(uid: &str, spec: serde_json::Value) -> ResolvedPod {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": uid, "namespace": "ns", "uid": uid},
        "spec": spec,
    }))
    .unwrap();
    ResolvedPod::new(PodKey::of(&pod).unwrap(), Arc::new(pod))
}

fn one(uid: &str, command: &str, restart_policy: &str) -> ResolvedPod {
    pod(
        uid,
        serde_json::json!({
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "host", "command": ["sh", "-c", command]}],
        }),
    )
}

async fn until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn main_status(latest: &Latest, uid: &str) -> Option<ContainerStatus> {
    let map = latest.lock();
    let status = map.get(uid)?.as_ref()?;
    status.container_statuses.as_ref()?.first().cloned()
}

fn running(provider: &ProcessProvider, uid: &str) -> Option<vk_provider_process::procs::ProcessId> {
    provider.processes(uid)?.get("main").copied()
}

fn shim_of(dir: &Path, uid: &str) -> vk_provider_process::procs::ProcessId {
    let cdir = dir.join("state/pods").join(uid).join("containers/main");
    vk_provider_process::shim::read_json::<vk_provider_process::shim::ShimRecord>(
        &cdir,
        vk_provider_process::shim::SHIM_FILE,
    )
    .unwrap()
    .shim
}

#[tokio::test]
async fn exits_restarts_kills_and_deadlines_are_seen() {
    if bwrap_missing() {
        return;
    }
    let dir = Dir::new("events");
    let (provider, latest) = provider(&dir.0).await;

    // An exit is seen and, with restartPolicy Always, the first restart is immediate; the
    // second waits in CrashLoopBackOff.
    let crash = one("crash", "exit 3", "Always");
    // A container killed with its shim (kill -9 from outside, no exit record).
    let orphan = one("orphan", "exec sleep 600", "Always");
    // A container that ignores SIGTERM (PID 1 without a handler): killed at the end of the
    // grace period.
    let stubborn = one("stubborn", "exec sleep 600", "Never");
    // activeDeadlineSeconds fails the pod.
    let deadline = pod(
        "deadline",
        serde_json::json!({
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "activeDeadlineSeconds": 2,
            "containers": [{"name": "main", "image": "host", "command": ["sleep", "600"]}],
        }),
    );
    for p in [&crash, &orphan, &stubborn, &deadline] {
        provider.create_pod(p).await.unwrap();
    }

    let crashed = until("the crashing container to back off", 20, || {
        let s = main_status(&latest, "crash")?;
        let waiting = s.state.as_ref()?.waiting.as_ref()?;
        (waiting.reason.as_deref() == Some("CrashLoopBackOff")).then_some(s)
    })
    .await;
    assert_eq!(crashed.restart_count, 1, "{crashed:?}");
    let last = crashed.last_state.unwrap().terminated.unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    assert!(
        crashed
            .state
            .unwrap()
            .waiting
            .unwrap()
            .message
            .unwrap()
            .contains("back-off 10s"),
        "the second restart waits 10 s"
    );

    until("the orphan to run", 20, || running(&provider, "orphan")).await;
    let shim = shim_of(&dir.0, "orphan");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(shim.pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let unknown = until("the orphan's restart", 20, || {
        let s = main_status(&latest, "orphan")?;
        (s.restart_count == 1 && s.state.as_ref()?.running.is_some()).then_some(s)
    })
    .await;
    let last = unknown.last_state.unwrap().terminated.unwrap();
    assert_eq!(last.reason.as_deref(), Some("ContainerStatusUnknown"));
    assert_ne!(shim_of(&dir.0, "orphan"), shim, "a new shim runs it");

    let target = until("the stubborn container to run", 20, || {
        running(&provider, "stubborn")
    })
    .await;
    let asked = Instant::now();
    provider
        .delete_pod(&stubborn.key, Duration::from_secs(1))
        .await
        .unwrap();
    until("the stubborn pod to be gone", 20, || {
        latest
            .lock()
            .get("stubborn")
            .is_some_and(Option::is_none)
            .then_some(())
    })
    .await;
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "it ignores SIGTERM, so only the SIGKILL at the end of the grace period stops it: {took:?}"
    );
    assert!(!target.is_alive());
    assert!(!dir.0.join("state/pods/stubborn").exists());

    let failed = until("the deadline to fail the pod", 20, || {
        let map = latest.lock();
        let s = map.get("deadline")?.as_ref()?;
        (s.phase.as_deref() == Some("Failed")).then(|| s.clone())
    })
    .await;
    assert_eq!(failed.reason.as_deref(), Some("DeadlineExceeded"));

    for p in [&crash, &orphan, &deadline] {
        provider.delete_pod(&p.key, Duration::ZERO).await.unwrap();
    }
    until("every pod to be gone", 20, || {
        let map = latest.lock();
        ["crash", "orphan", "deadline"]
            .iter()
            .all(|u| map.get(*u).is_some_and(Option::is_none))
            .then_some(())
    })
    .await;
}

/// A provider started over the state directory of one that is gone adopts the running pods by
/// pid and start time, and sees their exits although the shims are not its children.
#[test]
fn a_restarted_provider_adopts_running_pods_and_sees_their_exits() {
    if bwrap_missing() {
        return;
    }
    let dir = Dir::new("adopt");
    let p = one("adopted", "exec sleep 600", "Always");
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };

    // The first provider starts the pod; its runtime (and every task of it) then goes away, as
    // vkubelet does when it is stopped. The shims and containers keep running.
    let first = runtime().block_on(async {
        let (provider, _) = provider(&dir.0).await;
        provider.create_pod(&p).await.unwrap();
        until("the container to run", 20, || running(&provider, "adopted")).await
    });
    assert!(first.is_alive(), "the container outlives the provider");

    runtime().block_on(async {
        let (provider, latest) = provider(&dir.0).await;
        let adopted = until("the pod to be adopted", 20, || {
            running(&provider, "adopted")
        })
        .await;
        assert_eq!(adopted, first, "the same process, not a new one");
        let s = main_status(&latest, "adopted").unwrap();
        assert_eq!(s.restart_count, 0);

        // The container exits; its shim (not a child of this runtime) records it and is gone.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(first.pid).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let restarted = until("the restart", 20, || {
            let s = main_status(&latest, "adopted")?;
            (s.restart_count == 1 && s.state.as_ref()?.running.is_some()).then_some(s)
        })
        .await;
        let last = restarted.last_state.unwrap().terminated.unwrap();
        assert_eq!(last.exit_code, 137, "{last:?}");
        provider.delete_pod(&p.key, Duration::ZERO).await.unwrap();
        until("the pod to be gone", 20, || {
            latest
                .lock()
                .get("adopted")
                .is_some_and(Option::is_none)
                .then_some(())
        })
        .await;
    });
}
