//! The SPDY session: shared connection state, the reader and writer tasks, and the handles
//! ([`Connection`], [`Incoming`], [`IncomingStream`]) that users hold.
//!
//! Layout:
//! - [`Shared`] is the state every handle and both tasks point at. Its stream table sits behind
//!   a `std` mutex that is never held across an `.await` or while dropping anything whose `Drop`
//!   locks it again.
//! - The **reader task** owns the read half and the receive zlib context. It decodes frames in
//!   order and routes them; it is the only place that inflates header blocks, so the context can
//!   never get out of step.
//! - The **writer task** owns the write half and the send zlib context. Everything outgoing goes
//!   through one FIFO channel to it, so frames leave in the order they were queued (SYN_REPLY
//!   before the stream's DATA, SYN_STREAM ids strictly increasing). Queue space is a semaphore of
//!   [`Config::write_queue_frames`] permits: DATA, SYN_STREAM and frames the reader sends in
//!   answer to the peer take a permit (so a slow peer pushes back on writers and a PING flood
//!   cannot grow the queue); RST and SYN_REPLY from synchronous contexts (`Drop`, `accept`) skip
//!   it, bounded by the number of streams.
//! - The connection ends through [`Shared::terminate`] (idempotent): it fails pending opens,
//!   ends every stream's receive queue, closes the permit semaphore, and queues an optional
//!   GOAWAY plus a shutdown marker. The writer flushes up to the marker (bounded by
//!   [`Config::close_timeout`]), shuts the transport down and exits; the reader is cancelled.
//!   When both tasks have exited the phase becomes `Closed` and [`Connection::closed`] resolves.
//! - Handles share one [`HandleGuard`]; when the last handle (connection, incoming, stream)
//!   is dropped the guard terminates the connection, so no task outlives its users.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::frame::{self, Frame, MAX_STREAM_ID};
use crate::headers::{HeaderDecoder, HeaderEncoder, Headers};
use crate::stream::Stream;
use crate::{Config, Error, Role, RstStatus, goaway};

/// How much the writer gathers from its queue before one `write_all`.
const WRITE_BATCH: usize = 256 * 1024;
/// Minimum free space kept in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// Lifecycle of a connection, broadcast to tasks and waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    /// `terminate` ran; the writer is flushing.
    Closing,
    /// Both tasks have exited; the transport is dropped.
    Closed,
}

/// Per-stream flags shared by the stream's handle, the table entry and queued DATA.
#[derive(Debug)]
pub(crate) struct StreamCore {
    pub(crate) id: u32,
    /// 0 while not reset, else the RST_STREAM status (sent or received).
    reset: AtomicU32,
    /// The reset came from the peer: queued DATA for the stream is pointless and is dropped.
    peer_reset: AtomicBool,
    /// The peer half-closed (FIN seen): reads end with EOF rather than an error.
    remote_fin: AtomicBool,
}

impl StreamCore {
    fn new(id: u32) -> Self {
        Self {
            id,
            reset: AtomicU32::new(0),
            peer_reset: AtomicBool::new(false),
            remote_fin: AtomicBool::new(false),
        }
    }

    /// The RST status if the stream was reset.
    pub(crate) fn reset_status(&self) -> Option<u32> {
        match self.reset.load(Ordering::Acquire) {
            0 => None,
            status => Some(status),
        }
    }

    pub(crate) fn remote_fin(&self) -> bool {
        self.remote_fin.load(Ordering::Acquire)
    }

    fn mark_reset(&self, status: u32, by_peer: bool) {
        // Status 0 is not a valid RST status; keep "reset" observable anyway.
        let status = if status == 0 {
            RstStatus::ProtocolError.code()
        } else {
            status
        };
        if by_peer {
            self.peer_reset.store(true, Ordering::Release);
        }
        let _ = self
            .reset
            .compare_exchange(0, status, Ordering::AcqRel, Ordering::Acquire);
    }

    fn mark_remote_fin(&self) {
        self.remote_fin.store(true, Ordering::Release);
    }
}

/// A stream's row in the connection table. Present while the stream is not fully closed.
struct Entry {
    core: Arc<StreamCore>,
    /// Feeds the stream's receive queue; `None` once the peer half-closed.
    data_tx: Option<mpsc::Sender<Bytes>>,
    local_fin: bool,
    remote_fin: bool,
    remote_initiated: bool,
    /// Waiting `open_stream` call (locally opened streams until SYN_REPLY).
    reply_tx: Option<oneshot::Sender<Result<Headers, Error>>>,
}

struct State {
    streams: HashMap<u32, Entry>,
    next_local_id: u32,
    last_remote_id: u32,
    /// Peer-initiated streams in `streams` (what `max_concurrent_streams` limits).
    remote_active: usize,
    incoming_tx: Option<mpsc::UnboundedSender<IncomingParts>>,
    terminated: bool,
}

impl State {
    fn remove(&mut self, id: u32) -> Option<Entry> {
        let entry = self.streams.remove(&id)?;
        if entry.remote_initiated {
            self.remote_active -= 1;
        }
        Some(entry)
    }
}

/// Work for the writer task.
pub(crate) enum Outgoing {
    /// A frame that needs no header compression (RST, PING, GOAWAY).
    Frame(Frame),
    Data {
        core: Arc<StreamCore>,
        data: Bytes,
        fin: bool,
    },
    SynStream {
        id: u32,
        headers: Headers,
    },
    SynReply {
        id: u32,
        headers: Headers,
    },
    /// Everything queued before this is flushed, then the transport is shut down.
    Shutdown,
}

pub(crate) struct Queued {
    item: Outgoing,
    /// Released once the frame has been written, which is what makes the queue bounded.
    _permit: Option<OwnedSemaphorePermit>,
}

/// Why the reader stopped.
enum ReadEnd {
    Eof,
    Io(io::Error),
    Protocol(String),
    GoAway { status: u32 },
}

pub(crate) struct Shared {
    role: Role,
    pub(crate) config: Config,
    state: Mutex<State>,
    out_tx: mpsc::UnboundedSender<Queued>,
    pub(crate) write_permits: Arc<Semaphore>,
    phase: watch::Sender<Phase>,
    live_tasks: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the table inconsistent in a way that
        // matters more than stopping: keep going with the data as it is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an item for the writer. Fails only once the writer has exited.
    pub(crate) fn push(&self, item: Outgoing, permit: Option<OwnedSemaphorePermit>) -> bool {
        self.out_tx
            .send(Queued {
                item,
                _permit: permit,
            })
            .is_ok()
    }

    /// Waits for queue space, then queues `item`.
    async fn push_bounded(&self, item: Outgoing) -> Result<(), Error> {
        let permit = self.acquire_permit().await?;
        if self.push(item, Some(permit)) {
            Ok(())
        } else {
            Err(Error::ConnectionClosed)
        }
    }

    async fn acquire_permit(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.write_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::ConnectionClosed)
    }

    pub(crate) fn is_terminated(&self) -> bool {
        *self.phase.borrow() != Phase::Open
    }

    /// Ends the connection (idempotent). `goaway` is the GOAWAY status to send, if any.
    pub(crate) fn terminate(&self, why: &str, goaway: Option<u32>) {
        let (entries, incoming_tx) = {
            let mut st = self.lock();
            if st.terminated {
                return;
            }
            st.terminated = true;
            tracing::debug!(role = ?self.role, why, "SPDY connection ending");
            if let Some(status) = goaway {
                let last_good_stream_id = st.last_remote_id;
                self.push(
                    Outgoing::Frame(Frame::GoAway {
                        last_good_stream_id,
                        status,
                    }),
                    None,
                );
            }
            self.push(Outgoing::Shutdown, None);
            st.remote_active = 0;
            (std::mem::take(&mut st.streams), st.incoming_tx.take())
        };
        self.write_permits.close();
        self.phase.send_if_modified(|phase| {
            let open = *phase == Phase::Open;
            if open {
                *phase = Phase::Closing;
            }
            open
        });
        for (_, entry) in entries {
            if let Some(reply_tx) = entry.reply_tx {
                let _ = reply_tx.send(Err(Error::ConnectionClosed));
            }
            // Dropping `data_tx` ends the stream's receive queue: reads drain, then EOF.
        }
        drop(incoming_tx);
    }

    /// Resets a stream from our side (RST_STREAM `status`) if it is still in the table.
    /// Usable from `Drop`: never waits.
    pub(crate) fn reset_stream(&self, core: &StreamCore, status: RstStatus) {
        let mut st = self.lock();
        if st.remove(core.id).is_some() {
            core.mark_reset(status.code(), false);
            if !st.terminated {
                let frame = Frame::RstStream {
                    stream_id: core.id,
                    status: status.code(),
                };
                self.push(Outgoing::Frame(frame), None);
            }
        }
    }

    /// Records that we sent FIN; drops the stream from the table once both sides are closed.
    pub(crate) fn local_fin(&self, id: u32) {
        let mut st = self.lock();
        if let Some(entry) = st.streams.get_mut(&id) {
            entry.local_fin = true;
            if entry.remote_fin {
                st.remove(id);
            }
        }
    }

    fn peer_ping_parity(&self) -> u32 {
        // Clients use odd ids, servers even; we answer the peer's pings only.
        match self.role {
            Role::Server => 1,
            Role::Client => 0,
        }
    }
}

/// Held by every user-facing handle; the last one dropped closes the connection.
pub(crate) struct HandleGuard(Arc<Shared>);

impl Drop for HandleGuard {
    fn drop(&mut self) {
        self.0.terminate("all handles dropped", Some(goaway::OK));
    }
}

/// Held by each task; the last task to exit marks the connection closed. Also terminates, so a
/// task that exits any other way (including a panic) cannot leave the other one running.
struct TaskExit(Arc<Shared>);

impl Drop for TaskExit {
    fn drop(&mut self) {
        self.0.terminate("connection task exited", None);
        if self.0.live_tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.phase.send_replace(Phase::Closed);
        }
    }
}

/// A SPDY/3.1 session. Cheap to clone; all clones drive the same connection.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    guard: Arc<HandleGuard>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.shared.role)
            .field("phase", &*self.shared.phase.borrow())
            .finish()
    }
}

impl Connection {
    /// Spawns the connection's reader and writer tasks on the current tokio runtime.
    ///
    /// # Panics
    /// If called outside a tokio runtime (as `tokio::spawn` does).
    pub fn new<IO>(io: IO, role: Role, config: Config) -> (Connection, Incoming)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let config = config.normalized();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            role,
            state: Mutex::new(State {
                streams: HashMap::new(),
                next_local_id: match role {
                    Role::Client => 1,
                    Role::Server => 2,
                },
                last_remote_id: 0,
                remote_active: 0,
                incoming_tx: Some(incoming_tx),
                terminated: false,
            }),
            out_tx,
            write_permits: Arc::new(Semaphore::new(config.write_queue_frames)),
            phase: watch::Sender::new(Phase::Open),
            live_tasks: AtomicUsize::new(2),
            config,
        });
        let (read_half, write_half) = tokio::io::split(io);
        tokio::spawn(run_reader(TaskExit(shared.clone()), read_half));
        tokio::spawn(run_writer(TaskExit(shared.clone()), write_half, out_rx));
        let guard = Arc::new(HandleGuard(shared.clone()));
        let incoming = Incoming {
            shared: shared.clone(),
            rx: incoming_rx,
            guard: guard.clone(),
        };
        (Connection { shared, guard }, incoming)
    }

    /// Opens a stream (SYN_STREAM) and waits for the peer's SYN_REPLY; returns the stream and
    /// the reply headers.
    ///
    /// Errors: [`Error::Header`] for headers that cannot be sent, [`Error::StreamRefused`] /
    /// [`Error::StreamReset`] if the peer answers with RST_STREAM, [`Error::ConnectionClosed`]
    /// if the connection ends first. Dropping the future before the reply resets the stream
    /// (CANCEL). There is no timeout here: wrap the call (Kubernetes uses 30 s).
    pub async fn open_stream(&self, headers: Headers) -> Result<(Stream, Headers), Error> {
        headers.validate()?;
        let shared = &self.shared;
        let permit = shared.acquire_permit().await?;
        let (data_tx, data_rx) = mpsc::channel(shared.config.stream_buffer_frames);
        let (reply_tx, reply_rx) = oneshot::channel();
        let core = {
            let mut st = shared.lock();
            if st.terminated {
                return Err(Error::ConnectionClosed);
            }
            let id = st.next_local_id;
            if id > MAX_STREAM_ID {
                return Err(Error::StreamIdsExhausted);
            }
            st.next_local_id = id + 2;
            let core = Arc::new(StreamCore::new(id));
            st.streams.insert(
                id,
                Entry {
                    core: core.clone(),
                    data_tx: Some(data_tx),
                    local_fin: false,
                    remote_fin: false,
                    remote_initiated: false,
                    reply_tx: Some(reply_tx),
                },
            );
            // Queued under the lock so that wire order equals id order.
            shared.push(Outgoing::SynStream { id, headers }, Some(permit));
            core
        };
        let mut cancel = CancelOnDrop {
            shared,
            core: &core,
            armed: true,
        };
        let reply = reply_rx.await;
        // Whoever answered (reader or terminate) has already updated the table.
        cancel.armed = false;
        drop(cancel);
        match reply {
            Ok(Ok(reply)) => {
                let stream = Stream::new(shared.clone(), core, data_rx, false, self.guard.clone());
                Ok((stream, reply))
            }
            Ok(Err(err)) => Err(err),
            Err(_) => Err(Error::ConnectionClosed),
        }
    }

    /// Sends GOAWAY and closes the connection after queued frames are written (at most
    /// [`Config::close_timeout`]); resolves once it has ended. Open streams end: reads drain
    /// and return EOF, writes fail.
    pub async fn close(&self) {
        self.shared.terminate("closed locally", Some(goaway::OK));
        self.closed().await;
    }

    /// Resolves when the connection has ended (peer closed, GOAWAY, I/O error, or close()) and
    /// both of its tasks have exited.
    pub async fn closed(&self) {
        let mut phase = self.shared.phase.subscribe();
        // The sender lives in `shared`, which we hold, so this cannot fail.
        let _ = phase.wait_for(|p| *p == Phase::Closed).await;
    }

    /// Whether the connection has started ending.
    pub fn is_closed(&self) -> bool {
        self.shared.is_terminated()
    }

    /// Our role on this connection.
    pub fn role(&self) -> Role {
        self.shared.role
    }
}

/// Resets a locally opened stream if `open_stream` is abandoned before the reply.
struct CancelOnDrop<'a> {
    shared: &'a Shared,
    core: &'a StreamCore,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.reset_stream(self.core, RstStatus::Cancel);
        }
    }
}

/// Streams opened by the peer, in arrival order.
pub struct Incoming {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<IncomingParts>,
    guard: Arc<HandleGuard>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

impl Incoming {
    /// The next stream the peer opened; `None` once the connection ended. Streams not taken
    /// count against `max_concurrent_streams`; dropping `Incoming` refuses them and all later
    /// ones (REFUSED_STREAM).
    pub async fn accept(&mut self) -> Option<IncomingStream> {
        let parts = self.rx.recv().await?;
        if self.shared.is_terminated() {
            // Dropping it is a no-op reset: terminate already emptied the table.
            return None;
        }
        Some(IncomingStream {
            parts,
            guard: self.guard.clone(),
        })
    }
}

/// What the reader hands to [`Incoming`]. Refuses the stream when dropped unanswered, whether
/// it is dropped inside the queue or as an [`IncomingStream`].
struct IncomingParts {
    shared: Arc<Shared>,
    core: Arc<StreamCore>,
    data_rx: Option<mpsc::Receiver<Bytes>>,
    headers: Headers,
    fin: bool,
    unidirectional: bool,
    answered: bool,
}

impl Drop for IncomingParts {
    fn drop(&mut self) {
        if !self.answered {
            self.shared
                .reset_stream(&self.core, RstStatus::RefusedStream);
        }
    }
}

/// A stream the peer opened (SYN_STREAM) that we have not answered yet. Dropping it refuses the
/// stream (RST_STREAM REFUSED_STREAM).
pub struct IncomingStream {
    parts: IncomingParts,
    guard: Arc<HandleGuard>,
}

impl std::fmt::Debug for IncomingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingStream")
            .field("id", &self.parts.core.id)
            .field("headers", &self.parts.headers)
            .field("fin", &self.parts.fin)
            .finish()
    }
}

impl IncomingStream {
    /// The stream id (odd when the peer is a client).
    pub fn id(&self) -> u32 {
        self.parts.core.id
    }

    /// The SYN_STREAM headers.
    pub fn headers(&self) -> &Headers {
        &self.parts.headers
    }

    /// The peer opened the stream half-closed (SYN_STREAM with FIN): it will send no data.
    pub fn fin(&self) -> bool {
        self.parts.fin
    }

    /// The peer opened the stream unidirectional: we may not send on it.
    pub fn unidirectional(&self) -> bool {
        self.parts.unidirectional
    }

    /// Accepts the stream: sends SYN_REPLY with `reply` and returns the stream. Headers that
    /// fail [`Headers::validate`] are left out of the reply. If the stream was reset or the
    /// connection ended meanwhile, no reply is sent and the stream reports that on use.
    pub fn accept(self, reply: Headers) -> Stream {
        let IncomingStream { mut parts, guard } = self;
        parts.answered = true;
        let shared = parts.shared.clone();
        let core = parts.core.clone();
        {
            let st = shared.lock();
            if !st.terminated && st.streams.contains_key(&core.id) {
                shared.push(
                    Outgoing::SynReply {
                        id: core.id,
                        headers: reply,
                    },
                    None,
                );
            }
        }
        let data_rx = match parts.data_rx.take() {
            Some(rx) => rx,
            // Unreachable by construction; an already-closed queue reads as EOF.
            None => mpsc::channel(1).1,
        };
        Stream::new(shared, core, data_rx, parts.unidirectional, guard)
    }

    /// Refuses the stream with RST_STREAM `status`.
    pub fn reject(self, status: RstStatus) {
        let IncomingStream {
            mut parts,
            guard: _guard,
        } = self;
        parts.answered = true;
        parts.shared.reset_stream(&parts.core, status);
    }
}

async fn run_reader<R: AsyncRead + Unpin>(exit: TaskExit, mut io: R) {
    let shared = exit.0.clone();
    let mut phase = shared.phase.subscribe();
    let end = tokio::select! {
        end = read_loop(&shared, &mut io) => end,
        // Someone else ended the connection: stop reading, even mid-wait on a full stream queue.
        _ = phase.wait_for(|p| *p != Phase::Open) => return,
    };
    match end {
        ReadEnd::Eof => shared.terminate("peer closed the transport", None),
        ReadEnd::Io(err) => {
            tracing::debug!(%err, "SPDY read failed");
            shared.terminate("read error", None);
        }
        ReadEnd::Protocol(why) => {
            tracing::warn!(why, "SPDY protocol error from peer; sending GOAWAY");
            shared.terminate("protocol error", Some(goaway::PROTOCOL_ERROR));
        }
        ReadEnd::GoAway { status } => {
            tracing::debug!(status, "SPDY GOAWAY received");
            shared.terminate("GOAWAY received", None);
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(shared: &Arc<Shared>, io: &mut R) -> ReadEnd {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut decoder = HeaderDecoder::new(shared.config.max_header_block_len);
    loop {
        loop {
            match frame::decode(&mut buf, shared.config.max_frame_len) {
                Ok(Some(frame)) => {
                    if let Err(end) = handle_frame(shared, &mut decoder, frame).await {
                        return end;
                    }
                }
                Ok(None) => break,
                Err(err) => return ReadEnd::Protocol(err.to_string()),
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match io.read_buf(&mut buf).await {
            Ok(0) => return ReadEnd::Eof,
            Ok(_) => {}
            Err(err) => return ReadEnd::Io(err),
        }
    }
}

/// Routes one frame. `Err` ends the connection.
async fn handle_frame(
    shared: &Arc<Shared>,
    decoder: &mut HeaderDecoder,
    frame: Frame,
) -> Result<(), ReadEnd> {
    // Header blocks are inflated first, for every frame that has one, even if the frame is then
    // refused: skipping one would desynchronise the shared zlib context.
    let mut headers = |block: &Bytes| {
        decoder
            .decode(block)
            .map_err(|err| ReadEnd::Protocol(format!("bad header block: {err}")))
    };
    match frame {
        Frame::Data {
            stream_id,
            fin,
            data,
        } => on_data(shared, stream_id, fin, data).await,
        Frame::SynStream {
            stream_id,
            fin,
            unidirectional,
            header_block,
            ..
        } => {
            let headers = headers(&header_block)?;
            on_syn_stream(shared, stream_id, fin, unidirectional, headers).await
        }
        Frame::SynReply {
            stream_id,
            fin,
            header_block,
        } => {
            let headers = headers(&header_block)?;
            on_syn_reply(shared, stream_id, fin, headers).await
        }
        Frame::Headers {
            stream_id,
            fin,
            header_block,
        } => {
            // Extra headers carry nothing Kubernetes uses; only FIN matters.
            headers(&header_block)?;
            if fin {
                on_remote_fin(shared, stream_id);
            }
            Ok(())
        }
        Frame::RstStream { stream_id, status } => {
            on_rst(shared, stream_id, status);
            Ok(())
        }
        Frame::Ping { id } => {
            if id & 1 == shared.peer_ping_parity() {
                // Fails only if the connection is ending, which cancels this task anyway.
                let _ = shared
                    .push_bounded(Outgoing::Frame(Frame::Ping { id }))
                    .await;
            }
            // Our own parity would be an answer to a ping of ours; we send none.
            Ok(())
        }
        Frame::GoAway { status, .. } => Err(ReadEnd::GoAway { status }),
        // No flow control (see the crate docs): SETTINGS and WINDOW_UPDATE are ignored, as
        // are control frame types we do not know.
        Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => {
            tracing::trace!(frame = frame.name(), "ignored SPDY frame");
            Ok(())
        }
    }
}

async fn send_rst(shared: &Shared, stream_id: u32, status: RstStatus) {
    let frame = Frame::RstStream {
        stream_id,
        status: status.code(),
    };
    let _ = shared.push_bounded(Outgoing::Frame(frame)).await;
}

async fn on_data(shared: &Shared, id: u32, fin: bool, data: Bytes) -> Result<(), ReadEnd> {
    // Either the stream's queue sender, or the RST to answer with.
    let route: Result<mpsc::Sender<Bytes>, RstStatus> = {
        let mut st = shared.lock();
        let (remote_fin, data_tx) = match st.streams.get(&id) {
            Some(entry) => (entry.remote_fin, entry.data_tx.clone()),
            None => (false, None),
        };
        if remote_fin {
            // DATA after the peer's own FIN: a stream error.
            if let Some(entry) = st.remove(id) {
                entry
                    .core
                    .mark_reset(RstStatus::StreamAlreadyClosed.code(), false);
            }
            Err(RstStatus::StreamAlreadyClosed)
        } else {
            // Unknown or closed stream: tell the peer, keep the connection.
            data_tx.ok_or(RstStatus::InvalidStream)
        }
    };
    let data_tx = match route {
        Ok(data_tx) => data_tx,
        Err(status) => {
            send_rst(shared, id, status).await;
            return Ok(());
        }
    };
    // Empty DATA carries only FIN; never queue an empty chunk (it would read as EOF).
    if !data.is_empty() {
        // Waits while the stream's queue is full (head-of-line, see crate docs). An error means
        // the stream's handle is gone; the data has nowhere to go.
        let _ = data_tx.send(data).await;
    }
    drop(data_tx);
    if fin {
        on_remote_fin(shared, id);
    }
    Ok(())
}

fn on_remote_fin(shared: &Shared, id: u32) {
    let mut st = shared.lock();
    if let Some(entry) = st.streams.get_mut(&id) {
        entry.remote_fin = true;
        entry.core.mark_remote_fin();
        entry.data_tx = None;
        if entry.local_fin {
            st.remove(id);
        }
    }
}

async fn on_syn_stream(
    shared: &Arc<Shared>,
    id: u32,
    fin: bool,
    unidirectional: bool,
    headers: Headers,
) -> Result<(), ReadEnd> {
    let mut rejected = None;
    let mut undelivered = None;
    {
        let mut st = shared.lock();
        if st.terminated {
            return Ok(());
        }
        let parity_ok = id & 1 == shared.peer_ping_parity();
        if !parity_ok {
            rejected = Some(RstStatus::ProtocolError);
        } else if st.streams.contains_key(&id) {
            // A second SYN_STREAM for an active stream is a stream error on that stream.
            if let Some(entry) = st.remove(id) {
                entry.core.mark_reset(RstStatus::StreamInUse.code(), true);
            }
            rejected = Some(RstStatus::StreamInUse);
        } else if id <= st.last_remote_id {
            rejected = Some(RstStatus::ProtocolError);
        } else {
            st.last_remote_id = id;
            if st.remote_active >= shared.config.max_concurrent_streams || st.incoming_tx.is_none()
            {
                rejected = Some(RstStatus::RefusedStream);
            } else {
                let core = Arc::new(StreamCore::new(id));
                let (data_tx, data_rx) = mpsc::channel(shared.config.stream_buffer_frames);
                if fin {
                    core.mark_remote_fin();
                }
                st.streams.insert(
                    id,
                    Entry {
                        core: core.clone(),
                        // Dropped right away when the peer opened half-closed: reads see EOF.
                        data_tx: (!fin).then_some(data_tx),
                        local_fin: unidirectional,
                        remote_fin: fin,
                        remote_initiated: true,
                        reply_tx: None,
                    },
                );
                st.remote_active += 1;
                let parts = IncomingParts {
                    shared: shared.clone(),
                    core,
                    data_rx: Some(data_rx),
                    headers,
                    fin,
                    unidirectional,
                    answered: false,
                };
                if let Some(tx) = &st.incoming_tx
                    && let Err(mpsc::error::SendError(parts)) = tx.send(parts)
                {
                    // `Incoming` is gone: refused when `parts` drops, after the lock.
                    undelivered = Some(parts);
                }
            }
        }
    }
    drop(undelivered);
    if let Some(status) = rejected {
        tracing::debug!(id, ?status, "refusing SYN_STREAM");
        send_rst(shared, id, status).await;
    }
    Ok(())
}

async fn on_syn_reply(
    shared: &Shared,
    id: u32,
    fin: bool,
    headers: Headers,
) -> Result<(), ReadEnd> {
    let (reply_tx, protocol_error) = {
        let mut st = shared.lock();
        match st.streams.get_mut(&id) {
            None => (None, Some(RstStatus::InvalidStream)),
            Some(entry) if entry.remote_initiated || entry.reply_tx.is_none() => {
                // SYN_REPLY for a stream the peer opened, or a second one: STREAM_IN_USE.
                if let Some(entry) = st.remove(id) {
                    entry.core.mark_reset(RstStatus::StreamInUse.code(), true);
                }
                (None, Some(RstStatus::StreamInUse))
            }
            Some(entry) => {
                let reply_tx = entry.reply_tx.take();
                if fin {
                    entry.remote_fin = true;
                    entry.core.mark_remote_fin();
                    entry.data_tx = None;
                    if entry.local_fin {
                        st.remove(id);
                    }
                }
                (reply_tx, None)
            }
        }
    };
    if let Some(reply_tx) = reply_tx {
        // The opener may have given up; CancelOnDrop already reset the stream then.
        let _ = reply_tx.send(Ok(headers));
    }
    if let Some(status) = protocol_error {
        send_rst(shared, id, status).await;
    }
    Ok(())
}

fn on_rst(shared: &Shared, id: u32, status: u32) {
    let entry = shared.lock().remove(id);
    // Never answer RST_STREAM with RST_STREAM: unknown ids are ignored.
    if let Some(entry) = entry {
        entry.core.mark_reset(status, true);
        if let Some(reply_tx) = entry.reply_tx {
            let err = if status == RstStatus::RefusedStream.code() {
                Error::StreamRefused
            } else {
                Error::StreamReset(status)
            };
            let _ = reply_tx.send(Err(err));
        }
        // `entry.data_tx` drops here, after the reset flag is set: the reader of the stream
        // drains what arrived before the RST, then sees the reset.
    }
}

async fn run_writer<W: AsyncWrite + Unpin>(
    exit: TaskExit,
    io: W,
    rx: mpsc::UnboundedReceiver<Queued>,
) {
    let shared = exit.0.clone();
    let mut phase = shared.phase.subscribe();
    let close_timeout = shared.config.close_timeout;
    let hard_stop = async move {
        let _ = phase.wait_for(|p| *p != Phase::Open).await;
        tokio::time::sleep(close_timeout).await;
    };
    let mut writer = Writer {
        shared: &shared,
        io,
        rx,
        encoder: HeaderEncoder::new(),
        headers_broken: false,
        buf: BytesMut::with_capacity(64 * 1024),
        permits: Vec::new(),
    };
    tokio::select! {
        biased;
        result = writer.run() => {
            if let Err(err) = result {
                tracing::debug!(%err, "SPDY write failed");
                shared.terminate("write error", None);
            }
        }
        _ = hard_stop => {
            tracing::debug!(?close_timeout, "SPDY close timed out; dropping the transport");
        }
    }
}

struct Writer<'a, W> {
    shared: &'a Shared,
    io: W,
    rx: mpsc::UnboundedReceiver<Queued>,
    encoder: HeaderEncoder,
    /// The send zlib context failed; no further header block can be produced.
    headers_broken: bool,
    buf: BytesMut,
    permits: Vec<OwnedSemaphorePermit>,
}

impl<W: AsyncWrite + Unpin> Writer<'_, W> {
    async fn run(&mut self) -> io::Result<()> {
        loop {
            let Some(first) = self.rx.recv().await else {
                return Ok(());
            };
            let mut shutdown = self.encode(first);
            while !shutdown && self.buf.len() < WRITE_BATCH {
                match self.rx.try_recv() {
                    Ok(next) => shutdown = self.encode(next),
                    Err(_) => break,
                }
            }
            if !self.buf.is_empty() {
                self.io.write_all(&self.buf).await?;
                self.io.flush().await?;
                self.buf.clear();
            }
            // Queue space is released only now that the bytes are with the transport.
            self.permits.clear();
            if shutdown {
                return self.io.shutdown().await;
            }
        }
    }

    /// Appends one item's wire bytes to the batch; returns true at the shutdown marker.
    fn encode(&mut self, queued: Queued) -> bool {
        let Queued { item, _permit } = queued;
        if let Some(permit) = _permit {
            self.permits.push(permit);
        }
        let frame = match item {
            Outgoing::Shutdown => return true,
            Outgoing::Frame(frame) => frame,
            Outgoing::Data { core, data, fin } => {
                if core.peer_reset.load(Ordering::Acquire) {
                    return false;
                }
                Frame::Data {
                    stream_id: core.id,
                    fin,
                    data,
                }
            }
            Outgoing::SynStream { id, headers } => match self.header_block(&headers) {
                Some(header_block) => Frame::SynStream {
                    stream_id: id,
                    associated_id: 0,
                    priority: 0,
                    fin: false,
                    unidirectional: false,
                    header_block,
                },
                None => return false,
            },
            Outgoing::SynReply { id, headers } => match self.header_block(&headers) {
                Some(header_block) => Frame::SynReply {
                    stream_id: id,
                    fin: false,
                    header_block,
                },
                None => return false,
            },
        };
        if let Err(err) = frame::try_encode(&frame, &mut self.buf) {
            tracing::error!(%err, "dropping unencodable SPDY frame");
            self.shared
                .terminate("unencodable frame", Some(goaway::INTERNAL_ERROR));
        }
        false
    }

    fn header_block(&mut self, headers: &Headers) -> Option<Bytes> {
        if self.headers_broken {
            return None;
        }
        match self.encoder.encode(headers) {
            Ok(block) => Some(block),
            Err(err) => {
                // The peer's decoder would be out of step from here on: end the session.
                tracing::error!(%err, "SPDY header compression failed");
                self.headers_broken = true;
                self.shared
                    .terminate("header compression failed", Some(goaway::INTERNAL_ERROR));
                None
            }
        }
    }
}
