//! The sink runtime: drains the store into one [`Sink`], for every sink alike (see the module
//! docs of [`crate::sink`] for what it owns).
//!
//! One task per sink. A round waits out the gap since the last delivery, takes the wake-up,
//! then drains: reads what is pending lane by lane, delivers it, and moves the cursor in the
//! store once the receiver acknowledged. Then it waits for a commit, the sink's idle work, a
//! tick, or a look at the store every few seconds.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::lanes::{Bucket, Lane, Lanes};
use super::{Failure, Feed, Meters, NotReady, Options, Read, Sink};
use crate::backoff::Backoff;
use crate::clock::now_ms;
use crate::store::{Store, StoreError};

/// A drain that could not go on.
enum Stop {
    /// The receiver failed the batch.
    Failed(Failure),
    /// The local store failed.
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

/// How a drain ended.
enum Drained {
    /// Nothing is pending; `delivered` says whether anything went.
    Idle { delivered: bool },
    /// The rate limit says wait this long.
    Paced(Duration),
}

/// The state one sink's task keeps between rounds.
struct Runner<S: Sink, F: Feed<Item = S::Item>> {
    sink: S,
    feed: Arc<F>,
    options: Options,
    meters: Meters,
    store: Arc<Store>,
    not_ready: NotReady,
    /// The cursor, read from the store once, then kept here (only this task moves it).
    lanes: Lanes,
    bucket: Bucket,
}

/// Drains the store into `sink` until `shutdown` turns true. `wake` changes with every commit
/// that holds what the feed reads.
#[allow(clippy::too_many_arguments)]
pub async fn run<S, F>(
    sink: S,
    feed: Arc<F>,
    options: Options,
    meters: Meters,
    store: Arc<Store>,
    not_ready: NotReady,
    mut wake: watch::Receiver<F::Wake>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: Sink,
    F: Feed<Item = S::Item>,
{
    let with_lanes = options.catch_up_after.is_some();
    let lanes = loop {
        let (s, c) = (store.clone(), meters.cursor.clone());
        match blocking(move || Lanes::load(&s, &c, with_lanes)).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::error!(sink = %meters.display, error = %e, "cannot read the sink's cursor; retrying");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let mut backoff = Backoff::new(options.retry_min, options.retry_max);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_delivery: Option<Instant> = None;
    let mut r = Runner {
        bucket: Bucket::new(options.max_per_s),
        sink,
        feed,
        options,
        meters,
        store,
        not_ready,
        lanes,
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Batching by age: what is committed during the gap goes in the next delivery.
        if let Some(at) = last_delivery
            && !r.options.gap.is_zero()
        {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until((at + r.options.gap).into()) => {}
            }
        }
        // Commits from here on wake the next round.
        let woken = wake.borrow_and_update().clone();
        let round = Instant::now();
        let pause = match r.drain(&woken, &shutdown).await {
            Ok(Drained::Idle { delivered }) => {
                if delivered {
                    last_delivery = Some(round);
                    backoff.reset();
                }
                None
            }
            Ok(Drained::Paced(wait)) => Some(wait),
            Err(Stop::Store(e)) => {
                tracing::error!(sink = %r.meters.display, error = %e, "the sink cannot use the local store; retrying");
                Some(Duration::from_secs(1))
            }
            Err(Stop::Failed(f)) => Some(r.failed(f, &mut backoff)),
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            woken = wake.changed() => {
                if woken.is_err() {
                    // The pipeline stopped: nothing wakes the sink any more.
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(r.options.look_anyway) => {}
                    }
                }
            }
            // Ends only when the sink's connection failed; the next delivery connects anew.
            () = r.sink.idle() => {}
            _ = tick.tick(), if S::TICKS => {
                if let Err(e) = r.sink.tick().await {
                    tracing::warn!(sink = %r.meters.display, error = %e, "the sink's periodic work failed");
                }
            }
            _ = tokio::time::sleep(r.options.look_anyway) => {}
        }
    }
}

impl<S: Sink, F: Feed<Item = S::Item>> Runner<S, F> {
    /// Delivers what is pending until nothing is left, the rate limit says wait, or a delivery
    /// fails.
    async fn drain(
        &mut self,
        woken: &F::Wake,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Drained, Stop> {
        let mut delivered = false;
        // What the wake-up handed over goes first, without a read of the store on its way.
        if !self.lanes.catching_up()
            && let Some(read) = self
                .feed
                .handed_over(woken, self.lanes.done, self.options.batch)
        {
            self.deliver(Lane::Live, read, woken).await?;
            delivered = true;
        }
        loop {
            if *shutdown.borrow() {
                return Ok(Drained::Idle { delivered });
            }
            let (store, feed, done) = (self.store.clone(), self.feed.clone(), self.lanes.done);
            let aged = self.meters.oldest_unsent.is_some();
            let (newest, oldest) = blocking(move || {
                let oldest = if aged {
                    feed.oldest_time(&store, done)?
                } else {
                    None
                };
                Ok((feed.newest(&store)?, oldest))
            })
            .await?;
            if let Some(threshold) = self.options.catch_up_after {
                let was_catching_up = self.lanes.catching_up();
                if self.lanes.open_catch_up(newest, threshold) {
                    if !was_catching_up {
                        tracing::info!(sink = %self.meters.display, backlog = newest - self.lanes.done, "catching up a backlog beside live data");
                    }
                    self.save(self.lanes, Vec::new()).await?;
                }
            }
            self.report(newest, oldest);
            let mut progressed = false;
            for lane in [Lane::Live, Lane::CatchUp] {
                let Some((after, until)) = self.lanes.range(lane, newest) else {
                    continue;
                };
                let n = self.bucket.available().min(self.options.batch);
                if n == 0 {
                    return Ok(Drained::Paced(self.bucket.wait()));
                }
                let (store, feed) = (self.store.clone(), self.feed.clone());
                let read = blocking(move || feed.read(&store, after, until, n)).await?;
                self.deliver(lane, read, woken).await?;
                delivered = true;
                progressed = true;
            }
            if !progressed {
                return Ok(Drained::Idle { delivered });
            }
        }
    }

    /// Delivers one read of `lane` and moves the lane's cursor past it.
    async fn deliver(
        &mut self,
        lane: Lane,
        read: Read<S::Item>,
        woken: &F::Wake,
    ) -> Result<(), Stop> {
        let refused = if read.items.is_empty() {
            Vec::new()
        } else {
            let refused = deliver_isolating(&mut self.sink, &read.items)
                .await
                .map_err(Stop::Failed)?;
            self.bucket.take(read.items.len());
            self.meters
                .delivered
                .inc_by((read.items.len() - refused.len()) as u64);
            if let (Some(h), Some(at)) = (&self.meters.delivery_seconds, F::committed_at(woken)) {
                h.observe(at.elapsed().as_secs_f64());
            }
            if !refused.is_empty() {
                tracing::error!(sink = %self.meters.display, items = refused.len(), reason = %refused[0].2, "the receiver refused items; kept in the store's sink dead letters");
                self.meters
                    .errors
                    .with_label_values(&[&self.meters.errors_label, self.meters.rejected_class])
                    .inc_by(refused.len() as u64);
            }
            refused
        };
        let mut lanes = self.lanes;
        lanes.sent(lane, read.upto);
        if self.lanes.catching_up() && !lanes.catching_up() {
            tracing::info!(sink = %self.meters.display, "caught up");
        }
        if let Err(e) = self.save(lanes, refused).await {
            tracing::error!(sink = %self.meters.display, error = %e, "cannot move the sink's cursor; the batch will be delivered again (idempotent)");
            return Err(Stop::Store(e));
        }
        self.lanes = lanes;
        self.set_ready(None);
        Ok(())
    }

    /// Persists `lanes` with the dead letters, off the async threads. The future does not
    /// borrow `self` (whose sink need not be `Sync`).
    fn save(
        &self,
        lanes: Lanes,
        refused: Vec<(i64, String, String)>,
    ) -> impl Future<Output = Result<(), StoreError>> + use<S, F> {
        let (store, cursor) = (self.store.clone(), self.meters.cursor.clone());
        let with_lanes = self.options.catch_up_after.is_some();
        blocking(move || lanes.save(&store, &cursor, with_lanes, &refused))
    }

    /// Counts a failed delivery, says why, and returns how long to wait before the next try.
    fn failed(&self, f: Failure, backoff: &mut Backoff) -> Duration {
        let m = &self.meters;
        m.errors
            .with_label_values(&[&m.errors_label, f.class()])
            .inc();
        let endpoint = self.sink.endpoint();
        match f {
            Failure::NeedsOperator { reason, .. } => {
                tracing::error!(sink = %m.display, %endpoint, %reason, "the receiver refuses the gateway; data stays in the local store until an operator fixes it");
                self.set_ready(Some(reason));
                self.options.operator_retry
            }
            f => {
                let delay = match &f {
                    Failure::Retry {
                        after: Some(after), ..
                    } => *after,
                    _ => backoff.next_delay(&mut rand::rng()),
                };
                tracing::warn!(sink = %m.display, %endpoint, error = %f, retry_in_ms = delay.as_millis() as u64, "delivery failed; kept in the local store, retrying");
                delay
            }
        }
    }

    /// Exports what is pending, whether a catch-up lane is open and the oldest item's age.
    fn report(&self, newest: i64, oldest: Option<i64>) {
        let pending = self.lanes.pending(newest);
        self.meters.pending.set(pending);
        if let Some(g) = &self.meters.catching_up {
            g.set(i64::from(self.lanes.catching_up()));
        }
        if let Some(g) = &self.meters.oldest_unsent {
            let age = match oldest {
                Some(t) if pending > 0 => (now_ms() - t).max(0) as f64 / 1000.0,
                _ => 0.0,
            };
            g.set(age);
        }
    }

    /// Readiness: `None` is ready, `Some(reason)` is not.
    fn set_ready(&self, reason: Option<String>) {
        let Some(name) = &self.meters.ready_name else {
            return;
        };
        if let Some(g) = &self.meters.ready {
            g.set(i64::from(reason.is_none()));
        }
        if let Ok(mut m) = self.not_ready.lock() {
            match reason {
                Some(r) => {
                    m.insert(name.clone(), r);
                }
                None => {
                    m.remove(name);
                }
            }
        }
    }
}

/// Delivers `batch`; on refused items or a batch too large, splits until the refused items are
/// alone. Returns the dead letters (id, item, reason), or the failure that stops the batch.
pub async fn deliver_isolating<S: Sink>(
    sink: &mut S,
    batch: &[(i64, S::Item)],
) -> Result<Vec<(i64, String, String)>, Failure> {
    let mut refused = Vec::new();
    let mut todo: Vec<&[(i64, S::Item)]> = vec![batch];
    while let Some(part) = todo.pop() {
        match sink.deliver(part).await {
            Ok(()) => {}
            Err(Failure::Rejected(reason)) if part.len() == 1 => {
                refused.push((part[0].0, S::dead_letter(&part[0].1), reason));
            }
            Err(Failure::TooLarge) if part.len() == 1 => {
                refused.push((
                    part[0].0,
                    S::dead_letter(&part[0].1),
                    "a single item is larger than the receiver accepts".into(),
                ));
            }
            Err(Failure::Rejected(_) | Failure::TooLarge) => {
                let (a, b) = part.split_at(part.len() / 2);
                todo.push(b);
                todo.push(a);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(StoreError::Poisoned))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::metrics::Metrics;
    use crate::point::{FieldValue, Point};
    use crate::sink::influxdb::Lines;

    /// A receiver that refuses lines containing "bad", needs an operator while `refuse` is set,
    /// and records every batch it accepted; `on_first` runs at its first delivery.
    struct Scripted {
        batches: Arc<Mutex<Vec<Vec<i64>>>>,
        refuse: Arc<AtomicBool>,
        on_first: Option<Box<dyn FnOnce() + Send>>,
    }

    impl Sink for Scripted {
        type Item = String;

        async fn deliver(&mut self, batch: &[(i64, String)]) -> Result<(), Failure> {
            if let Some(f) = self.on_first.take() {
                f();
            }
            if self.refuse.load(Ordering::SeqCst) {
                return Err(Failure::NeedsOperator {
                    class: "refused",
                    reason: "401: bad token".into(),
                });
            }
            if let Some((_, bad)) = batch.iter().find(|(_, l)| l.contains("bad")) {
                return Err(Failure::Rejected(format!("cannot parse {bad}")));
            }
            self.batches
                .lock()
                .unwrap()
                .push(batch.iter().map(|(id, _)| *id).collect());
            Ok(())
        }

        fn dead_letter(line: &String) -> String {
            line.clone()
        }

        fn endpoint(&self) -> String {
            "scripted".into()
        }
    }

    fn point(measurement: &str, t: i64) -> Point {
        Point {
            measurement: measurement.into(),
            tags: vec![("asset".into(), "P1".into())],
            fields: vec![("mean".into(), FieldValue::Float(0.3))],
            time_ms: t,
            quality: Default::default(),
        }
    }

    fn commit(store: &Store, measurements: &[&str]) {
        let points: Vec<Point> = measurements
            .iter()
            .enumerate()
            .map(|(i, m)| point(m, 1_800_000_000_000 + i as i64))
            .collect();
        store
            .accept(&[], &points, &[], &Default::default())
            .unwrap();
    }

    fn meters(metrics: &Metrics) -> Meters {
        Meters {
            display: "test".into(),
            cursor: "test".into(),
            ready_name: Some("test".into()),
            ready: Some(metrics.sink_ready.with_label_values(&["test"])),
            pending: metrics.sink_pending.with_label_values(&["test"]),
            delivered: metrics.sink_written.with_label_values(&["test"]),
            errors: metrics.sink_errors.clone(),
            errors_label: "test".into(),
            rejected_class: "bad_lines",
            catching_up: None,
            oldest_unsent: None,
            delivery_seconds: None,
        }
    }

    /// Waits until `f` holds, for at most ten seconds.
    async fn until(f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "not within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    struct Harness {
        store: Arc<Store>,
        batches: Arc<Mutex<Vec<Vec<i64>>>>,
        refuse: Arc<AtomicBool>,
        not_ready: NotReady,
        wake: watch::Sender<()>,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    /// A sink on a fresh in-memory store holding `backlog`, that nothing but a commit's
    /// wake-up brings to look again (it looks unwoken once an hour).
    fn start(
        backlog: &[&str],
        options: Options,
        on_first: Option<Box<dyn FnOnce() + Send>>,
    ) -> Harness {
        let (store, _) = Store::open(std::path::Path::new(":memory:")).unwrap();
        let store = Arc::new(store);
        if !backlog.is_empty() {
            commit(&store, backlog);
        }
        let batches = Arc::new(Mutex::new(Vec::new()));
        let refuse = Arc::new(AtomicBool::new(false));
        let not_ready = NotReady::default();
        let (wake, wake_rx) = watch::channel(());
        let (stop, stop_rx) = watch::channel(false);
        let sink = Scripted {
            batches: batches.clone(),
            refuse: refuse.clone(),
            on_first,
        };
        let task = tokio::spawn(run(
            sink,
            Arc::new(Lines),
            Options {
                look_anyway: Duration::from_secs(3600),
                ..options
            },
            meters(&Metrics::new()),
            store.clone(),
            not_ready.clone(),
            wake_rx,
            stop_rx,
        ));
        Harness {
            store,
            batches,
            refuse,
            not_ready,
            wake,
            stop,
            task,
        }
    }

    impl Harness {
        async fn stop(self) {
            self.stop.send_replace(true);
            self.task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_commit_wakes_the_sink_and_refused_items_are_dead_lettered_while_the_rest_is_delivered()
     {
        let h = start(&[], Options::default(), None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        commit(&h.store, &["pipe", "pipe", "bad", "pipe", "pipe"]);
        h.wake.send_replace(());
        let s = h.store.clone();
        until(|| s.cursor("test").unwrap() == 5).await;
        let delivered: Vec<i64> = h.batches.lock().unwrap().concat();
        let mut sorted = delivered.clone();
        sorted.sort();
        assert_eq!(sorted, [1, 2, 4, 5]);
        let dead = h.store.dead_letters("test").unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0, 3);
        assert!(dead[0].2.contains("cannot parse"), "{:?}", dead[0]);
        h.stop().await;
    }

    #[tokio::test]
    async fn a_receiver_that_needs_an_operator_makes_the_sink_not_ready_until_it_accepts() {
        let h = start(
            &["pipe"],
            Options {
                operator_retry: Duration::from_millis(50),
                ..Options::default()
            },
            None,
        );
        h.refuse.store(true, Ordering::SeqCst);
        let nr = h.not_ready.clone();
        until(|| {
            nr.lock()
                .unwrap()
                .get("test")
                .is_some_and(|r| r.contains("401"))
        })
        .await;
        assert_eq!(h.store.cursor("test").unwrap(), 0, "the data stays stored");
        h.refuse.store(false, Ordering::SeqCst);
        let s = h.store.clone();
        until(|| s.cursor("test").unwrap() == 1).await;
        assert!(h.not_ready.lock().unwrap().is_empty(), "ready again");
        h.stop().await;
    }

    #[tokio::test]
    async fn a_backlog_opens_a_catch_up_lane_and_live_items_go_before_the_rest_of_it() {
        let (store_tx, store_rx) = std::sync::mpsc::channel::<Arc<Store>>();
        // A live point arrives while the first backlog batch is delivered.
        let on_first: Box<dyn FnOnce() + Send> = Box::new(move || {
            let store = store_rx.recv().unwrap();
            commit(&store, &["live"]);
        });
        let h = start(
            &["old"; 6],
            Options {
                batch: 2,
                catch_up_after: Some(3),
                ..Options::default()
            },
            Some(on_first),
        );
        store_tx.send(h.store.clone()).unwrap();
        let s = h.store.clone();
        until(|| s.cursor("test").unwrap() == 7).await;
        let batches = h.batches.lock().unwrap().clone();
        assert_eq!(batches, [vec![1, 2], vec![7], vec![3, 4], vec![5, 6]]);
        assert_eq!(h.store.cursor("test:split").unwrap(), 0, "the lanes merged");
        h.stop().await;
    }

    #[tokio::test]
    async fn a_gap_puts_what_was_committed_meanwhile_into_one_delivery() {
        let h = start(
            &[],
            Options {
                gap: Duration::from_millis(300),
                ..Options::default()
            },
            None,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        commit(&h.store, &["pipe"]);
        h.wake.send_replace(());
        let s = h.store.clone();
        until(|| s.cursor("test").unwrap() == 1).await;
        // Three commits within the gap after a delivery go out together.
        for _ in 0..3 {
            commit(&h.store, &["pipe"]);
            h.wake.send_replace(());
        }
        let s = h.store.clone();
        until(|| s.cursor("test").unwrap() == 4).await;
        assert_eq!(*h.batches.lock().unwrap(), [vec![1], vec![2, 3, 4]]);
        h.stop().await;
    }
}
