//! QMC5883L three-axis magnetometer over I2C (embedded-hal 1.0). Our own: the crates.io driver
//! targets embedded-hal 0.2 and is AGPL-3.0.
//!
//! Registers: `00–05` X, Y, Z (LSB first), `06` status (bit 0 data ready, bit 1 overflow),
//! `09` control 1 (mode, output data rate, range, over-sampling), `0A` control 2 (bit 7 soft
//! reset), `0B` SET/RESET period (datasheet: write `01`), `0D` chip id (`FF`).

use embedded_hal::i2c::I2c;

/// The fixed I2C address.
pub const ADDRESS: u8 = 0x0D;
const DATA: u8 = 0x00;
const STATUS: u8 = 0x06;
const CONTROL1: u8 = 0x09;
const CONTROL2: u8 = 0x0A;
const SET_RESET: u8 = 0x0B;
const CHIP_ID: u8 = 0x0D;

/// Output data rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// 10 Hz.
    Hz10 = 0b00,
    /// 50 Hz.
    Hz50 = 0b01,
    /// 100 Hz.
    Hz100 = 0b10,
    /// 200 Hz (vehicle detection at speed).
    Hz200 = 0b11,
}

/// Full-scale range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// ±2 gauss (12,000 LSB/G): the sensitive one, for vehicles.
    Gauss2 = 0b00,
    /// ±8 gauss (3,000 LSB/G).
    Gauss8 = 0b01,
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The bus.
    I2c(E),
    /// Chip id is not `FF`: another chip (an HMC5883L answers at 0x1E) or bad wiring.
    WrongChip(u8),
    /// A reading overflowed the range (a magnet, or the wrong range).
    Overflow,
}

/// The driver.
#[derive(Debug)]
pub struct Qmc5883l<I2C> {
    i2c: I2C,
}

impl<I2C: I2c> Qmc5883l<I2C> {
    /// Checks the chip id, then starts continuous measurement at `rate` and `range` with 512×
    /// over-sampling.
    pub fn new(mut i2c: I2C, rate: Rate, range: Range) -> Result<Self, Error<I2C::Error>> {
        let mut id = [0u8];
        i2c.write_read(ADDRESS, &[CHIP_ID], &mut id)
            .map_err(Error::I2c)?;
        if id[0] != 0xFF {
            return Err(Error::WrongChip(id[0]));
        }
        i2c.write(ADDRESS, &[SET_RESET, 0x01]).map_err(Error::I2c)?;
        let control = ((range as u8) << 4) | ((rate as u8) << 2) | 0b01; // OSR 512, continuous
        i2c.write(ADDRESS, &[CONTROL1, control])
            .map_err(Error::I2c)?;
        Ok(Qmc5883l { i2c })
    }

    /// A new sample `[x, y, z]` if one is ready.
    pub fn read(&mut self) -> Result<Option<[i16; 3]>, Error<I2C::Error>> {
        let mut status = [0u8];
        self.i2c
            .write_read(ADDRESS, &[STATUS], &mut status)
            .map_err(Error::I2c)?;
        if status[0] & 0b10 != 0 {
            return Err(Error::Overflow);
        }
        if status[0] & 0b01 == 0 {
            return Ok(None);
        }
        let mut b = [0u8; 6];
        self.i2c
            .write_read(ADDRESS, &[DATA], &mut b)
            .map_err(Error::I2c)?;
        Ok(Some([
            i16::from_le_bytes([b[0], b[1]]),
            i16::from_le_bytes([b[2], b[3]]),
            i16::from_le_bytes([b[4], b[5]]),
        ]))
    }

    /// Soft reset (registers back to defaults; call [`Qmc5883l::new`] again).
    pub fn reset(mut self) -> Result<I2C, Error<I2C::Error>> {
        self.i2c
            .write(ADDRESS, &[CONTROL2, 0x80])
            .map_err(Error::I2c)?;
        Ok(self.i2c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};

    fn setup() -> std::vec::Vec<T> {
        std::vec![
            T::write_read(ADDRESS, std::vec![0x0D], std::vec![0xFF]),
            T::write(ADDRESS, std::vec![0x0B, 0x01]),
            // range 2 G, 200 Hz, OSR 512, continuous: 0b00_00_11_01
            T::write(ADDRESS, std::vec![0x09, 0x0D]),
        ]
    }

    #[test]
    fn starts_continuous_measurement_and_reads_a_sample() {
        let mut script = setup();
        script.push(T::write_read(ADDRESS, std::vec![0x06], std::vec![0x00]));
        script.push(T::write_read(ADDRESS, std::vec![0x06], std::vec![0x01]));
        script.push(T::write_read(
            ADDRESS,
            std::vec![0x00],
            std::vec![0x10, 0x00, 0xF0, 0xFF, 0x00, 0x80],
        ));
        script.push(T::write(ADDRESS, std::vec![0x0A, 0x80]));
        let mut i2c = Mock::new(&script);
        let mut m = Qmc5883l::new(i2c.clone(), Rate::Hz200, Range::Gauss2).unwrap();
        assert_eq!(m.read(), Ok(None), "not ready yet");
        assert_eq!(m.read(), Ok(Some([16, -16, i16::MIN])));
        m.reset().unwrap();
        i2c.done();
    }

    #[test]
    fn another_chip_and_an_overflow_are_named() {
        let mut i2c = Mock::new(&[T::write_read(ADDRESS, std::vec![0x0D], std::vec![0x48])]);
        assert_eq!(
            Qmc5883l::new(i2c.clone(), Rate::Hz10, Range::Gauss8).err(),
            Some(Error::WrongChip(0x48))
        );
        i2c.done();
        let mut script = setup();
        script.push(T::write_read(ADDRESS, std::vec![0x06], std::vec![0x03]));
        let mut i2c = Mock::new(&script);
        let mut m = Qmc5883l::new(i2c.clone(), Rate::Hz200, Range::Gauss2).unwrap();
        assert_eq!(m.read(), Err(Error::Overflow));
        i2c.done();
    }
}
