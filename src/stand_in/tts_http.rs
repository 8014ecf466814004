//! `POST /tts/bytes` (streamed audio) and `POST /tts/sse` (server-sent events with base64 audio).
//!
//! Both stream from a spawned task through a channel body. The first chunk goes out at once and
//! later chunks follow a short pause, so clients see a real stream. The stream gate and stream
//! break faults apply to both routes.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use http::Response;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::audio::{Tone, duration_ms, wav_header};
use super::body::{self, BodySender};
use super::faults::Faults;
use super::respond::{ResponseBody, new_request_id};
use super::router::{RequestContext, read_json};
use super::transcript::{WordSpan, tts_word_timestamps, word_spans};
use super::tts_request::{Container, Endpoint, TtsRequest, parse_request};

/// Pause between two audio chunks of one stream.
pub(crate) const CHUNK_PAUSE: Duration = Duration::from_millis(10);
/// Cartesia's `status_code` on streamed chunk, timestamps and done events.
pub(crate) const STREAM_STATUS: u16 = 206;
const FILE_ID_HEADER: HeaderName = HeaderName::from_static("cartesia-file-id");

/// Handles `POST /tts/bytes`.
pub(crate) async fn bytes(context: RequestContext, body: Incoming) -> Response<ResponseBody> {
    let request = match read_tts_request(&context, body, Endpoint::Bytes).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let tone = tone_for(&request);
    let header = match request.output.container {
        Container::Wav => Some(wav_header(
            request.output.encoding,
            request.output.sample_rate,
            tone.total_samples(),
        )),
        Container::Raw => None,
    };
    let (sender, response_body) = body::channel();
    let pacer = Pacer::new(&context.shared.faults);
    tokio::spawn(stream_bytes(tone, header, sender, pacer));

    let content_type = match request.output.container {
        Container::Wav => "audio/wav",
        Container::Raw => "application/octet-stream",
    };
    let mut response = Response::new(response_body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if request.save {
        let file_id = format!("file_{}", new_request_id().replace('-', ""));
        if let Ok(value) = HeaderValue::from_str(&file_id) {
            response.headers_mut().insert(FILE_ID_HEADER, value);
        }
    }
    response
}

/// Handles `POST /tts/sse`.
pub(crate) async fn sse(context: RequestContext, body: Incoming) -> Response<ResponseBody> {
    let request = match read_tts_request(&context, body, Endpoint::Sse).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let tone = tone_for(&request);
    let words = if request.add_timestamps {
        word_spans(&request.transcript, 0.0, tone.total_secs())
    } else {
        Vec::new()
    };
    let (sender, response_body) = body::channel();
    let pacer = Pacer::new(&context.shared.faults);
    tokio::spawn(stream_events(
        tone,
        words,
        request.context_id,
        sender,
        pacer,
    ));

    let mut response = Response::new(response_body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn read_tts_request(
    context: &RequestContext,
    body: Incoming,
    endpoint: Endpoint,
) -> Result<TtsRequest, Response<ResponseBody>> {
    let json = read_json(context, body)
        .await
        .map_err(|error| context.error(error))?;
    parse_request(&json, endpoint).map_err(|error| context.error(error))
}

fn tone_for(request: &TtsRequest) -> Tone {
    let duration = duration_ms(&request.transcript, request.speed);
    Tone::new(
        request.output.encoding,
        request.output.sample_rate,
        duration,
    )
}

/// Paces a stream and applies the stream gate and stream break faults, read once when the stream
/// starts.
struct Pacer {
    gate: Option<Arc<Semaphore>>,
    break_after: Option<u64>,
    chunks_sent: u64,
    last_chunk_at: Instant,
}

impl Pacer {
    fn new(faults: &Faults) -> Self {
        Self {
            gate: faults.stream_gate(),
            break_after: faults.break_after_chunks(),
            chunks_sent: 0,
            last_chunk_at: Instant::now(),
        }
    }

    fn must_break(&self) -> bool {
        self.break_after
            .is_some_and(|limit| self.chunks_sent >= limit)
    }

    /// Waits until the next chunk may go out. Returns false when the stream must break instead, or
    /// when the client has gone away while the stream waited.
    async fn before_chunk(&mut self, sender: &BodySender) -> bool {
        if self.must_break() {
            return false;
        }
        if self.chunks_sent > 0 {
            tokio::time::sleep(CHUNK_PAUSE).await;
            return self.pass_gate(sender).await;
        }
        true
    }

    /// Waits until the response may end. Returns false when the stream must break instead, or when
    /// the client has gone away while the stream waited.
    async fn before_end(&mut self, sender: &BodySender) -> bool {
        if self.must_break() {
            return false;
        }
        self.pass_gate(sender).await
    }

    /// Takes one permit from the stream gate, if there is one. Returns false when the client goes
    /// away first, so a gated stream whose client left does not wait forever.
    async fn pass_gate(&self, sender: &BodySender) -> bool {
        let Some(gate) = &self.gate else {
            return true;
        };
        tokio::select! {
            permit = gate.acquire() => {
                // A closed semaphore opens the gate for good.
                if let Ok(permit) = permit {
                    permit.forget();
                }
                true
            }
            () = sender.closed() => false,
        }
    }

    /// Counts a sent chunk and returns the milliseconds since the previous one, reported as
    /// `step_time`.
    fn chunk_sent(&mut self) -> f64 {
        let now = Instant::now();
        let step = now.duration_since(self.last_chunk_at).as_secs_f64() * 1000.0;
        self.last_chunk_at = now;
        self.chunks_sent += 1;
        (step * 1000.0).round() / 1000.0
    }
}

const BREAK_REASON: &str = "stream broken by the stand-in's break_stream_after fault";

/// Ends a stream that may not continue: with an error when the break fault is due, quietly when the
/// client has gone away.
async fn stop_stream(pacer: &Pacer, sender: BodySender) {
    if pacer.must_break() {
        sender.abort(BREAK_REASON).await;
    }
}

async fn stream_bytes(mut tone: Tone, header: Option<Bytes>, sender: BodySender, mut pacer: Pacer) {
    let mut header = header;
    while let Some(audio) = tone.next_chunk() {
        if !pacer.before_chunk(&sender).await {
            return stop_stream(&pacer, sender).await;
        }
        let frame = match header.take() {
            Some(header) => {
                let mut joined = BytesMut::with_capacity(header.len() + audio.len());
                joined.extend_from_slice(&header);
                joined.extend_from_slice(&audio);
                joined.freeze()
            }
            None => audio,
        };
        if !sender.send(frame).await {
            return;
        }
        pacer.chunk_sent();
    }
    if !pacer.before_end(&sender).await {
        stop_stream(&pacer, sender).await;
    }
}

async fn stream_events(
    mut tone: Tone,
    words: Vec<WordSpan>,
    context_id: Option<String>,
    sender: BodySender,
    mut pacer: Pacer,
) {
    let mut next_word = 0;
    while let Some(audio) = tone.next_chunk() {
        if !pacer.before_chunk(&sender).await {
            return stop_stream(&pacer, sender).await;
        }
        let step_time = pacer.chunk_sent();
        let chunk = json!({
            "type": "chunk",
            "data": BASE64.encode(&audio),
            "done": false,
            "status_code": STREAM_STATUS,
            "step_time": step_time,
        });
        if !sender.send(sse_event(chunk, context_id.as_deref())).await {
            return;
        }
        let spoken = words[next_word..]
            .iter()
            .take_while(|word| word.end <= tone.produced_secs() + 1e-9)
            .count();
        if spoken > 0 {
            let event = timestamps_event(&words[next_word..next_word + spoken]);
            next_word += spoken;
            if !sender.send(sse_event(event, context_id.as_deref())).await {
                return;
            }
        }
    }
    if next_word < words.len() {
        let event = timestamps_event(&words[next_word..]);
        if !sender.send(sse_event(event, context_id.as_deref())).await {
            return;
        }
    }
    if !pacer.before_end(&sender).await {
        return stop_stream(&pacer, sender).await;
    }
    let done = json!({"type": "done", "done": true, "status_code": STREAM_STATUS});
    sender.send(sse_event(done, context_id.as_deref())).await;
}

fn timestamps_event(words: &[WordSpan]) -> Value {
    json!({
        "type": "timestamps",
        "done": false,
        "status_code": STREAM_STATUS,
        "word_timestamps": tts_word_timestamps(words),
    })
}

/// Formats one SSE message whose `event:` name is the payload's `type`, adding `context_id` when
/// the request had one.
fn sse_event(mut payload: Value, context_id: Option<&str>) -> Bytes {
    if let (Some(context_id), Some(object)) = (context_id, payload.as_object_mut()) {
        object.insert("context_id".to_owned(), Value::from(context_id));
    }
    let event = payload["type"].as_str().unwrap_or("message").to_owned();
    Bytes::from(format!("event: {event}\ndata: {payload}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_event_has_name_data_and_context() {
        let event = sse_event(json!({"type": "done", "done": true}), Some("ctx-1"));
        let text = std::str::from_utf8(&event).expect("UTF-8");
        assert!(text.starts_with("event: done\ndata: {"));
        assert!(text.ends_with("}\n\n"));
        let data = text
            .lines()
            .nth(1)
            .expect("data line")
            .trim_start_matches("data: ");
        let parsed: Value = serde_json::from_str(data).expect("JSON data");
        assert_eq!(parsed["context_id"], "ctx-1");
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_breaks_after_limit() {
        let faults = Faults::default();
        faults.break_stream_after(Some(1));
        let (sender, _body) = body::channel();
        let mut pacer = Pacer::new(&faults);
        assert!(pacer.before_chunk(&sender).await);
        pacer.chunk_sent();
        assert!(!pacer.before_chunk(&sender).await);
        assert!(!pacer.before_end(&sender).await);
        assert!(pacer.must_break());
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_waits_for_gate_after_first_chunk() {
        let faults = Faults::default();
        let gate = Arc::new(Semaphore::new(0));
        faults.set_stream_gate(Some(gate.clone()));
        let (sender, _body) = body::channel();
        let mut pacer = Pacer::new(&faults);
        assert!(
            pacer.before_chunk(&sender).await,
            "the first chunk is not gated"
        );
        pacer.chunk_sent();

        let waiting =
            tokio::time::timeout(Duration::from_secs(1), pacer.before_chunk(&sender)).await;
        assert!(waiting.is_err(), "the second chunk waits for a permit");
        gate.add_permits(1);
        assert!(pacer.before_chunk(&sender).await);
        assert_eq!(gate.available_permits(), 0, "the permit is consumed");
    }

    #[tokio::test(start_paused = true)]
    async fn gated_stream_stops_when_client_leaves() {
        let faults = Faults::default();
        faults.set_stream_gate(Some(Arc::new(Semaphore::new(0))));
        let (sender, body) = body::channel();
        let mut pacer = Pacer::new(&faults);
        pacer.chunk_sent();
        drop(body);
        assert!(!pacer.before_chunk(&sender).await);
        assert!(
            !pacer.must_break(),
            "a departed client is not a break fault"
        );
    }
}
