//! Webhooks: generic JSON (the event), DingTalk or WeCom robot markdown.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;

use super::{DeliveryError, Envelope};
use crate::alert::model::{AlertEvent, EventKind};

use super::{WebhookFormat, WebhookSection};

/// A webhook.
pub struct WebhookNotifier {
    pub(super) section: WebhookSection,
    http: reqwest::Client,
    secret: Option<String>,
}

impl WebhookNotifier {
    /// A webhook notifier; the DingTalk secret is read from its environment variable now.
    pub fn new(section: WebhookSection) -> anyhow::Result<WebhookNotifier> {
        let secret = match &section.secret_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "webhook \"{}\": environment variable {var} (secret_env) is not set",
                    section.name
                )
            })?),
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(section.timeout_ms))
            .build()?;
        Ok(WebhookNotifier {
            section,
            http,
            secret,
        })
    }

    fn url(&self) -> String {
        let Some(secret) = &self.secret else {
            return self.section.url.clone();
        };
        // DingTalk 加签: HMAC-SHA256 of "{timestamp}\n{secret}", base64, URL-encoded.
        use base64::Engine as _;
        use hmac::Mac as _;
        let ts = crate::clock::now_ms();
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
            return self.section.url.clone(); // HMAC takes keys of any length
        };
        mac.update(format!("{ts}\n{secret}").as_bytes());
        let sign = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let sep = if self.section.url.contains('?') {
            '&'
        } else {
            '?'
        };
        let sign: String = url::form_urlencoded::byte_serialize(sign.as_bytes()).collect();
        format!("{}{sep}timestamp={ts}&sign={sign}", self.section.url)
    }

    /// The body of one event in this webhook's format.
    pub fn body(format: WebhookFormat, seq: i64, event: &AlertEvent) -> serde_json::Value {
        let a = &event.alert;
        let text = markdown(event);
        match format {
            WebhookFormat::Generic => json!(Envelope::new(seq, event)),
            // The person it calls is @-ed: DingTalk rings them when their number is both in
            // `atMobiles` and in the text; WeCom's markdown cannot @ a number, so a call goes
            // as a text message with `mentioned_mobile_list`.
            WebhookFormat::Dingtalk => {
                let mobiles: Vec<&str> = called(a).into_iter().collect();
                let text = mobiles.iter().fold(text, |t, m| format!("{t}\n\n@{m}"));
                json!({
                    "msgtype": "markdown",
                    "markdown": { "title": format!("[{}] {}", a.label, a.subject_name), "text": text },
                    "at": { "atMobiles": mobiles, "isAtAll": false },
                })
            }
            WebhookFormat::Wecom => match called(a) {
                Some(mobile) => json!({
                    "msgtype": "text",
                    "text": { "content": text, "mentioned_mobile_list": [mobile] },
                }),
                None => json!({
                    "msgtype": "markdown",
                    "markdown": { "content": text },
                }),
            },
        }
    }

    pub(super) async fn deliver(
        &mut self,
        events: &[(i64, AlertEvent)],
    ) -> Result<(), DeliveryError> {
        // A retrospective episode is over: no live alarm for the robots. A unit's robot hears
        // only its grids' alerts.
        let grids = &self.section.grids;
        let live = events.iter().filter(|(_, e)| {
            e.kind != EventKind::Retrospective
                && (grids.is_empty()
                    || e.alert
                        .duty
                        .as_ref()
                        .is_some_and(|d| grids.contains(&d.grid)))
        });
        for (seq, event) in live {
            let body = Self::body(self.section.format, *seq, event);
            let response = self
                .http
                .post(self.url())
                .json(&body)
                .send()
                .await
                .map_err(|e| DeliveryError::Transport(format!("{}: {e}", self.section.url)))?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(DeliveryError::Refused(format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                )));
            }
            if self.section.format != WebhookFormat::Generic {
                // Robots answer 200 with {"errcode": N, "errmsg": "..."}.
                let reply: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let code = reply.get("errcode").and_then(|c| c.as_i64()).unwrap_or(-1);
                if code != 0 {
                    return Err(DeliveryError::Refused(format!(
                        "robot errcode {code}: {text}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The mobile number an event calls: the step's person, or the person on duty (the unit's head
/// when nobody is).
fn called(a: &crate::alert::Alert) -> Option<&str> {
    a.escalation
        .as_ref()
        .and_then(|e| e.to.as_ref())
        .or(a
            .duty
            .as_ref()
            .map(|d| d.on_duty.as_ref().unwrap_or(&d.head)))
        .map(|p| p.phone.as_str())
}

/// A markdown message for robots: grade, subject, what and when (Beijing time).
pub fn markdown(event: &AlertEvent) -> String {
    let a = &event.alert;
    let what = match event.kind {
        EventKind::Raised => "告警 raised",
        EventKind::Escalated => "升级 escalated",
        EventKind::Renotified => "仍在告警 still firing",
        EventKind::Resolved => "解除 resolved",
        EventKind::Acknowledged => "已确认 acknowledged",
        EventKind::Retrospective => "事后发现 retrospective",
        EventKind::Assigned => "已指派 assigned",
        EventKind::Commented => "备注 commented",
        EventKind::EscalatedTo => "无人确认，已升级 escalated to the next person",
    };
    let at = humantime::format_rfc3339_seconds(
        UNIX_EPOCH + Duration::from_millis((event.at_ms + 8 * 3_600_000).max(0) as u64),
    )
    .to_string()
    .replace('Z', "+08:00");
    let mut text = format!(
        "### [{}] {} — {}\n\n{}\n\n- rule: {}\n- zone: {}\n- at: {}\n- alert: {}",
        a.label, a.subject_name, what, a.summary, a.rule, a.zone, at, a.id
    );
    if let Some(d) = &a.duty {
        let who = match &d.on_duty {
            Some(p) => format!("{} {}", p.name, p.phone),
            None => format!("无人值班，{} {}", d.head.name, d.head.phone),
        };
        text.push_str(&format!(
            "\n- 网格: {}（{}）\n- 值班: {who}",
            d.grid_name, d.unit
        ));
    }
    if event.kind == EventKind::EscalatedTo
        && let Some(to) = a.escalation.as_ref().and_then(|e| e.to.as_ref())
    {
        text.push_str(&format!("\n- 升级至: {} {}", to.name, to.phone));
    }
    if let Some(advice) = &a.advice {
        text.push_str(&format!("\n- {}", advice.text));
    }
    if let Some(c) = &a.calendar {
        text.push_str(&format!("\n- 节假日: {c}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::notify::tests::event;

    #[test]
    fn robot_bodies_follow_the_dingtalk_and_wecom_formats() {
        let e = event(EventKind::Raised);
        let d = WebhookNotifier::body(WebhookFormat::Dingtalk, 7, &e);
        assert_eq!(d["msgtype"], "markdown");
        assert_eq!(d["markdown"]["title"], "[黄] 通天岩");
        let text = d["markdown"]["text"].as_str().unwrap();
        assert!(text.contains("告警 raised"), "{text}");
        assert!(text.contains("2025-11-27T07:33:20+08:00"), "{text}");
        let w = WebhookNotifier::body(WebhookFormat::Wecom, 7, &e);
        assert_eq!(w["markdown"]["content"], d["markdown"]["text"]);
        let g = WebhookNotifier::body(WebhookFormat::Generic, 7, &e);
        assert_eq!(g["seq"], 7);
        assert_eq!(g["kind"], "raised");
        assert_eq!(g["alert"]["subject"], "S4");
    }
    #[test]
    fn the_robots_at_the_person_on_duty_and_carry_the_advice() {
        use crate::alert::duty::Route;
        use device_profiles::grid::Person;
        let mut e = event(EventKind::Raised);
        let person = |name: &str, phone: &str| Person {
            name: name.into(),
            phone: phone.into(),
        };
        e.alert.duty = Some(Route {
            grid: "zg-west-scenic".into(),
            grid_name: "城西景区网格".into(),
            unit: "章贡区文化广电新闻出版旅游局".into(),
            on_duty: Some(person("王丽", "13900000021")),
            supervisor: Some(person("陈科长", "13900000022")),
            head: person("刘局长", "13800000001"),
        });
        let d = WebhookNotifier::body(WebhookFormat::Dingtalk, 7, &e);
        assert_eq!(d["at"]["atMobiles"][0], "13900000021");
        let text = d["markdown"]["text"].as_str().unwrap();
        assert!(text.ends_with("@13900000021"), "{text}");
        assert!(text.contains("- 值班: 王丽 13900000021"), "{text}");
        let w = WebhookNotifier::body(WebhookFormat::Wecom, 7, &e);
        assert_eq!(w["msgtype"], "text");
        assert_eq!(w["text"]["mentioned_mobile_list"][0], "13900000021");
        // Nobody on duty: the head is called.
        e.alert.duty.as_mut().unwrap().on_duty = None;
        let d = WebhookNotifier::body(WebhookFormat::Dingtalk, 7, &e);
        assert_eq!(d["at"]["atMobiles"][0], "13800000001");
    }

    #[test]
    fn a_dingtalk_secret_signs_the_url() {
        let mut w = WebhookNotifier::new(WebhookSection {
            name: "duty".into(),
            url: "https://oapi.dingtalk.com/robot/send?access_token=abc".into(),
            format: WebhookFormat::Dingtalk,
            secret_env: None,
            grids: Vec::new(),
            timeout_ms: 1000,
        })
        .unwrap();
        assert_eq!(
            w.url(),
            "https://oapi.dingtalk.com/robot/send?access_token=abc"
        );
        w.secret = Some("SEC123".into());
        let url = w.url();
        let (_, query) = url.split_once("&timestamp=").unwrap();
        let (ts, sign) = query.split_once("&sign=").unwrap();
        // The signature is HMAC-SHA256 of "{timestamp}\n{secret}" keyed by the secret.
        use base64::Engine as _;
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"SEC123").unwrap();
        mac.update(format!("{ts}\nSEC123").as_bytes());
        let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let decoded: String = url::form_urlencoded::parse(format!("s={sign}").as_bytes())
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(decoded, want);
    }
    #[test]
    fn a_missing_secret_variable_is_named() {
        let e = WebhookNotifier::new(WebhookSection {
            name: "duty".into(),
            url: "https://example.invalid/".into(),
            format: WebhookFormat::Dingtalk,
            secret_env: Some("CITYSENSE_TEST_SURELY_UNSET".into()),
            timeout_ms: 1000,
            grids: Vec::new(),
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "webhook \"duty\": environment variable CITYSENSE_TEST_SURELY_UNSET (secret_env) is not set"
        );
    }
}
