//! The node's MQTT 5 session: minimq (pinned `=0.13.5`) behind [`Uplink`].
//!
//! A publish counts only once its PUBACK arrived (the frame stays queued until then). Downlinks
//! that arrive meanwhile are kept for the node ([`MqttUplink::take_downlink`]). The broker must
//! speak MQTT 5 (minimq has no 3.1.1).

use embassy_time::{Duration, with_timeout};
use heapless::{Deque, Vec};
use minimq::{Connection, Io, Publication, QoS, SubscriptionOptions, TopicFilter};

use crate::lifecycle::Uplink;

/// Largest downlink kept (a key rotation frame is ~100 bytes).
pub const MAX_DOWNLINK: usize = 256;

/// Why a publish failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkError {
    /// The session or transport failed: reconnect.
    Session,
    /// No PUBACK in time.
    Timeout,
    /// The topic or payload does not fit the session's buffers.
    TooLarge,
}

/// A connected session.
pub struct MqttUplink<'a, 'buf, IO: Io> {
    conn: Connection<'a, 'buf, IO>,
    timeout: Duration,
    downlinks: Deque<Vec<u8, MAX_DOWNLINK>, 2>,
}

impl<IO: Io> core::fmt::Debug for MqttUplink<'_, '_, IO> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MqttUplink")
            .field("downlinks", &self.downlinks.len())
            .finish_non_exhaustive()
    }
}

impl<'a, 'buf, IO: Io> MqttUplink<'a, 'buf, IO> {
    /// Wraps a connection made with `Session::connect`; acknowledgements are awaited for at
    /// most `timeout`.
    pub fn new(conn: Connection<'a, 'buf, IO>, timeout: Duration) -> Self {
        MqttUplink {
            conn,
            timeout,
            downlinks: Deque::new(),
        }
    }

    /// Subscribes to the node's `down` topic (QoS 1) and says `online` on its retained status
    /// topic.
    pub async fn announce(&mut self, down: &str, status: &str) -> Result<(), UplinkError> {
        let topics = [TopicFilter::new(down)
            .options(SubscriptionOptions::default().maximum_qos(QoS::AtLeastOnce))];
        self.conn
            .subscribe(&topics, &[])
            .await
            .map_err(|_| UplinkError::Session)?;
        self.send(
            Publication::bytes(status, b"online")
                .qos(QoS::AtLeastOnce)
                .retain(),
        )
        .await
    }

    /// A downlink frame that arrived, oldest first.
    pub fn take_downlink(&mut self) -> Option<Vec<u8, MAX_DOWNLINK>> {
        self.downlinks.pop_front()
    }

    /// Waits up to `wait` for session traffic (downlinks, keepalive), for an idle node.
    pub async fn idle(&mut self, wait: Duration) -> Result<(), UplinkError> {
        match with_timeout(wait, self.conn.poll()).await {
            Ok(Ok(Some(message))) => {
                keep(&mut self.downlinks, message.payload());
                Ok(())
            }
            Ok(Ok(None)) | Err(_) => Ok(()),
            Ok(Err(_)) => Err(UplinkError::Session),
        }
    }

    async fn send(&mut self, publication: Publication<'_, &[u8]>) -> Result<(), UplinkError> {
        let op = match self.conn.publish(publication).await {
            Ok(Some(op)) => op,
            Ok(None) => return Ok(()), // QoS 0
            Err(minimq::PubError::Session(minimq::Error::Resource(_))) => {
                return Err(UplinkError::TooLarge);
            }
            Err(_) => return Err(UplinkError::Session),
        };
        let waited = with_timeout(self.timeout, async {
            while !self.conn.is_complete(&op) {
                if self.conn.is_invalidated(&op) {
                    return Err(UplinkError::Session);
                }
                match self.conn.poll().await {
                    Ok(Some(message)) => keep(&mut self.downlinks, message.payload()),
                    Ok(None) => {}
                    Err(_) => return Err(UplinkError::Session),
                }
            }
            Ok(())
        })
        .await;
        waited.unwrap_or(Err(UplinkError::Timeout))
    }
}

/// Keeps a downlink for the node; the oldest goes when two are already waiting.
fn keep(downlinks: &mut Deque<Vec<u8, MAX_DOWNLINK>, 2>, payload: &[u8]) {
    if let Ok(frame) = Vec::from_slice(payload) {
        if downlinks.is_full() {
            downlinks.pop_front();
        }
        let _ = downlinks.push_back(frame);
    }
}

impl<IO: Io> Uplink for MqttUplink<'_, '_, IO> {
    type Error = UplinkError;

    async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), UplinkError> {
        self.send(Publication::bytes(topic, payload).qos(QoS::AtLeastOnce))
            .await
    }
}

#[cfg(test)]
mod tests {
    //! The node's session against a real Mosquitto on loopback, through a tokio adapter.

    use super::*;
    use crate::config::{Role, Stream};
    use crate::lifecycle::Node;
    use crate::lifecycle::tests::Ram;
    use embedded_io_adapters::tokio_1::FromTokio;
    use minimq::{Buffers, ConfigBuilder, Session};
    use system_tests::services::Mosquitto;
    use wire::{AckOutcome, Body, Downlink, Header, Timestamp};

    fn config(port: u16) -> crate::Config {
        crate::Config {
            broker_port: port,
            role: Role::Pipe,
            ..crate::config::tests::sample()
        }
    }

    async fn session_io(port: u16) -> FromTokio<tokio::net::TcpStream> {
        FromTokio::new(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        )
    }

    fn buffers() -> ConfigBuilder<'static> {
        let rx = std::boxed::Box::leak(std::boxed::Box::new([0u8; 1024]));
        let tx = std::boxed::Box::leak(std::boxed::Box::new([0u8; 2048]));
        ConfigBuilder::new(Buffers::new(rx, tx))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reports_reach_the_broker_and_a_downlink_is_applied_and_acknowledged() {
        let broker = Mosquitto::start();
        let cfg = config(broker.port);
        let (up, down, status) = (
            cfg.topic(Stream::Up),
            cfg.topic(Stream::Down),
            cfg.topic(Stream::Status),
        );

        // The gateway's side: a plain MQTT 5 session subscribed to the node's topics.
        let mut gw_session = Session::new(buffers().client_id("gw-test").unwrap());
        let mut gw = gw_session
            .connect(session_io(broker.port).await)
            .await
            .unwrap();
        let topics = [TopicFilter::new("cs/v1/#")
            .options(SubscriptionOptions::default().maximum_qos(QoS::AtLeastOnce))];
        gw.subscribe(&topics, &[]).await.unwrap();

        let mut ram = Ram::default();
        let mut node = Node::<8>::boot(cfg.clone(), &mut ram);
        for i in 0..3 {
            node.report(
                &crate::pipe::report(
                    wire::Trigger::Periodic,
                    &[(wire::Quantity::Pressure, 0.3 + i as f32 / 100.0)],
                ),
                1_000 * i,
                false,
            )
            .unwrap();
        }
        let mut session = Session::new(
            buffers()
                .client_id(&cfg.device_id)
                .unwrap()
                .keepalive_interval(30),
        );
        let conn = session
            .connect(session_io(broker.port).await)
            .await
            .unwrap();
        let mut uplink = MqttUplink::new(conn, Duration::from_secs(5));
        uplink.announce(&down, &status).await.unwrap();
        assert_eq!(node.flush(&mut uplink).await, Ok(3));
        assert!(node.queue.is_empty(), "every frame PUBACKed and dequeued");

        // The gateway sees the status and three frames that verify with the node's key.
        let key = cfg.device_key();
        let mut frames = std::vec::Vec::new();
        let mut online = false;
        while frames.len() < 3 || !online {
            let m = with_timeout(Duration::from_secs(5), gw.recv())
                .await
                .expect("broker delivers")
                .unwrap();
            if m.topic() == status.as_str() {
                online = m.payload() == b"online";
            } else if m.topic() == up.as_str() {
                let msg = wire::open(m.payload(), &key).unwrap();
                frames.push(msg.header.sequence);
            }
        }
        assert_eq!(frames, std::vec![0, 1, 2]);

        // A downlink: the gateway halves the report interval.
        let header = Header {
            device_id: &cfg.device_id,
            boot_epoch: 9,
            sequence: 1,
            timestamp: Timestamp::Synced { unix_ms: 1 },
        };
        let frame = wire::frame::seal_to_vec(
            &header,
            &Body::Downlink(Downlink::ConfigChange {
                report_interval_s: 30,
            }),
            &key,
        )
        .unwrap();
        gw.publish(Publication::bytes(&down, &frame).qos(QoS::AtLeastOnce))
            .await
            .unwrap();
        let got = loop {
            if let Some(f) = uplink.take_downlink() {
                break f;
            }
            uplink.idle(Duration::from_millis(200)).await.unwrap();
        };
        assert_eq!(
            node.handle_downlink(&got, 5_000, &mut ram),
            Ok(AckOutcome::Applied)
        );
        assert_eq!(node.report_interval_s(), 30);
        assert_eq!(node.flush(&mut uplink).await, Ok(1));
        let ack = loop {
            let m = with_timeout(Duration::from_secs(5), gw.recv())
                .await
                .expect("ack arrives")
                .unwrap();
            if m.topic() == up.as_str() {
                break wire::open(m.payload(), &key).unwrap().body;
            }
        };
        assert_eq!(
            ack,
            Body::Ack(wire::DownlinkAck {
                sequence: 1,
                outcome: AckOutcome::Applied
            })
        );
    }
}
