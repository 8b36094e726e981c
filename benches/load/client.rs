//! The load generators and the HTTP/1.1 framing they and the upstream need: a closed loop
//! (fixed concurrency, the next request as soon as the last is answered) and an open loop
//! (a fixed rate, each request timed from when it was due, so a slow answer delays no later
//! measurement). Every response is read to its end; a streamed one also gives its time to
//! first byte (the first body chunk).

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hello there"}]}"#;
pub const STREAM_BODY: &str =
    r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hello there"}]}"#;

/// What a run sends.
#[derive(Clone)]
pub struct Load {
    pub request: Arc<Vec<u8>>,
    pub streamed: bool,
}

impl Load {
    pub fn new(auth: Option<&str>, streamed: bool) -> Load {
        let body = if streamed { STREAM_BODY } else { BODY };
        let mut r = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        if let Some(a) = auth {
            r.push_str(&format!("authorization: {a}\r\n"));
        }
        r.push_str("\r\n");
        r.push_str(body);
        Load {
            request: Arc::new(r.into_bytes()),
            streamed,
        }
    }
}

/// One run's latencies (sorted): whole responses, and first body bytes of streamed ones.
#[derive(Default)]
pub struct Timings {
    pub total: Vec<Duration>,
    pub first_byte: Vec<Duration>,
    pub errors: usize,
}

impl Timings {
    fn merge(&mut self, other: Timings) {
        self.total.extend(other.total);
        self.first_byte.extend(other.first_byte);
        self.errors += other.errors;
    }

    fn sort(mut self) -> Timings {
        self.total.sort_unstable();
        self.first_byte.sort_unstable();
        self
    }
}

/// `conns` connections, each sending its next request as soon as the last is answered, until
/// `length` has passed.
pub fn closed_loop(addr: SocketAddr, load: &Load, conns: usize, length: Duration) -> Timings {
    let end = Instant::now() + length;
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let load = load.clone();
            std::thread::spawn(move || {
                let mut t = Timings::default();
                let mut conn = Conn::new(addr);
                while Instant::now() < end {
                    conn.exchange(&load, Instant::now(), &mut t);
                }
                t
            })
        })
        .collect();
    join(handles)
}

/// `rate` requests a second over `conns` connections for `length`, each timed from when it
/// was due.
pub fn open_loop(
    addr: SocketAddr,
    load: &Load,
    rate: f64,
    conns: usize,
    length: Duration,
) -> Timings {
    let start = Instant::now() + Duration::from_millis(100);
    let total = (rate * length.as_secs_f64()) as usize;
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let load = load.clone();
            std::thread::spawn(move || {
                let mut t = Timings::default();
                let mut conn = Conn::new(addr);
                // This connection's share of the schedule: every `conns`-th request.
                for k in (c..total).step_by(conns) {
                    let due = start + Duration::from_secs_f64(k as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    conn.exchange(&load, due, &mut t);
                }
                t
            })
        })
        .collect();
    join(handles)
}

/// A client connection that reconnects after a failure: an error is counted and the load goes
/// on, so one bad answer cannot silently take a connection out of the run.
struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            buf: Vec::with_capacity(16384),
        }
    }

    fn exchange(&mut self, load: &Load, since: Instant, t: &mut Timings) {
        if self.stream.is_none() {
            match connect(self.addr) {
                Ok(s) => self.stream = Some(s),
                Err(_) => {
                    t.errors += 1;
                    // Do not spin on a refused connection.
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
            }
        }
        let s = self.stream.as_mut().expect("connected above");
        if !exchange(s, load, since, &mut self.buf, t) {
            self.stream = None;
            self.buf.clear();
        }
    }
}

/// One request on a new connection: whether it got a 200.
pub fn closed_loop_once(addr: SocketAddr, load: &Load) -> bool {
    let Ok(mut s) = connect(addr) else {
        return false;
    };
    let mut t = Timings::default();
    exchange(&mut s, load, Instant::now(), &mut Vec::new(), &mut t)
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn join(handles: Vec<std::thread::JoinHandle<Timings>>) -> Timings {
    let mut all = Timings::default();
    for h in handles {
        all.merge(h.join().unwrap());
    }
    all.sort()
}

/// Sends one request and reads its answer; false (an error counted) when the connection
/// failed or the answer was not a 200.
fn exchange(
    s: &mut TcpStream,
    load: &Load,
    since: Instant,
    buf: &mut Vec<u8>,
    t: &mut Timings,
) -> bool {
    use std::io::Write;
    if s.write_all(&load.request).is_err() {
        t.errors += 1;
        return false;
    }
    match read_response(s, buf) {
        Some(r) if r.status == 200 => {
            t.total.push(since.elapsed());
            if load.streamed {
                t.first_byte
                    .push(r.first_body.saturating_duration_since(since));
            }
            true
        }
        _ => {
            t.errors += 1;
            false
        }
    }
}

/// What the upstream needs to know of a request.
pub struct Request {
    pub streamed: bool,
}

/// Reads one request (header and `content-length` body); `buf` keeps what came after it.
pub fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let (head_end, len, _) = read_head(s, buf)?;
    fill(s, buf, head_end + len)?;
    let body = &buf[head_end..head_end + len];
    let streamed = body.windows(13).any(|w| w == b"\"stream\":true");
    buf.drain(..head_end + len);
    Some(Request { streamed })
}

struct Response {
    status: u16,
    /// When the first body bytes were read.
    first_body: Instant,
}

/// Reads one response to its end, by `content-length` or chunked framing.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Response> {
    let (head_end, len, chunked) = read_head(s, buf)?;
    let status = std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()?;
    if !chunked {
        fill(s, buf, head_end + len)?;
        buf.drain(..head_end + len);
        return Some(Response {
            status,
            first_body: Instant::now(),
        });
    }
    buf.drain(..head_end);
    let mut first_body = None;
    loop {
        let line_end = loop {
            if let Some(p) = find(buf, b"\r\n") {
                break p;
            }
            read_more(s, buf)?;
        };
        first_body.get_or_insert_with(Instant::now);
        let size_text = std::str::from_utf8(&buf[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        let end = line_end + 2 + size + 2;
        fill(s, buf, end)?;
        buf.drain(..end);
        if size == 0 {
            return Some(Response {
                status,
                first_body: first_body?,
            });
        }
    }
}

/// Reads until `buf` holds a whole header; returns its length, the `content-length` (0 when
/// absent) and whether the body is chunked.
fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(usize, usize, bool)> {
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        read_more(s, buf)?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut len = 0;
    let mut chunked = false;
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("content-length") {
            len = v.trim().parse().ok()?;
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.trim().eq_ignore_ascii_case("chunked");
        }
    }
    Some((head_end, len, chunked))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> Option<()> {
    while buf.len() < len {
        read_more(s, buf)?;
    }
    Some(())
}

fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16384];
    let n = s.read(&mut chunk).ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&chunk[..n]);
    Some(())
}
