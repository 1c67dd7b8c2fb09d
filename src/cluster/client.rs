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
