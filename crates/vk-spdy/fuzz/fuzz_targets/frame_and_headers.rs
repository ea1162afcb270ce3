//! Fuzz target: arbitrary bytes through `frame::decode`, with every header block inflated on one
//! shared `HeaderDecoder` as a connection would, plus the whole input as a lone header block.
//! Any panic, hang or runaway allocation is a bug; errors are expected.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use vk_spdy::frame::{self, Frame, MAX_PAYLOAD_LEN};
use vk_spdy::HeaderDecoder;

const MAX_HEADER_BLOCK: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the frame size limit, so small limits are exercised too.
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let max_frame_len = [0, 64, 4096, MAX_PAYLOAD_LEN][usize::from(selector & 3)];

    let mut buf = BytesMut::from(input);
    let mut headers = HeaderDecoder::new(MAX_HEADER_BLOCK);
    loop {
        let before = buf.len();
        match frame::decode(&mut buf, max_frame_len) {
            Ok(Some(frame)) => {
                assert!(buf.len() < before, "a decoded frame consumed nothing");
                match frame {
                    Frame::SynStream { header_block, .. }
                    | Frame::SynReply { header_block, .. }
                    | Frame::Headers { header_block, .. } => {
                        if headers.decode(&header_block).is_err() {
                            // A connection would end here; keep going on a fresh context.
                            headers = HeaderDecoder::new(MAX_HEADER_BLOCK);
                        }
                    }
                    _ => {}
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                break;
            }
            Err(_) => break,
        }
    }

    let _ = HeaderDecoder::new(MAX_HEADER_BLOCK).decode(input);
});
