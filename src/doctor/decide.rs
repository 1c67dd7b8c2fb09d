//! The decide steps of doctor's checks: pure functions from what a gather step read to one
//! pass/warn/fail line with its fix. No I/O here.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::gather::{BuilderFacts, QuotaFacts, ServiceFacts};
use super::rules;
use super::{Check, CheckId};
use crate::build::minikube;
use crate::build::BuilderChoice;
use crate::capacity::{fmt_cpu, fmt_memory};
use crate::cluster::secrets::SecretRef;
use crate::cluster::ClusterError;
use crate::desired::schema::BuilderKind;
use crate::desired::Stack;

/// `todo-chatbot (desired/dev → namespace todo-chatbot)`: stacks may share a name.
pub fn label(stack: &Stack) -> String {
    format!(
        "{} ({} → namespace {})",
        stack.spec.name, stack.dir, stack.spec.namespace
    )
}

/// The `desired` check: the commit's desired state, or why it could not be read.
pub fn desired(repo: &Path, rev: &str, dir: &str, stacks: &Result<Vec<Stack>, String>) -> Check {
    match stacks {
        Ok(s) => Check::pass(
            CheckId::Desired,
            format!(
                "{dir} at {rev} is valid: stack {}",
                s.iter().map(label).collect::<Vec<_>>().join(", ")
            ),
        ),
        Err(why) => Check::fail(
            CheckId::Desired,
            why,
            format!(
                "`converge validate --repo {}` shows every problem with its line",
                repo.display()
            ),
        ),
    }
}

/// The `helm` check: its version, or why it cannot run.
pub fn helm(version: &Result<String, String>) -> Check {
    match version {
        Ok(v) => Check::pass(CheckId::Helm, format!("helm {v}")),
        Err(e) => Check::fail(
            CheckId::Helm,
            e,
            "install helm 3.8 or newer (https://helm.sh/docs/intro/install/), or point CONVERGE_HELM at it",
        ),
    }
}

/// The `context` check: whether the kubeconfig has the context.
pub fn context(context: Option<&str>, connected: Result<(), &ClusterError>) -> Check {
    let name = context.unwrap_or("(the kubeconfig's current context)");
    match connected {
        Ok(()) => Check::pass(
            CheckId::Context,
            format!("kube context {name} is in the kubeconfig"),
        ),
        Err(e) => {
            let fix = crate::hints::for_error(e).unwrap_or_else(|| {
                "list the contexts with `kubectl config get-contexts` and pass one with --context (or set the stack's `context`)".to_string()
            });
            Check::fail(CheckId::Context, e.to_string(), fix)
        }
    }
}

/// The `cluster` check: whether the API server answers, and what kind of cluster it is.
pub fn cluster(
    context: Option<&str>,
    connected_context: &str,
    facts: &Result<(String, Vec<Value>), ClusterError>,
) -> Check {
    match facts {
        Ok((version, nodes)) => {
            let flavor = rules::cluster_flavor(nodes, context.unwrap_or(""));
            Check::pass(
                CheckId::Cluster,
                format!(
                    "API server {version} answers: a {flavor} cluster with {} node{}",
                    nodes.len(),
                    if nodes.len() == 1 { "" } else { "s" }
                ),
            )
        }
        Err(e) => {
            let fix = crate::hints::for_error(e).unwrap_or_else(|| {
                crate::hints::start_cluster(context.unwrap_or(connected_context))
            });
            Check::fail(CheckId::Cluster, e.to_string(), fix)
        }
    }
}

/// The `builder` check, saying which builder was chosen and why.
pub fn builder(stack: &Stack, choice: &BuilderChoice, facts: &BuilderFacts) -> Check {
    let mut check = builder_kind(&label(stack), facts);
    check.message = format!(
        "{} [builder {}: {}]",
        check.message,
        choice.builder.as_str(),
        choice.reason
    );
    check
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("").trim()
}

fn builder_kind(name: &str, facts: &BuilderFacts) -> Check {
    match facts {
        BuilderFacts::Docker { host, version } => match version {
            Ok((true, stdout, _)) => {
                let mut v = stdout.split_whitespace();
                Check::pass(
                    CheckId::Builder,
                    format!(
                        "stack {name} builds with docker: client {}, engine {} at {host}",
                        v.next().unwrap_or("?"),
                        v.next().unwrap_or("?")
                    ),
                )
            }
            Ok((false, _, stderr)) => Check::fail(
                CheckId::Builder,
                format!(
                    "stack {name} builds with docker, but the engine at {host} does not answer: {}",
                    last_line(stderr)
                ),
                "start the Docker engine (`sudo systemctl start docker`), or set DOCKER_HOST to its socket; on minikube choose `builder: minikube` in the stack",
            ),
            Err(why) => Check::fail(
                CheckId::Builder,
                format!("stack {name} builds with docker: {why}"),
                "install the Docker CLI (https://docs.docker.com/engine/install/), or choose another builder in the stack (`builder: minikube`)",
            ),
        },
        BuilderFacts::Minikube {
            profile,
            status,
            version,
        } => match status {
            Ok(minikube::Status::Running) => Check::pass(
                CheckId::Builder,
                format!(
                    "stack {name} builds into {profile}: minikube {} (running)",
                    version.as_deref().unwrap_or("?")
                ),
            ),
            Ok(minikube::Status::NotRunning { host, code }) => Check::fail(
                CheckId::Builder,
                format!(
                    "stack {name} builds into {profile}, which is not running (`{}` exited {code}; host {host})",
                    profile.invocation("status"),
                    host = if host.is_empty() { "?" } else { host.as_str() }
                ),
                format!("`{}`", profile.command("start")),
            ),
            Ok(minikube::Status::Failed(f)) => Check::fail(
                CheckId::Builder,
                format!("stack {name} builds into minikube, but {}", f.what()),
                f.fix().map_or_else(
                    || format!("`{}` says why", profile.invocation("status")),
                    |fix| format!("`{fix}` (`minikube profile list` lists the profiles)"),
                ),
            ),
            Err(why) => Check::fail(
                CheckId::Builder,
                format!("stack {name} builds into minikube: {why}"),
                "install minikube (https://minikube.sigs.k8s.io/docs/start/), or choose `builder: docker` in the stack",
            ),
        },
        BuilderFacts::Registry {
            buildkit,
            workers,
            registry,
        } => match (workers, registry) {
            (Ok(()), Ok(host)) => Check::pass(
                CheckId::Builder,
                format!("stack {name} builds with BuildKit at {buildkit} and pushes to {host}: both answer, and the registry takes the login"),
            ),
            (Err((why, fix)), _) => Check::fail(
                CheckId::Builder,
                format!("stack {name} builds with BuildKit, which does not answer: {why}"),
                fix.clone(),
            ),
            (Ok(()), Err((why, fix))) => Check::fail(
                CheckId::Builder,
                format!("stack {name} pushes to a registry that cannot be used: {why}"),
                fix.clone(),
            ),
        },
        BuilderFacts::Unchecked(BuilderKind::None) => Check::pass(
            CheckId::Builder,
            format!("stack {name} builds nothing (builder: none); images come from elsewhere"),
        ),
        BuilderFacts::Unchecked(_) => Check::pass(
            CheckId::Builder,
            format!("stack {name} builds with its own command (not checked)"),
        ),
    }
}

/// The Secret references of every component of the stack.
pub fn secret_refs(stack: &Stack) -> Vec<SecretRef> {
    let mut refs: Vec<SecretRef> = stack
        .components
        .iter()
        .flat_map(|c| &c.spec.secret_env)
        .map(|r| SecretRef {
            secret: r.secret.clone(),
            key: r.key.clone(),
            optional: r.optional,
        })
        .collect();
    // The registry builder's pull Secret, needed by every Pod of an image converge builds.
    let pull = stack
        .spec
        .registry
        .as_ref()
        .and_then(|r| r.pull_secret.as_ref());
    if let Some(name) = pull {
        if stack
            .components
            .iter()
            .any(|c| c.spec.image.build.is_some())
        {
            refs.push(SecretRef {
                secret: name.clone(),
                key: crate::cluster::secrets::DOCKERCONFIGJSON_KEY.into(),
                optional: false,
            });
        }
    }
    refs
}

/// The `secrets` check: every required key of every referenced Secret exists.
pub fn secrets(
    stack: &Stack,
    refs: &[SecretRef],
    keys: &Result<BTreeMap<String, Option<Vec<String>>>, ClusterError>,
) -> Check {
    let ns = &stack.spec.namespace;
    if refs.is_empty() {
        return Check::pass(
            CheckId::Secrets,
            format!("stack {} references no Secret", label(stack)),
        );
    }
    let secrets = match keys {
        Ok(k) => k,
        // The error names the Secret and its namespace.
        Err(e) if e.is_unreachable() => {
            return Check::fail(
                CheckId::Secrets,
                e.to_string(),
                "check the cluster answers (`kubectl get --raw /readyz`)",
            )
        }
        Err(e) => {
            return Check::fail(
                CheckId::Secrets,
                e.to_string(),
                "check that your kube user may read Secrets there (`kubectl auth can-i get secrets -n <namespace>`)",
            )
        }
    };
    let lacks = crate::cluster::secrets::lacking(refs, secrets);
    if lacks.is_empty() {
        let required = refs.iter().filter(|r| !r.optional).count();
        let names: Vec<&str> = secrets.keys().map(String::as_str).collect();
        return Check::pass(
            CheckId::Secrets,
            format!(
                "every required Secret key exists ({required} references to {} in namespace {ns})",
                names.join(", ")
            ),
        );
    }
    let (summary, fix) = crate::cluster::secrets::in_words(&lacks, ns);
    Check::fail(CheckId::Secrets, summary, fix)
}

/// A check that needs the rendered stack, when it does not render.
pub fn unrendered(check: CheckId, stack: &Stack, error: &str, repo: &Path) -> Check {
    Check::fail(
        check,
        format!("cannot render stack {}: {error}", label(stack)),
        format!(
            "`converge diff --repo {} --stack {}` shows the render error in full",
            repo.display(),
            stack.dir
        ),
    )
}

/// The `nodeport` check: the stack's fixed NodePorts are free.
pub fn nodeport(
    stack: &Stack,
    objects: &[Value],
    live: &Result<Vec<Value>, ClusterError>,
) -> Check {
    let live = match live {
        Ok(l) => l,
        Err(e) => {
            return Check::fail(
                CheckId::Nodeport,
                e.to_string(),
                "check that your kube user may list Services in every namespace",
            )
        }
    };
    let (wanted, clashes) = rules::nodeport_clashes(objects, live);
    if wanted.is_empty() {
        return Check::pass(
            CheckId::Nodeport,
            format!("stack {} asks for no fixed NodePort", label(stack)),
        );
    }
    let Some(c) = clashes.first() else {
        let ports: Vec<String> = wanted.iter().map(i64::to_string).collect();
        return Check::pass(
            CheckId::Nodeport,
            format!("NodePort {} is free", ports.join(", ")),
        );
    };
    let (ns, name) = c.theirs.split_once('/').unwrap_or(("", &c.theirs));
    Check::fail(
        CheckId::Nodeport,
        format!(
            "NodePort {} (for Service {}) is already held by Service {}",
            c.port, c.ours, c.theirs
        ),
        format!(
            "free it (`kubectl delete service {name} -n {ns}`, or `converge down` the stack that owns it), or set another `nodePort` in the stack's values"
        ),
    )
}

/// The `quota` check: the namespace's ResourceQuotas and LimitRanges admit the stack.
pub fn quota(ns: &str, objects: &[Value], facts: &Result<QuotaFacts, ClusterError>) -> Check {
    let f = match facts {
        Ok(f) => f,
        Err(e) => {
            return Check::fail(
                CheckId::Quota,
                e.to_string(),
                "check that your kube user may list ResourceQuotas and LimitRanges",
            )
        }
    };
    if f.quotas.is_empty() && f.ranges.is_empty() {
        return Check::pass(
            CheckId::Quota,
            format!("namespace {ns} has no ResourceQuota or LimitRange"),
        );
    }
    let totals = rules::totals(objects);
    let mut findings: Vec<String> = f
        .quotas
        .iter()
        .flat_map(|q| rules::quota_findings(q, &totals, &f.own))
        .collect();
    findings.extend(
        f.ranges
            .iter()
            .flat_map(|r| rules::limitrange_findings(r, objects)),
    );
    if findings.is_empty() {
        return Check::pass(
            CheckId::Quota,
            format!(
                "namespace {ns}'s {} ResourceQuota(s) and {} LimitRange(s) admit the stack",
                f.quotas.len(),
                f.ranges.len()
            ),
        );
    }
    Check::fail(
        CheckId::Quota,
        findings.join("; "),
        format!(
            "lower resources (requests, limits, replicas) in the stack's desired state, or raise the quota: `kubectl edit resourcequota -n {ns}`"
        ),
    )
}

/// The `capacity` check: the nodes have room for the stack (what it runs now not counted).
pub fn capacity(
    stack: &Stack,
    objects: &[Value],
    facts: &Result<(Vec<Value>, Vec<Value>), ClusterError>,
) -> Check {
    let (nodes, pods) = match facts {
        Ok(f) => f,
        Err(e) => {
            return Check::fail(
                CheckId::Capacity,
                e.to_string(),
                "check that your kube user may list nodes and pods",
            )
        }
    };
    let ns = &stack.spec.namespace;
    // What the stack already runs is replaced by what it will run, so it does not count.
    let others: Vec<Value> = pods
        .iter()
        .filter(|p| p.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns))
        .cloned()
        .collect();
    let room = crate::capacity::room(nodes, &others);
    let totals = rules::totals(objects);
    let findings = rules::capacity_findings(&room, &totals);
    let alloc_cpu: i64 = room.iter().map(|n| n.allocatable_cpu_milli).sum();
    let alloc_mem: i64 = room.iter().map(|n| n.allocatable_memory).sum();
    let summary = format!(
        "stack {} requests {} CPU and {} for {} pods; the nodes have {} CPU and {} allocatable",
        label(stack),
        fmt_cpu(totals.cpu_milli),
        fmt_memory(totals.memory),
        totals.pods,
        fmt_cpu(alloc_cpu),
        fmt_memory(alloc_mem)
    );
    if findings.is_empty() {
        return Check::pass(CheckId::Capacity, summary);
    }
    Check::fail(
        CheckId::Capacity,
        format!("{summary}: {}", findings.join("; ")),
        "lower resources.requests or replicas in the desired state, or give the cluster more (minikube: `minikube delete && minikube start --cpus=<n> --memory=<size>`, which discards the cluster)",
    )
}

/// The `service` check: a daemon service is installed for the checkout, and runs.
pub fn service(facts: &ServiceFacts) -> Check {
    match facts {
        ServiceFacts::NoCheckout(e) => Check::warn(
            CheckId::Service,
            format!("no checkout to run the daemon for: {e}"),
            "run `converge doctor --repo <your checkout>`",
        ),
        ServiceFacts::NoPlaces(e) => Check::warn(
            CheckId::Service,
            e,
            "set HOME, then `converge service install --user`",
        ),
        ServiceFacts::Launchd { file } => {
            Check::pass(CheckId::Service, format!("installed: {}", file.display()))
        }
        ServiceFacts::Systemd {
            unit,
            file,
            user,
            active,
        } => {
            let user = if *user { "--user " } else { "" };
            match active {
                Ok((true, stdout, _)) => Check::pass(
                    CheckId::Service,
                    format!("{unit} is {} ({})", stdout.trim(), file.display()),
                ),
                Ok((false, stdout, _)) => Check::fail(
                    CheckId::Service,
                    format!("{unit} is installed ({}) but {}", file.display(), stdout.trim()),
                    format!("`systemctl {user}start {unit}`; why it stopped: `journalctl {user}-u {unit} -n 50`"),
                ),
                Err(why) => Check::warn(
                    CheckId::Service,
                    format!("{unit} is installed ({}) but whether it runs is unknown: {why}", file.display()),
                    format!("`systemctl {user}status {unit}` on a machine with systemd"),
                ),
            }
        }
        ServiceFacts::Missing { root } => Check::warn(
            CheckId::Service,
            format!("no converge service is installed for {}", root.display()),
            format!("converge service install --user --repo {}", root.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Component;
    use serde_json::json;

    fn stack(secret_env: &str) -> Stack {
        let spec = serde_yaml_ng::from_str(
            "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: todo\nnamespace: apps\n",
        )
        .expect("a stack document");
        let component = serde_yaml_ng::from_str(&format!(
            "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: web\nimage:\n  ref: web:1\n{secret_env}"
        ))
        .expect("a component document");
        Stack {
            spec,
            file: "desired/dev/stack.yaml".into(),
            dir: "desired/dev".into(),
            components: vec![Component {
                spec: component,
                file: "desired/dev/web.yaml".into(),
            }],
        }
    }

    const JWT: &str = "secretEnv:\n  - {name: JWT, secret: todo-secrets, key: jwt-secret}\n";

    #[test]
    fn a_missing_secret_key_fails_with_the_command_that_creates_it() {
        let s = stack(JWT);
        let refs = secret_refs(&s);
        let missing = secrets(&s, &refs, &Ok([("todo-secrets".to_string(), None)].into()));
        assert_eq!(missing.status, super::super::Status::Fail);
        assert!(
            missing.fix.as_deref().unwrap_or("").contains(
                "kubectl create secret generic todo-secrets -n apps --from-literal=jwt-secret=<value>"
            ),
            "{missing:?}"
        );
        let present = secrets(
            &s,
            &refs,
            &Ok([(
                "todo-secrets".to_string(),
                Some(vec!["jwt-secret".to_string()]),
            )]
            .into()),
        );
        assert_eq!(
            present.message,
            "every required Secret key exists (1 references to todo-secrets in namespace apps)"
        );
        let none = secrets(&stack(""), &[], &Ok(BTreeMap::new()));
        assert_eq!(
            none.message,
            "stack todo (desired/dev → namespace apps) references no Secret"
        );
    }

    #[test]
    fn doctor_checks_the_registry_pull_secret_of_built_images_with_the_docker_registry_command() {
        let mut s = stack("");
        s.spec.registry = Some(
            serde_yaml_ng::from_str("{prefix: r.example/team, pullSecret: regcred}")
                .expect("registry settings"),
        );
        assert!(
            secret_refs(&s).is_empty(),
            "a prebuilt image is not pulled with the registry builder's Secret"
        );
        s.components[0].spec.image =
            serde_yaml_ng::from_str("build: {context: web, repository: web}")
                .expect("a build spec");
        let refs = secret_refs(&s);
        let missing = secrets(&s, &refs, &Ok([("regcred".to_string(), None)].into()));
        assert_eq!(missing.status, super::super::Status::Fail);
        assert!(
            missing.fix.as_deref().unwrap_or("").contains(
                "kubectl create secret docker-registry regcred -n apps --docker-server=<registry>"
            ),
            "{missing:?}"
        );
        let good = secrets(
            &s,
            &refs,
            &Ok([(
                "regcred".to_string(),
                Some(vec![".dockerconfigjson".to_string()]),
            )]
            .into()),
        );
        assert_eq!(good.status, super::super::Status::Pass, "{good:?}");
    }

    #[test]
    fn an_unanswered_secret_read_points_at_the_cluster_not_at_permissions() {
        let s = stack(JWT);
        let timeout = ClusterError::Timeout {
            action: "reading",
            object: "Secret/todo-secrets (namespace apps)".into(),
        };
        let c = secrets(&s, &secret_refs(&s), &Err(timeout));
        assert_eq!(
            c.fix.as_deref(),
            Some("check the cluster answers (`kubectl get --raw /readyz`)")
        );
        assert!(c.message.contains("Secret/todo-secrets"), "{c:?}");
    }

    #[test]
    fn a_nodeport_held_elsewhere_fails_with_the_service_to_free() {
        let s = stack("");
        let ours = json!({"kind": "Service", "metadata": {"namespace": "apps", "name": "web"}, "spec": {"ports": [{"nodePort": 30080}]}});
        let theirs = json!({"metadata": {"namespace": "demo", "name": "shop"}, "spec": {"ports": [{"nodePort": 30080}]}});
        let c = nodeport(&s, std::slice::from_ref(&ours), &Ok(vec![theirs]));
        assert_eq!(
            c.message,
            "NodePort 30080 (for Service apps/web) is already held by Service demo/shop"
        );
        assert!(c
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("kubectl delete service shop -n demo"));
        let free = nodeport(&s, &[ours], &Ok(Vec::new()));
        assert_eq!(free.message, "NodePort 30080 is free");
    }

    #[test]
    fn a_stopped_docker_engine_fails_and_builder_none_passes() {
        let s = stack("");
        let choice = |builder| BuilderChoice {
            builder,
            kind_cluster: None,
            minikube_profile: None,
            reason: "chosen with --builder".into(),
        };
        let down = BuilderFacts::Docker {
            host: "unix:///run/docker.sock".into(),
            version: Ok((
                false,
                String::new(),
                "Cannot connect to the Docker daemon\n".into(),
            )),
        };
        let c = builder(&s, &choice(BuilderKind::Docker), &down);
        assert_eq!(c.status, super::super::Status::Fail);
        assert!(
            c.message
                .contains("the engine at unix:///run/docker.sock does not answer: Cannot connect"),
            "{c:?}"
        );
        let none = builder(
            &s,
            &choice(BuilderKind::None),
            &BuilderFacts::Unchecked(BuilderKind::None),
        );
        assert!(
            none.message
                .ends_with("[builder none: chosen with --builder]"),
            "{none:?}"
        );
    }

    #[test]
    fn minikube_with_no_profile_or_stopped_names_minikube_start_not_an_unreachable_cluster() {
        let s = stack("");
        let choice = BuilderChoice {
            builder: BuilderKind::Minikube,
            kind_cluster: None,
            minikube_profile: Some("minikube".into()),
            reason: "context `minikube` is a minikube cluster".into(),
        };
        let profile = minikube::Profile(Some("minikube".into()));
        let facts = |code, stdout: &str| BuilderFacts::Minikube {
            profile: profile.clone(),
            status: Ok(minikube::status(
                &profile,
                &minikube::Answer::new(Some(code), stdout, ""),
            )),
            version: None,
        };
        // minikube v1.38.1 with an empty MINIKUBE_HOME (mustload.go:74-77).
        let none = "* Profile \"minikube\" not found. Run \"minikube profile list\" to view all profiles.\n  To start a cluster, run: \"minikube start\"\n";
        let c = builder(&s, &choice, &facts(85, none));
        assert_eq!(c.status, super::super::Status::Fail);
        assert!(
            c.message.contains("does not exist or has no machine"),
            "{c:?}"
        );
        assert!(!c.message.contains("unreachable"), "{c:?}");
        assert!(
            c.fix
                .as_deref()
                .unwrap_or("")
                .starts_with("`minikube start`"),
            "{c:?}"
        );
        // The stopped none profile: `Stopped`, exit 7 (status.go:160-178).
        let c = builder(&s, &choice, &facts(7, "Stopped"));
        assert!(
            c.message
                .contains("is not running (`minikube -p minikube status` exited 7; host Stopped)"),
            "{c:?}"
        );
        assert_eq!(c.fix.as_deref(), Some("`minikube start`"));
    }

    #[test]
    fn no_installed_service_is_a_warning_and_a_stopped_one_a_failure() {
        let missing = service(&ServiceFacts::Missing {
            root: "/src/app".into(),
        });
        assert_eq!(missing.status, super::super::Status::Warn);
        assert_eq!(
            missing.fix.as_deref(),
            Some("converge service install --user --repo /src/app")
        );
        let stopped = service(&ServiceFacts::Systemd {
            unit: "converge-app.service".into(),
            file: "/home/me/.config/systemd/user/converge-app.service".into(),
            user: true,
            active: Ok((false, "inactive\n".into(), String::new())),
        });
        assert_eq!(stopped.status, super::super::Status::Fail);
        assert!(stopped
            .fix
            .as_deref()
            .unwrap_or("")
            .starts_with("`systemctl --user start converge-app.service`"));
    }

    #[test]
    fn a_quota_that_refuses_the_stack_fails_and_none_passes() {
        let web = json!({"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "app", "resources": {"requests": {"cpu": "400m"}}}]}}}});
        let small = json!({"metadata": {"name": "small"}, "status": {"hard": {"requests.cpu": "500m"}, "used": {"requests.cpu": "0"}}});
        let facts = QuotaFacts {
            quotas: vec![small],
            ..QuotaFacts::default()
        };
        let c = quota("apps", std::slice::from_ref(&web), &Ok(facts));
        assert!(
            c.message
                .contains("requests.cpu 800m (others use 0) exceeds the hard limit 500m"),
            "{c:?}"
        );
        let none = quota("apps", &[web], &Ok(QuotaFacts::default()));
        assert_eq!(
            none.message,
            "namespace apps has no ResourceQuota or LimitRange"
        );
    }
}
