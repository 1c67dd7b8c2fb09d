//! A JSON document kept under one key of a ConfigMap converge owns: how the inventory and the
//! status record live in the cluster.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};

use super::{ClusterError, REQUEST_TIMEOUT};
use crate::vocabulary::{FIELD_MANAGER, LABEL_MANAGED_BY, LABEL_STACK, MANAGED_BY};

/// Where a record lives.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    /// The stack's namespace.
    pub namespace: &'a str,
    /// The ConfigMap's name.
    pub name: &'a str,
    /// The stack it belongs to (a label, so `kubectl get -l` finds it).
    pub stack: &'a str,
    /// The data key holding the document.
    pub key: &'a str,
}

impl Place<'_> {
    /// `ConfigMap/<name> (namespace <ns>)`, for messages.
    pub fn what(&self) -> String {
        format!("ConfigMap/{} (namespace {})", self.name, self.namespace)
    }

    /// Reads the document; `None` when the ConfigMap or the key does not exist.
    pub async fn read(&self, client: &kube::Client) -> Result<Option<String>, ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), self.namespace);
        let cm = match tokio::time::timeout(REQUEST_TIMEOUT, api.get_opt(self.name)).await {
            Err(_) => {
                return Err(ClusterError::Timeout {
                    action: "reading",
                    object: self.what(),
                })
            }
            Ok(Err(source)) => {
                return Err(ClusterError::Api {
                    action: "reading",
                    object: self.what(),
                    source,
                })
            }
            Ok(Ok(cm)) => cm,
        };
        Ok(cm.and_then(|c| c.data).and_then(|mut d| d.remove(self.key)))
    }

    /// Copies `text` under another `key` of the same ConfigMap, with a merge patch: an update
    /// rather than an apply, so later applies of the record's own key leave the copy alone.
    pub async fn keep_aside(
        &self,
        client: &kube::Client,
        key: &str,
        text: &str,
    ) -> Result<(), ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), self.namespace);
        let patch = serde_json::json!({"data": {key: text}});
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        match tokio::time::timeout(
            REQUEST_TIMEOUT,
            api.patch(self.name, &pp, &Patch::Merge(&patch)),
        )
        .await
        {
            Err(_) => Err(ClusterError::Timeout {
                action: "writing",
                object: self.what(),
            }),
            Ok(Err(source)) => Err(ClusterError::Api {
                action: "writing",
                object: self.what(),
                source,
            }),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Writes the document (server-side apply of the whole ConfigMap as converge's).
    pub async fn write(&self, client: &kube::Client, text: String) -> Result<(), ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), self.namespace);
        let cm = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_STACK: self.stack},
            },
            "data": {self.key: text},
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        match tokio::time::timeout(
            REQUEST_TIMEOUT,
            api.patch(self.name, &pp, &Patch::Apply(&cm)),
        )
        .await
        {
            Err(_) => Err(ClusterError::Timeout {
                action: "writing",
                object: self.what(),
            }),
            Ok(Err(source)) => Err(ClusterError::Api {
                action: "writing",
                object: self.what(),
                source,
            }),
            Ok(Ok(_)) => Ok(()),
        }
    }
}
