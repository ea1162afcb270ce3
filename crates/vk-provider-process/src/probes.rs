//! Container probes with the kubelet's semantics: one attempt ([`check`]: exec, httpGet,
//! tcpSocket, bounded by `timeoutSeconds`) and the loop of one probe for one container instance
//! ([`run`]: `initialDelaySeconds`, `periodSeconds`, `successThreshold`, `failureThreshold`),
//! which reports only when its debounced result changes. Exec attempts are delegated to an
//! [`ExecRunner`] (the runtime runs them inside the container's namespaces).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpStream;

/// Most of a response body read by an HTTP probe (the kubelet reads 10 KiB too).
const MAX_BODY: usize = 10 * 1024;
const USER_AGENT: &str = "kube-probe/1.20";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    Success,
    Failure(String),
}

/// Runs a probe's command inside the container.
#[async_trait]
pub trait ExecRunner: Send + Sync {
    async fn run(&self, command: &[String], timeout: Duration) -> ProbeOutcome;
}

/// Where network probes connect: the pod's IP and the container's named ports.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub host: String,
    pub named_ports: BTreeMap<String, u16>,
}

impl ProbeTarget {
    pub fn for_container(host: &str, c: &Container) -> Self {
        let named_ports = c
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        Self {
            host: host.to_string(),
            named_ports,
        }
    }

    fn port(&self, port: &IntOrString) -> Result<u16, String> {
        match port {
            IntOrString::Int(n) => u16::try_from(*n)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("port {n} is out of range")),
            IntOrString::String(name) => match name.parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => self
                    .named_ports
                    .get(name)
                    .copied()
                    .ok_or_else(|| format!("the container has no port named {name:?}")),
            },
        }
    }
}

/// What a probe loop reports: its debounced result changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub kind: ProbeKind,
    pub success: bool,
    pub message: String,
}

fn timeout_of(probe: &Probe) -> Duration {
    Duration::from_secs(
        u64::try_from(probe.timeout_seconds.unwrap_or(1))
            .unwrap_or(1)
            .max(1),
    )
}

/// One attempt, bounded by `timeoutSeconds` (default 1 s).
pub async fn check(probe: &Probe, target: &ProbeTarget, exec: &dyn ExecRunner) -> ProbeOutcome {
    let timeout = timeout_of(probe);
    if let Some(e) = &probe.exec {
        let command = e.command.clone().unwrap_or_default();
        if command.is_empty() {
            return ProbeOutcome::Failure("exec probe has no command".into());
        }
        return exec.run(&command, timeout).await;
    }
    let attempt = async {
        if let Some(h) = &probe.http_get {
            http_get(h, target).await
        } else if let Some(t) = &probe.tcp_socket {
            tcp_socket(t, target).await
        } else if probe.grpc.is_some() {
            Err("gRPC probes are not supported by the process provider".to_string())
        } else {
            Err("the probe has no handler".to_string())
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => ProbeOutcome::Success,
        Ok(Err(message)) => ProbeOutcome::Failure(message),
        Err(_) => {
            ProbeOutcome::Failure(format!("timeout: no answer within {}s", timeout.as_secs()))
        }
    }
}

async fn tcp_socket(t: &TCPSocketAction, target: &ProbeTarget) -> Result<(), String> {
    let host = t
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| target.host.clone());
    let port = target.port(&t.port)?;
    TcpStream::connect((host.as_str(), port))
        .await
        .map(drop)
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
}

async fn http_get(h: &HTTPGetAction, target: &ProbeTarget) -> Result<(), String> {
    if h.scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
    {
        return Err("HTTPS probes are not supported by the process provider".into());
    }
    let host = h
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| target.host.clone());
    let port = target.port(&h.port)?;
    let path = h
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("Get \"http://{host}:{port}{path}\": dial tcp {host}:{port}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP probe: {e}"))?;
    let driver = tokio::spawn(conn);
    let mut req = hyper::Request::get(path.as_str());
    let headers = h.http_headers.clone().unwrap_or_default();
    if !headers
        .iter()
        .any(|hd| hd.name.eq_ignore_ascii_case("host"))
    {
        req = req.header(hyper::header::HOST, format!("{host}:{port}"));
    }
    if !headers
        .iter()
        .any(|hd| hd.name.eq_ignore_ascii_case("user-agent"))
    {
        req = req.header(hyper::header::USER_AGENT, USER_AGENT);
    }
    if !headers
        .iter()
        .any(|hd| hd.name.eq_ignore_ascii_case("accept"))
    {
        req = req.header(hyper::header::ACCEPT, "*/*");
    }
    for hd in &headers {
        req = req.header(hd.name.as_str(), hd.value.as_str());
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("HTTP probe request: {e}"))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("Get \"http://{host}:{port}{path}\": {e}"))?;
        let status = resp.status();
        // Read (a bounded part of) the body so the server is not cut off mid-write.
        let mut body = resp.into_body();
        let mut read = 0;
        while read < MAX_BODY {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
        if (200..400).contains(&status.as_u16()) {
            Ok(())
        } else {
            Err(format!(
                "HTTP probe failed with statuscode: {}",
                status.as_u16()
            ))
        }
    }
    .await;
    driver.abort();
    result
}

/// Rejects a probe this provider cannot run, so the pod fails clearly instead of never
/// becoming ready.
pub fn validate(probe: &Probe, c: &Container) -> Result<(), String> {
    let target = ProbeTarget::for_container("127.0.0.1", c);
    let handlers = [
        probe.exec.is_some(),
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.grpc.is_some(),
    ]
    .iter()
    .filter(|h| **h)
    .count();
    if handlers != 1 {
        return Err(format!(
            "a probe needs exactly one handler, it has {handlers}"
        ));
    }
    if probe.grpc.is_some() {
        return Err("gRPC probes are not supported by the process provider".into());
    }
    if let Some(h) = &probe.http_get {
        if h.scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return Err("HTTPS probes are not supported by the process provider".into());
        }
        target.port(&h.port)?;
    }
    if let Some(t) = &probe.tcp_socket {
        target.port(&t.port)?;
    }
    if probe
        .exec
        .as_ref()
        .is_some_and(|e| e.command.as_ref().is_none_or(Vec::is_empty))
    {
        return Err("exec probe has no command".into());
    }
    Ok(())
}

/// The loop of one probe for one container instance; see the module docs. Runs until dropped
/// (a startup probe returns once it succeeded or failed for good).
pub async fn run(
    kind: ProbeKind,
    probe: Probe,
    target: ProbeTarget,
    exec: Arc<dyn ExecRunner>,
    report: impl Fn(ProbeResult) + Send + Sync,
) {
    let secs = |v: Option<i32>, default: u64| {
        u64::try_from(v.unwrap_or(0))
            .ok()
            .filter(|s| *s > 0)
            .unwrap_or(default)
    };
    let initial_delay =
        Duration::from_secs(u64::try_from(probe.initial_delay_seconds.unwrap_or(0)).unwrap_or(0));
    let period = Duration::from_secs(secs(probe.period_seconds, 10));
    let success_threshold = match kind {
        ProbeKind::Readiness => secs(probe.success_threshold, 1),
        ProbeKind::Liveness | ProbeKind::Startup => 1,
    };
    let failure_threshold = secs(probe.failure_threshold, 3);
    // What the runtime assumes before the first report.
    let mut reported: Option<bool> = match kind {
        ProbeKind::Liveness => Some(true),
        ProbeKind::Readiness | ProbeKind::Startup => None,
    };
    let (mut successes, mut failures) = (0u64, 0u64);
    tokio::time::sleep(initial_delay).await;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (result, message) = match check(&probe, &target, exec.as_ref()).await {
            ProbeOutcome::Success => {
                failures = 0;
                successes += 1;
                (successes >= success_threshold)
                    .then_some((true, String::new()))
                    .unzip()
            }
            ProbeOutcome::Failure(m) => {
                successes = 0;
                failures += 1;
                (failures >= failure_threshold)
                    .then_some((false, m))
                    .unzip()
            }
        };
        let (Some(result), Some(message)) = (result, message) else {
            continue;
        };
        if reported != Some(result) {
            reported = Some(result);
            report(ProbeResult {
                kind,
                success: result,
                message,
            });
        }
        if kind == ProbeKind::Startup {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::collections::VecDeque;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    struct Scripted(Mutex<VecDeque<bool>>);

    #[async_trait]
    impl ExecRunner for Scripted {
        async fn run(&self, _command: &[String], _timeout: Duration) -> ProbeOutcome {
            match self.0.lock().pop_front() {
                Some(true) | None => ProbeOutcome::Success,
                Some(false) => ProbeOutcome::Failure("exit 1".into()),
            }
        }
    }

    fn exec_probe(extra: serde_json::Value) -> Probe {
        let mut v = serde_json::json!({"exec": {"command": ["true"]}});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    /// Run a probe loop over a scripted sequence for `secs` of paused time; returns the reports
    /// with the (virtual) second they came at.
    async fn drive(kind: ProbeKind, probe: Probe, script: &[bool], secs: u64) -> Vec<(u64, bool)> {
        let exec = Arc::new(Scripted(Mutex::new(script.iter().copied().collect())));
        let start = tokio::time::Instant::now();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let target = ProbeTarget {
            host: "127.0.0.1".into(),
            named_ports: BTreeMap::new(),
        };
        let task = tokio::spawn(run(kind, probe, target, exec, move |r| {
            sink.lock().push((start.elapsed().as_secs(), r.success));
        }));
        tokio::time::sleep(Duration::from_secs(secs)).await;
        task.abort();
        seen.lock().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_reports_once_after_the_failure_threshold() {
        let p = exec_probe(serde_json::json!({"initialDelaySeconds": 5, "periodSeconds": 2}));
        let mut script = vec![true];
        script.extend([false; 11]);
        script.push(true);
        let reports = drive(ProbeKind::Liveness, p, &script, 30).await;
        // Attempts at 5, 7, 9, ... s: failures at 7, 9, 11 reach the threshold of 3; the success
        // at 29 s is a recovery, reported too.
        assert_eq!(reports, [(11, false), (29, true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_needs_success_threshold_and_starts_unready() {
        let p = exec_probe(
            serde_json::json!({"periodSeconds": 1, "successThreshold": 2, "failureThreshold": 1}),
        );
        let reports = drive(
            ProbeKind::Readiness,
            p,
            &[false, true, true, true, false, true],
            10,
        )
        .await;
        assert_eq!(reports, [(0, false), (2, true), (4, false), (6, true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn startup_stops_after_success() {
        let p = exec_probe(serde_json::json!({"periodSeconds": 1, "failureThreshold": 5}));
        let reports = drive(ProbeKind::Startup, p, &[false, false, true, false], 10).await;
        assert_eq!(reports, [(2, true)]);
    }

    async fn http_server(status: u16, answer: bool) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let n = s.read(&mut buf).await.unwrap();
            if answer {
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            } else {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (port, task)
    }

    fn http_probe(port: u16, extra: serde_json::Value) -> Probe {
        let mut get = serde_json::json!({"path": "/healthz", "port": port,
            "httpHeaders": [{"name": "X-Check", "value": "yes"}]});
        if let (Some(o), Some(e)) = (get.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        serde_json::from_value(serde_json::json!({"httpGet": get})).unwrap()
    }

    #[tokio::test]
    async fn http_get_sends_path_and_headers_and_judges_the_status() {
        let no_exec = Scripted(Mutex::new(VecDeque::new()));
        let target = ProbeTarget {
            host: "127.0.0.1".into(),
            named_ports: BTreeMap::new(),
        };
        let (port, server) = http_server(200, true).await;
        assert_eq!(
            check(&http_probe(port, serde_json::json!({})), &target, &no_exec).await,
            ProbeOutcome::Success
        );
        let req = server.await.unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        assert!(req.to_lowercase().contains("x-check: yes"), "{req}");
        assert!(req.contains("kube-probe/1.20"), "{req}");

        let (port, _server) = http_server(500, true).await;
        assert_eq!(
            check(&http_probe(port, serde_json::json!({})), &target, &no_exec).await,
            ProbeOutcome::Failure("HTTP probe failed with statuscode: 500".into())
        );
        let (port, _server) = http_server(301, true).await;
        assert_eq!(
            check(&http_probe(port, serde_json::json!({})), &target, &no_exec).await,
            ProbeOutcome::Success
        );

        let (port, _server) = http_server(200, false).await;
        let outcome = check(&http_probe(port, serde_json::json!({})), &target, &no_exec).await;
        assert!(
            matches!(&outcome, ProbeOutcome::Failure(m) if m.starts_with("timeout")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn tcp_socket_and_named_ports() {
        let no_exec = Scripted(Mutex::new(VecDeque::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "ports": [{"name": "web", "containerPort": port}]
        }))
        .unwrap();
        let target = ProbeTarget::for_container("127.0.0.1", &c);
        let probe: Probe =
            serde_json::from_value(serde_json::json!({"tcpSocket": {"port": "web"}})).unwrap();
        assert_eq!(
            check(&probe, &target, &no_exec).await,
            ProbeOutcome::Success
        );
        drop(listener);
        let outcome = check(&probe, &target, &no_exec).await;
        assert!(
            matches!(&outcome, ProbeOutcome::Failure(m) if m.contains(&format!("dial tcp 127.0.0.1:{port}"))),
            "{outcome:?}"
        );
    }

    #[test]
    fn validate_explains_what_cannot_run() {
        let c: Container = serde_json::from_value(serde_json::json!({"name": "c"})).unwrap();
        let p = |v: serde_json::Value| -> Probe { serde_json::from_value(v).unwrap() };
        assert_eq!(
            validate(&p(serde_json::json!({"grpc": {"port": 9000}})), &c),
            Err("gRPC probes are not supported by the process provider".into())
        );
        assert_eq!(
            validate(
                &p(serde_json::json!({"tcpSocket": {"port": "metrics"}})),
                &c
            ),
            Err("the container has no port named \"metrics\"".into())
        );
        assert_eq!(
            validate(&p(serde_json::json!({"httpGet": {"port": 70000}})), &c),
            Err("port 70000 is out of range".into())
        );
        assert_eq!(
            validate(&p(serde_json::json!({})), &c),
            Err("a probe needs exactly one handler, it has 0".into())
        );
        assert!(validate(&p(serde_json::json!({"exec": {"command": ["true"]}})), &c).is_ok());
    }
}
