//! The loopback HTTP endpoint: `GET /metrics`, `/healthz`, `/readyz`, and `POST /sync` (what
//! `converge sync` calls). A tiny HTTP/1.0 responder on a tokio listener.
//!
//! It never binds anything but a loopback address, never reads more than one small request per
//! connection, and never blocks the daemon's loop: `/sync` only queues a trigger.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::metrics::Metrics;
use super::DaemonError;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// `/healthz` fails when the loop has not ticked for this long.
const STALE_LOOP: Duration = Duration::from_secs(30);

/// Binds `addr`, refusing anything but a loopback address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} is not a loopback address: the daemon serves 127.0.0.1 or ::1 only"),
        ));
    }
    TcpListener::bind(addr).await
}

/// Serves connections on `listener` until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    started: Instant,
    sync: mpsc::Sender<()>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let sync = sync.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &metrics, started, &sync).await {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    started: Instant,
    sync: &mpsc::Sender<()>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                break;
            }
            if buf.len() > MAX_REQUEST {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if head.is_err() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&buf);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let alive_ms = started.elapsed().as_millis() as u64;
    let (status, content_type, body) = route(method, path, metrics, alive_ms, sync);
    let response = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn route(
    method: &str,
    path: &str,
    metrics: &Metrics,
    now_ms: u64,
    sync: &mpsc::Sender<()>,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", "/healthz") => {
            let since = now_ms.saturating_sub(metrics.last_heartbeat());
            if since <= STALE_LOOP.as_millis() as u64 {
                ("200 OK", TEXT, "ok\n".into())
            } else {
                (
                    "503 Service Unavailable",
                    TEXT,
                    format!("the daemon loop has not ticked for {since} ms\n"),
                )
            }
        }
        ("GET", "/readyz") => {
            if metrics.is_ready() {
                ("200 OK", TEXT, "ready\n".into())
            } else {
                (
                    "503 Service Unavailable",
                    TEXT,
                    "not ready: the last reconcile has not succeeded\n".into(),
                )
            }
        }
        ("POST", "/sync") => match sync.try_send(()) {
            // A full queue already holds a sync: this one coalesces into it.
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {
                ("202 Accepted", TEXT, "sync queued\n".into())
            }
            Err(mpsc::error::TrySendError::Closed(())) => (
                "503 Service Unavailable",
                TEXT,
                "the daemon is shutting down\n".into(),
            ),
        },
        (_, "/metrics" | "/healthz" | "/readyz" | "/sync") => (
            "405 Method Not Allowed",
            TEXT,
            "method not allowed\n".into(),
        ),
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

/// Sends `POST /sync` to a daemon listening on `addr`; returns the status line.
pub async fn post_sync(addr: SocketAddr) -> std::io::Result<String> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"POST /sync HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(
            String::from_utf8_lossy(&out)
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        )
    };
    tokio::time::timeout(READ_TIMEOUT, fut).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from {addr} within 5s"),
        )
    })?
}

/// `converge sync`: asks the daemon of the checkout containing `repo` to reconcile now, through
/// its loopback endpoint (recorded in the lock file), or SIGUSR1 when it serves none.
pub async fn request_sync(repo: &std::path::Path) -> Result<String, DaemonError> {
    let dirs = super::refs::GitDirs::discover(repo)?;
    if !super::lock::is_held(&dirs.git_dir) {
        return Err(DaemonError::NotRunning {
            checkout: dirs.root.clone(),
        });
    }
    let holder = super::lock::read_holder(&dirs.git_dir).ok_or(DaemonError::Starting)?;
    if let Some(addr) = holder.http.as_deref().and_then(|a| a.parse().ok()) {
        let answer = post_sync(addr)
            .await
            .map_err(|source| DaemonError::Unreachable { addr, source })?;
        if answer.contains(" 202 ") {
            return Ok(format!("sync queued (daemon pid {} at {addr})", holder.pid));
        }
        return Err(DaemonError::SyncRefused { addr, answer });
    }
    crate::process::signal(holder.pid, crate::process::Signal::Usr1)
        .await
        .map_err(|source| DaemonError::Signal {
            pid: holder.pid,
            source,
        })?;
    Ok(format!("sent SIGUSR1 to pid {}", holder.pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_follows_the_last_reconcile() {
        let m = Metrics::default();
        let (tx, _rx) = mpsc::channel(1);
        assert!(route("GET", "/readyz", &m, 0, &tx).0.starts_with("503"));
        m.set_ready(true);
        assert!(route("GET", "/readyz", &m, 0, &tx).0.starts_with("200"));
    }

    #[test]
    fn healthz_fails_when_the_loop_stops_ticking() {
        let m = Metrics::default();
        let (tx, _rx) = mpsc::channel(1);
        m.heartbeat(1_000);
        assert!(route("GET", "/healthz", &m, 2_000, &tx)
            .0
            .starts_with("200"));
        assert!(route("GET", "/healthz", &m, 60_000, &tx)
            .0
            .starts_with("503"));
    }

    #[test]
    fn sync_requests_coalesce_when_one_is_queued() {
        let m = Metrics::default();
        let (tx, mut rx) = mpsc::channel(1);
        assert!(route("POST", "/sync", &m, 0, &tx).0.starts_with("202"));
        assert!(route("POST", "/sync", &m, 0, &tx).0.starts_with("202"));
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
        assert!(route("GET", "/sync", &m, 0, &tx).0.starts_with("405"));
        assert!(route("GET", "/nope", &m, 0, &tx).0.starts_with("404"));
    }

    #[tokio::test]
    async fn binding_a_non_loopback_address_is_refused() {
        let addr: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(bind(addr).await.is_err());
    }
}
