//! The loopback HTTP endpoint: `GET /metrics`, `/healthz`, `/readyz`, `POST /sync` (what
//! `converge sync` calls), the live page (`GET /`, `/app.js`, `/app.css`, `/api/state`,
//! `/events`; see [`super::page`]) and `POST /mcp`, the Model Context Protocol's Streamable HTTP
//! transport for the handler the CLI gives ([`McpEndpoint`]).
//!
//! hyper's HTTP/1 server parses the requests (the sync guard reads `Host`, `Origin` and
//! `Sec-Fetch-Site`) and streams the page's server-sent events; a request head must arrive
//! within 5 s. It refuses a request from this machine whose `Host` is not a loopback name (DNS
//! rebinding), and never blocks the daemon's loop: `/sync` only queues a trigger, and the page
//! reads snapshots the hub publishes.
//!
//! Who gets what is decided by the peer's address, not by the listen address: a peer on
//! another machine (the listen address may be `0.0.0.0` in a Pod) gets `/healthz`, `/readyz`
//! and `/metrics` — the probes and Prometheus need them and they change nothing — and a POST to
//! `/sync` or `/hooks/git` signed with the webhook secret ([`super::webhook`]), which only asks
//! for a fetch; never the page, `/mcp` or an unsigned sync.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, warn};

use super::metrics::Metrics;
use super::page::{self, assets, guard, sse};
use super::webhook::{self, Refusal, Secret};
use super::DaemonError;

/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/api/state` waits for a fresh read of the cluster before answering what it has.
const STATE_WAIT: Duration = Duration::from_secs(3);
/// `/healthz` fails when the loop has not ticked for this long.
const STALE_LOOP: Duration = Duration::from_secs(30);

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Binds `addr`. Any address may be listened on: what a peer on another machine is answered
/// is decided per request ([`serves_other_machines`]).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Whether the peer is this machine (an IPv4 peer of a dual-stack socket included).
fn is_local(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// Whether `method path` is answered to a peer on another machine (besides a signed webhook).
fn serves_other_machines(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// How long a webhook's body may take to arrive.
const WEBHOOK_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Webhook bodies read at once; more are answered 503 (the sender retries).
const WEBHOOK_READS: usize = 4;

/// Signed webhooks: the secret (none: webhooks are off) and where an accepted one asks for a
/// fetch.
#[derive(Debug)]
pub struct Webhook {
    /// `--webhook-secret-file`'s secret.
    pub secret: Option<Secret>,
    /// The daemon loop's fetch trigger.
    pub fetch: mpsc::Sender<()>,
}

/// The largest MCP message `/mcp` reads (as `converge mcp` on stdin).
const MAX_MCP_BODY: usize = 4 * 1024 * 1024;

type McpFuture = Pin<Box<dyn Future<Output = Option<serde_json::Value>> + Send>>;

/// Answers one MCP (JSON-RPC) message posted to `/mcp`: `None` when it needs no response. The
/// daemon knows nothing of MCP; `converge run` hands it the same server `converge mcp` runs.
#[derive(Clone)]
pub struct McpEndpoint(Arc<dyn Fn(Bytes) -> McpFuture + Send + Sync>);

impl McpEndpoint {
    /// An endpoint answering with `handle`.
    pub fn new(handle: impl Fn(Bytes) -> McpFuture + Send + Sync + 'static) -> Self {
        Self(Arc::new(handle))
    }
}

impl std::fmt::Debug for McpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("McpEndpoint")
    }
}

/// What every connection shares.
struct Ctx {
    metrics: Arc<Metrics>,
    started: Instant,
    sync: mpsc::Sender<()>,
    page: page::Shared,
    streams: Arc<Semaphore>,
    mcp: Option<McpEndpoint>,
    webhook: Webhook,
    hook_reads: Arc<Semaphore>,
}

/// Serves connections on `listener` until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    started: Instant,
    sync: mpsc::Sender<()>,
    page: page::Shared,
    mcp: Option<McpEndpoint>,
    webhook: Webhook,
) {
    let ctx = Arc::new(Ctx {
        metrics,
        started,
        sync,
        page,
        streams: Arc::new(Semaphore::new(sse::MAX_STREAMS)),
        mcp,
        webhook,
        hook_reads: Arc::new(Semaphore::new(WEBHOOK_READS)),
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let stall = sse::Stall::default();
            let service = {
                let stall = stall.clone();
                hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    let stall = stall.clone();
                    async move { Ok::<_, Infallible>(respond(&ctx, req, stall, peer).await) }
                })
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "HTTP connection ended with an error");
                    }
                }
                () = stalled(&stall) => {
                    debug!(%peer, "dropped an event stream whose reader stopped reading");
                }
            }
        });
    }
}

/// Returns once the connection's event stream has had a frame waiting longer than
/// [`sse::STALL`].
async fn stalled(stall: &sse::Stall) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if stall.stuck(sse::STALL) {
            return;
        }
    }
}

fn text_header(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// The page's own headers: its policy, no sniffing, no referrer, no caching of live data.
fn page_headers(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(assets::CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

async fn respond(
    ctx: &Ctx,
    req: Request<Incoming>,
    stall: sse::Stall,
    peer: SocketAddr,
) -> Response<Body> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let local = is_local(peer);
    let (method, path) = (req.method(), req.uri().path());
    // A signed request is judged by its signature alone (a browser cannot forge one, so the
    // Host and Origin guards have nothing to add; a reverse proxy may keep its own Host).
    // From another machine every POST /sync is a webhook; /hooks/git always is.
    if method == Method::POST
        && (path == "/hooks/git"
            || (path == "/sync" && (!local || webhook::is_signed(req.headers()))))
    {
        let mut r = webhook_request(ctx, req, peer).await;
        page_headers(&mut r);
        return r;
    }
    if !local && !serves_other_machines(method, path) {
        debug!(%peer, %method, path, "refused a request from another machine");
        let mut r = full(
            StatusCode::FORBIDDEN,
            TEXT,
            "only /healthz, /readyz, /metrics and a signed POST /sync are served to other machines\n",
        );
        page_headers(&mut r);
        return r;
    }
    let headers = req.headers();
    let host = text_header(headers, header::HOST);
    if !local {
        // The probes and metrics, to a peer that names this host by its own address.
        let (status, content_type, body) = route(
            method.as_str(),
            path,
            &ctx.metrics,
            ctx.started.elapsed().as_millis() as u64,
            &ctx.sync,
        );
        let mut r = full(status_of(status), content_type, body);
        page_headers(&mut r);
        return r;
    }
    if host.is_some_and(|h| !guard::loopback_host(h)) {
        return full(
            StatusCode::FORBIDDEN,
            TEXT,
            "this endpoint answers requests for a loopback host name only\n",
        );
    }
    if matches!(path, "/api/state" | "/events") {
        let site = text_header(headers, header::HeaderName::from_static("sec-fetch-site"));
        if let Some(why) = guard::refuse_cross_site_read(site) {
            let mut r = full(StatusCode::FORBIDDEN, TEXT, format!("{why}\n"));
            page_headers(&mut r);
            return r;
        }
    }
    let mut r = match (method, path) {
        (&Method::GET | &Method::HEAD, p) if assets::get(p).is_some() => {
            let (content_type, body) = assets::get(p).unwrap_or(("", ""));
            full(StatusCode::OK, content_type, body)
        }
        (&Method::GET, "/api/state") => {
            // A current view: the hub reads the cluster first when its view is stale.
            let (tx, rx) = oneshot::channel();
            if ctx.page.ask.try_send(tx).is_ok() {
                let _ = tokio::time::timeout(STATE_WAIT, rx).await;
            }
            let json = ctx.page.snapshot.borrow().clone();
            full(StatusCode::OK, "application/json", json.as_bytes().to_vec())
        }
        (&Method::GET, "/events") => match ctx.streams.clone().try_acquire_owned() {
            Ok(permit) => {
                // The first snapshot goes out at once; a fresh read follows when it was stale.
                let (tx, _) = oneshot::channel();
                let _ = ctx.page.ask.try_send(tx);
                let s = sse::stream(
                    ctx.page.snapshot.clone(),
                    ctx.page.open.clone(),
                    permit,
                    stall,
                    sse::HEARTBEAT,
                );
                let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(s)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                r
            }
            Err(_) => full(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("too many pages open (at most {})\n", sse::MAX_STREAMS),
            ),
        },
        (&Method::POST, "/sync") => {
            match guard::refuse_cross_site(
                host,
                text_header(headers, header::ORIGIN),
                text_header(headers, header::HeaderName::from_static("sec-fetch-site")),
            ) {
                Some(why) => {
                    warn!(
                        origin = text_header(headers, header::ORIGIN).unwrap_or(""),
                        "refused a cross-site POST /sync"
                    );
                    full(StatusCode::FORBIDDEN, TEXT, format!("{why}\n"))
                }
                None => {
                    let (status, content_type, body) = route(
                        "POST",
                        "/sync",
                        &ctx.metrics,
                        ctx.started.elapsed().as_millis() as u64,
                        &ctx.sync,
                    );
                    full(status_of(status), content_type, body)
                }
            }
        }
        (&Method::POST, "/mcp") if ctx.mcp.is_some() => {
            let origin = text_header(headers, header::ORIGIN).map(str::to_string);
            let fetch_site =
                text_header(headers, header::HeaderName::from_static("sec-fetch-site"))
                    .map(str::to_string);
            let host = host.map(str::to_string);
            match guard::refuse_cross_site(
                host.as_deref(),
                origin.as_deref(),
                fetch_site.as_deref(),
            ) {
                // The transport's rule: a server validates Origin (DNS rebinding, a web page
                // posting to a local server).
                Some(_) => {
                    warn!(
                        origin = origin.as_deref().unwrap_or(""),
                        "refused a cross-site POST /mcp"
                    );
                    mcp_error(
                        StatusCode::FORBIDDEN,
                        "a request from another site's page may not reach /mcp (Origin, Sec-Fetch-Site)",
                    )
                }
                None => mcp(ctx, req).await,
            }
        }
        (_, "/mcp") if ctx.mcp.is_some() => {
            // No server-initiated stream: every answer comes on its POST.
            let mut r = full(
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                "POST a JSON-RPC message to /mcp\n",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            r
        }
        (m, p) => {
            let (status, content_type, body) = route(
                m.as_str(),
                p,
                &ctx.metrics,
                ctx.started.elapsed().as_millis() as u64,
                &ctx.sync,
            );
            full(status_of(status), content_type, body)
        }
    };
    page_headers(&mut r);
    r
}

/// A webhook: its body read (bounded in size and time), its signature checked, a fetch
/// queued when it holds; every outcome counted in `converge_webhook_requests_total`.
async fn webhook_request(ctx: &Ctx, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let refuse = |r: Refusal| {
        ctx.metrics.webhook(r.label());
        warn!(%peer, result = r.label(), "refused a webhook: {}", r.reason());
        let status = match r {
            Refusal::Unsigned | Refusal::Malformed | Refusal::BadSignature => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Disabled => StatusCode::FORBIDDEN,
        };
        full(status, TEXT, format!("{}\n", r.reason()))
    };
    let Some(secret) = ctx.webhook.secret.clone() else {
        return refuse(Refusal::Disabled);
    };
    if !webhook::is_signed(req.headers()) {
        // Not worth reading a body nobody signed.
        return refuse(Refusal::Unsigned);
    }
    let declared = text_header(req.headers(), header::CONTENT_LENGTH)
        .and_then(|l| l.trim().parse::<u64>().ok());
    if declared.is_some_and(|l| l > webhook::MAX_BODY as u64) {
        return refuse(Refusal::TooLarge);
    }
    let Ok(_slot) = ctx.hook_reads.clone().try_acquire_owned() else {
        return full(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "too many webhooks at once; retry\n",
        );
    };
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(
        WEBHOOK_BODY_TIMEOUT,
        http_body_util::Limited::new(body, webhook::MAX_BODY).collect(),
    )
    .await;
    let body = match read {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(Refusal::TooLarge)
        }
        Ok(Err(_)) | Err(_) => {
            return full(
                StatusCode::BAD_REQUEST,
                TEXT,
                "the body could not be read in time\n",
            )
        }
    };
    if let Err(r) = webhook::verify(&secret, &parts.headers, &body) {
        return refuse(r);
    }
    ctx.metrics.webhook("accepted");
    match ctx.webhook.fetch.try_send(()) {
        // A full queue already holds a fetch request: this one coalesces into it.
        Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {
            debug!(%peer, "signed webhook accepted: fetch queued");
            full(StatusCode::ACCEPTED, TEXT, "fetch queued\n")
        }
        Err(mpsc::error::TrySendError::Closed(())) => full(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "the daemon is shutting down\n",
        ),
    }
}

/// One MCP message: the body (bounded) to the endpoint, its answer as JSON, or 202 for a
/// notification or response.
async fn mcp(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let Some(endpoint) = ctx.mcp.clone() else {
        return mcp_error(StatusCode::NOT_FOUND, "no MCP server on this daemon");
    };
    let too_large = || {
        mcp_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a message is at most {MAX_MCP_BODY} bytes; nothing was read"),
        )
    };
    // Refused before a byte of the body is read, when the client says how long it is.
    let declared = text_header(req.headers(), header::CONTENT_LENGTH)
        .and_then(|l| l.trim().parse::<u64>().ok());
    if declared.is_some_and(|l| l > MAX_MCP_BODY as u64) {
        return too_large();
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_MCP_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            return mcp_error(
                StatusCode::BAD_REQUEST,
                &format!("the message could not be read: {e}"),
            )
        }
    };
    match (endpoint.0)(body).await {
        // A message refused before any method ran (not JSON, not a request): the transport
        // answers it with an HTTP error too.
        Some(answer) if answer.get("error").is_some() && answer["id"].is_null() => full(
            StatusCode::BAD_REQUEST,
            "application/json",
            serde_json::to_vec(&answer).unwrap_or_default(),
        ),
        Some(answer) => full(
            StatusCode::OK,
            "application/json",
            serde_json::to_vec(&answer).unwrap_or_default(),
        ),
        None => full(StatusCode::ACCEPTED, "text/plain; charset=utf-8", ""),
    }
}

/// A JSON-RPC error without an id, for a message refused before it was read.
fn mcp_error(status: StatusCode, why: &str) -> Response<Body> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": -32600, "message": why},
    });
    full(
        status,
        "application/json",
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

/// The status of a `route` status line (`"202 Accepted"`).
fn status_of(line: &str) -> StatusCode {
    line.split_whitespace()
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
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
        ("GET", "/readyz") => match metrics.readiness() {
            (true, line) => ("200 OK", TEXT, format!("{line}\n")),
            (false, line) => ("503 Service Unavailable", TEXT, format!("{line}\n")),
        },
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
        (_, "/metrics" | "/healthz" | "/readyz" | "/sync" | "/api/state" | "/events" | "/") => (
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
    fn readyz_says_standby_and_refusal() {
        let m = Metrics::default();
        let (tx, _rx) = mpsc::channel(1);
        m.set_standing(Some(super::super::metrics::Standing::Standby(
            "standby, leader is converge-a/1".into(),
        )));
        let (status, _, body) = route("GET", "/readyz", &m, 0, &tx);
        assert!(status.starts_with("200"), "{status}");
        assert_eq!(body, "standby, leader is converge-a/1\n");
        m.set_standing(Some(super::super::metrics::Standing::NotLeading(
            "refused: another installation".into(),
        )));
        let (status, _, body) = route("GET", "/readyz", &m, 0, &tx);
        assert!(
            status.starts_with("503") && body.starts_with("refused"),
            "{status} {body}"
        );
        assert!(m.render().contains("converge_leader 0"));
        // A leader in standby mode is ready even when its stacks are not.
        m.set_standing(Some(super::super::metrics::Standing::Leading));
        let (status, _, body) = route("GET", "/readyz", &m, 0, &tx);
        assert!(
            status.starts_with("200") && body.starts_with("leading"),
            "{status} {body}"
        );
        assert!(m.render().contains("converge_leader 1"));
        m.set_standing(None);
        assert!(route("GET", "/readyz", &m, 0, &tx).0.starts_with("503"));
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

    #[test]
    fn other_machines_get_the_probes_and_metrics_only() {
        for p in ["/healthz", "/readyz", "/metrics"] {
            assert!(serves_other_machines(&Method::GET, p), "{p}");
            assert!(!serves_other_machines(&Method::POST, p), "{p}");
        }
        for p in [
            "/",
            "/app.js",
            "/api/state",
            "/events",
            "/mcp",
            "/sync",
            "/hooks/git",
        ] {
            assert!(!serves_other_machines(&Method::GET, p), "{p}");
        }
        assert!(is_local("127.0.0.1:1".parse().unwrap()));
        assert!(is_local("[::1]:1".parse().unwrap()));
        // An IPv4 loopback peer on a dual-stack socket.
        assert!(is_local("[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!is_local("10.0.0.7:1".parse().unwrap()));
        assert!(!is_local("[::ffff:10.0.0.7]:1".parse().unwrap()));
    }
}
