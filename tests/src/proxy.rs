//! A TCP proxy between an MQTT client and a broker, for fault tests.
//!
//! - It forwards bytes unchanged, and closes the client's side when the broker's side closes
//!   (as a broker crash looks to the client).
//! - [`MqttProxy::set_blackhole`] stops forwarding in both directions while keeping both
//!   sockets open: a silent broker.
//! - It parses the MQTT packets going through, and records the payload of every PUBLISH the
//!   client acknowledged with a PUBACK: the test can then check that everything a client
//!   acknowledged was really processed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
struct Shared {
    blackhole: AtomicBool,
    /// PUBLISH payloads from the broker awaiting the client's PUBACK, by packet id.
    in_flight: Mutex<HashMap<u16, Vec<u8>>>,
    acked: Mutex<Vec<Vec<u8>>>,
}

/// The proxy; it runs until dropped with the runtime.
#[derive(Debug, Clone)]
pub struct MqttProxy {
    /// The port clients connect to.
    pub port: u16,
    shared: Arc<Shared>,
}

impl MqttProxy {
    /// Listens on a free port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> MqttProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = TcpStream::connect(upstream).await else {
                    continue; // broker down: the client sees its connection closed
                };
                let _ = client.set_nodelay(true);
                let _ = broker.set_nodelay(true);
                tokio::spawn(pipe(client, broker, s.clone()));
            }
        });
        MqttProxy { port, shared }
    }

    /// Stops (or resumes) forwarding without closing anything.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// Payloads of the PUBLISH packets the client acknowledged, in order.
    pub fn acked_payloads(&self) -> Vec<Vec<u8>> {
        self.shared.acked.lock().unwrap().clone()
    }
}

async fn pipe(client: TcpStream, broker: TcpStream, shared: Arc<Shared>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut br, mut bw) = broker.into_split();
    let s1 = shared.clone();
    let down = tokio::spawn(async move {
        let mut parser = Parser::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match br.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            while s1.blackhole.load(Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            for p in parser.feed(&buf[..n]) {
                if let Packet::Publish {
                    id: Some(id),
                    payload,
                } = p
                {
                    s1.in_flight.lock().unwrap().insert(id, payload);
                }
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let up = tokio::spawn(async move {
        let mut parser = Parser::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            while shared.blackhole.load(Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            for p in parser.feed(&buf[..n]) {
                if let Packet::PubAck { id } = p
                    && let Some(payload) = shared.in_flight.lock().unwrap().remove(&id)
                {
                    shared.acked.lock().unwrap().push(payload);
                }
            }
            if bw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    // Either side closing ends both (a broker crash closes the client's connection).
    tokio::select! {
        _ = down => {}
        _ = up => {}
    }
}

#[derive(Debug)]
enum Packet {
    Publish { id: Option<u16>, payload: Vec<u8> },
    PubAck { id: u16 },
    Other,
}

/// Splits a byte stream into MQTT 5 packets.
#[derive(Debug, Default)]
struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Packet> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some((len, header_len)) = remaining_length(&self.buf[1.min(self.buf.len())..]) {
            let total = 1 + header_len + len;
            if self.buf.len() < total {
                break;
            }
            let packet: Vec<u8> = self.buf.drain(..total).collect();
            out.push(decode(packet[0], &packet[1 + header_len..]));
        }
        out
    }
}

/// The MQTT variable-length integer at the start of `b`: (value, bytes used).
fn remaining_length(b: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, byte) in b.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn decode(first: u8, body: &[u8]) -> Packet {
    match first >> 4 {
        3 => {
            let qos = (first >> 1) & 3;
            let Some(topic_len) = body
                .get(..2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            else {
                return Packet::Other;
            };
            let mut at = 2 + topic_len;
            let id = if qos > 0 {
                let id = body
                    .get(at..at + 2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]));
                at += 2;
                id
            } else {
                None
            };
            let Some((props, used)) = body.get(at..).and_then(remaining_length) else {
                return Packet::Other;
            };
            at += used + props;
            Packet::Publish {
                id,
                payload: body.get(at..).unwrap_or_default().to_vec(),
            }
        }
        4 => body.get(..2).map_or(Packet::Other, |b| Packet::PubAck {
            id: u16::from_be_bytes([b[0], b[1]]),
        }),
        _ => Packet::Other,
    }
}
