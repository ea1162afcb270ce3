//! [`Stream`]: one SPDY stream as a tokio `AsyncRead + AsyncWrite`.
//!
//! Reads pop DATA payloads from the stream's bounded receive queue (filled by the reader task);
//! writes become DATA frames queued for the writer task, each taking a queue permit first so a
//! slow peer makes writers wait. The table entry in the connection tracks half-closes; this
//! handle only keeps what it needs to answer its own calls.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, TryAcquireError, mpsc};

use crate::conn::{HandleGuard, Outgoing, Shared, StreamCore};
use crate::{Error, RstStatus};

/// Largest DATA payload one write produces. Keeps frames far below any sane peer limit and
/// lets other streams' frames interleave during bulk transfers.
pub const MAX_DATA_CHUNK: usize = 64 * 1024;

type AcquireFuture =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// One SPDY stream.
///
/// - `poll_write` sends DATA frames of at most [`MAX_DATA_CHUNK`] bytes; `poll_shutdown` sends
///   an empty DATA frame with FIN (half-close: reading continues). `poll_flush` returns at once:
///   the writer task writes and flushes every batch it takes from the queue.
/// - Reads end with EOF when the peer half-closes or the connection ends. After the peer resets
///   the stream (RST_STREAM), reads return the data that arrived before the reset and then fail
///   with [`io::ErrorKind::ConnectionReset`]; writes fail with it at once.
/// - Dropping a stream that is not closed in both directions resets it with CANCEL (data
///   already written is still sent first).
pub struct Stream {
    shared: Arc<Shared>,
    core: Arc<StreamCore>,
    data_rx: mpsc::Receiver<Bytes>,
    /// Rest of a payload that did not fit the caller's buffer.
    pending: Bytes,
    local_fin: bool,
    acquire: Option<AcquireFuture>,
    _guard: Arc<HandleGuard>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.core.id)
            .field("local_fin", &self.local_fin)
            .field("remote_fin", &self.core.remote_fin())
            .field("reset", &self.core.reset_status())
            .finish()
    }
}

impl Stream {
    pub(crate) fn new(
        shared: Arc<Shared>,
        core: Arc<StreamCore>,
        data_rx: mpsc::Receiver<Bytes>,
        local_fin: bool,
        guard: Arc<HandleGuard>,
    ) -> Self {
        Self {
            shared,
            core,
            data_rx,
            pending: Bytes::new(),
            local_fin,
            acquire: None,
            _guard: guard,
        }
    }

    /// The stream id.
    pub fn id(&self) -> u32 {
        self.core.id
    }

    /// Aborts the stream with RST_STREAM `status` (nothing is sent if it is already closed in
    /// both directions or reset).
    pub fn reset(self, status: RstStatus) {
        self.shared.reset_stream(&self.core, status);
    }

    fn check_writable(&self) -> io::Result<()> {
        if let Some(status) = self.core.reset_status() {
            return Err(reset_error(status));
        }
        if self.local_fin {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "SPDY stream already half-closed",
            ));
        }
        Ok(())
    }

    /// Waits for a slot in the writer queue.
    fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<OwnedSemaphorePermit>> {
        let acquire = match &mut self.acquire {
            Some(acquire) => acquire,
            None => match self.shared.write_permits.clone().try_acquire_owned() {
                Ok(permit) => return Poll::Ready(Ok(permit)),
                Err(TryAcquireError::Closed) => return Poll::Ready(Err(closed_error())),
                Err(TryAcquireError::NoPermits) => self
                    .acquire
                    .insert(Box::pin(self.shared.write_permits.clone().acquire_owned())),
            },
        };
        let result = ready!(acquire.as_mut().poll(cx));
        self.acquire = None;
        Poll::Ready(result.map_err(|_| closed_error()))
    }

    fn queue_data(&self, data: Bytes, fin: bool, permit: OwnedSemaphorePermit) -> io::Result<()> {
        let item = Outgoing::Data {
            core: self.core.clone(),
            data,
            fin,
        };
        if self.shared.push(item, Some(permit)) {
            Ok(())
        } else {
            Err(closed_error())
        }
    }
}

fn reset_error(status: u32) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, Error::StreamReset(status))
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, Error::ConnectionClosed)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        while this.pending.is_empty() {
            match ready!(this.data_rx.poll_recv(cx)) {
                Some(chunk) => this.pending = chunk,
                None => {
                    // Queue ended: FIN (EOF), RST (error) or connection end (EOF).
                    if !this.core.remote_fin()
                        && let Some(status) = this.core.reset_status()
                    {
                        return Poll::Ready(Err(reset_error(status)));
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.check_writable()?;
        let permit = ready!(this.poll_permit(cx))?;
        // The stream may have been reset while we waited for queue space.
        this.check_writable()?;
        let n = buf.len().min(MAX_DATA_CHUNK);
        this.queue_data(Bytes::copy_from_slice(&buf[..n]), false, permit)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.local_fin {
            return Poll::Ready(Ok(()));
        }
        this.check_writable()?;
        let permit = ready!(this.poll_permit(cx))?;
        this.check_writable()?;
        this.queue_data(Bytes::new(), true, permit)?;
        this.local_fin = true;
        this.shared.local_fin(this.core.id);
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // No-op when the stream is already closed both ways or reset (not in the table).
        self.shared.reset_stream(&self.core, RstStatus::Cancel);
    }
}
