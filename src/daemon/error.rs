//! Why the daemon could not start, stopped, or could not be asked to sync.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{lock, refs};
use crate::error::Error;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon holds the checkout or the stack.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// The ref watch or pull mode failed.
    #[error(transparent)]
    Refs(#[from] refs::RefsError),
    /// Pull mode's remote or SSH files cannot be used.
    #[error(transparent)]
    Remote(#[from] crate::source::remote::RemoteError),
    /// The webhook secret cannot be read.
    #[error(transparent)]
    Webhook(#[from] super::webhook::SecretError),
    /// The repository could not be read.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// The cluster or the desired state failed at startup.
    #[error(transparent)]
    Converge(#[from] Error),
    /// What to deploy could not be decided.
    #[error("{message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The HTTP endpoint could not listen.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    /// Another daemon took a stack's Lease, or it could not be renewed in time: this one stops
    /// rather than fight over the stack.
    #[error("stopped leading: {loss}")]
    LeaseLost {
        /// What happened to the Lease.
        loss: lock::Loss,
    },
    /// `converge sync` found no daemon for the checkout.
    #[error("no converge daemon runs for {} (start one with `converge run`)", checkout.display())]
    NotRunning {
        /// The checkout's root.
        checkout: PathBuf,
    },
    /// The daemon holds its lock but has not recorded how to reach it yet.
    #[error("the daemon's lock file names no holder yet; retry in a moment")]
    Starting,
    /// The daemon's loopback endpoint did not answer.
    #[error("the daemon at {addr} does not answer")]
    Unreachable {
        /// Its address, from the lock file.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered a sync request with something other than `202 Accepted`.
    #[error("the daemon at {addr} answered `{answer}`")]
    SyncRefused {
        /// Its address.
        addr: SocketAddr,
        /// Its status line.
        answer: String,
    },
    /// SIGUSR1 could not be sent to a daemon without an HTTP endpoint.
    #[error(
        "could not signal pid {pid}: the daemon may have stopped (start one with `converge run`)"
    )]
    Signal {
        /// The daemon's pid.
        pid: u32,
        /// Why.
        #[source]
        source: crate::process::Error,
    },
    /// A second SIGTERM/SIGINT arrived during shutdown.
    #[error("aborted by a second signal during shutdown")]
    Aborted,
}
