//! The node's self-checks on the real instruction set: boots on QEMU's mps2-an386
//! (Cortex-M4F), runs every check of `node::selftest` (wire golden vectors, config block, node
//! core, traffic detection, RFID, pipe thresholds, Modbus framing), prints a line per check and
//! `N passed, N failed`, and exits with the number of failures (0: all passed).
//!
//! ```text
//! cd firmware/boards/qemu && cargo run --release
//! ```

#![no_std]
#![no_main]

use cortex_m as _; // the critical-section implementation must reach the link (FIRMWARE.md §10.1)
use cortex_m_rt::entry;
use semihosting::println;

#[entry]
fn main() -> ! {
    println!(
        "citysense node self-checks on {}",
        "Cortex-M4F (qemu mps2-an386)"
    );
    let (passed, failed) = node::selftest::run(|name, result| match result {
        Ok(()) => println!("test {name} ... ok"),
        Err(why) => println!("test {name} ... FAILED: {why}"),
    });
    println!("{passed} passed, {failed} failed");
    semihosting::process::exit(failed as i32)
}
