//! ADS1115 16-bit ADC over I2C (the `ads1x1x` crate): one-shot conversions of the pipe
//! transducers' 4–20 mA loops at ±4.096 V.

use ads1x1x::{Ads1x1x, FullScaleRange, TargetAddr, channel, ic, mode};
use embedded_hal::i2c::I2c;

/// Which ADS1115 input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// AIN0 to ground.
    A0,
    /// AIN1 to ground.
    A1,
    /// AIN2 to ground.
    A2,
    /// AIN3 to ground.
    A3,
}

/// Transducers on an ADS1115 (ads1x1x), one-shot conversions at ±4.096 V.
pub struct Transducers<I2C> {
    adc: Ads1x1x<I2C, ic::Ads1115, ic::Resolution16Bit, mode::OneShot>,
}

impl<I2C> core::fmt::Debug for Transducers<I2C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Transducers(ADS1115)")
    }
}

impl<I2C: I2c<Error = E>, E> Transducers<I2C> {
    /// Sets the ±4.096 V range on the ADC at the default address (ADDR to GND).
    pub fn new(i2c: I2C) -> Result<Self, ads1x1x::Error<E>> {
        let mut adc = Ads1x1x::new_ads1115(i2c, TargetAddr::default());
        adc.set_full_scale_range(FullScaleRange::Within4_096V)?;
        Ok(Transducers { adc })
    }

    /// Starts or completes a conversion: `WouldBlock` until it is done (≈ 8 ms at 128 SPS).
    pub fn read(&mut self, input: Input) -> nb::Result<i16, ads1x1x::Error<E>> {
        match input {
            Input::A0 => self.adc.read(channel::SingleA0),
            Input::A1 => self.adc.read(channel::SingleA1),
            Input::A2 => self.adc.read(channel::SingleA2),
            Input::A3 => self.adc.read(channel::SingleA3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};

    const ADC: u8 = 0x48;

    #[test]
    fn the_ads1115_converts_one_shot_on_a0() {
        let mut i2c = Mock::new(&[
            // ±4.096 V (PGA 001), single-shot, 128 SPS.
            T::write(ADC, std::vec![0x01, 0x83, 0x83]),
            // Not busy; start a conversion on AIN0 (MUX 100) with OS set.
            T::write_read(ADC, std::vec![0x01], std::vec![0x83, 0x83]),
            T::write(ADC, std::vec![0x01, 0xC3, 0x83]),
            // Done; read the result.
            T::write_read(ADC, std::vec![0x01], std::vec![0xC3, 0x83]),
            T::write_read(ADC, std::vec![0x00], std::vec![0x3A, 0x98]),
        ]);
        let mut t = Transducers::new(i2c.clone()).unwrap();
        assert!(matches!(t.read(Input::A0), Err(nb::Error::WouldBlock)));
        let raw = t.read(Input::A0).unwrap();
        assert_eq!(raw, 15_000);
        // 4–20 mA over 0–1 MPa: 15,000 counts is 12.5 mA, 0.53 MPa.
        let cal = crate::pipe::Calibration::four_to_twenty_ma(0.0, 1.0);
        assert!((cal.apply(raw) - 0.53125).abs() < 1e-5);
        assert!(!cal.loop_fault(raw));
        assert!(cal.loop_fault(100), "a broken loop reads near zero");
        i2c.done();
    }
}
