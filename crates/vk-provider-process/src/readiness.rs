//! Waiting for a file descriptor this crate owns (a pidfd, the inotify instance) to become
//! readable, through Tokio's reactor (epoll), so a pod task sleeps until an event with no
//! polling.
//!
//! This is the second module that needs `unsafe` (with `pty`): since Tokio 1.51.6 the only
//! non-deprecated way to give a descriptor to the reactor, `AsyncFd::register_with_interest`, is
//! an `unsafe fn` whose caller promises that the descriptor stays open and refers to the same
//! file for the whole life of the `AsyncFd` (the old safe constructors are deprecated as
//! unsound for arbitrary `AsRawFd` types). No safe crate API offers a readiness wait on a pidfd
//! or an inotify descriptor. The promise holds here by construction: [`register`] only takes
//! [`Stable`] types, which own their descriptor and always return that same one, and the
//! `AsyncFd` owns the value until it is dropped.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::os::fd::OwnedFd {}
    impl Sealed for nix::sys::inotify::Inotify {}
}

/// Types that own one descriptor for their whole life and always return it from `as_fd`.
pub trait Stable: AsFd + sealed::Sealed {}
impl Stable for OwnedFd {}
impl Stable for nix::sys::inotify::Inotify {}

/// A [`Stable`] value as `AsyncFd` wants it (`AsRawFd`).
pub struct Owned<T: Stable>(T);

impl<T: Stable> Owned<T> {
    pub fn get(&self) -> &T {
        &self.0
    }
}

impl<T: Stable> AsRawFd for Owned<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Registers `inner`'s descriptor with the reactor (needs a Tokio runtime).
pub fn register<T: Stable>(inner: T, interest: Interest) -> std::io::Result<AsyncFd<Owned<T>>> {
    // SAFETY: `Owned<T>` owns the descriptor (`T: Stable` is `OwnedFd` or nix's `Inotify`, each
    // holding one `OwnedFd` it never replaces), so it stays open and the same file until the
    // `AsyncFd` drops or returns it, and `as_raw_fd` always returns that descriptor.
    unsafe { AsyncFd::register_with_interest(Owned(inner), interest) }.map_err(Into::into)
}
