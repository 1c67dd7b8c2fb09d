//! The live page `converge run` serves on its loopback address: each stack with its commit,
//! state and reason, each component with ready/desired, image tag and — when unhealthy —
//! explain's finding; the recent history; the running reconcile's steps as they happen; drift
//! as it is noticed and corrected. Read-only except for "sync now" (`POST /sync`, guarded
//! against cross-site requests).
//!
//! Files: what happened reaches the page through the [`bus`] (the loop's events and a tracing
//! layer for progress); the [`hub`] task folds it into the [`model`] and reads the cluster;
//! [`sse`] streams snapshots to browsers; [`guard`] decides who may ask for a sync; [`assets`]
//! are the embedded HTML, CSS and JS. The routes themselves are in [`super::http`].

pub mod assets;
pub mod bus;
pub mod guard;
pub mod hub;
pub mod model;
pub mod sse;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::reconcile::StackRef;
pub use bus::{Bus, Event};
pub use hub::Shared;
pub use model::DaemonInfo;

/// How many asks for a current view may wait (more are answered with what there is).
const ASKS: usize = 32;

/// The running page: where the loop sends events, what the HTTP side reads.
#[derive(Debug)]
pub struct Page {
    /// Where the loop reports what happens.
    pub bus: Bus,
    /// What the HTTP side serves.
    pub shared: Shared,
    /// The stacks to show (set again after a reload).
    pub targets: watch::Sender<Vec<StackRef>>,
    hub: JoinHandle<()>,
}

impl Page {
    /// Starts the hub for `targets`; progress events reach it from now on.
    pub fn start(info: DaemonInfo, kubeconfig: Option<PathBuf>, targets: Vec<StackRef>) -> Page {
        let (bus, inbox) = bus::channel();
        bus::install(bus.clone());
        let mut model = model::Model::default();
        model.snapshot.daemon = info;
        let json = serde_json::to_string(&model.snapshot).unwrap_or_else(|_| "{}".into());
        let (tx, rx) = watch::channel(Arc::<str>::from(json));
        let (targets_tx, targets_rx) = watch::channel(targets);
        let (ask, asks) = mpsc::channel(ASKS);
        let shared = Shared {
            snapshot: rx,
            open: Arc::default(),
            ask,
        };
        let source = hub::Source {
            kubeconfig,
            targets: targets_rx,
        };
        let hub = tokio::spawn(hub::run(model, inbox, source, tx, shared.clone(), asks));
        Page {
            bus,
            shared,
            targets: targets_tx,
            hub,
        }
    }

    /// Stops the hub (open event streams end; browsers retry).
    pub fn stop(&self) {
        self.hub.abort();
    }
}
