//! SPDY/3.1 wire frames: the [`Frame`] model plus [`decode`] / [`encode`].
//!
//! This module owns the byte layout only. Header blocks stay compressed here ([`Bytes`]); the
//! shared zlib contexts live in [`crate::headers`] because they are connection state, not frame
//! state. Everything is big-endian. Two frame shapes share an 8-byte header:
//!
//! ```text
//! control: |1| version(15) = 3 | type(16) | flags(8) | length(24) | payload
//! data:    |0| stream-id(31)              | flags(8) | length(24) | payload
//! ```
//!
//! [`decode`] checks the length against the caller's limit *before* waiting for the payload, so a
//! peer cannot make the reader buffer more than `max_frame_len` bytes per frame, and it validates
//! every fixed-size control frame's length so that no field is read past the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The only protocol version this crate speaks.
pub const VERSION: u16 = 3;
/// Size of the common frame header.
pub const HEADER_LEN: usize = 8;
/// Largest payload the 24-bit length field can describe.
pub const MAX_PAYLOAD_LEN: usize = 0x00FF_FFFF;
/// Stream ids are 31 bits; the top bit is reserved (and is the control bit in data frames).
pub const MAX_STREAM_ID: u32 = 0x7FFF_FFFF;

/// FLAG_FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_SETTINGS_CLEAR_SETTINGS on SETTINGS.
pub const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// Control frame type codes (SPDY/3 §2.6).
pub mod kind {
    /// SYN_STREAM
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS
    pub const SETTINGS: u16 = 4;
    /// PING
    pub const PING: u16 = 6;
    /// GOAWAY
    pub const GOAWAY: u16 = 7;
    /// HEADERS
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE
    pub const WINDOW_UPDATE: u16 = 9;
}

/// One SETTINGS entry: 8-bit flags, 24-bit id, 32-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// FLAG_SETTINGS_PERSIST_VALUE (1) / FLAG_SETTINGS_PERSISTED (2).
    pub flags: u8,
    /// Setting id (24 bits; higher bits are dropped on encode).
    pub id: u32,
    /// Setting value.
    pub value: u32,
}

/// A decoded SPDY/3.1 frame. Header blocks are kept compressed: they must be inflated in wire
/// order on the connection's single receive context (see [`crate::headers::HeaderDecoder`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// DATA: stream payload.
    Data {
        /// Stream the payload belongs to (never 0).
        stream_id: u32,
        /// Sender half-closes the stream after this frame.
        fin: bool,
        /// Payload.
        data: Bytes,
    },
    /// SYN_STREAM: opens a stream.
    SynStream {
        /// New stream id (never 0).
        stream_id: u32,
        /// Associated stream (server push); 0 if none.
        associated_id: u32,
        /// 3-bit priority, 0 = highest.
        priority: u8,
        /// Opener sends no data on this stream.
        fin: bool,
        /// Recipient may not send on this stream.
        unidirectional: bool,
        /// Compressed header block.
        header_block: Bytes,
    },
    /// SYN_REPLY: accepts a stream.
    SynReply {
        /// Stream being accepted (never 0).
        stream_id: u32,
        /// Replier sends no data on this stream.
        fin: bool,
        /// Compressed header block.
        header_block: Bytes,
    },
    /// RST_STREAM: aborts a stream.
    RstStream {
        /// Stream being aborted (never 0).
        stream_id: u32,
        /// Status code; see [`crate::RstStatus`].
        status: u32,
    },
    /// SETTINGS.
    Settings {
        /// FLAG_SETTINGS_CLEAR_SETTINGS.
        clear: bool,
        /// Entries in wire order.
        entries: Vec<Setting>,
    },
    /// PING; the receiver echoes pings initiated by its peer.
    Ping {
        /// Opaque id: odd from clients, even from servers.
        id: u32,
    },
    /// GOAWAY: the sender will not accept streams above `last_good_stream_id`.
    GoAway {
        /// Last stream id the sender processed.
        last_good_stream_id: u32,
        /// 0 OK, 1 PROTOCOL_ERROR, 2 INTERNAL_ERROR.
        status: u32,
    },
    /// HEADERS: extra headers for an open stream.
    Headers {
        /// Stream id (never 0).
        stream_id: u32,
        /// Sender half-closes the stream.
        fin: bool,
        /// Compressed header block.
        header_block: Bytes,
    },
    /// WINDOW_UPDATE (decoded for completeness; this crate does not do flow control).
    WindowUpdate {
        /// Stream id; 0 addresses the session window (SPDY/3.1).
        stream_id: u32,
        /// Window increment (31 bits).
        delta: u32,
    },
    /// A control frame of a type this crate does not know (e.g. SPDY/2 NOOP, CREDENTIAL).
    Unknown {
        /// Control frame type code.
        kind: u16,
        /// Raw flags.
        flags: u8,
        /// Raw payload.
        payload: Bytes,
    },
}

impl Frame {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Data { .. } => "DATA",
            Frame::SynStream { .. } => "SYN_STREAM",
            Frame::SynReply { .. } => "SYN_REPLY",
            Frame::RstStream { .. } => "RST_STREAM",
            Frame::Settings { .. } => "SETTINGS",
            Frame::Ping { .. } => "PING",
            Frame::GoAway { .. } => "GOAWAY",
            Frame::Headers { .. } => "HEADERS",
            Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
            Frame::Unknown { .. } => "UNKNOWN",
        }
    }
}

/// Why a byte sequence is not a valid frame (or a frame cannot be encoded). Every decode error is
/// a session error: the frame boundary or the compression context can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field exceeds the configured maximum.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared payload length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// A control frame carries a version other than 3.
    #[error("unsupported SPDY version {0}")]
    UnsupportedVersion(u16),
    /// A known frame type with an impossible length or field value.
    #[error("invalid {frame} frame: {reason}")]
    Invalid {
        /// Frame type name.
        frame: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`try_encode`] was given a payload longer than [`MAX_PAYLOAD_LEN`].
    #[error("{frame} payload of {len} bytes cannot be encoded (max {MAX_PAYLOAD_LEN})")]
    PayloadTooLarge {
        /// Frame type name.
        frame: &'static str,
        /// Payload length.
        len: usize,
    },
}

fn invalid(frame: &'static str, reason: &'static str) -> FrameError {
    FrameError::Invalid { frame, reason }
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame (nothing is consumed), otherwise
/// consumes exactly that frame. `max_frame_len` bounds the payload length and is checked as soon
/// as the 8-byte header is present. Never panics on any input.
pub fn decode(buf: &mut BytesMut, max_frame_len: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let word0 = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let flags = buf[4];
    let len = usize::from(buf[5]) << 16 | usize::from(buf[6]) << 8 | usize::from(buf[7]);
    let max = max_frame_len.min(MAX_PAYLOAD_LEN);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if buf.len() < HEADER_LEN + len {
        // Reserve now so the caller's next read can fill the whole frame.
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let mut payload = buf.split_to(len).freeze();

    if word0 & 0x8000_0000 == 0 {
        let stream_id = word0 & MAX_STREAM_ID;
        if stream_id == 0 {
            return Err(invalid("DATA", "stream id 0"));
        }
        return Ok(Some(Frame::Data {
            stream_id,
            fin: flags & FLAG_FIN != 0,
            data: payload,
        }));
    }

    let version = ((word0 >> 16) & 0x7FFF) as u16;
    if version != VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let frame_kind = (word0 & 0xFFFF) as u16;
    let fin = flags & FLAG_FIN != 0;
    let frame = match frame_kind {
        kind::SYN_STREAM => {
            if len < 10 {
                return Err(invalid("SYN_STREAM", "shorter than 10 bytes"));
            }
            let stream_id = payload.get_u32() & MAX_STREAM_ID;
            let associated_id = payload.get_u32() & MAX_STREAM_ID;
            let priority = payload.get_u8() >> 5;
            let _slot = payload.get_u8();
            if stream_id == 0 {
                return Err(invalid("SYN_STREAM", "stream id 0"));
            }
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                fin,
                unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                header_block: payload,
            }
        }
        kind::SYN_REPLY | kind::HEADERS => {
            let name = if frame_kind == kind::SYN_REPLY {
                "SYN_REPLY"
            } else {
                "HEADERS"
            };
            if len < 4 {
                return Err(invalid(name, "shorter than 4 bytes"));
            }
            let stream_id = payload.get_u32() & MAX_STREAM_ID;
            if stream_id == 0 {
                return Err(invalid(name, "stream id 0"));
            }
            if frame_kind == kind::SYN_REPLY {
                Frame::SynReply {
                    stream_id,
                    fin,
                    header_block: payload,
                }
            } else {
                Frame::Headers {
                    stream_id,
                    fin,
                    header_block: payload,
                }
            }
        }
        kind::RST_STREAM => {
            if len != 8 {
                return Err(invalid("RST_STREAM", "length is not 8"));
            }
            let stream_id = payload.get_u32() & MAX_STREAM_ID;
            let status = payload.get_u32();
            if stream_id == 0 {
                return Err(invalid("RST_STREAM", "stream id 0"));
            }
            Frame::RstStream { stream_id, status }
        }
        kind::SETTINGS => {
            if len < 4 {
                return Err(invalid("SETTINGS", "shorter than 4 bytes"));
            }
            let count = payload.get_u32() as usize;
            // The count is attacker-controlled: check it against the bytes actually present
            // before allocating anything.
            if payload.len() / 8 != count || !payload.len().is_multiple_of(8) {
                return Err(invalid("SETTINGS", "entry count does not match length"));
            }
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let flag_id = payload.get_u32();
                let value = payload.get_u32();
                entries.push(Setting {
                    flags: (flag_id >> 24) as u8,
                    id: flag_id & 0x00FF_FFFF,
                    value,
                });
            }
            Frame::Settings {
                clear: flags & FLAG_SETTINGS_CLEAR != 0,
                entries,
            }
        }
        kind::PING => {
            if len != 4 {
                return Err(invalid("PING", "length is not 4"));
            }
            Frame::Ping {
                id: payload.get_u32(),
            }
        }
        kind::GOAWAY => {
            // SPDY/3 GOAWAY has a status field (8 bytes); SPDY/2 had 4. Only 3 is accepted.
            if len != 8 {
                return Err(invalid("GOAWAY", "length is not 8"));
            }
            let last_good_stream_id = payload.get_u32() & MAX_STREAM_ID;
            let status = payload.get_u32();
            Frame::GoAway {
                last_good_stream_id,
                status,
            }
        }
        kind::WINDOW_UPDATE => {
            if len != 8 {
                return Err(invalid("WINDOW_UPDATE", "length is not 8"));
            }
            let stream_id = payload.get_u32() & MAX_STREAM_ID;
            let delta = payload.get_u32() & 0x7FFF_FFFF;
            Frame::WindowUpdate { stream_id, delta }
        }
        other => Frame::Unknown {
            kind: other,
            flags,
            payload,
        },
    };
    Ok(Some(frame))
}

/// Appends the wire form of `frame` to `out`.
///
/// Infallible for every frame this crate builds itself. A payload longer than
/// [`MAX_PAYLOAD_LEN`] cannot be represented: such a frame is not written (a caller bug, logged
/// and caught by a debug assertion); use [`try_encode`] to get the error instead.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    if let Err(err) = try_encode(frame, out) {
        debug_assert!(false, "frame::encode: {err}");
        tracing::error!(%err, "frame not encoded");
    }
}

/// Like [`encode`], but reports an unrepresentable payload instead of dropping the frame.
/// On error `out` is unchanged.
pub fn try_encode(frame: &Frame, out: &mut BytesMut) -> Result<(), FrameError> {
    match frame {
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            let len = payload_len("DATA", data.len())?;
            out.reserve(HEADER_LEN + data.len());
            out.put_u32(stream_id & MAX_STREAM_ID);
            out.put_u32(flags_len(flag(*fin, FLAG_FIN), len));
            out.put_slice(data);
        }
        Frame::SynStream {
            stream_id,
            associated_id,
            priority,
            fin,
            unidirectional,
            header_block,
        } => {
            let len = payload_len("SYN_STREAM", 10 + header_block.len())?;
            let flags = flag(*fin, FLAG_FIN) | flag(*unidirectional, FLAG_UNIDIRECTIONAL);
            control_header(out, kind::SYN_STREAM, flags, len);
            out.put_u32(stream_id & MAX_STREAM_ID);
            out.put_u32(associated_id & MAX_STREAM_ID);
            out.put_u8((priority & 0x07) << 5);
            out.put_u8(0); // credential slot: unused
            out.put_slice(header_block);
        }
        Frame::SynReply {
            stream_id,
            fin,
            header_block,
        } => {
            let len = payload_len("SYN_REPLY", 4 + header_block.len())?;
            control_header(out, kind::SYN_REPLY, flag(*fin, FLAG_FIN), len);
            out.put_u32(stream_id & MAX_STREAM_ID);
            out.put_slice(header_block);
        }
        Frame::Headers {
            stream_id,
            fin,
            header_block,
        } => {
            let len = payload_len("HEADERS", 4 + header_block.len())?;
            control_header(out, kind::HEADERS, flag(*fin, FLAG_FIN), len);
            out.put_u32(stream_id & MAX_STREAM_ID);
            out.put_slice(header_block);
        }
        Frame::RstStream { stream_id, status } => {
            control_header(out, kind::RST_STREAM, 0, 8);
            out.put_u32(stream_id & MAX_STREAM_ID);
            out.put_u32(*status);
        }
        Frame::Settings { clear, entries } => {
            let len = entries
                .len()
                .checked_mul(8)
                .and_then(|n| n.checked_add(4))
                .unwrap_or(usize::MAX);
            let len = payload_len("SETTINGS", len)?;
            control_header(out, kind::SETTINGS, flag(*clear, FLAG_SETTINGS_CLEAR), len);
            out.put_u32(entries.len() as u32);
            for entry in entries {
                out.put_u32(u32::from(entry.flags) << 24 | (entry.id & 0x00FF_FFFF));
                out.put_u32(entry.value);
            }
        }
        Frame::Ping { id } => {
            control_header(out, kind::PING, 0, 4);
            out.put_u32(*id);
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            control_header(out, kind::GOAWAY, 0, 8);
            out.put_u32(last_good_stream_id & MAX_STREAM_ID);
            out.put_u32(*status);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control_header(out, kind::WINDOW_UPDATE, 0, 8);
            out.put_u32(stream_id & MAX_STREAM_ID);
            out.put_u32(delta & 0x7FFF_FFFF);
        }
        Frame::Unknown {
            kind,
            flags,
            payload,
        } => {
            let len = payload_len("UNKNOWN", payload.len())?;
            control_header(out, *kind, *flags, len);
            out.put_slice(payload);
        }
    }
    Ok(())
}

fn payload_len(frame: &'static str, len: usize) -> Result<u32, FrameError> {
    if len > MAX_PAYLOAD_LEN {
        return Err(FrameError::PayloadTooLarge { frame, len });
    }
    // Lossless: len <= 0xFF_FFFF.
    Ok(len as u32)
}

fn flag(on: bool, bit: u8) -> u8 {
    if on { bit } else { 0 }
}

fn flags_len(flags: u8, len: u32) -> u32 {
    u32::from(flags) << 24 | (len & 0x00FF_FFFF)
}

fn control_header(out: &mut BytesMut, kind: u16, flags: u8, len: u32) {
    out.reserve(HEADER_LEN + len as usize);
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32(flags_len(flags, len));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream_id: MAX_STREAM_ID,
                fin: true,
                data: Bytes::new(),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_id: 1,
                priority: 7,
                fin: true,
                unidirectional: true,
                header_block: Bytes::from_static(b"\x78\xbb compressed"),
            },
            Frame::SynStream {
                stream_id: 5,
                associated_id: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                header_block: Bytes::new(),
            },
            Frame::SynReply {
                stream_id: 2,
                fin: true,
                header_block: Bytes::from_static(b"x"),
            },
            Frame::RstStream {
                stream_id: 9,
                status: 5,
            },
            Frame::Settings {
                clear: true,
                entries: vec![
                    Setting {
                        flags: 1,
                        id: 4,
                        value: 100,
                    },
                    Setting {
                        flags: 0,
                        id: 7,
                        value: 65536,
                    },
                ],
            },
            Frame::Settings {
                clear: false,
                entries: vec![],
            },
            Frame::Ping { id: 0xFFFF_FFFF },
            Frame::GoAway {
                last_good_stream_id: 41,
                status: 1,
            },
            Frame::Headers {
                stream_id: 4,
                fin: false,
                header_block: Bytes::from_static(b"hb"),
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 0x7FFF_FFFF,
            },
            Frame::Unknown {
                kind: 10,
                flags: 0xAB,
                payload: Bytes::from_static(b"cred"),
            },
        ]
    }

    #[test]
    fn round_trip_every_frame_type() {
        for frame in all_frames() {
            let mut buf = BytesMut::new();
            encode(&frame, &mut buf);
            let wire_len = buf.len();
            let decoded = decode(&mut buf, MAX_PAYLOAD_LEN).unwrap().unwrap();
            assert_eq!(decoded, frame, "wire length {wire_len}");
            assert!(buf.is_empty(), "{} left bytes behind", frame.name());
        }
    }

    #[test]
    fn decode_consumes_exactly_one_frame_and_waits_for_more() {
        let mut wire = BytesMut::new();
        for frame in all_frames() {
            encode(&frame, &mut wire);
        }
        let bytes = wire.freeze();
        // Feed byte by byte: every prefix is either "need more" or yields the next frame.
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in bytes.iter() {
            buf.put_u8(*b);
            while let Some(f) = decode(&mut buf, MAX_PAYLOAD_LEN).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, all_frames());
        assert!(buf.is_empty());
    }

    #[test]
    fn known_wire_bytes() {
        let mut buf = BytesMut::new();
        encode(&Frame::Ping { id: 1 }, &mut buf);
        assert_eq!(
            &buf[..],
            b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01"
        );
        buf.clear();
        encode(
            &Frame::Data {
                stream_id: 3,
                fin: true,
                data: Bytes::from_static(b"ab"),
            },
            &mut buf,
        );
        assert_eq!(&buf[..], b"\x00\x00\x00\x03\x01\x00\x00\x02ab");
        buf.clear();
        encode(
            &Frame::RstStream {
                stream_id: 1,
                status: 5,
            },
            &mut buf,
        );
        assert_eq!(
            &buf[..],
            b"\x80\x03\x00\x03\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x05"
        );
    }

    #[test]
    fn too_large_is_rejected_from_the_header_alone() {
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x01\x00\x01\x00\x00"[..]);
        assert_eq!(
            decode(&mut buf, 1024),
            Err(FrameError::TooLarge {
                len: 65536,
                max: 1024
            })
        );
    }

    #[test]
    fn malformed_control_frames() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01",
                "version",
            ),
            (
                b"\x80\x03\x00\x06\x00\x00\x00\x05\x00\x00\x00\x01\x00",
                "ping length",
            ),
            (
                b"\x80\x03\x00\x03\x00\x00\x00\x04\x00\x00\x00\x01",
                "rst length",
            ),
            (
                b"\x80\x03\x00\x01\x00\x00\x00\x04\x00\x00\x00\x01",
                "syn length",
            ),
            (b"\x80\x03\x00\x02\x00\x00\x00\x02\x00\x00", "reply length"),
            (
                b"\x80\x03\x00\x04\x00\x00\x00\x04\xff\xff\xff\xff",
                "settings count",
            ),
            (
                b"\x80\x03\x00\x04\x00\x00\x00\x0b\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00",
                "settings len",
            ),
            (
                b"\x80\x03\x00\x07\x00\x00\x00\x04\x00\x00\x00\x01",
                "goaway v2",
            ),
            (
                b"\x80\x03\x00\x09\x00\x00\x00\x04\x00\x00\x00\x01",
                "window length",
            ),
            (b"\x00\x00\x00\x00\x00\x00\x00\x00", "data stream 0"),
            (
                b"\x80\x03\x00\x03\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x01",
                "rst stream 0",
            ),
        ];
        for (bytes, what) in cases {
            let mut buf = BytesMut::from(*bytes);
            assert!(
                decode(&mut buf, MAX_PAYLOAD_LEN).is_err(),
                "{what} accepted"
            );
        }
    }

    #[test]
    fn unknown_control_frames_are_returned_not_rejected() {
        let mut buf = BytesMut::from(
            &b"\x80\x03\x00\x05\x00\x00\x00\x00\x80\x03\x00\x0a\x07\x00\x00\x01z"[..],
        );
        assert_eq!(
            decode(&mut buf, 16).unwrap(),
            Some(Frame::Unknown {
                kind: 5,
                flags: 0,
                payload: Bytes::new()
            })
        );
        assert_eq!(
            decode(&mut buf, 16).unwrap(),
            Some(Frame::Unknown {
                kind: 10,
                flags: 7,
                payload: Bytes::from_static(b"z")
            })
        );
    }

    #[test]
    fn reserved_bits_are_masked() {
        // Stream id with the reserved bit set in a SYN_REPLY.
        let mut buf = BytesMut::from(&b"\x80\x03\x00\x02\x00\x00\x00\x04\x80\x00\x00\x05"[..]);
        assert_eq!(
            decode(&mut buf, 64).unwrap(),
            Some(Frame::SynReply {
                stream_id: 5,
                fin: false,
                header_block: Bytes::new()
            })
        );
    }

    #[test]
    fn oversized_payload_is_not_encoded() {
        let frame = Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from(vec![0u8; MAX_PAYLOAD_LEN + 1]),
        };
        let mut out = BytesMut::new();
        assert!(matches!(
            try_encode(&frame, &mut out),
            Err(FrameError::PayloadTooLarge { .. })
        ));
        assert!(out.is_empty());
    }
}
