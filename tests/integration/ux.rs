//! What a new user meets, through the binary: the same stack selectors on every command, stack
//! identity (directory and namespace) in every output, advice that runs as printed, exit-code
//! contracts (`diff`, `doctor`, `validate`, `status`), errors that say what to do next, status
//! with live counts, ages and the daemon's Lease, a full resync that writes nothing when nothing
//! changed, a base image that cannot be pulled, and `down` taking the Lease with it.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};

use crate::support::git::{copy_project_dir, GitRepo};
use crate::support::shell::{fill_placeholders, shell_words};
use crate::support::{current_context, testbed, TestNamespace};

/// Runs the converge binary against the bed; returns (exit code, stdout, stderr).
fn converge_in(dir: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_converge"));
    cmd.args(args)
        .env("KUBECONFIG", &testbed().kubeconfig)
        .env("CONVERGE_HELM", &testbed().helm)
        .env("NO_COLOR", "1")
        .env_remove("CONVERGE_CONTEXT")
        .env_remove("CONVERGE_LOG")
        .env_remove("CONVERGE_REPO");
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run converge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The binary without the bed (for errors that happen before any cluster is reached).
fn converge_bare(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_converge"));
    cmd.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("CONVERGE_CONTEXT")
        .env_remove("CONVERGE_LOG")
        .env_remove("CONVERGE_REPO")
        .env_remove("KUBECONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run converge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Every `` `converge …` `` and `` `kubectl …` `` command in a text, as printed.
fn advice(text: &str, program: &str) -> Vec<String> {
    let needle = format!("`{program} ");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&needle) {
        let after = &rest[i + 1..];
        let end = after.find('`').unwrap_or(after.len());
        out.push(after[..end].to_string());
        rest = &after[end.min(after.len())..];
    }
    out
}

/// A converge command line as the CLI parses it, placeholders filled.
fn parses(cmd: &str) -> Result<(), String> {
    use clap::Parser;
    let words: Vec<String> = shell_words(&fill_placeholders(cmd))
        .into_iter()
        .map(|w| {
            if w.contains('<') || w.contains('{') {
                "x".into()
            } else {
                w
            }
        })
        .collect();
    converge::cli::Cli::try_parse_from(&words)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Every command converge's own source prints as advice, in a string literal (backquoted, or a
/// `"converge …` literal), placeholders (`{}`, `{stack}`, `<checkout>`) filled.
fn advice_in_source() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    use clap::CommandFactory;
    let subcommands: Vec<String> = converge::cli::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let t = line.trim_start();
            // Doc comments describe commands; they are not printed advice.
            if t.starts_with("//") {
                continue;
            }
            let place = format!("{}:{}", f.display(), n + 1);
            for cmd in advice(line, "converge") {
                out.push((place.clone(), cmd));
            }
            // A bare `"converge <command> …"` literal (prose like "converge recorded: …" is not).
            if let Some(i) = line.find("\"converge ") {
                let after = &line[i + 1..];
                let end = after.find('"').unwrap_or(after.len());
                let cmd = &after[..end];
                let word = cmd.split_whitespace().nth(1).unwrap_or("");
                if subcommands.contains(&word.to_string()) {
                    out.push((place.clone(), cmd.to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn every_converge_command_in_converges_own_messages_is_accepted_by_its_command_line() {
    let found = advice_in_source();
    assert!(
        found.len() >= 15,
        "only {} advice commands found",
        found.len()
    );
    let mut bad = Vec::new();
    for (place, cmd) in &found {
        if let Err(e) = parses(cmd) {
            bad.push(format!("{place}: `{cmd}`:\n{e}"));
        }
    }
    assert!(
        bad.is_empty(),
        "advice that does not run:\n{}",
        bad.join("\n")
    );
    // The flags messages tell a user to re-run `converge apply` with.
    for flag in [
        "--force-conflicts",
        "--recreate",
        "--allow-mass-prune",
        "--full",
    ] {
        parses(&format!("converge apply {flag}")).unwrap();
    }
}

#[test]
fn every_stack_command_accepts_the_same_selectors() {
    for cmd in [
        "apply", "diff", "status", "build", "doctor", "explain", "down", "run", "mcp",
    ] {
        for sel in [
            vec!["--stack", "dev"],
            vec!["--stack", "desired/dev"],
            vec!["--stack", "todo-chatbot", "-n", "todo-chatbot"],
            vec!["--namespace", "todo-chatbot", "--stack", "dev"],
            vec!["--context", "c", "--kubeconfig", "/k"],
        ] {
            let line = format!("converge {cmd} {}", sel.join(" "));
            parses(&line).unwrap_or_else(|e| panic!("`{line}`: {e}"));
        }
    }
    for cmd in [
        "validate", "apply", "diff", "status", "build", "doctor", "explain", "down",
    ] {
        for f in ["json", "yaml"] {
            let line = format!("converge {cmd} -o {f}");
            parses(&line).unwrap_or_else(|e| panic!("`{line}`: {e}"));
        }
    }
}

#[test]
fn global_flags_are_listed_once_under_their_own_heading() {
    use clap::CommandFactory;
    let mut cmd = converge::cli::Cli::command();
    cmd.build();
    let apply = cmd.find_subcommand_mut("apply").unwrap();
    let help = apply.render_long_help().to_string();
    let heading = help
        .find("Global options:")
        .expect("a Global options heading");
    for flag in ["--log <LOG>", "--log-format", "--verbose"] {
        let at = help
            .find(flag)
            .unwrap_or_else(|| panic!("{flag} missing: {help}"));
        assert!(
            at > heading,
            "{flag} is listed among the command's own flags"
        );
        assert_eq!(help.matches(flag).count(), 1, "{flag} listed twice");
    }
    let run = cmd.find_subcommand_mut("run").unwrap();
    let help = run.render_long_help().to_string();
    assert!(
        help.contains("`info` for `converge run`"),
        "run's help names its own default log level: {help}"
    );
}

/// Two stacks sharing one name, like the shipped dev and staging: `desired/dev` in namespace
/// `<ns>` and `desired/staging` in `<ns>-staging`, each with one component on kwok.
fn two_stack_repo(name: &str, ns: &str, image: &str) -> GitRepo {
    let repo = GitRepo::new();
    copy_project_dir(&repo, "charts/todo-chatbot", "charts/todo-chatbot");
    for (dir, namespace) in [
        ("dev", ns.to_string()),
        ("staging", format!("{ns}-staging")),
    ] {
        repo.write(
            &format!("desired/{dir}/stack.yaml"),
            format!(
                "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: {name}\nnamespace: {namespace}\ncontext: {}\nrelease: todo-chatbot\nvalues:\n  frontend:\n    service: {{type: ClusterIP, port: 80}}\n",
                current_context()
            ),
        );
        repo.write(
            &format!("desired/{dir}/frontend.yaml"),
            format!(
                "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: frontend\nimage:\n  ref: {image}\nreplicas: 2\nsecretEnv:\n  - {{name: JWT_SECRET, secret: ux-secrets, key: jwt-secret}}\n  - {{name: API_KEY, secret: ux-secrets, key: api-key}}\n"
            ),
        );
    }
    repo.commit("two stacks with one name");
    repo
}

#[tokio::test]
async fn stacks_sharing_a_name_are_selected_alike_and_labelled_by_directory_and_namespace() {
    let ns = TestNamespace::new("ux-sel").await;
    let name = ns.name().to_string();
    crate::support::create_secret(&ns, "ux-secrets", &["jwt-secret", "api-key"]).await;
    let repo = two_stack_repo(&name, ns.name(), "todo-frontend:test");
    let dir = Some(repo.path());

    let (code, out, err) = converge_in(dir, &["apply", "--stack", "dev", "--builder", "none"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("stack {name} (desired/dev → namespace {name})")),
        "apply names the stack by directory and namespace: {out}"
    );

    // status: by directory, by directory path, by name + namespace: the same stack.
    for sel in [
        vec!["--stack", "dev"],
        vec!["--stack", "desired/dev"],
        vec!["--stack", &name, "-n", &name],
    ] {
        let mut args = vec!["status", "-o", "json"];
        args.extend(sel.iter().copied());
        let (code, out, err) = converge_in(dir, &args, &[]);
        assert_eq!(code, 0, "status {sel:?}: {out}{err}");
        let v = json_of(&out);
        assert_eq!(v.as_array().unwrap().len(), 1, "{sel:?}: {v:#}");
        assert_eq!(v[0]["namespace"], name.as_str());
        assert_eq!(v[0]["dir"], "desired/dev");
    }
    // By name alone, without the repository: the one in the cluster.
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, out, err) = converge_in(Some(elsewhere.path()), &["status", "--stack", &name], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("stack {name} (desired/dev → namespace {name})")),
        "{out}"
    );
    // The staging stack was never applied: `--stack staging` says so and how to apply it.
    let (code, _, err) = converge_in(dir, &["status", "--stack", "staging"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`converge apply --stack staging`"), "{err}");

    // explain without --stack: the applied stack, labelled; the never-applied one is no failure.
    let (code, out, err) = converge_in(dir, &["explain"], &[]);
    assert_eq!(code, 0, "explain of a healthy stack exits 0: {out}{err}");
    assert!(
        out.contains(&format!("stack {name} (desired/dev → namespace {name})")),
        "{out}"
    );
    assert!(!out.contains("staging"), "{out}");
    assert!(
        err.contains(&format!(
            "stack {name} (desired/staging → namespace {name}-staging): not applied to this cluster"
        )),
        "{err}"
    );
    // The same selectors on build, diff, doctor, down (-o json for each that prints state).
    let (code, out, err) = converge_in(
        dir,
        &["build", "--stack", "dev", "--builder", "none", "-o", "json"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json_of(&out)["stacks"].as_array().unwrap().len(), 1);
    let (code, out, err) = converge_in(dir, &["diff", "--stack", "dev"], &[]);
    assert_eq!(code, 0, "a freshly applied stack has no diff: {out}{err}");
    let (code, out, err) = converge_in(
        dir,
        &[
            "doctor",
            "--stack",
            "dev",
            "--builder",
            "none",
            "--skip",
            "service",
            "-o",
            "yaml",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("check: secrets"), "{out}");
    let (code, out, err) = converge_in(dir, &["down", "--stack", "dev"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "stack {name} (desired/dev → namespace {name}): down"
        )),
        "{out}"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn advice_printed_by_apply_status_explain_and_doctor_runs_as_printed() {
    let ns = TestNamespace::new("ux-advice").await;
    let name = ns.name().to_string();
    // A Secret without either key the component needs, and an image nobody can pull.
    crate::support::create_secret(&ns, "ux-secrets", &["unrelated"]).await;
    let repo = two_stack_repo(&name, ns.name(), "registry.invalid/none/frontend:1");
    let dir = Some(repo.path());
    let mut printed = String::new();
    let (code, out, err) = converge_in(
        dir,
        &[
            "apply",
            "--stack",
            "dev",
            "--builder",
            "none",
            "--timeout",
            "20s",
        ],
        &[],
    );
    assert_eq!(code, 1, "{out}{err}");
    // One command adds both missing keys.
    let patches: Vec<String> = advice(&out, "kubectl")
        .into_iter()
        .filter(|c| c.starts_with("kubectl patch secret ux-secrets"))
        .collect();
    assert!(!patches.is_empty(), "{out}");
    assert!(
        patches[0].contains("jwt-secret") && patches[0].contains("api-key"),
        "{}",
        patches[0]
    );
    printed.push_str(&out);
    printed.push_str(&err);
    for args in [
        vec!["status", "--stack", "dev"],
        vec!["explain", "--stack", "dev"],
        vec!["doctor", "--stack", "dev", "--builder", "none"],
    ] {
        let (_, out, err) = converge_in(dir, &args, &[]);
        printed.push_str(&out);
        printed.push_str(&err);
    }
    let kubectl_cmds = advice(&printed, "kubectl");
    let converge_cmds = advice(&printed, "converge");
    assert!(!converge_cmds.is_empty(), "{printed}");
    for cmd in &converge_cmds {
        parses(cmd).unwrap_or_else(|e| panic!("`{cmd}` is printed as advice but fails:\n{e}"));
    }
    // Secret commands run against the cluster as printed (a server-side dry run).
    let mut ran = 0;
    for cmd in kubectl_cmds
        .iter()
        .filter(|c| c.contains(" secret "))
        .collect::<std::collections::BTreeSet<_>>()
    {
        let mut words = shell_words(&cmd.replace("<value>", "v"));
        words.remove(0);
        words.push("--dry-run=server".into());
        let out = crate::support::kubectl().args(&words).output().unwrap();
        assert!(
            out.status.success(),
            "`{cmd}` fails: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 1, "{printed}");

    // With the keys added by the printed command itself, the next apply gets past the Secret.
    let mut words = shell_words(&patches[0].replace("<value>", "v"));
    words.remove(0);
    crate::support::run_ok(crate::support::kubectl().args(&words));
    let (_, out, _) = converge_in(
        dir,
        &[
            "apply",
            "--stack",
            "dev",
            "--builder",
            "none",
            "--timeout",
            "5s",
        ],
        &[],
    );
    assert!(!out.contains("kubectl patch secret"), "{out}");
    ns.cleanup().await;
}

#[tokio::test]
async fn status_shows_live_ready_counts_ages_and_whether_a_daemon_holds_the_stack() {
    let ns = TestNamespace::new("ux-status").await;
    let name = ns.name().to_string();
    crate::support::create_secret(&ns, "ux-secrets", &["jwt-secret", "api-key"]).await;
    let repo = two_stack_repo(&name, ns.name(), "todo-frontend:test");
    let dir = Some(repo.path());
    let (code, out, err) = converge_in(dir, &["apply", "--stack", "dev", "--builder", "none"], &[]);
    assert_eq!(code, 0, "{out}{err}");

    let (code, out, err) = converge_in(dir, &["status", "--stack", "dev"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("frontend"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("2/2") && row.contains("Healthy"), "{row}");
    assert!(out.contains(" ago"), "relative ages: {out}");
    assert!(out.contains("daemon: none"), "{out}");

    // A daemon's Lease, renewed now: status names its holder.
    let leases: Api<Lease> = ns.api();
    let now = k8s_openapi::jiff::Timestamp::now();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": format!("converge-{name}"), "annotations": {"converge.dev/checkout": "/src/checkout"}},
        "spec": {"holderIdentity": "box/4242", "leaseDurationSeconds": 60, "renewTime": now.to_string(), "acquireTime": now.to_string()},
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let (_, out, _) = converge_in(dir, &["status", "--stack", "dev"], &[]);
    assert!(out.contains("daemon: held by box/4242"), "{out}");
    let (_, out, _) = converge_in(dir, &["status", "--stack", "dev", "-o", "json"], &[]);
    let v = json_of(&out);
    assert_eq!(v[0]["daemon"]["held"], true, "{v:#}");
    assert_eq!(v[0]["live"][0]["ready"], 2, "{v:#}");

    // Scaled down by hand: READY shows the cluster now, not the record.
    crate::support::run_ok(crate::support::kubectl().args([
        "scale",
        "deployment",
        "-n",
        &name,
        "-l",
        "app.kubernetes.io/component=frontend",
        "--replicas=0",
    ]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, out, _) = converge_in(dir, &["status", "--stack", "dev"], &[]);
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("frontend"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("0/0"), "{row}");

    // down: the daemon still holds the Lease and would re-apply what down deletes, so down
    // refuses, names the daemon and deletes nothing.
    let (code, out, err) = converge_in(dir, &["down", "--stack", "dev"], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("NOT down: a converge daemon (box/4242)"),
        "{out}"
    );
    assert!(leases
        .get_opt(&format!("converge-{name}"))
        .await
        .unwrap()
        .is_some());
    ns.cleanup().await;
}

#[tokio::test]
async fn down_refuses_while_a_daemon_holds_the_stack_and_deletes_the_lease_a_stopped_one_left() {
    let ns = TestNamespace::new("ux-lease").await;
    let name = ns.name().to_string();
    crate::support::create_secret(&ns, "ux-secrets", &["jwt-secret", "api-key"]).await;
    let repo = two_stack_repo(&name, ns.name(), "todo-frontend:test");
    let dir = Some(repo.path());
    let (code, out, err) = converge_in(dir, &["apply", "--stack", "dev", "--builder", "none"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let leases: Api<Lease> = ns.api();
    // A daemon renewing its Lease would re-apply whatever `down` deletes: refused up front,
    // nothing deleted.
    let renewed = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let live: Lease = serde_json::from_value(json!({
        "metadata": {"name": format!("converge-{name}")},
        "spec": {"holderIdentity": "box/1", "leaseDurationSeconds": 60, "renewTime": renewed},
    }))
    .unwrap();
    leases.create(&PostParams::default(), &live).await.unwrap();
    let (code, out, err) = converge_in(dir, &["down", "--stack", "dev"], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("NOT down: a converge daemon (box/1) manages it")
            && out.contains("nothing was deleted"),
        "{out}"
    );
    let inventories: Api<k8s_openapi::api::core::v1::ConfigMap> = ns.api();
    assert!(inventories
        .get_opt(&format!("converge-{name}-inventory"))
        .await
        .unwrap()
        .is_some());
    // The daemon stopped long ago: its Lease goes with the stack.
    leases
        .delete(&format!("converge-{name}"), &Default::default())
        .await
        .unwrap();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": format!("converge-{name}")},
        "spec": {"holderIdentity": "box/1", "leaseDurationSeconds": 15, "renewTime": "2020-01-01T00:00:00.000000Z"},
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let (_, out, _) = converge_in(dir, &["status", "--stack", "dev"], &[]);
    assert!(
        out.contains("daemon: none running (Lease last renewed by box/1"),
        "{out}"
    );
    let (code, out, err) = converge_in(dir, &["down", "--stack", "dev"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("deleted Lease/converge-"), "{out}");
    assert!(leases
        .get_opt(&format!("converge-{name}"))
        .await
        .unwrap()
        .is_none());
    ns.cleanup().await;
}

#[tokio::test]
async fn a_full_resync_of_an_unchanged_stack_applies_and_writes_nothing() {
    let ns = TestNamespace::new("ux-full").await;
    let name = ns.name().to_string();
    crate::support::create_secret(&ns, "ux-secrets", &["jwt-secret", "api-key"]).await;
    let repo = two_stack_repo(&name, ns.name(), "todo-frontend:test");
    let dir = Some(repo.path());
    let (code, out, err) = converge_in(dir, &["apply", "--stack", "dev", "--builder", "none"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = converge_in(
        dir,
        &[
            "apply",
            "--stack",
            "dev",
            "--builder",
            "none",
            "--full",
            "-o",
            "json",
        ],
        &[("CONVERGE_LOG", "info")],
    );
    assert_eq!(code, 0, "{out}{err}");
    let r = &json_of(&out)[0];
    assert_eq!(r["applied"], json!([]), "{r:#}");
    assert_eq!(r["requests"]["writes"], 0, "{r:#}");
    assert!(r["requests"]["dryRuns"].as_u64().unwrap() > 0, "{r:#}");
    assert!(!err.contains(" applied"), "no `applied` line: {err}");

    // A hand edit is found by the full resync and undone: one write.
    crate::support::run_ok(crate::support::kubectl().args([
        "annotate",
        "service",
        "-n",
        &name,
        "-l",
        "app.kubernetes.io/component=frontend",
        "--overwrite",
        "converge.dev/commit=tampered",
    ]));
    let (code, out, err) = converge_in(
        dir,
        &[
            "apply",
            "--stack",
            "dev",
            "--builder",
            "none",
            "--full",
            "-o",
            "json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let r = &json_of(&out)[0];
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r:#}");
    ns.cleanup().await;
}

#[tokio::test]
async fn exit_codes_tell_changes_from_errors_and_warnings_from_failures() {
    let ns = TestNamespace::new("ux-exit").await;
    let name = ns.name().to_string();
    crate::support::create_secret(&ns, "ux-secrets", &["jwt-secret", "api-key"]).await;
    let repo = two_stack_repo(&name, ns.name(), "todo-frontend:test");
    let dir = Some(repo.path());

    // diff: 1 with changes, 0 without, 2 on an invalid commit.
    let (code, out, err) = converge_in(dir, &["diff", "--stack", "dev"], &[]);
    assert_eq!(code, 1, "nothing applied yet: changes pending: {out}{err}");
    let (code, out, err) = converge_in(dir, &["apply", "--stack", "dev", "--builder", "none"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = converge_in(dir, &["diff", "--stack", "dev"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("uncommitted"), "{err}");
    // An uncommitted edit under desired/: diff says it is not deployed.
    repo.write(
        "desired/dev/frontend.yaml",
        std::fs::read_to_string(repo.file("desired/dev/frontend.yaml"))
            .unwrap()
            .replace("replicas: 2", "replicas: 3"),
    );
    let (code, _, err) = converge_in(dir, &["diff", "--stack", "dev"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "uncommitted changes under desired/ (desired/dev/frontend.yaml) are not deployed"
        ),
        "{err}"
    );
    repo.commit("three");
    let (code, _, _) = converge_in(dir, &["diff", "--stack", "dev"], &[]);
    assert_eq!(code, 1);
    repo.write(
        "desired/dev/frontend.yaml",
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: frontend\nreplicaz: 2\n",
    );
    repo.commit("typo");
    let (code, out, err) = converge_in(dir, &["diff", "--stack", "dev"], &[]);
    assert_eq!(
        code, 2,
        "an invalid commit is an error, not a change: {out}{err}"
    );
    let (code, _, _) = converge_in(dir, &["diff", "--stack", "nosuch"], &[]);
    assert_eq!(code, 2);
    let (code, _, _) = converge_in(dir, &["validate"], &[]);
    assert_eq!(code, 1, "validate: 1 for an invalid commit");
    repo.git(&["revert", "--no-edit", "HEAD"]);

    // doctor: warnings alone exit 0 (no service installed is a warning); a failure exits 1.
    let (code, out, err) =
        converge_in(dir, &["doctor", "--stack", "dev", "--builder", "none"], &[]);
    assert!(out.contains("WARN service"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 warning;"), "{out}");
    // --skip skips the work: no helm on PATH is not even looked for.
    let (code, out, _) = converge_in(
        dir,
        &[
            "doctor",
            "--stack",
            "dev",
            "--builder",
            "none",
            "--skip",
            "helm",
            "--skip",
            "nodeport",
            "--skip",
            "quota",
            "--skip",
            "capacity",
            "-o",
            "json",
        ],
        &[("CONVERGE_HELM", "/nonexistent/helm")],
    );
    assert_eq!(code, 0, "{out}");
    let checks = json_of(&out);
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["check"] != "helm"),
        "{checks:#}"
    );
    let (code, out, _) = converge_in(
        dir,
        &["doctor", "--stack", "dev", "--builder", "none"],
        &[("CONVERGE_HELM", "/nonexistent/helm")],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL helm"), "{out}");
    // helm missing: what failed on one line, the fix on the next.
    let (code, out, err) = converge_in(
        dir,
        &["diff", "--stack", "dev"],
        &[("CONVERGE_HELM", "/nonexistent/helm")],
    );
    assert_eq!(code, 2, "{out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines[0], "error: helm was not found (tried `/nonexistent/helm`)",
        "{err}"
    );
    assert!(lines[1].starts_with("hint: install Helm v3.8"), "{err}");
    // doctor says which builder it checked and why.
    let (_, out, _) = converge_in(dir, &["doctor", "--stack", "dev", "--builder", "none"], &[]);
    assert!(
        out.contains("[builder none: chosen with --builder]"),
        "{out}"
    );
    ns.cleanup().await;
}

#[test]
fn errors_say_what_failed_and_what_to_do_next() {
    let empty = tempfile::tempdir().unwrap();
    // Not a git repository: the path, and --repo.
    let (code, _, err) = converge_bare(empty.path(), &["validate"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("is not a git repository"), "{err}");
    assert!(err.contains("hint:") && err.contains("--repo"), "{err}");
    assert!(
        !err.contains("class=Repository"),
        "libgit2's noise only with -v: {err}"
    );
    let (_, _, err) = converge_bare(empty.path(), &["-v", "validate"], &[]);
    assert!(err.contains("caused by"), "{err}");

    // An empty kubeconfig: the file, and --kubeconfig.
    let kc = empty.path().join("empty-kubeconfig");
    std::fs::write(&kc, "").unwrap();
    let (code, _, err) = converge_bare(
        empty.path(),
        &["status", "--kubeconfig", kc.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(kc.to_str().unwrap()), "names the file: {err}");
    assert!(err.contains("--kubeconfig"), "{err}");
    // Through $KUBECONFIG too.
    let (code, _, err) = converge_bare(
        empty.path(),
        &["status"],
        &[("KUBECONFIG", kc.to_str().unwrap())],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(kc.to_str().unwrap()), "names the file: {err}");

    // An unreachable cluster: the server address, the fix, no chain without -v.
    let dead = empty.path().join("dead-kubeconfig");
    std::fs::write(
        &dead,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: dead\n  cluster: {server: 'https://127.0.0.1:9'}\ncontexts:\n- name: minikube\n  context: {cluster: dead, user: u}\ncurrent-context: minikube\nusers:\n- name: u\n  user: {token: t}\n",
    )
    .unwrap();
    let (code, _, err) = converge_bare(
        empty.path(),
        &["status", "--kubeconfig", dead.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("https://127.0.0.1:9"),
        "names the server: {err}"
    );
    assert!(err.contains("`minikube start`"), "{err}");
    assert!(!err.contains("caused by"), "{err}");
    assert!(!err.contains("kube_client"), "no client log lines: {err}");
    assert!(err.lines().count() <= 3, "{err}");

    // No Docker engine: where converge looked, and what to start.
    let repo = GitRepo::new();
    crate::support::git::write_minimal_stack(&repo);
    repo.commit("a stack with one built image");
    let (code, out, err) = converge_bare(
        repo.path(),
        &["build", "--builder", "docker"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    assert_eq!(code, 2, "{out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("unix:///nonexistent/docker.sock"),
        "{err}"
    );
    assert!(
        lines.get(1).is_some_and(|l| l.starts_with("hint: ")),
        "the fix on its own line: {err}"
    );
}

#[test]
fn a_base_image_that_cannot_be_pulled_is_reported_as_the_failing_step() {
    let repo = GitRepo::new();
    repo.write(
        "desired/stack.yaml",
        "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: pull\nnamespace: pull\ncontext: nowhere\nchart: charts/c\nrelease: pull\n",
    );
    repo.write(
        "charts/c/Chart.yaml",
        "apiVersion: v2\nname: c\nversion: 0.1.0\n",
    );
    repo.write(
        "desired/app.yaml",
        "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: app\nimage:\n  build:\n    context: app\n    repository: ux-pull-test/app\n",
    );
    repo.write(
        "app/Dockerfile",
        "FROM registry.invalid/converge/no-such-base:1\nCOPY . /app\n",
    );
    repo.write("app/main.txt", "hello\n");
    repo.commit("an app whose base image cannot be pulled");
    let (code, out, err) = converge_bare(
        repo.path(),
        &["build", "--builder", "docker"],
        &[
            ("DOCKER_HOST", crate::support::docker_host()),
            ("DOCKER_BUILDKIT", "0"),
        ],
    );
    assert_eq!(code, 1, "a failed build: {out}{err}");
    assert!(
        !out.contains("cannot reach the image engine") && !err.contains("cannot reach"),
        "{out}{err}"
    );
    assert!(out.contains("app  ux-pull-test/app:"), "{out}");
    assert!(
        out.contains("failed: Step 1/2 : FROM registry.invalid"),
        "{out}"
    );
    assert!(
        out.contains("builder docker (chosen with --builder)"),
        "{out}"
    );
}

#[tokio::test]
async fn a_failing_rollout_states_its_fail_fast_window_and_is_failed_not_progressing() {
    let ns = TestNamespace::new("ux-fail").await;
    let name = ns.name().to_string();
    crate::support::create_secret(&ns, "ux-secrets", &["jwt-secret", "api-key"]).await;
    let repo = two_stack_repo(&name, ns.name(), "todo-frontend:test");
    let file = repo.file("desired/dev/frontend.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    repo.write(
        "desired/dev/frontend.yaml",
        format!(
            "{text}values:\n  podLabels: {{{}: crashloop}}\n",
            crate::support::FAIL_LABEL
        ),
    );
    repo.commit("a frontend that crashes");
    let dir = Some(repo.path());
    let (code, out, err) = converge_in(
        dir,
        &[
            "apply",
            "--stack",
            "dev",
            "--builder",
            "none",
            "--timeout",
            "10s",
        ],
        &[],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("CrashLoopBackOff; fails in") && err.contains("s fail-fast window)"),
        "the health wait says what it waits for and when it gives up: {err}"
    );
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("frontend"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("Failed"),
        "not Progressing under HealthCheckFailed: {out}"
    );
    let (_, out, _) = converge_in(dir, &["status", "--stack", "dev", "-o", "json"], &[]);
    let v = json_of(&out);
    assert_eq!(v[0]["reason"], "HealthCheckFailed", "{v:#}");
    assert_eq!(v[0]["components"][0]["health"], "Failed", "{v:#}");
    assert_eq!(v[0]["live"][0]["health"], "Progressing", "{v:#}");
    assert!(
        v[0]["live"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("CrashLoopBackOff"),
        "{v:#}"
    );
    ns.cleanup().await;
}
