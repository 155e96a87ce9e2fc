//! Chip drivers: what the node's domain logic reads its sensors through. Each is generic over
//! embedded-hal 1.0 and knows nothing of reports, thresholds or gates.
//!
//! - [`ads1115`]: the ADC of the pipe transducers.
//! - [`mfrc522`]: the 13.56 MHz gate reader; [`uhf`]: our codec for the UHF reader modules.
//! - [`modbus_rtu`]: the master for RS-485 sensors.
//! - [`qmc5883l`]: the magnetometer of the traffic detectors.

pub mod ads1115;
pub mod mfrc522;
pub mod modbus_rtu;
pub mod qmc5883l;
pub mod uhf;

use heapless::Vec;

/// Longest tag id handled (EPC-96 is 12 bytes; ISO 14443 UIDs are 4, 7 or 10).
pub const MAX_TAG_LEN: usize = 12;

/// One read: the tag's id and the antenna that saw it (0 for single-antenna readers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRead {
    /// The raw tag id (stays on the node).
    pub id: Vec<u8, MAX_TAG_LEN>,
    /// Antenna number.
    pub antenna: u8,
}
