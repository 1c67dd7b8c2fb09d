//! Proves the testbed's real node runs real containers: an image loaded from
//! the bed's Docker engine into the node's containerd (no registry), readiness
//! through an HTTP probe, a NodePort answering on 127.0.0.1, cluster DNS and the
//! `kubernetes` Service from a Pod, a `standard` claim whose data outlives its
//! Pod, and `kubectl logs`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::support::{self, TestNamespace};

/// Time the real node gets for a Pod to start: loaded images, no pulls.
const POD_TIMEOUT: Duration = Duration::from_secs(90);

/// A FROM-scratch image holding Debian's static busybox and a page for its
/// httpd, built on the bed's dockerd and loaded into the node once per test
/// process; returns its reference.
fn busybox_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let busybox = std::path::Path::new("/bin/busybox");
        assert!(
            busybox.exists(),
            "/bin/busybox missing: apt-get install -y busybox-static"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(busybox, dir.path().join("busybox")).expect("copy busybox");
        std::fs::write(dir.path().join("index.html"), "hello from the real node\n").unwrap();
        std::fs::write(
            dir.path().join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY index.html /www/index.html\n",
        )
        .unwrap();
        let tag = format!("{}:1", support::unique_name("converge-node-smoke"));
        support::run_ok(
            support::docker()
                .args(["build", "-q", "-t", &tag])
                .arg(dir.path()),
        );
        support::load_image_into_node(&tag);
        tag
    })
}

/// A busybox container running `script` with `sh -c`.
fn busybox(name: &str, script: &str) -> serde_json::Value {
    json!({
        "name": name,
        "image": busybox_image(),
        "imagePullPolicy": "Never",
        "command": ["/bin/busybox", "sh", "-c", script],
    })
}

/// A Deployment of busybox httpd serving the image's page on port 8080, Ready
/// only once its probe has fetched the page.
fn web_deployment(replicas: i32) -> Deployment {
    let mut container = busybox(
        "web",
        "echo web container started; exec /bin/busybox httpd -f -v -p 8080 -h /www",
    );
    container["ports"] = json!([{ "containerPort": 8080 }]);
    container["readinessProbe"] = json!({
        "httpGet": { "path": "/index.html", "port": 8080 },
        "periodSeconds": 1
    });
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [container], "terminationGracePeriodSeconds": 1 }
            }
        }
    }))
    .expect("deployment")
}

fn service(type_: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": "web" },
        "spec": {
            "type": type_,
            "selector": { "app": "web" },
            "ports": [{ "port": 80, "targetPort": 8080 }]
        }
    }))
    .expect("service")
}

async fn wait_deployment_ready(ns: &TestNamespace, replicas: i32) {
    let deployments: Api<Deployment> = ns.api();
    support::wait_for(
        &deployments,
        "web",
        move |d: Option<&Deployment>| {
            d.and_then(|d| d.status.as_ref()).is_some_and(|s| {
                s.ready_replicas == Some(replicas) && s.updated_replicas == Some(replicas)
            })
        },
        POD_TIMEOUT,
    )
    .await;
}

fn pod_phase_is(phase: &'static str) -> impl Fn(Option<&Pod>) -> bool {
    move |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some(phase)
    }
}

/// GET `path` from 127.0.0.1:`port` with HTTP/1.0; the whole response.
fn http_get(port: i32, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port as u16))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[tokio::test]
async fn a_pod_on_the_real_node_becomes_ready_through_its_http_probe_and_kubectl_logs_shows_its_output(
) {
    let ns = TestNamespace::real_node("node-ready").await;
    let deployments: Api<Deployment> = ns.api();
    deployments
        .create(&PostParams::default(), &web_deployment(2))
        .await
        .expect("create deployment");
    wait_deployment_ready(&ns, 2).await;

    let pods: Api<Pod> = ns.api();
    let running = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list pods");
    assert_eq!(running.items.len(), 2);
    for pod in &running.items {
        let spec = pod.spec.as_ref().expect("pod spec");
        assert_eq!(spec.node_name.as_deref(), Some(support::real_node()));
        let status = pod.status.as_ref().expect("pod status");
        let ip = status.pod_ip.as_deref().expect("a Pod IP");
        assert!(
            ip.starts_with("10.244.0."),
            "a Pod IP of the real node's subnet, got {ip}"
        );
        let container = &status
            .container_statuses
            .as_ref()
            .expect("container statuses")[0];
        assert!(
            container
                .container_id
                .as_deref()
                .is_some_and(|id| id.starts_with("containerd://")),
            "a containerd container: {container:?}"
        );
    }

    let name = running.items[0].metadata.name.clone().expect("pod name");
    let logs = support::run_ok(support::kubectl().args(["logs", "-n", ns.name(), &name]));
    assert!(
        logs.contains("web container started"),
        "kubectl logs: {logs}"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn a_node_port_service_on_the_real_node_answers_on_127_0_0_1_from_the_host() {
    let ns = TestNamespace::real_node("node-port").await;
    let deployments: Api<Deployment> = ns.api();
    deployments
        .create(&PostParams::default(), &web_deployment(1))
        .await
        .expect("create deployment");
    let services: Api<Service> = ns.api();
    let svc = services
        .create(&PostParams::default(), &service("NodePort"))
        .await
        .expect("create service");
    let node_port = svc
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p[0].node_port)
        .expect("an allocated nodePort");
    wait_deployment_ready(&ns, 1).await;

    // kube-proxy writes the Service's rules within a second or two of the
    // endpoint becoming ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    let response = loop {
        match http_get(node_port, "/index.html") {
            Ok(r) if r.contains("hello from the real node") => break r,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "NodePort {node_port} never answered: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    ns.cleanup().await;
}

#[tokio::test]
async fn a_pod_on_the_real_node_resolves_a_service_name_and_reaches_the_api_server() {
    let ns = TestNamespace::real_node("node-dns").await;
    let deployments: Api<Deployment> = ns.api();
    deployments
        .create(&PostParams::default(), &web_deployment(1))
        .await
        .expect("create deployment");
    let services: Api<Service> = ns.api();
    let svc = services
        .create(&PostParams::default(), &service("ClusterIP"))
        .await
        .expect("create service");
    let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
    wait_deployment_ready(&ns, 1).await;
    let pods: Api<Pod> = ns.api();
    let pod = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list pods")
        .items[0]
        .metadata
        .name
        .clone()
        .expect("pod name");

    let busybox_in_pod = |args: &[&str]| {
        let mut cmd = support::kubectl();
        cmd.args(["exec", "-n", ns.name(), &pod, "--", "/bin/busybox"])
            .args(args);
        cmd
    };
    let exec = |args: &[&str]| support::run_ok(&mut busybox_in_pod(args));
    // The Service's short name, through the Pod's search path and CoreDNS.
    // busybox's nslookup asks every search domain and exits 1 when any of
    // them has no answer, so only its output counts here.
    let out = busybox_in_pod(&["nslookup", "web"])
        .output()
        .expect("kubectl exec");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains(&format!(
            "Name:\tweb.{}.svc.cluster.local\nAddress: {cluster_ip}",
            ns.name()
        )),
        "nslookup web gave: {answer}"
    );
    let fqdn = format!("web.{}.svc.cluster.local.", ns.name());
    let answer = exec(&["nslookup", &fqdn]);
    assert!(
        answer.contains(&cluster_ip),
        "nslookup {fqdn} gave: {answer}"
    );
    // The ClusterIP serves the page (kube-proxy's rules, from inside a Pod
    // behind the same bridge: hairpin).
    let page = exec(&[
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{cluster_ip}/index.html"),
    ]);
    assert!(page.contains("hello from the real node"), "{page}");
    // The API server, through the `kubernetes` Service: Go's TLS server
    // answers a plain HTTP request with a 400 saying so.
    let reply = exec(&[
        "sh",
        "-c",
        r#"printf 'GET / HTTP/1.0\r\n\r\n' | /bin/busybox nc -w 5 10.96.0.1 443"#,
    ]);
    assert!(
        reply.contains("Client sent an HTTP request to an HTTPS server"),
        "the kubernetes Service from a Pod: {reply:?}"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn a_standard_claim_binds_on_the_real_node_and_its_data_survives_the_pod() {
    let ns = TestNamespace::real_node("node-volume").await;
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": "data" },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } }
    }))
    .unwrap();
    let claims: Api<PersistentVolumeClaim> = ns.api();
    claims
        .create(&PostParams::default(), &claim)
        .await
        .expect("create claim");
    support::wait_for(
        &claims,
        "data",
        |c: Option<&PersistentVolumeClaim>| {
            c.and_then(|c| c.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                == Some("Bound")
        },
        support::DEFAULT_TIMEOUT,
    )
    .await;
    let bound = claims.get("data").await.unwrap();
    assert_eq!(
        bound.spec.and_then(|s| s.storage_class_name).as_deref(),
        Some("standard")
    );

    // Non-root, as the chart's PostgreSQL: the claim's directory must be
    // writable by any user.
    let pod = |name: &str, script: &str| -> Pod {
        let mut container = busybox("main", script);
        container["volumeMounts"] = json!([{ "name": "data", "mountPath": "/data" }]);
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": name },
            "spec": {
                "restartPolicy": "Never",
                "securityContext": { "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001 },
                "containers": [container],
                "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "data" } }]
            }
        }))
        .unwrap()
    };
    let pods: Api<Pod> = ns.api();
    let marker = support::unique_name("kept");
    pods.create(
        &PostParams::default(),
        &pod(
            "writer",
            &format!("mkdir /data/db && echo {marker} > /data/db/marker"),
        ),
    )
    .await
    .expect("create writer");
    support::wait_for(&pods, "writer", pod_phase_is("Succeeded"), POD_TIMEOUT).await;
    let writer = pods.get("writer").await.unwrap();
    assert_eq!(
        writer.spec.and_then(|s| s.node_name).as_deref(),
        Some(support::real_node())
    );
    pods.delete("writer", &DeleteParams::default())
        .await
        .expect("delete writer");
    support::wait_deleted(&pods, "writer", support::DEFAULT_TIMEOUT).await;

    pods.create(
        &PostParams::default(),
        &pod("reader", "cat /data/db/marker"),
    )
    .await
    .expect("create reader");
    support::wait_for(&pods, "reader", pod_phase_is("Succeeded"), POD_TIMEOUT).await;
    let logs = support::run_ok(support::kubectl().args(["logs", "-n", ns.name(), "reader"]));
    assert_eq!(
        logs.trim(),
        marker,
        "the reader sees what the deleted writer wrote"
    );
    ns.cleanup().await;
}
