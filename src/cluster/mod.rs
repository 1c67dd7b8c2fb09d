//! The live cluster: client, discovery, server-side apply and dry-run, listing what converge
//! manages, deletion, health and the in-cluster inventory.
//!
//! It knows nothing of the desired state: it is handed plain objects and keys. Every API call is
//! bounded by the client's deadline layer ([`client`]), and every client error is classified
//! once, by [`ClusterError::from_kube`].

pub mod client;
pub mod diff;
pub mod health;
pub mod inventory;
pub mod lease;
pub mod order;
pub mod record;
pub mod teardown;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

pub use client::{RequestCounter, RequestCounts};

use crate::vocabulary::FIELD_MANAGER;

/// How long one API request may take before it counts as failed (the client's deadline layer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Failures talking to the cluster.
#[derive(Debug)]
pub enum ClusterError {
    /// The kubeconfig or context is unusable.
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The kubeconfig file is missing, unreadable, empty or names no usable context.
    Kubeconfig {
        /// The file (or `$KUBECONFIG`'s list) that was read.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The kube context is not in the kubeconfig.
    UnknownContext {
        /// The context asked for.
        context: String,
        /// The kubeconfig read.
        path: String,
        /// The contexts it has.
        known: Vec<String>,
    },
    /// Nothing answers at the API server's address.
    Unreachable {
        /// The server URL from the kubeconfig.
        server: String,
        /// The context.
        context: String,
        /// The client error; its innermost cause is the one line shown.
        source: kube::Error,
    },
    /// The API server could not be reached or answered with an unexpected error.
    Api {
        /// What converge was doing.
        action: &'static str,
        /// The object or collection.
        object: String,
        /// The client error; its message is part of this error's, its causes are the chain.
        source: kube::Error,
    },
    /// A request took longer than [`REQUEST_TIMEOUT`] (the client's deadline layer).
    Timeout {
        /// What converge was doing.
        action: &'static str,
        /// The object or collection.
        object: String,
    },
    /// An object converge deleted was still there when its deliberate wait for the deletion ran
    /// out (a finalizer, or a controller that has not let go yet).
    NotGone {
        /// The object.
        object: String,
        /// How long converge waited.
        after: Duration,
    },
    /// The object's namespace is being deleted: nothing can be created in it until it is gone.
    NamespaceTerminating {
        /// What converge was doing.
        action: &'static str,
        /// The object.
        object: String,
        /// The API server's words (`namespace todo is being terminated`).
        message: String,
    },
    /// The kind is not served by the cluster (a missing CRD, say).
    UnknownKind {
        /// The kind.
        gvk: String,
        /// What discovery said.
        message: String,
    },
    /// Another field manager owns fields converge applies.
    Conflict {
        /// The object.
        object: String,
        /// Managers that own the conflicting fields.
        managers: Vec<String>,
        /// The conflicting field paths.
        fields: Vec<String>,
    },
    /// A change to a field the API server does not allow to change.
    Immutable {
        /// The object.
        object: String,
        /// The immutable field.
        field: String,
        /// The API server's message.
        message: String,
        /// Whether `--recreate` may delete and re-create the object.
        recreatable: bool,
    },
    /// The API server refused the object (validation, admission).
    Invalid {
        /// The object.
        object: String,
        /// The API server's message.
        message: String,
    },
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::Config { message } | ClusterError::Kubeconfig { message, .. } => {
                f.write_str(message)
            }
            ClusterError::UnknownContext {
                context,
                path,
                known,
            } => write!(
                f,
                "kube context `{context}` is not in the kubeconfig {path} (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
            ClusterError::Unreachable {
                server,
                context,
                source,
            } => write!(
                f,
                "cannot reach the API server at {server} (kube context {context}): {}",
                innermost(source)
            ),
            ClusterError::Api {
                action,
                object,
                source,
            } => write!(f, "{action} {object}: {}", api_message(source)),
            ClusterError::Timeout { action, object } => write!(
                f,
                "{action} {object}: no answer from the API server within {}s",
                REQUEST_TIMEOUT.as_secs()
            ),
            ClusterError::NotGone { object, after } => write!(
                f,
                "{object} still exists after {}s of waiting for its deletion",
                after.as_secs()
            ),
            ClusterError::NamespaceTerminating {
                action,
                object,
                message,
            } => write!(
                f,
                "{action} {object}: {message}; nothing can be created in it until it is gone"
            ),
            ClusterError::UnknownKind { gvk, message } => {
                write!(f, "{gvk} is not served by this cluster: {message}")
            }
            ClusterError::Conflict {
                object,
                managers,
                fields,
            } => write!(
                f,
                "{object}: conflict with field manager {} over {}; re-run with --force-conflicts to take ownership",
                managers.join(", "),
                fields.join(", ")
            ),
            ClusterError::Immutable {
                object,
                field,
                message,
                recreatable,
            } => write!(
                f,
                "{object}: `{field}` cannot be changed in place ({message}){}",
                if *recreatable {
                    "; re-run with --recreate to delete and re-create it (no data is lost for this kind)"
                } else {
                    "; this kind holds data, so converge will not re-create it: change the field back, or migrate by hand"
                }
            ),
            ClusterError::Invalid { object, message } => {
                write!(f, "{object}: the API server refused it: {message}")
            }
        }
    }
}

impl std::error::Error for ClusterError {
    /// The causes the message does not already say: none for an API server's answer (its
    /// message is the line), a transport error's own causes for [`ClusterError::Api`], and for
    /// an unreachable server the whole client error (the line shows only its innermost cause).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // An answer's Status is the message itself; a transport error's causes are not.
            ClusterError::Api {
                source: kube::Error::Api(_),
                ..
            } => None,
            ClusterError::Api { source, .. } => std::error::Error::source(source),
            ClusterError::Unreachable { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The innermost cause of an error chain, in one line: "Connection refused (os error 111)".
fn innermost(e: &kube::Error) -> String {
    let mut detail = e.to_string();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cause {
        detail = c.to_string();
        cause = c.source();
    }
    detail
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "(unknown)".into()
    } else {
        s.to_string()
    }
}

impl ClusterError {
    /// A client error of `action` on `object`, classified once for every caller: a request past
    /// its deadline is [`ClusterError::Timeout`], a create refused because the namespace is
    /// being deleted is [`ClusterError::NamespaceTerminating`], anything else
    /// [`ClusterError::Api`].
    pub fn from_kube(action: &'static str, object: impl fmt::Display, source: kube::Error) -> Self {
        let object = object.to_string();
        if client::is_elapsed(&source) {
            return ClusterError::Timeout { action, object };
        }
        if let kube::Error::Api(s) = &source {
            let cause = s
                .details
                .iter()
                .flat_map(|d| &d.causes)
                .find(|c| c.reason == NAMESPACE_TERMINATING);
            if let Some(cause) = cause {
                return ClusterError::NamespaceTerminating {
                    action,
                    object,
                    message: cause.message.clone(),
                };
            }
        }
        ClusterError::Api {
            action,
            object,
            source,
        }
    }

    /// Whether the API server answered with HTTP status `code`.
    pub fn is_http(&self, code: u16) -> bool {
        matches!(self, ClusterError::Api { source: kube::Error::Api(s), .. } if s.code == code)
    }

    /// Whether nothing answered: the server is unreachable or a request ran past its deadline.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ClusterError::Unreachable { .. } | ClusterError::Timeout { .. } => true,
            ClusterError::Api { source, .. } => !matches!(source, kube::Error::Api(_)),
            _ => false,
        }
    }
}

/// The cause type the API server gives a create refused in a namespace being deleted.
const NAMESPACE_TERMINATING: &str = "NamespaceTerminating";

/// The API server's own message for API errors, the client's otherwise.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// Identifies one object: group/version/kind plus namespace and name.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectKey {
    /// API group (`""` for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Namespace (`""` for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// The key of `obj`, with `default_ns` for namespaced objects that name none.
    pub fn of(obj: &DynamicObject) -> Option<Self> {
        let tm = obj.types.as_ref()?;
        let (group, version) = match tm.api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), tm.api_version.clone()),
        };
        Some(Self {
            group,
            version,
            kind: tm.kind.clone(),
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name: obj.metadata.name.clone()?,
        })
    }

    /// The group/version/kind.
    pub fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind::gvk(&self.group, &self.version, &self.kind)
    }

    /// `Kind/name` as people write it.
    pub fn short(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(
                f,
                "{}/{} (namespace {})",
                self.kind, self.name, self.namespace
            )
        }
    }
}

/// Apply options.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Take ownership of fields another manager owns.
    pub force: bool,
    /// Ask the server what it would do, change nothing.
    pub dry_run: bool,
}

/// A connection to one cluster, with a discovery cache.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    counter: RequestCounter,
    /// The API server's URL and the context's name, for messages (empty when unknown).
    server: Arc<(String, String)>,
    kinds: Arc<Mutex<HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>>>,
    version: Arc<tokio::sync::OnceCell<String>>,
}

/// Awaits one client call; its failure is classified by [`ClusterError::from_kube`]. The
/// deadline is the client's own layer, so nothing here adds a timeout.
async fn call<T>(
    action: &'static str,
    object: &dyn fmt::Display,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ClusterError> {
    fut.await
        .map_err(|source| ClusterError::from_kube(action, object, source))
}

/// `Kind/name (namespace ns)` of a built-in kind, for messages.
fn typed_name<K: Resource<DynamicType = ()>>(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{}/{name} (namespace {ns})", K::kind(&())),
        None => format!("{}/{name}", K::kind(&())),
    }
}

/// `pods in ns` (or `pods in every namespace`) of a built-in kind, for messages.
fn typed_collection<K: Resource<DynamicType = ()>>(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{} in {ns}", K::plural(&())),
        None => K::plural(&()).to_string(),
    }
}

impl Cluster {
    /// Wraps a client whose requests `counter` counts.
    pub fn new(client: Client, counter: RequestCounter) -> Self {
        Self {
            client,
            counter,
            server: Arc::default(),
            kinds: Arc::default(),
            version: Arc::default(),
        }
    }

    /// Connects to `context` of the kubeconfig at `kubeconfig` (`$KUBECONFIG` when `None`).
    pub async fn connect(
        kubeconfig: Option<&std::path::Path>,
        context: Option<&str>,
    ) -> Result<Self, ClusterError> {
        let (client, counter, server, context) = client::connect_to(kubeconfig, context).await?;
        let mut c = Self::new(client, counter);
        c.server = Arc::new((server, context));
        Ok(c)
    }

    /// The API server's URL, from the kubeconfig (empty when unknown).
    pub fn server(&self) -> &str {
        &self.server.0
    }

    /// The kube context's name (empty when unknown).
    pub fn context(&self) -> &str {
        &self.server.1
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Requests sent so far.
    pub fn requests(&self) -> RequestCounts {
        self.counter.get()
    }

    /// Checks the API server answers and returns its version (`v1.35.8`), asked once.
    pub async fn ping(&self) -> Result<String, ClusterError> {
        let v = self
            .version
            .get_or_try_init(|| async {
                let v = call(
                    "reaching",
                    &"the API server",
                    self.client.apiserver_version(),
                )
                .await
                .map_err(|e| self.unreachable(e))?;
                Ok::<_, ClusterError>(v.git_version)
            })
            .await?;
        Ok(v.clone())
    }

    /// A transport failure (nothing listening, TLS, DNS) becomes [`ClusterError::Unreachable`]
    /// with the server's address; an answer from the API server stays what it was.
    fn unreachable(&self, e: ClusterError) -> ClusterError {
        match e {
            ClusterError::Api { source, .. } if !matches!(source, kube::Error::Api(_)) => {
                ClusterError::Unreachable {
                    server: or_unknown(self.server()),
                    context: or_unknown(self.context()),
                    source,
                }
            }
            ClusterError::Timeout { .. } if !self.server().is_empty() => {
                ClusterError::Unreachable {
                    server: self.server().to_string(),
                    context: or_unknown(self.context()),
                    source: kube::Error::Service(
                        format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()).into(),
                    ),
                }
            }
            other => other,
        }
    }

    /// The API resource and scope of a kind, from discovery (cached).
    pub async fn resolve(
        &self,
        gvk: &GroupVersionKind,
    ) -> Result<(ApiResource, ApiCapabilities), ClusterError> {
        if let Some(found) = self.kinds.lock().await.get(gvk) {
            return Ok(found.clone());
        }
        let name = format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind);
        let found = match kube::discovery::pinned_kind(&self.client, gvk).await {
            Ok(f) => f,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Err(ClusterError::UnknownKind {
                    gvk: name,
                    message: s.message,
                })
            }
            Err(e) => return Err(ClusterError::from_kube("discovering", name, e)),
        };
        self.kinds.lock().await.insert(gvk.clone(), found.clone());
        Ok(found)
    }

    /// Forgets what discovery said about `gvk`, so the next use asks again (a CRD deleted, or
    /// its served versions changed, under a running daemon).
    pub async fn forget(&self, gvk: &GroupVersionKind) {
        self.kinds.lock().await.remove(gvk);
    }

    /// After a 404 on a collection of `gvk`: asks discovery again, and answers
    /// [`ClusterError::UnknownKind`] when the kind is no longer served, else `err` unchanged.
    async fn recheck_kind(&self, gvk: &GroupVersionKind, err: ClusterError) -> ClusterError {
        self.forget(gvk).await;
        match self.resolve(gvk).await {
            Err(e @ ClusterError::UnknownKind { .. }) => e,
            _ => err,
        }
    }

    async fn api_for(&self, key: &ObjectKey) -> Result<Api<DynamicObject>, ClusterError> {
        let (ar, caps) = self.resolve(&key.gvk()).await?;
        Ok(match caps.scope {
            Scope::Namespaced => Api::namespaced_with(self.client.clone(), &key.namespace, &ar),
            Scope::Cluster => Api::all_with(self.client.clone(), &ar),
        })
    }

    /// Whether the kind of `key` is namespaced.
    pub async fn is_namespaced(&self, key: &ObjectKey) -> Result<bool, ClusterError> {
        let (_, caps) = self.resolve(&key.gvk()).await?;
        Ok(matches!(caps.scope, Scope::Namespaced))
    }

    /// Server-side applies `obj` as field manager `converge` (or dry-runs it).
    pub async fn apply(
        &self,
        obj: &DynamicObject,
        opts: ApplyOptions,
    ) -> Result<DynamicObject, ClusterError> {
        let key = ObjectKey::of(obj).ok_or_else(|| ClusterError::Invalid {
            object: obj.metadata.name.clone().unwrap_or_default(),
            message: "object has no apiVersion, kind or name".into(),
        })?;
        let api = self.api_for(&key).await?;
        let mut pp = PatchParams::apply(FIELD_MANAGER);
        pp.force = opts.force;
        pp.dry_run = opts.dry_run;
        let action = if opts.dry_run {
            "dry-running"
        } else {
            "applying"
        };
        match api.patch(&key.name, &pp, &Patch::Apply(obj)).await {
            Ok(o) => Ok(o),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(parse_conflict(&key, &s.message)),
            Err(kube::Error::Api(s))
                if s.code == 422
                    && (s.message.contains("immutable")
                        || s.message.contains("Forbidden: updates to statefulset spec")) =>
            {
                Err(parse_immutable(&key, &s.message))
            }
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                Err(ClusterError::Invalid {
                    object: key.to_string(),
                    message: s.message,
                })
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                // An apply creates what is missing: a 404 means the kind itself is gone.
                let err = ClusterError::from_kube(action, &key, kube::Error::Api(s));
                Err(self.recheck_kind(&key.gvk(), err).await)
            }
            Err(source) => Err(ClusterError::from_kube(action, &key, source)),
        }
    }

    /// A JSON patch (used to strip adopted `kubectl` ownership).
    pub async fn json_patch(
        &self,
        key: &ObjectKey,
        patch: json_patch::Patch,
    ) -> Result<DynamicObject, ClusterError> {
        let api = self.api_for(key).await?;
        let pp = PatchParams::default();
        call(
            "patching",
            key,
            api.patch(&key.name, &pp, &Patch::<()>::Json(patch)),
        )
        .await
    }

    /// A stream that yields whenever one of `keys` changes (its first item is each object's
    /// state when the watch starts). Used to wake health waits the moment a controller writes
    /// status, instead of polling. Watches retry with back-off and end when dropped.
    pub async fn changes(
        &self,
        keys: &[ObjectKey],
    ) -> Result<futures::stream::BoxStream<'static, ()>, ClusterError> {
        use futures::StreamExt;
        use kube::runtime::WatchStreamExt;
        let mut streams = Vec::new();
        for key in keys {
            let api = self.api_for(key).await?;
            let s = kube::runtime::watcher::watch_object(api, &key.name)
                .default_backoff()
                .filter_map(|e| async move { e.ok().map(|_| ()) })
                .boxed();
            streams.push(s);
        }
        Ok(futures::stream::select_all(streams).boxed())
    }

    /// Reads one object; `None` when it does not exist.
    pub async fn get(&self, key: &ObjectKey) -> Result<Option<DynamicObject>, ClusterError> {
        let api = self.api_for(key).await?;
        call("reading", key, api.get_opt(&key.name)).await
    }

    /// Lists objects of one kind in `namespace` (all namespaces for cluster-scoped kinds)
    /// carrying `selector`.
    pub async fn list(
        &self,
        gvk: &GroupVersionKind,
        namespace: &str,
        selector: &str,
    ) -> Result<Vec<DynamicObject>, ClusterError> {
        let (ar, caps) = self.resolve(gvk).await?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(self.client.clone(), namespace, &ar),
            Scope::Cluster => Api::all_with(self.client.clone(), &ar),
        };
        let what = format!("{} in {namespace}", ar.plural);
        let list = match call(
            "listing",
            &what,
            api.list(&ListParams::default().labels(selector)),
        )
        .await
        {
            Ok(l) => l,
            // Listing never answers 404 for a served kind (an empty list at worst): the kind is
            // gone since discovery was cached.
            Err(e) if e.is_http(404) => return Err(self.recheck_kind(gvk, e).await),
            Err(e) => return Err(e),
        };
        Ok(list
            .items
            .into_iter()
            .map(|mut o| {
                // Lists leave out apiVersion/kind on items; keys need them.
                o.types = Some(kube::core::TypeMeta {
                    api_version: ar.api_version.clone(),
                    kind: ar.kind.clone(),
                });
                o
            })
            .collect())
    }

    /// Deletes one object (background propagation); `Ok(false)` when it was already gone.
    pub async fn delete(&self, key: &ObjectKey) -> Result<bool, ClusterError> {
        let api = self.api_for(key).await?;
        match api.delete(&key.name, &DeleteParams::background()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(source) => Err(ClusterError::from_kube("deleting", key, source)),
        }
    }

    /// Reads `name` of a namespaced built-in kind in `namespace`; `None` when it does not exist.
    pub async fn get_in<K>(&self, namespace: &str, name: &str) -> Result<Option<K>, ClusterError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let what = typed_name::<K>(Some(namespace), name);
        call("reading", &what, api.get_opt(name)).await
    }

    /// Reads `name` of a cluster-scoped built-in kind; `None` when it does not exist.
    pub async fn get_global<K>(&self, name: &str) -> Result<Option<K>, ClusterError>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let what = typed_name::<K>(None, name);
        call("reading", &what, api.get_opt(name)).await
    }

    /// Lists a namespaced built-in kind in `namespace`.
    pub async fn list_in<K>(&self, namespace: &str, lp: &ListParams) -> Result<Vec<K>, ClusterError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let what = typed_collection::<K>(Some(namespace));
        Ok(call("listing", &what, api.list(lp)).await?.items)
    }

    /// Lists a built-in kind in every namespace (or a cluster-scoped kind).
    pub async fn list_global<K>(&self, lp: &ListParams) -> Result<Vec<K>, ClusterError>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let what = typed_collection::<K>(None);
        Ok(call("listing", &what, api.list(lp)).await?.items)
    }

    /// The key names (never the values) of Secret `name` in `namespace`, from its `data` and
    /// `stringData`; `None` when the Secret does not exist.
    pub async fn secret_keys(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeSet<String>>, ClusterError> {
        let secret = self.get_in::<Secret>(namespace, name).await?;
        Ok(secret.map(|s| key_names(&s)))
    }
}

/// The key names of a Secret's `data` and `stringData`; the values are dropped here.
pub fn key_names(secret: &Secret) -> BTreeSet<String> {
    let data = secret.data.iter().flat_map(|d| d.keys());
    let string_data = secret.string_data.iter().flat_map(|d| d.keys());
    data.chain(string_data).cloned().collect()
}

/// Reads the managers and fields out of a 409 apply conflict message.
fn parse_conflict(key: &ObjectKey, message: &str) -> ClusterError {
    let mut managers = Vec::new();
    let mut rest = message;
    while let Some(i) = rest.find("with \"") {
        rest = &rest[i + 6..];
        if let Some(end) = rest.find('"') {
            let m = rest[..end].to_string();
            if !managers.contains(&m) {
                managers.push(m);
            }
            rest = &rest[end..];
        }
    }
    let fields: Vec<String> = message
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| t.starts_with('.') && t.len() > 1)
        .map(str::to_string)
        .collect();
    ClusterError::Conflict {
        object: key.to_string(),
        managers,
        fields,
    }
}

/// Names the immutable field of a 422 message (`spec.selector: Invalid value: …: field is immutable`).
fn parse_immutable(key: &ObjectKey, message: &str) -> ClusterError {
    // StatefulSets refuse any spec change outside a short list, naming no field.
    let statefulset = message.contains("Forbidden: updates to statefulset spec");
    let field = message
        .split(": ")
        .find(|part| {
            part.starts_with("spec.") || part.starts_with("data") || part.starts_with("metadata.")
        })
        .map(|s| s.split_whitespace().next().unwrap_or(s).to_string())
        .unwrap_or_else(|| "a field".into());
    let field = if statefulset {
        "spec (selector, volumeClaimTemplates, serviceName…)".to_string()
    } else {
        field
    };
    let recreatable = order::recreatable(&key.kind);
    ClusterError::Immutable {
        object: key.to_string(),
        field,
        message: message.to_string(),
        recreatable,
    }
}

/// Objects as JSON, the form the pure rules read.
pub fn values<T: serde::Serialize>(items: Vec<T>) -> Vec<serde_json::Value> {
    items
        .iter()
        .filter_map(|i| serde_json::to_value(i).ok())
        .collect()
}

/// `k=v,k=v` of a workload's `spec.selector.matchLabels`.
pub fn selector_of(workload: &serde_json::Value) -> Option<String> {
    let labels = workload
        .pointer("/spec/selector/matchLabels")?
        .as_object()?;
    if labels.is_empty() {
        return None;
    }
    Some(
        labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(","),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey {
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
            namespace: "ns".into(),
            name: "web".into(),
        }
    }

    #[test]
    fn a_create_in_a_namespace_being_deleted_is_its_own_error() {
        // The answer as the API server sends it (namespace lifecycle admission).
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure",
            "message": "leases.coordination.k8s.io \"converge-todo\" is forbidden: unable to create new content in namespace todo because it is being terminated",
            "reason": "Forbidden",
            "details": {"name": "converge-todo", "group": "coordination.k8s.io", "kind": "leases", "causes": [
                {"reason": "NamespaceTerminating", "message": "namespace todo is being terminated", "field": "metadata.namespace"}]},
            "code": 403
        }))
        .expect("a Status");
        let e = ClusterError::from_kube(
            "creating",
            "Lease todo/converge-todo",
            kube::Error::Api(status.boxed()),
        );
        assert!(
            matches!(e, ClusterError::NamespaceTerminating { .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("namespace todo is being terminated"),
            "{e}"
        );
    }

    #[test]
    fn an_api_answer_is_printed_once_not_again_as_its_cause() {
        let status =
            kube::core::Status::failure("pods is forbidden: User \"dev\" cannot list", "Forbidden")
                .with_code(403);
        let e =
            ClusterError::from_kube("listing", "pods in todo", kube::Error::Api(status.boxed()));
        assert_eq!(
            e.to_string(),
            "listing pods in todo: pods is forbidden: User \"dev\" cannot list (403)"
        );
        assert!(
            std::error::Error::source(&e).is_none(),
            "the message already says it"
        );
        assert!(e.is_http(403) && !e.is_unreachable());
    }

    #[test]
    fn a_deliberate_wait_that_ran_out_says_how_long_it_waited() {
        let e = ClusterError::NotGone {
            object: key().to_string(),
            after: Duration::from_secs(60),
        };
        assert_eq!(
            e.to_string(),
            "Deployment/web (namespace ns) still exists after 60s of waiting for its deletion"
        );
        assert!(!e.is_unreachable(), "the API server answered all along");
    }

    #[test]
    fn conflicts_name_the_manager_and_fields() {
        let msg = "Apply failed with 1 conflict: conflict with \"other-tool\" using apps/v1: .spec.replicas";
        match parse_conflict(&key(), msg) {
            ClusterError::Conflict {
                managers, fields, ..
            } => {
                assert_eq!(managers, ["other-tool"]);
                assert_eq!(fields, [".spec.replicas"]);
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn statefulset_spec_changes_are_immutable_and_never_recreated() {
        let mut k = key();
        k.kind = "StatefulSet".into();
        let msg = "StatefulSet.apps \"db\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas' are forbidden";
        match parse_immutable(&k, msg) {
            ClusterError::Immutable {
                field, recreatable, ..
            } => {
                assert!(field.starts_with("spec"));
                assert!(!recreatable, "a StatefulSet owns data volumes");
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn immutable_errors_name_the_field() {
        let msg = "Deployment.apps \"web\" is invalid: spec.selector: Invalid value: v1.LabelSelector{...}: field is immutable";
        match parse_immutable(&key(), msg) {
            ClusterError::Immutable {
                field, recreatable, ..
            } => {
                assert_eq!(field, "spec.selector");
                assert!(recreatable);
            }
            e => panic!("{e}"),
        }
    }
}
