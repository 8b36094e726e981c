//! The built-in mock provider: chat, completions, embeddings, failures and latency.

use crate::common::*;
use base64::Engine;
use serde_json::{json, Value};

fn mock_config(mock: &str) -> String {
    format!(
        "logging: {{ level: warn }}
providers: {{ m: {{ kind: mock, mock: {mock} }} }}
models:
  - {{ id: chat-model, targets: [{{ provider: m, model: upstream-chat }}] }}
  - {{ id: embed-model, targets: [{{ provider: m }}] }}
"
    )
}

#[tokio::test]
async fn chat_and_completions() {
    let gw = TestGateway::start(&mock_config("{}"));
    let r = gw.chat("chat-model").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ultra-provider"], "m");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["model"], "upstream-chat",
        "the mock sees the upstream name"
    );
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let r = gw
        .post_json(
            "/v1/completions",
            &json!({"model": "chat-model", "prompt": "Once upon"}),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"]
        .as_str()
        .unwrap()
        .contains("Once upon"));
}

#[tokio::test]
async fn embeddings_are_deterministic_in_float_and_base64() {
    let gw = TestGateway::start(&mock_config("{ embedding_dimensions: 16 }"));
    let get = |body: Value| {
        let c = client();
        let url = gw.url("/v1/embeddings");
        async move {
            c.post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let a = get(json!({"model": "embed-model", "input": ["hello", "world"]})).await;
    let b = get(json!({"model": "embed-model", "input": "hello"})).await;
    assert_eq!(a["data"].as_array().unwrap().len(), 2);
    assert_eq!(a["data"][0]["embedding"], b["data"][0]["embedding"]);
    assert_ne!(a["data"][0]["embedding"], a["data"][1]["embedding"]);
    let floats: Vec<f64> = a["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(floats.len(), 16);

    let c = get(json!({"model": "embed-model", "input": "hello", "encoding_format": "base64", "dimensions": 16})).await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(c["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f64> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
        .collect();
    assert_eq!(decoded.len(), floats.len());
    assert!(!decoded.is_empty());
    for (x, y) in decoded.iter().zip(&floats) {
        assert!((x - y).abs() < 1e-6);
    }

    let r = gw
        .post_json(
            "/v1/embeddings",
            &json!({"model": "embed-model", "input": 7}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "input");
}

#[tokio::test]
async fn failure_rate_and_latency() {
    let gw = TestGateway::start(&mock_config("{ failure_rate: 1.0 }"));
    let r = gw.chat("chat-model").await;
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "mock_failure"
    );

    let gw = TestGateway::start(&mock_config("{ latency_ms: 300 }"));
    let started = std::time::Instant::now();
    let r = gw.chat("chat-model").await;
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
}

#[tokio::test]
async fn unimplemented_endpoint_is_a_clear_404() {
    let gw = TestGateway::start(&mock_config("{}"));
    let r = gw
        .post_json(
            "/v1/responses",
            &json!({"model": "chat-model", "input": "x"}),
        )
        .await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unknown_endpoint");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("responses"));
}
