//! The beat loop: hold the leader lease, and while holding it send each entry's due ticks,
//! sleeping until the next one is due.
//!
//! Any number of beat processes may run. The one holding the lease (`<prefix>.lease`, renewed
//! every [`BeatConfig::renew_every`], expiring after [`BeatConfig::lease_ttl`]) sends; the
//! others only try to take it, every [`BeatConfig::standby_poll`]. Sending is claim-and-publish in one atomic step of the store,
//! fenced by the lease and by the last tick recorded per entry, so a tick is published once even
//! if two processes believe they lead. Shutdown is an input (a token); the lease is released on
//! the way out. Time comes from an injected [`Clock`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use celeriac_protocol::redis::{Backoff, RedisUrl};
use chrono::{DateTime, TimeZone as _, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock::{Clock, SystemClock};
use crate::entry::Entry;
use crate::health::BeatHealth;
use crate::message::Sender;
use crate::plan::plan;
use crate::schedule::Schedule;
use crate::source::{Sent, Source};
use crate::store::{LeaseState, Tick, TickOutcome, TickStore};

/// Settings of the beat loop.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BeatConfig {
    /// Broker URL.
    pub broker: RedisUrl,
    /// Prefix of beat's own keys (lease, tick records).
    pub key_prefix: String,
    /// How long the lease lives without renewal: a standby takes over this long after the
    /// leader died (plus up to one `renew_every`).
    pub lease_ttl: Duration,
    /// How often the leader renews the lease.
    pub renew_every: Duration,
    /// How often a standby tries to take the lease (so a graceful stop hands over at once).
    pub standby_poll: Duration,
    /// Pauses between reconnect attempts.
    pub reconnect: Backoff,
}

impl BeatConfig {
    /// Defaults for `broker`: a 3 s lease renewed every second.
    pub fn new(broker: RedisUrl) -> Self {
        Self {
            broker,
            key_prefix: celeriac_protocol::redis::BEAT_KEY_PREFIX.into(),
            lease_ttl: Duration::from_secs(3),
            renew_every: Duration::from_secs(1),
            standby_poll: Duration::from_millis(250),
            reconnect: Backoff::default(),
        }
    }
}

/// One entry with its progress.
#[derive(Debug)]
struct Slot {
    entry: Entry,
    /// The last tick sent (or the starting point recorded when the entry was first seen);
    /// `None` until it is read from, or recorded in, the tick records.
    last: Option<DateTime<Utc>>,
    /// When to look at it again; `None` after its schedule ended.
    next: Option<DateTime<Utc>>,
}

impl Slot {
    fn new(entry: Entry) -> Self {
        Self {
            entry,
            last: None,
            next: None,
        }
    }

    /// Sets the last tick and works out the next one from it.
    fn resume_from(&mut self, last: DateTime<Utc>) {
        self.last = Some(last);
        self.next = plan(&self.entry, last, last).next;
        debug!(entry = %self.entry.name, next = ?self.next, "scheduled");
    }

    /// Where the schedule starts when no tick was ever recorded.
    fn seed(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match (&self.entry.schedule, self.entry.seed) {
            // A clocked entry fires at its time, even one already past, as django-celery-beat.
            (Schedule::Clocked(at), _) => *at - chrono::TimeDelta::milliseconds(1),
            (_, Some(seed)) => seed,
            (_, None) => now,
        }
    }
}

/// The scheduler: entries from a [`Source`], lease and ticks on a [`TickStore`].
#[derive(Debug)]
pub struct Beat<S, B> {
    config: BeatConfig,
    sender: Sender,
    source: S,
    store: B,
    clock: Arc<dyn Clock>,
    slots: Vec<Slot>,
    token: String,
    leader: bool,
    health: Arc<BeatHealth>,
}

/// Counts due ticks of `entry` that were not sent, and why.
fn skipped(entry: &str, reason: &'static str, n: u64) {
    metrics::counter!("celeriac_beat_ticks_skipped_total", "entry" => entry.to_owned(), "reason" => reason)
        .increment(n);
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl<S: Source, B: TickStore> Beat<S, B> {
    /// A scheduler for the entries of `source`, sending with `sender` through `store`.
    pub fn new(config: BeatConfig, sender: Sender, source: S, store: B) -> Self {
        Self {
            config,
            sender,
            source,
            store,
            clock: Arc::new(SystemClock),
            slots: Vec::new(),
            token: uuid::Uuid::new_v4().to_string(),
            leader: false,
            health: Arc::new(BeatHealth::new(Duration::from_secs(60))),
        }
    }

    /// Reports to `health` (what `/healthz` and `/readyz` read) instead of a private one.
    pub fn with_health(mut self, health: Arc<BeatHealth>) -> Self {
        self.health = health;
        self
    }

    /// Reads the time from `clock` instead of the system.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// This process's lease token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Runs until `shutdown` is cancelled, then releases the lease.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        let mut next_renew = Instant::now();
        let mut next_poll = Instant::now();
        loop {
            let mut wake = next_renew.min(next_poll);
            if self.leader
                && let Some(t) = self.earliest_next()
            {
                wake = wake.min(self.instant_of(t));
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(wake) => {}
            }
            if Instant::now() >= next_poll {
                next_poll = Instant::now() + self.source.poll_every();
                match self.source.poll().await {
                    Ok(Some(entries)) => {
                        self.apply(entries);
                        if self.leader {
                            self.leader = self.seed_new().await;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => warn!(source = %self.source.describe(), error = %e,
                        "cannot read the schedule; keeping the entries as they were"),
                }
            }
            if Instant::now() >= next_renew {
                match self
                    .store
                    .hold_lease(&self.token, self.config.lease_ttl)
                    .await
                {
                    Ok(LeaseState::Renewed) if self.leader => failures = 0,
                    Ok(state @ (LeaseState::Acquired | LeaseState::Renewed)) => {
                        // Renewed while not leading: a send failed and the records must be
                        // read again before sending more.
                        failures = 0;
                        if state == LeaseState::Acquired {
                            info!(
                                entries = self.slots.len(),
                                "took the beat lease: this process sends the schedule"
                            );
                        }
                        self.take_over().await;
                    }
                    Ok(LeaseState::HeldElsewhere) => {
                        failures = 0;
                        if self.leader {
                            warn!("the beat lease is held by another process: standing by");
                        }
                        self.leader = false;
                    }
                    Err(e) => {
                        failures += 1;
                        self.health.unreachable();
                        warn!(error = %e, "cannot renew the beat lease; retrying");
                        next_renew = Instant::now()
                            + self
                                .config
                                .reconnect
                                .delay(failures)
                                .min(self.config.renew_every);
                        continue;
                    }
                }
                self.health.answered(self.leader);
                next_renew = Instant::now()
                    + if self.leader {
                        self.config.renew_every
                    } else {
                        self.config.standby_poll
                    };
            }
            if self.leader {
                self.send_due().await;
            }
        }
        if self.leader {
            match self.store.release_lease(&self.token).await {
                Ok(true) => info!("released the beat lease"),
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "could not release the beat lease; it expires by itself")
                }
            }
        }
    }

    /// The tokio instant at which the clock reads `t`.
    fn instant_of(&self, t: DateTime<Utc>) -> Instant {
        let ahead = (t - self.clock.now()).to_std().unwrap_or(Duration::ZERO);
        Instant::now() + ahead
    }

    fn earliest_next(&self) -> Option<DateTime<Utc>> {
        self.slots.iter().filter_map(|s| s.next).min()
    }

    /// Takes a new set of entries: unchanged ones keep their progress, changed ones keep their
    /// last tick and are scheduled again from it, new ones wait to be seeded.
    fn apply(&mut self, entries: Vec<Entry>) {
        let mut old: HashMap<String, Slot> = self
            .slots
            .drain(..)
            .map(|s| (s.entry.name.clone(), s))
            .collect();
        let (mut added, mut changed) = (0, 0);
        for entry in entries {
            let slot = match old.remove(&entry.name) {
                // The seed is only read for entries never sent; a source that derives it from
                // what was sent (django-celery-beat's last_run_at) does not change the entry.
                Some(mut slot) if slot.entry.same_as(&entry) => {
                    slot.entry = entry;
                    slot
                }
                Some(slot) => {
                    changed += 1;
                    let mut fresh = Slot::new(entry);
                    if let Some(last) = slot.last {
                        fresh.resume_from(last);
                    }
                    fresh
                }
                None => {
                    added += 1;
                    Slot::new(entry)
                }
            };
            self.slots.push(slot);
        }
        if added + changed + old.len() > 0 {
            info!(
                entries = self.slots.len(),
                added,
                changed,
                removed = old.len(),
                "schedule loaded"
            );
        }
    }

    /// Reads (or, for entries never seen, records) the last tick of every entry, and declares
    /// the queues, after taking the lease.
    async fn take_over(&mut self) {
        for slot in &mut self.slots {
            slot.last = None;
        }
        self.leader = self.seed_new().await;
        if !self.leader {
            return;
        }
        let mut queues: Vec<String> = self
            .slots
            .iter()
            .filter(|s| s.entry.options.exchange.is_none())
            .map(|s| self.sender.queue_of(&s.entry).to_owned())
            .collect();
        queues.sort();
        queues.dedup();
        if let Err(e) = self.store.declare_queues(&queues).await {
            warn!(error = %e, "cannot declare the queues' bindings");
        }
    }

    /// Gives every entry without a known last tick the one recorded by any beat, or records
    /// its starting point. Returns whether we still lead.
    async fn seed_new(&mut self) -> bool {
        let now = self.clock.now();
        let seeds: Vec<(String, i64)> = self
            .slots
            .iter()
            .filter(|s| s.last.is_none())
            .map(|s| (s.entry.name.clone(), ms(s.seed(now))))
            .collect();
        if seeds.is_empty() {
            return true;
        }
        match self.store.seed_ticks(&self.token, &seeds).await {
            Ok(Some(recorded)) => {
                let by_name: HashMap<_, _> = seeds
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .zip(recorded)
                    .collect();
                for slot in self.slots.iter_mut().filter(|s| s.last.is_none()) {
                    if let Some(ms) = by_name.get(slot.entry.name.as_str()) {
                        slot.resume_from(from_ms(*ms));
                    }
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                warn!(error = %e, "cannot read the tick records; will retry");
                let _ = self.store.release_lease(&self.token).await;
                false
            }
        }
    }
    /// Sends every due tick, then tells the source what was sent. On a failure that leaves it
    /// unknown what was sent, stops leading until the tick records are read again.
    async fn send_due(&mut self) {
        let now = self.clock.now();
        let mut ticks = Vec::new();
        let mut owners = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let (Some(next), Some(last)) = (slot.next, slot.last) else {
                continue;
            };
            if next > now {
                continue;
            }
            let e = &slot.entry;
            let p = plan(e, last, now);
            if p.skipped > 0 {
                let (first, latest) = p.skipped_span.unwrap_or((now, now));
                warn!(entry = %e.name, skipped = p.skipped, first = %first, last = %latest,
                    "due ticks not sent (catch-up policy)");
                skipped(&e.name, "catch_up", p.skipped);
                if let Err(err) = self.store.count_skipped(&e.name, p.skipped).await {
                    warn!(entry = %e.name, error = %err, "cannot count skipped ticks");
                }
            }
            let queue = match (&e.options.exchange, &e.options.routing_key) {
                (Some(exchange), rk) => {
                    let rk = rk.as_deref().unwrap_or(&self.sender.default_queue);
                    match self.store.lookup_queue(exchange, rk).await {
                        Ok(Some(q)) => Some(q),
                        Ok(None) => {
                            error!(entry = %e.name, exchange = %exchange, routing_key = %rk,
                                "no queue is bound to this exchange and routing key: tick not sent \
                                 (Python beat drops it silently)");
                            skipped(&e.name, "unroutable", p.send.len() as u64);
                            None
                        }
                        Err(err) => {
                            warn!(entry = %e.name, error = %err, "cannot look up the exchange's bindings");
                            self.leader = false;
                            return;
                        }
                    }
                }
                (None, _) => Some(self.sender.queue_of(e).to_owned()),
            };
            let send = if e.one_off {
                &p.send[p.send.len().saturating_sub(1)..]
            } else {
                &p.send[..]
            };
            for tick in send.iter().filter(|_| queue.is_some()) {
                match self.sender.envelope(e, now) {
                    Ok(envelope) => {
                        ticks.push(Tick {
                            entry: e.name.clone(),
                            nominal_ms: ms(*tick),
                            queue: queue.clone().unwrap_or_default(),
                            envelope,
                        });
                        owners.push((index, *tick));
                    }
                    Err(err) => {
                        error!(entry = %e.name, error = %err, "cannot encode the message; tick not sent");
                        skipped(&e.name, "encode", 1);
                    }
                }
            }
            // Skipped ticks are done with too: the cursor moves past them.
            let done = p.send.last().copied().max(p.skipped_span.map(|(_, l)| l));
            if let Some(done) = done {
                slot.last = Some(last.max(done));
            }
            slot.next = if e.one_off && !p.send.is_empty() {
                None
            } else {
                p.next
            };
        }
        if ticks.is_empty() {
            return;
        }
        let outcomes = match self.store.publish_ticks(&self.token, &ticks).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                // Unknown whether the script ran: the records are read again at the next lease
                // renewal, so nothing is sent twice and nothing is lost.
                warn!(error = %e, "sending ticks failed; re-reading the tick records");
                self.leader = false;
                return;
            }
        };
        let mut sent: Vec<Sent> = Vec::new();
        for ((tick, (index, nominal)), outcome) in ticks.iter().zip(&owners).zip(outcomes) {
            let entry = &self.slots[*index].entry;
            match outcome {
                TickOutcome::Sent => {
                    let lateness = (self.clock.now() - *nominal).num_milliseconds();
                    let id = tick
                        .envelope
                        .headers
                        .get("id")
                        .and_then(|v| v.as_str())
                        .unwrap_or("");
                    info!(entry = %tick.entry, task = %entry.task, id = %id, tick = %nominal,
                        lateness_ms = lateness, "sent");
                    metrics::counter!("celeriac_beat_ticks_sent_total", "entry" => tick.entry.clone())
                        .increment(1);
                    metrics::histogram!("celeriac_beat_lateness_seconds")
                        .record(lateness.max(0) as f64 / 1000.0);
                    match sent.last_mut() {
                        Some(s) if s.entry == tick.entry => s.count += 1,
                        _ => sent.push(Sent {
                            entry: tick.entry.clone(),
                            at: now,
                            count: 1,
                            finished: entry.one_off,
                        }),
                    }
                }
                TickOutcome::AlreadySent => {
                    debug!(entry = %tick.entry, tick = %nominal, "already sent by another beat");
                    metrics::counter!("celeriac_beat_claims_refused_total", "entry" => tick.entry.clone())
                        .increment(1);
                }
                TickOutcome::NotLeader => self.leader = false,
            }
        }
        if !self.leader {
            warn!("lost the beat lease while sending: the new leader sends what was not sent");
        }
        if !sent.is_empty()
            && let Err(e) = self.source.record(&sent).await
        {
            warn!(source = %self.source.describe(), error = %e, "cannot record the sends");
        }
    }
}
