//! A JSON document kept under one key of a ConfigMap converge owns: how the inventory and the
//! status record live in the cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};

use super::ClusterError;
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
        Ok(self
            .read_all(client)
            .await?
            .and_then(|mut d| d.remove(self.key)))
    }

    /// Reads every key of the ConfigMap; `None` when it does not exist.
    pub async fn read_all(
        &self,
        client: &kube::Client,
    ) -> Result<Option<BTreeMap<String, String>>, ClusterError> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), self.namespace);
        let cm = api
            .get_opt(self.name)
            .await
            .map_err(|e| ClusterError::from_kube("reading", self.what(), e))?;
        Ok(cm.map(|c| c.data.unwrap_or_default()))
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
        api.patch(self.name, &pp, &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(|e| ClusterError::from_kube("writing", self.what(), e))
    }

    /// Writes the document (server-side apply of the whole ConfigMap as converge's).
    pub async fn write(&self, client: &kube::Client, text: String) -> Result<(), ClusterError> {
        self.write_with(client, text, BTreeMap::new()).await
    }

    /// Writes the document and `more` keys beside it in one apply: keys converge wrote before
    /// and left out now are removed (server-side apply drops fields its manager no longer sets).
    pub async fn write_with(
        &self,
        client: &kube::Client,
        text: String,
        more: BTreeMap<&str, String>,
    ) -> Result<(), ClusterError> {
        let mut data = serde_json::Map::new();
        data.insert(self.key.to_string(), text.into());
        for (k, v) in more {
            data.insert(k.to_string(), v.into());
        }
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), self.namespace);
        let cm = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_STACK: self.stack},
            },
            "data": data,
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(self.name, &pp, &Patch::Apply(&cm))
            .await
            .map(drop)
            .map_err(|e| ClusterError::from_kube("writing", self.what(), e))
    }
}
