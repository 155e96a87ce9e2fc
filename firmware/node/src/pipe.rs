//! Pipe, well and cover nodes: transducers on an ADS1115, sensors on RS-485 (Modbus RTU), tilt;
//! a report every interval, and one at once when a value crosses a threshold.
//!
//! Power: the node wakes to sample every `sample_s`, reports every `report_interval_s`, and
//! sleeps in between ([`Schedule::next_wake`]); a crossing reports at once. A crossing must hold
//! for `hold_ms` (a car driving over a cover tilts it for well under two seconds).

use ads1x1x::{Ads1x1x, FullScaleRange, TargetAddr, channel, ic, mode};
use embedded_hal::i2c::I2c;
use wire::{Body, PipeReading, PipeReadings, Quantity, Trigger};

/// Two-point calibration of a transducer: raw counts to engineering units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Raw count at the low point.
    pub raw_lo: f32,
    /// Value at the low point.
    pub value_lo: f32,
    /// Raw count at the high point.
    pub raw_hi: f32,
    /// Value at the high point.
    pub value_hi: f32,
}

impl Calibration {
    /// A 4–20 mA transducer over a 150 Ω shunt (0.6–3.0 V) read at ±4.096 V (125 µV/LSB):
    /// 4,800 counts at 4 mA, 24,000 at 20 mA, spanning `lo..hi` units.
    pub fn four_to_twenty_ma(lo: f32, hi: f32) -> Calibration {
        Calibration {
            raw_lo: 4_800.0,
            value_lo: lo,
            raw_hi: 24_000.0,
            value_hi: hi,
        }
    }

    /// The value of a raw count.
    pub fn apply(&self, raw: i16) -> f32 {
        let span = self.raw_hi - self.raw_lo;
        if span == 0.0 {
            return self.value_lo;
        }
        self.value_lo + (f32::from(raw) - self.raw_lo) * (self.value_hi - self.value_lo) / span
    }

    /// Whether a raw count is outside the loop's live range (broken wire: under 3.6 mA; short:
    /// over 21 mA).
    pub fn loop_fault(&self, raw: i16) -> bool {
        let per_ma = (self.raw_hi - self.raw_lo) / 16.0;
        let ma = 4.0 + (f32::from(raw) - self.raw_lo) / per_ma;
        !(3.6..=21.0).contains(&ma)
    }
}

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

/// Modbus RTU master framing (rmodbus): requests to RS-485 sensors and their replies. The
/// transceiver's DE/RE line and the 3.5-character silence are the board's ([`rtu_gap_us`]).
#[derive(Debug)]
pub struct ModbusMaster {
    request: rmodbus::client::ModbusRequest,
}

/// Why a Modbus exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModbusError {
    /// The slave answered with an exception (the code).
    Exception(u8),
    /// The reply is not a valid answer to the request (CRC, unit, function, length).
    BadReply,
    /// The request does not fit a frame.
    BadRequest,
}

/// The silence that ends an RTU frame, microseconds: 3.5 characters of 11 bits, and at least
/// 1,750 µs above 19,200 baud (the standard's fixed value).
pub const fn rtu_gap_us(baud: u32) -> u32 {
    if baud > 19_200 {
        1_750
    } else {
        (35 * 11 * 1_000_000 / 10) / baud
    }
}

impl ModbusMaster {
    /// A master talking to slave `unit`.
    pub fn new(unit: u8) -> ModbusMaster {
        ModbusMaster {
            request: rmodbus::client::ModbusRequest::new(unit, rmodbus::ModbusProto::Rtu),
        }
    }

    /// The frame reading `count` holding registers from `address` (0-based on the wire).
    pub fn read_holdings(
        &mut self,
        address: u16,
        count: u16,
    ) -> Result<heapless::Vec<u8, 256>, ModbusError> {
        let mut frame = heapless::Vec::new();
        self.request
            .generate_get_holdings(address, count, &mut frame)
            .map_err(|_| ModbusError::BadRequest)?;
        Ok(frame)
    }

    /// The registers of the reply to the last request.
    pub fn registers(&self, reply: &[u8]) -> Result<heapless::Vec<u16, 125>, ModbusError> {
        // An exception reply: function | 0x80, then the code.
        if reply.len() >= 5 && reply[1] & 0x80 != 0 {
            return Err(ModbusError::Exception(reply[2]));
        }
        let mut out = heapless::Vec::new();
        self.request
            .parse_u16(reply, &mut out)
            .map_err(|_| ModbusError::BadReply)?;
        Ok(out)
    }
}

/// One request and its reply over RS-485: drives the transceiver's DE line high while sending,
/// waits for the last byte to leave, releases the line, reads `reply_len` bytes, and keeps the
/// 3.5-character silence before the next request. Bound it with a timeout (`with_timeout`);
/// after a timeout, drain the UART before the next request, so a late reply never answers
/// the next one.
pub async fn exchange<U, DE, D>(
    uart: &mut U,
    de: &mut DE,
    delay: &mut D,
    baud: u32,
    request: &[u8],
    reply: &mut [u8],
) -> Result<(), ModbusError>
where
    U: embedded_io_async::Read + embedded_io_async::Write,
    DE: embedded_hal::digital::OutputPin,
    D: embedded_hal_async::delay::DelayNs,
{
    delay.delay_us(rtu_gap_us(baud)).await;
    de.set_high().map_err(|_| ModbusError::BadRequest)?;
    let sent = async {
        uart.write_all(request).await?;
        uart.flush().await
    }
    .await;
    // Release the bus whatever happened, or the slave can never answer.
    de.set_low().map_err(|_| ModbusError::BadRequest)?;
    sent.map_err(|_| ModbusError::BadReply)?;
    uart.read_exact(reply)
        .await
        .map_err(|_| ModbusError::BadReply)
}

/// A threshold watched on the node: crossing it reports at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watch {
    /// The quantity.
    pub quantity: Quantity,
    /// Alarm at or above this.
    pub high: Option<f32>,
    /// Alarm at or below this.
    pub low: Option<f32>,
    /// How far back the value must come to re-arm.
    pub margin: f32,
    /// How long a crossing must hold before it counts, ms.
    pub hold_ms: u64,
}

/// State of one [`Watch`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WatchState {
    beyond_since: Option<u64>,
    alarmed: bool,
}

impl Watch {
    fn beyond(&self, v: f32) -> bool {
        self.high.is_some_and(|h| v >= h) || self.low.is_some_and(|l| v <= l)
    }

    fn back(&self, v: f32) -> bool {
        self.high.is_none_or(|h| v < h - self.margin)
            && self.low.is_none_or(|l| v > l + self.margin)
    }

    /// Feeds a sample: `Some(true)` when the alarm starts (report at once), `Some(false)` when
    /// it clears (report at once too, so the gateway sees the end quickly).
    pub fn check(&self, state: &mut WatchState, value: f32, now_ms: u64) -> Option<bool> {
        if !state.alarmed {
            if self.beyond(value) {
                let since = *state.beyond_since.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) >= self.hold_ms {
                    state.alarmed = true;
                    return Some(true);
                }
            } else {
                state.beyond_since = None;
            }
            None
        } else if self.back(value) {
            state.alarmed = false;
            state.beyond_since = None;
            Some(false)
        } else {
            None
        }
    }
}

/// When to sample and when to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Sample every this many ms.
    pub sample_ms: u64,
    /// Report every this many ms.
    pub report_ms: u64,
    /// The next periodic report.
    pub next_report_ms: u64,
}

impl Schedule {
    /// Starting at `now_ms`.
    pub fn new(sample_ms: u64, report_ms: u64, now_ms: u64) -> Schedule {
        Schedule {
            sample_ms,
            report_ms,
            next_report_ms: now_ms + report_ms,
        }
    }

    /// Whether the periodic report is due (and moves it on).
    pub fn report_due(&mut self, now_ms: u64) -> bool {
        if now_ms < self.next_report_ms {
            return false;
        }
        while self.next_report_ms <= now_ms {
            self.next_report_ms += self.report_ms.max(1);
        }
        true
    }

    /// When to wake next: the next sample or report, whichever is first. In between the MCU
    /// sleeps (stop mode on the board).
    pub fn next_wake(&self, now_ms: u64) -> u64 {
        (now_ms + self.sample_ms).min(self.next_report_ms)
    }
}

/// A pipe report body.
pub fn report(trigger: Trigger, values: &[(Quantity, f32)]) -> Body {
    let mut readings = heapless::Vec::new();
    for &(quantity, value) in values.iter().take(wire::body::MAX_PIPE_READINGS) {
        let _ = readings.push(PipeReading { quantity, value });
    }
    Body::PipeReadings(PipeReadings { trigger, readings })
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
        let cal = Calibration::four_to_twenty_ma(0.0, 1.0);
        assert!((cal.apply(raw) - 0.53125).abs() < 1e-5);
        assert!(!cal.loop_fault(raw));
        assert!(cal.loop_fault(100), "a broken loop reads near zero");
        i2c.done();
    }

    #[test]
    fn modbus_requests_and_replies_are_framed_and_exceptions_named() {
        let mut m = ModbusMaster::new(1);
        let req = m.read_holdings(0, 2).unwrap();
        // 01 03 0000 0002 + CRC C4 0B (the textbook frame).
        assert_eq!(&req[..], &[0x01, 0x03, 0x00, 0x00, 0x00, 0x02, 0xC4, 0x0B]);
        let reply = [0x01, 0x03, 0x04, 0x00, 0x0A, 0x01, 0x02, 0x5B, 0xF0];
        let crc = {
            let c = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS).checksum(&reply[..7]);
            c.to_le_bytes()
        };
        let mut good = reply;
        good[7..9].copy_from_slice(&crc);
        assert_eq!(&m.registers(&good).unwrap()[..], &[10, 258]);
        let mut corrupt = good;
        corrupt[4] ^= 1;
        assert_eq!(m.registers(&corrupt), Err(ModbusError::BadReply));
        let exception = [0x01, 0x83, 0x02, 0xC0, 0xF1];
        assert_eq!(m.registers(&exception), Err(ModbusError::Exception(2)));
        assert_eq!(rtu_gap_us(9_600), 4_010);
        assert_eq!(rtu_gap_us(115_200), 1_750);
    }

    /// A UART that answers with a canned reply and records what was written.
    struct Uart {
        written: std::vec::Vec<u8>,
        reply: std::vec::Vec<u8>,
    }

    impl embedded_io_async::ErrorType for Uart {
        type Error = core::convert::Infallible;
    }

    impl embedded_io_async::Write for Uart {
        async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }

        async fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    impl embedded_io_async::Read for Uart {
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            let n = buf.len().min(self.reply.len());
            buf[..n].copy_from_slice(&self.reply[..n]);
            self.reply.drain(..n);
            Ok(n)
        }
    }

    #[test]
    fn an_rs485_exchange_keys_the_transmitter_only_while_sending() {
        use embedded_hal_mock::eh1::delay::NoopDelay;
        use embedded_hal_mock::eh1::digital::{Mock as Pin, State, Transaction as P};
        let mut m = ModbusMaster::new(1);
        let req = m.read_holdings(0, 2).unwrap();
        let mut reply = std::vec![0x01, 0x03, 0x04, 0x00, 0x0A, 0x01, 0x02];
        let crc = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS).checksum(&reply);
        reply.extend_from_slice(&crc.to_le_bytes());
        let mut uart = Uart {
            written: std::vec::Vec::new(),
            reply: reply.clone(),
        };
        let mut de = Pin::new(&[P::set(State::High), P::set(State::Low)]);
        let mut got = [0u8; 9];
        let done = crate::node::tests::block_on(exchange(
            &mut uart,
            &mut de,
            &mut NoopDelay,
            9_600,
            &req,
            &mut got,
        ));
        assert_eq!(done, Ok(()));
        assert_eq!(uart.written, req.to_vec());
        assert_eq!(&m.registers(&got).unwrap()[..], &[10, 258]);
        de.done();
    }

    fn samples(w: &Watch, series: &[(u64, f32)]) -> std::vec::Vec<(u64, bool)> {
        let mut s = WatchState::default();
        series
            .iter()
            .filter_map(|&(t, v)| w.check(&mut s, v, t).map(|a| (t, a)))
            .collect()
    }

    #[test]
    fn a_pressure_burst_reports_at_once_and_its_recovery_too() {
        let low = Watch {
            quantity: Quantity::Pressure,
            high: None,
            low: Some(0.14),
            margin: 0.02,
            hold_ms: 0,
        };
        // 0.30 MPa, a burst drops it to 0.08 within seconds, repaired an hour later.
        let mut series: std::vec::Vec<(u64, f32)> = (0..10).map(|i| (i * 1_000, 0.30)).collect();
        series.extend([
            (10_000, 0.22),
            (11_000, 0.12),
            (12_000, 0.08),
            (13_000, 0.09),
        ]);
        series.extend([(3_600_000, 0.15), (3_601_000, 0.29)]);
        assert_eq!(
            samples(&low, &series),
            std::vec![(11_000, true), (3_601_000, false)]
        );
    }

    #[test]
    fn a_cover_lifted_for_one_second_is_ignored_and_for_sixty_reported() {
        let tilt = Watch {
            quantity: Quantity::Tilt,
            high: Some(10.0),
            low: None,
            margin: 1.0,
            hold_ms: 2_000,
        };
        // Sampled every 500 ms while the accelerometer reports motion.
        let lifted = |from: u64, to: u64| -> std::vec::Vec<(u64, f32)> {
            (0..200u64)
                .map(|i| {
                    let t = i * 500;
                    (t, if (from..to).contains(&t) { 35.0 } else { 0.5 })
                })
                .collect()
        };
        assert!(samples(&tilt, &lifted(10_000, 11_000)).is_empty());
        assert_eq!(
            samples(&tilt, &lifted(10_000, 70_000)),
            std::vec![(12_000, true), (70_000, false)]
        );
    }

    #[test]
    fn the_schedule_sleeps_until_the_next_sample_or_report() {
        let mut s = Schedule::new(10_000, 60_000, 0);
        assert_eq!(s.next_wake(0), 10_000);
        assert_eq!(s.next_wake(55_000), 60_000);
        assert!(!s.report_due(59_999));
        assert!(s.report_due(60_000));
        assert!(!s.report_due(60_001));
        // A long sleep (a missed wake) reports once, not for every missed interval.
        assert!(s.report_due(300_000));
        assert_eq!(s.next_report_ms, 360_000);
    }
}
