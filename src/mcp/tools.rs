//! The tool table (names, descriptions, JSON Schemas of the arguments) and each tool's call.
//!
//! Every tool calls the library code its command calls (`status`, `explain`, `diff`,
//! `validate`, `sync`), so it shows what the command shows with the same redaction: explain's
//! evidence drops env values and reads Secret key names only, diffs mask Secret data, and
//! status records hold references, never values. Arguments are checked against their typed
//! struct; a mistake is a tool error the assistant can read and correct (MCP's SEP-1303).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::propose;
use super::Config;
use crate::cluster::{selector_of, values, Cluster};
use crate::reconcile::{self, lookup, Selection};
use crate::status::view::{self, Pick};
use crate::vocabulary::{LABEL_COMPONENT, LABEL_STACK};

/// The most log lines one `logs` call returns per container.
pub const MAX_LOG_LINES: i64 = 1000;
/// The most bytes of log one container contributes.
const MAX_LOG_BYTES: i64 = 256 * 1024;
/// The most Pods one `logs` answer reads.
const MAX_LOG_PODS: usize = 10;
/// The most log bytes one `logs` answer holds, across its containers.
const MAX_LOG_TOTAL_BYTES: i64 = 1024 * 1024;
/// How long one log read may take.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// One tool of the table.
#[derive(Debug)]
pub struct Tool {
    /// Its name.
    pub name: &'static str,
    /// What it does, for the assistant.
    pub description: &'static str,
    /// Whether it only reads.
    read_only: bool,
    /// The JSON Schema of its arguments.
    schema: fn() -> schemars::Schema,
}

const TOOLS: &[Tool] = &[
    Tool {
        name: "status",
        description: "The status converge recorded for each stack (commit applied, last healthy commit, reason, per-component health and last error, reconcile history) next to what the cluster shows now, and whether a daemon holds the stack.",
        read_only: true,
        schema: || schemars::schema_for!(StackArgs),
    },
    Tool {
        name: "explain",
        description: "Diagnose unhealthy components from the cluster's evidence (rollout conditions, Pod states, Events, log tails, claims, Secret key names) with a concrete next step; one component or every component of the stack.",
        read_only: true,
        schema: || schemars::schema_for!(ExplainArgs),
    },
    Tool {
        name: "diff",
        description: "What applying a revision would change in the cluster: a server-side dry-run diff per object (Secret data masked), plus what would be pruned. Writes nothing.",
        read_only: true,
        schema: || schemars::schema_for!(DiffArgs),
    },
    Tool {
        name: "validate",
        description: "Validate the desired state of a revision, or of proposed file contents overlaid on it, exactly as `converge validate` does; every finding with file:line:col.",
        read_only: true,
        schema: || schemars::schema_for!(ValidateArgs),
    },
    Tool {
        name: "history",
        description: "The recent reconciles of each stack (time, commit, result, duration) from its status record, with converge's git note on each commit (refs/notes/converge).",
        read_only: true,
        schema: || schemars::schema_for!(HistoryArgs),
    },
    Tool {
        name: "logs",
        description: "The last lines each container of a component's Pods wrote: the app's own output, verbatim (converge adds nothing from the Pod spec; an app that prints a credential prints it here too). At most 10 Pods and 1 MiB in all.",
        read_only: true,
        schema: || schemars::schema_for!(LogsArgs),
    },
    Tool {
        name: "sync",
        description: "Ask the running converge daemon of this checkout to reconcile now (it deploys the tip of its tracked branch). Fails when no daemon runs.",
        read_only: false,
        schema: || schemars::schema_for!(NoArgs),
    },
    Tool {
        name: "propose",
        description: "Propose a desired-state change through git: the given files (full new contents, or null to delete) under desired/ or apps/ are validated as `converge validate` does and committed on a new branch converge/propose/<id> whose parent is the tracked branch's tip. The tracked branch, HEAD, the index and the working tree are never touched. Returns the branch, the commit and the diff; invalid input is refused with file:line:col and nothing is written.",
        read_only: false,
        schema: || schemars::schema_for!(propose::ProposeArgs),
    },
];

/// The tools as `tools/list` lists them.
pub fn list() -> Vec<Value> {
    TOOLS
        .iter()
        .map(|t| {
            let mut schema = serde_json::to_value((t.schema)()).unwrap_or_else(|_| json!({}));
            if let Some(o) = schema.as_object_mut() {
                o.remove("$schema");
                o.remove("title");
            }
            json!({
                "name": t.name,
                "description": t.description,
                "inputSchema": schema,
                "annotations": {
                    "readOnlyHint": t.read_only,
                    "destructiveHint": false,
                    "idempotentHint": t.read_only,
                    "openWorldHint": false,
                },
            })
        })
        .collect()
}

/// The tool called `name`.
pub fn find(name: &str) -> Option<&'static Tool> {
    TOOLS.iter().find(|t| t.name == name)
}

/// Every tool's name.
pub fn names() -> Vec<&'static str> {
    TOOLS.iter().map(|t| t.name).collect()
}

/// A tool's result: structured content, its text, and whether the call failed.
#[derive(Debug)]
pub struct Output {
    /// The structured result (always an object).
    pub structured: Value,
    /// The text the assistant reads.
    pub text: String,
    /// Whether the tool failed (MCP's `isError`).
    pub is_error: bool,
}

impl Output {
    /// A success whose text is the structured value itself, as MCP recommends.
    pub fn ok(structured: Value) -> Self {
        let text = serde_json::to_string_pretty(&structured).unwrap_or_default();
        Self {
            structured,
            text,
            is_error: false,
        }
    }

    /// A failure with `message` (and `details`, when any, as structured content).
    pub fn error(message: impl Into<String>, details: Value) -> Self {
        let message = message.into();
        let structured = match details {
            Value::Object(mut o) => {
                o.insert("error".into(), Value::String(message.clone()));
                Value::Object(o)
            }
            _ => json!({"error": message}),
        };
        Self {
            structured,
            text: message,
            is_error: true,
        }
    }

    /// The `tools/call` result.
    pub fn into_result(self) -> Value {
        json!({
            "content": [{"type": "text", "text": self.text}],
            "structuredContent": self.structured,
            "isError": self.is_error,
        })
    }
}

/// An error and its causes on one line, each cause only when the message does not quote it.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn failed(e: &(dyn std::error::Error + 'static)) -> Output {
    Output::error(describe(e), Value::Null)
}

fn args<T: DeserializeOwned>(tool: &str, arguments: Value) -> Result<T, Output> {
    serde_json::from_value(arguments).map_err(|e| {
        Output::error(
            format!("invalid arguments for `{tool}`: {e} (see its input schema)"),
            Value::Null,
        )
    })
}

/// Calls `tool` with `arguments` (an object).
pub async fn call(config: &Config, tool: &Tool, arguments: Value) -> Output {
    let result = match tool.name {
        "status" => match args(tool.name, arguments) {
            Ok(a) => status(config, a).await,
            Err(o) => Err(o),
        },
        "explain" => match args(tool.name, arguments) {
            Ok(a) => explain(config, a).await,
            Err(o) => Err(o),
        },
        "diff" => match args(tool.name, arguments) {
            Ok(a) => diff(config, a).await,
            Err(o) => Err(o),
        },
        "validate" => match args(tool.name, arguments) {
            Ok(a) => validate(config, a).await,
            Err(o) => Err(o),
        },
        "history" => match args(tool.name, arguments) {
            Ok(a) => history(config, a).await,
            Err(o) => Err(o),
        },
        "logs" => match args(tool.name, arguments) {
            Ok(a) => logs(config, a).await,
            Err(o) => Err(o),
        },
        "sync" => match args::<NoArgs>(tool.name, arguments) {
            Ok(_) => sync(config).await,
            Err(o) => Err(o),
        },
        "propose" => match args(tool.name, arguments) {
            Ok(a) => propose::run(config, a).await,
            Err(o) => Err(o),
        },
        other => Err(Output::error(format!("no tool `{other}`"), Value::Null)),
    };
    result.unwrap_or_else(|o| o)
}

/// No arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// Which stack (the server's `--stack`/`--namespace`, else every stack).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StackArgs {
    /// The stack: its name or directory (`dev`, `desired/dev`); the server's `--stack`, else every stack, when absent.
    pub stack: Option<String>,
    /// Only the stack in this namespace.
    pub namespace: Option<String>,
}

/// Arguments of `explain`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainArgs {
    /// The component to explain; every component when absent.
    pub component: Option<String>,
    /// The stack (name or directory); the server's `--stack`, else every stack, when absent.
    pub stack: Option<String>,
    /// Only the stack in this namespace.
    pub namespace: Option<String>,
}

/// Arguments of `diff`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffArgs {
    /// The revision to diff (commit, branch, tag); HEAD when absent. A `propose` branch works.
    pub rev: Option<String>,
    /// The stack (name or directory); the server's `--stack`, else every stack, when absent.
    pub stack: Option<String>,
}

/// Arguments of `validate`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateArgs {
    /// The revision to validate (commit, branch, tag); HEAD when absent.
    pub rev: Option<String>,
    /// Proposed contents overlaid on the revision before validating: path (from the repository root, under desired/ or apps/) to the file's full new text, or null to delete it. Nothing is written.
    pub files: Option<BTreeMap<String, Option<String>>>,
}

/// Arguments of `history`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryArgs {
    /// The stack (name or directory); the server's `--stack`, else every stack, when absent.
    pub stack: Option<String>,
    /// Only the stack in this namespace.
    pub namespace: Option<String>,
}

/// Arguments of `logs`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsArgs {
    /// The component whose Pods' logs to read.
    pub component: String,
    /// The stack (name or directory); the server's `--stack`, else every stack, when absent.
    pub stack: Option<String>,
    /// Only the stack in this namespace.
    pub namespace: Option<String>,
    /// How many lines per container, newest last (default 100, at most 1000).
    #[schemars(range(min = 1, max = 1000))]
    pub lines: Option<i64>,
    /// The previous (crashed) instance's lines instead of the current one's.
    #[serde(default)]
    pub previous: bool,
}

fn selection(config: &Config, stack: Option<String>, namespace: Option<String>) -> Selection {
    Selection {
        dir: config.dir.clone(),
        stack: stack.or_else(|| config.stack.clone()),
        namespace: namespace.or_else(|| config.namespace.clone()),
    }
}

async fn connect(config: &Config, context: Option<&str>) -> Result<Cluster, Output> {
    let cluster = Cluster::connect(
        config.kubeconfig.as_deref(),
        context.or(config.context.as_deref()),
    )
    .await
    .map_err(|e| failed(&e))?;
    cluster.ping().await.map_err(|e| failed(&e))?;
    Ok(cluster)
}

async fn status(config: &Config, a: StackArgs) -> Result<Output, Output> {
    let sel = selection(config, a.stack, a.namespace);
    let cluster = connect(config, None).await?;
    let pick = Pick {
        stack: sel.stack.clone(),
        namespace: sel.namespace.clone(),
        named: lookup::named(&config.repo, "HEAD", &sel),
    };
    let g = view::gather(&cluster, &pick)
        .await
        .map_err(|e| failed(&e))?;
    if g.stacks.is_empty() {
        return Err(Output::error(
            "no converge status in this cluster for the selected stacks: nothing has been applied yet",
            Value::Null,
        ));
    }
    let unreadable: Vec<Value> = g
        .unreadable
        .iter()
        .map(|u| json!({"what": u.what, "error": u.error}))
        .collect();
    let healthy = g.stacks.iter().all(view::StackView::healthy);
    Ok(Output::ok(
        json!({"healthy": healthy, "stacks": g.stacks, "unreadable": unreadable}),
    ))
}

/// The targets (stacks with namespace and context) a selection names, as explain finds them.
fn targets(config: &Config, sel: &Selection) -> Result<Vec<lookup::Wanted>, Output> {
    lookup::targets(&config.repo, "HEAD", sel, config.context.as_deref()).map_err(|e| failed(&e))
}

async fn explain(config: &Config, a: ExplainArgs) -> Result<Output, Output> {
    let sel = selection(config, a.stack, a.namespace);
    let mut all = Vec::new();
    for w in targets(config, &sel)? {
        let t = &w.target;
        let cluster = connect(config, t.context()).await?;
        let namespaces = lookup::namespaces(&cluster, t)
            .await
            .map_err(|e| failed(&e))?;
        let found = crate::explain::explain_stack(
            &cluster,
            t,
            a.component.as_deref(),
            &w.components,
            &namespaces,
        )
        .await
        .map_err(|e| failed(&e))?;
        all.extend(found.explained);
    }
    if all.is_empty() {
        return Err(Output::error(
            "nothing to explain: converge has no record of the selected stacks in this cluster (apply them first)",
            Value::Null,
        ));
    }
    let problems = all
        .iter()
        .flat_map(|e| &e.diagnoses)
        .filter(|d| d.is_problem())
        .count();
    Ok(Output::ok(json!({"problems": problems, "components": all})))
}

async fn diff(config: &Config, a: DiffArgs) -> Result<Output, Output> {
    let rev = a.rev.unwrap_or_else(|| "HEAD".into());
    let mut opts = config.diff.clone();
    if a.stack.is_some() {
        opts.stack = a.stack;
    }
    let diffs = reconcile::diff_commit(
        &config.repo,
        &rev,
        &opts,
        &crate::render::Helm::from_env(),
        &mut reconcile::Clusters::default(),
    )
    .await
    .map_err(|e| failed(&e))?;
    Ok(Output::ok(json!({"rev": rev, "changes": diffs})))
}

async fn validate(config: &Config, a: ValidateArgs) -> Result<Output, Output> {
    let rev = a.rev.unwrap_or_else(|| "HEAD".into());
    let config = config.clone();
    let files = a.files;
    let checked = tokio::task::spawn_blocking(move || match files {
        Some(files) => {
            propose::validate_overlay(&config, &rev, &files).map(|o| (o.validation, Some(o.diff)))
        }
        None => propose::validate_rev(&config, &rev).map(|v| (v, None)),
    })
    .await
    .map_err(|e| Output::error(format!("validation stopped: {e}"), Value::Null))?;
    match checked {
        Ok((v, diff)) => {
            let mut json = v.to_json();
            if let Some(d) = diff {
                json["diff"] = Value::String(d);
            }
            let mut out = Output::ok(json);
            if !v.valid {
                out.text = format!(
                    "invalid ({} error(s)):\n{}\n{}",
                    v.errors,
                    v.locations.join("\n"),
                    v.rendered
                );
            }
            Ok(out)
        }
        Err(refused) => Err(refused.into_output()),
    }
}

async fn history(config: &Config, a: HistoryArgs) -> Result<Output, Output> {
    let sel = selection(config, a.stack, a.namespace);
    let cluster = connect(config, None).await?;
    let pick = Pick {
        stack: sel.stack.clone(),
        namespace: sel.namespace.clone(),
        named: lookup::named(&config.repo, "HEAD", &sel),
    };
    let g = view::gather(&cluster, &pick)
        .await
        .map_err(|e| failed(&e))?;
    let stacks: Vec<Value> = g
        .stacks
        .iter()
        .map(|v| {
            let s = &v.recorded;
            let entries: Vec<Value> = s
                .history
                .iter()
                .map(|h| {
                    let mut e = serde_json::to_value(h).unwrap_or_else(|_| json!({}));
                    // The note is converge's own record in git; none when the commit is gone.
                    if let Ok(Some(note)) = crate::history::notes::read_at(&config.repo, &h.commit)
                    {
                        e["note"] = Value::String(note);
                    }
                    e
                })
                .collect();
            json!({
                "stack": s.stack,
                "namespace": s.namespace,
                "dir": s.dir,
                "lastAppliedCommit": s.last_applied_commit,
                "lastHealthyCommit": s.last_healthy_commit,
                "history": entries,
            })
        })
        .collect();
    Ok(Output::ok(json!({"stacks": stacks})))
}

async fn logs(config: &Config, a: LogsArgs) -> Result<Output, Output> {
    let lines = a.lines.unwrap_or(100);
    if !(1..=MAX_LOG_LINES).contains(&lines) {
        return Err(Output::error(
            format!("`lines` must be between 1 and {MAX_LOG_LINES}, not {lines}"),
            Value::Null,
        ));
    }
    let sel = selection(config, a.stack, a.namespace);
    let mut out = Vec::new();
    // One answer stays bounded whatever the replica count: Pods, and bytes across them.
    let (mut pods_read, mut budget, mut truncated) = (0usize, MAX_LOG_TOTAL_BYTES, false);
    for w in targets(config, &sel)? {
        let t = &w.target;
        let cluster = connect(config, t.context()).await?;
        for ns in lookup::namespaces(&cluster, t)
            .await
            .map_err(|e| failed(&e))?
        {
            let pods: Api<Pod> = Api::namespaced(cluster.client().clone(), &ns);
            // A component's Pods are its workloads' (Deployments, StatefulSets), found by their
            // selectors as explain finds them: the Pods themselves carry no stack label.
            let by_stack = ListParams::default().labels(&format!("{LABEL_STACK}={}", t.stack));
            let deployments = values(
                cluster
                    .list_in::<Deployment>(&ns, &by_stack)
                    .await
                    .map_err(|e| failed(&e))?,
            );
            let statefulsets = values(
                cluster
                    .list_in::<StatefulSet>(&ns, &by_stack)
                    .await
                    .map_err(|e| failed(&e))?,
            );
            let mut items = Vec::new();
            for w in deployments.iter().chain(&statefulsets) {
                let component = w
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(LABEL_COMPONENT))
                    .and_then(Value::as_str);
                let Some(selector) = selector_of(w).filter(|_| component == Some(&a.component))
                else {
                    continue;
                };
                let list = pods
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .map_err(|e| failed(&e))?;
                items.extend(list.items);
            }
            for pod in items {
                if pods_read >= MAX_LOG_PODS || budget == 0 {
                    truncated = true;
                    break;
                }
                pods_read += 1;
                let name = pod.metadata.name.clone().unwrap_or_default();
                let containers = pod
                    .spec
                    .as_ref()
                    .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
                    .unwrap_or_else(Vec::new);
                for container in containers {
                    if budget == 0 {
                        truncated = true;
                        break;
                    }
                    let lp = LogParams {
                        container: Some(container.clone()),
                        tail_lines: Some(lines),
                        limit_bytes: Some(MAX_LOG_BYTES.min(budget)),
                        previous: a.previous,
                        ..LogParams::default()
                    };
                    let (text, error) =
                        match tokio::time::timeout(LOG_TIMEOUT, pods.logs(&name, &lp)).await {
                            Ok(Ok(t)) => (t, None),
                            Ok(Err(e)) => (String::new(), Some(e.to_string())),
                            Err(_) => (String::new(), Some("the log read timed out".into())),
                        };
                    budget = budget.saturating_sub(text.len() as i64);
                    let mut entry = json!({
                        "stack": t.stack,
                        "namespace": ns,
                        "pod": name,
                        "container": container,
                        "previous": a.previous,
                        "lines": text.lines().collect::<Vec<_>>(),
                    });
                    if let Some(e) = error {
                        entry["error"] = Value::String(e);
                    }
                    out.push(entry);
                }
            }
        }
    }
    if out.is_empty() {
        return Err(Output::error(
            format!(
                "no Pods of component `{}` in the selected stacks' namespaces",
                a.component
            ),
            Value::Null,
        ));
    }
    let mut result = json!({"containers": out});
    if truncated {
        result["truncated"] = Value::String(format!(
            "cut at {MAX_LOG_PODS} Pods or {MAX_LOG_TOTAL_BYTES} bytes in all; ask for fewer `lines`"
        ));
    }
    Ok(Output::ok(result))
}

async fn sync(config: &Config) -> Result<Output, Output> {
    match crate::daemon::http::request_sync(&config.repo).await {
        Ok(said) => Ok(Output::ok(json!({"result": said}))),
        Err(e) => Err(failed(&e)),
    }
}
