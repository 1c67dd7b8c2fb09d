//! Pull mode's start: the settings checked once (`--remote`, `--ssh-key`, `--known-hosts`,
//! `--webhook-secret-file`), an empty or missing `--repo` made a repository, and the first fetch
//! done before the stacks are learned — retried with back-off while the remote cannot be
//! reached, the daemon answering `/healthz` (alive), `/readyz` (not ready, and why) and
//! `/metrics` meanwhile.
//!
//! After the start the daemon's loop fetches on its own ([`refs::fetch`]): this file only
//! gets it going.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use signal_hook::consts::signal::{SIGINT, SIGTERM};
use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};

use super::backoff::Backoff;
use super::metrics::Metrics;
use super::refs::{self, Pull, RefsError};
use super::webhook::Secret;
use super::{Config, DaemonError};
use crate::source::remote::{Remote, SshAuth};

/// How long one fetch may take.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// The first retry after a failed fetch; it doubles up to [`retry_cap`].
const RETRY_BASE: Duration = Duration::from_secs(2);

/// The longest wait between fetches after failures: the poll interval (at least 30 s), but no
/// longer than `--retry-max`, so a daemon polling hourly for webhooks still retries a broken
/// remote every few minutes.
pub(super) fn retry_cap(cfg: &Config) -> Duration {
    cfg.poll.max(Duration::from_secs(30)).min(cfg.retry_max)
}

/// The back-off of failed fetches.
pub(super) fn backoff(cfg: &Config) -> Backoff {
    Backoff::new(RETRY_BASE, retry_cap(cfg))
}

/// Checks pull mode's settings and, for a URL remote and an empty or missing `--repo`, makes
/// the repository converge fetches into (`git init`: the daemon reads commits, never a working
/// tree). `None` outside pull mode.
pub(super) fn prepare(cfg: &Config) -> Result<Option<Pull>, DaemonError> {
    let Some(arg) = &cfg.remote else {
        if cfg.ssh_key.is_some() || cfg.known_hosts.is_some() || cfg.webhook_secret.is_some() {
            return Err(DaemonError::Config {
                message: "--ssh-key, --known-hosts and --webhook-secret-file belong to pull mode: add --remote <URL or remote name>".into(),
            });
        }
        return Ok(None);
    };
    let remote = Remote::parse(arg)?;
    let ssh = SshAuth::new(cfg.ssh_key.as_deref(), cfg.known_hosts.as_deref())?;
    if remote.is_url() && empty_or_missing(&cfg.repo) {
        init(&cfg.repo)?;
        info!(repo = %cfg.repo.display(), %remote, "made an empty repository to fetch into");
    }
    Ok(Some(Pull { remote, ssh }))
}

/// Reads `--webhook-secret-file`.
pub(super) fn webhook_secret(cfg: &Config) -> Result<Option<Secret>, DaemonError> {
    cfg.webhook_secret
        .as_deref()
        .map(Secret::from_file)
        .transpose()
        .map_err(DaemonError::from)
}

fn empty_or_missing(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

fn init(dir: &Path) -> Result<(), DaemonError> {
    let fail = |e: &dyn std::fmt::Display| DaemonError::Config {
        message: format!(
            "making a repository in {} to fetch into: {e}; check that the directory is writable",
            dir.display()
        ),
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
    git2::Repository::init(dir).map_err(|e| fail(&e.message()))?;
    Ok(())
}

/// The ref the stacks are learned from, fetching it first when the repository holds none:
/// the tracking ref of `--branch`, or else the remote's default branch. Waits, retrying with
/// back-off, while the remote fails; `None` when SIGTERM or SIGINT arrived meanwhile.
pub(super) async fn first_fetch(
    cfg: &Config,
    pull: &Pull,
    root: &Path,
    metrics: &Arc<Metrics>,
    signals: &mut signal_hook_tokio::Signals,
) -> Result<Option<String>, DaemonError> {
    let (start, branch) = match &cfg.branch {
        Some(b) => (
            refs::tracked_ref(b, Some(pull.remote.name())),
            Some(b.clone()),
        ),
        None => (refs::head_ref(pull), None),
    };
    if refs::exists(root, &start) {
        return Ok(Some(start));
    }
    let attempt = || async {
        let r = match &branch {
            Some(b) => refs::fetch(root, pull, b, cfg.allow_non_fast_forward, FETCH_TIMEOUT)
                .await
                .map(|_| ()),
            None => refs::fetch_head(root, pull, FETCH_TIMEOUT)
                .await
                .map(|_| ()),
        };
        metrics.fetch(match &r {
            Ok(()) => "updated",
            Err(e) => fetch_label(e),
        });
        r
    };
    let why = match attempt().await {
        Ok(()) => return Ok(Some(start)),
        Err(e) => e,
    };
    // The remote failed: serve the probes while retrying, so an orchestrator sees the daemon
    // alive (not restarted in a loop) and not ready, with the reason.
    let listener = super::http::bind(cfg.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let reason = Arc::new(Mutex::new(why.to_string()));
    let mut backoff = backoff(cfg);
    let mut err = why;
    let server = serve_waiting(
        &listener,
        pull.remote.to_string(),
        reason.clone(),
        metrics.clone(),
    );
    tokio::pin!(server);
    loop {
        let at = backoff.fail(std::time::Instant::now());
        let wait = at.saturating_duration_since(std::time::Instant::now());
        error!(error = %err, retry_in_s = wait.as_secs(), "the first fetch failed; the stacks are learned once it succeeds");
        if let Ok(mut r) = reason.lock() {
            *r = err.to_string();
        }
        tokio::select! {
            () = &mut server => {}
            Some(sig) = signals.next() => {
                if sig == SIGTERM || sig == SIGINT {
                    info!("stopping before the first fetch succeeded");
                    return Ok(None);
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
        match attempt().await {
            Ok(()) => {
                info!(remote = %pull.remote, "the first fetch succeeded after {} failed", backoff.failures());
                return Ok(Some(start));
            }
            Err(e) => err = e,
        }
    }
}

/// The `result` label of `converge_fetches_total` for a failed fetch.
pub(super) fn fetch_label(e: &RefsError) -> &'static str {
    match e {
        RefsError::Fetch { failure, .. } => failure.label(),
        RefsError::NonFastForward { .. } => "non_fast_forward",
        _ => "failed",
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Answers until dropped: `/healthz` 200, `/readyz` 503 with the reason, `/metrics`; anything
/// else 503 (the page, `/sync` and `/mcp` need the stacks, which are not known yet).
async fn serve_waiting(
    listener: &TcpListener,
    remote: String,
    reason: Arc<Mutex<String>>,
    metrics: Arc<Metrics>,
) {
    loop {
        let (stream, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (remote, reason, metrics) = (remote.clone(), reason.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let why = reason.lock().map(|r| r.clone()).unwrap_or_default();
                let r = match (req.method(), req.uri().path()) {
                    (&Method::GET, "/healthz") => {
                        text(StatusCode::OK, "ok (waiting for the first fetch)\n".into())
                    }
                    (&Method::GET, "/readyz") => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: waiting for the first fetch of {remote}: {why}\n"),
                    ),
                    (&Method::GET, "/metrics") => {
                        let mut r = text(StatusCode::OK, metrics.render());
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                        );
                        r
                    }
                    _ => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("converge is waiting for the first fetch of {remote} (retrying by itself): {why}\n"),
                    ),
                };
                async move { Ok::<_, Infallible>(r) }
            });
            // No keep-alive: a scraper's connection must not outlive this server and keep
            // getting its answers once the daemon proper serves.
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}
