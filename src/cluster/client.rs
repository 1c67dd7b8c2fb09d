//! A kube client for one kubeconfig context, with two layers under every request it sends: one
//! counts requests, the other gives each a deadline ([`REQUEST_TIMEOUT`](super::REQUEST_TIMEOUT)),
//! so no caller writes its own timeout around an API call.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tower::{Layer, Service};

use super::ClusterError;

/// Counts of requests by kind, shared by every clone of a client.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    reads: AtomicU64,
    writes: AtomicU64,
    dry_runs: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestCounts {
    /// GET/LIST/WATCH requests.
    pub reads: u64,
    /// Requests that change the cluster (POST, PUT, PATCH, DELETE without dry-run).
    pub writes: u64,
    /// Dry-run requests (never change the cluster).
    pub dry_runs: u64,
}

impl RequestCounter {
    /// The counts so far.
    pub fn get(&self) -> RequestCounts {
        RequestCounts {
            reads: self.0.reads.load(Ordering::Relaxed),
            writes: self.0.writes.load(Ordering::Relaxed),
            dry_runs: self.0.dry_runs.load(Ordering::Relaxed),
        }
    }

    fn record<B>(&self, req: &http::Request<B>) {
        let m = req.method();
        let counter = if m == http::Method::GET || m == http::Method::HEAD {
            &self.0.reads
        } else if req.uri().query().is_some_and(|q| q.contains("dryRun=All")) {
            &self.0.dry_runs
        } else {
            &self.0.writes
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl<S> Layer<S> for RequestCounter {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            counter: self.clone(),
        }
    }
}

/// The service the counting layer wraps around the client's stack.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    counter: RequestCounter,
}

impl<S, B> Service<http::Request<B>> for Counted<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.counter.record(&req);
        self.inner.call(req)
    }
}

/// Builds a client for `context` (the kubeconfig's current context when `None`) of the kubeconfig
/// at `path` (`$KUBECONFIG` or `~/.kube/config` when `None`), counting requests.
pub async fn connect(
    path: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<(Client, RequestCounter), ClusterError> {
    connect_to(path, context)
        .await
        .map(|(client, counter, _, _)| (client, counter))
}

/// Which kubeconfig file a command reads, as people name it.
pub fn kubeconfig_path(path: Option<&std::path::Path>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => match std::env::var("KUBECONFIG") {
            Ok(k) if !k.is_empty() => k,
            _ => std::env::var("HOME")
                .map(|h| format!("{h}/.kube/config"))
                .unwrap_or_else(|_| "~/.kube/config".into()),
        },
    }
}

/// [`connect`], also returning the API server's URL and the context's name (for messages).
pub async fn connect_to(
    path: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<(Client, RequestCounter, String, String), ClusterError> {
    let file = kubeconfig_path(path);
    if in_pod(path, std::path::Path::new(&file).exists(), |v| {
        std::env::var(v).ok()
    }) {
        return in_cluster(context);
    }
    let unusable = |message: String| ClusterError::Kubeconfig {
        path: file.clone(),
        message,
    };
    let read = match path {
        Some(p) => Kubeconfig::read_from(p),
        None => Kubeconfig::read(),
    };
    let kubeconfig = read.map_err(|e| {
        // The innermost cause names the problem (file not found, YAML error); the rest is noise.
        let mut detail = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            detail = c.to_string();
            cause = c.source();
        }
        unusable(format!("cannot read the kubeconfig {file}: {detail}"))
    })?;
    if kubeconfig.contexts.is_empty() {
        return Err(unusable(format!(
            "the kubeconfig {file} names no kube context (is it empty?)"
        )));
    }
    let known: Vec<String> = kubeconfig.contexts.iter().map(|c| c.name.clone()).collect();
    let chosen = match context {
        Some(ctx) if !known.iter().any(|k| k == ctx) => {
            return Err(ClusterError::UnknownContext {
                context: ctx.to_string(),
                path: file.clone(),
                known,
            })
        }
        Some(ctx) => ctx.to_string(),
        None => match kubeconfig.current_context.clone().filter(|c| !c.is_empty()) {
            Some(c) => c,
            None => {
                return Err(unusable(format!(
                    "the kubeconfig {file} has no current context (known: {})",
                    known.join(", ")
                )))
            }
        },
    };
    let options = KubeConfigOptions {
        context: Some(chosen.clone()),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| unusable(format!("kube context {chosen} in {file}: {e}")))?;
    let server = config.cluster_url.to_string();
    let (client, counter) = client_for(config)?;
    Ok((
        client,
        counter,
        server.trim_end_matches('/').to_string(),
        chosen,
    ))
}

/// Whether to use the Pod's service account: in a Pod (`KUBERNETES_SERVICE_HOST` set) with no
/// kubeconfig given (`--kubeconfig`, `$KUBECONFIG`) nor found at `~/.kube/config`.
fn in_pod(
    path: Option<&std::path::Path>,
    default_file_exists: bool,
    env: impl Fn(&str) -> Option<String>,
) -> bool {
    let set = |v: &str| env(v).is_some_and(|x| !x.is_empty());
    path.is_none() && !set("KUBECONFIG") && !default_file_exists && set("KUBERNETES_SERVICE_HOST")
}

/// The context name reported for the service account's cluster.
pub const IN_CLUSTER: &str = "in-cluster";

/// A client for the cluster the Pod runs in, with its service account, whatever `context` a
/// stack names (a Pod has no kubeconfig to resolve it in): said once in the log.
fn in_cluster(
    context: Option<&str>,
) -> Result<(Client, RequestCounter, String, String), ClusterError> {
    static SAID: std::sync::Once = std::sync::Once::new();
    let config = Config::incluster().map_err(|e| ClusterError::Config {
        message: format!(
            "in a Pod (KUBERNETES_SERVICE_HOST is set) with no kubeconfig: the service account's token or CA cannot be read: {e}; mount the service account token (automountServiceAccountToken) or pass --kubeconfig"
        ),
    })?;
    let server = config.cluster_url.to_string();
    SAID.call_once(|| {
        tracing::info!(
            server = %server,
            context = context.unwrap_or(""),
            "running in a Pod with no kubeconfig: every stack uses this Pod's service account on its own cluster, whatever `context` it names"
        );
    });
    let (client, counter) = client_for(config)?;
    Ok((
        client,
        counter,
        server.trim_end_matches('/').to_string(),
        IN_CLUSTER.to_string(),
    ))
}

/// Builds a counting client, whose requests each have a deadline, from an already loaded config.
pub fn client_for(config: Config) -> Result<(Client, RequestCounter), ClusterError> {
    let counter = RequestCounter::default();
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| ClusterError::Config {
            message: format!("building the kube client: {e}"),
        })?
        .with_layer(&Deadline::new(super::REQUEST_TIMEOUT))
        .with_layer(&counter)
        .build();
    Ok((client, counter))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error of a request past its deadline; the client hands it back inside
/// `kube::Error::Service`, and [`ClusterError::from_kube`] turns it into
/// [`ClusterError::Timeout`].
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no answer from the API server within {}s", .0.as_secs())]
pub struct Elapsed(pub Duration);

/// Whether a client error is a request that ran past its deadline.
pub fn is_elapsed(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Service(inner) if inner.is::<Elapsed>())
}

/// A layer giving every request one deadline, from sending it to the last byte of its answer.
/// Streams (watches, followed logs, upgraded connections) are bounded until their headers only:
/// the API server sends those at once and then holds the stream open on purpose.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    limit: Duration,
}

impl Deadline {
    /// A deadline of `limit` per request.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for Deadline {
    type Service = Bounded<S>;
    fn layer(&self, inner: S) -> Bounded<S> {
        Bounded {
            inner,
            limit: self.limit,
        }
    }
}

/// The service the deadline layer wraps around the client's stack.
#[derive(Clone)]
pub struct Bounded<S> {
    inner: S,
    limit: Duration,
}

/// Whether a request's answer is a stream held open by design (a watch, a followed log, an
/// upgraded connection), so only its headers are bounded.
fn streams<B>(req: &http::Request<B>) -> bool {
    let query = req.uri().query().unwrap_or("");
    query
        .split('&')
        .any(|p| matches!(p, "watch=true" | "watch=1" | "follow=true" | "follow=1"))
        || req.headers().contains_key(http::header::UPGRADE)
}

impl<S, B, RB> Service<http::Request<B>> for Bounded<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<DeadlineBody<RB>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let limit = self.limit;
        let whole_body = !streams(&req);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + limit;
            match tokio::time::timeout_at(deadline, answer).await {
                Err(_) => Err(Box::new(Elapsed(limit)) as BoxError),
                Ok(Err(e)) => Err(e.into()),
                Ok(Ok(res)) => Ok(res.map(|body| DeadlineBody {
                    inner: Box::pin(body),
                    deadline: whole_body.then(|| Box::pin(tokio::time::sleep_until(deadline))),
                    limit,
                })),
            }
        })
    }
}

/// A response body that fails with [`Elapsed`] when it is still arriving at the request's
/// deadline (never, for streams).
pub struct DeadlineBody<B> {
    inner: Pin<Box<B>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    limit: Duration,
}

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, BoxError>>> {
        // Every field is boxed, so the body itself may move.
        let this = self.get_mut();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let passed = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if passed {
                    Poll::Ready(Some(Err(Box::new(Elapsed(this.limit)))))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod in_pod_tests {
    use super::in_pod;
    use std::path::Path;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn a_pod_without_a_kubeconfig_uses_its_service_account() {
        let pod = [("KUBERNETES_SERVICE_HOST", "10.96.0.1")];
        assert!(in_pod(None, false, env(&pod)));
        // A kubeconfig given or found wins: a laptop, or a Pod mounting one on purpose.
        assert!(!in_pod(Some(Path::new("/k")), false, env(&pod)));
        assert!(!in_pod(None, true, env(&pod)));
        let with_env = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBECONFIG", "/k"),
        ];
        assert!(!in_pod(None, false, env(&with_env)));
        // Not in a Pod: the kubeconfig error names the missing file, as before.
        assert!(!in_pod(None, false, env(&[])));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::{ListParams, WatchParams};

    /// Answers every request at once with a [`Silent`] body, or never.
    #[derive(Clone)]
    struct Server {
        answers: bool,
    }

    /// A body that never yields: a watch with no events, or a list whose bytes stopped coming.
    struct Silent;

    impl http_body::Body for Silent {
        type Data = &'static [u8];
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            Poll::Pending
        }
    }

    impl Service<http::Request<()>> for Server {
        type Response = http::Response<Silent>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let answers = self.answers;
            Box::pin(async move {
                if !answers {
                    std::future::pending::<()>().await;
                }
                Ok(http::Response::new(Silent))
            })
        }
    }

    const LIMIT: Duration = Duration::from_millis(50);

    /// The request kube itself builds for `url`, as the layer sees it.
    fn request(watch: bool) -> http::Request<()> {
        let r = kube::core::Request::new("/api/v1/namespaces/ns/pods");
        let built = if watch {
            r.watch(&WatchParams::default(), "0")
        } else {
            r.list(&ListParams::default())
        };
        built.expect("a valid request").map(|_| ())
    }

    /// Polls one frame of a body, at most 4 deadlines long; `None` when it is still pending.
    async fn first_frame<B: http_body::Body + Unpin>(body: &mut B) -> Option<Result<(), B::Error>> {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
        match tokio::time::timeout(LIMIT * 4, frame).await {
            Ok(Some(r)) => Some(r.map(drop)),
            Ok(None) => Some(Ok(())),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn a_request_without_an_answer_fails_at_its_deadline() {
        let mut svc = Deadline::new(LIMIT).layer(Server { answers: false });
        let err = match svc.call(request(false)).await {
            Err(e) => e,
            Ok(_) => panic!("a request that is never answered must fail"),
        };
        assert!(err.is::<Elapsed>(), "{err}");
        let as_kube = kube::Error::Service(err);
        assert!(is_elapsed(&as_kube));
        assert!(matches!(
            ClusterError::from_kube("listing", "pods in ns", as_kube),
            ClusterError::Timeout { .. }
        ));
    }

    #[tokio::test]
    async fn a_list_whose_body_stalls_fails_but_a_watch_stays_open() {
        let mut svc = Deadline::new(LIMIT).layer(Server { answers: true });
        let mut list = match svc.call(request(false)).await {
            Ok(r) => r.into_body(),
            Err(e) => panic!("{e}"),
        };
        match first_frame(&mut list).await {
            Some(Err(e)) => assert!(e.is::<Elapsed>(), "{e}"),
            other => panic!("a stalled list body must fail at the deadline: {other:?}"),
        }
        // The headers of a watch came, so the deadline is met: its events may take minutes.
        let mut watch = match svc.call(request(true)).await {
            Ok(r) => r.into_body(),
            Err(e) => panic!("{e}"),
        };
        assert!(
            first_frame(&mut watch).await.is_none(),
            "a watch is never cut by the request deadline"
        );
    }
}
