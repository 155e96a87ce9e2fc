//! Simulated sensor chips behind embedded-hal's I2C trait, so the virtual nodes run the real
//! drivers: a QMC5883L whose field the simulator sets, and an ADS1115 whose inputs it sets.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use embedded_hal::i2c::{ErrorType, I2c, Operation};

/// The field at a simulated magnetometer, shared between the chip (inside the driver) and the
/// simulation that sets it.
#[derive(Debug, Clone, Default)]
pub struct Field(Arc<Mutex<([i16; 3], bool)>>);

impl Field {
    /// Sets the field the next read sees (and raises data-ready).
    pub fn set(&self, field: [i16; 3]) {
        if let Ok(mut f) = self.0.lock() {
            *f = (field, true);
        }
    }
}

/// A QMC5883L: registers 00–05 hold the field, 06 the status, 0D the chip id.
#[derive(Debug, Clone, Default)]
pub struct SimMagnetometer {
    field: Field,
    pointer: u8,
}

impl SimMagnetometer {
    /// A chip reading `field`.
    pub fn new(field: Field) -> Self {
        SimMagnetometer { field, pointer: 0 }
    }

    fn register(&self, r: u8) -> u8 {
        let (field, fresh) = self.field.0.lock().map(|f| *f).unwrap_or_default();
        let b = |i: usize| field[i].to_le_bytes();
        match r {
            0x00 => b(0)[0],
            0x01 => b(0)[1],
            0x02 => b(1)[0],
            0x03 => b(1)[1],
            0x04 => b(2)[0],
            0x05 => b(2)[1],
            0x06 => u8::from(fresh),
            0x0D => 0xFF,
            _ => 0,
        }
    }
}

impl ErrorType for SimMagnetometer {
    type Error = Infallible;
}

impl I2c for SimMagnetometer {
    fn transaction(
        &mut self,
        _address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Infallible> {
        for op in operations {
            match op {
                Operation::Write(bytes) => {
                    if let Some(&r) = bytes.first() {
                        self.pointer = r;
                    }
                }
                Operation::Read(buf) => {
                    for (i, b) in buf.iter_mut().enumerate() {
                        *b = self.register(self.pointer + i as u8);
                    }
                    if self.pointer == 0x00
                        && let Ok(mut f) = self.field.0.lock()
                    {
                        f.1 = false; // reading the data clears data-ready
                    }
                }
            }
        }
        Ok(())
    }
}

/// The input voltages of a simulated ADC, AIN0..AIN3, shared like [`Field`].
#[derive(Debug, Clone, Default)]
pub struct Inputs(Arc<Mutex<[f32; 4]>>);

impl Inputs {
    /// Sets one input's voltage.
    pub fn set(&self, input: usize, volts: f32) {
        if let Ok(mut v) = self.0.lock() {
            v[input.min(3)] = volts;
        }
    }
}

/// An ADS1115: four single-ended inputs in volts; one-shot conversions complete at once.
#[derive(Debug, Clone, Default)]
pub struct SimAdc {
    inputs: Inputs,
    config: u16,
    pointer: u8,
    conversion: i16,
}

impl SimAdc {
    /// A chip reading `inputs`.
    pub fn new(inputs: Inputs) -> Self {
        SimAdc {
            inputs,
            ..SimAdc::default()
        }
    }

    fn full_scale(&self) -> f32 {
        match (self.config >> 9) & 0b111 {
            0 => 6.144,
            1 => 4.096,
            2 => 2.048,
            3 => 1.024,
            4 => 0.512,
            _ => 0.256,
        }
    }

    fn convert(&mut self) {
        let mux = (self.config >> 12) & 0b111;
        let input = if mux >= 4 {
            usize::from(mux as u8 - 4)
        } else {
            0
        };
        let volts = self.inputs.0.lock().map(|v| v[input]).unwrap_or(0.0);
        let v = volts / self.full_scale() * 32_768.0;
        self.conversion = v.clamp(-32_768.0, 32_767.0) as i16;
    }
}

impl ErrorType for SimAdc {
    type Error = Infallible;
}

impl I2c for SimAdc {
    fn transaction(
        &mut self,
        _address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Infallible> {
        for op in operations {
            match op {
                Operation::Write(bytes) => {
                    if let Some(&r) = bytes.first() {
                        self.pointer = r;
                    }
                    if bytes.len() == 3 && bytes[0] == 0x01 {
                        self.config = u16::from_be_bytes([bytes[1], bytes[2]]);
                        if self.config & 0x8000 != 0 {
                            self.convert();
                        }
                    }
                }
                Operation::Read(buf) => {
                    let value = match self.pointer {
                        // The conversion is always done: OS reads 1.
                        0x01 => self.config | 0x8000,
                        _ => self.conversion as u16,
                    };
                    let bytes = value.to_be_bytes();
                    for (i, b) in buf.iter_mut().enumerate().take(2) {
                        *b = bytes[i];
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node::drivers::ads1115::{Input, Transducers};
    use node::drivers::qmc5883l::{Qmc5883l, Range, Rate};
    use node::pipe::Calibration;

    #[test]
    fn the_real_drivers_read_the_simulated_chips() {
        let field = Field::default();
        let mut mag = Qmc5883l::new(
            SimMagnetometer::new(field.clone()),
            Rate::Hz200,
            Range::Gauss2,
        )
        .unwrap();
        assert_eq!(mag.read().unwrap(), None);
        field.set([100, -200, 4000]);
        assert_eq!(mag.read().unwrap(), Some([100, -200, 4000]));
        assert_eq!(mag.read().unwrap(), None, "read once");

        let inputs = Inputs::default();
        // 12 mA over 150 Ω = 1.8 V: half scale of a 4–20 mA loop.
        inputs.set(0, 1.8);
        let mut t = Transducers::new(SimAdc::new(inputs)).unwrap();
        let raw = nb_block(|| t.read(Input::A0));
        let v = Calibration::four_to_twenty_ma(0.0, 1.0).apply(raw);
        assert!((v - 0.5).abs() < 1e-3, "{v}");
    }

    fn nb_block<T, E: std::fmt::Debug>(mut f: impl FnMut() -> nb::Result<T, E>) -> T {
        loop {
            match f() {
                Ok(v) => return v,
                Err(nb::Error::WouldBlock) => {}
                Err(nb::Error::Other(e)) => panic!("{e:?}"),
            }
        }
    }
}
