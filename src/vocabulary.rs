//! The names converge writes into the cluster: field manager, label and annotation keys,
//! status reasons. One place, so every module and every user's `kubectl` query agree.

/// The server-side apply field manager.
pub const FIELD_MANAGER: &str = "converge";

/// `app.kubernetes.io/managed-by` value on every object converge applies.
pub const MANAGED_BY: &str = "converge";
/// The standard label naming the tool that manages an object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The standard component label; the chart sets it to the component's name.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// The stack an object belongs to.
pub const LABEL_STACK: &str = "converge.dev/stack";
/// The inventory an object is recorded in (`<namespace>.<stack>`).
pub const ANNOTATION_INVENTORY: &str = "converge.dev/inventory";
/// The commit that last changed the object's rendered content.
pub const ANNOTATION_COMMIT: &str = "converge.dev/commit";
/// On a Helm hook, `always`: run it on every deploy, even when its render is unchanged since
/// its last successful run (Helm's own behaviour). Without it such a hook is skipped.
pub const ANNOTATION_HOOK_RERUN: &str = "converge.dev/hook-rerun";

/// The annotation `kubectl apply` (client-side) leaves behind.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Prefix of the in-cluster inventory ConfigMap's name: `converge-<stack>-inventory`.
pub fn inventory_name(stack: &str) -> String {
    format!("converge-{stack}-inventory")
}

/// Name of the in-cluster status ConfigMap: `converge-<stack>-status`.
pub fn status_name(stack: &str) -> String {
    format!("converge-{stack}-status")
}

/// Name of the in-cluster pause record: `converge-<stack>-pause`.
pub fn pause_name(stack: &str) -> String {
    format!("converge-{stack}-pause")
}

/// Name of the coordination Lease a daemon holds for a stack: `converge-<stack>`.
pub fn lease_name(stack: &str) -> String {
    format!("converge-{stack}")
}

/// Why a reconcile ended as it did: the reason recorded in status and printed, one variant per
/// meaning. Its string (matching Flux's where the meaning is the same) is what status records,
/// JSON output and people's `kubectl` queries see, so a variant's string never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Reason {
    /// Everything applied and healthy.
    #[serde(rename = "ReconciliationSucceeded")]
    Succeeded,
    /// The commit (or the repository) could not be read.
    #[serde(rename = "SourceFailed")]
    SourceFailed,
    /// The desired state did not validate, or names no such stack.
    #[serde(rename = "ValidationFailed")]
    ValidationFailed,
    /// An image build failed.
    #[serde(rename = "BuildFailed")]
    BuildFailed,
    /// Rendering the chart failed.
    #[serde(rename = "RenderFailed")]
    RenderFailed,
    /// The API server refused what converge applied (or a read it cannot go on without).
    #[serde(rename = "ReconciliationFailed")]
    ApplyFailed,
    /// A workload did not become healthy.
    #[serde(rename = "HealthCheckFailed")]
    HealthFailed,
    /// A component waits for a Secret or a dependency, or a namespace is still being deleted.
    #[serde(rename = "DependencyNotReady")]
    DependencyNotReady,
    /// Pruning was refused or failed.
    #[serde(rename = "PruneFailed")]
    PruneFailed,
    /// A Helm hook failed.
    #[serde(rename = "HookFailed")]
    HookFailed,
    /// The cluster could not be reached.
    #[serde(rename = "ClusterUnreachable")]
    ClusterUnreachable,
    /// Applied, but the health wait was cut short because newer work (a new commit, a drift,
    /// shutdown) was waiting; the next reconcile picks up from here.
    #[serde(rename = "Progressing")]
    Progressing,
    /// A converge daemon holds the stack's Lease.
    #[serde(rename = "DaemonRunning")]
    DaemonRunning,
}

impl Reason {
    /// Every reason, for parsing and tests.
    pub const ALL: [Reason; 13] = [
        Reason::Succeeded,
        Reason::SourceFailed,
        Reason::ValidationFailed,
        Reason::BuildFailed,
        Reason::RenderFailed,
        Reason::ApplyFailed,
        Reason::HealthFailed,
        Reason::DependencyNotReady,
        Reason::PruneFailed,
        Reason::HookFailed,
        Reason::ClusterUnreachable,
        Reason::Progressing,
        Reason::DaemonRunning,
    ];

    /// The string recorded in status (`ReconciliationSucceeded`, `HealthCheckFailed`…).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Succeeded => "ReconciliationSucceeded",
            Reason::SourceFailed => "SourceFailed",
            Reason::ValidationFailed => "ValidationFailed",
            Reason::BuildFailed => "BuildFailed",
            Reason::RenderFailed => "RenderFailed",
            Reason::ApplyFailed => "ReconciliationFailed",
            Reason::HealthFailed => "HealthCheckFailed",
            Reason::DependencyNotReady => "DependencyNotReady",
            Reason::PruneFailed => "PruneFailed",
            Reason::HookFailed => "HookFailed",
            Reason::ClusterUnreachable => "ClusterUnreachable",
            Reason::Progressing => "Progressing",
            Reason::DaemonRunning => "DaemonRunning",
        }
    }

    /// The reason a recorded string names; `None` for one this version does not know (a record
    /// written by another version), which readers show as it is.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<Reason> for String {
    fn eq(&self, other: &Reason) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<Reason> for str {
    fn eq(&self, other: &Reason) -> bool {
        self == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn a_reason_serialises_to_the_string_it_records_and_parses_back() {
        for r in Reason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(Reason::ApplyFailed.as_str(), "ReconciliationFailed");
        assert_eq!(Reason::parse("SomethingNewer"), None);
    }
}
