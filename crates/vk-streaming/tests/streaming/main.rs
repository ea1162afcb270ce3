//! Streaming end to end on loopback: a real HTTP server mounting the handlers, a provider
//! running real processes, WebSocket and SPDY clients.

// Test code: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod harness;
mod http;
mod spdy;
mod websocket;
