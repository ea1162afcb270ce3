//! SPDY/3 header blocks: the [`Headers`] map and the per-connection zlib contexts.
//!
//! This module owns (1) the uncompressed block layout — `u32 count`, then per entry
//! `u32 name_len, name, u32 value_len, value`, where one name carries several values joined by
//! NUL — and (2) compression. SPDY/3 compresses every header block of a connection with ONE zlib
//! stream per direction, primed with [`DICTIONARY`], each block ending in a sync flush; the
//! receiver must inflate the blocks in wire order on its one context. A [`HeaderDecoder`] or
//! [`HeaderEncoder`] is therefore connection state: one each per connection, never per stream.
//!
//! The decoder is written for hostile input: output is capped at a configured size, every count
//! and length is checked against the bytes actually present before anything is allocated, and
//! any failure is an error value, never a panic. A zlib failure leaves the context unusable, so
//! callers treat any [`HeaderError`] as fatal for the connection.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1).
///
/// 1423 bytes; Adler-32 `0xe3c6a7c2` (the DICTID a peer's zlib header names). Checked byte for
/// byte against the draft text and against moby/spdystream `spdy/dictionary.go` (both give
/// SHA-256 `51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02`).
pub const DICTIONARY: &[u8; 1423] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\
    \x00\x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\
    \x00\x00\x00\x0eaccept-charset\x00\x00\x00\x0faccept-encoding\
    \x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03age\
    \x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcache-control\
    \x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10content-encoding\
    \x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-length\
    \x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\
    \x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\
    \x00\x00\x00\x06expect\x00\x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\
    \x00\x00\x00\x08if-match\x00\x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\
    \x00\x00\x00\x08if-range\x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\
    \x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\
    \x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authorization\
    \x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-after\
    \x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\
    \x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent\
    \x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning\
    \x00\x00\x00\x10www-authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get\
    \x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00\x00\x07version\
    \x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\
    \x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin\
    1001012012022052063003023033043053063074024054064074084094104114124134\
    14415416417502504505203 Non-Authoritative Information204 No Content301\
    \x20Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not \
    Found500 Internal Server Error501 Not Implemented503 Service Unavailab\
    leJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, \
    Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,imag\
    e/gif,application/xml,application/xhtml+xml,text/plain,text/javascript\
    ,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1\
    ,utf-,*,enq=0.";

/// Adler-32 of [`DICTIONARY`]: the dictionary id a conforming peer's zlib stream header names.
pub const DICTIONARY_ADLER32: u32 = 0xe3c6_a7c2;

/// An ordered list of header entries. Names are stored lowercase (SPDY/3 requires it on the
/// wire); one name may carry several values, which travel NUL-joined in a single wire entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to the single value `value`, replacing any values it had. The name is
    /// lowercased; the position of the first existing entry is kept.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = lowercase(name.into());
        let value = value.into();
        match self.entries.iter().position(|(n, _)| *n == name) {
            Some(first) => {
                self.entries[first].1 = value;
                let mut index = 0;
                self.entries.retain(|(n, _)| {
                    let keep = index <= first || *n != name;
                    index += 1;
                    keep
                });
            }
            None => self.entries.push((name, value)),
        }
    }

    /// Appends a value for `name` (lowercased), keeping existing values.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries.push((lowercase(name.into()), value.into()));
    }

    /// Builder form of [`Headers::push`].
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.push(name, value);
        self
    }

    /// First value of `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of `name` (ASCII case-insensitive), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Removes every value of `name`; returns whether any existed.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        before != self.entries.len()
    }

    /// `(name, value)` pairs in order; a multi-valued name appears once per value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of `(name, value)` pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks that every entry can be sent: non-empty names without NUL that are not
    /// connection-specific (`connection`, `host`, `keep-alive`, `proxy-connection`,
    /// `transfer-encoding`), values without NUL (the wire separator between values of one name). [`HeaderEncoder::encode`] skips
    /// entries that fail this check, so callers that can report errors check first.
    pub fn validate(&self) -> Result<(), HeaderError> {
        for (name, value) in &self.entries {
            if !name_is_valid(name) {
                return Err(HeaderError::InvalidName);
            }
            if value.contains('\0') || u32::try_from(value.len()).is_err() {
                return Err(HeaderError::InvalidValue(name.clone()));
            }
        }
        Ok(())
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (n, v) in iter {
            headers.push(n, v);
        }
        headers
    }
}

fn lowercase(mut name: String) -> String {
    name.make_ascii_lowercase();
    name
}

fn name_is_valid(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\0')
        && u32::try_from(name.len()).is_ok()
        && !CONNECTION_HEADERS.contains(&name)
}

/// Hop-by-hop HTTP/1.1 headers that SPDY/3 forbids in header blocks. moby/spdystream rejects a
/// SYN_STREAM/SYN_REPLY carrying one as a framing error, which ends the whole session, so they
/// are never sent.
const CONNECTION_HEADERS: [&str; 5] = [
    "connection",
    "host",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
];

/// A header block could not be encoded or decoded. On the receive side every variant is a
/// session error (the shared zlib context is out of step or the peer is broken).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The decompressed block exceeds the configured limit.
    #[error("decompressed header block exceeds {max} bytes")]
    TooLarge {
        /// Configured limit.
        max: usize,
    },
    /// zlib reported an error (corrupt stream, or internal failure when compressing).
    #[error("header block compression error: {0}")]
    Compression(String),
    /// The peer's zlib stream asks for a dictionary other than the SPDY/3 one.
    #[error("header block needs an unknown zlib dictionary (adler32 {0:#010x})")]
    WrongDictionary(u32),
    /// Counts, lengths or framing of the decompressed block are inconsistent.
    #[error("malformed header block: {0}")]
    Malformed(&'static str),
    /// A header name contains an uppercase ASCII letter (forbidden by SPDY/3).
    #[error("header name {0:?} is not lowercase")]
    UppercaseName(String),
    /// The same name appears in two entries (SPDY/3 requires NUL-joined values instead).
    #[error("duplicate header name {0:?}")]
    DuplicateName(String),
    /// An empty name, one containing NUL, or a connection-specific name SPDY forbids.
    #[error("invalid header name")]
    InvalidName,
    /// A value contains NUL (the separator between values) or is too long.
    #[error("invalid value for header {0:?}")]
    InvalidValue(String),
    /// A name or value is not UTF-8.
    #[error("header name or value is not UTF-8")]
    NotUtf8,
}

/// Size of the stack buffer the decoder inflates into per zlib call; with the per-call size
/// check this bounds how far a decompression bomb can overshoot the limit.
const INFLATE_CHUNK: usize = 4096;

/// Receive-side header block decompressor: one per connection, fed every block in wire order.
pub struct HeaderDecoder {
    z: Decompress,
    max_len: usize,
    raw: Vec<u8>,
}

impl std::fmt::Debug for HeaderDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDecoder")
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl HeaderDecoder {
    /// A decoder whose blocks may decompress to at most `max_decompressed_len` bytes (which
    /// also bounds the expanded size of the resulting [`Headers`]).
    pub fn new(max_decompressed_len: usize) -> Self {
        Self {
            z: Decompress::new(true),
            max_len: max_decompressed_len,
            raw: Vec::new(),
        }
    }

    /// Inflates one compressed block on the shared context and parses it.
    ///
    /// A zero-length block is accepted as "no headers" without touching the context (some peers
    /// omit the block in SYN_REPLY). After an error the context is unusable: close the session.
    pub fn decode(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        if block.is_empty() {
            return Ok(Headers::new());
        }
        self.inflate(block)?;
        let headers = parse_block(&self.raw, self.max_len);
        // Do not keep a large buffer alive after an unusually big block.
        if self.raw.capacity() > 4 * INFLATE_CHUNK {
            self.raw = Vec::new();
        } else {
            self.raw.clear();
        }
        headers
    }

    fn inflate(&mut self, block: &[u8]) -> Result<(), HeaderError> {
        self.raw.clear();
        let mut input = block;
        let mut chunk = [0u8; INFLATE_CHUNK];
        loop {
            let (in_before, out_before) = (self.z.total_in(), self.z.total_out());
            let result = self.z.decompress(input, &mut chunk, FlushDecompress::Sync);
            let consumed = counter_delta(self.z.total_in(), in_before, input.len())?;
            let produced = counter_delta(self.z.total_out(), out_before, chunk.len())?;
            input = &input[consumed..];
            if self.raw.len() + produced > self.max_len {
                return Err(HeaderError::TooLarge { max: self.max_len });
            }
            self.raw.extend_from_slice(&chunk[..produced]);
            match result {
                Ok(Status::StreamEnd) => {
                    // The peer finished its zlib stream: legal only as the very last block.
                    if !input.is_empty() {
                        return Err(HeaderError::Malformed(
                            "data after the end of the zlib stream",
                        ));
                    }
                    return Ok(());
                }
                Ok(Status::Ok | Status::BufError) => {}
                Err(err) => match err.needs_dictionary() {
                    Some(DICTIONARY_ADLER32) => {
                        self.z
                            .set_dictionary(DICTIONARY)
                            .map_err(|e| HeaderError::Compression(e.to_string()))?;
                        continue;
                    }
                    Some(other) => return Err(HeaderError::WrongDictionary(other)),
                    None => return Err(HeaderError::Compression(err.to_string())),
                },
            }
            if input.is_empty() && produced < chunk.len() {
                // All input consumed and zlib had room to spare: the block is fully inflated.
                return Ok(());
            }
            if consumed == 0 && produced == 0 {
                return Err(HeaderError::Malformed("zlib made no progress on the block"));
            }
        }
    }
}

/// Progress of a zlib counter during one call, checked against the buffer it refers to so that
/// slicing with it can never panic.
fn counter_delta(after: u64, before: u64, limit: usize) -> Result<usize, HeaderError> {
    after
        .checked_sub(before)
        .and_then(|d| usize::try_from(d).ok())
        .filter(|d| *d <= limit)
        .ok_or_else(|| HeaderError::Compression("zlib counters went backwards".into()))
}

fn read_u32(buf: &mut &[u8]) -> Result<u32, HeaderError> {
    match buf.split_first_chunk::<4>() {
        Some((word, rest)) => {
            *buf = rest;
            Ok(u32::from_be_bytes(*word))
        }
        None => Err(HeaderError::Malformed("truncated length field")),
    }
}

fn read_str<'a>(buf: &mut &'a [u8]) -> Result<&'a str, HeaderError> {
    let len = read_u32(buf)? as usize;
    if len > buf.len() {
        return Err(HeaderError::Malformed(
            "length runs past the end of the block",
        ));
    }
    let (bytes, rest) = buf.split_at(len);
    *buf = rest;
    std::str::from_utf8(bytes).map_err(|_| HeaderError::NotUtf8)
}

/// Parses a decompressed block. `budget` caps the expanded size (names are repeated once per
/// NUL-separated value, so a small block could otherwise expand quadratically).
fn parse_block(raw: &[u8], budget: usize) -> Result<Headers, HeaderError> {
    let mut buf = raw;
    let count = read_u32(&mut buf)? as usize;
    // Every entry needs at least its two length fields: reject impossible counts before
    // allocating anything sized by them.
    if count > buf.len() / 8 {
        return Err(HeaderError::Malformed("entry count exceeds block size"));
    }
    let mut entries: Vec<(String, String)> = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut spent = 0usize;
    for _ in 0..count {
        let name = read_str(&mut buf)?;
        if name.is_empty() || name.contains('\0') {
            return Err(HeaderError::InvalidName);
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(HeaderError::UppercaseName(name.to_owned()));
        }
        if !seen.insert(name) {
            return Err(HeaderError::DuplicateName(name.to_owned()));
        }
        let value = read_str(&mut buf)?;
        for part in value.split('\0') {
            spent = spent.saturating_add(name.len() + part.len() + 8);
            if spent > budget {
                return Err(HeaderError::TooLarge { max: budget });
            }
            entries.push((name.to_owned(), part.to_owned()));
        }
    }
    if !buf.is_empty() {
        return Err(HeaderError::Malformed(
            "trailing bytes after the last entry",
        ));
    }
    Ok(Headers { entries })
}

/// Send-side header block compressor: one per connection; blocks must be put on the wire in the
/// order they were encoded.
pub struct HeaderEncoder {
    z: Compress,
    primed: bool,
    raw: Vec<u8>,
}

impl std::fmt::Debug for HeaderEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderEncoder").finish_non_exhaustive()
    }
}

impl Default for HeaderEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderEncoder {
    /// A fresh compression context (primed with [`DICTIONARY`] on first use).
    pub fn new() -> Self {
        Self {
            z: Compress::new(Compression::default(), true),
            primed: false,
            raw: Vec::new(),
        }
    }

    /// Serializes and compresses `headers`, ending with a sync flush so the peer can inflate the
    /// block on its own. Values of one name are NUL-joined into one entry. Entries that
    /// [`Headers::validate`] rejects are skipped (logged), so a bad header set degrades to fewer
    /// headers rather than a desynchronised session. Errors only if zlib fails, after which this
    /// context is unusable.
    pub fn encode(&mut self, headers: &Headers) -> Result<Bytes, HeaderError> {
        self.serialize(headers);
        if !self.primed {
            self.z
                .set_dictionary(DICTIONARY)
                .map_err(|e| HeaderError::Compression(e.to_string()))?;
            self.primed = true;
        }
        let mut out = Vec::with_capacity(self.raw.len() / 2 + 64);
        let mut input = &self.raw[..];
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.len().max(256));
            }
            let (in_before, out_before) = (self.z.total_in(), self.z.total_out());
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| HeaderError::Compression(e.to_string()))?;
            let consumed = counter_delta(self.z.total_in(), in_before, input.len())?;
            let produced = self.z.total_out().saturating_sub(out_before);
            input = &input[consumed..];
            // Sync flush is complete once all input is in and zlib stopped with room to spare.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if consumed == 0 && produced == 0 && out.len() < out.capacity() {
                return Err(HeaderError::Compression("zlib made no progress".into()));
            }
        }
        Ok(Bytes::from(out))
    }

    fn serialize(&mut self, headers: &Headers) {
        let raw = &mut self.raw;
        raw.clear();
        raw.extend_from_slice(&[0; 4]); // entry count, patched below
        let mut count: u32 = 0;
        let entries = &headers.entries;
        for (i, (name, _)) in entries.iter().enumerate() {
            // Each distinct name once, at its first position; later duplicates were folded in.
            if entries[..i].iter().any(|(n, _)| n == name) {
                continue;
            }
            if !name_is_valid(name) {
                tracing::warn!(name = %name.escape_debug(), "skipping header with invalid name");
                continue;
            }
            let values: Vec<&str> = entries[i..]
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .filter(|v| {
                    let ok = !v.contains('\0');
                    if !ok {
                        tracing::warn!(%name, "skipping header value containing NUL");
                    }
                    ok
                })
                .collect();
            if values.is_empty() {
                continue;
            }
            let joined = values.join("\0");
            let (Ok(name_len), Ok(value_len)) =
                (u32::try_from(name.len()), u32::try_from(joined.len()))
            else {
                tracing::warn!(%name, "skipping oversized header");
                continue;
            };
            raw.extend_from_slice(&name_len.to_be_bytes());
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(&value_len.to_be_bytes());
            raw.extend_from_slice(joined.as_bytes());
            count += 1;
        }
        raw[..4].copy_from_slice(&count.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in data {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        b << 16 | a
    }

    fn raw_block(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut raw = (entries.len() as u32).to_be_bytes().to_vec();
        for (n, v) in entries {
            raw.extend_from_slice(&(n.len() as u32).to_be_bytes());
            raw.extend_from_slice(n);
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v);
        }
        raw
    }

    /// An independent compressor: plain flate2 with the dictionary, sync-flushed per block.
    struct RefCompressor(Compress);
    impl RefCompressor {
        fn new() -> Self {
            let mut z = Compress::new(Compression::best(), true);
            assert_eq!(z.set_dictionary(DICTIONARY).unwrap(), DICTIONARY_ADLER32);
            Self(z)
        }
        fn block(&mut self, raw: &[u8]) -> Vec<u8> {
            let mut out = Vec::with_capacity(raw.len() + 1024);
            self.0
                .compress_vec(raw, &mut out, FlushCompress::Sync)
                .unwrap();
            assert!(out.len() < out.capacity(), "test buffer too small");
            out
        }
    }

    #[test]
    fn dictionary_matches_the_spdy3_draft() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(adler32(DICTIONARY), DICTIONARY_ADLER32);
        assert!(DICTIONARY.starts_with(b"\x00\x00\x00\x07options\x00\x00\x00\x04head"));
        assert!(DICTIONARY.ends_with(b"charset=utf-8charset=iso-8859-1,utf-,*,enq=0."));
    }

    /// Blocks produced by CPython's zlib (a different zlib build) with the dictionary taken
    /// from moby/spdystream's Go source, three blocks on one stream, each sync-flushed.
    #[test]
    fn decodes_blocks_from_an_independent_zlib() {
        let b1: &[u8] = b"\x78\xf9\xe3\xc6\xa7\xc2\x02\x25\x3a\x70\x3a\x2b\x29\x4a\x4d\xcc\x85\x16\x25\xac\xa9\xa0\x80\x86\x14\xcb\x45\xe0\x1c\x60\x61\x60\x61\x00\xa4\x39\x8b\x20\xd1\x98\x09\x4a\xde\x8c\x06\x00\x00\x00\x00\xff\xff";
        let b2: &[u8] = b"\xc2\xaa\x19\x54\x0e\x25\x12\xd6\x0b\x00\x00\x00\xff\xff";
        let b3: &[u8] = b"\x02\x65\x4b\x50\x46\xa8\xd0\xcd\x2d\xcd\x29\xc9\x04\x97\xc3\x0c\x49\x0c\xc9\x58\x4a\x36\x2e\x44\x90\x00\x00\x00\x00\xff\xff";
        let mut dec = HeaderDecoder::new(64 * 1024);
        let h1 = dec.decode(b1).unwrap();
        assert_eq!(
            h1.iter().collect::<Vec<_>>(),
            [
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0")
            ]
        );
        let h2 = dec.decode(b2).unwrap();
        assert_eq!(h2.get("streamType"), Some("data"));
        assert_eq!(h2.get("port"), Some("8080"));
        let h3 = dec.decode(b3).unwrap();
        assert_eq!(h3.get_all("x-multi").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(h3.get("content-type"), Some("text/plain"));
        // The 14-byte second block only makes sense on the first block's context.
        assert!(HeaderDecoder::new(64 * 1024).decode(b2).is_err());
    }

    #[test]
    fn decodes_blocks_from_a_reference_flate2_compressor() {
        let mut reference = RefCompressor::new();
        let mut dec = HeaderDecoder::new(64 * 1024);
        for i in 0..5 {
            let value = format!("v4.channel.k8s.io-{i}");
            let raw = raw_block(&[
                (b"streamtype", b"stdout"),
                (b"x-stream-protocol-version", value.as_bytes()),
            ]);
            let block = reference.block(&raw);
            let headers = dec.decode(&block).unwrap();
            assert_eq!(
                headers.get("x-stream-protocol-version"),
                Some(value.as_str())
            );
            assert_eq!(headers.get("streamtype"), Some("stdout"));
        }
    }

    #[test]
    fn encoder_output_inflates_with_a_reference_decompressor() {
        let mut enc = HeaderEncoder::new();
        let mut z = Decompress::new(true);
        let mut dict_set = false;
        for i in 0..3 {
            let headers = Headers::new()
                .with("streamType", "error")
                .with("requestid", i.to_string());
            let block = enc.encode(&headers).unwrap();
            let mut out = Vec::with_capacity(4096);
            let mut input = &block[..];
            loop {
                let before = z.total_in();
                match z.decompress_vec(input, &mut out, FlushDecompress::Sync) {
                    Ok(_) => {
                        input = &input[(z.total_in() - before) as usize..];
                        if input.is_empty() {
                            break;
                        }
                    }
                    Err(e) => {
                        assert_eq!(e.needs_dictionary(), Some(DICTIONARY_ADLER32));
                        assert!(!dict_set);
                        input = &input[(z.total_in() - before) as usize..];
                        z.set_dictionary(DICTIONARY).unwrap();
                        dict_set = true;
                    }
                }
            }
            let id = i.to_string();
            assert_eq!(
                out,
                raw_block(&[(b"streamtype", b"error"), (b"requestid", id.as_bytes())])
            );
        }
    }

    #[test]
    fn one_context_across_many_blocks() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new(64 * 1024);
        let headers = Headers::new()
            .with("streamtype", "stdin")
            .with("x-kubernetes-pf-requestid", "42")
            .with(
                "user-agent",
                "kubectl/v1.20.2 (linux/amd64) kubernetes/faecb19",
            );
        let first = enc.encode(&headers).unwrap();
        assert_eq!(dec.decode(&first).unwrap(), headers);
        let mut later = Vec::new();
        for _ in 0..10 {
            let block = enc.encode(&headers).unwrap();
            assert_eq!(dec.decode(&block).unwrap(), headers);
            later.push(block);
        }
        // Repeats compress to back-references into the shared window: far smaller than the first.
        assert!(
            later[0].len() * 3 < first.len(),
            "{} vs {}",
            later[0].len(),
            first.len()
        );
        // A fresh decoder cannot read a later block: the context really is shared.
        assert!(HeaderDecoder::new(64 * 1024).decode(&later[0]).is_err());
    }

    #[test]
    fn multi_values_round_trip_nul_joined() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new(1024);
        let headers = Headers::new().with("a", "1").with("B", "2").with("a", "3");
        let decoded = dec.decode(&enc.encode(&headers).unwrap()).unwrap();
        assert_eq!(decoded.get_all("a").collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(decoded.get("b"), Some("2"));
        assert_eq!(
            decoded.iter().collect::<Vec<_>>(),
            [("a", "1"), ("a", "3"), ("b", "2")]
        );
    }

    #[test]
    fn encoder_skips_invalid_entries() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new(1024);
        let headers = Headers::new()
            .with("", "x")
            .with("ok", "1")
            .with("bad", "a\0b")
            .with("n\0", "v");
        assert!(headers.validate().is_err());
        let decoded = dec.decode(&enc.encode(&headers).unwrap()).unwrap();
        assert_eq!(decoded.iter().collect::<Vec<_>>(), [("ok", "1")]);
    }

    #[test]
    fn large_blocks_round_trip() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new(1 << 20);
        let big: String = (0..200_000)
            .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
            .collect();
        for _ in 0..3 {
            let headers = Headers::new().with("big", big.clone()).with("small", "1");
            assert_eq!(dec.decode(&enc.encode(&headers).unwrap()).unwrap(), headers);
        }
    }

    #[test]
    fn headers_map_semantics() {
        let mut h = Headers::new();
        h.push("Accept", "a");
        h.push("x", "1");
        h.push("accept", "b");
        assert_eq!(h.get("ACCEPT"), Some("a"));
        assert_eq!(h.len(), 3);
        h.insert("Accept", "c");
        assert_eq!(h.iter().collect::<Vec<_>>(), [("accept", "c"), ("x", "1")]);
        assert!(h.remove("X"));
        assert!(!h.remove("x"));
        assert_eq!(h.len(), 1);
        let collected: Headers = [("K", "v")].into_iter().collect();
        assert_eq!(collected.get("k"), Some("v"));
        assert!(Headers::new().validate().is_ok());
    }

    fn compress_raw(raw: &[u8]) -> Vec<u8> {
        RefCompressor::new().block(raw)
    }

    #[test]
    fn rejects_malformed_blocks() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (raw_block(&[(b"Upper", b"x")]), "uppercase"),
            (raw_block(&[(b"a", b"x"), (b"a", b"y")]), "duplicate"),
            (raw_block(&[(b"", b"x")]), "empty name"),
            (raw_block(&[(b"a", b"\xff")]), "utf8"),
            (b"\xff\xff\xff\xff".to_vec(), "huge count"),
            (
                b"\x00\x00\x00\x01\xff\xff\xff\xff\x00\x00\x00\x00".to_vec(),
                "huge length",
            ),
            (
                b"\x00\x00\x00\x01\x00\x00\x00\x01a\x00\x00".to_vec(),
                "truncated",
            ),
            (
                [raw_block(&[(b"a", b"x")]), b"zz".to_vec()].concat(),
                "trailing",
            ),
            (b"\x00\x00".to_vec(), "short count"),
        ];
        for (raw, what) in cases {
            let mut dec = HeaderDecoder::new(1024);
            assert!(dec.decode(&compress_raw(&raw)).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn rejects_garbage_and_foreign_dictionaries() {
        let mut dec = HeaderDecoder::new(1024);
        assert!(matches!(
            dec.decode(b"not zlib at all"),
            Err(HeaderError::Compression(_))
        ));

        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(b"some other dictionary").unwrap();
        let mut out = Vec::with_capacity(256);
        z.compress_vec(&raw_block(&[(b"a", b"b")]), &mut out, FlushCompress::Sync)
            .unwrap();
        let mut dec = HeaderDecoder::new(1024);
        assert!(matches!(
            dec.decode(&out),
            Err(HeaderError::WrongDictionary(_))
        ));
    }

    #[test]
    fn decompression_bomb_is_capped() {
        // 8 MiB of zeros compress to a few KiB; the decoder must stop at its limit.
        let raw = vec![0u8; 8 << 20];
        let block = compress_raw(&raw);
        assert!(block.len() < 64 * 1024);
        let mut dec = HeaderDecoder::new(64 * 1024);
        assert_eq!(
            dec.decode(&block),
            Err(HeaderError::TooLarge { max: 64 * 1024 })
        );
    }

    #[test]
    fn nul_expansion_is_capped() {
        // A long name with a value made of NULs would expand to name.len() * nuls bytes.
        let name = vec![b'n'; 2000];
        let value = vec![0u8; 2000];
        let raw = raw_block(&[(&name, &value)]);
        let mut dec = HeaderDecoder::new(8 * 1024);
        assert_eq!(
            dec.decode(&compress_raw(&raw)),
            Err(HeaderError::TooLarge { max: 8 * 1024 })
        );
    }

    #[test]
    fn empty_block_means_no_headers() {
        let mut dec = HeaderDecoder::new(16);
        assert_eq!(dec.decode(b""), Ok(Headers::new()));
    }
}
