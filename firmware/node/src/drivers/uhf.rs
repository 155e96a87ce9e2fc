//! A codec for the UART protocol of the common 860–960 MHz UHF reader modules (the R200 /
//! M100 family at 115200 8N1): no crate exists for it.
//!
//! Frame: `BB` header, type (`00` command, `01` response, `02` notice), command, parameter
//! length (2 bytes, big-endian), parameters, checksum (low byte of the sum of type …
//! parameters), `7E` end. An inventory notice (type `02`, command `22`) carries RSSI (1), PC
//! (2), the EPC (PC bits 15–11 give its length in 16-bit words) and the tag's CRC (2).

use heapless::Vec;

use super::{MAX_TAG_LEN, TagRead};

const HEADER: u8 = 0xBB;
const END: u8 = 0x7E;
/// Largest frame accepted.
pub const MAX_FRAME: usize = 64;

/// Command: one inventory round.
pub const SINGLE_INVENTORY: [u8; 7] = [HEADER, 0x00, 0x22, 0x00, 0x00, 0x22, END];

/// Command: continuous inventory of `rounds` rounds.
pub fn multi_inventory(rounds: u16) -> [u8; 10] {
    let [hi, lo] = rounds.to_be_bytes();
    let mut f = [HEADER, 0x00, 0x27, 0x00, 0x03, 0x22, hi, lo, 0, END];
    f[8] = checksum(&f[1..8]);
    f
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// Something the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A tag from an inventory notice.
    Tag {
        /// The read.
        read: TagRead,
        /// Signal strength as the module reports it (dBm, signed).
        rssi: i8,
    },
    /// A module response or error frame: `(command, first parameter byte)`.
    Response(u8, Option<u8>),
}

/// Counts of what was thrown away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeErrors {
    /// Frames whose checksum did not match.
    pub checksum: u32,
    /// Frames without the end byte, or too long.
    pub framing: u32,
}

/// A streaming decoder: feed it bytes from the UART as they come.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    buf: Vec<u8, MAX_FRAME>,
    /// What was thrown away.
    pub errors: DecodeErrors,
}

impl Decoder {
    /// An empty decoder.
    pub const fn new() -> Self {
        Decoder {
            buf: Vec::new(),
            errors: DecodeErrors {
                checksum: 0,
                framing: 0,
            },
        }
    }

    /// Feeds one byte; returns an event when a frame completes.
    pub fn feed(&mut self, byte: u8) -> Option<Event> {
        if self.buf.is_empty() && byte != HEADER {
            return None; // line noise between frames
        }
        if self.buf.push(byte).is_err() {
            self.errors.framing += 1;
            self.buf.clear();
            return None;
        }
        if self.buf.len() < 5 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([self.buf[3], self.buf[4]]));
        let total = 5 + len + 2;
        if total > MAX_FRAME {
            self.errors.framing += 1;
            self.buf.clear();
            return None;
        }
        if self.buf.len() < total {
            return None;
        }
        let frame = core::mem::take(&mut self.buf);
        if frame[total - 1] != END {
            self.errors.framing += 1;
            return None;
        }
        if checksum(&frame[1..5 + len]) != frame[5 + len] {
            self.errors.checksum += 1;
            return None;
        }
        let params = &frame[5..5 + len];
        match (frame[1], frame[2]) {
            (0x02, 0x22) if params.len() >= 5 => {
                let rssi = params[0] as i8;
                let pc = u16::from_be_bytes([params[1], params[2]]);
                let epc_len = usize::from(pc >> 11) * 2;
                let epc = params.get(3..3 + epc_len)?;
                Some(Event::Tag {
                    read: TagRead {
                        id: Vec::from_slice(&epc[..epc.len().min(MAX_TAG_LEN)]).ok()?,
                        antenna: 0,
                    },
                    rssi,
                })
            }
            (_, command) => Some(Event::Response(command, params.first().copied())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inventory notice for a 12-byte EPC, as the module sends it.
    fn notice(epc: &[u8; 12], rssi: u8) -> std::vec::Vec<u8> {
        let mut params = std::vec![rssi, 0x30, 0x00]; // PC: 6 words
        params.extend_from_slice(epc);
        params.extend_from_slice(&[0x12, 0x34]); // tag CRC
        let mut f = std::vec![0xBB, 0x02, 0x22, 0x00, params.len() as u8];
        f.extend_from_slice(&params);
        f.push(checksum(&f[1..]));
        f.push(0x7E);
        f
    }

    #[test]
    fn an_inventory_notice_gives_the_epc_even_after_line_noise() {
        let epc = [
            0xE2, 0x00, 0x00, 0x17, 0x22, 0x0A, 0x01, 0x23, 0x14, 0x50, 0x6D, 0x01,
        ];
        let mut d = Decoder::new();
        let mut got = None;
        for b in [0x00, 0x7E, 0x13].into_iter().chain(notice(&epc, 0xC9)) {
            if let Some(e) = d.feed(b) {
                got = Some(e);
            }
        }
        let Some(Event::Tag { read, rssi }) = got else {
            panic!("{got:?}")
        };
        assert_eq!(&read.id[..], &epc[..]);
        assert_eq!(rssi, -55);
    }

    #[test]
    fn a_corrupt_frame_is_counted_and_the_next_one_read() {
        let epc = [1; 12];
        let mut bad = notice(&epc, 0xC9);
        bad[10] ^= 0xFF;
        let mut d = Decoder::new();
        let events: std::vec::Vec<Event> = bad
            .into_iter()
            .chain(notice(&epc, 0xC0))
            .filter_map(|b| d.feed(b))
            .collect();
        assert_eq!(events.len(), 1);
        assert_eq!(d.errors.checksum, 1);
    }

    #[test]
    fn commands_carry_their_checksum() {
        assert_eq!(SINGLE_INVENTORY, [0xBB, 0x00, 0x22, 0x00, 0x00, 0x22, 0x7E]);
        // The module's documented example: BB 00 27 00 03 22 27 10 83 7E (10,000 rounds).
        assert_eq!(
            multi_inventory(10_000),
            [0xBB, 0x00, 0x27, 0x00, 0x03, 0x22, 0x27, 0x10, 0x83, 0x7E]
        );
    }
}
