//! A mock OpenAI-like upstream on loopback that the test controls: it records every request
//! (method, path, headers, body) and answers with whatever the test's handler says: JSON,
//! errors, SSE at a given pace, a stream fed by the test (lockstep), an endless stream that
//! reports when it is dropped, a delay, or nothing at all.

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type Body = BoxBody<Bytes, std::io::Error>;

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("upstream received JSON")
    }

    pub fn is_probe(&self) -> bool {
        self.header("user-agent") == Some("ultra-gateway-health-check")
    }
}

/// How the upstream answers.
pub enum Reply {
    Json(u16, serde_json::Value),
    Raw {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    },
    /// SSE `data:` events, `interval` apart, then `data: [DONE]`.
    Sse {
        events: Vec<String>,
        interval: Duration,
    },
    /// An SSE response whose body is whatever the test sends; it ends when the sender drops.
    Stream(mpsc::UnboundedReceiver<Bytes>),
    /// An SSE stream that never ends; its drop is counted in `streams_dropped`.
    Endless {
        interval: Duration,
    },
    Delayed(Duration, Box<Reply>),
    /// Never answers.
    Hang,
}

pub type Handler = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

/// The runtime every mock upstream runs on.
fn mock_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mock-upstream")
            .enable_all()
            .build()
            .expect("mock upstream runtime")
    })
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    streams_dropped: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}

impl MockUpstream {
    /// Starts a plain-HTTP upstream. The gateway's health-check probes get a 200 (use
    /// `start_all` for a handler that answers them too).
    pub async fn start(
        handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> MockUpstream {
        Self::start_inner(Arc::new(answer_probes(handler)), None).await
    }

    /// Starts a plain-HTTP upstream whose handler also answers health-check probes.
    pub async fn start_all(
        handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> MockUpstream {
        Self::start_inner(Arc::new(handler), None).await
    }

    /// Starts an HTTPS upstream with the given server config.
    pub async fn start_tls(
        handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
        tls: Arc<tokio_rustls::rustls::ServerConfig>,
    ) -> MockUpstream {
        Self::start_inner(
            Arc::new(answer_probes(handler)),
            Some(tokio_rustls::TlsAcceptor::from(tls)),
        )
        .await
    }

    /// An upstream answering every request with an OpenAI-like chat completion that names the
    /// model it was asked for.
    pub async fn openai_like() -> MockUpstream {
        Self::start(|r| {
            let model = serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["model"].as_str().map(str::to_string))
                .unwrap_or_default();
            Reply::Json(200, chat_completion(&model, "hello from upstream"))
        })
        .await
    }

    /// A provider whose key `sk-one` is rate-limited for an hour (429, `retry-after: 3600`)
    /// and whose other keys are fine.
    pub async fn resting_key_one() -> MockUpstream {
        Self::start(|r| {
            if r.header("authorization") == Some("Bearer sk-one") {
                Reply::Raw {
                    status: 429,
                    headers: vec![("retry-after", "3600".into())],
                    body: Bytes::from_static(b"{}"),
                }
            } else {
                Reply::Json(200, chat_completion("m", "ok"))
            }
        })
        .await
    }

    async fn start_inner(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> MockUpstream {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let streams_dropped = Arc::new(AtomicUsize::new(0));
        let (rec, dropped) = (received.clone(), streams_dropped.clone());
        // On a runtime of its own: the test's runtime may be blocked (e.g. waiting for the gateway
        // to start) while the gateway already calls this upstream (health checks, JWKS).
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let conns = connections.clone();
        let task = mock_runtime().spawn(async move {
            let listener = TcpListener::from_std(std_listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (handler, rec, dropped, tls) =
                    (handler.clone(), rec.clone(), dropped.clone(), tls.clone());
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        serve(req, handler.clone(), rec.clone(), dropped.clone())
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(s), service).await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        MockUpstream {
            addr,
            received,
            streams_dropped,
            task,
            connections,
        }
    }

    /// Dies like a crashed server: stops listening and drops every open connection.
    pub fn kill(&self) {
        self.task.abort();
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received, health-check probes left out.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !r.is_probe())
            .cloned()
            .collect()
    }

    /// The gateway's health-check probes received.
    pub fn probes(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.is_probe())
            .cloned()
            .collect()
    }

    /// The only request received; panics if there were none or several.
    pub fn single(&self) -> Received {
        let r = self.received();
        assert_eq!(
            r.len(),
            1,
            "expected exactly one upstream request, got {}",
            r.len()
        );
        r.into_iter().next().unwrap()
    }

    pub fn streams_dropped(&self) -> usize {
        self.streams_dropped.load(Ordering::SeqCst)
    }
}

async fn serve(
    req: Request<Incoming>,
    handler: Handler,
    rec: Arc<Mutex<Vec<Received>>>,
    dropped: Arc<AtomicUsize>,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .to_bytes();
    let received = Received {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    rec.lock().unwrap().push(received.clone());
    let reply = handler(&received);
    Ok(respond(reply, dropped).await)
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn sse_response(body: Body) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("x-request-id", "upstream-req-1")
        .body(body)
        .unwrap()
}

/// Counts the drop of an endless stream: the proxy let go of the upstream.
struct DropGuard(Arc<AtomicUsize>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn respond(
    reply: Reply,
    dropped: Arc<AtomicUsize>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>> {
    Box::pin(async move {
        match reply {
            Reply::Json(status, v) => Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("x-request-id", "upstream-req-1")
                .body(full(serde_json::to_vec(&v).unwrap()))
                .unwrap(),
            Reply::Raw {
                status,
                headers,
                body,
            } => {
                let mut b = Response::builder().status(status);
                for (k, v) in headers {
                    b = b.header(k, v);
                }
                b.body(full(body)).unwrap()
            }
            Reply::Sse { events, interval } => {
                let mut items: Vec<Bytes> = events
                    .into_iter()
                    .map(|e| Bytes::from(format!("data: {e}\n\n")))
                    .collect();
                items.push(Bytes::from_static(b"data: [DONE]\n\n"));
                let stream = futures_util::stream::iter(items.into_iter().enumerate()).then(
                    move |(i, b)| async move {
                        if i > 0 {
                            tokio::time::sleep(interval).await;
                        }
                        Ok::<_, std::io::Error>(Frame::data(b))
                    },
                );
                sse_response(BodyExt::boxed(StreamBody::new(stream)))
            }
            Reply::Stream(rx) => {
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
                });
                sse_response(BodyExt::boxed(StreamBody::new(stream)))
            }
            Reply::Endless { interval } => {
                let guard = DropGuard(dropped);
                let stream =
                    futures_util::stream::unfold((0u64, guard), move |(n, g)| async move {
                        if n > 0 {
                            tokio::time::sleep(interval).await;
                        }
                        let chunk = Bytes::from(format!("data: {{\"n\":{n}}}\n\n"));
                        Some((Ok::<_, std::io::Error>(Frame::data(chunk)), (n + 1, g)))
                    });
                sse_response(BodyExt::boxed(StreamBody::new(stream)))
            }
            Reply::Delayed(d, inner) => {
                tokio::time::sleep(d).await;
                respond(*inner, dropped).await
            }
            Reply::Hang => {
                std::future::pending::<()>().await;
                unreachable!()
            }
        }
    })
}

/// An OpenAI chat completion body.
pub fn chat_completion(model: &str, text: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "chatcmpl-upstream",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    })
}

/// Wraps a handler so that health-check probes get `200 {"object":"list","data":[]}`.
fn answer_probes(
    handler: impl Fn(&Received) -> Reply + Send + Sync + 'static,
) -> impl Fn(&Received) -> Reply + Send + Sync + 'static {
    move |r: &Received| {
        if r.is_probe() {
            Reply::Json(200, serde_json::json!({"object": "list", "data": []}))
        } else {
            handler(r)
        }
    }
}
