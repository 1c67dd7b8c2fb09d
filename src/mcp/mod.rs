//! `converge mcp`: the Model Context Protocol server. An assistant gets converge's own verbs as
//! tools — read-only ones (status, explain, diff, validate, history, logs), `sync` (asks the
//! running daemon), and `propose`, which commits a validated desired-state edit on a new branch
//! and never on the tracked one.
//!
//! [`Server::handle`] maps one JSON-RPC message to at most one response and knows nothing of
//! the transport; [`serve_stdio`] frames it as newline-delimited JSON on stdin/stdout (stdout
//! carries protocol messages only, logs go to stderr). Like `reconcile` and `daemon`, this
//! module reaches across the others. Secret values never pass through it: every tool reuses the
//! redaction of the command it mirrors.

pub mod propose;
pub mod protocol;
pub mod tools;

use std::path::PathBuf;

use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use protocol::{Incoming, RpcError};

/// What the server works on: the checkout and the stack selectors its command line gave.
#[derive(Debug, Clone)]
pub struct Config {
    /// Any directory inside the git checkout.
    pub repo: PathBuf,
    /// The desired-state directory (`desired`).
    pub dir: String,
    /// The stack selected by `--stack`, when one was.
    pub stack: Option<String>,
    /// The namespace selected by `--namespace`, when one was.
    pub namespace: Option<String>,
    /// The kube context override.
    pub context: Option<String>,
    /// The kubeconfig file.
    pub kubeconfig: Option<PathBuf>,
    /// The tracked branch `propose` branches from (the stacks' `branch` when `None`).
    pub branch: Option<String>,
    /// The reconcile options the `diff` tool's dry run uses (`converge diff`'s flags).
    pub diff: crate::reconcile::Options,
}

/// The MCP server: its configuration and nothing else (every tool call reads afresh).
#[derive(Debug)]
pub struct Server {
    config: Config,
}

impl Server {
    /// A server working on `config`.
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    /// Handles one message; `None` when it needs no response (a notification, a response).
    pub async fn handle(&self, message: &[u8]) -> Option<Value> {
        match protocol::decode(message) {
            Err(response) => Some(response),
            Ok(Incoming::Notification { method }) => {
                debug!(%method, "notification");
                None
            }
            Ok(Incoming::Response) => None,
            Ok(Incoming::Request { id, method, params }) => {
                Some(match self.dispatch(&method, params).await {
                    Ok(result) => protocol::result_response(id, result),
                    Err(e) => protocol::error_response(id, &e),
                })
            }
        }
    }

    async fn dispatch(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "initialize" => {
                let requested = params.get("protocolVersion").and_then(Value::as_str);
                Ok(json!({
                    "protocolVersion": protocol::negotiate(requested),
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": {
                        "name": "converge",
                        "title": "converge GitOps reconciler",
                        "version": env!("CARGO_PKG_VERSION"),
                    },
                    "instructions": INSTRUCTIONS,
                }))
            }
            "ping" => Ok(json!({})),
            "tools/list" => Ok(json!({"tools": tools::list()})),
            "tools/call" => {
                let name = params.get("name").and_then(Value::as_str).ok_or_else(|| {
                    RpcError::new(protocol::INVALID_PARAMS, "tools/call needs a `name`")
                })?;
                let arguments = match params.get("arguments") {
                    None | Some(Value::Null) => json!({}),
                    Some(a @ Value::Object(_)) => a.clone(),
                    Some(_) => {
                        return Err(RpcError::new(
                            protocol::INVALID_PARAMS,
                            "`arguments` must be an object",
                        ))
                    }
                };
                let Some(tool) = tools::find(name) else {
                    return Err(RpcError::new(
                        protocol::INVALID_PARAMS,
                        format!(
                            "unknown tool `{name}` (tools: {})",
                            tools::names().join(", ")
                        ),
                    ));
                };
                Ok(tools::call(&self.config, tool, arguments)
                    .await
                    .into_result())
            }
            _ => Err(RpcError::new(
                protocol::METHOD_NOT_FOUND,
                format!("method not found: {method}"),
            )),
        }
    }
}

/// What the server tells the assistant about itself at `initialize`.
const INSTRUCTIONS: &str = "converge keeps a Kubernetes cluster converged on the desired state committed under desired/ of a git checkout. Read with status, explain, diff, validate, history and logs. Change nothing in the cluster directly: use propose, which validates an edit and commits it on a new branch converge/propose/<id> for a person to review and merge; sync asks the running daemon to reconcile now. Secret values are never shown.";

/// One framed line read from the client.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A message (its newline removed).
    Message(Vec<u8>),
    /// A line longer than the limit, skipped up to its newline; it held this many bytes.
    TooLong(usize),
    /// The client closed its end.
    Eof,
}

/// Reads one newline-terminated line of at most `max` bytes without ever holding more.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut skipped = 0usize;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (skipped, buf.is_empty()) {
                (0, true) => Line::Eof,
                (0, false) => Line::Message(buf),
                (n, _) => Line::TooLong(n),
            });
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], i + 1),
            None => (available, available.len()),
        };
        let ends = done > chunk.len();
        if skipped > 0 || buf.len() + chunk.len() > max {
            skipped += buf.len() + chunk.len();
            buf = Vec::new();
        } else {
            buf.extend_from_slice(chunk);
        }
        r.consume(done);
        if ends {
            return Ok(if skipped > 0 {
                Line::TooLong(skipped)
            } else {
                Line::Message(buf)
            });
        }
    }
}

/// Serves `server` on a reader and writer of newline-delimited JSON-RPC messages until the
/// reader ends or the writer is closed; one message at a time, in order.
pub async fn serve<R, W>(server: &Server, input: R, mut output: W) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut input = input;
    loop {
        let response = match read_line(&mut input, protocol::MAX_MESSAGE_BYTES).await? {
            Line::Eof => return Ok(()),
            Line::TooLong(n) => Some(protocol::too_large(n)),
            Line::Message(m) if m.iter().all(u8::is_ascii_whitespace) => None,
            Line::Message(m) => server.handle(&m).await,
        };
        let Some(response) = response else { continue };
        let mut line = response.to_string();
        line.push('\n');
        if let Err(e) = async {
            output.write_all(line.as_bytes()).await?;
            output.flush().await
        }
        .await
        {
            // The client went away: nothing left to answer.
            warn!(error = %e, "the MCP client's end is closed; stopping");
            return Ok(());
        }
    }
}

/// Serves `server` on this process's stdin and stdout.
pub async fn serve_stdio(server: &Server) -> std::io::Result<()> {
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    serve(server, stdin, tokio::io::stdout()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        Server::new(Config {
            repo: PathBuf::from("/nonexistent"),
            dir: "desired".into(),
            stack: None,
            namespace: None,
            context: None,
            kubeconfig: None,
            branch: None,
            diff: crate::reconcile::Options::default(),
        })
    }

    async fn talk(input: &str) -> Vec<Value> {
        let mut out = Vec::new();
        serve(&server(), input.as_bytes(), &mut out).await.unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_session_gets_one_response_per_request_and_none_per_notification() {
        let out = talk(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "\n\n",
            r#"{"jsonrpc":"2.0","method":"notifications/unknown"}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":3,"method":"server/discover","params":{}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"rm -rf","arguments":{}}}"#,
            "\n",
            "{not json}\n",
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"status","arguments":"x"}}"#,
        ))
        .await;
        assert_eq!(out.len(), 7, "{out:#?}");
        assert_eq!(out[0]["id"], 1);
        assert_eq!(out[0]["result"]["protocolVersion"], "2025-06-18");
        assert_eq!(out[0]["result"]["serverInfo"]["name"], "converge");
        assert!(out[0]["result"]["capabilities"]["tools"].is_object());
        assert_eq!(out[1], json!({"jsonrpc":"2.0","id":"p","result":{}}));
        let names: Vec<&str> = out[2]["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["status", "explain", "diff", "validate", "history", "logs", "sync", "propose"]
        );
        assert_eq!(out[3]["error"]["code"], protocol::METHOD_NOT_FOUND);
        assert_eq!(out[4]["error"]["code"], protocol::INVALID_PARAMS);
        assert!(out[4]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown tool `rm -rf`"));
        assert_eq!(out[5]["error"]["code"], protocol::PARSE_ERROR);
        assert_eq!(out[5]["id"], Value::Null);
        assert_eq!(
            (out[6]["id"].clone(), out[6]["error"]["code"].clone()),
            (json!(5), json!(protocol::INVALID_PARAMS))
        );
    }

    #[tokio::test]
    async fn every_tool_has_an_object_schema_and_a_description() {
        for t in tools::list() {
            assert_eq!(t["inputSchema"]["type"], "object", "{t}");
            assert!(!t["description"].as_str().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn an_oversized_line_is_refused_and_the_session_goes_on() {
        let mut input = vec![b'x'; protocol::MAX_MESSAGE_BYTES + 10];
        input.push(b'\n');
        input.extend_from_slice(br#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#);
        let mut out = Vec::new();
        serve(&server(), &input[..], &mut out).await.unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["error"]["code"], protocol::INVALID_REQUEST);
        assert_eq!(lines[0]["id"], Value::Null);
        assert_eq!(lines[1]["id"], 7);
    }

    #[tokio::test]
    async fn a_closed_output_ends_the_session_without_a_panic() {
        let (client, server_end) = tokio::io::duplex(64);
        drop(client);
        let input = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}
"#;
        serve(&server(), &input[..], server_end).await.unwrap();
    }

    #[tokio::test]
    async fn bad_tool_arguments_are_a_tool_error_the_assistant_can_read() {
        let out = talk(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"logs","arguments":{"lines":5,"bogus":true}}}"#,
        )
        .await;
        assert_eq!(out[0]["result"]["isError"], true, "{out:#?}");
        let text = out[0]["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("bogus"), "{text}");
    }
}
