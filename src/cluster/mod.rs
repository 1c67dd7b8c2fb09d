//! The live cluster: client, discovery, server-side apply and dry-run, listing what converge
//! manages, deletion, health and the in-cluster inventory.
//!
//! It knows nothing of the desired state: it is handed plain objects and keys. Every API call is
//! bounded by the client's deadline layer ([`client`]), and every client error is classified
//! once, by [`ClusterError::from_kube`].

pub mod client;
pub mod diff;
mod error;
pub mod health;
pub mod inventory;
pub mod kinds;
pub mod lease;
pub mod nodes;
pub mod pause;
pub mod record;
pub mod secrets;
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
pub use error::ClusterError;
use error::{or_unknown, parse_conflict, parse_immutable};

use crate::vocabulary::FIELD_MANAGER;

/// How long one API request may take before it counts as failed (the client's deadline layer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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

/// What a DELETE removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The deleted object's uid: a re-created object of the same name has another.
    pub uid: Option<String>,
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
    object: &(dyn fmt::Display + Sync),
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

    /// Deletes one object (background propagation); `Ok(None)` when it was already gone,
    /// otherwise the uid of what was deleted (from the object, or the server's Status details).
    pub async fn delete(&self, key: &ObjectKey) -> Result<Option<Deleted>, ClusterError> {
        let api = self.api_for(key).await?;
        match api.delete(&key.name, &DeleteParams::background()).await {
            Ok(either) => Ok(Some(Deleted {
                uid: either
                    .map_left(|o| o.metadata.uid)
                    .map_right(|s| s.details.map(|d| d.uid))
                    .into_inner()
                    .filter(|u| !u.is_empty()),
            })),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
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
            "listing pods in todo: pods is forbidden: User \"dev\" cannot list (403); the kubeconfig's user lacks the RBAC permission for the kind: ask a cluster admin for a Role granting it"
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
            "Deployment/web (namespace ns) still exists after 60s of waiting for its deletion; a finalizer or its controller may be holding it (see the object's metadata.finalizers)"
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
