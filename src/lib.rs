//! converge: a GitOps reconciler that keeps a Kubernetes cluster converged on a git commit.
//!
//! Data flows one way through the modules:
//!
//! ```text
//!  source ──► desired ──► build ──► render ──► cluster (diff · apply · health · prune) ──► status
//!  (commit)   (validated)  (tags)   (objects)                                              (in cluster)
//! ```
//!
//! A lower module never imports a higher one: `cluster` knows nothing of `desired`, `render` hands
//! `cluster` plain objects. Only `reconcile`, `daemon`, `doctor`, `hints`, `mcp` and `cli` reach across.
//! `history` (git notes and auto-reverts) sits beside `source` and takes plain data.
#![forbid(unsafe_code)]

pub mod build;
pub mod capacity;
pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod desired;
pub mod doctor;
pub mod error;
pub mod explain;
pub mod hints;
pub mod history;
pub mod mcp;
pub mod outcome;
pub mod process;
pub mod progress;
pub mod reconcile;
pub mod render;
pub mod source;
pub mod status;
pub mod vocabulary;
