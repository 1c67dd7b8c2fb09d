//! What the nodes say they hold: the images each kubelet reports in its Node status. Read only;
//! used to tell, before anything is applied, that an image a Pod may never pull is on no node.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;

use super::{Cluster, ClusterError};

/// The kubelet's default `--node-status-max-images`: a node listing this many images may have
/// left smaller ones out (it keeps the largest), so its list proves nothing by what it lacks.
pub const KUBELET_MAX_IMAGES: usize = 50;

/// Every image name the nodes report, when every node's list is complete; `None` when one may
/// be truncated (or there is no node), since then an absent image may still be there. `cap`
/// gives a node's `nodeStatusMaxImages` when it is known (`-1`: no limit), else the default
/// applies.
pub fn images_if_complete(
    nodes: &[Node],
    cap: impl Fn(&str) -> Option<i64>,
) -> Option<BTreeSet<String>> {
    if nodes.is_empty() {
        return None;
    }
    let mut all = BTreeSet::new();
    for n in nodes {
        let images = listed(n);
        let name = n.metadata.name.as_deref().unwrap_or_default();
        let limit = cap(name).unwrap_or(KUBELET_MAX_IMAGES as i64);
        if limit >= 0 && images.len() as i64 >= limit {
            return None;
        }
        for i in images {
            all.extend(i.names.iter().flatten().cloned());
        }
    }
    Some(all)
}

fn listed(n: &Node) -> &[k8s_openapi::api::core::v1::ContainerImage] {
    n.status
        .as_ref()
        .and_then(|s| s.images.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// `nodeStatusMaxImages` from a kubelet's `/configz` answer.
pub fn max_images_of(configz: &str) -> Option<i64> {
    serde_json::from_str::<serde_json::Value>(configz)
        .ok()?
        .pointer("/kubeletconfig/nodeStatusMaxImages")?
        .as_i64()
}

impl Cluster {
    /// The images the nodes hold, when their lists are complete ([`images_if_complete`]). A
    /// node listing as many images as the default limit is asked for its kubelet's own limit
    /// (`/configz` through the API server); when that cannot be read, the default applies.
    pub async fn node_images(&self) -> Result<Option<BTreeSet<String>>, ClusterError> {
        let nodes: Vec<Node> = self.list_global(&ListParams::default()).await?;
        let mut caps = std::collections::BTreeMap::new();
        for n in &nodes {
            let Some(name) = n.metadata.name.as_deref() else {
                continue;
            };
            if listed(n).len() < KUBELET_MAX_IMAGES {
                continue;
            }
            let uri = format!("/api/v1/nodes/{name}/proxy/configz");
            let Ok(req) = http::Request::get(uri).body(Vec::new()) else {
                continue;
            };
            if let Ok(text) = self.client().request_text(req).await {
                if let Some(cap) = max_images_of(&text) {
                    caps.insert(name.to_string(), cap);
                }
            }
        }
        Ok(images_if_complete(&nodes, |n| caps.get(n).copied()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerImage, NodeStatus};

    fn node(names: &[&str]) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("n{}", names.len())),
                ..Default::default()
            },
            status: Some(NodeStatus {
                images: Some(
                    names
                        .iter()
                        .map(|n| ContainerImage {
                            names: Some(vec![n.to_string()]),
                            size_bytes: Some(1),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_list_at_the_kubelets_limit_proves_nothing_by_what_it_lacks() {
        let default = |_: &str| None;
        let set = images_if_complete(&[node(&["docker.io/library/a:1"]), node(&["b:2"])], default)
            .unwrap();
        assert!(set.contains("docker.io/library/a:1") && set.contains("b:2"));
        let full: Vec<String> = (0..KUBELET_MAX_IMAGES).map(|i| format!("i:{i}")).collect();
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        assert_eq!(
            images_if_complete(&[node(&["a:1"]), node(&full)], default),
            None
        );
        assert_eq!(images_if_complete(&[], default), None);
        // A kubelet that reports every image (nodeStatusMaxImages: -1), or more than it holds.
        assert!(images_if_complete(&[node(&full)], |_| Some(-1)).is_some());
        assert!(images_if_complete(&[node(&full)], |_| Some(200)).is_some());
    }

    #[test]
    fn the_kubelets_limit_is_read_from_its_configz() {
        let configz =
            r#"{"kubeletconfig":{"enableServer":true,"nodeStatusMaxImages":-1,"podsPerCore":0}}"#;
        assert_eq!(max_images_of(configz), Some(-1));
        assert_eq!(max_images_of(r#"{"kubeletconfig":{}}"#), None);
        assert_eq!(max_images_of("not json"), None);
    }
}
