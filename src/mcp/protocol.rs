//! JSON-RPC 2.0 framing as MCP uses it: one message in, at most one response out.
//!
//! Transport-agnostic: stdio hands it one line, an HTTP listener could hand it one request body.
//! Error codes are JSON-RPC's (parse error, invalid request, method not found, invalid params);
//! a notification never gets a response, not even an error, as JSON-RPC requires.

use serde_json::{json, Value};

/// The largest message read: a proposal holds whole files, so it is generous, and anything
/// above it is refused before it is parsed.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The handshake-era protocol revisions this server speaks, newest first (the Python SDK 2.3
/// offers 2025-11-25 in `initialize`; older clients offer older ones).
pub const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// JSON-RPC: the message is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: JSON, but not a request, notification or response.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: no such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC: the method's parameters are wrong (an unknown tool included, as MCP says).
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC: the server failed.
pub const INTERNAL_ERROR: i64 = -32603;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// One of the codes above.
    pub code: i64,
    /// One sentence.
    pub message: String,
}

impl RpcError {
    /// An error with `code` and `message`.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A request: it gets exactly one response with its id.
    Request {
        /// The id, a string or a number, echoed back.
        id: Value,
        /// The method.
        method: String,
        /// The parameters (`Null` when absent).
        params: Value,
    },
    /// A notification: never answered.
    Notification {
        /// The method.
        method: String,
    },
    /// A response to a request of ours (this server sends none): ignored.
    Response,
}

/// Decodes one message; `Err` is the error response to send (with id null when none could be
/// read).
pub fn decode(bytes: &[u8]) -> Result<Incoming, Value> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(too_large(bytes.len()));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        error_response(
            Value::Null,
            &RpcError::new(PARSE_ERROR, format!("parse error: {e}")),
        )
    })?;
    let invalid = |id: Value, why: &str| {
        error_response(
            id,
            &RpcError::new(INVALID_REQUEST, format!("invalid request: {why}")),
        )
    };
    let Some(obj) = value.as_object() else {
        // MCP 2025-06-18 removed JSON-RPC batches: an array is no request either.
        return Err(invalid(Value::Null, "expected one JSON-RPC object"));
    };
    let id = obj.get("id").cloned();
    let valid_id = id
        .as_ref()
        .filter(|i| i.is_string() || i.is_i64() || i.is_u64())
        .cloned();
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid(
            valid_id.unwrap_or(Value::Null),
            "`jsonrpc` must be \"2.0\"",
        ));
    }
    match (obj.get("method"), id) {
        (Some(Value::String(method)), None) => Ok(Incoming::Notification {
            method: method.clone(),
        }),
        (Some(Value::String(method)), Some(_)) => {
            let Some(id) = valid_id else {
                return Err(invalid(Value::Null, "`id` must be a string or an integer"));
            };
            let params = obj.get("params").cloned().unwrap_or(Value::Null);
            if !(params.is_object() || params.is_null()) {
                return Err(error_response(
                    id,
                    &RpcError::new(INVALID_PARAMS, "`params` must be an object"),
                ));
            }
            Ok(Incoming::Request {
                id,
                method: method.clone(),
                params,
            })
        }
        (Some(_), _) => Err(invalid(
            valid_id.unwrap_or(Value::Null),
            "`method` must be a string",
        )),
        (None, Some(_)) if obj.contains_key("result") || obj.contains_key("error") => {
            Ok(Incoming::Response)
        }
        (None, _) => Err(invalid(valid_id.unwrap_or(Value::Null), "no `method`")),
    }
}

/// The response to a message longer than [`MAX_MESSAGE_BYTES`] (its id is unread).
pub fn too_large(len: usize) -> Value {
    error_response(
        Value::Null,
        &RpcError::new(
            INVALID_REQUEST,
            format!("invalid request: message of {len} bytes or more exceeds the limit of {MAX_MESSAGE_BYTES} bytes"),
        ),
    )
}

/// A success response.
pub fn result_response(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error response.
pub fn error_response(id: Value, error: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": error.code, "message": error.message}})
}

/// The protocol revision to answer `initialize` with: the client's when this server speaks it,
/// else the newest this server speaks (the client then decides whether to go on).
pub fn negotiate(requested: Option<&str>) -> &'static str {
    requested
        .and_then(|r| SUPPORTED_VERSIONS.iter().find(|v| **v == r))
        .copied()
        .unwrap_or(SUPPORTED_VERSIONS[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(v: &Value) -> i64 {
        v["error"]["code"].as_i64().unwrap()
    }

    #[test]
    fn malformed_json_is_a_parse_error_with_a_null_id() {
        let e = decode(br#"{"jsonrpc":"2.0","id":1,"method":"ping""#).unwrap_err();
        assert_eq!(code(&e), PARSE_ERROR);
        assert_eq!(e["id"], Value::Null);
        assert_eq!(e["jsonrpc"], "2.0");
    }

    #[test]
    fn json_that_is_no_request_is_an_invalid_request() {
        for (msg, id) in [
            (r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, Value::Null),
            (r#"{"id":3,"method":"ping"}"#, json!(3)),
            (r#"{"jsonrpc":"1.0","id":"a","method":"ping"}"#, json!("a")),
            (
                r#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#,
                Value::Null,
            ),
            (r#"{"jsonrpc":"2.0","id":4,"method":7}"#, json!(4)),
            (r#"{"jsonrpc":"2.0","id":5}"#, json!(5)),
            ("42", Value::Null),
        ] {
            let e = decode(msg.as_bytes()).unwrap_err();
            assert_eq!(code(&e), INVALID_REQUEST, "{msg}");
            assert_eq!(e["id"], id, "{msg}");
        }
    }

    #[test]
    fn params_that_are_not_an_object_are_invalid_params_with_the_id() {
        let e =
            decode(br#"{"jsonrpc":"2.0","id":9,"method":"tools/list","params":[1]}"#).unwrap_err();
        assert_eq!((code(&e), e["id"].clone()), (INVALID_PARAMS, json!(9)));
    }

    #[test]
    fn requests_notifications_and_responses_are_told_apart() {
        assert_eq!(
            decode(br#"{"jsonrpc":"2.0","id":"x","method":"ping"}"#).unwrap(),
            Incoming::Request {
                id: json!("x"),
                method: "ping".into(),
                params: Value::Null
            }
        );
        assert_eq!(
            decode(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap(),
            Incoming::Notification {
                method: "notifications/initialized".into()
            }
        );
        assert_eq!(
            decode(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap(),
            Incoming::Response
        );
    }

    #[test]
    fn an_oversized_message_is_refused_unread() {
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        let e = decode(&big).unwrap_err();
        assert_eq!((code(&e), e["id"].clone()), (INVALID_REQUEST, Value::Null));
    }

    #[test]
    fn the_clients_version_is_kept_when_spoken_else_the_newest_is_offered() {
        assert_eq!(negotiate(Some("2025-06-18")), "2025-06-18");
        assert_eq!(negotiate(Some("2024-11-05")), "2024-11-05");
        assert_eq!(negotiate(Some("2099-01-01")), "2025-11-25");
        assert_eq!(negotiate(None), "2025-11-25");
    }
}
