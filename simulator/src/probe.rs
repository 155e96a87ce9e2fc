//! The latency probe of `simulator load`: a tunnel gas monitor on a connection of its own that
//! alternates every quarter second between an alarming gas reading (a value unique to each
//! raise, which pairs it with its alert event) and a normal one, and a watcher that times each
//! raise from the probe's publish to its raised event on `cs/v1/alerts/events`.
//!
//! The watcher also subscribes to the probe's own topic, as a second subscriber beside the
//! gateway, so every sample splits where the broker hands the report on:
//!
//! ```text
//! probe publish ──▶ broker ──▶ watcher (a subscriber beside the gateway)    "to broker"
//!                         └──▶ gateway ──▶ broker ──▶ watcher (alert event) "from broker"
//! ```
//!
//! The probe and the watcher run on a thread and a runtime of their own. In the field the probe
//! is a device and the watcher an operator's console, neither behind the load generator; in the
//! load generator's runtime both waited for its workers, which are busy with the load's
//! connections, and that wait was counted as the system's latency.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use wire::{Quantity, Trigger};

use crate::clock::now_ms;
use crate::load_site::{PROBE_SUBJECT, ZONE, boot, client, config, probe_id};

/// How often the probe sends: raise, resolve, raise, … (two raises a second, 240 samples in a
/// two-minute run).
const EVERY: Duration = Duration::from_millis(250);

/// How long the watcher waits for the last raise's event after the run.
const LAST_EVENT: Duration = Duration::from_secs(2);

/// How many distinct gas values the probe raises with before they repeat (over half an hour
/// of raises at two a second).
const MARKS: u32 = 5000;

/// The gas value of the probe's raise number `mark`: 22.0, 22.0005, … (all inside the alarm
/// grade, 20–25 %LEL), so every raised event names the report that caused it.
fn value(mark: u32) -> f32 {
    22.0 + mark as f32 / 2000.0
}

/// The raise number of a probe value (the inverse of [`value`]).
fn mark_of(value: f64) -> u32 {
    ((value - 22.0) * 2000.0).round().max(0.0) as u32
}

/// What the probe measured: one entry per raise whose event came back.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Frames the probe published and the broker acknowledged (raises and resolutions): the
    /// gateway counts them as received.
    pub published: u64,
    /// Publish → raised event, ms, sorted.
    pub total: Vec<f64>,
    /// Publish → the broker's delivery of the report to the watcher, ms, sorted.
    pub to_broker: Vec<f64>,
    /// That delivery → raised event, ms, sorted.
    pub from_broker: Vec<f64>,
}

/// One raise sent: its mark, the frame's sequence number, and when it was handed to the client.
#[derive(Debug, Clone, Copy)]
struct Sent {
    mark: u32,
    sequence: u32,
    at: Instant,
}

/// A probe running on its own thread.
#[derive(Debug)]
pub struct Probe {
    thread: std::thread::JoinHandle<anyhow::Result<Samples>>,
}

impl Probe {
    /// Connects the probe and its watcher to the broker, and returns once both are up; the
    /// probe then sends for `duration`.
    pub async fn start(
        host: &str,
        port: u16,
        run_id: u32,
        duration: Duration,
    ) -> anyhow::Result<Probe> {
        let host = host.to_owned();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("load-probe".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(run(host, port, run_id, duration, ready_tx))
            })
            .context("cannot start the probe's thread")?;
        match ready_rx.await {
            Ok(()) => Ok(Probe { thread }),
            // The thread ended before it was up: its error says why.
            Err(_) => Err(match thread.join() {
                Ok(Err(e)) => e,
                _ => anyhow::anyhow!("the probe's thread ended before it was up"),
            }),
        }
    }

    /// Waits for the probe's run to end and pairs what it saw.
    pub async fn finish(self) -> anyhow::Result<Samples> {
        tokio::task::spawn_blocking(move || self.thread.join())
            .await
            .context("waiting for the probe")?
            .map_err(|_| anyhow::anyhow!("the probe's thread panicked"))?
    }
}

async fn run(
    host: String,
    port: u16,
    run_id: u32,
    duration: Duration,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<Samples> {
    let topic = format!("cs/v1/{ZONE}/tunnel-gas/{}/up", probe_id(0));
    let acked = Arc::new(AtomicU64::new(0));
    let probe_client = client(
        &host,
        port,
        &format!("sim-load-{run_id:08x}-probe"),
        16,
        acked.clone(),
    )
    .await?;
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let _watcher = watch(&host, port, run_id, &topic, seen.clone()).await?;
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as u32;
    let mut probe = boot(config(&probe_id(0), "tunnel-gas")?, epoch);
    let _ = ready.send(());

    let started = Instant::now();
    let mut sent: Vec<Sent> = Vec::new();
    let mut published = 0u64;
    let (mut raises, mut raise) = (0u32, true);
    let mut interval = tokio::time::interval_at((started + EVERY).into(), EVERY);
    while started.elapsed() < duration {
        interval.tick().await;
        let mark = raises % MARKS;
        let gas = if raise { value(mark) } else { 2.0 };
        let body = node::pipe::report(Trigger::Threshold, &[(Quantity::Gas, gas)]);
        let uptime = started.elapsed().as_millis() as u64;
        probe.set_clock(now_ms() as u64, uptime);
        if probe.report(&body, uptime, true).is_ok()
            && let Some(q) = probe.queue.pop()
        {
            let sequence = wire::Frame::new_checked(&q.frame).map_or(0, |f| f.sequence());
            let at = Instant::now();
            if probe_client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, q.frame.to_vec())
                .await
                .is_ok()
            {
                published += 1;
                if raise {
                    sent.push(Sent { mark, sequence, at });
                    raises += 1;
                }
            }
        }
        raise = !raise;
    }
    // The broker's PUBACKs for every report (this runtime, and the probe's connection with it,
    // ends when this returns), and the last raise's event, if they are still on their way.
    let last = Instant::now() + LAST_EVENT;
    while Instant::now() < last {
        let event = match (sent.last(), seen.lock()) {
            (Some(s), Ok(seen)) => seen.events.iter().any(|(m, at)| *m == s.mark && *at > s.at),
            _ => true,
        };
        if event && acked.load(Ordering::Relaxed) >= published {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = seen
        .lock()
        .map(|s| s.clone())
        .map_err(|_| anyhow::anyhow!("the watcher's record is poisoned"))?;
    let mut samples = pair(&sent, &seen);
    samples.published = acked.load(Ordering::Relaxed).min(published);
    Ok(samples)
}

/// What the watcher saw: raised events of the probe by mark, and the broker's deliveries of the
/// probe's reports by sequence number.
#[derive(Debug, Clone, Default)]
struct Seen {
    events: Vec<(u32, Instant)>,
    delivered: HashMap<u32, Instant>,
}

/// Subscribes to the alert events and to the probe's topic, and records both into `seen`.
async fn watch(
    host: &str,
    port: u16,
    run_id: u32,
    probe_topic: &str,
    seen: Arc<std::sync::Mutex<Seen>>,
) -> anyhow::Result<AsyncClient> {
    let mut o = MqttOptions::new(format!("sim-load-{run_id:08x}-watch"), host, port);
    o.set_keep_alive(Duration::from_secs(60));
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    o.set_network_options(net);
    let (w, mut el) = AsyncClient::new(o, 100);
    w.subscribe("cs/v1/alerts/events", QoS::AtMostOnce).await?;
    w.subscribe(probe_topic, QoS::AtMostOnce).await?;
    let probe_topic = probe_topic.as_bytes().to_vec();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    let _ = ready_tx.try_send(());
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let at = Instant::now();
                    let Ok(mut s) = seen.lock() else { break };
                    if p.topic == probe_topic {
                        if let Ok(f) = wire::Frame::new_checked(&p.payload) {
                            s.delivered.entry(f.sequence()).or_insert(at);
                        }
                        continue;
                    }
                    let e: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    if e["kind"] == "raised"
                        && e["alert"]["subject"] == PROBE_SUBJECT
                        && let Some(value) = e["alert"]["value"].as_f64()
                    {
                        s.events.push((mark_of(value), at));
                    }
                }
                Ok(_) => {}
                // Every handle dropped: this connection's work is over.
                Err(rumqttc::v5::ConnectionError::RequestsDone) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .context("the alert watcher could not subscribe")?;
    }
    Ok(w)
}

/// Pairs each raise sent with the first raised event of the same mark after it (a missed event
/// costs one sample, not the pairing of every later one), and splits it at the broker's
/// delivery of the report to the watcher where that was seen.
fn pair(sent: &[Sent], seen: &Seen) -> Samples {
    let mut by_mark: HashMap<u32, VecDeque<Instant>> = HashMap::new();
    for (mark, at) in &seen.events {
        by_mark.entry(*mark).or_default().push_back(*at);
    }
    let ms = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64() * 1000.0;
    let mut samples = Samples::default();
    for s in sent {
        let Some(queue) = by_mark.get_mut(&s.mark) else {
            continue;
        };
        while queue.front().is_some_and(|at| *at < s.at) {
            queue.pop_front();
        }
        let Some(alerted) = queue.pop_front() else {
            continue;
        };
        samples.total.push(ms(s.at, alerted));
        if let Some(delivered) = seen.delivered.get(&s.sequence) {
            samples.to_broker.push(ms(s.at, *delivered));
            samples.from_broker.push(ms(*delivered, alerted));
        }
    }
    for v in [
        &mut samples.total,
        &mut samples.to_broker,
        &mut samples.from_broker,
    ] {
        v.sort_by(f64::total_cmp);
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_value_maps_back_to_its_mark_through_f32() {
        for mark in 0..MARKS {
            let v = value(mark);
            assert!((20.0..25.0).contains(&v), "{v} leaves the alarm grade");
            assert_eq!(mark_of(f64::from(v)), mark);
        }
    }

    #[test]
    fn a_missed_event_costs_one_sample_and_not_the_pairing_of_the_rest() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let sent = |mark, sequence, ms| Sent {
            mark,
            sequence,
            at: at(ms),
        };
        let sent = [sent(0, 10, 0), sent(1, 12, 1000), sent(2, 14, 2000)];
        // The raise of mark 1 never came back; a stale event of mark 2 precedes its send.
        let seen = Seen {
            events: vec![(0, at(5)), (2, at(1500)), (2, at(2007))],
            delivered: HashMap::from([(10, at(1)), (14, at(2003))]),
        };
        let samples = pair(&sent, &seen);
        assert_eq!(samples.total, [5.0, 7.0]);
        assert_eq!(samples.to_broker, [1.0, 3.0]);
        assert_eq!(samples.from_broker, [4.0, 4.0]);
    }

    #[test]
    fn a_sample_whose_delivery_was_not_seen_counts_in_the_total_only() {
        let t0 = Instant::now();
        let sent = [Sent {
            mark: 3,
            sequence: 7,
            at: t0,
        }];
        let seen = Seen {
            events: vec![(3, t0 + Duration::from_millis(2))],
            delivered: HashMap::new(),
        };
        let samples = pair(&sent, &seen);
        assert_eq!(samples.total, [2.0]);
        assert!(samples.to_broker.is_empty() && samples.from_broker.is_empty());
    }
}
