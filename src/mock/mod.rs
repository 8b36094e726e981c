//! The built-in mock provider (`kind: mock`): an OpenAI-compatible provider inside the gateway,
//! with no network. It answers chat completions (plain and SSE, with a final `usage` chunk),
//! legacy completions and embeddings (deterministic vectors, float or base64), after an optional
//! configured latency and with an optional failure rate. Used by the development default, the
//! tests and the benchmarks.

pub mod responses;

use crate::config::MockSpec;
use crate::endpoints::EndpointGroup;
use crate::proxy::errors::error_json;
use crate::usage::UsageMeter;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use rand::Rng;
use responses::MockInput;
use serde_json::Value;
use std::time::Duration;

/// Adds the gateway's headers to a response.
pub type Decorate<'a> = dyn Fn(&mut ResponseHeader) + Send + Sync + 'a;

/// One request for the mock.
pub struct MockCall<'a> {
    pub group: &'a EndpointGroup,
    pub body: &'a [u8],
    /// The model name as the provider knows it (the target's upstream name).
    pub model: &'a str,
    pub stream: bool,
    pub settings: &'a MockSpec,
    pub request_id: &'a str,
}

/// What the mock has sent so far (kept up to date while streaming, so a client that leaves
/// mid-stream is still accounted for).
#[derive(Debug, Default)]
pub struct Sent {
    /// Status of the response header, once written.
    pub status: Option<u16>,
    pub bytes: usize,
    /// Meters a successful answer's usage, as any provider's is (an error answer drops it).
    pub usage: Option<UsageMeter>,
}

impl Sent {
    /// Shows a chunk about to be written to the meter (which may take a hidden usage chunk
    /// out of it).
    fn meter(&mut self, chunk: &mut Bytes, end_of_stream: bool) {
        if let Some(m) = &mut self.usage {
            m.chunk(chunk, end_of_stream);
        }
    }
}

/// What the mock answers: decided first (no I/O), then sent.
#[derive(Debug)]
pub enum Reply {
    Json {
        status: u16,
        body: Bytes,
    },
    /// SSE events (each sent as `data: ...`, paced by `chunk_interval_ms`), then `[DONE]`.
    Events(Vec<Value>),
}

/// Answers `call` on `session`. `decorate` adds the gateway's response headers.
pub async fn serve(
    session: &mut Session,
    call: MockCall<'_>,
    decorate: &Decorate<'_>,
    sent: &mut Sent,
) -> pingora::Result<()> {
    if call.settings.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(call.settings.latency_ms)).await;
    }
    let fails = call.settings.failure_rate > 0.0
        && rand::thread_rng().gen::<f64>() < call.settings.failure_rate;
    let reply = if fails {
        let message = "The mock provider failed this request (configured failure_rate).";
        Reply::Json {
            status: 500,
            body: error_json(message, "server_error", None, "mock_failure"),
        }
    } else {
        reply(&call, crate::time::unix_now())
    };
    match reply {
        Reply::Json { status, body } => send_json(session, status, body, decorate, sent).await,
        Reply::Events(events) => send_sse(session, events, call.settings, decorate, sent).await,
    }
}

/// The mock's answer to `call` at time `created` (Unix seconds).
pub fn reply(call: &MockCall<'_>, created: u64) -> Reply {
    let input: MockInput = serde_json::from_slice(call.body).unwrap_or_default();
    let ok = |v: Value| Reply::Json {
        status: 200,
        body: to_bytes(&v),
    };
    match call.group {
        EndpointGroup::Chat | EndpointGroup::Completions => {
            let chat = *call.group == EndpointGroup::Chat;
            let (text, prompt_chars) = if chat {
                responses::chat_reply(&input)
            } else {
                responses::completion_reply(&input)
            };
            let id_suffix = &call.request_id[..call.request_id.len().min(24)];
            let kind = if chat { "chatcmpl" } else { "cmpl" };
            let id = format!("{kind}-mock-{id_suffix}");
            let answer = responses::Answer {
                id: &id,
                created,
                model: call.model,
                text: &text,
                prompt_chars,
            };
            let usage = input.include_usage();
            match (chat, call.stream) {
                (true, true) => Reply::Events(responses::chat_chunks(&answer, usage)),
                (false, true) => Reply::Events(responses::completion_chunks(&answer, usage)),
                (true, false) => ok(responses::chat_completion(&answer)),
                (false, false) => ok(responses::text_completion(&answer)),
            }
        }
        EndpointGroup::Embeddings => {
            match responses::embeddings(call.model, &input, call.settings.embedding_dimensions) {
                Ok(v) => ok(v),
                Err(msg) => Reply::Json {
                    status: 400,
                    body: error_json(
                        &msg,
                        "invalid_request_error",
                        Some("input"),
                        "invalid_input",
                    ),
                },
            }
        }
        other => {
            let msg = format!("The mock provider does not implement the `{other}` endpoint.");
            Reply::Json {
                status: 404,
                body: error_json(&msg, "invalid_request_error", None, "unknown_endpoint"),
            }
        }
    }
}

fn to_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("JSON value serializes"))
}

async fn send_json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    decorate: &Decorate<'_>,
    sent: &mut Sent,
) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(status, Some(4))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body.len().to_string())?;
    decorate(&mut h);
    session.write_response_header(Box::new(h), false).await?;
    sent.status = Some(status);
    if !(200..300).contains(&status) {
        sent.usage = None;
    }
    let mut body = body;
    sent.meter(&mut body, true);
    let len = body.len();
    session.write_response_body(Some(body), true).await?;
    sent.bytes += len;
    Ok(())
}

async fn send_sse(
    session: &mut Session,
    chunks: Vec<Value>,
    settings: &MockSpec,
    decorate: &Decorate<'_>,
    sent: &mut Sent,
) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("content-type", "text/event-stream; charset=utf-8")?;
    h.insert_header("cache-control", "no-cache")?;
    decorate(&mut h);
    session.write_response_header(Box::new(h), false).await?;
    sent.status = Some(200);
    let interval = Duration::from_millis(settings.chunk_interval_ms);
    for (i, c) in chunks.iter().enumerate() {
        if i > 0 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        let mut line = Vec::with_capacity(256);
        line.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut line, c).expect("JSON value serializes");
        line.extend_from_slice(b"\n\n");
        let mut chunk = Bytes::from(line);
        sent.meter(&mut chunk, false);
        if chunk.is_empty() {
            // A usage chunk the client did not ask for, taken out.
            continue;
        }
        let len = chunk.len();
        session.write_response_body(Some(chunk), false).await?;
        sent.bytes += len;
    }
    let mut done = Bytes::from_static(b"data: [DONE]\n\n");
    sent.meter(&mut done, true);
    let len = done.len();
    session.write_response_body(Some(done), true).await?;
    sent.bytes += len;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(
        group: &'a EndpointGroup,
        body: &'a [u8],
        stream: bool,
        settings: &'a MockSpec,
    ) -> MockCall<'a> {
        MockCall {
            group,
            body,
            model: "mock-small",
            stream,
            settings,
            request_id: "rid",
        }
    }

    #[test]
    fn replies_by_endpoint_and_stream() {
        let settings = MockSpec::default();
        let chat = EndpointGroup::Chat;
        let body = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        let Reply::Json {
            status: 200,
            body: json,
        } = reply(&call(&chat, body, false, &settings), 1)
        else {
            panic!("a chat completion");
        };
        let v: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "mock-small");
        assert_eq!(v["id"], "chatcmpl-mock-rid");
        let Reply::Events(events) = reply(&call(&chat, body, true, &settings), 1) else {
            panic!("a stream");
        };
        assert!(events.len() > 1);
        assert!(
            events.iter().all(|e| e["usage"].is_null()),
            "no usage unless asked"
        );

        let speech = EndpointGroup::Custom("speech".into());
        let Reply::Json { status, body } = reply(&call(&speech, body, false, &settings), 1) else {
            panic!("an error");
        };
        assert_eq!(status, 404);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "unknown_endpoint");
    }

    #[test]
    fn bad_embedding_input_is_a_400_naming_the_input() {
        let settings = MockSpec::default();
        let g = EndpointGroup::Embeddings;
        let Reply::Json { status, body } =
            reply(&call(&g, br#"{"input":42}"#, false, &settings), 1)
        else {
            panic!("an error");
        };
        assert_eq!(status, 400);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["param"], "input");
    }
}
