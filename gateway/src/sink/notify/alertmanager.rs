//! Prometheus Alertmanager: `POST /api/v2/alerts`; open alerts are re-sent every `resend_s`
//! (Alertmanager resolves what is not re-sent), resolutions carry `endsAt`.

use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use std::time::Duration;

use serde_json::json;

use super::DeliveryError;
use crate::alert::Engine;
use crate::alert::model::{Alert, AlertEvent, EventKind, Status};

use super::AlertmanagerSection;

/// Alertmanager (API v2).
pub struct AlertmanagerNotifier {
    pub(super) section: AlertmanagerSection,
    http: reqwest::Client,
    gateway_id: String,
    engine: Arc<Mutex<Engine>>,
    last_resend: Option<std::time::Instant>,
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

impl AlertmanagerNotifier {
    /// A notifier posting to `section.url`.
    pub fn new(
        section: AlertmanagerSection,
        gateway_id: &str,
        engine: Arc<Mutex<Engine>>,
    ) -> anyhow::Result<AlertmanagerNotifier> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(section.timeout_ms))
            .build()?;
        Ok(AlertmanagerNotifier {
            section,
            http,
            gateway_id: gateway_id.to_owned(),
            engine,
            last_resend: None,
        })
    }

    /// One Alertmanager alert. Labels identify it: `alertname` (the rule), `category`,
    /// `subject`, `zone`, `severity`, `gateway`.
    pub fn am_alert(gateway: &str, a: &Alert, severity: &str, ends_ms: i64) -> serde_json::Value {
        let mut alert = json!({
            "labels": {
                "alertname": a.rule,
                "category": a.category.name(),
                "subject": a.subject,
                "zone": a.zone,
                "severity": severity,
                "gateway": gateway,
            },
            "annotations": {
                "summary": a.summary,
                "label": a.label,
                "subject_name": a.subject_name,
                "value": a.value.to_string(),
                "threshold": a.threshold.to_string(),
                "alert_id": a.id,
            },
            "startsAt": rfc3339(a.started_ms),
            "endsAt": rfc3339(ends_ms),
        });
        // Where to send the crowd, which roads to avoid or take: one line, as the alert had it
        // when it was sent.
        if let Some(advice) = &a.advice {
            alert["annotations"]["advice"] = json!(advice.text);
        }
        if let Some(calendar) = &a.calendar {
            alert["annotations"]["calendar"] = json!(calendar);
        }
        if let Some(d) = &a.duty {
            let who = d.on_duty.as_ref().unwrap_or(&d.head);
            alert["annotations"]["grid"] = json!(format!("{} ({})", d.grid_name, d.unit));
            alert["annotations"]["on_duty"] = json!(format!("{} {}", who.name, who.phone));
        }
        alert
    }

    fn valid_until(&self) -> i64 {
        crate::clock::now_ms() + 3 * self.section.resend_s as i64 * 1000
    }

    async fn post(&self, alerts: Vec<serde_json::Value>) -> Result<(), DeliveryError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let url = format!("{}/api/v2/alerts", self.section.url.trim_end_matches('/'));
        let response = self
            .http
            .post(&url)
            .json(&alerts)
            .send()
            .await
            .map_err(|e| DeliveryError::Transport(format!("{url}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(DeliveryError::Refused(format!(
            "{url}: HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        )))
    }

    pub(super) async fn deliver(
        &mut self,
        events: &[(i64, AlertEvent)],
    ) -> Result<(), DeliveryError> {
        let mut alerts = Vec::new();
        // A retrospective episode is over, and an assignment or a comment changes no alarm:
        // Alertmanager is for live alarms.
        let live = events.iter().filter(|(_, e)| {
            !matches!(
                e.kind,
                EventKind::Retrospective
                    | EventKind::Assigned
                    | EventKind::Commented
                    | EventKind::EscalatedTo
            )
        });
        for (_, e) in live {
            let a = &e.alert;
            // An escalation changes the severity label: the lower grade's alert ends now.
            if let Some(before) = &e.previous_severity {
                alerts.push(Self::am_alert(&self.gateway_id, a, before, e.at_ms));
            }
            let ends = match a.status {
                Status::Resolved => a.resolved_ms.unwrap_or(e.at_ms),
                Status::Firing => self.valid_until(),
            };
            alerts.push(Self::am_alert(&self.gateway_id, a, &a.severity, ends));
        }
        self.post(alerts).await
    }

    pub(super) async fn resend(&mut self) -> Result<(), DeliveryError> {
        let every = Duration::from_secs(self.section.resend_s);
        if self.last_resend.is_some_and(|t| t.elapsed() < every) {
            return Ok(());
        }
        let open = self
            .engine
            .lock()
            .map(|e| e.open_alerts())
            .unwrap_or_default();
        let until = self.valid_until();
        let alerts = open
            .iter()
            .map(|a| Self::am_alert(&self.gateway_id, a, &a.severity, until))
            .collect();
        self.post(alerts).await?;
        self.last_resend = Some(std::time::Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::model::EventKind;
    use crate::sink::notify::tests::event;

    #[test]
    fn alertmanager_alerts_carry_the_documented_labels_and_end_times() {
        let e = event(EventKind::Raised);
        let a = AlertmanagerNotifier::am_alert("gw-1", &e.alert, "yellow", 1_764_200_060_000);
        assert_eq!(
            a["labels"],
            json!({"alertname": "crowd.occupancy", "category": "crowd", "subject": "S4",
                   "zone": "360702", "severity": "yellow", "gateway": "gw-1"})
        );
        assert_eq!(a["startsAt"], "2025-11-26T23:33:20.000Z");
        assert_eq!(a["endsAt"], "2025-11-26T23:34:20.000Z");
    }
}
