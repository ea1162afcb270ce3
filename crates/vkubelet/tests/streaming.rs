//! `kubectl exec`, `attach` and `port-forward` end to end: through the real API server to
//! vkubelet's kubelet port and the process provider, with both kubectls — the installed one
//! (which speaks WebSocket, passed through by the 1.20 API server) and Debian's kubectl 1.20
//! (SPDY/3.1). `scripts/test.sh` sets `VKUBELET_KUBECTL_LEGACY` to the latter.
//!
//! Every session checks which transport and sub-protocol the kubelet API actually served, from
//! its `vkubelet_kubelet_api_stream_upgrades_total` read back through the node proxy: a kubectl
//! that silently fell back to SPDY fails the WebSocket run. Under CI (or with
//! `VKUBELET_TEST_REQUIRE_CLUSTER`) both a WebSocket-capable kubectl and kubectl 1.20 must be
//! there.

// Test code: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use common::{Kubectl, Vk, kubectls, pod_with, wait_pod_phase};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use vk_testkit::TestEnv;

/// The first kubectl minor version that runs exec and attach over WebSocket by default
/// (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS`).
const WS_REMOTE_COMMAND_SINCE: u32 = 30;
/// ... and port-forward over WebSocket-tunnelled SPDY (`KUBECTL_PORT_FORWARD_WEBSOCKETS`).
const WS_PORT_FORWARD_SINCE: u32 = 31;

/// A kubectl with its minor version, which fixes what it makes the kubelet speak.
struct Client {
    k: Kubectl,
    minor: u32,
}

impl std::ops::Deref for Client {
    type Target = Kubectl;
    fn deref(&self) -> &Kubectl {
        &self.k
    }
}

impl Client {
    /// The (transport, sub-protocol) the kubelet must serve this kubectl on `route`.
    fn expects(&self, route: &str) -> (&'static str, &'static str) {
        match route {
            "portForward" if self.minor >= WS_PORT_FORWARD_SINCE => {
                ("websocket", "SPDY/3.1+portforward.k8s.io")
            }
            "portForward" => ("spdy", "portforward.k8s.io"),
            _ if self.minor >= WS_REMOTE_COMMAND_SINCE => ("websocket", "v5.channel.k8s.io"),
            _ => ("spdy", "v4.channel.k8s.io"),
        }
    }
}

/// The kubectls to run with (see [`kubectls`]), each with its version. Under CI (or with
/// `VKUBELET_TEST_REQUIRE_CLUSTER`) one must speak WebSocket on every route and one only SPDY;
/// elsewhere a missing one is reported and its runs are left out.
async fn clients() -> Vec<Client> {
    let mut all = Vec::new();
    for k in kubectls() {
        let out = tokio::process::Command::new(&k.path)
            .args(["version", "--client", "-o", "json"])
            .output()
            .await
            .unwrap_or_else(|e| panic!("[{}] run {}: {e}", k.label, k.path.display()));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "[{}] kubectl version: {e}: {}",
                k.label,
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let minor = v["clientVersion"]["minor"]
            .as_str()
            .map(|m| m.trim_end_matches(|c: char| !c.is_ascii_digit()))
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("[{}] no client minor version in {v}", k.label));
        all.push(Client { k, minor });
    }
    let websocket = all.iter().any(|c| c.minor >= WS_PORT_FORWARD_SINCE);
    let spdy = all.iter().any(|c| c.minor < WS_REMOTE_COMMAND_SINCE);
    let versions: Vec<String> = all
        .iter()
        .map(|c| format!("{} = 1.{}", c.k.path.display(), c.minor))
        .collect();
    if vk_testkit::cluster_required() {
        assert!(
            websocket && spdy,
            "CI=true or VKUBELET_TEST_REQUIRE_CLUSTER is set: the streaming tests need a \
             kubectl >= 1.{WS_PORT_FORWARD_SINCE} (WebSocket; VKUBELET_KUBECTL or PATH) and \
             kubectl 1.20 (SPDY; VKUBELET_KUBECTL_LEGACY); have {versions:?}"
        );
    } else if !websocket || !spdy {
        eprintln!(
            "not testing {}: kubectls here are {versions:?}",
            if websocket { "SPDY" } else { "WebSocket" }
        );
    }
    all
}

/// `vkubelet_kubelet_api_stream_upgrades_total` of this node, by (route, transport, protocol),
/// through the API server's node proxy.
async fn upgrades(env: &TestEnv, vk: &Vk) -> BTreeMap<(String, String, String), u64> {
    let text = env
        .kubectl([
            "get",
            "--raw",
            &format!("/api/v1/nodes/{}/proxy/metrics", vk.node),
        ])
        .await
        .assert_success()
        .stdout;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("vkubelet_kubelet_api_stream_upgrades_total{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").expect("a sample");
        let labels: BTreeMap<&str, &str> = labels
            .split(',')
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("label");
                (k, v.trim_matches('"'))
            })
            .collect();
        if labels["node"] != vk.node {
            continue;
        }
        let n: f64 = value.trim().parse().expect("counter value");
        out.insert(
            (
                labels["route"].to_string(),
                labels["transport"].to_string(),
                labels["protocol"].to_string(),
            ),
            n as u64,
        );
    }
    out
}

/// The node's upgrade counters at one moment, to compare a session against.
struct Mark(BTreeMap<(String, String, String), u64>);

impl Mark {
    async fn now(env: &TestEnv, vk: &Vk) -> Self {
        Self(upgrades(env, vk).await)
    }

    /// Since this mark, the kubelet served exactly `n` upgrades on `route`, all of them with the
    /// transport and protocol `c` must get, and none anywhere else.
    async fn served(self, env: &TestEnv, vk: &Vk, c: &Client, route: &str, n: u64) {
        let after = upgrades(env, vk).await;
        let new: BTreeMap<_, _> = after
            .into_iter()
            .filter_map(|(key, count)| {
                let d = count - self.0.get(&key).copied().unwrap_or(0);
                (d > 0).then_some((key, d))
            })
            .collect();
        let (transport, protocol) = c.expects(route);
        let want: BTreeMap<_, _> = (n > 0)
            .then(|| {
                (
                    (
                        route.to_string(),
                        transport.to_string(),
                        protocol.to_string(),
                    ),
                    n,
                )
            })
            .into_iter()
            .collect();
        assert_eq!(
            new, want,
            "[{}, 1.{}] upgrades the kubelet served (route, transport, protocol); \
             KUBECTL_REMOTE_COMMAND_WEBSOCKETS/KUBECTL_PORT_FORWARD_WEBSOCKETS=false would \
             make kubectl fall back to SPDY",
            c.label, c.minor
        );
    }
}

async fn running_pod(env: &TestEnv, vk: &Vk, name: &str, container: serde_json::Value) {
    env.create(&pod_with(vk, name, container, json!({}))).await;
    wait_pod_phase(env, name, "Running").await;
}

#[tokio::test]
async fn exec_keeps_arguments_pipes_stdin_and_propagates_exit_codes() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start_process(&env, json!({}), &[]);
    vk.wait_ready(&env).await;
    running_pod(&env, &vk, "box", json!({"command": ["sleep", "3600"]})).await;
    for k in clients().await {
        let mark = Mark::now(&env, &vk).await;
        let (code, out, err) = k
            .run(
                &env,
                &[
                    "exec",
                    "box",
                    "--",
                    "sh",
                    "-c",
                    "printf '%s|' \"$@\"; echo; echo to-stderr >&2",
                    "_",
                    "a b",
                    "it's",
                    "\"quoted\"",
                    "",
                ],
                b"",
            )
            .await;
        assert_eq!(code, 0, "[{}] stderr: {err}", k.label);
        assert_eq!(out, "a b|it's|\"quoted\"||\n", "[{}]", k.label);
        assert!(err.contains("to-stderr"), "[{}] stderr: {err:?}", k.label);
        mark.served(&env, &vk, &k, "exec", 1).await;

        let input = "line one\nline two\n".repeat(2000);
        let mark = Mark::now(&env, &vk).await;
        let (code, out, err) = k
            .run(
                &env,
                &["exec", "-i", "box", "--", "sh", "-c", "wc -c; echo done"],
                input.as_bytes(),
            )
            .await;
        assert_eq!(code, 0, "[{}] stderr: {err}", k.label);
        assert_eq!(out, format!("{}\ndone\n", input.len()), "[{}]", k.label);
        mark.served(&env, &vk, &k, "exec", 1).await;

        let mark = Mark::now(&env, &vk).await;
        let (code, _, err) = k
            .run(&env, &["exec", "box", "--", "sh", "-c", "exit 7"], b"")
            .await;
        assert_eq!(
            code, 7,
            "[{}] kubectl exits with the command's code: {err}",
            k.label
        );
        mark.served(&env, &vk, &k, "exec", 1).await;

        let mark = Mark::now(&env, &vk).await;
        let (code, out, err) = k
            .run(&env, &["exec", "box", "--", "/no/such/command"], b"")
            .await;
        // The session is up (counted below) and the command itself is missing: 127 as from a
        // shell, with the reason, not a transport or API failure.
        assert_eq!(code, 127, "[{}] stdout: {out:?} stderr: {err}", k.label);
        assert!(
            err.contains("/no/such/command: No such file or directory"),
            "[{}] stderr: {err}",
            k.label
        );
        mark.served(&env, &vk, &k, "exec", 1).await;
    }
}

/// Drives `kubectl exec -it` from a real pseudo-terminal (Python's `pty`): the remote shell sees
/// a terminal of the local size, follows a resize, and its exit code comes back.
const PTY_DRIVER: &str = r#"
import fcntl, os, pty, select, signal, struct, sys, termios, time
def setsize(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
setsize(fd, 33, 101)
os.kill(pid, signal.SIGWINCH)
seen = b""
def expect(needle, limit=40.0):
    global seen
    end = time.time() + limit
    while needle not in seen:
        left = end - time.time()
        if left <= 0:
            sys.stderr.write("timed out waiting for %r; output: %r\n" % (needle, seen))
            sys.exit(90)
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                sys.stderr.write("terminal closed waiting for %r; output: %r\n" % (needle, seen))
                sys.exit(91)
            seen += data
def send(line):
    os.write(fd, line)
expect(b"$ ", 60.0)
send(b"test -t 0 && echo IS-A-$((1+1))-TTY; stty size\n")
expect(b"IS-A-2-TTY")
# The initial size travels as the session's first resize message, applied as it arrives (as a
# container runtime applies it): ask again until the terminal reports it.
deadline = time.time() + 30
while b"33 101" not in seen and time.time() < deadline:
    send(b"stty size\n")
    r, _, _ = select.select([fd], [], [], 0.5)
    if r:
        seen += os.read(fd, 4096)
if b"33 101" not in seen:
    sys.stderr.write("initial size not seen; output: %r\n" % seen)
    sys.exit(93)
setsize(fd, 40, 120)
os.kill(pid, signal.SIGWINCH)
deadline = time.time() + 30
while b"40 120" not in seen and time.time() < deadline:
    send(b"stty size\n")
    time.sleep(0.3)
    r, _, _ = select.select([fd], [], [], 0.5)
    if r:
        seen += os.read(fd, 4096)
if b"40 120" not in seen:
    sys.stderr.write("resize not seen; output: %r\n" % seen)
    sys.exit(92)
send(b"exit 5\n")
while True:
    try:
        data = os.read(fd, 4096)
    except OSError:
        break
    if not data:
        break
    seen += data
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;

#[tokio::test]
async fn exec_with_a_terminal_resizes_and_returns_the_exit_code() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start_process(&env, json!({}), &[]);
    vk.wait_ready(&env).await;
    running_pod(&env, &vk, "term", json!({"command": ["sleep", "3600"]})).await;
    for k in clients().await {
        let mark = Mark::now(&env, &vk).await;
        let out = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(PTY_DRIVER)
            .arg(&k.path)
            .arg("--kubeconfig")
            .arg(env.kubeconfig_path())
            .args(["-n", env.namespace(), "exec", "-it", "term", "--"])
            .args(["env", "PS1=$ ", "sh"])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(120), out)
            .await
            .expect("the terminal session ends")
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(5),
            "[{}] stdout: {text}\nstderr: {}",
            k.label,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("IS-A-2-TTY"),
            "[{}] a terminal: {text}",
            k.label
        );
        mark.served(&env, &vk, &k, "exec", 1).await;
    }
}

#[tokio::test]
async fn attach_sends_input_and_streams_output() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start_process(&env, json!({}), &[]);
    vk.wait_ready(&env).await;
    for (i, k) in clients().await.into_iter().enumerate() {
        let name = format!("talk-{i}");
        env.create(&pod_with(
            &vk,
            &name,
            json!({
                "stdin": true, "stdinOnce": true,
                "command": ["sh", "-c", "while read l; do echo \"got $l\"; done; echo bye; exit 3"]
            }),
            json!({"restartPolicy": "Never"}),
        ))
        .await;
        wait_pod_phase(&env, &name, "Running").await;
        let mark = Mark::now(&env, &vk).await;
        let mut child = k
            .command(&env, &["attach", "-i", &name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Input sent before the session is up would be lost by kubectl itself: keep sending
        // until an answer shows the session is carrying it.
        let mut n = 0;
        let answered = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                n += 1;
                stdin
                    .write_all(format!("hello-{n}\n").as_bytes())
                    .await
                    .unwrap();
                match tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await {
                    Ok(Ok(Some(line))) if line.starts_with("got hello-") => return line,
                    Ok(Ok(Some(_))) | Err(_) => continue,
                    Ok(other) => panic!("[{}] kubectl attach output ended: {other:?}", k.label),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("[{}] no answer through attach", k.label));
        assert!(answered.starts_with("got hello-"), "{answered}");
        // stdinOnce: closing our input closes the container's; it says bye and exits 3.
        drop(stdin);
        let mut rest = String::new();
        tokio::time::timeout(
            Duration::from_secs(60),
            lines.get_mut().read_to_string(&mut rest),
        )
        .await
        .unwrap_or_else(|_| panic!("[{}] attach did not end with the container", k.label))
        .unwrap();
        assert!(
            rest.contains("bye"),
            "[{}] rest of output: {rest:?}",
            k.label
        );
        // The session ends with the container (whose exit code the pod status carries; kubectl
        // attach, like the kubelet's attach, does not turn it into its own).
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap_or_else(|_| panic!("[{}] kubectl attach did not exit", k.label))
            .unwrap();
        let p = wait_pod_phase(&env, &name, "Failed").await;
        let code = p.status.and_then(|s| s.container_statuses).and_then(|c| {
            c[0].state
                .as_ref()?
                .terminated
                .as_ref()
                .map(|t| t.exit_code)
        });
        assert_eq!(code, Some(3), "[{}]", k.label);
        mark.served(&env, &vk, &k, "attach", 1).await;
    }
}

#[tokio::test]
async fn port_forward_carries_http() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start_process(&env, json!({}), &[]);
    vk.wait_ready(&env).await;
    // Pods share the host network: the server listens on a free loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    running_pod(
        &env,
        &vk,
        "web",
        json!({"command": ["python3", "-m", "http.server", port.to_string(), "--bind", "127.0.0.1"]}),
    )
    .await;
    for k in clients().await {
        let mark = Mark::now(&env, &vk).await;
        let mut child = k
            .command(
                &env,
                &[
                    "port-forward",
                    "--address",
                    "127.0.0.1",
                    "pod/web",
                    &format!(":{port}"),
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let local: u16 = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // "Forwarding from 127.0.0.1:41234 -> 8000"
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    return rest.split_whitespace().next().unwrap().parse().unwrap();
                }
            }
            panic!("[{}] port-forward ended before forwarding", k.label);
        })
        .await
        .unwrap_or_else(|_| panic!("[{}] port-forward did not start", k.label));
        // Several requests, each its own forwarded connection.
        for _ in 0..3 {
            let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", local))
                .await
                .unwrap();
            conn.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut response = String::new();
            tokio::time::timeout(Duration::from_secs(30), conn.read_to_string(&mut response))
                .await
                .unwrap_or_else(|_| panic!("[{}] no HTTP response", k.label))
                .unwrap();
            assert!(
                response.starts_with("HTTP/1.0 200"),
                "[{}] response: {response:?}",
                k.label
            );
            assert!(response.contains("Directory listing"), "[{}]", k.label);
        }
        // One upgraded connection carried all three.
        mark.served(&env, &vk, &k, "portForward", 1).await;
        child.kill().await.unwrap();
    }
}
