//! The `desired/` file format: serde types that are also the JSON Schema shipped to editors.
//!
//! Every struct denies unknown fields, so a typo (`replica:`) is an error and never silently
//! ignored. Values that need more than a type check (quantities, cycles, paths in the commit) are
//! checked in `validate`.

use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize};

/// The `apiVersion` every desired-state document carries.
pub const API_VERSION: &str = "converge.dev/v1alpha1";

/// A Kubernetes quantity, as the apiserver's grammar has it.
pub const QUANTITY_PATTERN: &str =
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$";

/// `Stack`: one Helm release of one chart into one namespace, and the components it deploys.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StackSpec {
    /// Always `converge.dev/v1alpha1`.
    pub api_version: ApiVersion,
    /// Always `Stack`.
    pub kind: StackKind,
    /// The stack's name; labels every object converge applies.
    #[schemars(length(min = 1, max = 53), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// The namespace the stack lives in; converge creates it when missing.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: String,
    /// The kubeconfig context to apply to.
    #[serde(default = "default_context")]
    #[schemars(length(min = 1))]
    pub context: String,
    /// Path of the Helm chart in the repository.
    #[serde(default = "default_chart")]
    #[schemars(length(min = 1))]
    pub chart: String,
    /// The Helm release name; the stack's name when absent.
    #[schemars(length(min = 1, max = 53), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub release: Option<String>,
    /// The branch whose tip the daemon deploys.
    #[serde(default = "default_branch")]
    #[schemars(length(min = 1))]
    pub branch: String,
    /// Chart values files (repository paths), applied in order before converge's own values.
    #[serde(default)]
    pub values_files: Vec<String>,
    /// Extra chart values, merged over the values files.
    #[serde(default)]
    pub values: serde_json::Map<String, serde_json::Value>,
    /// What pruning may delete.
    #[serde(default)]
    pub prune: PruneSpec,
    /// How images are built; the CLI's `--builder` wins.
    pub builder: Option<BuilderKind>,
    /// Where the `registry` builder pushes and how Pods pull from there.
    pub registry: Option<RegistrySpec>,
    /// What the daemon does when a commit fails its health checks: keep it and retry (the
    /// default), or `revert` it with a `git revert` commit on the branch and deploy that.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Local URLs the daemon serves on `127.0.0.1`, one per component Service port: the same
    /// port across every rollout, always reaching a Ready Pod.
    #[serde(default)]
    pub local_urls: Vec<LocalUrl>,
}

/// One `http://127.0.0.1:<localPort>` the daemon serves, forwarded to a Ready Pod of a
/// component's Service (what Skaffold's `portForward` and Tilt's `port_forwards` do, minus the
/// renumbering when Pods are replaced).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalUrl {
    /// The component whose Service is reached (the Service labelled
    /// `app.kubernetes.io/component: <component>`).
    #[schemars(length(min = 1, max = 40), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub component: String,
    /// The Service port to reach; the Service's first port when absent.
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i64>,
    /// The port on 127.0.0.1 the daemon listens on, for as long as it runs.
    #[schemars(range(min = 1, max = 65535))]
    pub local_port: i64,
}

/// The `registry` builder's settings: BuildKit builds and pushes `<prefix>/<repository>:<tag>`,
/// and Pods pull it from there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistrySpec {
    /// Registry host (with port) and path images are pushed under, without a scheme, e.g.
    /// `registry.example.com:5000/team`; `--registry` (`CONVERGE_REGISTRY`) wins.
    #[schemars(length(min = 1), pattern(REGISTRY_PREFIX_PATTERN))]
    pub prefix: Option<String>,
    /// The BuildKit daemon's address, e.g. `tcp://buildkitd:1234`; `--buildkit-addr`
    /// (`BUILDKIT_HOST`) wins.
    #[schemars(length(min = 1), pattern(BUILDKIT_ADDRESS_PATTERN))]
    pub buildkit: Option<String>,
    /// A `kubernetes.io/dockerconfigjson` Secret in the stack's namespace that Pods pull with
    /// (`imagePullSecrets`); converge checks it exists before applying.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub pull_secret: Option<String>,
}

/// A registry prefix: a lowercase host (optionally `:port`) and path, no scheme, no tag.
pub const REGISTRY_PREFIX_PATTERN: &str =
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$";

/// A BuildKit address as `buildctl --addr` takes it: a scheme its client dials (`tcp`, `unix`)
/// or one of its connection helpers.
pub const BUILDKIT_ADDRESS_PATTERN: &str =
    r"^(tcp|unix|ssh|docker-container|podman-container|nerdctl-container|kube-pod|npipe)://.+$";

/// What the daemon does when a commit fails its health checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Keep the commit deployed and retry with back-off until a new commit comes.
    #[default]
    Retry,
    /// Revert the commit with a `git revert` commit by converge on the tracked branch, once.
    Revert,
}

fn default_context() -> String {
    "minikube".into()
}
fn default_chart() -> String {
    "charts/todo-chatbot".into()
}
fn default_branch() -> String {
    "main".into()
}

/// The one accepted `apiVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum ApiVersion {
    /// The first version of the format.
    #[serde(rename = "converge.dev/v1alpha1")]
    V1Alpha1,
}

/// `kind: Stack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum StackKind {
    /// A stack document.
    Stack,
}

/// `kind: Component`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum ComponentKind {
    /// A component document.
    Component,
}

/// Opt-ins for deleting data; both off by default, so a prune never loses a volume or namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PruneSpec {
    /// Allow pruning PersistentVolumeClaims that are no longer rendered.
    #[serde(default)]
    pub volumes: bool,
    /// Allow deleting the stack's Namespace on teardown.
    #[serde(default)]
    pub namespace: bool,
}

// The one list of builders: the desired state (`builder:`) and the `--builder` flag both read it
// (the doc comments are the schema's text, `value(help)` the flag's). Each has its engine in
// `src/build/engine/<name>.rs`.
/// Where images are built.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BuilderKind {
    /// Into minikube's runtime.
    #[value(help = "Into minikube's runtime (`minikube docker-env`, or `minikube image build`)")]
    Minikube,
    /// On the engine named by `DOCKER_HOST`.
    #[value(help = "On the Docker engine named by `DOCKER_HOST` (or `--docker-host`)")]
    Docker,
    /// With Docker, then `kind load docker-image` into the kind cluster of the context.
    #[value(help = "With Docker, then `kind load docker-image` (a `kind-<name>` context)")]
    Kind,
    /// With Docker, then `ctr images import` into the node's containerd (`CONTAINERD_ADDRESS`).
    #[value(
        help = "With Docker, then `ctr images import` into the node's containerd (`CONTAINERD_ADDRESS`)"
    )]
    Containerd,
    /// With BuildKit (`buildctl`), pushed to a registry the cluster pulls from.
    #[value(
        help = "With BuildKit (`buildctl`, `--buildkit-addr`), pushed to `--registry`; the cluster pulls it"
    )]
    Registry,
    /// With a user-given command.
    #[value(help = "With `--command`")]
    Command,
    /// Compute tags only; images are built elsewhere.
    #[value(help = "Compute tags only")]
    None,
}

impl BuilderKind {
    /// The name users write (`builder: kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            BuilderKind::Minikube => "minikube",
            BuilderKind::Docker => "docker",
            BuilderKind::Kind => "kind",
            BuilderKind::Containerd => "containerd",
            BuilderKind::Registry => "registry",
            BuilderKind::Command => "command",
            BuilderKind::None => "none",
        }
    }
}

/// `Component`: one workload of the stack and everything the chart needs to deploy it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Always `converge.dev/v1alpha1`.
    pub api_version: ApiVersion,
    /// Always `Component`.
    pub kind: ComponentKind,
    /// The component's name; also its key in the chart's values.
    #[schemars(length(min = 1, max = 40), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// The image: a prebuilt reference or a build from the repository.
    pub image: ImageSpec,
    /// Desired Pod count; the chart's default when absent.
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i64>,
    /// CPU and memory requests and limits.
    pub resources: Option<Resources>,
    /// Container ports; the first is the main one.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Plain environment variables. Credentials go in `secretEnv`.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// Environment variables read from Secrets: references only, never values.
    #[serde(default)]
    pub secret_env: Vec<SecretRef>,
    /// Probe overrides.
    pub probes: Option<Probes>,
    /// A persistent volume, for stateful components.
    pub storage: Option<Storage>,
    /// Components that must be healthy before this one is applied.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Extra chart values for this component, merged under its key.
    #[serde(default)]
    pub values: serde_json::Map<String, serde_json::Value>,
}

/// Either `ref` (a prebuilt image) or `build` (built by converge); exactly one.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageSpec {
    /// A prebuilt image reference, e.g. `postgres:16-alpine` or `repo@sha256:…`.
    #[serde(rename = "ref")]
    #[schemars(length(min = 1))]
    pub reference: Option<String>,
    /// Build the image from the repository; converge decides the tag.
    pub build: Option<BuildSpec>,
}

/// How to build a component's image from the commit.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuildSpec {
    /// The build context: a directory of the repository (repository-relative).
    #[schemars(length(min = 1))]
    pub context: String,
    /// The Dockerfile, relative to the context.
    #[serde(default = "default_dockerfile")]
    #[schemars(length(min = 1))]
    pub dockerfile: String,
    /// Image repository name (no tag): converge tags it with the build-input digest.
    #[schemars(
        length(min = 1),
        pattern(r"^[a-z0-9]+([._/-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
    )]
    pub repository: String,
    /// Build arguments (part of the image's identity, so never credentials).
    #[serde(default)]
    pub args: BTreeMap<String, EnvValue>,
    /// The stage to build in a multi-stage Dockerfile.
    pub target: Option<String>,
    /// The platform to build for, e.g. `linux/amd64`.
    pub platform: Option<String>,
    /// Push the image after building (docker builder only; the registry builder always pushes).
    #[serde(default)]
    pub push: bool,
}

fn default_dockerfile() -> String {
    "Dockerfile".into()
}

/// Requests and limits.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    /// What the scheduler reserves.
    pub requests: Option<ResourceList>,
    /// The most the container may use.
    pub limits: Option<ResourceList>,
}

/// CPU, memory and ephemeral storage as Kubernetes quantities.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceList {
    /// CPU, e.g. `250m` or `1`.
    pub cpu: Option<QuantityText>,
    /// Memory, e.g. `256Mi`.
    pub memory: Option<QuantityText>,
    /// Ephemeral storage, e.g. `1Gi`.
    #[serde(rename = "ephemeral-storage")]
    pub ephemeral_storage: Option<QuantityText>,
}

/// A quantity as written (`500m`, `1`, `0.5`); checked by `validate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct QuantityText(pub String);

impl<'de> Deserialize<'de> for QuantityText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self(scalar_text(d)?))
    }
}

impl JsonSchema for QuantityText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A Kubernetes quantity, e.g. `500m`, `512Mi`, `1.5Gi`, `2`.",
            "anyOf": [
                {"type": "string", "pattern": QUANTITY_PATTERN},
                {"type": "number", "minimum": 0}
            ]
        })
    }
}

/// An environment or build-arg value; numbers and booleans are taken as their text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct EnvValue(pub String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self(scalar_text(d)?))
    }
}

impl JsonSchema for EnvValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EnvValue".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": ["string", "number", "boolean"]})
    }
}

fn scalar_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        _ => Err(serde::de::Error::custom(
            "expected a string, number or boolean",
        )),
    }
}

/// A container port.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSpec {
    /// An IANA service name: at most 15 lowercase letters, digits and `-`.
    #[schemars(length(min = 1, max = 15), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// The port the container listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub container_port: i64,
    /// TCP (default), UDP or SCTP.
    pub protocol: Option<Protocol>,
}

/// A port protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Protocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

/// An environment variable read from a Secret key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretRef {
    /// The environment variable's name.
    #[schemars(length(min = 1), pattern(r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub name: String,
    /// The Secret's name, in the stack's namespace.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret: String,
    /// The key inside the Secret.
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
    /// Start the container even when the Secret or key is missing.
    #[serde(default)]
    pub optional: bool,
}

/// Overrides of the chart's probes.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Probes {
    /// Restarts the container when failing.
    pub liveness: Option<ProbeSpec>,
    /// Takes the Pod out of its Service when failing.
    pub readiness: Option<ProbeSpec>,
    /// Holds the other probes until the program has started.
    pub startup: Option<ProbeSpec>,
}

/// One probe's overrides; unset fields keep the chart's values.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProbeSpec {
    /// HTTP path for an HTTP GET probe.
    #[schemars(pattern(r"^/"))]
    pub path: Option<String>,
    /// Port number for the probe.
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i64>,
    /// Seconds before the first probe.
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: Option<i64>,
    /// Seconds between probes.
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i64>,
    /// Seconds before a probe times out.
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i64>,
    /// Failures in a row before the probe counts as failed.
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: Option<i64>,
}

/// A persistent volume for a stateful component.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Storage {
    /// Size of the volume, e.g. `1Gi`.
    pub size: QuantityText,
    /// StorageClass; the cluster's default when absent.
    pub storage_class: Option<String>,
}

/// The JSON Schema of one `desired/` document (a Stack or a Component), for editors.
pub fn document_schema() -> serde_json::Value {
    let stack = schemars::schema_for!(StackSpec);
    let component = schemars::schema_for!(ComponentSpec);
    let mut defs = serde_json::Map::new();
    for s in [&stack, &component] {
        if let Some(d) = s.as_value().get("$defs").and_then(|d| d.as_object()) {
            defs.extend(d.clone());
        }
    }
    let strip = |s: &Schema| {
        let mut v = s.as_value().clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("$defs");
            o.remove("$schema");
        }
        v
    };
    defs.insert("Stack".into(), strip(&stack));
    defs.insert("Component".into(), strip(&component));
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://converge.dev/schema/desired-v1alpha1.json",
        "title": "converge desired state",
        "description": "A document under desired/: kind Stack or kind Component.",
        "oneOf": [{"$ref": "#/$defs/Stack"}, {"$ref": "#/$defs/Component"}],
        "$defs": defs,
    })
}
