//! A kube client for one kubeconfig context, with a layer that counts the requests it sends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

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
    let kubeconfig = match path {
        Some(p) => Kubeconfig::read_from(p).map_err(|e| ClusterError::Config {
            message: format!("cannot read the kubeconfig {}: {e}", p.display()),
        })?,
        None => Kubeconfig::read().map_err(|e| ClusterError::Config {
            message: format!("cannot read the kubeconfig ($KUBECONFIG or ~/.kube/config): {e}"),
        })?,
    };
    if let Some(ctx) = context {
        if !kubeconfig.contexts.iter().any(|c| c.name == ctx) {
            let known: Vec<_> = kubeconfig
                .contexts
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            let hint = if ctx == "minikube" {
                "start it with `minikube start`, or pass --context"
            } else {
                "pass --context with one of the known contexts"
            };
            return Err(ClusterError::Config {
                message: format!(
                    "kube context `{ctx}` is not in the kubeconfig (known: {}); {hint}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            });
        }
    }
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| ClusterError::Config {
            message: format!("kubeconfig context {}: {e}", context.unwrap_or("(current)")),
        })?;
    client_for(config)
}

/// Builds a counting client from an already loaded config.
pub fn client_for(config: Config) -> Result<(Client, RequestCounter), ClusterError> {
    let counter = RequestCounter::default();
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| ClusterError::Config {
            message: format!("building the kube client: {e}"),
        })?
        .with_layer(&counter)
        .build();
    Ok((client, counter))
}
