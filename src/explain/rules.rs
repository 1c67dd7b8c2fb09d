//! The diagnosis rules: pure functions from [`Evidence`] to [`Diagnosis`], most specific first.
//! No I/O here; every rule has a unit test on a JSON fixture.

use serde_json::Value;

use super::{Diagnosis, Evidence, NodeRoom};
use crate::capacity::{fmt_cpu, fmt_memory, pod_requests, quantity};

/// Rule name: the image is not in the cluster's runtime or registry.
pub const IMAGE_NOT_PRESENT: &str = "ImageNotPresent";
/// Rule name: a container keeps crashing.
pub const CRASH_LOOP: &str = "CrashLoopBackOff";
/// Rule name: a referenced Secret or key is missing.
pub const MISSING_SECRET: &str = "MissingSecret";
/// Rule name: the scheduler finds no node with room.
pub const UNSCHEDULABLE: &str = "Unschedulable";
/// Rule name: the container runs but its readiness probe fails.
pub const READINESS: &str = "ReadinessProbeFailing";
/// Rule name: a claim waits for a volume.
pub const CLAIM_PENDING: &str = "ClaimPending";
/// Rule name: a container was killed for exceeding its memory limit.
pub const OOM_KILLED: &str = "OOMKilled";
/// Rule name: the rollout failed for a reason no rule knows.
pub const UNKNOWN: &str = "Unknown";
/// Rule name: nothing is wrong.
pub const HEALTHY: &str = "Healthy";

type Rule = fn(&Evidence) -> Option<Diagnosis>;

/// The rules in order: a cause before its symptoms (a missing claim before the Pod it leaves
/// unschedulable, an OOM kill before the crash loop it causes).
pub const RULES: &[(&str, Rule)] = &[
    (MISSING_SECRET, missing_secret),
    (CLAIM_PENDING, claim_pending),
    (UNSCHEDULABLE, unschedulable),
    (IMAGE_NOT_PRESENT, image_not_present),
    (OOM_KILLED, oom_killed),
    (CRASH_LOOP, crash_loop),
    (READINESS, readiness),
];

/// Every diagnosis the rules find for one component; `Unknown` when it is unhealthy and no rule
/// matches, `Healthy` when it is healthy.
pub fn diagnose(ev: &Evidence) -> Vec<Diagnosis> {
    let found: Vec<Diagnosis> = RULES.iter().filter_map(|(_, rule)| rule(ev)).collect();
    if !found.is_empty() {
        return found;
    }
    vec![fallback(ev)]
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn pod_name(pod: &Value) -> &str {
    s(pod, "/metadata/name")
}

/// Every container status of a Pod with its container spec.
fn containers(pod: &Value) -> Vec<(&Value, Option<&Value>)> {
    let mut out = Vec::new();
    for (statuses, specs) in [
        ("/status/initContainerStatuses", "/spec/initContainers"),
        ("/status/containerStatuses", "/spec/containers"),
    ] {
        let specs = pod.pointer(specs).and_then(Value::as_array);
        for cs in pod
            .pointer(statuses)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = s(cs, "/name");
            let spec = specs.and_then(|l| l.iter().find(|c| s(c, "/name") == name));
            out.push((cs, spec));
        }
    }
    out
}

fn events_about<'a>(ev: &'a Evidence, name: &str) -> impl Iterator<Item = &'a super::EventLine> {
    let name = name.to_string();
    ev.events
        .iter()
        .filter(move |e| e.object.rsplit('/').next() == Some(name.as_str()))
}

fn component_file(ev: &Evidence) -> String {
    format!("the `{}` component's desired-state file", ev.component)
}

/// What selects exactly this stack on any command, as `--stack {stack}{ns}`: its directory when
/// known, else its name followed by ` -n <namespace>` (two stacks may share a name).
pub fn stack_selector(ev: &Evidence) -> (String, String) {
    if ev.dir.is_empty() {
        (ev.stack.clone(), format!(" -n {}", ev.namespace))
    } else {
        (ev.dir.clone(), String::new())
    }
}

/// `ErrImageNeverPull`, `ImagePullBackOff`, `ErrImagePull`, `InvalidImageName`.
pub fn image_not_present(ev: &Evidence) -> Option<Diagnosis> {
    for pod in &ev.pods {
        for (cs, _) in containers(pod) {
            let reason = s(cs, "/state/waiting/reason");
            if !matches!(
                reason,
                "ErrImageNeverPull" | "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName"
            ) {
                continue;
            }
            let image = s(cs, "/image");
            let container = s(cs, "/name");
            let mut evidence = vec![format!(
                "pod {} container {container}: {reason}: {}",
                pod_name(pod),
                s(cs, "/state/waiting/message")
            )];
            evidence.extend(
                events_about(ev, pod_name(pod))
                    .filter(|e| e.kind == "Warning")
                    .map(|e| format!("event {}: {}", e.reason, e.message)),
            );
            let (stack, ns) = stack_selector(ev);
            let next_step = if reason == "InvalidImageName" {
                format!(
                    "fix the image reference `{image}` in {}, and commit",
                    component_file(ev)
                )
            } else if reason == "ErrImageNeverPull" || !looks_like_registry(image) {
                format!(
                    "the image is not in the cluster's container runtime: build it there with `converge build --stack {stack}{ns}` (the minikube builder builds straight into minikube), or load an image you built elsewhere with `minikube image load {image}`; the next reconcile (or `converge apply`) rolls it out"
                )
            } else {
                format!(
                    "check that `{image}` exists and the cluster can pull it (`docker pull {image}` on the node's network; for a private registry add an imagePullSecret); or build it locally with `converge build --stack {stack}{ns}` and `minikube image load {image}`"
                )
            };
            return Some(Diagnosis {
                component: ev.component.clone(),
                rule: IMAGE_NOT_PRESENT.into(),
                summary: format!("image `{image}` is not available to the cluster ({reason})"),
                evidence,
                next_step,
            });
        }
    }
    None
}

/// Whether an image reference names a registry host (`ghcr.io/x`, `localhost:5000/x`).
fn looks_like_registry(image: &str) -> bool {
    image
        .split_once('/')
        .is_some_and(|(host, _)| host.contains('.') || host.contains(':') || host == "localhost")
}

/// A container in `CrashLoopBackOff` (or restarting after errors), with its log tail.
pub fn crash_loop(ev: &Evidence) -> Option<Diagnosis> {
    for pod in &ev.pods {
        for (cs, _) in containers(pod) {
            let waiting = s(cs, "/state/waiting/reason");
            let restarts = cs.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
            let last = cs.pointer("/lastState/terminated");
            if waiting != "CrashLoopBackOff" && !(restarts > 0 && last.is_some()) {
                continue;
            }
            let container = s(cs, "/name");
            let pod_n = pod_name(pod);
            let exit = last.and_then(|t| t.get("exitCode")).and_then(Value::as_i64);
            let mut evidence = vec![format!(
                "pod {pod_n} container {container}: {} ({restarts} restarts)",
                if waiting.is_empty() {
                    "restarting".to_string()
                } else {
                    format!("{waiting}: {}", s(cs, "/state/waiting/message"))
                }
            )];
            if let Some(t) = last {
                evidence.push(format!(
                    "last termination: exit code {}, reason {}, finished {}",
                    exit.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                    s(t, "/reason"),
                    s(t, "/finishedAt")
                ));
            }
            let tail = ev
                .logs
                .iter()
                .find(|l| l.pod == pod_n && l.container == container);
            match tail {
                Some(t) if !t.lines.is_empty() => {
                    evidence.push(format!(
                        "last {} log lines{}:",
                        t.lines.len(),
                        if t.previous {
                            " of the crashed instance"
                        } else {
                            ""
                        }
                    ));
                    evidence.extend(t.lines.iter().map(|l| format!("  | {l}")));
                }
                _ => evidence.push("no log lines could be read".into()),
            }
            return Some(Diagnosis {
                component: ev.component.clone(),
                rule: CRASH_LOOP.into(),
                summary: format!(
                    "container {container} keeps crashing{}",
                    exit.map(|c| format!(" (exit code {c})")).unwrap_or_default()
                ),
                evidence,
                next_step: format!(
                    "read the log tail for the error (all of it: `kubectl logs -n {} {pod_n} -c {container} --previous`), fix the application or its configuration, and commit",
                    ev.namespace
                ),
            });
        }
    }
    None
}

/// The one command that makes Secret `name` in `namespace` hold every key in `keys`: `kubectl
/// create secret generic` when it does not exist, `kubectl patch` when it does. Values are
/// placeholders (`<value>`), never read from anywhere.
pub fn secret_fix(name: &str, namespace: &str, exists: bool, keys: &[&str]) -> String {
    let keys: Vec<&str> = if keys.iter().all(|k| k.is_empty()) {
        vec!["<key>"]
    } else {
        keys.iter().copied().filter(|k| !k.is_empty()).collect()
    };
    if exists {
        let data: Vec<String> = keys
            .iter()
            .map(|k| format!("\"{k}\":\"<value>\""))
            .collect();
        format!(
            "kubectl patch secret {name} -n {namespace} --type merge -p '{{\"stringData\":{{{}}}}}'",
            data.join(",")
        )
    } else {
        let literals: Vec<String> = keys
            .iter()
            .map(|k| format!("--from-literal={k}=<value>"))
            .collect();
        format!(
            "kubectl create secret generic {name} -n {namespace} {}",
            literals.join(" ")
        )
    }
}

/// A referenced Secret or key that does not exist (from the Secrets themselves, or the
/// kubelet's `CreateContainerConfigError`).
pub fn missing_secret(ev: &Evidence) -> Option<Diagnosis> {
    let mut missing_secrets: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut missing_keys: Vec<(&str, &str)> = Vec::new();
    for r in ev.secret_refs.iter().filter(|r| !r.optional) {
        match ev.secrets.get(&r.secret) {
            Some(None) => match missing_secrets.iter_mut().find(|(n, _)| *n == r.secret) {
                Some((_, keys)) => {
                    if !r.key.is_empty() && !keys.contains(&r.key.as_str()) {
                        keys.push(&r.key)
                    }
                }
                None => missing_secrets.push((
                    &r.secret,
                    if r.key.is_empty() {
                        vec![]
                    } else {
                        vec![&r.key]
                    },
                )),
            },
            Some(Some(keys))
                if !r.key.is_empty()
                    && !keys.contains(&r.key)
                    && !missing_keys.contains(&(r.secret.as_str(), r.key.as_str())) =>
            {
                missing_keys.push((&r.secret, &r.key))
            }
            _ => {}
        }
    }
    let mut evidence = Vec::new();
    for pod in &ev.pods {
        for (cs, _) in containers(pod) {
            if s(cs, "/state/waiting/reason") == "CreateContainerConfigError" {
                evidence.push(format!(
                    "pod {} container {}: CreateContainerConfigError: {}",
                    pod_name(pod),
                    s(cs, "/name"),
                    s(cs, "/state/waiting/message")
                ));
            }
        }
    }
    if missing_secrets.is_empty() && missing_keys.is_empty() {
        // The kubelet's word alone (Secrets not gathered): name what it names.
        let msg = evidence.first()?;
        return Some(Diagnosis {
            component: ev.component.clone(),
            rule: MISSING_SECRET.into(),
            summary: "a Secret or key the container needs is missing".into(),
            evidence: evidence.clone(),
            next_step: format!(
                "create what the message names: `kubectl create secret generic <name> -n {} --from-literal=<key>=<value>` ({msg})",
                ev.namespace
            ),
        });
    }
    let mut steps = Vec::new();
    let mut parts = Vec::new();
    for (name, keys) in &missing_secrets {
        parts.push(format!("Secret `{name}` does not exist"));
        evidence.push(format!(
            "Secret {name} is referenced (keys: {}) but does not exist in namespace {}",
            if keys.is_empty() {
                "all".to_string()
            } else {
                keys.join(", ")
            },
            ev.namespace
        ));
        steps.push(secret_fix(name, &ev.namespace, false, keys));
    }
    // One patch per Secret with every key it lacks.
    let mut by_secret: Vec<(&str, Vec<&str>)> = Vec::new();
    for (name, key) in &missing_keys {
        match by_secret.iter_mut().find(|(n, _)| n == name) {
            Some((_, keys)) => keys.push(key),
            None => by_secret.push((name, vec![key])),
        }
    }
    for (name, keys) in &by_secret {
        parts.push(format!(
            "Secret `{name}` has no key {}",
            keys.iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let have = ev
            .secrets
            .get(*name)
            .and_then(|k| k.as_ref())
            .map(|k| k.join(", "))
            .unwrap_or_default();
        evidence.push(format!(
            "Secret {name} has keys [{have}]; {} referenced",
            keys.iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
                + if keys.len() == 1 { " is" } else { " are" }
        ));
        steps.push(secret_fix(name, &ev.namespace, true, keys));
    }
    Some(Diagnosis {
        component: ev.component.clone(),
        rule: MISSING_SECRET.into(),
        summary: parts.join("; "),
        evidence,
        next_step: format!(
            "{}; converge applies the component on its next reconcile",
            steps
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    })
}

fn free(n: &NodeRoom) -> (i64, i64) {
    (
        n.allocatable_cpu_milli - n.requested_cpu_milli,
        n.allocatable_memory - n.requested_memory,
    )
}

/// The scheduler found no node with room (CPU, memory); with the numbers.
pub fn unschedulable(ev: &Evidence) -> Option<Diagnosis> {
    for pod in &ev.pods {
        let Some(cond) = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| s(c, "/type") == "PodScheduled" && s(c, "/reason") == "Unschedulable")
        else {
            continue;
        };
        let message = s(cond, "/message");
        let (cpu, mem) = pod_requests(pod);
        let mut evidence = vec![format!("pod {}: {message}", pod_name(pod))];
        evidence.push(format!(
            "the pod requests {} CPU and {} memory",
            fmt_cpu(cpu),
            fmt_memory(mem)
        ));
        for n in &ev.nodes {
            let (fc, fm) = free(n);
            evidence.push(format!(
                "node {}: allocatable {} CPU / {}, already requested {} / {}, free {} / {}",
                n.name,
                fmt_cpu(n.allocatable_cpu_milli),
                fmt_memory(n.allocatable_memory),
                fmt_cpu(n.requested_cpu_milli),
                fmt_memory(n.requested_memory),
                fmt_cpu(fc.max(0)),
                fmt_memory(fm.max(0))
            ));
        }
        let best_cpu = ev.nodes.iter().map(|n| free(n).0).max().unwrap_or(0).max(0);
        let best_mem = ev.nodes.iter().map(|n| free(n).1).max().unwrap_or(0).max(0);
        let short_cpu =
            message.contains("Insufficient cpu") || (!ev.nodes.is_empty() && cpu > best_cpu);
        let short_mem =
            message.contains("Insufficient memory") || (!ev.nodes.is_empty() && mem > best_mem);
        let mut lower = Vec::new();
        if short_cpu {
            lower.push(format!(
                "resources.requests.cpu to at most {}",
                fmt_cpu(best_cpu)
            ));
        }
        if short_mem {
            lower.push(format!(
                "resources.requests.memory to at most {}",
                fmt_memory(best_mem)
            ));
        }
        let (summary, next_step) = if lower.is_empty() {
            (
                format!("pod {} cannot be scheduled", pod_name(pod)),
                "read the scheduler's message above: a taint, node selector or affinity excludes every node; change the component's values or the nodes".to_string(),
            )
        } else {
            let what: Vec<&str> = [(short_cpu, "CPU"), (short_mem, "memory")]
                .iter()
                .filter(|(b, _)| *b)
                .map(|(_, w)| *w)
                .collect();
            (
                format!(
                    "no node has enough free {} for pod {} (requests {} CPU, {})",
                    what.join(" and "),
                    pod_name(pod),
                    fmt_cpu(cpu),
                    fmt_memory(mem)
                ),
                format!(
                    "lower {} in {} (times replicas, across the stack), or give the cluster more (minikube: `minikube delete && minikube start --cpus=<n> --memory=<size>`, which discards the cluster)",
                    lower.join(" and "),
                    component_file(ev)
                ),
            )
        };
        return Some(Diagnosis {
            component: ev.component.clone(),
            rule: UNSCHEDULABLE.into(),
            summary,
            evidence,
            next_step,
        });
    }
    None
}

fn describe_probe(p: &Value) -> String {
    let port = |v: &Value| {
        v.get("port")
            .map(|p| p.to_string().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let mut out = if let Some(h) = p.get("httpGet") {
        let scheme = match s(h, "/scheme") {
            "" => "HTTP",
            other => other,
        };
        format!("{scheme} GET {} on port {}", s(h, "/path"), port(h))
    } else if let Some(t) = p.get("tcpSocket") {
        format!("TCP connect to port {}", port(t))
    } else if let Some(e) = p.pointer("/exec/command").and_then(Value::as_array) {
        let argv: Vec<&str> = e.iter().filter_map(Value::as_str).collect();
        format!("exec `{}`", argv.join(" "))
    } else if p.get("grpc").is_some() {
        "gRPC health check".to_string()
    } else {
        "probe".to_string()
    };
    let n = |k: &str, d: i64| p.get(k).and_then(Value::as_i64).unwrap_or(d);
    out.push_str(&format!(
        " every {}s, timeout {}s, failing after {} tries, first after {}s",
        n("periodSeconds", 10),
        n("timeoutSeconds", 1),
        n("failureThreshold", 3),
        n("initialDelaySeconds", 0)
    ));
    out
}

/// A container that runs but never becomes ready: its readiness probe and what it answered.
pub fn readiness(ev: &Evidence) -> Option<Diagnosis> {
    for pod in &ev.pods {
        if s(pod, "/status/phase") != "Running" {
            continue;
        }
        for (cs, spec) in containers(pod) {
            if cs.pointer("/state/running").is_none()
                || cs.get("ready").and_then(Value::as_bool) != Some(false)
            {
                continue;
            }
            let container = s(cs, "/name");
            let probe = spec.and_then(|c| c.get("readinessProbe"));
            let failures: Vec<&super::EventLine> = events_about(ev, pod_name(pod))
                .filter(|e| e.reason == "Unhealthy" && e.message.contains("Readiness"))
                .collect();
            let mut evidence = vec![format!(
                "pod {} container {container}: running, not ready",
                pod_name(pod)
            )];
            match probe {
                Some(p) => evidence.push(format!("readiness probe: {}", describe_probe(p))),
                None => evidence.push("no readiness probe is set".into()),
            }
            for e in &failures {
                evidence.push(format!(
                    "event {} (×{}): {}",
                    e.reason,
                    e.count.max(1),
                    e.message
                ));
            }
            let response = failures
                .last()
                .map(|e| format!(": {}", e.message))
                .unwrap_or_default();
            let target = probe
                .and_then(|p| p.get("httpGet"))
                .map(|h| {
                    let port = h
                        .get("port")
                        .map(|v| v.to_string().trim_matches('"').to_string())
                        .unwrap_or_default();
                    format!(
                        " (try it: `kubectl port-forward -n {} pod/{} 8080:{port}` and `curl -i localhost:8080{}`)",
                        ev.namespace,
                        pod_name(pod),
                        s(h, "/path")
                    )
                })
                .unwrap_or_default();
            return Some(Diagnosis {
                component: ev.component.clone(),
                rule: READINESS.into(),
                summary: format!("container {container} runs but its readiness probe fails{response}"),
                evidence,
                next_step: format!(
                    "make the application answer its readiness probe{target}, or fix probes.readiness (path, port, initialDelaySeconds) in {}, and commit",
                    component_file(ev)
                ),
            });
        }
    }
    None
}

/// A claim stuck in `Pending`: no default StorageClass, or a class that does not exist.
pub fn claim_pending(ev: &Evidence) -> Option<Diagnosis> {
    for claim in &ev.claims {
        if s(claim, "/status/phase") != "Pending" {
            continue;
        }
        let name = s(claim, "/metadata/name");
        let class = claim
            .pointer("/spec/storageClassName")
            .and_then(Value::as_str);
        let default = ev.storage_classes.iter().find(|c| c.default);
        let known: Vec<&str> = ev.storage_classes.iter().map(|c| c.name.as_str()).collect();
        let events: Vec<String> = events_about(ev, name)
            .map(|e| format!("event {}: {}", e.reason, e.message))
            .collect();
        let problem = match class {
            None if default.is_none() => Some(
                "it names no storage class and the cluster has no default StorageClass".to_string(),
            ),
            Some("") => Some("its storage class is \"\" (no dynamic provisioning) and no PersistentVolume matches it".to_string()),
            Some(c) if !known.contains(&c) => Some(format!("its storage class `{c}` does not exist")),
            // A class that waits for the first consumer binds once a Pod is scheduled.
            _ => None,
        };
        let Some(problem) = problem else {
            continue;
        };
        let mut evidence = vec![format!(
            "claim {name}: Pending, storage class {}, requests {}",
            class
                .map(|c| format!("`{c}`"))
                .unwrap_or_else(|| "(none)".into()),
            s(claim, "/spec/resources/requests/storage")
        )];
        evidence.push(format!(
            "storage classes in the cluster: {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ));
        evidence.extend(events);
        let pick = if known.is_empty() {
            "minikube: `minikube addons enable storage-provisioner` and `minikube addons enable default-storageclass`; elsewhere install a provisioner and mark its class default".to_string()
        } else {
            format!(
                "set storage.storageClass in {} to one of: {}, or mark one default: `kubectl patch storageclass {} -p '{{\"metadata\":{{\"annotations\":{{\"storageclass.kubernetes.io/is-default-class\":\"true\"}}}}}}'`",
                component_file(ev),
                known.join(", "),
                known[0]
            )
        };
        return Some(Diagnosis {
            component: ev.component.clone(),
            rule: CLAIM_PENDING.into(),
            summary: format!("claim {name} is Pending: {problem}"),
            evidence,
            next_step: pick,
        });
    }
    None
}

/// A container killed for exceeding its memory limit; suggests a limit.
pub fn oom_killed(ev: &Evidence) -> Option<Diagnosis> {
    for pod in &ev.pods {
        for (cs, spec) in containers(pod) {
            let term = ["/state/terminated", "/lastState/terminated"]
                .iter()
                .filter_map(|p| cs.pointer(p))
                .find(|t| s(t, "/reason") == "OOMKilled");
            let Some(term) = term else {
                continue;
            };
            let container = s(cs, "/name");
            let limit = spec.and_then(|c| quantity(c, "/resources/limits/memory"));
            let limit_bytes = limit.map(|q| q.as_f64().round() as i64);
            let restarts = cs.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
            let mut evidence = vec![format!(
                "pod {} container {container}: terminated OOMKilled (exit code {}), {restarts} restarts",
                pod_name(pod),
                term.get("exitCode").and_then(Value::as_i64).unwrap_or(137)
            )];
            evidence.push(match limit_bytes {
                Some(b) => format!("memory limit: {}", fmt_memory(b)),
                None => "no memory limit is set on the container (the node ran out)".into(),
            });
            let next_step = match limit_bytes {
                Some(b) => format!(
                    "raise resources.limits.memory in {} to {} (twice the current {}), or find what grows; commit, and converge rolls it out",
                    component_file(ev),
                    fmt_memory(b * 2),
                    fmt_memory(b)
                ),
                None => format!(
                    "set resources.requests.memory and resources.limits.memory in {} so the scheduler reserves what it needs",
                    component_file(ev)
                ),
            };
            return Some(Diagnosis {
                component: ev.component.clone(),
                rule: OOM_KILLED.into(),
                summary: format!(
                    "container {container} was killed for using more memory than its limit{}",
                    limit_bytes
                        .map(|b| format!(" ({})", fmt_memory(b)))
                        .unwrap_or_default()
                ),
                evidence,
                next_step,
            });
        }
    }
    None
}

fn workload_ready(w: &Value) -> bool {
    let kind = s(w, "/kind");
    crate::cluster::health::of(kind, w) == crate::cluster::health::Health::Ready
}

/// No rule matched: healthy, or unhealthy for a reason the rules do not know.
fn fallback(ev: &Evidence) -> Diagnosis {
    let blocked = ev
        .recorded
        .as_ref()
        .filter(|r| r.health == "Blocked" || r.health == "Failed");
    let healthy =
        !ev.workloads.is_empty() && ev.workloads.iter().all(workload_ready) && blocked.is_none();
    if healthy {
        let ready: Vec<String> = ev
            .workloads
            .iter()
            .map(|w| {
                format!(
                    "{}/{}: {}/{} ready",
                    s(w, "/kind"),
                    s(w, "/metadata/name"),
                    w.pointer("/status/readyReplicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(0),
                    w.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )
            })
            .collect();
        return Diagnosis {
            component: ev.component.clone(),
            rule: HEALTHY.into(),
            summary: "healthy".into(),
            evidence: ready,
            next_step: "nothing to do".into(),
        };
    }
    let mut evidence = Vec::new();
    if let Some(r) = &ev.recorded {
        evidence.push(format!("converge recorded: {} {}", r.health, r.last_error));
    }
    for w in &ev.workloads {
        for c in w
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            evidence.push(format!(
                "{}/{} condition {}={} {}: {}",
                s(w, "/kind"),
                s(w, "/metadata/name"),
                s(c, "/type"),
                s(c, "/status"),
                s(c, "/reason"),
                s(c, "/message")
            ));
        }
    }
    evidence.extend(
        ev.events
            .iter()
            .filter(|e| e.kind == "Warning")
            .map(|e| format!("event {} on {}: {}", e.reason, e.object, e.message)),
    );
    let (stack, ns) = stack_selector(ev);
    let (summary, next_step) = if ev.workloads.is_empty() {
        (
            "the component has no workload in the cluster".to_string(),
            format!(
                "converge has not applied it: see `converge status --stack {stack}{ns}` for why, or run `converge apply --stack {stack}{ns}`"
            ),
        )
    } else {
        (
            "not healthy, for a reason no rule recognises".to_string(),
            format!(
                "read the evidence above, `kubectl describe -n {} {}`, or ask an assistant with `converge explain {} --ai`",
                ev.namespace,
                ev.workloads
                    .first()
                    .map(|w| format!("{}/{}", s(w, "/kind").to_lowercase(), s(w, "/metadata/name")))
                    .unwrap_or_default(),
                ev.component
            ),
        )
    };
    Diagnosis {
        component: ev.component.clone(),
        rule: UNKNOWN.into(),
        summary,
        evidence,
        next_step,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{EventLine, LogTail, SecretRef, StorageClass};
    use super::*;
    use serde_json::json;

    fn ev(pods: Vec<Value>) -> Evidence {
        Evidence {
            stack: "todo".into(),
            namespace: "apps".into(),
            component: "backend".into(),
            pods,
            ..Evidence::default()
        }
    }

    fn waiting_pod(reason: &str, message: &str, image: &str) -> Value {
        json!({"metadata": {"name": "backend-1"},
            "spec": {"containers": [{"name": "backend", "image": image}]},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "backend", "image": image, "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}}}]}})
    }

    #[test]
    fn an_image_missing_from_the_runtime_suggests_build_or_minikube_image_load() {
        let e = ev(vec![waiting_pod(
            "ErrImageNeverPull",
            "Container image \"todo-backend:3f2a\" is not present with pull policy of Never",
            "todo-backend:3f2a",
        )]);
        let d = &diagnose(&e)[0];
        assert_eq!(d.rule, IMAGE_NOT_PRESENT);
        assert!(d.summary.contains("todo-backend:3f2a"), "{d:?}");
        assert!(d.next_step.contains("converge build --stack todo"));
        assert!(d
            .next_step
            .contains("minikube image load todo-backend:3f2a"));
    }

    #[test]
    fn an_image_pull_back_off_from_a_registry_says_to_check_the_registry() {
        let e = ev(vec![waiting_pod(
            "ImagePullBackOff",
            "Back-off pulling image",
            "ghcr.io/acme/backend:1",
        )]);
        let d = &diagnose(&e)[0];
        assert_eq!(d.rule, IMAGE_NOT_PRESENT);
        assert!(
            d.next_step.contains("docker pull ghcr.io/acme/backend:1"),
            "{d:?}"
        );
    }

    #[test]
    fn a_crash_loop_shows_the_exit_code_and_the_log_tail() {
        let mut e = ev(vec![json!({"metadata": {"name": "backend-1"},
            "spec": {"containers": [{"name": "backend"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "backend", "ready": false, "restartCount": 5,
                "lastState": {"terminated": {"exitCode": 3, "reason": "Error", "finishedAt": "2026-01-01T00:00:00Z"}},
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}}}]}})]);
        e.logs.push(LogTail {
            pod: "backend-1".into(),
            container: "backend".into(),
            previous: true,
            lines: vec!["KeyError: 'DATABASE_URL'".into()],
        });
        let d = &diagnose(&e)[0];
        assert_eq!(d.rule, CRASH_LOOP);
        assert!(d.summary.contains("exit code 3"), "{d:?}");
        assert!(d
            .evidence
            .iter()
            .any(|l| l.contains("KeyError: 'DATABASE_URL'")));
        assert!(d
            .next_step
            .contains("kubectl logs -n apps backend-1 -c backend --previous"));
    }

    #[test]
    fn a_missing_secret_gives_the_create_command_with_every_missing_key() {
        let mut e = ev(vec![]);
        e.secret_refs = vec![
            SecretRef {
                secret: "todo-secrets".into(),
                key: "database-url".into(),
                optional: false,
            },
            SecretRef {
                secret: "todo-secrets".into(),
                key: "jwt-secret".into(),
                optional: false,
            },
            SecretRef {
                secret: "extra".into(),
                key: "token".into(),
                optional: true,
            },
        ];
        e.secrets.insert("todo-secrets".into(), None);
        e.secrets.insert("extra".into(), None);
        let d = &diagnose(&e)[0];
        assert_eq!(d.rule, MISSING_SECRET);
        assert!(d.next_step.contains(
            "kubectl create secret generic todo-secrets -n apps --from-literal=database-url=<value> --from-literal=jwt-secret=<value>"
        ), "{d:?}");
        assert!(
            !d.summary.contains("extra"),
            "optional references are not required"
        );
    }

    #[test]
    fn a_missing_key_gives_the_patch_command_and_lists_key_names_only() {
        let mut e = ev(vec![]);
        e.secret_refs = vec![SecretRef {
            secret: "s".into(),
            key: "jwt-secret".into(),
            optional: false,
        }];
        e.secrets
            .insert("s".into(), Some(vec!["database-url".into()]));
        let d = &diagnose(&e)[0];
        assert_eq!(d.rule, MISSING_SECRET);
        assert!(d.summary.contains("has no key `jwt-secret`"));
        assert!(d
            .next_step
            .contains("kubectl patch secret s -n apps --type merge"));
        assert!(d.evidence.iter().any(|l| l.contains("[database-url]")));
    }

    #[test]
    fn create_container_config_error_alone_is_a_missing_secret() {
        let e = ev(vec![waiting_pod(
            "CreateContainerConfigError",
            "secret \"todo-secrets\" not found",
            "x:1",
        )]);
        let d = &diagnose(&e)[0];
        assert_eq!(d.rule, MISSING_SECRET);
        assert!(
            d.next_step
                .contains("secret \\\"todo-secrets\\\" not found")
                || d.next_step.contains("todo-secrets")
        );
    }

    #[test]
    fn unschedulable_for_cpu_names_requested_and_free_numbers() {
        let mut e = ev(vec![json!({"metadata": {"name": "backend-1"},
            "spec": {"containers": [{"name": "backend", "resources": {"requests": {"cpu": "64", "memory": "256Mi"}}}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient cpu."}]}})]);
        e.nodes.push(NodeRoom {
            name: "minikube".into(),
            allocatable_cpu_milli: 4000,
            allocatable_memory: 8 << 30,
            requested_cpu_milli: 1250,
            requested_memory: 1 << 30,
        });
        let d = &diagnose(&e)[0];
        assert_eq!(d.rule, UNSCHEDULABLE);
        assert!(d.summary.contains("requests 64 CPU, 256Mi"), "{d:?}");
        assert!(
            d.evidence
                .iter()
                .any(|l| l.contains("allocatable 4 CPU / 8Gi") && l.contains("free 2750m / 7Gi")),
            "{d:?}"
        );
        assert!(d
            .next_step
            .contains("resources.requests.cpu to at most 2750m"));
        assert!(!d.next_step.contains("requests.memory"));
    }

    #[test]
    fn a_failing_readiness_probe_shows_the_probe_and_the_response() {
        let mut e = ev(vec![json!({"metadata": {"name": "backend-1"},
            "spec": {"containers": [{"name": "backend", "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8000}, "periodSeconds": 5}}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "backend", "ready": false, "restartCount": 0, "state": {"running": {}}}]}})]);
        e.events.push(EventLine {
            object: "Pod/backend-1".into(),
            kind: "Warning".into(),
            reason: "Unhealthy".into(),
            message: "Readiness probe failed: HTTP probe failed with statuscode: 503".into(),
            count: 12,
            last: String::new(),
        });
        let d = &diagnose(&e)[0];
        assert_eq!(d.rule, READINESS);
        assert!(d.summary.contains("statuscode: 503"), "{d:?}");
        assert!(
            d.evidence
                .iter()
                .any(|l| l.contains("HTTP GET /healthz on port 8000 every 5s")),
            "{d:?}"
        );
        assert!(d.next_step.contains("curl -i localhost:8080/healthz"));
    }

    #[test]
    fn a_pending_claim_without_any_storage_class_suggests_the_minikube_addons() {
        let mut e = ev(vec![]);
        e.claims.push(json!({"metadata": {"name": "data-postgres-0"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}, "status": {"phase": "Pending"}}));
        e.events.push(EventLine {
            object: "PersistentVolumeClaim/data-postgres-0".into(),
            kind: "Normal".into(),
            reason: "FailedBinding".into(),
            message: "no persistent volumes available for this claim and no storage class is set"
                .into(),
            count: 3,
            last: String::new(),
        });
        let d = &diagnose(&e)[0];
        assert_eq!(d.rule, CLAIM_PENDING);
        assert!(d.summary.contains("no default StorageClass"), "{d:?}");
        assert!(d
            .next_step
            .contains("minikube addons enable default-storageclass"));
        assert!(d
            .evidence
            .iter()
            .any(|l| l.contains("no storage class is set")));
    }

    #[test]
    fn a_claim_naming_an_unknown_class_lists_the_known_ones() {
        let mut e = ev(vec![]);
        e.claims.push(json!({"metadata": {"name": "c"}, "spec": {"storageClassName": "fast"}, "status": {"phase": "Pending"}}));
        e.storage_classes.push(StorageClass {
            name: "standard".into(),
            default: true,
            provisioner: "x".into(),
        });
        let d = &diagnose(&e)[0];
        assert_eq!(d.rule, CLAIM_PENDING);
        assert!(d.summary.contains("`fast` does not exist"));
        assert!(d.next_step.contains("one of: standard"));
    }

    #[test]
    fn a_claim_waiting_for_its_first_consumer_is_not_a_problem() {
        let mut e = ev(vec![]);
        e.claims.push(json!({"metadata": {"name": "c"}, "spec": {"storageClassName": "standard"}, "status": {"phase": "Pending"}}));
        e.storage_classes.push(StorageClass {
            name: "standard".into(),
            default: true,
            provisioner: "x".into(),
        });
        assert!(claim_pending(&e).is_none());
    }

    #[test]
    fn an_oom_kill_suggests_twice_the_memory_limit_before_the_crash_loop() {
        let e = ev(vec![json!({"metadata": {"name": "backend-1"},
            "spec": {"containers": [{"name": "backend", "resources": {"limits": {"memory": "512Mi"}}}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "backend", "ready": false, "restartCount": 4,
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}}]}})]);
        let all = diagnose(&e);
        assert_eq!(all[0].rule, OOM_KILLED);
        assert!(all[0].summary.contains("(512Mi)"));
        assert!(all[0].next_step.contains("resources.limits.memory"));
        assert!(all[0].next_step.contains("to 1Gi"), "{:?}", all[0]);
        assert_eq!(
            all[1].rule, CRASH_LOOP,
            "the crash loop is reported after its cause"
        );
    }

    #[test]
    fn a_ready_component_is_healthy_and_an_unready_one_without_a_known_cause_is_unknown() {
        let mut e = ev(vec![]);
        e.workloads.push(json!({"kind": "Deployment", "metadata": {"name": "backend", "generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1, "readyReplicas": 1}}));
        let d = &diagnose(&e)[0];
        assert_eq!(d.rule, HEALTHY);
        assert!(!d.is_problem());
        e.workloads[0]["status"]["availableReplicas"] = json!(0);
        let d = &diagnose(&e)[0];
        assert_eq!(d.rule, UNKNOWN);
        assert!(d.next_step.contains("--ai"));
    }
}
