//! Pseudo-terminals for `kubectl exec -t`: allocation (nix's safe `openpty`) and resizing.
//!
//! One of the two modules that need `unsafe` (the other is `readiness`): resizing a terminal is the `TIOCSWINSZ` ioctl,
//! for which nix offers only an `unsafe` macro-generated wrapper. The call passes a pointer to a
//! `Winsize` that lives on our stack for the whole call, on a file descriptor we own.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};

use nix::pty::{OpenptyResult, Winsize, openpty};

nix::ioctl_write_ptr_bad!(set_window_size, nix::libc::TIOCSWINSZ, Winsize);

fn winsize(width: u16, height: u16) -> Winsize {
    Winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A new terminal pair of `width` × `height` characters: (controller side, terminal side).
pub fn open(width: u16, height: u16) -> nix::Result<(OwnedFd, OwnedFd)> {
    let OpenptyResult { master, slave } = openpty(Some(&winsize(width, height)), None)?;
    Ok((master, slave))
}

/// Resize the terminal whose controller side is `master`; the foreground process gets SIGWINCH.
pub fn resize(master: &OwnedFd, width: u16, height: u16) -> nix::Result<()> {
    let size = winsize(width, height);
    // SAFETY: `master` is an open descriptor we own and `size` outlives the call; the ioctl
    // only reads the struct.
    unsafe { set_window_size(master.as_raw_fd(), &size) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_is_seen_on_the_terminal_side() {
        let (master, slave) = open(80, 24).unwrap();
        resize(&master, 120, 40).unwrap();
        let out = std::process::Command::new("stty")
            .arg("size")
            .stdin(std::process::Stdio::from(slave))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "40 120");
    }
}
