//! What the live page learns as it happens: the daemon loop's own events (a reconcile started
//! or finished, a drift noticed, a new tip) and the library's progress events (builds, health
//! waits, hooks), which a tracing [`ProgressLayer`] forwards.
//!
//! Sending never waits: the channel is bounded and a full one drops the event (the page then
//! re-reads the cluster), so neither the loop nor a reconcile is ever slowed by the page.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tokio::sync::mpsc;
use tracing::{Event as TracingEvent, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::progress::Fields;
pub use crate::progress::TARGET as PROGRESS_TARGET;

/// How many events may wait for the page's hub before new ones are dropped.
pub const CAPACITY: usize = 512;

/// One thing that happened, as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A progress event of the library: its `step` field, its other fields and its message.
    Progress {
        /// `build.start`, `health.wait`, …
        step: String,
        /// Every other field, as text.
        fields: BTreeMap<String, String>,
    },
    /// The loop started a reconcile.
    Started {
        /// Why (`commit`, `drift`, `sync`, …).
        trigger: String,
        /// The commit id.
        commit: String,
    },
    /// A reconcile ended.
    Finished {
        /// The commit id.
        commit: String,
        /// How it ended: `succeeded`, `failed`, `preempted`, `stalled`, `retrying`, `cancelled`.
        outcome: String,
        /// Its length in milliseconds.
        took_ms: u64,
        /// What each stack's images needed (`backend built`, `postgres exists`).
        builds: Vec<String>,
        /// A one-line summary (the reasons, or the error).
        message: String,
    },
    /// A managed object was changed or deleted out of band.
    Drift {
        /// The stack.
        stack: String,
        /// `Kind/name`.
        object: String,
        /// The field manager that made the change.
        manager: String,
        /// Deleted rather than changed.
        deleted: bool,
        /// Left alone: a pause holds it.
        paused: bool,
    },
    /// The tracked ref moved to a new commit.
    Tip {
        /// The commit id.
        commit: String,
    },
    /// Something the page reads from the cluster may have changed (the status record moved).
    Refresh,
}

/// The sending half, cheap to clone; sends never wait.
#[derive(Debug, Clone)]
pub struct Bus {
    tx: mpsc::Sender<Event>,
    lost: std::sync::Arc<AtomicBool>,
}

/// The receiving half, held by the page's hub.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Event>,
    lost: std::sync::Arc<AtomicBool>,
}

/// A new bus and its inbox.
pub fn channel() -> (Bus, Inbox) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    let lost = std::sync::Arc::new(AtomicBool::new(false));
    (
        Bus {
            tx,
            lost: lost.clone(),
        },
        Inbox { rx, lost },
    )
}

impl Bus {
    /// Sends `event`, or drops it (and says so to the inbox) when the hub is behind.
    pub fn send(&self, event: Event) {
        if self.tx.try_send(event).is_err() {
            self.lost.store(true, Ordering::Relaxed);
        }
    }
}

impl Inbox {
    /// The next event; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Whether events were dropped since the last call (the page must then re-read everything).
    pub fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::Relaxed)
    }
}

/// The daemon's bus, for the tracing layer installed before the daemon starts.
static GLOBAL: OnceLock<Bus> = OnceLock::new();

/// Makes `bus` the one the global [`ProgressLayer`] forwards to (the first call wins: one
/// daemon per process).
pub fn install(bus: Bus) {
    let _ = GLOBAL.set(bus);
}

/// Forwards progress events (target [`PROGRESS_TARGET`]) to a [`Bus`]; does nothing until one
/// is installed. Give it a target filter so other events never reach it.
#[derive(Debug, Default)]
pub struct ProgressLayer {
    bus: Option<Bus>,
}

impl ProgressLayer {
    /// A layer forwarding to the bus [`install`] sets, once it is set.
    pub fn global() -> Self {
        Self { bus: None }
    }

    /// A layer forwarding to `bus`.
    pub fn to(bus: Bus) -> Self {
        Self { bus: Some(bus) }
    }

    /// The per-layer filter that lets only progress events through.
    pub fn filter() -> tracing_subscriber::filter::Targets {
        tracing_subscriber::filter::Targets::new()
            .with_target(PROGRESS_TARGET, tracing::Level::INFO)
    }
}

impl<S: Subscriber> Layer<S> for ProgressLayer {
    fn on_event(&self, event: &TracingEvent<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != PROGRESS_TARGET {
            return;
        }
        let Some(bus) = self.bus.as_ref().or_else(|| GLOBAL.get()) else {
            return;
        };
        let mut f = Fields::default();
        event.record(&mut f);
        let step = f.0.remove("step").unwrap_or_default();
        bus.send(Event::Progress { step, fields: f.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn progress_events_reach_the_bus_and_others_do_not() {
        let (bus, mut inbox) = channel();
        let subscriber = tracing_subscriber::registry()
            .with(ProgressLayer::to(bus).with_filter(ProgressLayer::filter()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "converge::progress", step = "build.start", component = "backend", image = "b:1", "building");
            tracing::info!(target: "converge::daemon", step = "build.start", "not progress");
            tracing::debug!(target: "converge::progress", step = "x", "below info");
        });
        let Ok(Event::Progress { step, fields }) = inbox.rx.try_recv() else {
            panic!("no progress event forwarded");
        };
        assert_eq!(step, "build.start");
        assert_eq!(fields["component"], "backend");
        assert_eq!(fields["message"], "building");
        assert!(inbox.rx.try_recv().is_err(), "only the progress event");
    }

    #[test]
    fn a_full_bus_drops_and_says_so() {
        let (bus, mut inbox) = channel();
        for _ in 0..CAPACITY + 3 {
            bus.send(Event::Refresh);
        }
        assert!(inbox.take_lost());
        assert!(!inbox.take_lost(), "reported once");
        let mut n = 0;
        while inbox.rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, CAPACITY);
    }
}
