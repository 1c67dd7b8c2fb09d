//! Rules about containers: an image the cluster cannot get, a crash loop, an OOM kill, a
//! readiness probe that fails.

use serde_json::Value;

use super::{component_file, containers, events_about, pod_name, s, stack_selector};
use super::{CRASH_LOOP, IMAGE_NOT_PRESENT, OOM_KILLED, READINESS};
use crate::capacity::{fmt_memory, quantity};
use crate::explain::{Diagnosis, EventLine, Evidence};

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
            let failures: Vec<&EventLine> = events_about(ev, pod_name(pod))
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
