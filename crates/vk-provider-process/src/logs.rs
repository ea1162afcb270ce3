//! Container logs in the kubelet's CRI log format.
//!
//! This module owns the on-disk log files of container instances: writing them
//! (the shim pumps the container's stdout and stderr into a [`LogWriter`]),
//! rotating them, and reading them back for `kubectl logs` ([`read_logs`]).
//!
//! Each instance (one start of a container, numbered by its restart count)
//! writes `<dir>/<restart>.log`. Every line of that file is one record,
//! exactly as containerd writes them so existing tooling can read them:
//!
//! ```text
//! 2026-11-22T10:00:00.123456789Z stdout F hello
//! ```
//!
//! The tag is `F` for a record that completes a line and `P` for a chunk of a
//! line longer than 16 KiB; the newline ending a container's line is not
//! stored, the record's own `\n` stands for it. Output left without a newline
//! at EOF is written as one `F` record, so every line a container writes is
//! complete in the file once its pipe is closed.
//!
//! Rotation renames `<restart>.log` to `<restart>.log.<n>`, with `n` one more
//! than the highest rotated file already there, so the numbers order the
//! files oldest first even across shim restarts; the oldest are deleted to
//! keep at most [`LogConfig::max_files`] files per instance. A record never
//! spans two files, but the `P` chunks of one long line may.
//!
//! Readers hold the files open by descriptor and recognise the followed file
//! by inode, so rotation under a reader loses nothing unless the writer
//! prunes a file the reader has not reached yet. They only consume complete
//! lines: the end of the current file may be a record still being written.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Longest content of one record; longer lines are split into `P` chunks (containerd's limit).
const MAX_RECORD_CONTENT: usize = 16 * 1024;
/// RFC 3339 in UTC with all nine fractional digits, so records have a fixed-width prefix.
const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.9fZ";
/// How often a follower looks for new records.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Unit of file and pipe reads.
const READ_BLOCK: usize = 64 * 1024;
/// A record line is at most 16 KiB plus a short header: anything much longer
/// was not written by us, and is skipped rather than buffered.
const MAX_RECORD_LINE: usize = 64 * 1024;
/// Bounds the memory a reader spends joining `P` chunks: a longer line is
/// output in pieces of this size.
const MAX_JOINED_LINE: usize = 1024 * 1024;
/// Output is handed to the client in batches of about this size.
const OUTPUT_BATCH: usize = 64 * 1024;

/// Size limits of one container instance's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// The current file is rotated once it has reached this size.
    pub max_bytes: u64,
    /// Files kept per instance, the current one included.
    pub max_files: usize,
}

impl Default for LogConfig {
    /// The kubelet's defaults (`containerLogMaxSize`, `containerLogMaxFiles`).
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// Which pipe of the container a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The name used in the record format.
    pub fn as_str(&self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// One parsed record line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub timestamp: Timestamp,
    pub stream: Stream,
    /// A `P` record: the line continues in the next record of the same stream.
    pub partial: bool,
    pub content: &'a [u8],
}

fn current_path(dir: &Path, restart: u32) -> PathBuf {
    dir.join(format!("{restart}.log"))
}

fn rotated_path(dir: &Path, restart: u32, n: u64) -> PathBuf {
    dir.join(format!("{restart}.log.{n}"))
}

/// The rotated files of an instance, oldest (lowest `n`) first.
fn list_rotated(dir: &Path, restart: u32) -> io::Result<Vec<(u64, PathBuf)>> {
    let prefix = format!("{restart}.log.");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(suffix) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(n) = suffix.parse::<u64>() {
            found.push((n, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(n, _)| *n);
    Ok(found)
}

/// The files of one instance, oldest first (rotated ones by n, then the current).
pub fn instance_files(dir: &Path, restart: u32) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match list_rotated(dir, restart) {
        Ok(rotated) => rotated.into_iter().map(|(_, path)| path).collect(),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "listing container log files");
            }
            Vec::new()
        }
    };
    let current = current_path(dir, restart);
    if current.exists() {
        files.push(current);
    }
    files
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn encode_record(
    buf: &mut Vec<u8>,
    timestamp: Timestamp,
    stream: Stream,
    partial: bool,
    content: &[u8],
) -> io::Result<()> {
    let tag = if partial { 'P' } else { 'F' };
    write!(
        buf,
        "{} {} {tag} ",
        timestamp.strftime(TIMESTAMP_FORMAT),
        stream.as_str()
    )?;
    buf.extend_from_slice(content);
    buf.push(b'\n');
    Ok(())
}

/// Appends the records of one container instance to its log files.
///
/// Writes are plain blocking writes: they land in the page cache, and the shim
/// that owns the writer has nothing else on its runtime that a short block
/// could starve. Each record goes out in a single `write(2)` on an `O_APPEND`
/// file, so readers see whole records or a torn tail they know to wait for.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    restart: u32,
    cfg: LogConfig,
    file: File,
    size: u64,
    next_rotation: u64,
    encoded: Vec<u8>,
}

impl LogWriter {
    /// Opens (append) `<dir>/<restart>.log` for one container instance.
    pub fn create(dir: &Path, restart: u32, cfg: LogConfig) -> io::Result<Self> {
        let file = open_append(&current_path(dir, restart))?;
        let size = file.metadata()?.len();
        // Continue after the files of an earlier writer of this instance so the
        // numbers keep ordering the files oldest first.
        let next_rotation = list_rotated(dir, restart)?
            .last()
            .map_or(1, |(n, _)| n.saturating_add(1));
        Ok(Self {
            dir: dir.to_path_buf(),
            restart,
            cfg,
            file,
            size,
            next_rotation,
            encoded: Vec::with_capacity(MAX_RECORD_CONTENT + 64),
        })
    }

    /// Appends one record; rotates first when the current file is at/over max_bytes.
    ///
    /// `content` must not contain `\n` ([`pump`] never passes one).
    pub async fn write_record(
        &mut self,
        stream: Stream,
        partial: bool,
        content: &[u8],
    ) -> io::Result<()> {
        self.write_record_at(Timestamp::now(), stream, partial, content)
    }

    fn write_record_at(
        &mut self,
        timestamp: Timestamp,
        stream: Stream,
        partial: bool,
        content: &[u8],
    ) -> io::Result<()> {
        debug_assert!(!content.contains(&b'\n'), "record content holds a newline");
        if self.size > 0 && self.size >= self.cfg.max_bytes {
            // Losing rotation only costs disk space; losing the record would cost the log line.
            if let Err(e) = self.rotate() {
                tracing::warn!(dir = %self.dir.display(), restart = self.restart, error = %e, "rotating container log");
            }
        }
        self.encoded.clear();
        encode_record(&mut self.encoded, timestamp, stream, partial, content)?;
        self.file.write_all(&self.encoded)?;
        self.size += self.encoded.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let current = current_path(&self.dir, self.restart);
        let rotated = rotated_path(&self.dir, self.restart, self.next_rotation);
        match std::fs::rename(&current, &rotated) {
            Ok(()) => self.next_rotation += 1,
            // Someone removed the file under us: starting a fresh one is all that is left to do.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Reset even when reopening fails, so a persistent failure is retried
        // once per max_bytes rather than on every record.
        self.size = 0;
        self.file = open_append(&current)?;
        self.prune();
        Ok(())
    }

    fn prune(&self) {
        let keep = self.cfg.max_files.max(1) - 1;
        let rotated = match list_rotated(&self.dir, self.restart) {
            Ok(rotated) => rotated,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "listing rotated container logs");
                return;
            }
        };
        let excess = rotated.len().saturating_sub(keep);
        for (_, path) in &rotated[..excess] {
            if let Err(e) = std::fs::remove_file(path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "removing rotated container log");
            }
        }
    }

    /// Flush buffered writes (called before the container's exit is recorded).
    ///
    /// Records are written through immediately, so this only guarantees
    /// ordering; it deliberately does not fsync (a crash loses the page cache
    /// and the exit record alike).
    pub async fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    /// Same as [`LogWriter::flush`]: [`pump`] writes a line left without a
    /// newline at EOF itself, so the writer never holds a partial line.
    pub async fn flush_partial(&mut self) -> io::Result<()> {
        self.flush().await
    }
}

/// Read `reader` (a container's stdout or stderr pipe) to EOF, splitting into
/// records (newline-terminated → F, >16 KiB chunks → P) and writing them
/// through the shared writer. Lines of the two streams interleave only at
/// record boundaries.
///
/// A failing log write does not stop the pump: the pipe keeps being drained
/// (the output is dropped) so that a full disk cannot block the container on
/// a full pipe. The first write error is returned at EOF.
pub async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: Stream,
    writer: Arc<tokio::sync::Mutex<LogWriter>>,
) -> io::Result<()> {
    let mut buf = vec![0u8; READ_BLOCK];
    let mut line: Vec<u8> = Vec::with_capacity(MAX_RECORD_CONTENT + 1);
    let mut write_error = None;
    let read_result = loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        };
        // One lock per read keeps the lock traffic low while still letting the
        // other stream in between whole records.
        let mut w = writer.lock().await;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let (chunk, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let chunk = &rest[..i];
                    rest = &rest[i + 1..];
                    (chunk, true)
                }
                None => (std::mem::take(&mut rest), false),
            };
            line.extend_from_slice(chunk);
            // Strictly longer: a line of exactly 16 KiB still fits one F record.
            while line.len() > MAX_RECORD_CONTENT {
                put(
                    &mut w,
                    stream,
                    true,
                    &line[..MAX_RECORD_CONTENT],
                    &mut write_error,
                )
                .await;
                line.drain(..MAX_RECORD_CONTENT);
            }
            if complete {
                put(&mut w, stream, false, &line, &mut write_error).await;
                line.clear();
            }
        }
    };
    if !line.is_empty() {
        // Nothing will ever complete this line: record it as a full one.
        let mut w = writer.lock().await;
        put(&mut w, stream, false, &line, &mut write_error).await;
    }
    read_result?;
    write_error.map_or(Ok(()), Err)
}

async fn put(
    w: &mut LogWriter,
    stream: Stream,
    partial: bool,
    content: &[u8],
    first_error: &mut Option<io::Error>,
) {
    if let Err(e) = w.write_record(stream, partial, content).await
        && first_error.is_none()
    {
        tracing::warn!(stream = stream.as_str(), error = %e, "writing container log; dropping output");
        *first_error = Some(e);
    }
}

fn split_space(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == b' ')?;
    Some((&s[..i], &s[i + 1..]))
}

/// Parse one record line (without the newline); None when malformed (skip malformed lines, never panic).
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let (timestamp, rest) = split_space(line)?;
    let timestamp: Timestamp = std::str::from_utf8(timestamp).ok()?.parse().ok()?;
    let (stream, rest) = split_space(rest)?;
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    // An empty line may have lost its separator (`… stdout F`): accept both.
    let (tag, content) = split_space(rest).unwrap_or((rest, &[]));
    // The CRI format allows more ':'-separated tags; only the first is defined.
    let partial = match tag.split(|&b| b == b':').next()? {
        b"F" => false,
        b"P" => true,
        _ => return None,
    };
    Some(Record {
        timestamp,
        stream,
        partial,
        content,
    })
}

/// Options of a log read, after the kubelet's `/containerLogs` query.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Last N lines (full lines, after joining P chunks) of the instance.
    pub tail_lines: Option<u64>,
    /// Only lines with timestamp >= since (a line's timestamp is that of its first chunk).
    pub since: Option<Timestamp>,
    /// Prefix each output line with its timestamp (same format as in the file) and a space.
    pub timestamps: bool,
    /// Stop after writing this many bytes (may cut a line).
    pub limit_bytes: Option<u64>,
    /// Keep waiting for new lines until the instance has finished.
    pub follow: bool,
    /// Only the lines of this stream (attach separates stdout from stderr); both when `None`.
    pub stream: Option<Stream>,
}

/// Identifies a file across renames.
type FileId = (u64, u64);

struct LogFile {
    file: Arc<File>,
    id: FileId,
}

fn open_log(path: &Path) -> io::Result<Option<LogFile>> {
    match File::open(path) {
        Ok(file) => {
            let meta = file.metadata()?;
            Ok(Some(LogFile {
                file: Arc::new(file),
                id: (meta.dev(), meta.ino()),
            }))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn id_at(path: &Path) -> io::Result<Option<FileId>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some((meta.dev(), meta.ino()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Files to read after the ones already seen.
struct Opened {
    /// Rotated files numbered above `after`, oldest first.
    rotated: Vec<LogFile>,
    current: Option<LogFile>,
    /// The highest rotation number seen.
    max_rotation: u64,
}

/// Opens the files of an instance that follow the reader's position: rotated
/// files numbered above `after` other than `seen` (the file the reader was
/// following, which may itself have been rotated meanwhile), then the current one.
fn open_files(dir: &Path, restart: u32, seen: Option<FileId>, after: u64) -> io::Result<Opened> {
    // The current file is opened before listing: if it is rotated in between,
    // the listing shows it (skipped by its id) instead of it being missed.
    let current = open_log(&current_path(dir, restart))?;
    let listed = match list_rotated(dir, restart) {
        Ok(listed) => listed,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let max_rotation = listed.last().map_or(after, |(n, _)| (*n).max(after));
    let current_id = current.as_ref().map(|f| f.id);
    let mut rotated = Vec::new();
    for (n, path) in listed {
        if n <= after {
            continue;
        }
        // Gone means pruned since the listing: its lines are lost either way.
        let Some(file) = open_log(&path)? else {
            continue;
        };
        if Some(file.id) != seen && Some(file.id) != current_id {
            rotated.push(file);
        }
    }
    Ok(Opened {
        rotated,
        current,
        max_rotation,
    })
}

/// Runs blocking file work off the runtime: readers live in the main process,
/// where a slow disk must not stall other pods' requests.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

async fn read_block(
    file: Arc<File>,
    offset: u64,
    mut buf: Vec<u8>,
) -> io::Result<(Vec<u8>, usize)> {
    buf.resize(READ_BLOCK, 0);
    blocking(move || {
        let n = file.read_at(&mut buf, offset)?;
        Ok((buf, n))
    })
    .await
}

/// A line found by [`BackLines`]: its offset and, unless malformed, stream and tag.
struct BackLine {
    offset: u64,
    record: Option<(Stream, bool)>,
}

/// Complete record lines of one file, last first, read backwards in blocks.
struct BackLines<'f> {
    file: &'f File,
    /// File offset of `buf[0]`.
    pos: u64,
    /// Unconsumed bytes; they end with the `\n` of the next line to return.
    buf: Vec<u8>,
}

impl<'f> BackLines<'f> {
    fn new(file: &'f File) -> io::Result<Self> {
        let mut this = Self {
            file,
            pos: file.metadata()?.len(),
            buf: Vec::new(),
        };
        // Bytes after the last newline are a record still being written.
        loop {
            if let Some(i) = this.buf.iter().rposition(|&b| b == b'\n') {
                this.buf.truncate(i + 1);
                break;
            }
            if this.pos == 0 {
                this.buf.clear();
                break;
            }
            if this.buf.len() > MAX_RECORD_LINE {
                this.buf.clear();
            }
            this.load()?;
        }
        Ok(this)
    }

    /// Offset just past the last complete line.
    fn end(&self) -> u64 {
        self.pos + self.buf.len() as u64
    }

    fn load(&mut self) -> io::Result<()> {
        let n = self.pos.min(READ_BLOCK as u64);
        let start = self.pos - n;
        let mut block = vec![0; n as usize];
        self.file.read_exact_at(&mut block, start)?;
        block.extend_from_slice(&self.buf);
        self.buf = block;
        self.pos = start;
        Ok(())
    }

    fn prev(&mut self) -> io::Result<Option<BackLine>> {
        // Set once the line is longer than any record: its bytes are dropped
        // (including its newline) and only its start is still looked for.
        let mut oversized = false;
        loop {
            let search = if oversized {
                &self.buf[..]
            } else {
                &self.buf[..self.buf.len().saturating_sub(1)]
            };
            let start = match search.iter().rposition(|&b| b == b'\n') {
                Some(i) => Some(i + 1),
                None if self.pos == 0 => {
                    if self.buf.is_empty() && !oversized {
                        return Ok(None);
                    }
                    Some(0)
                }
                None => None,
            };
            if let Some(start) = start {
                let record = if oversized {
                    None
                } else {
                    parse_record(&self.buf[start..self.buf.len() - 1])
                        .map(|r| (r.stream, r.partial))
                };
                self.buf.truncate(start);
                return Ok(Some(BackLine {
                    offset: self.pos + start as u64,
                    record,
                }));
            }
            if !oversized && self.buf.len() > MAX_RECORD_LINE {
                oversized = true;
                self.buf.clear();
            }
            self.load()?;
        }
    }
}

/// Where reading must start (file index, offset) so that the last `lines`
/// lines are read whole, without reading the files before it.
fn tail_start(files: &[Arc<File>], lines: u64) -> io::Result<(usize, u64)> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Back {
        /// Not inside a counted line of this stream.
        Between,
        /// Collecting the P chunks of a counted line.
        Inside,
        /// Earlier records of this stream are not needed.
        Done,
    }
    let mut state = [Back::Between; 2];
    let mut counted = 0u64;
    let mut start = None;
    for (idx, file) in files.iter().enumerate().rev() {
        let mut back = BackLines::new(file)?;
        let start = start.get_or_insert((idx, back.end()));
        while let Some(BackLine { offset, record }) = back.prev()? {
            if counted >= lines && !state.contains(&Back::Inside) {
                return Ok(*start);
            }
            let Some((stream, partial)) = record else {
                continue;
            };
            let s = &mut state[stream.index()];
            match (*s, partial) {
                (Back::Done, _) => continue,
                (Back::Inside, true) => {}
                // An F ends an earlier line; a P outside any line is the
                // newest chunk of a line still being written, which counts too.
                _ => {
                    if counted >= lines {
                        *s = Back::Done;
                        continue;
                    }
                    counted += 1;
                    *s = Back::Inside;
                }
            }
            *start = (idx, offset);
        }
    }
    // Everything is needed: the reader's ring of `lines` lines drops any surplus.
    Ok((0, 0))
}

/// Collects output and hands it to the client, enforcing `limit_bytes`.
struct Output<'o, W> {
    out: &'o mut W,
    buf: Vec<u8>,
    written: u64,
    limit: Option<u64>,
    timestamps: bool,
}

impl<W: AsyncWrite + Unpin> Output<'_, W> {
    fn full(&self) -> bool {
        self.limit.is_some_and(|limit| self.written >= limit)
    }

    async fn line(&mut self, timestamp: Timestamp, content: &[u8]) -> io::Result<()> {
        if self.full() {
            return Ok(());
        }
        let start = self.buf.len();
        if self.timestamps {
            write!(self.buf, "{} ", timestamp.strftime(TIMESTAMP_FORMAT))?;
        }
        self.buf.extend_from_slice(content);
        self.buf.push(b'\n');
        let mut added = (self.buf.len() - start) as u64;
        if let Some(limit) = self.limit {
            let room = limit - self.written;
            if added > room {
                // `room` < `added`, a usize, so it fits.
                self.buf.truncate(start + room as usize);
                added = room;
            }
        }
        self.written += added;
        if self.buf.len() >= OUTPUT_BATCH {
            self.send().await?;
        }
        Ok(())
    }

    async fn send(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.send().await?;
        self.out.flush().await
    }
}

/// A line being joined or held back, stamped with the time of its first chunk.
struct Pending {
    timestamp: Timestamp,
    content: Vec<u8>,
}

/// The last `cap` lines read so far.
struct Ring {
    cap: usize,
    lines: VecDeque<Pending>,
}

/// Reads the records of one instance in file order and turns them into lines.
struct LogReader<'o, W> {
    dir: PathBuf,
    restart: u32,
    /// Files not yet read to their end; the first is being read.
    files: VecDeque<LogFile>,
    /// Read position in `files[0]`.
    offset: u64,
    /// The file at the current path when last looked at.
    current: Option<FileId>,
    max_rotation: u64,
    /// The beginning of a line whose end has not been read yet.
    carry: Vec<u8>,
    /// Discarding the rest of an overlong line.
    skipping: bool,
    block: Vec<u8>,
    /// Per stream: a line whose P chunks have been read but not its F.
    pending: [Option<Pending>; 2],
    since: Option<Timestamp>,
    stream: Option<Stream>,
    /// With `tail_lines`, lines are held back here until the first pass is done.
    ring: Option<Ring>,
    out: Output<'o, W>,
}

impl<'o, W: AsyncWrite + Unpin> LogReader<'o, W> {
    async fn open(dir: &Path, restart: u32, opts: &LogOptions, out: &'o mut W) -> io::Result<Self> {
        let owned = dir.to_path_buf();
        let opened = blocking(move || open_files(&owned, restart, None, 0)).await?;
        let current = opened.current.as_ref().map(|f| f.id);
        let mut files: VecDeque<LogFile> = opened.rotated.into();
        files.extend(opened.current);
        let mut reader = Self {
            dir: dir.to_path_buf(),
            restart,
            files,
            offset: 0,
            current,
            max_rotation: opened.max_rotation,
            carry: Vec::new(),
            skipping: false,
            block: Vec::new(),
            pending: [None, None],
            since: opts.since,
            stream: opts.stream,
            ring: None,
            out: Output {
                out,
                buf: Vec::new(),
                written: 0,
                limit: opts.limit_bytes,
                timestamps: opts.timestamps,
            },
        };
        if let Some(lines) = opts.tail_lines {
            let handles: Vec<Arc<File>> = reader.files.iter().map(|f| f.file.clone()).collect();
            let (idx, offset) = blocking(move || tail_start(&handles, lines)).await?;
            reader.files.drain(..idx.min(reader.files.len()));
            reader.offset = offset;
            reader.ring = Some(Ring {
                cap: usize::try_from(lines).unwrap_or(usize::MAX),
                lines: VecDeque::new(),
            });
        }
        Ok(reader)
    }

    /// Reads every complete record there is, up to the end of the current file.
    async fn drain(&mut self) -> io::Result<()> {
        while !self.out.full() {
            let Some(front) = self.files.front() else {
                return Ok(());
            };
            let is_current = self.current == Some(front.id);
            let file = front.file.clone();
            let (block, n) = read_block(file, self.offset, std::mem::take(&mut self.block)).await?;
            self.block = block;
            if n == 0 {
                if is_current {
                    return Ok(());
                }
                self.next_file();
                continue;
            }
            self.offset += n as u64;
            self.consume(n).await?;
        }
        Ok(())
    }

    /// Leaves a file that will not grow any more.
    fn next_file(&mut self) {
        self.files.pop_front();
        self.offset = 0;
        // A torn last line of a finished file can never be completed.
        self.carry.clear();
        self.skipping = false;
    }

    async fn consume(&mut self, n: usize) -> io::Result<()> {
        let block = std::mem::take(&mut self.block);
        let mut rest = &block[..n];
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let piece = &rest[..i];
            rest = &rest[i + 1..];
            if self.skipping {
                self.skipping = false;
            } else if self.carry.is_empty() {
                self.parsed(piece).await?;
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(piece);
                self.parsed(&line).await?;
                line.clear();
                self.carry = line;
            }
        }
        if !rest.is_empty() && !self.skipping {
            self.carry.extend_from_slice(rest);
            if self.carry.len() > MAX_RECORD_LINE {
                self.carry.clear();
                self.skipping = true;
            }
        }
        self.block = block;
        Ok(())
    }

    async fn parsed(&mut self, line: &[u8]) -> io::Result<()> {
        let Some(record) = parse_record(line) else {
            tracing::trace!(dir = %self.dir.display(), "skipping malformed container log line");
            return Ok(());
        };
        if self.stream.is_some_and(|only| only != record.stream) {
            return Ok(());
        }
        let slot = &mut self.pending[record.stream.index()];
        if slot.is_none() && !record.partial {
            return self.line(record.timestamp, record.content).await;
        }
        let pending = slot.get_or_insert_with(|| Pending {
            timestamp: record.timestamp,
            content: Vec::new(),
        });
        pending.content.extend_from_slice(record.content);
        if (!record.partial || pending.content.len() >= MAX_JOINED_LINE)
            && let Some(done) = slot.take()
        {
            self.line(done.timestamp, &done.content).await?;
        }
        Ok(())
    }

    async fn line(&mut self, timestamp: Timestamp, content: &[u8]) -> io::Result<()> {
        if self.since.is_some_and(|since| timestamp < since) {
            return Ok(());
        }
        if let Some(ring) = &mut self.ring {
            if ring.cap == 0 {
                return Ok(());
            }
            // Reuses the dropped line's buffer: a tail pass allocates `cap` lines at most.
            let mut kept = if ring.lines.len() >= ring.cap {
                ring.lines
                    .pop_front()
                    .map(|p| p.content)
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            kept.clear();
            kept.extend_from_slice(content);
            ring.lines.push_back(Pending {
                timestamp,
                content: kept,
            });
            return Ok(());
        }
        self.out.line(timestamp, content).await
    }

    /// Ends the first pass: from here on lines go straight to the client.
    async fn release_ring(&mut self) -> io::Result<()> {
        if let Some(ring) = self.ring.take() {
            for line in ring.lines {
                self.out.line(line.timestamp, &line.content).await?;
            }
        }
        Ok(())
    }

    /// Outputs lines whose F record will never be read, as far as they got.
    async fn finish_pending(&mut self) -> io::Result<()> {
        for i in 0..self.pending.len() {
            if let Some(p) = self.pending[i].take() {
                self.line(p.timestamp, &p.content).await?;
            }
        }
        Ok(())
    }

    /// Moves on when the followed file has been rotated away.
    async fn follow_rotation(&mut self) -> io::Result<()> {
        let path = current_path(&self.dir, self.restart);
        let at_path = blocking(move || id_at(&path)).await?;
        if at_path == self.current {
            return Ok(());
        }
        // The writer switched files: what it wrote to the old one before that
        // is complete now, and may still be unread.
        self.drain().await?;
        if self.out.full() {
            return Ok(());
        }
        if self.current.is_some() && self.files.front().map(|f| f.id) == self.current {
            self.next_file();
        }
        let (dir, restart, seen, after) = (
            self.dir.clone(),
            self.restart,
            self.current,
            self.max_rotation,
        );
        let opened = blocking(move || open_files(&dir, restart, seen, after)).await?;
        self.max_rotation = opened.max_rotation;
        self.current = opened.current.as_ref().map(|f| f.id);
        self.files.extend(opened.rotated);
        self.files.extend(opened.current);
        self.drain().await
    }
}

/// Write the logs of instance `restart` in `dir` to `out` (content lines with
/// '\n', both streams in record order). With `follow`, keep waiting for new
/// records (poll every ~100 ms — no inotify dependency; handle the current
/// file being rotated away while reading) until `finished()` returns true AND
/// everything written has been read; return Ok when done. Errors writing
/// `out` (client went away) end it with that error.
///
/// A line is output once its F record has been read, so lines of the two
/// streams come in the order they were completed. A record still being
/// written (no newline yet) is never output; a line whose F record is missing
/// at the end (the writer died mid-line) is output as far as it got.
pub async fn read_logs<W, F>(
    dir: &Path,
    restart: u32,
    opts: &LogOptions,
    out: &mut W,
    finished: F,
) -> io::Result<u64>
where
    W: AsyncWrite + Unpin,
    F: Fn() -> bool,
{
    let mut reader = LogReader::open(dir, restart, opts, out).await?;
    reader.drain().await?;

    if opts.follow {
        reader.release_ring().await?;
        while !reader.out.full() {
            // Asked before reading: whatever was written before the writer
            // finished is then read by this very pass.
            let last = finished();
            reader.drain().await?;
            reader.follow_rotation().await?;
            if last {
                break;
            }
            reader.out.flush().await?;
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    reader.finish_pending().await?;
    reader.release_ring().await?;
    reader.out.flush().await?;
    Ok(reader.out.written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::sync::Mutex;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("vk-logs-test-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        fn text(&self, name: &str) -> String {
            std::fs::read_to_string(self.0.join(name)).unwrap()
        }

        fn append_raw(&self, name: &str, bytes: &[u8]) {
            open_append(&self.0.join(name))
                .unwrap()
                .write_all(bytes)
                .unwrap();
        }

        fn names(&self, restart: u32) -> Vec<String> {
            instance_files(&self.0, restart)
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const T0: &str = "2026-11-22T10:00:00.123456789Z";

    fn t(secs: i64) -> Timestamp {
        T0.parse::<Timestamp>()
            .unwrap()
            .checked_add(SignedDuration::from_secs(secs))
            .unwrap()
    }

    fn big() -> LogConfig {
        LogConfig::default()
    }

    fn writer(dir: &TempDir, restart: u32, cfg: LogConfig) -> LogWriter {
        LogWriter::create(&dir.0, restart, cfg).unwrap()
    }

    async fn read(dir: &TempDir, opts: LogOptions) -> String {
        let mut out = Vec::new();
        let n = read_logs(&dir.0, 0, &opts, &mut out, || true)
            .await
            .unwrap();
        assert_eq!(n, out.len() as u64);
        String::from_utf8(out).unwrap()
    }

    fn tail(n: u64) -> LogOptions {
        LogOptions {
            tail_lines: Some(n),
            ..Default::default()
        }
    }

    /// (partial, content) of every record in a file; panics on a malformed one.
    fn records(text: &str) -> Vec<(Stream, bool, String)> {
        text.lines()
            .map(|l| {
                let r = parse_record(l.as_bytes()).unwrap();
                (
                    r.stream,
                    r.partial,
                    String::from_utf8(r.content.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn letters(len: usize) -> String {
        (0..len)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect()
    }

    #[tokio::test]
    async fn record_format_is_exact() {
        let dir = TempDir::new("format");
        let mut w = writer(&dir, 0, big());
        w.write_record_at(t(0), Stream::Stdout, false, b"hello")
            .unwrap();
        w.write_record_at(t(1), Stream::Stderr, true, b"part one")
            .unwrap();
        let whole_second: Timestamp = "2026-01-02T03:04:05Z".parse().unwrap();
        w.write_record_at(whole_second, Stream::Stdout, false, b"")
            .unwrap();
        w.flush().await.unwrap();
        drop(w);
        // A new writer for the same instance appends.
        let mut w = writer(&dir, 0, big());
        let before = Timestamp::now();
        w.write_record(Stream::Stdout, false, b"now").await.unwrap();
        let after = Timestamp::now();
        w.flush_partial().await.unwrap();

        let text = dir.text("0.log");
        let (old, last) =
            text.split_at(text.len() - "2026-11-22T10:00:00.123456789Z stdout F now\n".len());
        assert_eq!(
            old,
            "2026-11-22T10:00:00.123456789Z stdout F hello\n\
             2026-11-22T10:00:01.123456789Z stderr P part one\n\
             2026-01-02T03:04:05.000000000Z stdout F \n"
        );
        assert!(last.ends_with("Z stdout F now\n"), "{last:?}");
        let r = parse_record(last.trim_end_matches('\n').as_bytes()).unwrap();
        assert!(before <= r.timestamp && r.timestamp <= after);
        assert_eq!(r.content, b"now");
        assert_eq!(Stream::Stderr.as_str(), "stderr");
        assert_eq!(
            LogConfig::default(),
            LogConfig {
                max_bytes: 10 << 20,
                max_files: 5
            }
        );
    }

    #[test]
    fn parse_accepts_records_and_rejects_garbage() {
        assert_eq!(
            parse_record(b"2026-11-22T10:00:00.123456789Z stderr P a b ").unwrap(),
            Record {
                timestamp: t(0),
                stream: Stream::Stderr,
                partial: true,
                content: b"a b ",
            }
        );
        let bare = parse_record(b"2026-11-22T10:00:00.123456789Z stdout F").unwrap();
        assert_eq!((bare.partial, bare.content), (false, &b""[..]));
        let tagged = parse_record(b"2026-11-22T10:00:00.123456789Z stdout F:x y").unwrap();
        assert_eq!((tagged.partial, tagged.content), (false, &b"y"[..]));
        for bad in [
            &b""[..],
            b" ",
            b"garbage",
            b"2026-11-22T10:00:00Z",
            b"2026-11-22T10:00:00Z stdout",
            b"yesterday stdout F x",
            b"2026-11-22T10:00:00Z stdin F x",
            b"2026-11-22T10:00:00Z stdout X x",
            b"2026-11-22T10:00:00Z stdout  x",
            b"2026-11-22T10:00:00Z \xff F x",
            b"\xff\xfe stdout F x",
        ] {
            assert_eq!(
                parse_record(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn pump_splits_long_lines_and_reading_joins_them() {
        let dir = TempDir::new("split");
        let w = Arc::new(Mutex::new(writer(&dir, 0, big())));
        let long = letters(40 * 1024);
        let exact = letters(16 * 1024);
        let input = format!("{long}\n\n{exact}\ntail");
        // A small pipe makes the pump see the input in odd pieces.
        let (mut tx, rx) = tokio::io::duplex(777);
        let feed = async move {
            tx.write_all(input.as_bytes()).await.unwrap();
        };
        let (pumped, ()) = tokio::join!(pump(rx, Stream::Stdout, w.clone()), feed);
        pumped.unwrap();
        w.lock().await.flush().await.unwrap();

        let recs = records(&dir.text("0.log"));
        let shape: Vec<(bool, usize)> = recs.iter().map(|(_, p, c)| (*p, c.len())).collect();
        assert_eq!(
            shape,
            [
                (true, 16384),
                (true, 16384),
                (false, 8192),
                (false, 0),
                (false, 16384),
                (false, 4)
            ]
        );
        let joined: String = recs[..3].iter().map(|(_, _, c)| c.as_str()).collect();
        assert_eq!(joined, long);

        let expected = format!("{long}\n\n{exact}\ntail\n");
        assert_eq!(read(&dir, LogOptions::default()).await, expected);
        assert_eq!(read(&dir, tail(4)).await, expected);
        assert_eq!(read(&dir, tail(3)).await, format!("\n{exact}\ntail\n"));
    }

    #[tokio::test]
    async fn long_line_split_across_rotated_files_is_joined() {
        let dir = TempDir::new("span");
        let cfg = LogConfig {
            max_bytes: 1,
            max_files: 10,
        };
        let w = Arc::new(Mutex::new(writer(&dir, 0, cfg)));
        let long = letters(40 * 1024);
        let input = format!("first\n{long}\n");
        pump(input.as_bytes(), Stream::Stderr, w.clone())
            .await
            .unwrap();
        assert_eq!(dir.names(0), ["0.log.1", "0.log.2", "0.log.3", "0.log"]);
        assert_eq!(
            read(&dir, LogOptions::default()).await,
            format!("first\n{long}\n")
        );
        assert_eq!(read(&dir, tail(1)).await, format!("{long}\n"));
        assert_eq!(read(&dir, tail(2)).await, format!("first\n{long}\n"));
    }

    #[tokio::test]
    async fn rotation_keeps_max_files_and_reads_across_them() {
        let dir = TempDir::new("rotate");
        let cfg = LogConfig {
            max_bytes: 100,
            max_files: 3,
        };
        let mut w = writer(&dir, 0, cfg);
        // Each record is 48 bytes: three fit before a file reaches 100.
        for i in 0..20 {
            w.write_record_at(
                t(i),
                Stream::Stdout,
                false,
                format!("line-{i:02}").as_bytes(),
            )
            .unwrap();
        }
        assert_eq!(dir.names(0), ["0.log.5", "0.log.6", "0.log"]);
        assert_eq!(records(&dir.text("0.log.5"))[0].2, "line-12");
        let expected: String = (12..20).map(|i| format!("line-{i:02}\n")).collect();
        assert_eq!(read(&dir, LogOptions::default()).await, expected);
        assert_eq!(
            read(&dir, tail(4)).await,
            "line-16\nline-17\nline-18\nline-19\n"
        );

        // Another writer for the instance (a restarted shim) continues the numbering.
        drop(w);
        let mut w = writer(&dir, 0, cfg);
        for i in 20..22 {
            w.write_record_at(
                t(i),
                Stream::Stdout,
                false,
                format!("line-{i:02}").as_bytes(),
            )
            .unwrap();
        }
        assert_eq!(dir.names(0), ["0.log.6", "0.log.7", "0.log"]);

        // Other instances in the same directory are separate.
        let mut other = writer(&dir, 10, cfg);
        for i in 0..5 {
            other
                .write_record_at(t(i), Stream::Stdout, false, format!("other-{i}").as_bytes())
                .unwrap();
        }
        assert_eq!(dir.names(10), ["10.log.1", "10.log"]);
        assert_eq!(dir.names(0), ["0.log.6", "0.log.7", "0.log"]);
        let expected: String = (15..22).map(|i| format!("line-{i:02}\n")).collect();
        assert_eq!(read(&dir, LogOptions::default()).await, expected);
        assert!(instance_files(&dir.0, 3).is_empty());
    }

    #[tokio::test]
    async fn tail_counts_joined_lines_of_both_streams() {
        let dir = TempDir::new("tail");
        let mut w = writer(&dir, 0, big());
        let recs: [(Stream, bool, &str); 6] = [
            (Stream::Stdout, true, "a1"),
            (Stream::Stderr, false, "e1"),
            (Stream::Stdout, true, "a2"),
            (Stream::Stderr, false, "e2"),
            (Stream::Stdout, false, "a3"),
            (Stream::Stderr, false, "e3"),
        ];
        for (i, (stream, partial, content)) in recs.into_iter().enumerate() {
            w.write_record_at(t(i as i64), stream, partial, content.as_bytes())
                .unwrap();
        }
        let all = "e1\ne2\na1a2a3\ne3\n";
        assert_eq!(read(&dir, LogOptions::default()).await, all);
        assert_eq!(read(&dir, tail(0)).await, "");
        assert_eq!(read(&dir, tail(1)).await, "e3\n");
        assert_eq!(read(&dir, tail(2)).await, "a1a2a3\ne3\n");
        assert_eq!(read(&dir, tail(3)).await, "e2\na1a2a3\ne3\n");
        assert_eq!(read(&dir, tail(4)).await, all);
        assert_eq!(read(&dir, tail(100)).await, all);

        // A line still being written counts, and is shown as far as it got;
        // a torn record is not shown at all.
        w.write_record_at(t(7), Stream::Stdout, true, b"b1")
            .unwrap();
        dir.append_raw("0.log", b"2026-11-22T10:00:08.123456789Z stderr F to");
        assert_eq!(read(&dir, tail(2)).await, "e3\nb1\n");
        assert_eq!(read(&dir, tail(0)).await, "");
    }

    #[tokio::test]
    async fn tail_reads_backwards_across_blocks_and_files() {
        let dir = TempDir::new("tailbig");
        let cfg = LogConfig {
            max_bytes: 100 * 1024,
            max_files: 10,
        };
        let mut w = writer(&dir, 0, cfg);
        for i in 0..5000 {
            w.write_record_at(
                t(i),
                Stream::Stdout,
                false,
                format!("line-{i:04}").as_bytes(),
            )
            .unwrap();
        }
        assert_eq!(dir.names(0).len(), 3);
        assert_eq!(
            read(&dir, tail(3)).await,
            "line-4997\nline-4998\nline-4999\n"
        );
        let expected: String = (2500..5000).map(|i| format!("line-{i:04}\n")).collect();
        assert_eq!(read(&dir, tail(2500)).await, expected);
        let expected: String = (0..5000).map(|i| format!("line-{i:04}\n")).collect();
        assert_eq!(read(&dir, LogOptions::default()).await, expected);
    }

    #[test]
    fn tail_start_skips_what_is_not_needed() {
        let dir = TempDir::new("tailstart");
        let cfg = LogConfig {
            max_bytes: 100 * 1024,
            max_files: 10,
        };
        let mut w = writer(&dir, 0, cfg);
        // 50-byte records, 2048 per file.
        for i in 0..5000 {
            w.write_record_at(
                t(i),
                Stream::Stdout,
                false,
                format!("line-{i:04}").as_bytes(),
            )
            .unwrap();
        }
        let files: Vec<Arc<File>> = instance_files(&dir.0, 0)
            .iter()
            .map(|p| Arc::new(File::open(p).unwrap()))
            .collect();
        assert_eq!(tail_start(&files, 0).unwrap(), (2, 904 * 50));
        assert_eq!(tail_start(&files, 3).unwrap(), (2, 901 * 50));
        assert_eq!(tail_start(&files, 904).unwrap(), (2, 0));
        assert_eq!(tail_start(&files, 905).unwrap(), (1, 2047 * 50));
        assert_eq!(tail_start(&files, 5000).unwrap(), (0, 0));
    }

    #[tokio::test]
    async fn since_and_timestamps() {
        let dir = TempDir::new("since");
        let mut w = writer(&dir, 0, big());
        for i in 0..5 {
            w.write_record_at(t(i), Stream::Stdout, false, format!("l{i}").as_bytes())
                .unwrap();
        }
        // A joined line carries the timestamp of its first chunk.
        w.write_record_at(t(5), Stream::Stderr, true, b"j").unwrap();
        w.write_record_at(t(6), Stream::Stderr, false, b"oined")
            .unwrap();
        let since = |s| LogOptions {
            since: Some(t(s)),
            ..Default::default()
        };
        assert_eq!(read(&dir, since(3)).await, "l3\nl4\njoined\n");
        assert_eq!(read(&dir, since(6)).await, "");
        let opts = LogOptions {
            timestamps: true,
            ..since(4)
        };
        assert_eq!(
            read(&dir, opts).await,
            "2026-11-22T10:00:04.123456789Z l4\n2026-11-22T10:00:05.123456789Z joined\n"
        );
        let opts = LogOptions {
            tail_lines: Some(3),
            ..since(4)
        };
        assert_eq!(read(&dir, opts).await, "l4\njoined\n");
    }

    #[tokio::test]
    async fn limit_bytes_cuts_output() {
        let dir = TempDir::new("limit");
        let mut w = writer(&dir, 0, big());
        w.write_record_at(t(0), Stream::Stdout, false, b"hello")
            .unwrap();
        w.write_record_at(t(1), Stream::Stdout, false, b"world")
            .unwrap();
        let limit = |n| LogOptions {
            limit_bytes: Some(n),
            ..Default::default()
        };
        assert_eq!(read(&dir, limit(8)).await, "hello\nwo");
        assert_eq!(read(&dir, limit(6)).await, "hello\n");
        assert_eq!(read(&dir, limit(0)).await, "");
        assert_eq!(read(&dir, limit(100)).await, "hello\nworld\n");
        let opts = LogOptions {
            timestamps: true,
            ..limit(35)
        };
        assert_eq!(
            read(&dir, opts).await,
            "2026-11-22T10:00:00.123456789Z hell"
        );

        // The limit ends a follow even though the container runs on.
        let opts = LogOptions {
            follow: true,
            ..limit(9)
        };
        let mut out = Vec::new();
        let n = read_logs(&dir.0, 0, &opts, &mut out, || false)
            .await
            .unwrap();
        assert_eq!((n, out.as_slice()), (9, &b"hello\nwor"[..]));
    }

    #[tokio::test]
    async fn a_stream_filter_keeps_one_stream_and_its_partial_lines() {
        let dir = TempDir::new("stream");
        let mut w = writer(&dir, 0, LogConfig::default());
        w.write_record_at(t(0), Stream::Stdout, true, b"out-")
            .unwrap();
        w.write_record_at(t(1), Stream::Stderr, false, b"err-1")
            .unwrap();
        w.write_record_at(t(2), Stream::Stdout, false, b"1")
            .unwrap();
        w.write_record_at(t(3), Stream::Stderr, false, b"err-2")
            .unwrap();
        let only = |stream| LogOptions {
            stream: Some(stream),
            ..Default::default()
        };
        assert_eq!(read(&dir, only(Stream::Stdout)).await, "out-1\n");
        assert_eq!(read(&dir, only(Stream::Stderr)).await, "err-1\nerr-2\n");
        assert_eq!(
            read(&dir, LogOptions::default()).await,
            "err-1\nout-1\nerr-2\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn follow_reads_new_lines_across_rotations_until_finished() {
        let dir = TempDir::new("follow");
        let cfg = LogConfig {
            max_bytes: 100,
            max_files: 20,
        };
        let mut w = writer(&dir, 0, cfg);
        w.write_record_at(t(0), Stream::Stdout, false, b"before")
            .unwrap();
        let done = AtomicBool::new(false);
        let opts = LogOptions {
            follow: true,
            ..Default::default()
        };
        let mut out = Vec::new();
        let reader = read_logs(&dir.0, 0, &opts, &mut out, || done.load(Ordering::SeqCst));
        let write = async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            for i in 0..10 {
                w.write_record_at(t(i), Stream::Stdout, false, format!("after-{i}").as_bytes())
                    .unwrap();
                if i % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            }
            // A record arriving in two writes is only output once complete.
            dir.append_raw("0.log", b"2026-11-22T10:00:20.123456789Z stderr F to");
            tokio::time::sleep(Duration::from_millis(350)).await;
            dir.append_raw("0.log", b"rn\n");
            w.write_record_at(t(21), Stream::Stdout, false, b"last")
                .unwrap();
            done.store(true, Ordering::SeqCst);
        };
        let (n, ()) = tokio::join!(reader, write);
        let n = n.unwrap();
        let expected: String = std::iter::once("before".to_string())
            .chain((0..10).map(|i| format!("after-{i}")))
            .chain(["torn".to_string(), "last".to_string()])
            .map(|l| l + "\n")
            .collect();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(n, expected.len() as u64);
        assert!(dir.names(0).len() > 3, "{:?}", dir.names(0));
    }

    #[tokio::test(start_paused = true)]
    async fn follow_waits_for_a_file_to_appear() {
        let dir = TempDir::new("appear");
        let done = AtomicBool::new(false);
        let opts = LogOptions {
            follow: true,
            tail_lines: Some(0),
            ..Default::default()
        };
        let mut out = Vec::new();
        let reader = read_logs(&dir.0, 0, &opts, &mut out, || done.load(Ordering::SeqCst));
        let write = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut w = writer(&dir, 0, big());
            w.write_record_at(t(0), Stream::Stdout, false, b"hi")
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            done.store(true, Ordering::SeqCst);
        };
        let (n, ()) = tokio::join!(reader, write);
        assert_eq!(n.unwrap(), 3);
        assert_eq!(out, b"hi\n");

        // Nothing there and nothing coming: done at once.
        let gone = dir.0.join("missing");
        let mut out = Vec::new();
        let n = read_logs(&gone, 0, &opts, &mut out, || true).await.unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn malformed_lines_are_skipped() {
        let dir = TempDir::new("malformed");
        let oversized = "x".repeat(100 * 1024);
        let content = format!(
            "{oversized}\n\
             2026-11-22T10:00:00.123456789Z stdout F v1\n\
             garbage\n\
             \n\
             2026-11-22T10:00:01Z stdin F nope\n\
             {oversized}\n\
             2026-11-22T10:00:02.123456789Z stderr F v2\n\
             2026-11-22T10:00:03.123456789Z stdout F tor"
        );
        dir.append_raw("0.log", content.as_bytes());
        assert_eq!(read(&dir, LogOptions::default()).await, "v1\nv2\n");
        assert_eq!(read(&dir, tail(1)).await, "v2\n");
        assert_eq!(read(&dir, tail(5)).await, "v1\nv2\n");
    }

    #[tokio::test]
    async fn pumps_interleave_whole_records() {
        let dir = TempDir::new("pump");
        let w = Arc::new(Mutex::new(writer(&dir, 0, big())));
        let (mut out_tx, out_rx) = tokio::io::duplex(64);
        let (mut err_tx, err_rx) = tokio::io::duplex(64);
        let out_pump = tokio::spawn(pump(out_rx, Stream::Stdout, w.clone()));
        let err_pump = tokio::spawn(pump(err_rx, Stream::Stderr, w.clone()));
        let long = letters(20 * 1024);
        let mut out_lines = Vec::new();
        let mut err_lines = Vec::new();
        for i in 0..100 {
            let out_line = if i == 50 {
                long.clone()
            } else {
                format!("out-{i}")
            };
            out_tx.write_all(out_line.as_bytes()).await.unwrap();
            err_tx
                .write_all(format!("err-{i}").as_bytes())
                .await
                .unwrap();
            out_tx.write_all(b"\n").await.unwrap();
            err_tx.write_all(b"\n").await.unwrap();
            out_lines.push(out_line);
            err_lines.push(format!("err-{i}"));
        }
        drop((out_tx, err_tx));
        out_pump.await.unwrap().unwrap();
        err_pump.await.unwrap().unwrap();
        w.lock().await.flush().await.unwrap();

        let recs = records(&dir.text("0.log"));
        let streams: Vec<Stream> = recs.iter().map(|r| r.0).collect();
        assert!(
            streams.windows(2).any(|p| p[0] != p[1]),
            "streams did not interleave"
        );
        let per_stream = |s: Stream| -> Vec<String> {
            let mut lines = Vec::new();
            let mut line = String::new();
            for (stream, partial, content) in &recs {
                if *stream == s {
                    line.push_str(content);
                    if !partial {
                        lines.push(std::mem::take(&mut line));
                    }
                }
            }
            lines
        };
        assert_eq!(per_stream(Stream::Stdout), out_lines);
        assert_eq!(per_stream(Stream::Stderr), err_lines);

        let output = read(&dir, LogOptions::default()).await;
        let read_lines: Vec<&str> = output.lines().collect();
        let of = |prefix: &str| -> Vec<String> {
            read_lines
                .iter()
                .filter(|l| l.starts_with(prefix))
                .map(|l| l.to_string())
                .collect()
        };
        assert_eq!(read_lines.len(), 200);
        assert_eq!(of("err-"), err_lines);
        let mut without_long = out_lines.clone();
        without_long.remove(50);
        assert_eq!(of("out-"), without_long);
        assert!(read_lines.contains(&long.as_str()));
    }
}
