//! `converge mcp` driven by a real MCP client: the official Python SDK (tests/mcp/client.py,
//! installed by tests/mcp/install) connects over stdio as an assistant would and calls every
//! tool against a stack `converge apply` deployed on the bed's kwok node (backend crash-looping,
//! a Secret whose value must never come back). A second test speaks raw JSON-RPC to check the
//! protocol errors the SDK never sends.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use serde_json::Value;

use crate::support::git::{copy_project_dir, GitRepo};
use crate::support::{current_context, testbed, TestNamespace, FAIL_LABEL};

/// The todo chart as stack `ns` in namespace `ns`: postgres, a crash-looping backend (kwok's
/// `crashloop` stage) and a frontend, each with one replica and Secret references.
fn stack_repo(ns: &str) -> GitRepo {
    let repo = GitRepo::new();
    copy_project_dir(&repo, "charts/todo-chatbot", "charts/todo-chatbot");
    repo.write(
        "desired/stack.yaml",
        format!(
            "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: {ns}\nnamespace: {ns}\nrelease: todo-chatbot\nvalues:\n  frontend:\n    service: {{type: ClusterIP, port: 80}}\n"
        ),
    );
    let component = |name: &str, image: &str, secret: &str, deps: &str, values: &str| {
        format!(
            "apiVersion: converge.dev/v1alpha1\nkind: Component\nname: {name}\nimage:\n  ref: {image}\nreplicas: 1\nsecretEnv:\n  - {secret}\ndependsOn: {deps}\n{values}"
        )
    };
    repo.write(
        "desired/postgres.yaml",
        component(
            "postgres",
            "postgres:16-alpine",
            "{name: POSTGRES_PASSWORD, secret: todo-secrets, key: postgres-password}",
            "[]",
            "",
        ),
    );
    repo.write(
        "desired/backend.yaml",
        component(
            "backend",
            "todo-backend:test",
            "{name: DATABASE_URL, secret: todo-secrets, key: database-url}",
            "[postgres]",
            &format!("values:\n  podLabels: {{{FAIL_LABEL}: crashloop}}\n"),
        ),
    );
    repo.write(
        "desired/frontend.yaml",
        component(
            "frontend",
            "todo-frontend:test",
            "{name: JWT_SECRET, secret: todo-secrets, key: jwt-secret}",
            "[]",
            "",
        ),
    );
    repo.commit("todo stack");
    repo
}

/// The Python with the MCP SDK: `$CONVERGE_MCP_PYTHON`, else tests/mcp/install's venv. Fails
/// the test, naming the fix, when the SDK is not installed.
fn sdk_python() -> PathBuf {
    let python = std::env::var_os("CONVERGE_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .expect("HOME or XDG_CACHE_HOME is set");
            cache.join("converge/mcp-sdk-venv/bin/python")
        });
    let works = Command::new(&python)
        .args(["-c", "import mcp"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "the official MCP Python SDK is missing ({} cannot `import mcp`): run tests/mcp/install (CI runs it from .ci/run)",
        python.display()
    );
    python
}

fn converge_env(cmd: &mut Command) -> &mut Command {
    cmd.env("KUBECONFIG", &testbed().kubeconfig)
        .env("CONVERGE_HELM", &testbed().helm)
        .env("NO_COLOR", "1")
        .env_remove("CONVERGE_CONTEXT")
}

fn git_in(repo: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo)
        .output()
        .expect("run git");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Whether the object database holds a blob with exactly `content`.
fn blob_exists(repo: &GitRepo, content: &str) -> bool {
    let mut hash = Command::new("git")
        .args(["hash-object", "--stdin"])
        .current_dir(repo.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("git hash-object");
    hash.stdin
        .take()
        .unwrap()
        .write_all(content.as_bytes())
        .unwrap();
    let oid = String::from_utf8(hash.wait_with_output().unwrap().stdout).unwrap();
    git_in(repo.path(), &["cat-file", "-e", oid.trim()]).0
}

fn short(text: &str) -> String {
    let one: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 110 {
        format!("{}…", one.chars().take(110).collect::<String>())
    } else {
        one
    }
}

#[tokio::test]
async fn an_mcp_client_reads_status_explains_and_proposes_through_git_only() {
    let python = sdk_python();
    let ns = TestNamespace::new("mcp").await;
    let secret_value = format!("sekrit-{}-do-not-leak", ns.name());
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("todo-secrets".into()),
            ..Default::default()
        },
        string_data: Some(
            ["postgres-password", "database-url", "jwt-secret"]
                .iter()
                .map(|k| (k.to_string(), secret_value.clone()))
                .collect(),
        ),
        ..Default::default()
    };
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    let repo = stack_repo(ns.name());
    let repo_path = repo.path().to_str().unwrap().to_string();
    let context = current_context();

    let apply = converge_env(&mut Command::new(env!("CARGO_BIN_EXE_converge")))
        .args([
            "apply",
            "--repo",
            &repo_path,
            "--context",
            &context,
            "--timeout",
            "90s",
            "--fail-fast",
            "3s",
        ])
        .output()
        .expect("run converge apply");
    assert_eq!(
        apply.status.code(),
        Some(1),
        "apply records the crash-looping backend as a failure: {}",
        String::from_utf8_lossy(&apply.stderr)
    );

    let main_before = repo.git(&["rev-parse", "refs/heads/main"]);
    let started = Instant::now();
    let client = converge_env(&mut Command::new(&python))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py"))
        .args([
            env!("CARGO_BIN_EXE_converge"),
            repo_path.as_str(),
            context.as_str(),
            ns.name(),
        ])
        .output()
        .expect("run the MCP client");
    let session = started.elapsed();
    let stdout = String::from_utf8_lossy(&client.stdout);
    assert!(
        client.status.success(),
        "the MCP client failed: {}\n{stdout}",
        String::from_utf8_lossy(&client.stderr)
    );
    let t: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the client's transcript is not JSON ({e}): {stdout}"));

    eprintln!(
        "MCP session (official Python SDK mcp {} over stdio, {:.1} s): initialize → protocol {}",
        t["initialize"]["sdk"].as_str().unwrap_or("?"),
        session.as_secs_f64(),
        t["initialize"]["protocol_version"]
    );
    eprintln!(
        "  tools/list → {}",
        t["tools"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    for step in [
        "status",
        "explain",
        "logs",
        "history",
        "diff",
        "validate",
        "validate_overlay",
        "propose_replicas",
        "propose_invalid",
        "propose_outside",
        "propose_git",
        "propose_oversized",
        "sync",
        "unknown_tool",
        "bad_arguments",
    ] {
        let r = &t[step];
        let verdict = match (&r["rpc_error"], &r["is_error"]) {
            (Value::Number(code), _) => format!("JSON-RPC error {code}"),
            (_, Value::Bool(true)) => "isError".into(),
            _ => "ok".into(),
        };
        let text = r["text"].as_str().or(r["message"].as_str()).unwrap_or("");
        eprintln!("  {step:<18} {verdict:<20} {}", short(text));
    }

    // Secret values never pass through, whatever the tool.
    assert!(
        !stdout.contains(&secret_value),
        "a Secret value came out of a tool"
    );

    assert_eq!(t["initialize"]["server"], "converge");
    let tools = t["tools"].as_object().unwrap();
    for name in [
        "status", "explain", "diff", "validate", "history", "logs", "sync", "propose",
    ] {
        assert!(tools.contains_key(name), "tool {name} is listed: {tools:?}");
    }
    assert_eq!(tools["status"]["read_only"], true);
    assert_eq!(tools["propose"]["read_only"], false);
    assert_eq!(
        tools["propose"]["schema"]["required"],
        serde_json::json!(["files", "message"])
    );

    let status = &t["status"];
    assert_eq!(status["is_error"], false, "{status}");
    let stacks = status["structured"]["stacks"].as_array().unwrap();
    assert_eq!(stacks.len(), 1, "{status}");
    assert_eq!(stacks[0]["stack"], ns.name());
    assert_eq!(status["structured"]["healthy"], false);

    let explain = &t["explain"];
    assert_eq!(explain["is_error"], false, "{explain}");
    let backend = &explain["structured"]["components"][0];
    assert_eq!(backend["component"], "backend");
    assert_eq!(
        backend["diagnoses"][0]["rule"], "CrashLoopBackOff",
        "{backend}"
    );

    assert_eq!(t["logs"]["is_error"], false, "{}", t["logs"]);
    assert!(!t["logs"]["structured"]["containers"]
        .as_array()
        .unwrap()
        .is_empty());
    let history = &t["history"]["structured"]["stacks"][0]["history"];
    assert_eq!(history[0]["commit"], main_before.as_str(), "{history}");
    assert!(
        history[0]["note"].as_str().is_some_and(|n| !n.is_empty()),
        "the apply's git note comes with the entry: {history}"
    );
    assert_eq!(t["diff"]["is_error"], false, "{}", t["diff"]);
    assert_eq!(t["validate"]["structured"]["valid"], true);
    let overlay = &t["validate_overlay"]["structured"];
    assert_eq!(overlay["valid"], false, "{overlay}");
    assert!(
        overlay["locations"][0]
            .as_str()
            .is_some_and(|l| l.starts_with("desired/backend.yaml:6:")),
        "{overlay}"
    );

    // A replicas change: validated, committed on a new branch off main; main, HEAD, the index
    // and the working tree are untouched.
    let proposed = &t["propose_replicas"];
    assert_eq!(proposed["is_error"], false, "{proposed}");
    let branch = proposed["structured"]["branch"].as_str().unwrap();
    let commit = proposed["structured"]["commit"].as_str().unwrap();
    assert!(branch.starts_with("converge/propose/"), "{branch}");
    assert!(proposed["structured"]["diff"]
        .as_str()
        .unwrap()
        .contains("-replicas: 1\n+replicas: 3"));
    assert_eq!(repo.git(&["rev-parse", "refs/heads/main"]), main_before);
    assert_eq!(repo.git(&["symbolic-ref", "HEAD"]), "refs/heads/main");
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
    assert_eq!(repo.git(&["rev-parse", branch]), commit);
    assert_eq!(repo.git(&["rev-parse", &format!("{branch}^")]), main_before);
    assert!(repo
        .git(&["show", &format!("{branch}:desired/backend.yaml")])
        .contains("replicas: 3"));
    assert!(std::fs::read_to_string(repo.file("desired/backend.yaml"))
        .unwrap()
        .contains("replicas: 1"));
    assert_eq!(
        repo.git(&["branch", "--list", "converge/*"])
            .lines()
            .count(),
        1,
        "only the valid proposal made a branch"
    );

    // Refusals: the location of the error, a protocol-correct answer, and nothing written.
    let invalid = &t["propose_invalid"];
    assert_eq!(invalid["is_error"], true, "{invalid}");
    let text = invalid["text"].as_str().unwrap();
    assert!(text.contains("desired/backend.yaml:6:"), "{text}");
    let current = std::fs::read_to_string(repo.file("desired/backend.yaml")).unwrap();
    assert!(!blob_exists(
        &repo,
        &current.replace("replicas: 1", "replicas: many")
    ));
    assert!(!blob_exists(
        &repo,
        &current.replace("replicas: 1", "replicas: lots")
    ));
    for step in ["propose_outside", "propose_git", "propose_oversized"] {
        assert_eq!(t[step]["is_error"], true, "{step}: {}", t[step]);
        assert!(
            t[step]["text"].as_str().unwrap().starts_with("refused:"),
            "{step}: {}",
            t[step]
        );
    }
    assert!(!blob_exists(&repo, "[package]\n"));
    assert!(!blob_exists(&repo, "#!/bin/sh\n"));
    assert_eq!(t["sync"]["is_error"], true, "no daemon runs: {}", t["sync"]);
    assert_eq!(t["unknown_tool"]["rpc_error"], -32602);
    assert_eq!(t["bad_arguments"]["is_error"], true);
    assert_eq!(repo.git(&["rev-parse", "refs/heads/main"]), main_before);
    ns.cleanup().await;
}

/// One JSON-RPC exchange with a raw `converge mcp` process.
struct Raw {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Raw {
    fn start(repo: &GitRepo) -> Raw {
        let mut child = converge_env(&mut Command::new(env!("CARGO_BIN_EXE_converge")))
            .args(["mcp", "--repo", repo.path().to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start converge mcp");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Raw {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, line: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn answer(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }
}

#[test]
fn malformed_unknown_and_oversized_messages_get_protocol_errors_and_write_nothing() {
    let repo = GitRepo::new();
    crate::support::git::write_minimal_stack(&repo);
    repo.commit("stack");
    let refs_before = repo.git(&["for-each-ref"]);
    let mut raw = Raw::start(&repo);

    raw.send(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#);
    let init = raw.answer();
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");
    raw.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);

    raw.send(br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"status""#);
    let parse = raw.answer();
    assert_eq!(
        (parse["id"].clone(), parse["error"]["code"].clone()),
        (Value::Null, Value::from(-32700)),
        "{parse}"
    );
    raw.send(br#"{"jsonrpc":"2.0","id":3,"method":"resources/list"}"#);
    assert_eq!(raw.answer()["error"]["code"], -32601);
    raw.send(br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"shell","arguments":{"cmd":"rm -rf /"}}}"#);
    let unknown = raw.answer();
    assert_eq!(
        (unknown["id"].clone(), unknown["error"]["code"].clone()),
        (Value::from(4), Value::from(-32602)),
        "{unknown}"
    );
    let mut huge = br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"propose","arguments":{"message":"x","files":{"desired/a.yaml":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'a', 5 * 1024 * 1024));
    huge.extend_from_slice(br#""}}}}"#);
    raw.send(&huge);
    let oversized = raw.answer();
    assert_eq!(
        (oversized["id"].clone(), oversized["error"]["code"].clone()),
        (Value::Null, Value::from(-32600)),
        "{oversized}"
    );
    raw.send(br#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"propose","arguments":{"message":"escape","files":{"/etc/passwd":"root::0:0::/:/bin/sh\n"}}}}"#);
    let outside = raw.answer();
    assert_eq!(outside["id"], 6);
    assert_eq!(outside["result"]["isError"], true, "{outside}");
    // A notification, even an unknown one, gets no answer: the next line answers the ping.
    raw.send(br#"{"jsonrpc":"2.0","method":"notifications/whatever"}"#);
    raw.send(br#"{"jsonrpc":"2.0","id":"last","method":"ping"}"#);
    assert_eq!(raw.answer()["id"], "last");

    drop(raw.stdin.take());
    let status = raw.child.wait().unwrap();
    assert!(
        status.success(),
        "EOF on stdin ends the server cleanly: {status}"
    );
    assert_eq!(
        repo.git(&["for-each-ref"]),
        refs_before,
        "no ref was written"
    );
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
}

/// A running daemon answers the same MCP server on `POST /mcp` of its loopback address (the
/// Streamable HTTP transport), driven by the official SDK from a URL; the transport's guards
/// hold: a web page of another site (`Origin`) is refused, `GET` is 405, a notification 202, an
/// oversized body 413 — and none of them writes anything.
#[tokio::test]
async fn a_running_daemon_answers_mcp_on_its_loopback_address_and_refuses_other_sites() {
    let python = sdk_python();
    let ns = TestNamespace::new("mcp-http").await;
    let repo = stack_repo(ns.name());
    let repo_path = repo.path().to_str().unwrap().to_string();
    let context = current_context();
    let mut daemon = converge_env(&mut Command::new(env!("CARGO_BIN_EXE_converge")))
        .args(["run", "--repo", &repo_path, "--context", &context])
        .args(["--mcp", "--listen", "127.0.0.1:0", "--fail-fast", "3s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn converge run");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut daemon);
    // The daemon names its address in the lock file once it listens.
    let lock = repo.path().join(".git/converge.lock");
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let addr = loop {
        let http = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|l| serde_json::from_str::<Value>(&l).ok())
            .and_then(|v| v["http"].as_str().map(str::to_string));
        if let Some(a) = http.filter(|a| !a.is_empty()) {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon named no HTTP address in {} within 30 s",
            lock.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let main_before = repo.git(&["rev-parse", "refs/heads/main"]);
    let refs_before = repo.git(&["for-each-ref"]);

    // The transport's guards, raw.
    let request = |head: &str, body: &[u8]| -> String {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the daemon");
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let msg = format!(
            "{head}\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(msg.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut out);
        out
    };
    let propose = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"propose","arguments":{"files":{"desired/stack.yaml":"evil: true\n"},"message":"from a web page"}}}"#;
    let other_site = request("POST /mcp HTTP/1.1\r\nOrigin: http://evil.example", propose);
    assert!(
        other_site.starts_with("HTTP/1.1 403"),
        "a POST /mcp from another site's page was not refused:\n{other_site}"
    );
    let get = request("GET /mcp HTTP/1.1", b"");
    assert!(get.starts_with("HTTP/1.1 405"), "GET /mcp:\n{get}");
    let note = request(
        "POST /mcp HTTP/1.1",
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert!(note.starts_with("HTTP/1.1 202"), "a notification:\n{note}");
    let garbage = request("POST /mcp HTTP/1.1", b"{not json");
    assert!(
        garbage.starts_with("HTTP/1.1 400") && garbage.contains("-32700"),
        "a body that is not JSON:\n{garbage}"
    );
    // Declared, not sent: the server answers from Content-Length before reading a byte (a
    // body it never reads could reset the connection under its answer).
    let oversized = {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the daemon");
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        write!(
            s,
            "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            5 * 1024 * 1024
        )
        .unwrap();
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut out);
        out
    };
    assert!(
        oversized.starts_with("HTTP/1.1 413"),
        "a 5 MiB body:\n{}",
        &oversized[..oversized.len().min(300)]
    );
    assert_eq!(
        repo.git(&["for-each-ref"]),
        refs_before,
        "a refused request wrote a ref"
    );

    // The official SDK, from a URL.
    let url = format!("http://{addr}/mcp");
    let client = converge_env(&mut Command::new(&python))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/http_client.py"))
        .args([url.as_str(), repo_path.as_str()])
        .output()
        .expect("run the MCP HTTP client");
    let stdout = String::from_utf8_lossy(&client.stdout);
    assert!(
        client.status.success(),
        "the MCP client failed over HTTP: {}\n{stdout}",
        String::from_utf8_lossy(&client.stderr)
    );
    let t: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the client's transcript is not JSON ({e}): {stdout}"));
    eprintln!(
        "MCP over the daemon's {url} (official Python SDK mcp {}): protocol {}, tools {}, status: {}, propose: {}",
        t["initialize"]["sdk"].as_str().unwrap_or("?"),
        t["initialize"]["protocol_version"],
        t["tools"],
        short(t["status"]["text"].as_str().unwrap_or("")),
        short(t["propose_replicas"]["text"].as_str().unwrap_or(""))
    );
    assert_eq!(t["initialize"]["server"], "converge", "{t:#}");
    assert_eq!(t["tools"].as_array().map(Vec::len), Some(8), "{t:#}");
    assert_eq!(t["status"]["is_error"], false, "{t:#}");
    assert!(
        t["status"]["text"]
            .as_str()
            .unwrap_or("")
            .contains(ns.name()),
        "status names no stack of this test: {t:#}"
    );
    assert_eq!(t["propose_replicas"]["is_error"], false, "{t:#}");
    let branch = t["propose_replicas"]["structured"]["branch"]
        .as_str()
        .unwrap_or_else(|| panic!("propose named no branch: {t:#}"))
        .to_string();
    assert!(
        repo.git(&["show", &format!("{branch}:desired/backend.yaml")])
            .contains("replicas: 2"),
        "the proposal's branch {branch} does not hold the change"
    );
    assert_eq!(
        repo.git(&["rev-parse", "refs/heads/main"]),
        main_before,
        "a proposal over HTTP moved the tracked branch"
    );
    drop(_kill);
    ns.cleanup().await;
}
