//! The deploy history converge writes into the repository itself: a git note per commit under
//! `refs/notes/converge` ([`notes`]) and the opt-in automatic `git revert` of a commit that
//! failed its health checks ([`revert`]).
//!
//! It sits beside `source` (git access) and below `reconcile`, `daemon` and `cli`, which call it
//! with plain data: it never imports a higher module, never talks to the cluster, and never
//! touches the working tree except to keep a checked-out branch consistent with a revert it
//! made. Everything it writes is signed by [`signature`].

pub mod notes;
pub mod revert;

use std::path::PathBuf;

use git2::{Repository, Signature};

/// The notes ref converge writes: `git log --notes=converge` shows it.
pub const NOTES_REF: &str = "refs/notes/converge";

/// The identity of what converge writes when the repository does not name one.
pub const DEFAULT_NAME: &str = "converge";
/// The e-mail of that identity.
pub const DEFAULT_EMAIL: &str = "converge@localhost";

/// Errors writing converge's history into a repository.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The repository could not be opened.
    #[error("opening the repository at {path}")]
    Open {
        /// The path opened.
        path: PathBuf,
        /// What git2 said.
        #[source]
        source: git2::Error,
    },
    /// A git operation failed.
    #[error("{what}: {}", .source.message())]
    Git {
        /// What converge was doing (`writing the note of 0123abc`).
        what: String,
        /// What git2 said.
        #[source]
        source: git2::Error,
    },
}

impl HistoryError {
    /// A failed git operation, described by `what`.
    pub(crate) fn git(what: impl Into<String>) -> impl FnOnce(git2::Error) -> HistoryError {
        let what = what.into();
        move |source| HistoryError::Git { what, source }
    }
}

/// The first seven characters of a commit id, for messages (kept here rather than borrowed from
/// `desired`, a module above this one).
pub(crate) fn short_id(id: &str) -> &str {
    id.char_indices().nth(7).map_or(id, |(i, _)| &id[..i])
}

/// Opens the repository containing `path`.
pub(crate) fn open(path: &std::path::Path) -> Result<Repository, HistoryError> {
    Repository::discover(path).map_err(|source| HistoryError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Who converge's notes and revert commits are by: `converge.name` / `converge.email` from the
/// repository's git config when set, else `converge <converge@localhost>`. Never the person's
/// `user.name`: converge, not they, wrote the note or made the revert.
pub fn signature(repo: &Repository) -> Result<Signature<'static>, HistoryError> {
    let config = repo.config().ok();
    let get = |key: &str| {
        config
            .as_ref()
            .and_then(|c| c.get_string(key).ok())
            .filter(|v| !v.trim().is_empty())
    };
    let name = get("converge.name").unwrap_or_else(|| DEFAULT_NAME.into());
    let email = get("converge.email").unwrap_or_else(|| DEFAULT_EMAIL.into());
    Signature::now(&name, &email).map_err(HistoryError::git("making converge's signature"))
}
