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

/// Reasons recorded in status, matching Flux's where the meaning is the same.
pub mod reason {
    /// Everything applied and healthy.
    pub const SUCCEEDED: &str = "ReconciliationSucceeded";
    /// The desired state did not validate.
    pub const VALIDATION_FAILED: &str = "ValidationFailed";
    /// An image build failed.
    pub const BUILD_FAILED: &str = "BuildFailed";
    /// Rendering the chart failed.
    pub const RENDER_FAILED: &str = "RenderFailed";
    /// Server-side apply failed.
    pub const APPLY_FAILED: &str = "ReconciliationFailed";
    /// A workload did not become healthy.
    pub const HEALTH_FAILED: &str = "HealthCheckFailed";
    /// A component waits for a Secret or a dependency.
    pub const DEPENDENCY_NOT_READY: &str = "DependencyNotReady";
    /// Pruning was refused or failed.
    pub const PRUNE_FAILED: &str = "PruneFailed";
    /// A Helm hook failed.
    pub const HOOK_FAILED: &str = "HookFailed";
    /// The cluster could not be reached.
    pub const CLUSTER_UNREACHABLE: &str = "ClusterUnreachable";
    /// Applied, but the health wait was cut short because newer work (a new commit, a drift,
    /// shutdown) was waiting; the next reconcile picks up from here.
    pub const PROGRESSING: &str = "Progressing";
}
