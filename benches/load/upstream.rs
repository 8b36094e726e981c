//! The upstream every target proxies to: in-process, a thread per connection, answering at
//! once so that it is never the bottleneck. A request whose body asks for `"stream":true` gets
//! an OpenAI-style event stream (chunked, one write per event, the usage event last).

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};

use crate::client::{read_request, Request};

pub const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}"#;

/// Events in a streamed answer, the usage event and `[DONE]` included.
pub const STREAM_EVENTS: usize = 20;

pub fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    addr
}

fn serve(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let plain = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
        ANSWER.len()
    );
    let events = stream_events();
    let mut buf = Vec::with_capacity(8192);
    while let Some(Request { streamed }) = read_request(&mut s, &mut buf) {
        let ok = if streamed {
            stream_answer(&mut s, &events)
        } else {
            s.write_all(plain.as_bytes()).is_ok()
        };
        if !ok {
            return;
        }
    }
}

/// The chunks of a streamed answer, each already framed for chunked transfer encoding.
fn stream_events() -> Vec<Vec<u8>> {
    let mut events: Vec<String> = (0..STREAM_EVENTS - 2)
        .map(|i| {
            format!(
                r#"data: {{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{{"index":0,"delta":{{"content":"word{i} "}},"finish_reason":null}}]}}"#
            ) + "\n\n"
        })
        .collect();
    events.push(
        r#"data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":18,"total_tokens":28}}"#.to_string()
            + "\n\n",
    );
    events.push("data: [DONE]\n\n".to_string());
    events
        .into_iter()
        .map(|e| format!("{:x}\r\n{e}\r\n", e.len()).into_bytes())
        .collect()
}

fn stream_answer(s: &mut TcpStream, events: &[Vec<u8>]) -> bool {
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
    let mut first = head.to_vec();
    first.extend_from_slice(&events[0]);
    if s.write_all(&first).is_err() {
        return false;
    }
    for e in &events[1..] {
        if s.write_all(e).is_err() {
            return false;
        }
    }
    s.write_all(b"0\r\n\r\n").is_ok()
}
