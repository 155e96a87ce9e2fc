//! MQTT: every event on `cs/v1/alerts/events` (QoS 1), and the subject's current state, retained,
//! on `cs/v1/alerts/{zone}/{category}/{subject}`; its own connection (`{gateway id}-alerts`), so
//! the ingest session is never held up. A batch counts as delivered when every PUBACK came back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::{DeliveryError, Envelope};
use crate::alert::Engine;
use crate::alert::model::{Alert, AlertEvent, EventKind};
use crate::net::mqtt::{ConfirmedPublisher, Message, PublishError};

use super::BATCH;

/// MQTT: its own connection; a batch counts as delivered when every PUBACK came back.
pub struct MqttNotifier {
    pub(super) publisher: ConfirmedPublisher,
    engine: Arc<Mutex<Engine>>,
}

impl MqttNotifier {
    /// A notifier connecting with `options` (client id and session of its own).
    pub fn new(options: rumqttc::v5::MqttOptions, engine: Arc<Mutex<Engine>>) -> MqttNotifier {
        MqttNotifier {
            publisher: ConfirmedPublisher::new(options, 2 * BATCH, Duration::from_secs(10)),
            engine,
        }
    }

    /// The retained state of one subject: every open alert it has in the category.
    fn subject_state(&self, alert: &Alert) -> serde_json::Value {
        let open: Vec<Alert> = self
            .engine
            .lock()
            .map(|e| {
                e.open_alerts()
                    .into_iter()
                    .filter(|a| a.category == alert.category && a.subject == alert.subject)
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "zone": alert.zone,
            "category": alert.category,
            "subject": alert.subject,
            "subject_name": alert.subject_name,
            "firing": open.len(),
            "alerts": open,
            "updated_ms": alert.updated_ms,
        })
    }

    pub(super) async fn deliver(
        &mut self,
        events: &[(i64, AlertEvent)],
    ) -> Result<(), DeliveryError> {
        let mut messages = Vec::with_capacity(events.len() * 2);
        for (seq, event) in events {
            let body = serde_json::to_vec(&Envelope::new(*seq, event))
                .map_err(|e| DeliveryError::Refused(e.to_string()))?;
            messages.push(Message {
                topic: "cs/v1/alerts/events".to_owned(),
                payload: body,
                retain: false,
                properties: None,
            });
            // The record of a retrospective episode goes on the event stream only: the subject's
            // current state is not touched.
            if event.kind == EventKind::Retrospective {
                continue;
            }
            let a = &event.alert;
            let topic = format!(
                "cs/v1/alerts/{}/{}/{}",
                a.zone,
                a.category.name(),
                a.subject
            );
            let state = serde_json::to_vec(&self.subject_state(a))
                .map_err(|e| DeliveryError::Refused(e.to_string()))?;
            messages.push(Message {
                topic,
                payload: state,
                retain: true,
                properties: None,
            });
        }
        self.publisher
            .publish_all(messages)
            .await
            .map_err(|e| match e {
                PublishError::Refused(r) => DeliveryError::Refused(r),
                other => DeliveryError::Transport(other.to_string()),
            })
    }
}
