//! The built-in mock provider (`kind: mock`): an OpenAI-compatible provider inside the gateway,
//! with no network. It answers chat completions (plain and SSE, with a final `usage` chunk),
//! legacy completions and embeddings (deterministic vectors, float or base64), after an optional
//! configured latency and with an optional failure rate. Used by the development default, the
//! tests and the benchmarks.

pub mod responses;

use crate::config::MockSpec;
use crate::endpoints::EndpointGroup;
use crate::proxy::errors::error_json;
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
    if call.settings.failure_rate > 0.0
        && rand::thread_rng().gen::<f64>() < call.settings.failure_rate
    {
        let body = error_json(
            "The mock provider failed this request (configured failure_rate).",
            "server_error",
            None,
            "mock_failure",
        );
        return send_json(session, 500, body, decorate, sent).await;
    }
    let input: MockInput = serde_json::from_slice(call.body).unwrap_or_default();
    let created = crate::time::unix_now();
    let id_suffix = &call.request_id[..call.request_id.len().min(24)];
    match call.group {
        EndpointGroup::Chat | EndpointGroup::Completions => {
            let chat = *call.group == EndpointGroup::Chat;
            let (text, prompt_chars) = if chat {
                responses::chat_reply(&input)
            } else {
                responses::completion_reply(&input)
            };
            let id = format!(
                "{}-mock-{id_suffix}",
                if chat { "chatcmpl" } else { "cmpl" }
            );
            let answer = responses::Answer {
                id: &id,
                created,
                model: call.model,
                text: &text,
                prompt_chars,
            };
            let usage = input.include_usage();
            match (chat, call.stream) {
                (true, true) => {
                    send_sse(
                        session,
                        responses::chat_chunks(&answer, usage),
                        call.settings,
                        decorate,
                        sent,
                    )
                    .await
                }
                (false, true) => {
                    send_sse(
                        session,
                        responses::completion_chunks(&answer, usage),
                        call.settings,
                        decorate,
                        sent,
                    )
                    .await
                }
                (true, false) => {
                    send_json(
                        session,
                        200,
                        to_bytes(&responses::chat_completion(&answer)),
                        decorate,
                        sent,
                    )
                    .await
                }
                (false, false) => {
                    send_json(
                        session,
                        200,
                        to_bytes(&responses::text_completion(&answer)),
                        decorate,
                        sent,
                    )
                    .await
                }
            }
        }
        EndpointGroup::Embeddings => {
            match responses::embeddings(call.model, &input, call.settings.embedding_dimensions) {
                Ok(v) => send_json(session, 200, to_bytes(&v), decorate, sent).await,
                Err(msg) => {
                    let body = error_json(
                        &msg,
                        "invalid_request_error",
                        Some("input"),
                        "invalid_input",
                    );
                    send_json(session, 400, body, decorate, sent).await
                }
            }
        }
        other => {
            let msg = format!("The mock provider does not implement the `{other}` endpoint.");
            let body = error_json(&msg, "invalid_request_error", None, "unknown_endpoint");
            send_json(session, 404, body, decorate, sent).await
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
    let len = body.len();
    session.write_response_header(Box::new(h), false).await?;
    sent.status = Some(status);
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
        let len = line.len();
        session
            .write_response_body(Some(Bytes::from(line)), false)
            .await?;
        sent.bytes += len;
    }
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let len = done.len();
    session.write_response_body(Some(done), true).await?;
    sent.bytes += len;
    Ok(())
}
