//! Integration tests against the testbed (tests/testbed/up): a real
//! Kubernetes control plane with a kwok node and a real node, and a private
//! Docker engine.
//! Each test module lives in tests/integration/; shared helpers in
//! tests/support/.

#[path = "support/mod.rs"]
mod support;

#[path = "integration/smoke.rs"]
mod smoke;

#[path = "integration/chart.rs"]
mod chart;

#[path = "integration/desired.rs"]
mod desired;

#[path = "integration/build.rs"]
mod build;

#[path = "integration/engine.rs"]
mod engine;

#[path = "integration/daemon.rs"]
mod daemon;

#[path = "integration/gitsync.rs"]
mod gitsync;
#[path = "integration/standby.rs"]
mod standby;

#[path = "integration/incluster_chart.rs"]
mod incluster_chart;

#[path = "integration/pause.rs"]
mod pause;

#[path = "integration/operate.rs"]
mod operate;

#[path = "integration/hooks.rs"]
mod hooks;
#[path = "integration/hostile.rs"]
mod hostile;
#[path = "integration/node.rs"]
mod node;
#[path = "integration/realnode.rs"]
mod realnode;
#[path = "integration/service.rs"]
mod service;
#[path = "integration/standins.rs"]
mod standins;
#[path = "integration/ux.rs"]
mod ux;

#[path = "integration/history.rs"]
mod history;
#[path = "integration/in_cluster.rs"]
mod in_cluster;
#[path = "integration/localurl.rs"]
mod localurl;
#[path = "integration/mcp.rs"]
mod mcp;
#[path = "integration/on_minikube.rs"]
mod on_minikube;
#[path = "integration/page.rs"]
mod page;
#[path = "integration/registry.rs"]
mod registry;
#[path = "integration/registry_bed.rs"]
mod registry_bed;
