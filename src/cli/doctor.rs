//! `converge doctor`: one pass/fail line per check of the machine, the cluster and the desired
//! state, each with the exact fix; exit 0 only when every check passes. The decisions are the
//! pure functions of `explain::doctor`; this file only gathers (reads, never writes).

use std::path::Path;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::core::v1::{LimitRange, Node, Pod, ResourceQuota, Service};
use kube::api::{Api, ListParams};
use serde_json::Value;

use super::validate::plural;
use super::{Format, SourceArgs, EXIT_FINDINGS, EXIT_OK};
use crate::cluster::{Cluster, ClusterError, REQUEST_TIMEOUT};
use crate::desired::schema::BuilderKind;
use crate::desired::Stack;
use crate::explain::doctor::{self as rules, Check, Status};
use crate::explain::{self, Evidence, SecretRef};
use crate::render::Helm;

/// How long an external version or status command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// Every check, in the order they run.
pub const CHECKS: &[&str] = &[
    "desired", "helm", "context", "cluster", "builder", "secrets", "nodeport", "quota", "capacity",
    "service",
];

/// Arguments of `converge doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: super::StackArgs,
    /// Check this builder instead of the one converge would choose for each stack.
    #[arg(long, value_enum)]
    builder: Option<super::build::BuilderArg>,
    /// Skip a check (repeatable; it is not run at all): desired, helm, context, cluster,
    /// builder, secrets, nodeport, quota, capacity, service.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(CHECKS))]
    skip: Vec<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

impl DoctorArgs {
    fn wants(&self, check: &str) -> bool {
        !self.skip.iter().any(|s| s == check)
    }
}

/// Exit 0 when nothing failed (warnings included), 1 when a check failed.
pub(super) fn run(args: &DoctorArgs) -> u8 {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let checks: Vec<Check> = rt
        .block_on(all_checks(args))
        .into_iter()
        .filter(|c| args.wants(&c.check))
        .collect();
    if args.output.structured() {
        super::emit(&checks, args.output);
    } else {
        print_text(&checks);
    }
    if checks.iter().any(|c| c.status == Status::Fail) {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    }
}

fn print_text(checks: &[Check]) {
    let color = super::color_stdout();
    for c in checks {
        let (word, code) = match c.status {
            Status::Pass => ("ok  ", "32"),
            Status::Warn => ("WARN", "33"),
            Status::Fail => ("FAIL", "31;1"),
        };
        let word = super::paint(color, code, word);
        outln!("{word} {:<9} {}", c.check, c.message);
        if let Some(fix) = &c.fix {
            outln!("     {:<9} fix: {fix}", "");
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    let verdict = match (failed, warned) {
        (0, 0) => "all good",
        (0, _) => "no failures (warnings do not fail doctor)",
        _ => "fix the failures above",
    };
    outln!(
        "{}: {} passed, {} failed, {}; {verdict}",
        plural(checks.len(), "check"),
        checks.len() - failed - warned,
        failed,
        plural(warned, "warning"),
    );
}

async fn all_checks(args: &DoctorArgs) -> Vec<Check> {
    let mut out = Vec::new();
    let stacks = match read_stacks(args) {
        Ok(s) => {
            out.push(Check::pass(
                "desired",
                format!(
                    "{} at {} is valid: stack {}",
                    args.source.dir,
                    args.source.rev,
                    s.iter().map(label).collect::<Vec<_>>().join(", ")
                ),
            ));
            s
        }
        Err(why) => {
            out.push(Check::fail(
                "desired",
                why,
                format!(
                    "`converge validate --repo {}` shows every problem with its line",
                    args.source.repo.display()
                ),
            ));
            Vec::new()
        }
    };
    let helm = Helm::from_env();
    let need_render = ["nodeport", "quota", "capacity"]
        .iter()
        .any(|c| args.wants(c));
    let helm_ok = if args.wants("helm") || need_render {
        match helm.check().await {
            Ok(v) => {
                out.push(Check::pass("helm", format!("helm {v}")));
                true
            }
            Err(e) => {
                out.push(Check::fail(
                    "helm",
                    e.to_string(),
                    "install helm 3.8 or newer (https://helm.sh/docs/intro/install/), or point CONVERGE_HELM at it",
                ));
                false
            }
        }
    } else {
        false
    };
    let need_cluster = [
        "context", "cluster", "secrets", "nodeport", "quota", "capacity",
    ]
    .iter()
    .any(|c| args.wants(c));
    if stacks.is_empty() && need_cluster {
        // Still check the cluster the flags (or the kubeconfig) name.
        let _ = check_cluster(args, args.target.context.as_deref(), &mut out).await;
    }
    for stack in &stacks {
        let ctx = args
            .target
            .context
            .clone()
            .unwrap_or_else(|| stack.spec.context.clone());
        if args.wants("builder") {
            let choice = crate::build::select_builder(args.builder.map(Into::into), stack, &ctx);
            out.push(check_builder(stack, &choice).await);
        }
        if !need_cluster {
            continue;
        }
        let Some(cluster) = check_cluster(args, Some(&ctx), &mut out).await else {
            continue;
        };
        if args.wants("secrets") {
            out.push(check_secrets(&cluster, stack).await);
        }
        if helm_ok && need_render {
            match render(args, stack, &helm, &cluster).await {
                Ok(objects) => {
                    if args.wants("nodeport") {
                        out.push(check_nodeport(&cluster, stack, &objects).await);
                    }
                    if args.wants("quota") {
                        out.push(check_quota(&cluster, stack, &objects).await);
                    }
                    if args.wants("capacity") {
                        out.push(check_capacity(&cluster, stack, &objects).await);
                    }
                }
                Err(e) => {
                    for check in ["nodeport", "quota", "capacity"] {
                        out.push(Check::fail(
                            check,
                            format!("cannot render stack {}: {e}", label(stack)),
                            format!(
                                "`converge diff --repo {} --stack {}` shows the render error in full",
                                args.source.repo.display(),
                                stack.dir
                            ),
                        ));
                    }
                }
            }
        }
    }
    if args.wants("service") {
        out.push(check_service(&args.source.repo).await);
    }
    out
}

/// `todo-chatbot (desired/dev → namespace todo-chatbot)`: stacks may share a name.
fn label(stack: &Stack) -> String {
    format!(
        "{} ({} → namespace {})",
        stack.spec.name, stack.dir, stack.spec.namespace
    )
}

fn read_stacks(args: &DoctorArgs) -> Result<Vec<Stack>, String> {
    let repo = crate::source::Repo::open(&args.source.repo).map_err(|e| e.to_string())?;
    let snapshot = repo.snapshot(&args.source.rev).map_err(|e| e.to_string())?;
    let loaded = crate::desired::load(&snapshot, &args.source.dir).map_err(|r| {
        format!(
            "the desired state at {} does not validate ({})",
            args.source.rev,
            plural(r.error_count(), "error")
        )
    })?;
    let stacks: Vec<Stack> = loaded
        .state
        .stacks
        .into_iter()
        .filter(|s| args.target.selects(s))
        .collect();
    match (
        &args.target.stack,
        &args.target.namespace,
        stacks.is_empty(),
    ) {
        (Some(w), _, true) => Err(format!("the desired state has no stack `{w}`")),
        (None, Some(n), true) => Err(format!("the desired state has no stack in namespace `{n}`")),
        _ => Ok(stacks),
    }
}

/// The `context` and `cluster` checks; the connection when the cluster answers.
async fn check_cluster(
    args: &DoctorArgs,
    context: Option<&str>,
    out: &mut Vec<Check>,
) -> Option<Cluster> {
    let name = context.unwrap_or("(the kubeconfig's current context)");
    let cluster = match Cluster::connect(args.target.kubeconfig.as_deref(), context).await {
        Ok(c) => {
            out.push(Check::pass(
                "context",
                format!("kube context {name} is in the kubeconfig"),
            ));
            c
        }
        Err(e) => {
            let fix = super::hints::for_error(&e).unwrap_or_else(|| {
                "list the contexts with `kubectl config get-contexts` and pass one with --context (or set the stack's `context`)".to_string()
            });
            out.push(Check::fail("context", e.to_string(), fix));
            return None;
        }
    };
    let version = match cluster.ping().await {
        Ok(v) => v,
        Err(e) => {
            let fix = super::hints::for_error(&e).unwrap_or_else(|| {
                super::hints::start_cluster(context.unwrap_or(cluster.context()))
            });
            out.push(Check::fail("cluster", e.to_string(), fix));
            return None;
        }
    };
    let nodes = list::<Node>(&Api::all(cluster.client().clone()), "nodes")
        .await
        .unwrap_or_default();
    let flavor = rules::cluster_flavor(&nodes, context.unwrap_or(""));
    out.push(Check::pass(
        "cluster",
        format!(
            "API server {version} answers: a {flavor} cluster with {} node{}",
            nodes.len(),
            if nodes.len() == 1 { "" } else { "s" }
        ),
    ));
    Some(cluster)
}

async fn list<K>(api: &Api<K>, what: &str) -> Result<Vec<Value>, ClusterError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    list_with(api, &ListParams::default(), what).await
}

async fn list_with<K>(api: &Api<K>, lp: &ListParams, what: &str) -> Result<Vec<Value>, ClusterError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match tokio::time::timeout(REQUEST_TIMEOUT, api.list(lp)).await {
        Err(_) => Err(ClusterError::Timeout {
            action: "listing",
            object: what.into(),
        }),
        Ok(Err(source)) => Err(ClusterError::Api {
            action: "listing",
            object: what.into(),
            source,
        }),
        Ok(Ok(l)) => Ok(l
            .items
            .iter()
            .filter_map(|i| serde_json::to_value(i).ok())
            .collect()),
    }
}

/// Runs a short external command with a timeout; (success, stdout, stderr).
async fn command(program: &str, args: &[&str]) -> Result<(bool, String, String), String> {
    let argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    // Never cancelled: the sender lives as long as the call.
    let (_keep, cancel) = tokio::sync::watch::channel(false);
    match crate::build::engine::run(program, &argv, &[], None, COMMAND_TIMEOUT, cancel, program)
        .await
    {
        Ok(o) => Ok((o.status.success(), o.stdout, o.stderr)),
        Err(crate::build::engine::RunError::Spawn(e)) => {
            Err(format!("cannot run `{program}`: {e}"))
        }
        Err(crate::build::engine::RunError::Timeout) => Err(format!(
            "`{program} {}` gave no answer within {}s",
            args.join(" "),
            COMMAND_TIMEOUT.as_secs()
        )),
        Err(e) => Err(format!("`{program}` failed: {e:?}")),
    }
}

/// The builder check, saying which builder was chosen and why.
async fn check_builder(stack: &Stack, choice: &crate::build::BuilderChoice) -> Check {
    let mut check = check_builder_kind(stack, choice.builder).await;
    check.message = format!(
        "{} [builder {}: {}]",
        check.message,
        crate::build::builder_name(choice.builder),
        choice.reason
    );
    check
}

async fn check_builder_kind(stack: &Stack, builder: BuilderKind) -> Check {
    let name = &label(stack);
    match builder {
        BuilderKind::Docker | BuilderKind::Kind | BuilderKind::Containerd => {
            let host = std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "the default socket".into());
            match command(
                "docker",
                &["version", "--format", "{{.Client.Version}} {{.Server.Version}}"],
            )
            .await
            {
                Ok((true, stdout, _)) => {
                    let mut v = stdout.split_whitespace();
                    Check::pass(
                        "builder",
                        format!(
                            "stack {name} builds with docker: client {}, engine {} at {host}",
                            v.next().unwrap_or("?"),
                            v.next().unwrap_or("?")
                        ),
                    )
                }
                Ok((false, _, stderr)) => Check::fail(
                    "builder",
                    format!(
                        "stack {name} builds with docker, but the engine at {host} does not answer: {}",
                        stderr.lines().last().unwrap_or("").trim()
                    ),
                    "start the Docker engine (`sudo systemctl start docker`), or set DOCKER_HOST to its socket; on minikube choose `builder: minikube` in the stack",
                ),
                Err(why) => Check::fail(
                    "builder",
                    format!("stack {name} builds with docker: {why}"),
                    "install the Docker CLI (https://docs.docker.com/engine/install/), or choose another builder in the stack (`builder: minikube`)",
                ),
            }
        }
        BuilderKind::Minikube => match command("minikube", &["status", "--format", "{{.Host}}"]).await {
            Ok((_, stdout, _)) if stdout.trim() == "Running" => {
                let version = command("minikube", &["version", "--short"])
                    .await
                    .map(|(_, v, _)| v.trim().to_string())
                    .unwrap_or_default();
                Check::pass(
                    "builder",
                    format!("stack {name} builds into minikube {version} (running)"),
                )
            }
            Ok((_, stdout, stderr)) => Check::fail(
                "builder",
                format!(
                    "stack {name} builds into minikube, which is not running ({})",
                    format!("{} {}", stdout.trim(), stderr.lines().last().unwrap_or("").trim()).trim()
                ),
                "`minikube start`",
            ),
            Err(why) => Check::fail(
                "builder",
                format!("stack {name} builds into minikube: {why}"),
                "install minikube (https://minikube.sigs.k8s.io/docs/start/), or choose `builder: docker` in the stack",
            ),
        },
        BuilderKind::Command => Check::pass(
            "builder",
            format!("stack {name} builds with its own command (not checked)"),
        ),
        BuilderKind::None => Check::pass(
            "builder",
            format!("stack {name} builds nothing (builder: none); images come from elsewhere"),
        ),
    }
}

async fn check_secrets(cluster: &Cluster, stack: &Stack) -> Check {
    let ns = &stack.spec.namespace;
    let mut ev = Evidence {
        stack: stack.spec.name.clone(),
        namespace: ns.clone(),
        component: format!("stack {}", stack.spec.name),
        ..Evidence::default()
    };
    for c in &stack.components {
        for r in &c.spec.secret_env {
            ev.secret_refs.push(SecretRef {
                secret: r.secret.clone(),
                key: r.key.clone(),
                optional: r.optional,
            });
        }
    }
    if ev.secret_refs.is_empty() {
        return Check::pass(
            "secrets",
            format!("stack {} references no Secret", label(stack)),
        );
    }
    let api: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(cluster.client().clone(), ns);
    let mut names: Vec<String> = ev.secret_refs.iter().map(|r| r.secret.clone()).collect();
    names.sort();
    names.dedup();
    for name in &names {
        let got = match tokio::time::timeout(REQUEST_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Check::fail(
                    "secrets",
                    format!("reading Secret {name} in namespace {ns}: {e}"),
                    "check that your kube user may read Secrets there (`kubectl auth can-i get secrets -n <namespace>`)",
                )
            }
            Err(_) => {
                return Check::fail(
                    "secrets",
                    format!("reading Secret {name}: no answer within {}s", REQUEST_TIMEOUT.as_secs()),
                    "check the cluster answers (`kubectl get --raw /readyz`)",
                )
            }
        };
        // Key names only; the values are dropped here.
        let keys = got.map(|s| {
            let mut k: Vec<String> = s.data.map(|d| d.into_keys().collect()).unwrap_or_default();
            k.extend(
                s.string_data
                    .map(|d| d.into_keys().collect::<Vec<_>>())
                    .unwrap_or_default(),
            );
            k
        });
        ev.secrets.insert(name.clone(), keys);
    }
    match explain::rules::missing_secret(&ev) {
        None => {
            let required = ev.secret_refs.iter().filter(|r| !r.optional).count();
            Check::pass(
                "secrets",
                format!(
                    "every required Secret key exists ({required} references to {} in namespace {ns})",
                    names.join(", ")
                ),
            )
        }
        Some(d) => Check::fail("secrets", d.summary, d.next_step),
    }
}

/// The stack rendered as the cluster would get it, as JSON.
async fn render(
    args: &DoctorArgs,
    stack: &Stack,
    helm: &Helm,
    cluster: &Cluster,
) -> Result<Vec<Value>, crate::error::Error> {
    let opts = crate::reconcile::Options {
        // By directory: two stacks may share a name (dev and staging of one app).
        stack: Some(stack.dir.clone()),
        dir: args.source.dir.clone(),
        ..crate::reconcile::Options::default()
    };
    let (_, prepared) = crate::reconcile::prepare(&args.source.repo, &args.source.rev, &opts)?;
    let version = cluster.ping().await.ok();
    let mut out = Vec::new();
    for p in prepared {
        let rendered = p.render.template(helm, version.as_deref()).await?;
        out.extend(
            rendered
                .objects
                .iter()
                .filter_map(|o| serde_json::to_value(o).ok()),
        );
    }
    Ok(out)
}

async fn check_nodeport(cluster: &Cluster, stack: &Stack, objects: &[Value]) -> Check {
    let live = match list::<Service>(&Api::all(cluster.client().clone()), "services").await {
        Ok(l) => l,
        Err(e) => {
            return Check::fail(
                "nodeport",
                e.to_string(),
                "check that your kube user may list Services in every namespace",
            )
        }
    };
    let (wanted, clashes) = rules::nodeport_clashes(objects, &live);
    if wanted.is_empty() {
        return Check::pass(
            "nodeport",
            format!("stack {} asks for no fixed NodePort", label(stack)),
        );
    }
    if clashes.is_empty() {
        let ports: Vec<String> = wanted.iter().map(i64::to_string).collect();
        return Check::pass("nodeport", format!("NodePort {} is free", ports.join(", ")));
    }
    let c = &clashes[0];
    let (ns, name) = c.theirs.split_once('/').unwrap_or(("", &c.theirs));
    Check::fail(
        "nodeport",
        format!(
            "NodePort {} (for Service {}) is already held by Service {}",
            c.port, c.ours, c.theirs
        ),
        format!(
            "free it (`kubectl delete service {name} -n {ns}`, or `converge down` the stack that owns it), or set another `nodePort` in the stack's values"
        ),
    )
}

/// Requests of the Pods already running in the stack's namespace (the stack replaces them).
async fn own_totals(cluster: &Cluster, ns: &str) -> (Vec<Value>, rules::Totals) {
    let pods = list_with::<Pod>(
        &Api::namespaced(cluster.client().clone(), ns),
        &ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
        "pods",
    )
    .await
    .unwrap_or_default();
    let mut t = rules::Totals::default();
    for p in &pods {
        let (cpu, mem) = explain::rules::pod_requests(p);
        t.pods += 1;
        t.cpu_milli += cpu;
        t.memory += mem;
    }
    (pods, t)
}

async fn check_quota(cluster: &Cluster, stack: &Stack, objects: &[Value]) -> Check {
    let ns = &stack.spec.namespace;
    let client = cluster.client().clone();
    let quotas =
        list::<ResourceQuota>(&Api::namespaced(client.clone(), ns), "resourcequotas").await;
    let ranges = list::<LimitRange>(&Api::namespaced(client.clone(), ns), "limitranges").await;
    let (quotas, ranges) = match (quotas, ranges) {
        (Ok(q), Ok(r)) => (q, r),
        (Err(e), _) | (_, Err(e)) => {
            return Check::fail(
                "quota",
                e.to_string(),
                "check that your kube user may list ResourceQuotas and LimitRanges",
            )
        }
    };
    if quotas.is_empty() && ranges.is_empty() {
        return Check::pass(
            "quota",
            format!("namespace {ns} has no ResourceQuota or LimitRange"),
        );
    }
    let totals = rules::totals(objects);
    let (_, own) = own_totals(cluster, ns).await;
    let mut findings: Vec<String> = quotas
        .iter()
        .flat_map(|q| rules::quota_findings(q, &totals, &own))
        .collect();
    findings.extend(
        ranges
            .iter()
            .flat_map(|r| rules::limitrange_findings(r, objects)),
    );
    if findings.is_empty() {
        return Check::pass(
            "quota",
            format!(
                "namespace {ns}'s {} ResourceQuota(s) and {} LimitRange(s) admit the stack",
                quotas.len(),
                ranges.len()
            ),
        );
    }
    Check::fail(
        "quota",
        findings.join("; "),
        format!(
            "lower resources (requests, limits, replicas) in the stack's desired state, or raise the quota: `kubectl edit resourcequota -n {ns}`"
        ),
    )
}

async fn check_capacity(cluster: &Cluster, stack: &Stack, objects: &[Value]) -> Check {
    let client = cluster.client().clone();
    let nodes = list::<Node>(&Api::all(client.clone()), "nodes").await;
    let pods = list_with::<Pod>(
        &Api::all(client.clone()),
        &ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
        "pods",
    )
    .await;
    let (nodes, pods) = match (nodes, pods) {
        (Ok(n), Ok(p)) => (n, p),
        (Err(e), _) | (_, Err(e)) => {
            return Check::fail(
                "capacity",
                e.to_string(),
                "check that your kube user may list nodes and pods",
            )
        }
    };
    let ns = &stack.spec.namespace;
    // What the stack already runs is replaced by what it will run, so it does not count.
    let others: Vec<Value> = pods
        .into_iter()
        .filter(|p| p.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns))
        .collect();
    let room = explain::gather::room(&nodes, &others);
    let totals = rules::totals(objects);
    let findings = rules::capacity_findings(&room, &totals);
    let alloc_cpu: i64 = room.iter().map(|n| n.allocatable_cpu_milli).sum();
    let alloc_mem: i64 = room.iter().map(|n| n.allocatable_memory).sum();
    let summary = format!(
        "stack {} requests {} CPU and {} for {} pods; the nodes have {} CPU and {} allocatable",
        label(stack),
        explain::rules::fmt_cpu(totals.cpu_milli),
        explain::rules::fmt_memory(totals.memory),
        totals.pods,
        explain::rules::fmt_cpu(alloc_cpu),
        explain::rules::fmt_memory(alloc_mem)
    );
    if findings.is_empty() {
        return Check::pass("capacity", summary);
    }
    Check::fail(
        "capacity",
        format!("{summary}: {}", findings.join("; ")),
        "lower resources.requests or replicas in the desired state, or give the cluster more (minikube: `minikube delete && minikube start --cpus=<n> --memory=<size>`, which discards the cluster)",
    )
}

async fn check_service(repo: &Path) -> Check {
    let dirs = match crate::daemon::refs::GitDirs::discover(repo) {
        Ok(d) => d,
        Err(e) => {
            return Check::warn(
                "service",
                format!("no checkout to run the daemon for: {e}"),
                "run `converge doctor --repo <your checkout>`",
            )
        }
    };
    let places = match crate::daemon::service::Places::from_env() {
        Ok(p) => p,
        Err(e) => {
            return Check::warn(
                "service",
                e.to_string(),
                "set HOME, then `converge service install --user`",
            )
        }
    };
    let name = crate::daemon::service::name_for(&dirs.root);
    use crate::daemon::service::Manager;
    let managers: &[Manager] = if cfg!(target_os = "macos") {
        &[Manager::Launchd]
    } else {
        &[Manager::SystemdUser, Manager::SystemdSystem]
    };
    let install = format!(
        "converge service install --user --repo {}",
        dirs.root.display()
    );
    for &m in managers {
        let file = places.file(m, &name);
        if !file.exists() {
            continue;
        }
        let unit = format!("{name}.service");
        let label = crate::daemon::service::label_for(&dirs.root);
        let (program, args): (&str, Vec<&str>) = match m {
            Manager::Launchd => ("launchctl", vec!["list", &label]),
            Manager::SystemdUser => ("systemctl", vec!["--user", "is-active", &unit]),
            Manager::SystemdSystem => ("systemctl", vec!["is-active", &unit]),
        };
        if m == Manager::Launchd {
            return Check::pass("service", format!("installed: {}", file.display()));
        }
        let user = if m == Manager::SystemdUser {
            "--user "
        } else {
            ""
        };
        return match command(program, &args).await {
            Ok((true, stdout, _)) => Check::pass(
                "service",
                format!("{unit} is {} ({})", stdout.trim(), file.display()),
            ),
            Ok((false, stdout, _)) => Check::fail(
                "service",
                format!("{unit} is installed ({}) but {}", file.display(), stdout.trim()),
                format!("`systemctl {user}start {unit}`; why it stopped: `journalctl {user}-u {unit} -n 50`"),
            ),
            Err(why) => Check::warn(
                "service",
                format!("{unit} is installed ({}) but whether it runs is unknown: {why}", file.display()),
                format!("`systemctl {user}status {unit}` on a machine with systemd"),
            ),
        };
    }
    Check::warn(
        "service",
        format!(
            "no converge service is installed for {}",
            dirs.root.display()
        ),
        install,
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn skip_accepts_only_known_checks() {
        let ok = crate::cli::Cli::try_parse_from([
            "converge", "doctor", "--skip", "service", "--skip", "builder",
        ]);
        assert!(ok.is_ok());
        let bad = crate::cli::Cli::try_parse_from(["converge", "doctor", "--skip", "nonsense"]);
        assert!(bad.is_err());
    }
}
