//! Modbus slaves for the profiles with register maps (tokio-modbus server), over TCP and RTU
//! (a serial device, e.g. one end of a pseudo-terminal), with faults: a slow reply, an
//! exception, silence.
//!
//! The slave's registers are the profile's register map filled with field values, encoded
//! exactly as the map says (type, word order, scale, offset, 0- or 1-based addresses), so a
//! gateway polling it must decode the values back.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use device_profiles::modbus::{DataType, RegisterMap, RegisterTable, WordOrder};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// What goes wrong at the slave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Nothing.
    #[default]
    None,
    /// Every reply comes this late.
    Slow(Duration),
    /// Every request is answered with this exception.
    Exception(ExceptionCode),
    /// Nothing is answered.
    Silence,
    /// Replies come with this unit id instead of the slave's (Modbus TCP): a misconfigured
    /// device, or a gateway mixing up the replies of a shared line.
    WrongUnit(u8),
}

#[derive(Debug, Default)]
struct Image {
    words: BTreeMap<(RegisterTable, u16), u16>,
    bits: BTreeMap<(RegisterTable, u16), bool>,
}

/// One simulated slave.
#[derive(Debug, Clone)]
pub struct Slave {
    unit: u8,
    map: RegisterMap,
    image: Arc<Mutex<Image>>,
    fault: Arc<Mutex<Fault>>,
}

/// The registers of `value` as the map's `data_type` and `word_order` put them on the wire.
pub fn encode(
    data_type: DataType,
    order: WordOrder,
    scale: f64,
    offset: f64,
    value: f64,
) -> Vec<u16> {
    let raw = (value - offset) / if scale == 0.0 { 1.0 } else { scale };
    let mut bytes: Vec<u8> = match data_type {
        DataType::Bool => return vec![u16::from(value != 0.0)],
        DataType::U16 => (raw.round() as u16).to_be_bytes().to_vec(),
        DataType::I16 => (raw.round() as i16).to_be_bytes().to_vec(),
        DataType::U32 => (raw.round() as u32).to_be_bytes().to_vec(),
        DataType::I32 => (raw.round() as i32).to_be_bytes().to_vec(),
        DataType::F32 => (raw as f32).to_be_bytes().to_vec(),
        DataType::U64 => (raw.round() as u64).to_be_bytes().to_vec(),
        DataType::F64 => raw.to_be_bytes().to_vec(),
    };
    match order {
        WordOrder::ABCD => {}
        WordOrder::CDAB => {
            let words: Vec<[u8; 2]> = bytes.chunks(2).rev().map(|c| [c[0], c[1]]).collect();
            bytes = words.concat();
        }
        WordOrder::BADC => bytes.chunks_mut(2).for_each(|c| c.swap(0, 1)),
        WordOrder::DCBA => bytes.reverse(),
    }
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

impl Slave {
    /// A slave answering as `unit` with the registers of `map` holding `values` (field, value).
    pub fn new(unit: u8, map: &RegisterMap, values: &[(&str, f64)]) -> Slave {
        let s = Slave {
            unit,
            map: map.clone(),
            image: Arc::new(Mutex::new(Image::default())),
            fault: Arc::new(Mutex::new(Fault::None)),
        };
        for (field, value) in values {
            s.set(field, *value);
        }
        s
    }

    /// Sets one field's value in the registers.
    pub fn set(&self, field: &str, value: f64) {
        let Ok(mut image) = self.image.lock() else {
            return;
        };
        for r in self.map.registers.iter().filter(|r| r.field == field) {
            let Some(address) = r.protocol_address(self.map.address_base) else {
                continue;
            };
            if r.table.is_bits() {
                image.bits.insert((r.table, address), value != 0.0);
                continue;
            }
            for (i, w) in encode(r.data_type, r.word_order, r.scale, r.offset, value)
                .into_iter()
                .enumerate()
            {
                image.words.insert((r.table, address + i as u16), w);
            }
        }
    }

    /// Sets the fault.
    pub fn set_fault(&self, fault: Fault) {
        if let Ok(mut f) = self.fault.lock() {
            *f = fault;
        }
    }

    fn words(
        &self,
        table: RegisterTable,
        address: u16,
        count: u16,
    ) -> Result<Vec<u16>, ExceptionCode> {
        self.read(|image| &image.words, table, address, count)
    }

    fn bits(
        &self,
        table: RegisterTable,
        address: u16,
        count: u16,
    ) -> Result<Vec<bool>, ExceptionCode> {
        self.read(|image| &image.bits, table, address, count)
    }

    /// `count` entries of one table from `address`; an address outside the map is an
    /// exception, as on a real slave.
    fn read<T: Copy>(
        &self,
        part: impl Fn(&Image) -> &BTreeMap<(RegisterTable, u16), T>,
        table: RegisterTable,
        address: u16,
        count: u16,
    ) -> Result<Vec<T>, ExceptionCode> {
        let image = self
            .image
            .lock()
            .map_err(|_| ExceptionCode::ServerDeviceFailure)?;
        let entries = part(&image);
        (address..address.saturating_add(count))
            .map(|a| {
                entries
                    .get(&(table, a))
                    .copied()
                    .ok_or(ExceptionCode::IllegalDataAddress)
            })
            .collect()
    }

    fn answer(&self, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        match *request {
            Request::ReadHoldingRegisters(a, n) => Ok(Response::ReadHoldingRegisters(self.words(
                RegisterTable::Holding,
                a,
                n,
            )?)),
            Request::ReadInputRegisters(a, n) => Ok(Response::ReadInputRegisters(self.words(
                RegisterTable::Input,
                a,
                n,
            )?)),
            Request::ReadCoils(a, n) => {
                Ok(Response::ReadCoils(self.bits(RegisterTable::Coil, a, n)?))
            }
            Request::ReadDiscreteInputs(a, n) => Ok(Response::ReadDiscreteInputs(self.bits(
                RegisterTable::Discrete,
                a,
                n,
            )?)),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

impl tokio_modbus::server::Service for Slave {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        if req.slave != self.unit {
            // Not ours (a shared RS-485 bus): stay silent.
            return Box::pin(async { Ok(None) });
        }
        let fault = self.fault.lock().map(|f| *f).unwrap_or_default();
        let answer = self.answer(&req.request);
        Box::pin(async move {
            match fault {
                Fault::None => answer.map(Some),
                Fault::Slow(d) => {
                    tokio::time::sleep(d).await;
                    answer.map(Some)
                }
                Fault::Exception(code) => Err(code),
                // Served by `wrong_unit` below; a serial line answers nothing.
                Fault::Silence | Fault::WrongUnit(_) => Ok(None),
            }
        })
    }
}

/// Several slaves on one RS-485 line: each request goes to the slave with its unit id; other
/// unit ids get no answer.
#[derive(Debug, Clone)]
pub struct Bus(pub Vec<Slave>);

impl tokio_modbus::server::Service for Bus {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        match self.0.iter().find(|s| s.unit == req.slave) {
            Some(s) => s.call(req),
            None => Box::pin(async { Ok(None) }),
        }
    }
}

/// Serves a bus of slaves over RTU on a serial device.
pub async fn serve_rtu_bus(path: &std::path::Path, baud: u32, bus: Bus) -> std::io::Result<()> {
    let server = tokio_modbus::server::rtu::Server::new_from_path(path, baud)?;
    server.serve_forever(bus).await
}

/// Serves `slave` on `listener` (Modbus TCP) until the task is dropped.
pub async fn serve_tcp(listener: tokio::net::TcpListener, slave: Slave) -> std::io::Result<()> {
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let on_connected = |stream: tokio::net::TcpStream, _addr| {
        let slave = slave.clone();
        async move {
            let fault = slave.fault.lock().map(|f| *f).unwrap_or_default();
            if let Fault::WrongUnit(unit) = fault {
                // tokio-modbus always answers with the request's unit id: this fault needs
                // frames of our own.
                tokio::spawn(wrong_unit(stream, slave, unit));
                return Ok(None);
            }
            Ok(Some((slave, stream)))
        }
    };
    server.serve(&on_connected, |e| tracing_free_log(&e)).await
}

/// Answers read requests on one Modbus TCP connection with `unit` in the MBAP header.
async fn wrong_unit(mut stream: tokio::net::TcpStream, slave: Slave, unit: u8) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        // MBAP: transaction (2), protocol (2), length (2), unit (1); then the PDU.
        let mut head = [0u8; 7];
        if stream.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = usize::from(u16::from_be_bytes([head[4], head[5]])).saturating_sub(1);
        let mut pdu = vec![0u8; len];
        if stream.read_exact(&mut pdu).await.is_err() || pdu.len() < 5 {
            return;
        }
        let (address, count) = (
            u16::from_be_bytes([pdu[1], pdu[2]]),
            u16::from_be_bytes([pdu[3], pdu[4]]),
        );
        let table = match pdu[0] {
            3 => RegisterTable::Holding,
            4 => RegisterTable::Input,
            _ => return,
        };
        let Ok(words) = slave.words(table, address, count) else {
            return;
        };
        let mut reply = vec![pdu[0], (words.len() * 2) as u8];
        for w in words {
            reply.extend_from_slice(&w.to_be_bytes());
        }
        let mut frame = head[..4].to_vec();
        frame.extend_from_slice(&((reply.len() + 1) as u16).to_be_bytes());
        frame.push(unit);
        frame.extend_from_slice(&reply);
        if stream.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// Serves `slave` over RTU on a serial device (a UART, or one end of a pseudo-terminal).
pub async fn serve_rtu(path: &std::path::Path, baud: u32, slave: Slave) -> std::io::Result<()> {
    let server = tokio_modbus::server::rtu::Server::new_from_path(path, baud)?;
    server.serve_forever(slave).await
}

fn tracing_free_log(e: &std::io::Error) {
    eprintln!("modbus slave: connection ended: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_encoded_in_every_word_order() {
        // 0x3E9E0419 is 0.3086f32.
        let abcd = encode(
            DataType::F32,
            WordOrder::ABCD,
            1.0,
            0.0,
            f64::from(f32::from_bits(0x3E9E_0419)),
        );
        assert_eq!(abcd, vec![0x3E9E, 0x0419]);
        let v = f64::from(f32::from_bits(0x3E9E_0419));
        assert_eq!(
            encode(DataType::F32, WordOrder::CDAB, 1.0, 0.0, v),
            vec![0x0419, 0x3E9E]
        );
        assert_eq!(
            encode(DataType::F32, WordOrder::BADC, 1.0, 0.0, v),
            vec![0x9E3E, 0x1904]
        );
        assert_eq!(
            encode(DataType::F32, WordOrder::DCBA, 1.0, 0.0, v),
            vec![0x1904, 0x9E3E]
        );
        // Scale and offset: 204.5 m3/h in 0.1 units is 2045.
        assert_eq!(
            encode(DataType::U32, WordOrder::ABCD, 0.1, 0.0, 204.5),
            vec![0, 2045]
        );
        assert_eq!(
            encode(DataType::I16, WordOrder::ABCD, 0.1, 0.0, -2.5),
            vec![0xFFE7]
        );
    }
}
