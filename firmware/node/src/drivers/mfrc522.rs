//! MFRC522 13.56 MHz reader (ISO 14443 A) on SPI, through the `mfrc522` crate: a card's UID.

use heapless::Vec;

use super::TagRead;

/// An MFRC522 (13.56 MHz, ISO 14443 A) on SPI, through the `mfrc522` crate.
pub struct Mfrc522Reader<SPI: embedded_hal::spi::SpiDevice> {
    chip: mfrc522::Mfrc522<
        mfrc522::comm::blocking::spi::SpiInterface<SPI, mfrc522::comm::blocking::spi::DummyDelay>,
        mfrc522::Initialized,
    >,
}

impl<SPI: embedded_hal::spi::SpiDevice> core::fmt::Debug for Mfrc522Reader<SPI> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Mfrc522Reader")
    }
}

/// Why the reader could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderError {
    /// SPI failed.
    Bus,
    /// The chip answered with an unknown version (not an MFRC522, or wiring).
    UnknownChip(u8),
}

impl<SPI: embedded_hal::spi::SpiDevice> Mfrc522Reader<SPI> {
    /// Resets and configures the chip, then checks it is an MFRC522 (version 0x91 or 0x92, or
    /// 0x88/0x12 for the common clones).
    pub fn open(spi: SPI) -> Result<Self, ReaderError> {
        let iface = mfrc522::comm::blocking::spi::SpiInterface::new(spi);
        let mut chip = mfrc522::Mfrc522::new(iface)
            .init()
            .map_err(|_| ReaderError::Bus)?;
        match chip.version().map_err(|_| ReaderError::Bus)? {
            0x91 | 0x92 | 0x88 | 0x12 => Ok(Mfrc522Reader { chip }),
            v => Err(ReaderError::UnknownChip(v)),
        }
    }

    /// A card in the field, if any: its UID. The card is halted so it is not read again until
    /// it leaves and returns.
    pub fn poll(&mut self) -> Option<TagRead> {
        let atqa = self.chip.new_card_present().ok()?;
        let uid = self.chip.select(&atqa).ok()?;
        let _ = self.chip.hlta();
        Some(TagRead {
            id: Vec::from_slice(uid.as_bytes()).ok()?,
            antenna: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use embedded_hal_mock::eh1::spi::{Mock, Transaction as T};

    use super::*;

    fn write(reg: u8, val: u8) -> [T<u8>; 3] {
        [
            T::transaction_start(),
            T::write_vec(std::vec![reg << 1, val]),
            T::transaction_end(),
        ]
    }

    fn readreg(reg: u8, val: u8) -> [T<u8>; 3] {
        [
            T::transaction_start(),
            T::transfer_in_place(std::vec![(reg << 1) | 0x80, 0], std::vec![0, val]),
            T::transaction_end(),
        ]
    }

    fn init_script(version: u8) -> std::vec::Vec<T<u8>> {
        let mut t = std::vec::Vec::new();
        t.extend(write(0x01, 0x0F)); // CommandReg ← SoftReset
        t.extend(readreg(0x01, 0x00)); // power-down bit clear: reset done
        for (reg, val) in [
            (0x12, 0x00), // TxModeReg
            (0x13, 0x00), // RxModeReg
            (0x24, 0x26), // ModWidthReg
            (0x2A, 0x80), // TModeReg: timer starts after transmission
            (0x2B, 0xA9), // TPrescalerReg: 40 kHz
            (0x2C, 0x03), // TReloadReg: 25 ms
            (0x2D, 0xE8),
            (0x15, 0x40), // TxASKReg: 100 % ASK
            (0x11, 0x3D), // ModeReg: CRC preset 0x6363
        ] {
            t.extend(write(reg, val));
        }
        t.extend(readreg(0x14, 0x80)); // TxControlReg read …
        t.extend(write(0x14, 0x83)); // … antennas on
        t.extend(readreg(0x37, version)); // VersionReg
        t
    }

    #[test]
    fn the_mfrc522_is_reset_configured_and_identified() {
        let mut spi = Mock::new(&init_script(0x92));
        let reader = Mfrc522Reader::open(spi.clone());
        assert!(reader.is_ok());
        spi.done();
    }

    #[test]
    fn a_chip_that_is_not_an_mfrc522_is_named() {
        let mut spi = Mock::new(&init_script(0x00));
        assert_eq!(
            Mfrc522Reader::open(spi.clone()).err(),
            Some(ReaderError::UnknownChip(0x00))
        );
        spi.done();
    }
}
