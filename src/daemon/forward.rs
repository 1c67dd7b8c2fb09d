//! Local URLs (`localUrls` in a stack): a `127.0.0.1:<localPort>` listener per URL, held for the
//! daemon's lifetime, that forwards each connection through the API server's Pod port-forward to
//! a Ready endpoint of the component's Service, picked per connection from a watch of its
//! EndpointSlices — so a rollout re-targets new connections at once and the port never changes.
//!
//! It never changes the cluster and never stops the daemon: a port it cannot listen on is one
//! error line with the fix, and reconciling goes on.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::desired;
use crate::reconcile::Clusters;
use crate::vocabulary::{LABEL_COMPONENT, LABEL_STACK};

/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// How long one port-forward may take to open before the next endpoint is tried.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection waits for the first list of Services and endpoints.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// How many endpoints one connection tries before it is refused.
const ATTEMPTS: usize = 3;
/// How long the Pod's answer may still flow after the local client stopped sending.
const LINGER: Duration = Duration::from_secs(10);

/// One local URL as the daemon serves it: where it listens and what it reaches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The stack that asks for it.
    pub stack: String,
    /// The stack's namespace.
    pub namespace: String,
    /// The kube context the stack is applied to.
    pub context: String,
    /// The component whose Service is reached.
    pub component: String,
    /// The Service port; the Service's first port when `None`.
    pub port: Option<u16>,
    /// The port on 127.0.0.1.
    pub local_port: u16,
}

impl Route {
    /// `http://127.0.0.1:<localPort>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.local_port)
    }

    /// `component` or `component:port`, as the start line and the status show it.
    pub fn reaches(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.component),
            None => self.component.clone(),
        }
    }
}

/// The local URLs `stacks` ask for, with `context` overriding each stack's (as the reconcile's
/// targets do). Ports outside 1–65535 cannot pass validation; they are skipped, never wrapped.
pub fn routes_of<'a>(
    stacks: impl IntoIterator<Item = &'a desired::Stack>,
    context: Option<&str>,
) -> Vec<Route> {
    let mut routes = Vec::new();
    for s in stacks {
        for u in &s.spec.local_urls {
            let Ok(local_port) = u16::try_from(u.local_port) else {
                continue;
            };
            let port = match u.port.map(u16::try_from) {
                Some(Ok(p)) => Some(p),
                Some(Err(_)) => continue,
                None => None,
            };
            routes.push(Route {
                stack: s.spec.name.clone(),
                namespace: s.spec.namespace.clone(),
                context: context.map_or_else(|| s.spec.context.clone(), str::to_string),
                component: u.component.clone(),
                port,
                local_port,
            });
        }
    }
    routes
}

/// Why a local URL is not served.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Another process listens on the port.
    #[error("local URL {url} ({stack}/{component}) not served: port {port} is already in use; choose another `localPort` in the stack's `localUrls`, or stop the process holding it (`ss -ltnp 'sport = :{port}'` names it); converge keeps reconciling and tries the port again at the next reconcile")]
    PortInUse {
        /// The URL.
        url: String,
        /// Its stack.
        stack: String,
        /// Its component.
        component: String,
        /// The port.
        port: u16,
    },
    /// The port could not be listened on for another reason (a privileged port, no loopback).
    #[error("local URL {url} ({stack}/{component}) not served: cannot listen on 127.0.0.1:{port}: {source}; choose another `localPort` in the stack's `localUrls` (ports below 1024 need privileges); converge keeps reconciling")]
    Listen {
        /// The URL.
        url: String,
        /// Its stack.
        stack: String,
        /// Its component.
        component: String,
        /// The port.
        port: u16,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The stack's cluster could not be reached, so there is nothing to forward to yet.
    #[error("local URL {url} ({stack}/{component}) not served yet: {message}")]
    Cluster {
        /// The URL.
        url: String,
        /// Its stack.
        stack: String,
        /// Its component.
        component: String,
        /// Why.
        message: String,
    },
}

/// Binds `route`'s local port on loopback.
async fn bind(route: &Route) -> Result<TcpListener, ForwardError> {
    TcpListener::bind(("127.0.0.1", route.local_port))
        .await
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                ForwardError::PortInUse {
                    url: route.url(),
                    stack: route.stack.clone(),
                    component: route.component.clone(),
                    port: route.local_port,
                }
            } else {
                ForwardError::Listen {
                    url: route.url(),
                    stack: route.stack.clone(),
                    component: route.component.clone(),
                    port: route.local_port,
                    source,
                }
            }
        })
}

struct Running {
    route: Route,
    task: JoinHandle<()>,
}

/// The local URLs being served, by local port.
#[derive(Default)]
pub struct Forwards {
    running: BTreeMap<u16, Running>,
    /// Routes that could not be served, so their error is logged once, not at every reconcile.
    refused: BTreeMap<u16, Route>,
}

impl Forwards {
    /// Serves exactly `routes`: starts new ones, stops removed or changed ones (a changed one
    /// is rebound at once), and tries the ports refused earlier again.
    pub async fn ensure(
        &mut self,
        routes: &[Route],
        clusters: &mut Clusters,
        kubeconfig: Option<&Path>,
    ) {
        let wanted: BTreeMap<u16, &Route> = routes.iter().map(|r| (r.local_port, r)).collect();
        self.running.retain(|port, run| {
            let keep = wanted.get(port).is_some_and(|r| **r == run.route);
            if !keep {
                run.task.abort();
                info!(url = %run.route.url(), stack = %run.route.stack, component = %run.route.component, "local URL no longer served");
            }
            keep
        });
        self.refused
            .retain(|port, r| wanted.get(port).is_some_and(|w| *w == r));
        for (port, route) in wanted {
            if self.running.contains_key(&port) {
                continue;
            }
            let started = match clusters.get(kubeconfig, &route.context).await {
                Ok(c) => start(route, c.client().clone()).await,
                Err(e) => Err(ForwardError::Cluster {
                    url: route.url(),
                    stack: route.stack.clone(),
                    component: route.component.clone(),
                    message: e.to_string(),
                }),
            };
            match started {
                Ok(task) => {
                    if self.refused.remove(&port).is_some() {
                        info!(url = %route.url(), stack = %route.stack, reaches = %route.reaches(), "local URL served now");
                    }
                    self.running.insert(
                        port,
                        Running {
                            route: route.clone(),
                            task,
                        },
                    );
                }
                Err(e) => {
                    if self.refused.insert(port, route.clone()).is_none() {
                        error!(port, stack = %route.stack, "{e}");
                    }
                }
            }
        }
    }

    /// The routes being served, by local port.
    pub fn serving(&self) -> impl Iterator<Item = &Route> {
        self.running.values().map(|r| &r.route)
    }

    /// Stops every listener (connections in flight end with their Pods' answers).
    pub fn stop(&mut self) {
        for r in self.running.values() {
            r.task.abort();
        }
        self.running.clear();
    }
}

/// Binds the route's port and serves it in a task of its own.
async fn start(route: &Route, client: Client) -> Result<JoinHandle<()>, ForwardError> {
    let listener = bind(route).await?;
    let route = route.clone();
    Ok(tokio::spawn(serve(listener, client, route)))
}

/// Watches the component's Services and the namespace's EndpointSlices, and forwards each
/// accepted connection.
async fn serve(listener: TcpListener, client: Client, route: Route) {
    let ns = route.namespace.as_str();
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let svc_config = watcher::Config::default().labels(&format!(
        "{LABEL_STACK}={},{LABEL_COMPONENT}={}",
        route.stack, route.component
    ));
    // Slices of any Service of the namespace: the Service's name is known only from the first
    // watch, and a namespace's slices are few and small.
    let slice_config = watcher::Config::default().labels(SERVICE_NAME_LABEL);
    let svc_events = reflector::reflector(
        svc_writer,
        watcher::watcher(Api::<Service>::namespaced(client.clone(), ns), svc_config),
    )
    .default_backoff()
    .map(|r| r.map(|_| ()));
    let slice_events = reflector::reflector(
        slice_writer,
        watcher::watcher(
            Api::<EndpointSlice>::namespaced(client.clone(), ns),
            slice_config,
        ),
    )
    .default_backoff()
    .map(|r| r.map(|_| ()));
    let watching = futures::stream::select(svc_events, slice_events).for_each(|r| async {
        if let Err(e) = r {
            debug!(error = %e, "local URL: watch of the Service's endpoints interrupted (retried with back-off)");
        }
    });
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let turn = Arc::new(AtomicUsize::new(0));
    info!(url = %route.url(), stack = %route.stack, reaches = %route.reaches(), "local URL served");
    let accepting = async {
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    tokio::spawn(connection(
                        sock,
                        pods.clone(),
                        services.clone(),
                        slices.clone(),
                        route.clone(),
                        turn.fetch_add(1, Ordering::Relaxed),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!(url = %route.url(), error = %e, "local URL: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    tokio::select! {
        () = watching => {}
        () = accepting => {}
    }
}

/// One local connection: a port-forward to a Ready endpoint, trying the next one when a Pod
/// cannot be reached (it was deleted an instant ago), then bytes copied both ways.
async fn connection(
    sock: TcpStream,
    pods: Api<Pod>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    route: Route,
    turn: usize,
) {
    if tokio::time::timeout(SYNC_TIMEOUT, async {
        let _ = services.wait_until_ready().await;
        let _ = slices.wait_until_ready().await;
    })
    .await
    .is_err()
    {
        warn!(url = %route.url(), "local URL: the Service's endpoints are not known yet (no answer from the API server); connection closed");
        return;
    }
    let candidates = match endpoints(
        &services.state(),
        &slices.state(),
        &route.component,
        route.port,
    ) {
        Ok(c) => c,
        Err(why) => {
            warn!(url = %route.url(), stack = %route.stack, "local URL: connection closed: {why}");
            return;
        }
    };
    for i in 0..candidates.len().min(ATTEMPTS) {
        let target = &candidates[(turn + i) % candidates.len()];
        let opened =
            tokio::time::timeout(OPEN_TIMEOUT, pods.portforward(&target.pod, &[target.port])).await;
        match opened {
            Ok(Ok(pf)) => {
                debug!(url = %route.url(), pod = %target.pod, port = target.port, "local URL: forwarding");
                proxy(sock, pf, target).await;
                return;
            }
            Ok(Err(e)) => {
                debug!(url = %route.url(), pod = %target.pod, error = %e, "local URL: port-forward refused; trying the next endpoint");
            }
            Err(_) => {
                debug!(url = %route.url(), pod = %target.pod, "local URL: port-forward did not open in time; trying the next endpoint");
            }
        }
    }
    warn!(url = %route.url(), stack = %route.stack, component = %route.component, "local URL: no endpoint accepted a port-forward; connection closed");
}

/// Copies bytes between the local client and the Pod until the Pod's side ends.
async fn proxy(sock: TcpStream, mut pf: kube::api::Portforwarder, target: &Endpoint) {
    let Some(upstream) = pf.take_stream(target.port) else {
        pf.abort();
        return;
    };
    let errors = pf.take_error(target.port);
    let (mut client_r, mut client_w) = sock.into_split();
    let (mut pod_r, mut pod_w) = tokio::io::split(upstream);
    // kube's forwarder closes both directions when one is shut down, so the client's half-close
    // (end of its request) is never passed on: the Pod's answer decides when the connection ends.
    let up = tokio::io::copy(&mut client_r, &mut pod_w);
    let down = async {
        let _ = tokio::io::copy(&mut pod_r, &mut client_w).await;
        let _ = client_w.shutdown().await;
    };
    tokio::pin!(up, down);
    let pod = target.pod.clone();
    // Only an error message ends the connection early: the error channel also closes when the
    // forward ends normally, and the answer's last bytes may still be on their way then.
    let reported = async move {
        if let Some(errors) = errors {
            if let Some(msg) = errors.await {
                debug!(%pod, error = %msg, "local URL: the Pod's port reported an error");
                return;
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = &mut down => {}
        _ = &mut up => {
            let _ = tokio::time::timeout(LINGER, &mut down).await;
        }
        () = reported => {
            // The kubelet could not reach the port: end this connection (the client retries,
            // and its next connection goes to a current endpoint).
        }
    }
    pf.abort();
}

/// A Pod and the port on it that serves the Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    pod: String,
    port: u16,
}

/// Why no endpoint can take a connection.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum NoEndpoint {
    #[error("the stack has no Service for component `{0}` (yet)")]
    NoService(String),
    #[error("Service {service} has no port {port}")]
    NoPort { service: String, port: u16 },
    #[error("Service {0} has no Ready endpoint")]
    NotReady(String),
}

/// The endpoints of the component's Service that serve `port` (pure): Ready ones (never
/// terminating), sorted by Pod name; only when there is none, terminating ones still serving
/// (as kube-proxy falls back to them), so a connection during a scale-down still finds a Pod.
fn endpoints(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    component: &str,
    port: Option<u16>,
) -> Result<Vec<Endpoint>, NoEndpoint> {
    let mut services: Vec<&Service> = services
        .iter()
        .map(Arc::as_ref)
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_COMPONENT))
                .is_some_and(|c| c == component)
        })
        .collect();
    services.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let Some(first) = services.first() else {
        return Err(NoEndpoint::NoService(component.to_string()));
    };
    let name_of = |s: &Service| s.metadata.name.clone().unwrap_or_default();
    // The first Service with the asked port (a component may have a headless Service too).
    let found = services.iter().find_map(|s| {
        let ports = s.spec.as_ref()?.ports.as_ref()?;
        let p = match port {
            Some(want) => ports.iter().find(|p| p.port == i32::from(want))?,
            None => ports.first()?,
        };
        Some((name_of(s), p.name.clone().unwrap_or_default()))
    });
    let Some((service, port_name)) = found else {
        return Err(match port {
            Some(port) => NoEndpoint::NoPort {
                service: name_of(first),
                port,
            },
            None => NoEndpoint::NotReady(name_of(first)),
        });
    };
    let mut ready = Vec::new();
    let mut serving = Vec::new();
    for slice in slices.iter().filter(|s| {
        s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .is_some_and(|n| *n == service)
            && s.address_type != "FQDN"
    }) {
        let Some(number) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.clone().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(pod) = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone())
            else {
                continue;
            };
            let c = ep.conditions.as_ref();
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            // `ready` unset means ready (the API's documented default).
            let is_ready = c.and_then(|c| c.ready).unwrap_or(true) && !terminating;
            let is_serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
            let e = Endpoint { pod, port: number };
            if is_ready {
                ready.push(e);
            } else if is_serving {
                serving.push(e);
            }
        }
    }
    let mut chosen = if ready.is_empty() { serving } else { ready };
    chosen.sort_by(|a, b| a.pod.cmp(&b.pod));
    // A dual-stack Service has one slice per address family, naming the same Pods.
    chosen.dedup();
    if chosen.is_empty() {
        return Err(NoEndpoint::NotReady(service));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ObjectReference, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::EndpointPort;
    use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointConditions};
    use kube::api::ObjectMeta;

    fn service(name: &str, component: &str, ports: &[(&str, i32)]) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(LABEL_COMPONENT.to_string(), component.to_string())].into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: Some(n.to_string()),
                            port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// A slice of `service` whose port `name` is `number`, with `(pod, ready, serving, terminating)`.
    fn slice(
        service: &str,
        name: &str,
        number: i32,
        eps: &[(&str, bool, bool, bool)],
    ) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{service}-abc")),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ports: Some(vec![EndpointPort {
                name: Some(name.into()),
                port: Some(number),
                ..Default::default()
            }]),
            endpoints: eps
                .iter()
                .map(|(pod, ready, serving, terminating)| SliceEndpoint {
                    addresses: vec!["10.0.0.1".into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*serving),
                        terminating: Some(*terminating),
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(pod.to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        })
    }

    fn pods(eps: &[Endpoint]) -> Vec<(&str, u16)> {
        eps.iter().map(|e| (e.pod.as_str(), e.port)).collect()
    }

    #[test]
    fn a_connection_goes_to_ready_pods_on_the_target_port_never_to_terminating_ones() {
        let svcs = [service("web", "web", &[("http", 80)])];
        let slices = [slice(
            "web",
            "http",
            8080,
            &[
                ("web-new", true, true, false),
                ("web-old", false, true, true),
                ("web-starting", false, false, false),
            ],
        )];
        let got = endpoints(&svcs, &slices, "web", None).expect("a Ready endpoint");
        assert_eq!(pods(&got), [("web-new", 8080)]);
    }

    #[test]
    fn terminating_pods_still_serving_are_used_only_when_none_is_ready() {
        let svcs = [service("web", "web", &[("http", 80)])];
        let slices = [slice(
            "web",
            "http",
            8080,
            &[("web-old", false, true, true)],
        )];
        let got = endpoints(&svcs, &slices, "web", None).expect("a serving endpoint");
        assert_eq!(pods(&got), [("web-old", 8080)]);
        let slices = [slice(
            "web",
            "http",
            8080,
            &[("web-old", false, false, true)],
        )];
        assert_eq!(
            endpoints(&svcs, &slices, "web", None),
            Err(NoEndpoint::NotReady("web".into()))
        );
    }

    #[test]
    fn the_asked_service_port_picks_the_slice_port_of_the_same_name() {
        let svcs = [service("api", "api", &[("http", 80), ("metrics", 9090)])];
        let slices = [
            slice("api", "http", 8000, &[("api-1", true, true, false)]),
            slice("api", "metrics", 9100, &[("api-1", true, true, false)]),
            slice("other", "metrics", 1, &[("other-1", true, true, false)]),
        ];
        let got = endpoints(&svcs, &slices, "api", Some(9090)).expect("metrics");
        assert_eq!(pods(&got), [("api-1", 9100)]);
        let got = endpoints(&svcs, &slices, "api", None).expect("the first port");
        assert_eq!(pods(&got), [("api-1", 8000)]);
        assert_eq!(
            endpoints(&svcs, &slices, "api", Some(81)),
            Err(NoEndpoint::NoPort {
                service: "api".into(),
                port: 81
            })
        );
        assert_eq!(
            endpoints(&svcs, &slices, "web", None),
            Err(NoEndpoint::NoService("web".into()))
        );
    }

    #[tokio::test]
    async fn a_port_in_use_is_refused_with_the_port_and_the_fix() {
        let holder = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let port = holder.local_addr().expect("addr").port();
        let route = Route {
            stack: "todo".into(),
            namespace: "todo".into(),
            context: "minikube".into(),
            component: "frontend".into(),
            port: None,
            local_port: port,
        };
        let e = bind(&route).await.expect_err("the port is held");
        let text = e.to_string();
        assert!(matches!(e, ForwardError::PortInUse { .. }), "{text}");
        assert!(
            text.contains(&format!("port {port} is already in use")),
            "{text}"
        );
        assert!(text.contains("choose another `localPort`"), "{text}");
        assert!(text.contains("stop the process holding it"), "{text}");
    }
}
