//! A Modbus RTU master for RS-485 sensors: request and reply framing (the `rmodbus` crate),
//! and one exchange over the UART with the transceiver's DE line and the 3.5-character silence.

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

#[cfg(test)]
mod tests {
    use super::*;

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
        let done = crate::lifecycle::tests::block_on(exchange(
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
}
