//! Support for CitySense's end-to-end tests: real services started on free loopback ports
//! ([`services`]), an MQTT-aware TCP proxy that can black-hole a connection and records which
//! messages a client acknowledged ([`proxy`]), and small HTTP and frame helpers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: failing loudly is the point

pub mod bench;
pub mod browser;
pub mod http;
pub mod load_frames;
pub mod pki;
pub mod platform;
pub mod proxy;
pub mod services;

/// A pseudo-terminal in raw mode from the start, as a serial line is. A new one is a terminal
/// (echo, canonical lines, signals): bytes written to it before the program on the other side
/// has opened it and set its own mode are cooked — echoed back, held for a newline, or taken as
/// ^C (a Modbus "read holding registers" request carries 0x03).
pub fn raw_pty() -> nix::pty::OpenptyResult {
    use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut mode = tcgetattr(&pty.slave).unwrap();
    cfmakeraw(&mut mode);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &mode).unwrap();
    pty
}
