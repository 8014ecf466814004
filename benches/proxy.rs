//! Measures what the gateway adds on top of Cartesia: `POST /tts/bytes` latency, CPU time and
//! throughput over HTTP/1.1 and HTTP/2, TTS WebSocket open and first-audio times, and memory.
//!
//! The client, the gateway and the in-process Cartesia stand-in all run in this process on
//! 127.0.0.1 with real TLS, and share the tokio worker threads. Every case runs once through the
//! gateway and once directly against the stand-in with the same client type and TLS settings, so
//! the difference between the two rows is the gateway's cost. Linux only, because CPU time and
//! memory are read from `/proc/self`.
//!
//! Run it with `cargo bench --bench proxy`. Without the `--bench` argument that `cargo bench`
//! passes, as under `cargo test --all-targets`, it only checks that every step works: each default
//! count becomes 10 or less and the numbers mean nothing. These environment variables change the
//! counts in both modes:
//!
//! - `BENCH_REQUESTS`: measured `/tts/bytes` requests per row (default 5000).
//! - `BENCH_WARMUP`: unmeasured requests before each row (default 200).
//! - `BENCH_WS_SESSIONS`: sequential WebSocket sessions per target (default 500).
//! - `BENCH_IDLE_WEBSOCKETS`: WebSockets held open idle, directly and through the gateway, for
//!   the memory measurement (default 1000 of each, and 0 skips it).
//! - `BENCH_LOG`: tracing filter for the logs of the gateway and the stand-in (default `info`,
//!   which includes the access log). Logs are formatted as JSON and discarded, and `off` turns
//!   them off.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cartesia_gateway::stand_in::StandIn;
use cartesia_gateway::{Config, Gateway};
use futures_util::{SinkExt, StreamExt};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type BoxError = Box<dyn Error + Send + Sync>;
type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;
type WebSocket = WebSocketStream<TlsStream<TcpStream>>;

const API_KEY: &str = "sk_car_bench_0123456789abcdefghijklmnop";
const SESSION_SECRET: &str = "bench-session-secret-0123456789-abcdefghijkl";
const CARTESIA_VERSION: HeaderName = HeaderName::from_static("cartesia-version");
const VERSION: &str = "2026-08-14";
/// The transcript "A" is 60 ms of stand-in audio, which fits in one 100 ms chunk.
const TTS_BYTES_BODY: &str = r#"{"model_id": "sonic-3", "transcript": "A",
    "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
    "output_format": {"container": "wav", "encoding": "pcm_s16le", "sample_rate": 16000}}"#;
const TTS_WEBSOCKET_REQUEST: &str = r#"{"context_id": "bench", "model_id": "sonic-3",
    "transcript": "A", "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
    "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
    "continue": false}"#;
/// Maximum wait for one response, body frame or WebSocket message before the run fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Tasks that open the idle WebSockets.
const IDLE_OPENERS: usize = 16;
/// Width of the first column of every table.
const LABEL_WIDTH: usize = 26;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let measure = std::env::args().any(|argument| argument == "--bench");
    let pick = |full, check| if measure { full } else { check };
    let requests = env_count("BENCH_REQUESTS", pick(5000, 10))?;
    let warmup = env_count("BENCH_WARMUP", pick(200, 2))?;
    let ws_sessions = env_count("BENCH_WS_SESSIONS", pick(500, 5))?;
    let idle_websockets = env_count("BENCH_IDLE_WEBSOCKETS", pick(1000, 10))?;
    let log_filter = std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".to_owned());
    if requests == 0 || ws_sessions == 0 {
        return Err("BENCH_REQUESTS and BENCH_WS_SESSIONS must be at least 1".into());
    }
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&log_filter)?)
        .with_writer(std::io::sink)
        .try_init()?;
    // An idle WebSocket uses four descriptors in this process through the gateway, two directly.
    rlimit::increase_nofile_limit(u64::MAX)?;

    let servers = Servers::start().await?;
    if !measure {
        println!("Check run without --bench: every step runs a few times, and the numbers are");
        println!("not measurements. Run `cargo bench --bench proxy` to measure.\n");
    }
    let workers = std::thread::available_parallelism().map_or(1, |count| count.get());
    println!("cartesia-gateway benchmark. The client, the gateway and the stand-in share one");
    println!("process and {workers} tokio worker threads, over TLS on 127.0.0.1.");
    println!("Logs at {log_filter:?} are formatted as JSON and discarded.");
    println!("The stand-in paces audio: it sends 100 ms chunks with a 10 ms pause between them.");
    println!(
        "The transcript here is 60 ms of audio in one chunk, so no response waits on a pause."
    );
    println!("\"added\" is gateway minus direct in each column, a difference of percentiles.");

    let mut memory = vec![("after setup".to_owned(), Memory::read()?)];
    run_http_table(&servers, requests, warmup).await?;
    memory.push(("after HTTP runs".to_owned(), Memory::read()?));
    run_websocket_table(&servers, ws_sessions).await?;
    memory.push(("after WebSocket runs".to_owned(), Memory::read()?));
    if idle_websockets > 0 {
        measure_idle_websockets(&servers, idle_websockets, &mut memory).await?;
    }

    println!("\nMemory of the whole process (client, gateway and stand-in), MiB");
    print_line("stage", ["VmRSS", "VmHWM"].map(str::to_owned));
    for (stage, reading) in &memory {
        let cells =
            [reading.rss_kib, reading.peak_kib].map(|kib| format!("{:.1}", kib as f64 / 1024.0));
        print_line(stage, cells);
    }
    println!("VmHWM is the peak RSS so far. The stand-in keeps a record of every request, so RSS");
    println!("also grows with the request count. The allocator keeps freed memory, so RSS rarely");
    println!("falls.");
    Ok(())
}

/// Reads a count from the environment variable `name`, or returns `default` when it is unset.
fn env_count(name: &str, default: usize) -> Result<usize, BoxError> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(text) => text.trim().parse().map_err(|_| {
            format!("{name}={text:?} is not a count; set a whole number such as {default}").into()
        }),
    }
}

/// The running stand-in and gateway, and how to reach each.
struct Servers {
    _dir: tempfile::TempDir,
    /// Client TLS settings that trust the development CA. ALPN is empty because hyper-rustls
    /// sets it.
    tls: rustls::ClientConfig,
    /// The same with ALPN `http/1.1`, for WebSocket handshakes.
    websocket_tls: Arc<rustls::ClientConfig>,
    /// The gateway's state, read for its metrics.
    state: Arc<Gateway>,
    /// The gateway, reached with a session JWT that has the `tts` grant.
    gateway: Target,
    /// The stand-in, reached with an access token that it minted, like the ones the gateway uses.
    direct: Target,
}

/// A server address and the `Authorization` value that it accepts.
#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    tts_bytes: Uri,
    authorization: HeaderValue,
}

impl Target {
    fn new(name: &'static str, addr: SocketAddr, credential: &str) -> Result<Target, BoxError> {
        Ok(Target {
            name,
            addr,
            tts_bytes: format!("https://{addr}/tts/bytes").parse()?,
            authorization: HeaderValue::from_str(&format!("Bearer {credential}"))?,
        })
    }
}

impl Servers {
    async fn start() -> Result<Servers, BoxError> {
        let dir = tempfile::tempdir()?;
        let certs = cartesia_gateway::devcert::generate(dir.path())?;
        let server_tls = cartesia_gateway::tls::server_config(&certs.cert_file, &certs.key_file)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let stand_in = listener.local_addr()?;
        let never = std::future::pending::<()>();
        tokio::spawn(StandIn::new(API_KEY).serve(listener, server_tls, never));

        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncert_file = {cert:?}\nkey_file = {key:?}\n\
             [session]\nsecret_env = \"BENCH_SESSION_SECRET\"\naudience = \"bench\"\n\
             [upstream]\nbase_url = \"https://{stand_in}\"\nca_file = {ca:?}\n",
            cert = certs.cert_file.display().to_string(),
            key = certs.key_file.display().to_string(),
            ca = certs.ca_file.display().to_string(),
        );
        let config = Config::from_toml_str(&config, std::iter::empty())?;
        let state = Arc::new(Gateway::new(config, |name| match name {
            "BENCH_SESSION_SECRET" => Some(SESSION_SECRET.to_owned()),
            "CARTESIA_API_KEY" => Some(API_KEY.to_owned()),
            _ => None,
        })?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let gateway = listener.local_addr()?;
        let never = std::future::pending::<()>();
        tokio::spawn(cartesia_gateway::serve(listener, Arc::clone(&state), never));

        let tls = (*cartesia_gateway::tls::client_config(Some(&certs.ca_file))?).clone();
        let mut websocket_tls = tls.clone();
        websocket_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let expires = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
        let claims = json!({"sub": "bench", "grants": ["tts"], "aud": "bench", "exp": expires});
        let session = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SESSION_SECRET.as_bytes())?,
        )?;
        let token = mint_token(&http_client(&tls, false), stand_in).await?;
        Ok(Servers {
            _dir: dir,
            tls,
            websocket_tls: Arc::new(websocket_tls),
            state,
            gateway: Target::new("gateway", gateway, &session)?,
            direct: Target::new("direct", stand_in, &token)?,
        })
    }
}

/// Mints a one-hour `tts` access token from the stand-in with the API key.
async fn mint_token(client: &HttpsClient, stand_in: SocketAddr) -> Result<String, BoxError> {
    let body = br#"{"grants": {"tts": true}, "expires_in": 3600}"#;
    let request = Request::post(format!("https://{stand_in}/access-token"))
        .header(AUTHORIZATION, format!("Bearer {API_KEY}"))
        .header(CONTENT_TYPE, "application/json")
        .header(CARTESIA_VERSION, VERSION)
        .body(Full::new(Bytes::from_static(body)))?;
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        return Err(format!("minting a stand-in access token failed with {status}").into());
    }
    let body: Value = serde_json::from_slice(&body)?;
    let token = body["token"].as_str();
    Ok(token
        .ok_or("the stand-in's /access-token response has no token")?
        .to_owned())
}

fn http_client(tls: &rustls::ClientConfig, http2: bool) -> HttpsClient {
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_only();
    let connector = if http2 {
        builder.enable_http2().wrap_connector(connector)
    } else {
        builder.enable_http1().wrap_connector(connector)
    };
    let mut client = Client::builder(TokioExecutor::new());
    client.http2_only(http2);
    client.build(connector)
}

/// Runs and prints the `POST /tts/bytes` rows for both protocols and concurrencies.
async fn run_http_table(servers: &Servers, requests: usize, warmup: usize) -> Result<(), BoxError> {
    println!("\nPOST /tts/bytes: {requests} requests per row after {warmup} warm-up, times in ms.");
    println!("ttfb is the time to the first response body byte. CPU is this process's CPU time");
    println!("per request in µs: client, stand-in and, in gateway rows, the gateway. Compare CPU");
    println!("within one concurrency, because at 1 it also counts waking idle worker threads.");
    let columns = ["ttfb p50", "p90", "p99", "full p50", "p99", "CPU", "req/s"];
    print_line("protocol conc target", columns.map(str::to_owned));
    for (protocol, http2) in [("HTTP/1.1", false), ("HTTP/2", true)] {
        for concurrency in [1, 32] {
            let mut rows = Vec::new();
            for target in [&servers.gateway, &servers.direct] {
                let client = http_client(&servers.tls, http2);
                run_requests(&client, target, concurrency, warmup).await?;
                let run = run_requests(&client, target, concurrency, requests).await?;
                let row = Row::of(run);
                let cells = row.values.iter().enumerate().map(|(i, value)| {
                    let places = if i < 5 { 3 } else { 0 };
                    format!("{value:.places$}")
                });
                let label = format!("{protocol:<9}{concurrency:>4}  {}", target.name);
                print_line(&label, cells.chain([format!("{:.0}", row.rate)]));
                rows.push(row);
            }
            let added = rows[0].values.iter().zip(&rows[1].values).enumerate();
            let cells = added.map(|(i, (gateway, direct))| {
                let places = if i < 5 { 3 } else { 0 };
                format!("{:+.places$}", gateway - direct)
            });
            let rate = format!("{:+.0}%", (rows[0].rate / rows[1].rate - 1.0) * 100.0);
            let label = format!("{protocol:<9}{concurrency:>4}  added");
            print_line(&label, cells.chain([rate]));
        }
    }
    Ok(())
}

/// Runs and prints the TTS WebSocket rows: `sessions` sequential sessions per target.
async fn run_websocket_table(servers: &Servers, sessions: usize) -> Result<(), BoxError> {
    println!("\nGET /tts/websocket: {sessions} sequential sessions per row, times in ms.");
    println!("open is TCP, TLS and the upgrade. first audio is from sending one generation");
    println!("request to the first chunk. It includes the stand-in's wait for its next tokio");
    println!("timer tick (up to about 1 ms) in both rows.");
    let columns = ["open p50", "p99", "audio p50", "p99"];
    print_line("target", columns.map(str::to_owned));
    let mut rows = Vec::new();
    for target in [&servers.gateway, &servers.direct] {
        let mut opened = Vec::with_capacity(sessions);
        let mut first_audio = Vec::with_capacity(sessions);
        for _ in 0..sessions {
            let (open, audio) = websocket_session(servers, target).await?;
            opened.push(open);
            first_audio.push(audio);
        }
        let row = [
            percentile(&mut opened, 50.0),
            percentile(&mut opened, 99.0),
            percentile(&mut first_audio, 50.0),
            percentile(&mut first_audio, 99.0),
        ]
        .map(millis);
        print_line(target.name, row.map(|value| format!("{value:.3}")));
        rows.push(row);
    }
    let added: [f64; 4] = std::array::from_fn(|i| rows[0][i] - rows[1][i]);
    print_line("added", added.map(|value| format!("{value:+.3}")));
    Ok(())
}

/// Prints `label` left-aligned and then each cell right-aligned in 10 characters.
fn print_line(label: &str, cells: impl IntoIterator<Item = String>) {
    let mut line = format!("{label:<LABEL_WIDTH$}");
    for cell in cells {
        line.push_str(&format!("{cell:>10}"));
    }
    println!("{line}");
}

/// Times to the first response body byte and to the end of the body of one request.
struct Sample {
    first_byte: Duration,
    full: Duration,
}

async fn timed_request(client: &HttpsClient, target: &Target) -> Result<Sample, BoxError> {
    let request = Request::post(target.tts_bytes.clone())
        .header(AUTHORIZATION, target.authorization.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(CARTESIA_VERSION, VERSION)
        .body(Full::new(Bytes::from_static(TTS_BYTES_BODY.as_bytes())))?;
    let started = Instant::now();
    let response = timeout(STEP_TIMEOUT, client.request(request)).await??;
    if !response.status().is_success() {
        let status = response.status();
        return Err(format!("POST {} failed with {status}", target.tts_bytes).into());
    }
    let mut body = response.into_body();
    let mut first_byte = None;
    while let Some(frame) = timeout(STEP_TIMEOUT, body.frame()).await? {
        if frame?.data_ref().is_some_and(|data| !data.is_empty()) {
            first_byte.get_or_insert_with(|| started.elapsed());
        }
    }
    let full = started.elapsed();
    let first_byte = first_byte.ok_or("the /tts/bytes response body was empty")?;
    Ok(Sample { first_byte, full })
}

/// The samples of one row, and the wall time and process CPU time it took.
struct Run {
    samples: Vec<Sample>,
    elapsed: Duration,
    cpu: Duration,
}

/// Sends `count` requests from `concurrency` tasks that share `client`.
async fn run_requests(
    client: &HttpsClient,
    target: &Target,
    concurrency: usize,
    count: usize,
) -> Result<Run, BoxError> {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_time()?;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, target, next) = (client.clone(), target.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                samples.push(timed_request(&client, &target).await?);
            }
            Ok::<_, BoxError>(samples)
        }));
    }
    let mut samples = Vec::with_capacity(count);
    for task in tasks {
        samples.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time()?.saturating_sub(cpu_before);
    Ok(Run {
        samples,
        elapsed,
        cpu,
    })
}

/// One row of the HTTP table: time to first byte p50, p90, p99 and full time p50, p99 in
/// milliseconds, CPU time per request in microseconds, and requests per second.
struct Row {
    values: [f64; 6],
    rate: f64,
}

impl Row {
    fn of(run: Run) -> Row {
        let count = run.samples.len() as f64;
        let (mut first_byte, mut full): (Vec<_>, Vec<_>) = run
            .samples
            .iter()
            .map(|sample| (sample.first_byte, sample.full))
            .unzip();
        let [a, b, c, d, e] = [
            percentile(&mut first_byte, 50.0),
            percentile(&mut first_byte, 90.0),
            percentile(&mut first_byte, 99.0),
            percentile(&mut full, 50.0),
            percentile(&mut full, 99.0),
        ]
        .map(millis);
        let cpu_micros = run.cpu.as_secs_f64() * 1e6 / count;
        Row {
            values: [a, b, c, d, e, cpu_micros],
            rate: count / run.elapsed.as_secs_f64(),
        }
    }
}

/// Returns the nearest-rank percentile `p` (0 to 100) of `values`, sorting them in place.
fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort_unstable();
    let rank = (p / 100.0 * values.len() as f64).ceil() as usize;
    let index = rank.saturating_sub(1);
    values.get(index).copied().unwrap_or_default()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Returns the CPU time used so far by the live threads of this process, read from
/// `/proc/self/task/*/schedstat` in nanoseconds. Threads that have exited are not counted.
fn cpu_time() -> Result<Duration, BoxError> {
    let tasks = std::fs::read_dir("/proc/self/task")
        .map_err(|error| format!("reading /proc/self/task failed: {error}"))?;
    let mut nanos = 0;
    for task in tasks {
        // A thread may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        let field = text.split_whitespace().next().unwrap_or_default();
        nanos += field.parse::<u64>().unwrap_or(0);
    }
    Ok(Duration::from_nanos(nanos))
}

/// Opens a TTS WebSocket to `target` over TLS.
async fn open_websocket(servers: &Servers, target: &Target) -> Result<WebSocket, BoxError> {
    let url = format!("wss://localhost:{}/tts/websocket", target.addr.port());
    let mut request = url.into_client_request()?;
    let headers = request.headers_mut();
    headers.insert(AUTHORIZATION, target.authorization.clone());
    headers.insert(CARTESIA_VERSION, HeaderValue::from_static(VERSION));
    let stream = TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let stream = TlsConnector::from(Arc::clone(&servers.websocket_tls))
        .connect(ServerName::try_from("localhost")?, stream)
        .await?;
    let (socket, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(socket)
}

/// Opens a TTS WebSocket, sends one generation request and reads until its `done`. Returns the
/// time to open the socket and the time from sending the request to the first `chunk`.
async fn websocket_session(
    servers: &Servers,
    target: &Target,
) -> Result<(Duration, Duration), BoxError> {
    let started = Instant::now();
    let mut socket = timeout(STEP_TIMEOUT, open_websocket(servers, target)).await??;
    let opened = started.elapsed();

    let sent = Instant::now();
    socket.send(Message::text(TTS_WEBSOCKET_REQUEST)).await?;
    let mut first_audio = None;
    loop {
        let message = timeout(STEP_TIMEOUT, socket.next())
            .await?
            .ok_or("the TTS WebSocket closed before its done message")??;
        let Message::Text(text) = message else {
            continue;
        };
        let event: Value = serde_json::from_str(text.as_str())?;
        match event["type"].as_str() {
            Some("chunk") => {
                first_audio.get_or_insert_with(|| sent.elapsed());
            }
            Some("done") => break,
            other => return Err(format!("unexpected TTS WebSocket message type {other:?}").into()),
        }
    }
    let first_audio = first_audio.ok_or("the TTS WebSocket sent done without a chunk")?;

    socket.close(None).await?;
    // Reads the peer's close frame so that both sides finish the closing handshake.
    while let Ok(Some(Ok(_))) = timeout(STEP_TIMEOUT, socket.next()).await {}
    Ok((opened, first_audio))
}

/// Keeps `count` idle TTS WebSockets open directly, then `count` more through the gateway, and
/// prints the RSS growth per socket of each and the difference, which is the gateway's share.
async fn measure_idle_websockets(
    servers: &Servers,
    count: usize,
    memory: &mut Vec<(String, Memory)>,
) -> Result<(), BoxError> {
    let before = Memory::read()?;
    let mut direct = open_idle(servers, &servers.direct, count).await?;
    let with_direct = Memory::read()?;
    let mut relayed = open_idle(servers, &servers.gateway, count).await?;
    let with_both = Memory::read()?;
    memory.push((format!("{} idle WebSockets open", 2 * count), with_both));

    for socket in direct.iter_mut().chain(relayed.iter_mut()) {
        socket.close(None).await?;
    }
    drop((direct, relayed));
    let still_open = gateway_websockets_open(servers).await;
    memory.push(("after closing them".to_owned(), Memory::read()?));

    let per_socket =
        |from: Memory, to: Memory| to.rss_kib.saturating_sub(from.rss_kib) as f64 / count as f64;
    let direct_kib = per_socket(before, with_direct);
    let relayed_kib = per_socket(with_direct, with_both);
    println!("\n{count} idle TTS WebSockets each way: RSS growth per socket, an estimate in KiB");
    let lines = [
        ("direct: client + stand-in", direct_kib),
        ("through the gateway", relayed_kib),
        ("gateway's two legs", relayed_kib - direct_kib),
    ];
    for (label, kib) in lines {
        print_line(label, [format!("{kib:.1}")]);
    }
    println!("The gateway reports {still_open} TTS WebSockets open after the clients closed them.");
    Ok(())
}

/// Opens `count` TTS WebSockets to `target` from a few tasks, then waits half a second for the
/// relays and the stand-in's sessions to start.
async fn open_idle(
    servers: &Servers,
    target: &Target,
    count: usize,
) -> Result<Vec<WebSocket>, BoxError> {
    let next = AtomicUsize::new(0);
    let openers = (0..IDLE_OPENERS).map(|_| async {
        let mut sockets = Vec::new();
        while next.fetch_add(1, Ordering::Relaxed) < count {
            let open = open_websocket(servers, target);
            sockets.push(timeout(STEP_TIMEOUT, open).await??);
        }
        Ok::<_, BoxError>(sockets)
    });
    let mut sockets = Vec::with_capacity(count);
    for opened in futures_util::future::join_all(openers).await {
        sockets.extend(opened?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(sockets)
}

/// Returns the gateway's `websockets_open` gauge for `/tts/websocket` once it reads 0, or its
/// value after five seconds.
async fn gateway_websockets_open(servers: &Servers) -> f64 {
    let series = r#"cartesia_gateway_websockets_open{route="/tts/websocket"} "#;
    let mut open = f64::NAN;
    for _ in 0..50 {
        let metrics = servers.state.render_metrics();
        open = metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.parse().ok())
            .unwrap_or(0.0);
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    open
}

/// Resident memory from `/proc/self/status`, in KiB.
#[derive(Clone, Copy)]
struct Memory {
    rss_kib: u64,
    peak_kib: u64,
}

impl Memory {
    fn read() -> Result<Memory, BoxError> {
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(|error| format!("reading /proc/self/status failed: {error}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or_else(|| format!("/proc/self/status has no readable {name} line"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }
}
