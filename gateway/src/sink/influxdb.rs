//! The InfluxDB sink: points from the local store, written through the v2 write API
//! (`influxdb2` crate; InfluxDB 2, or VictoriaMetrics, which accepts the same API). The
//! [sink runtime](crate::sink::runtime) drains the store into it with its own cursor.
//!
//! The cursor advances only after the server accepted a batch (2xx). Failures by class
//! ([`classify`] says which; the runtime acts on it):
//! - **400** (bad lines): the batch is split until the refused lines are alone; those go to the
//!   store's sink dead letters with the server's reason, the rest is delivered.
//! - **413** (too large): the batch is split and retried.
//! - **401, 403, 404** (credentials, org or bucket): the data stays stored, the sink reports
//!   not ready with the server's reason, and it retries slowly.
//! - **429, 5xx, timeouts, refused connections**: exponential backoff with jitter, same batch.
//!
//! Points carry deterministic tags and timestamps, so a batch written twice (a crash between
//! the server's 2xx and the cursor's commit) overwrites itself.
//!
//! When (the runtime's batching by age, with `flush_ms` as its gap): a commit that holds points
//! wakes the sink, which writes what is pending at once unless it wrote less than `flush_ms` ago; then it waits for the rest of that gap, and the points
//! committed meanwhile go in the same write. So a point waits at most `flush_ms` for its write,
//! a point that comes alone is written as soon as it is committed, and an idle sink looks at the
//! store only every 5 s. (A timer alone made every point wait for the next tick, up to
//! `flush_ms`, and the server's own delay in making a write visible came on top:
//! VictoriaMetrics takes up to a second.)

use std::sync::Arc;
use std::time::Duration;

use influxdb2::api::write::TimestampPrecision;
use influxdb2::{Client, ClientBuilder, RequestError};
use serde::Deserialize;
use tokio::sync::watch;

use super::{Failure, Feed, Meters, NotReady, Options, Read, Sink};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// The cursor's name in the store.
pub const SINK: &str = "influxdb";

/// `[influxdb]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxSection {
    /// Base URL, e.g. `http://127.0.0.1:8086` (InfluxDB) or `http://127.0.0.1:8428` (VictoriaMetrics).
    pub url: String,
    /// Organisation.
    pub org: String,
    /// Bucket.
    pub bucket: String,
    /// Largest batch in lines (InfluxDB's guidance: 5,000).
    #[serde(default = "default_batch")]
    pub batch_lines: usize,
    /// Shortest time between two writes, in milliseconds: the most a point waits for its
    /// write. A commit with points wakes the sink, so a point that comes alone is written at once.
    #[serde(default = "default_flush")]
    pub flush_ms: u64,
    /// Time allowed for one write request, in milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Let the HTTP client negotiate gzip with the server.
    #[serde(default = "default_gzip")]
    pub gzip: bool,
    /// The API token: from `CITYSENSE_INFLUX_TOKEN`, never from the file.
    #[serde(skip)]
    pub token: String,
}

fn default_gzip() -> bool {
    true
}
fn default_batch() -> usize {
    5000
}
/// The default `flush_ms`: at most five writes a second.
pub const DEFAULT_FLUSH_MS: u64 = 200;

fn default_flush() -> u64 {
    DEFAULT_FLUSH_MS
}
fn default_timeout() -> u64 {
    10_000
}

impl InfluxSection {
    /// Checks values that types alone cannot; returns `(key, reason)` pairs.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let key = |k: &str| format!("influxdb.{k}");
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => p.push((
                key("url"),
                format!(
                    "\"{}\" must be http:// or https://, not {}:",
                    self.url,
                    u.scheme()
                ),
            )),
            Err(e) => p.push((key("url"), format!("\"{}\" is not a URL: {e}", self.url))),
        }
        if self.batch_lines == 0 {
            p.push((key("batch_lines"), "batch_lines must be > 0".into()));
        }
        if self.flush_ms == 0 {
            p.push((
                key("flush_ms"),
                "flush_ms must be > 0: it is the shortest time between two writes".into(),
            ));
        }
        if self.timeout_ms == 0 {
            p.push((key("timeout_ms"), "timeout_ms must be > 0".into()));
        }
        p
    }
}

/// Classifies the server's answer (see the module docs).
pub fn classify(e: RequestError) -> Failure {
    match e {
        RequestError::Http { status, text } => match status.as_u16() {
            400 => Failure::Rejected(text),
            413 => Failure::TooLarge,
            code @ (401 | 403 | 404) => Failure::NeedsOperator {
                class: "refused",
                reason: format!("InfluxDB answered {code}: {text}"),
            },
            code => Failure::Retry {
                class: "transient",
                reason: format!("HTTP {code}: {text}"),
                after: None,
            },
        },
        other => Failure::Retry {
            class: "transient",
            reason: other.to_string(),
            after: None,
        },
    }
}

/// Builds the client.
pub fn client(cfg: &InfluxSection) -> anyhow::Result<Client> {
    let http = reqwest::ClientBuilder::new()
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .connect_timeout(Duration::from_secs(5));
    Ok(
        ClientBuilder::with_builder(http, cfg.url.trim_end_matches('/'), &cfg.org, &cfg.token)
            .gzip(cfg.gzip)
            .build()?,
    )
}

/// The sink: line protocol to the v2 write API.
#[derive(Debug)]
pub struct InfluxSink {
    client: Client,
    cfg: InfluxSection,
}

impl InfluxSink {
    /// A sink writing to the server of `cfg`.
    pub fn new(cfg: &InfluxSection) -> anyhow::Result<InfluxSink> {
        Ok(InfluxSink {
            client: client(cfg)?,
            cfg: cfg.clone(),
        })
    }
}

impl Sink for InfluxSink {
    /// A line of line protocol.
    type Item = String;

    async fn deliver(&mut self, batch: &[(i64, String)]) -> Result<(), Failure> {
        let body: String = batch.iter().map(|(_, l)| l.as_str()).collect();
        self.client
            .write_line_protocol_with_precision(
                &self.cfg.org,
                &self.cfg.bucket,
                body,
                TimestampPrecision::Milliseconds,
            )
            .await
            .map_err(classify)
    }

    fn dead_letter(line: &String) -> String {
        line.clone()
    }

    fn endpoint(&self) -> String {
        self.cfg.url.clone()
    }
}

/// The points, as line protocol.
#[derive(Debug)]
pub struct Lines;

impl Feed for Lines {
    type Item = String;
    type Wake = ();

    fn newest(&self, store: &Store) -> Result<i64, StoreError> {
        store.last_point_id()
    }

    fn read(
        &self,
        store: &Store,
        after: i64,
        until: i64,
        limit: usize,
    ) -> Result<Read<String>, StoreError> {
        let mut lines = store.lines_after(after, limit)?;
        lines.retain(|(id, _)| *id <= until);
        Ok(Read::of(lines, until, limit))
    }
}

/// Runs the sink until `shutdown`; `points` changes whenever a commit held points.
pub async fn run(
    cfg: InfluxSection,
    store: Arc<Store>,
    metrics: Metrics,
    not_ready: NotReady,
    points: watch::Receiver<()>,
    shutdown: watch::Receiver<bool>,
) {
    let sink = match InfluxSink::new(&cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "InfluxDB sink cannot start; points stay in the local store");
            if let Ok(mut m) = not_ready.lock() {
                m.insert(SINK.into(), format!("cannot build the client: {e}"));
            }
            return;
        }
    };
    let options = Options {
        batch: cfg.batch_lines,
        gap: Duration::from_millis(cfg.flush_ms),
        ..Options::default()
    };
    let meters = Meters {
        display: "InfluxDB".into(),
        cursor: SINK.into(),
        ready_name: Some(SINK.into()),
        ready: Some(metrics.sink_ready.with_label_values(&[SINK])),
        pending: metrics.sink_pending.with_label_values(&[SINK]),
        delivered: metrics.sink_written.with_label_values(&[SINK]),
        errors: metrics.sink_errors.clone(),
        errors_label: SINK.into(),
        rejected_class: "bad_lines",
        catching_up: None,
        oldest_unsent: None,
        delivery_seconds: None,
    };
    super::run(
        sink,
        Arc::new(Lines),
        options,
        meters,
        store,
        not_ready,
        points,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU16, Ordering};

    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;

    use super::*;
    use crate::sink::runtime::deliver_isolating;

    /// A mock write endpoint: answers `status` (0 = by content), records accepted lines.
    #[derive(Clone, Default)]
    struct Mock {
        status: Arc<AtomicU16>,
        accepted: Arc<Mutex<Vec<String>>>,
        max_lines: usize,
        stall: bool,
    }

    async fn write_endpoint(State(m): State<Mock>, body: String) -> (StatusCode, String) {
        if m.stall {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        let fixed = m.status.load(Ordering::SeqCst);
        if fixed != 0 {
            return (
                StatusCode::from_u16(fixed).unwrap(),
                format!("mock {fixed}"),
            );
        }
        let lines: Vec<&str> = body.lines().collect();
        if lines.len() > m.max_lines {
            return (StatusCode::PAYLOAD_TOO_LARGE, "too large".into());
        }
        if let Some(bad) = lines.iter().find(|l| l.contains("bad")) {
            return (StatusCode::BAD_REQUEST, format!("unable to parse '{bad}'"));
        }
        m.accepted
            .lock()
            .unwrap()
            .extend(lines.iter().map(|l| l.to_string()));
        (StatusCode::NO_CONTENT, String::new())
    }

    async fn serve(mock: Mock) -> SocketAddr {
        let app = Router::new()
            .route("/api/v2/write", post(write_endpoint))
            .with_state(mock);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn cfg(addr: SocketAddr) -> InfluxSection {
        InfluxSection {
            url: format!("http://{addr}"),
            org: "city".into(),
            bucket: "sense".into(),
            batch_lines: 5000,
            flush_ms: 100,
            timeout_ms: 500,
            gzip: false,
            token: "t".into(),
        }
    }

    fn batch(lines: &[&str]) -> Vec<(i64, String)> {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| (i as i64 + 1, format!("{l}\n")))
            .collect()
    }

    #[tokio::test]
    async fn a_400_dead_letters_only_the_bad_lines_and_delivers_the_rest() {
        let mock = Mock {
            max_lines: 100,
            ..Mock::default()
        };
        let addr = serve(mock.clone()).await;
        let c = cfg(addr);
        let lines = ["m a=1 1", "m a=2 2", "bad line", "m a=4 4", "m a=5 5"];
        let refused = deliver_isolating(&mut InfluxSink::new(&c).unwrap(), &batch(&lines))
            .await
            .unwrap();
        assert_eq!(refused.len(), 1);
        assert_eq!((refused[0].0, refused[0].1.as_str()), (3, "bad line\n"));
        assert!(refused[0].2.contains("unable to parse"), "{}", refused[0].2);
        let mut accepted = mock.accepted.lock().unwrap().clone();
        accepted.sort();
        assert_eq!(accepted, ["m a=1 1", "m a=2 2", "m a=4 4", "m a=5 5"]);
    }

    #[tokio::test]
    async fn a_413_splits_the_batch_until_it_fits() {
        let mock = Mock {
            max_lines: 2,
            ..Mock::default()
        };
        let addr = serve(mock.clone()).await;
        let c = cfg(addr);
        let lines: Vec<String> = (0..9).map(|i| format!("m a={i} {i}")).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        assert!(
            deliver_isolating(&mut InfluxSink::new(&c).unwrap(), &batch(&lines))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(mock.accepted.lock().unwrap().len(), 9);
    }

    #[tokio::test]
    async fn credentials_and_missing_buckets_are_refused_and_overload_is_transient() {
        let mock = Mock {
            max_lines: 100,
            ..Mock::default()
        };
        let addr = serve(mock.clone()).await;
        let c = cfg(addr);
        let mut sink = InfluxSink::new(&c).unwrap();
        for (status, expect_refused) in [(401, true), (404, true), (429, false), (503, false)] {
            mock.status.store(status, Ordering::SeqCst);
            let err = deliver_isolating(&mut sink, &batch(&["m a=1 1"]))
                .await
                .unwrap_err();
            match (expect_refused, &err) {
                (true, Failure::NeedsOperator { class, reason }) => {
                    assert_eq!(*class, "refused");
                    assert!(reason.contains(&status.to_string()), "{reason}")
                }
                (false, Failure::Retry { reason, .. }) => {
                    assert!(reason.contains(&status.to_string()), "{reason}")
                }
                _ => panic!("{status}: {err:?}"),
            }
        }
        assert!(mock.accepted.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_stalled_server_times_out_as_transient() {
        let addr = serve(Mock {
            max_lines: 100,
            stall: true,
            ..Mock::default()
        })
        .await;
        let c = cfg(addr);
        let started = std::time::Instant::now();
        let err = deliver_isolating(&mut InfluxSink::new(&c).unwrap(), &batch(&["m a=1 1"]))
            .await
            .unwrap_err();
        assert!(matches!(err, Failure::Retry { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Waits until `f` holds, for at most `limit`.
    async fn until(limit: Duration, f: impl Fn() -> bool + Send + 'static) {
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + limit;
            while !f() {
                assert!(std::time::Instant::now() < deadline, "not within {limit:?}");
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .await
        .unwrap();
    }

    fn pipe_point(minute: i64) -> crate::point::Point {
        crate::point::Point {
            measurement: "pipe".into(),
            tags: vec![("asset".into(), "P1".into())],
            fields: vec![("mean".into(), crate::point::FieldValue::Float(0.3))],
            time_ms: minute * 60_000,
            quality: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_committed_point_is_written_at_once_and_the_next_waits_out_the_gap() {
        let mock = Mock {
            max_lines: 100,
            ..Mock::default()
        };
        let addr = serve(mock.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("s.db")).unwrap();
        let store = Arc::new(store);
        let (stop, stop_rx) = watch::channel(false);
        let (points, points_rx) = watch::channel(());
        // An hour between writes: only a wake can write the first point in time.
        let c = InfluxSection {
            flush_ms: 3_600_000,
            ..cfg(addr)
        };
        let metrics = Metrics::new();
        let pending = metrics.sink_pending.with_label_values(&[SINK]);
        // Set by each look at the store: -1 until the sink's first, at start.
        pending.set(-1);
        let task = tokio::spawn(run(
            c,
            store.clone(),
            metrics.clone(),
            NotReady::default(),
            points_rx,
            stop_rx,
        ));
        let commit = |minute| {
            store
                .accept(&[], &[pipe_point(minute)], &[], &Default::default())
                .unwrap();
            points.send_replace(());
        };
        let p = pending.clone();
        until(Options::default().look_anyway / 2, move || p.get() == 0).await;
        // The sink has looked and found nothing: only the wake can bring the first point.
        commit(1);
        // Written (sooner than the sink looks unwoken), and the sink has looked again and found
        // nothing (pending was 1 before): its round is over, so the second point cannot ride in
        // it.
        let s = store.clone();
        until(Options::default().look_anyway / 2, move || {
            s.cursor(SINK).unwrap() == 1 && pending.get() == 0
        })
        .await;
        commit(2);
        // The second waits for the hour's gap: still unwritten a while after its wake.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            mock.accepted.lock().unwrap().as_slice(),
            ["pipe,asset=P1 mean=0.3 60000"]
        );
        assert_eq!(store.cursor(SINK).unwrap(), 1);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_sink_keeps_refused_data_says_why_and_delivers_once_fixed() {
        let mock = Mock {
            max_lines: 100,
            ..Mock::default()
        };
        mock.status.store(401, Ordering::SeqCst);
        let addr = serve(mock.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("s.db")).unwrap();
        let store = Arc::new(store);
        store
            .accept(&[], &[pipe_point(1)], &[], &Default::default())
            .unwrap();
        let metrics = Metrics::new();
        let not_ready = NotReady::default();
        let (stop, stop_rx) = watch::channel(false);
        let (_points, points_rx) = watch::channel(());
        let task = tokio::spawn(run(
            cfg(addr),
            store.clone(),
            metrics.clone(),
            not_ready.clone(),
            points_rx,
            stop_rx,
        ));
        let limit = Duration::from_secs(10);
        let nr = not_ready.clone();
        until(limit, move || {
            nr.lock()
                .unwrap()
                .get(SINK)
                .is_some_and(|r| r.contains("401"))
        })
        .await;
        assert_eq!(
            store.cursor(SINK).unwrap(),
            0,
            "nothing is dropped while refused"
        );
        mock.status.store(0, Ordering::SeqCst);
        let s = store.clone();
        until(limit, move || s.cursor(SINK).unwrap() == 1).await;
        assert_eq!(
            mock.accepted.lock().unwrap().as_slice(),
            ["pipe,asset=P1 mean=0.3 60000"]
        );
        // Readiness returns right after the cursor moves.
        let nr = not_ready.clone();
        until(limit, move || nr.lock().unwrap().is_empty()).await;
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
