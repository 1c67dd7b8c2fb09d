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
/// be truncated (or there is no node), since then an absent image may still be there.
pub fn images_if_complete(nodes: &[Node]) -> Option<BTreeSet<String>> {
    if nodes.is_empty() {
        return None;
    }
    let mut all = BTreeSet::new();
    for n in nodes {
        let images = n
            .status
            .as_ref()
            .and_then(|s| s.images.as_ref())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if images.len() >= KUBELET_MAX_IMAGES {
            return None;
        }
        for i in images {
            all.extend(i.names.iter().flatten().cloned());
        }
    }
    Some(all)
}

impl Cluster {
    /// The images the nodes hold, when their lists are complete ([`images_if_complete`]).
    pub async fn node_images(&self) -> Result<Option<BTreeSet<String>>, ClusterError> {
        let nodes: Vec<Node> = self.list_global(&ListParams::default()).await?;
        Ok(images_if_complete(&nodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerImage, NodeStatus};

    fn node(names: &[&str]) -> Node {
        Node {
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
        let set = images_if_complete(&[node(&["docker.io/library/a:1"]), node(&["b:2"])]).unwrap();
        assert!(set.contains("docker.io/library/a:1") && set.contains("b:2"));
        let full: Vec<String> = (0..KUBELET_MAX_IMAGES).map(|i| format!("i:{i}")).collect();
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        assert_eq!(images_if_complete(&[node(&["a:1"]), node(&full)]), None);
        assert_eq!(images_if_complete(&[]), None);
    }
}
