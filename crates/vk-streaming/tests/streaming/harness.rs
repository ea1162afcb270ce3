//! The test bed: a plain-HTTP axum server on 127.0.0.1 that mounts the streaming handlers, a
//! provider whose exec runs real processes and whose port-forward connects to test listeners,
//! and small clients (raw HTTP, WebSocket, SPDY upgrade by hand).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use vk_provider_api::provider::DynProvider;
use vk_provider_api::streams::{AttachRequest, Duplex, ExecRequest, ExecSession, TerminalSize};
use vk_provider_api::{
    BackendPod, NodeResources, PodKey, Provider, ProviderError, ProviderSinks, ResolvedPod,
};
use vk_streaming::{
    StreamConfig, parse_attach_query, parse_exec_query, parse_port_forward_query, serve_attach,
    serve_exec, serve_port_forward,
};

/// What happened to a command the provider started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started(u32),
    Exited(u32, i32),
    /// The session was dropped while the command ran: it was killed (and reaped).
    Killed(u32),
}

pub struct TestProvider {
    /// Pod port -> local port of a test listener.
    pub ports: parking_lot::Mutex<HashMap<u16, u16>>,
    pub events: mpsc::UnboundedSender<Event>,
    pub sizes: mpsc::UnboundedSender<TerminalSize>,
}

#[async_trait]
impl Provider for TestProvider {
    fn kind(&self) -> &str {
        "test"
    }
    async fn start(&self, _sinks: ProviderSinks) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn node_resources(&self) -> Result<NodeResources, ProviderError> {
        Ok(NodeResources::default())
    }
    async fn create_pod(&self, _pod: &ResolvedPod) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn update_pod(&self, _pod: &ResolvedPod) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn delete_pod(&self, _key: &PodKey, _grace: Duration) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn list_pods(&self) -> Result<Vec<BackendPod>, ProviderError> {
        Ok(Vec::new())
    }
    async fn cleanup_all(&self) -> Result<usize, ProviderError> {
        Ok(0)
    }

    async fn exec(&self, key: &PodKey, req: &ExecRequest) -> Result<ExecSession, ProviderError> {
        if key.name != "web" {
            return Err(ProviderError::NotFound(format!("pod {key} not found")));
        }
        self.run(&req.command, req.stdin, req.stdout, req.stderr, req.tty)
    }

    async fn attach(
        &self,
        key: &PodKey,
        req: &AttachRequest,
    ) -> Result<ExecSession, ProviderError> {
        if key.name != "web" {
            return Err(ProviderError::NotFound(format!("pod {key} not found")));
        }
        // The "container" echoes its input, prefixed, until its stdin closes.
        let command = ["sh", "-c", "echo attached; cat"].map(String::from);
        self.run(&command, req.stdin, req.stdout, req.stderr, req.tty)
    }

    async fn port_forward(
        &self,
        _key: &PodKey,
        port: u16,
    ) -> Result<std::pin::Pin<Box<dyn Duplex>>, ProviderError> {
        let local =
            self.ports.lock().get(&port).copied().ok_or_else(|| {
                ProviderError::NotFound(format!("nothing listens on port {port}"))
            })?;
        let stream = TcpStream::connect(("127.0.0.1", local))
            .await
            .map_err(|e| ProviderError::Other(e.to_string()))?;
        Ok(Box::pin(stream))
    }
}

impl TestProvider {
    fn run(
        &self,
        command: &[String],
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    ) -> Result<ExecSession, ProviderError> {
        let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
        let mut child = tokio::process::Command::new(&command[0])
            .args(&command[1..])
            .stdin(piped(stdin))
            .stdout(piped(stdout))
            .stderr(piped(stderr && !tty))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ProviderError::Other(e.to_string()))?;
        let pid = child.id().unwrap_or_default();
        let _ = self.events.send(Event::Started(pid));
        let session_stdin = child.stdin.take().map(|s| Box::pin(s) as _);
        let session_stdout = child.stdout.take().map(|s| Box::pin(s) as _);
        let session_stderr = child.stderr.take().map(|s| Box::pin(s) as _);
        let resize = tty.then(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<TerminalSize>();
            let sizes = self.sizes.clone();
            tokio::spawn(async move {
                while let Some(size) = rx.recv().await {
                    let _ = sizes.send(size);
                }
            });
            tx
        });
        let (exit_tx, exit) = oneshot::channel();
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut exit_tx = exit_tx;
            tokio::select! {
                status = child.wait() => {
                    let code = status.ok().and_then(|s| s.code()).unwrap_or(-1);
                    let _ = events.send(Event::Exited(pid, code));
                    let _ = exit_tx.send(Ok(code));
                }
                () = exit_tx.closed() => {
                    let _ = child.kill().await;
                    let _ = events.send(Event::Killed(pid));
                }
            }
        });
        Ok(ExecSession {
            stdin: session_stdin,
            stdout: session_stdout,
            stderr: session_stderr,
            resize,
            exit,
        })
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub provider: Arc<TestProvider>,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub sizes: mpsc::UnboundedReceiver<TerminalSize>,
}

#[derive(Clone)]
struct AppState {
    provider: DynProvider,
    cfg: StreamConfig,
}

fn key(ns: &str, pod: &str) -> PodKey {
    PodKey::new(format!("uid-{pod}"), ns, pod)
}

async fn exec(
    State(st): State<AppState>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    match parse_exec_query(req.uri().query(), &container) {
        Ok(exec) => serve_exec(req, st.provider, key(&ns, &pod), exec, st.cfg).await,
        Err(e) => e.into_response(),
    }
}

async fn attach(
    State(st): State<AppState>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    match parse_attach_query(req.uri().query(), &container) {
        Ok(attach) => serve_attach(req, st.provider, key(&ns, &pod), attach, st.cfg).await,
        Err(e) => e.into_response(),
    }
}

async fn port_forward(
    State(st): State<AppState>,
    Path((ns, pod)): Path<(String, String)>,
    req: Request,
) -> Response {
    match parse_port_forward_query(req.uri().query()) {
        Ok(ports) => serve_port_forward(req, st.provider, key(&ns, &pod), ports, st.cfg).await,
        Err(e) => e.into_response(),
    }
}

pub async fn server(cfg: StreamConfig) -> Server {
    let (events_tx, events) = mpsc::unbounded_channel();
    let (sizes_tx, sizes) = mpsc::unbounded_channel();
    let provider = Arc::new(TestProvider {
        ports: parking_lot::Mutex::new(HashMap::new()),
        events: events_tx,
        sizes: sizes_tx,
    });
    let state = AppState {
        provider: provider.clone(),
        cfg,
    };
    let app = Router::new()
        .route("/exec/{ns}/{pod}/{container}", any(exec))
        .route("/attach/{ns}/{pod}/{container}", any(attach))
        .route("/portForward/{ns}/{pod}", any(port_forward))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server {
        addr,
        provider,
        events,
        sizes,
    }
}

impl Server {
    /// Waits for the next start of a command; returns its pid.
    pub async fn started(&mut self) -> u32 {
        loop {
            match self.events.recv().await.unwrap() {
                Event::Started(pid) => return pid,
                _ => continue,
            }
        }
    }

    /// Waits for what became of `pid`.
    pub async fn ended(&mut self, pid: u32) -> Event {
        loop {
            let event = self.events.recv().await.unwrap();
            match event {
                Event::Exited(p, _) | Event::Killed(p) if p == pid => return event,
                _ => continue,
            }
        }
    }

    /// A TCP service reachable as pod port `port`, running `serve` per connection.
    pub async fn listen<F, Fut>(&self, port: u16, serve: F)
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap().port();
        self.provider.ports.lock().insert(port, local);
        tokio::spawn(async move {
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(conn));
            }
        });
    }
}

/// Whether a process is gone (reaped): no /proc entry.
pub fn process_gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A plain HTTP/1.1 request; returns status, headers (lowercase names) and body.
pub async fn http(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// Sends an upgrade request by hand and reads the response head byte by byte (so nothing of
/// the upgraded protocol is consumed); returns the connection, status and headers.
pub async fn upgrade(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (TcpStream, u16, Vec<(String, String)>) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(conn.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (conn, status, headers)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A Kubernetes Status body.
pub fn status_body(body: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["kind"], "Status", "{body}");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["status"], "Failure");
    v
}

/// The query string of an exec of `argv`.
pub fn exec_query(argv: &[&str], flags: &str) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for a in argv {
        q.append_pair("command", a);
    }
    format!("{}&{flags}", q.finish())
}
