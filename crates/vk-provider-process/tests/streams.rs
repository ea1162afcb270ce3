//! The provider's streams against real sandboxed processes (no cluster needed): logs, exec with
//! pipes and with a terminal, port-forward, stats, then deletion.

// Test code: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vk_provider_api::streams::{AttachRequest, ExecRequest, LogRequest, TerminalSize};
use vk_provider_api::{PodKey, PodUpdate, Provider, ProviderSinks, ResolvedPod};
use vk_provider_process::{ProcessConfig, ProcessProvider};

/// Status updates the provider pushed, by pod UID (`None`: gone).
type Seen = Arc<Mutex<Vec<(String, Option<Arc<PodStatus>>)>>>;

struct Harness {
    provider: ProcessProvider,
    statuses: Seen,
    dir: std::path::PathBuf,
}

/// Whatever a test leaves running (it failed, or deleted a pod without waiting) is killed with
/// it: every shim and container whose command line names the test's directory.
impl Drop for Harness {
    fn drop(&mut self) {
        let needle = self.dir.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn harness(name: &str) -> Option<Harness> {
    if std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "bubblewrap is required under CI"
        );
        eprintln!("skipping: bubblewrap is not installed");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("vk-process-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
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
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let sink = statuses.clone();
    provider
        .start(ProviderSinks::new(
            move |uid, update| match update {
                PodUpdate::Status(s) => sink.lock().push((uid.to_string(), Some(s))),
                PodUpdate::Gone => sink.lock().push((uid.to_string(), None)),
                PodUpdate::Event { .. } => {}
            },
            || {},
        ))
        .await
        .unwrap();
    Some(Harness {
        provider,
        statuses,
        dir,
    })
}

fn pod(uid: &str, command: &str) -> ResolvedPod {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": uid},
        "spec": {"containers": [{"name": "main", "image": "host", "command": ["sh", "-c", command]}]}
    }))
    .unwrap();
    ResolvedPod::new(PodKey::of(&pod).unwrap(), Arc::new(pod))
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..400 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).await.unwrap();
    s
}

#[tokio::test]
async fn logs_exec_tty_port_forward_stats_and_delete() {
    let Some(h) = harness("all").await else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = pod(
        "uid-1",
        &format!("echo hello; echo oops >&2; exec python3 -m http.server {port} --bind 127.0.0.1"),
    );
    h.provider.create_pod(&p).await.unwrap();
    until("the container to run", || {
        h.provider.processes("uid-1")?.get("main").copied()
    })
    .await;

    // Logs, both streams, in order; tail and timestamps.
    let log = |req: LogRequest| {
        let provider = &h.provider;
        let key = p.key.clone();
        async move { read_all(provider.container_logs(&key, &req).await.unwrap()).await }
    };
    let base = LogRequest {
        container: "main".into(),
        ..Default::default()
    };
    until("output in the log", || {
        let dir = h.dir.join("state/pods/uid-1/containers/main/0.log");
        std::fs::read_to_string(dir)
            .ok()
            .filter(|t| t.contains("oops"))
    })
    .await;
    assert_eq!(log(base.clone()).await, "hello\noops\n");
    assert_eq!(
        log(LogRequest {
            tail_lines: Some(1),
            ..base.clone()
        })
        .await,
        "oops\n"
    );
    let stamped = log(LogRequest {
        timestamps: true,
        ..base.clone()
    })
    .await;
    assert!(
        stamped
            .lines()
            .all(|l| l.len() > 31 && l.as_bytes()[4] == b'-'),
        "{stamped}"
    );
    let Err(missing) = h
        .provider
        .container_logs(
            &p.key,
            &LogRequest {
                previous: true,
                ..base.clone()
            },
        )
        .await
    else {
        panic!("there is no previous instance");
    };
    assert!(
        missing
            .to_string()
            .contains("previous terminated container"),
        "{missing}"
    );

    // Exec with pipes: arguments with spaces and quotes, stdin, both outputs, the exit code.
    let mut s = h
        .provider
        .exec(
            &p.key,
            &ExecRequest {
                container: "main".into(),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "read x; echo \"got $x\" 'and \"quotes\"'; echo err >&2; exit 7".into(),
                ],
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false,
            },
        )
        .await
        .unwrap();
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"two words\n").await.unwrap();
    drop(stdin);
    let out = read_all(s.stdout.take().unwrap()).await;
    let err = read_all(s.stderr.take().unwrap()).await;
    assert_eq!(out, "got two words and \"quotes\"\n");
    assert_eq!(err, "err\n");
    assert_eq!(s.exit.await.unwrap(), Ok(7));

    // The exec runs inside the sandbox: its own PID namespace, where PID 1 is the container.
    let mut s = h
        .provider
        .exec(
            &p.key,
            &ExecRequest {
                container: "main".into(),
                command: vec!["cat".into(), "/proc/1/cmdline".into()],
                stdout: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let pid1 = read_all(s.stdout.take().unwrap()).await;
    assert!(pid1.starts_with("python3\0-m\0http.server"), "{pid1:?}");

    // A terminal: resize reaches it, output and exit code come back.
    let mut s = h
        .provider
        .exec(
            &p.key,
            &ExecRequest {
                container: "main".into(),
                command: vec!["sh".into(), "-c".into(), "read x; stty size; exit 3".into()],
                stdin: true,
                stdout: true,
                tty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    s.resize
        .as_ref()
        .unwrap()
        .send(TerminalSize {
            width: 120,
            height: 40,
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.stdin.as_mut().unwrap().write_all(b"go\r").await.unwrap();
    let mut stdout = s.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("40 120") {
        let n = tokio::time::timeout(Duration::from_secs(10), stdout.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&seen).contains("40 120"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    assert_eq!(s.exit.await.unwrap(), Ok(3));

    // Port-forward carries real HTTP to the pod's server.
    let mut conn = until_ok(|| async { h.provider.port_forward(&p.key, port).await }).await;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let page = read_all(conn).await;
    assert!(page.starts_with("HTTP/1.0 200"), "{page}");

    let stats = h.provider.pod_stats(&p.key).await.unwrap();
    assert!(
        stats["main"].memory_working_set_bytes > 1024 * 1024,
        "{stats:?}"
    );

    // Delete: the pod goes, with its files.
    h.provider
        .delete_pod(&p.key, Duration::from_secs(5))
        .await
        .unwrap();
    until("the pod to be gone", || {
        h.statuses
            .lock()
            .iter()
            .any(|(u, s)| u == "uid-1" && s.is_none())
            .then_some(())
    })
    .await;
    assert!(!h.dir.join("state/pods/uid-1").exists());
    let _ = std::fs::remove_dir_all(&h.dir);
}

async fn until_ok<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    mut f: impl FnMut() -> F,
) -> T {
    let mut last = None;
    for _ in 0..100 {
        match f().await {
            Ok(v) => return v,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never succeeded: {last:?}");
}

fn attach_pod(uid: &str, container: serde_json::Value) -> ResolvedPod {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "a", "namespace": "ns", "uid": uid},
        "spec": {"containers": [container]}
    }))
    .unwrap();
    ResolvedPod::new(PodKey::of(&pod).unwrap(), Arc::new(pod))
}

/// Collects a stream into a shared string, so a test can wait for content while it keeps coming.
fn collect(mut r: vk_provider_api::streams::ByteReader) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

async fn until_contains(what: &Arc<Mutex<String>>, needle: &str) {
    for _ in 0..400 {
        if what.lock().contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {needle:?} in {:?}", what.lock());
}

#[tokio::test]
async fn attach_feeds_stdin_once_and_separates_output() {
    let Some(h) = harness("attach").await else {
        return;
    };
    let p = attach_pod(
        "uid-a",
        serde_json::json!({
            "name": "main", "image": "host", "stdin": true, "stdinOnce": true,
            "command": ["sh", "-c",
                "echo started; while read l; do echo \"got $l\"; echo \"err $l\" >&2; done; echo bye; exit 4"]
        }),
    );
    h.provider.create_pod(&p).await.unwrap();
    until("the container to run", || {
        h.provider.processes("uid-a")?.get("main").copied()
    })
    .await;
    // Attach only once the container's first output is logged: what the test claims is that
    // output from before the attach is not replayed, so there must be some.
    until("the first output in the log", || {
        let log = h.dir.join("state/pods/uid-a/containers/main/0.log");
        std::fs::read_to_string(log)
            .ok()
            .filter(|t| t.contains("started"))
    })
    .await;
    let req = AttachRequest {
        container: "main".into(),
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let mut session = until_ok(|| h.provider.attach(&p.key, &req)).await;
    let stdout = collect(session.stdout.take().unwrap());
    let stderr = collect(session.stderr.take().unwrap());
    let mut stdin = session.stdin.take().unwrap();
    stdin.write_all(b"one\ntwo\n").await.unwrap();
    until_contains(&stdout, "got two\n").await;
    until_contains(&stderr, "err two\n").await;
    // Output from before the attach is not replayed; the streams are not mixed.
    assert_eq!(stdout.lock().as_str(), "got one\ngot two\n");
    assert_eq!(stderr.lock().as_str(), "err one\nerr two\n");

    // stdinOnce: the first session closing its input ends the container's input.
    stdin.shutdown().await.unwrap();
    drop(stdin);
    until_contains(&stdout, "bye\n").await;
    let code = tokio::time::timeout(Duration::from_secs(20), session.exit)
        .await
        .expect("the attach session ends with the container")
        .unwrap();
    assert_eq!(code, Ok(4));
    let _ = h.provider.delete_pod(&p.key, Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&h.dir);
}

#[tokio::test]
async fn attach_to_a_terminal_resizes_it_and_refuses_input_without_stdin() {
    let Some(h) = harness("attach-tty").await else {
        return;
    };
    let p = attach_pod(
        "uid-t",
        serde_json::json!({
            "name": "main", "image": "host", "stdin": true, "tty": true,
            "command": ["sh", "-c", "while read l; do [ \"$l\" = q ] && exit 3; stty size; done"]
        }),
    );
    let quiet = attach_pod(
        "uid-q",
        serde_json::json!({"name": "main", "image": "host", "command": ["sleep", "600"]}),
    );
    h.provider.create_pod(&p).await.unwrap();
    h.provider.create_pod(&quiet).await.unwrap();
    for uid in ["uid-t", "uid-q"] {
        until("the container to run", || {
            h.provider.processes(uid)?.get("main").copied()
        })
        .await;
    }
    let req = AttachRequest {
        container: "main".into(),
        stdin: true,
        stdout: true,
        stderr: true,
        tty: true,
    };
    let err = h.provider.attach(&quiet.key, &req).await.unwrap_err();
    assert!(err.to_string().contains("stdin: true"), "{err}");

    let mut session = until_ok(|| h.provider.attach(&p.key, &req)).await;
    assert!(session.stderr.is_none(), "a terminal has one output stream");
    let out = collect(session.stdout.take().unwrap());
    let mut stdin = session.stdin.take().unwrap();
    let resize = session.resize.take().expect("terminal sessions resize");
    resize
        .send(TerminalSize {
            width: 120,
            height: 40,
        })
        .unwrap();
    // Input and resizes travel separately: keep asking until the new size shows.
    let mut resized = false;
    for _ in 0..100 {
        stdin.write_all(b"\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if out.lock().contains("40 120") {
            resized = true;
            break;
        }
    }
    assert!(resized, "terminal output: {:?}", out.lock());
    stdin.write_all(b"q\n").await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(20), session.exit)
        .await
        .expect("the attach session ends with the container")
        .unwrap();
    assert_eq!(code, Ok(3));
    for key in [&p.key, &quiet.key] {
        let _ = h.provider.delete_pod(key, Duration::from_secs(2)).await;
    }
    let _ = std::fs::remove_dir_all(&h.dir);
}
