//! `WS /tts/websocket`: generation requests grouped into contexts. The server sends `chunk`,
//! `timestamps`, `flush_done`, `done` and `error` text messages.
//!
//! Each request's transcript becomes one queued speech job of its context. `flush: true` queues a
//! `flush_done` after it, and `continue: false` queues the context's `done`, after which the
//! context accepts no more input. Contexts take turns: every step sends one 100 ms chunk of the
//! next context with work, and steps are 10 ms apart. Messages for one context keep the order of
//! its requests.

use std::collections::VecDeque;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::audio::{Tone, duration_ms};
use super::respond::ApiError;
use super::transcript::{WordSpan, tts_word_timestamps, word_spans};
use super::tts_http::{CHUNK_PAUSE, STREAM_STATUS};
use super::tts_request::{TtsRequest, WsInput, parse_ws_input};
use super::websocket::{Event, Socket};

/// Most contexts one connection may have open at once.
const MAX_CONTEXTS: usize = 256;

/// Runs one TTS WebSocket session until the client or the server closes it.
pub(crate) async fn run(mut socket: Socket) {
    let mut session = Session::default();
    let mut next_step_at = Instant::now();
    loop {
        let tick_at = session.has_work().then_some(next_step_at);
        let replies = match socket.next_event(tick_at).await {
            Event::Text(text) => session.accept(&text, &socket.request_id),
            Event::Binary(_) => {
                let error = invalid("binary messages are not supported; send JSON text messages");
                vec![error.to_ws_message(&socket.request_id, None)]
            }
            Event::Tick => {
                next_step_at = Instant::now() + CHUNK_PAUSE;
                session.step()
            }
            Event::Ended => return,
        };
        for reply in &replies {
            if !socket.send_json(reply).await {
                return;
            }
        }
    }
}

fn invalid(message: &str) -> ApiError {
    ApiError::bad_request("invalid_request", message)
}

/// Audio still to be sent for one request.
struct Speech {
    tone: Tone,
    /// Start of this audio within the context, in seconds.
    start_secs: f64,
    words: Vec<WordSpan>,
    next_word: usize,
}

enum Job {
    Speak(Speech),
    FlushDone,
    Done,
}

struct Context {
    id: String,
    jobs: VecDeque<Job>,
    /// Number of the current flush segment, starting at 1.
    flush_id: u64,
    /// Seconds of audio planned for this context so far, where the next speech job starts.
    planned_secs: f64,
    /// Set by `continue: false` or a cancel. Later input for this context is an error.
    input_closed: bool,
    /// Set by a cancel. The context is dropped without `done` once its current job ends.
    cancelled: bool,
}

impl Context {
    fn new(id: String) -> Self {
        Self {
            id,
            jobs: VecDeque::new(),
            flush_id: 1,
            planned_secs: 0.0,
            input_closed: false,
            cancelled: false,
        }
    }
}

/// The contexts of one connection and the time of the last step.
#[derive(Default)]
struct Session {
    contexts: Vec<Context>,
    cursor: usize,
    last_step_at: Option<Instant>,
}

impl Session {
    fn has_work(&self) -> bool {
        self.contexts.iter().any(|context| !context.jobs.is_empty())
    }

    /// Handles one client text message and returns the immediate replies (errors only).
    fn accept(&mut self, text: &str, request_id: &str) -> Vec<Value> {
        let message: Value = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(error) => {
                let error = ApiError::bad_request(
                    "invalid_json",
                    format!("the message is not valid JSON: {error}"),
                );
                return vec![error.to_ws_message(request_id, None)];
            }
        };
        let context_id = message.get("context_id").and_then(Value::as_str);
        let result = parse_ws_input(&message).and_then(|input| match input {
            WsInput::Cancel { context_id } => {
                self.cancel(&context_id);
                Ok(())
            }
            WsInput::Generate(request) => self.enqueue(request),
        });
        match result {
            Ok(()) => Vec::new(),
            Err(error) => vec![error.to_ws_message(request_id, context_id)],
        }
    }

    fn enqueue(&mut self, request: TtsRequest) -> Result<(), ApiError> {
        let id = request.context_id.clone().unwrap_or_default();
        let index = match self.contexts.iter().position(|context| context.id == id) {
            Some(index) if self.contexts[index].input_closed => {
                return Err(invalid(&format!(
                    "context {id:?} takes no more input after continue: false or cancel; use a new context_id"
                )));
            }
            Some(index) => index,
            None if self.contexts.len() >= MAX_CONTEXTS => {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_contexts",
                    format!("at most {MAX_CONTEXTS} contexts may be open on one connection"),
                ));
            }
            None => {
                self.contexts.push(Context::new(id));
                self.contexts.len() - 1
            }
        };
        let context = &mut self.contexts[index];
        if !request.transcript.trim().is_empty() {
            let duration = duration_ms(&request.transcript, request.speed);
            let tone = Tone::new(
                request.output.encoding,
                request.output.sample_rate,
                duration,
            );
            let words = if request.add_timestamps {
                word_spans(&request.transcript, context.planned_secs, tone.total_secs())
            } else {
                Vec::new()
            };
            let start_secs = context.planned_secs;
            context.planned_secs += tone.total_secs();
            context.jobs.push_back(Job::Speak(Speech {
                tone,
                start_secs,
                words,
                next_word: 0,
            }));
        }
        if request.flush {
            context.jobs.push_back(Job::FlushDone);
        }
        if !request.continue_ {
            context.jobs.push_back(Job::Done);
            context.input_closed = true;
        }
        Ok(())
    }

    /// Drops the context's queued work but lets a chunk stream already under way finish.
    fn cancel(&mut self, id: &str) {
        let Some(context) = self.contexts.iter_mut().find(|context| context.id == id) else {
            return;
        };
        let started = match context.jobs.front() {
            Some(Job::Speak(speech)) => speech.tone.produced_secs() > 0.0,
            _ => false,
        };
        context.jobs.truncate(usize::from(started));
        context.input_closed = true;
        context.cancelled = true;
        self.contexts
            .retain(|context| !(context.cancelled && context.jobs.is_empty()));
    }

    /// Sends the next chunk of the next context with work, plus any `flush_done` or `done` due
    /// before it.
    fn step(&mut self) -> Vec<Value> {
        let now = Instant::now();
        let step_ms = self
            .last_step_at
            .map_or(0.0, |last| now.duration_since(last).as_secs_f64() * 1000.0);
        self.last_step_at = Some(now);

        let count = self.contexts.len();
        let Some(index) = (0..count)
            .map(|offset| (self.cursor + offset) % count)
            .find(|&index| !self.contexts[index].jobs.is_empty())
        else {
            return Vec::new();
        };
        self.cursor = index + 1;
        let (messages, finished) = run_context_step(&mut self.contexts[index], step_ms);
        let context = &self.contexts[index];
        if finished || (context.cancelled && context.jobs.is_empty()) {
            self.contexts.remove(index);
        }
        messages
    }
}

/// Runs jobs of one context until one audio chunk is sent or the queue is empty. Returns the
/// messages and whether the context sent `done`.
fn run_context_step(context: &mut Context, step_ms: f64) -> (Vec<Value>, bool) {
    let mut messages = Vec::new();
    while let Some(job) = context.jobs.front_mut() {
        match job {
            Job::Speak(speech) => {
                speak(
                    &context.id,
                    context.flush_id,
                    speech,
                    step_ms,
                    &mut messages,
                );
                if speech.tone.produced_secs() >= speech.tone.total_secs() {
                    context.jobs.pop_front();
                }
                return (messages, false);
            }
            Job::FlushDone => {
                messages.push(json!({
                    "type": "flush_done",
                    "context_id": context.id,
                    "done": false,
                    "flush_done": true,
                    "flush_id": context.flush_id,
                    "status_code": STREAM_STATUS,
                }));
                context.flush_id += 1;
                context.jobs.pop_front();
            }
            Job::Done => {
                messages.push(json!({
                    "type": "done",
                    "context_id": context.id,
                    "done": true,
                    "status_code": STREAM_STATUS,
                }));
                context.jobs.clear();
                return (messages, true);
            }
        }
    }
    (messages, false)
}

/// Appends one `chunk` message and, when asked for, a `timestamps` message for the words now
/// spoken.
fn speak(
    context_id: &str,
    flush_id: u64,
    speech: &mut Speech,
    step_ms: f64,
    messages: &mut Vec<Value>,
) {
    let Some(audio) = speech.tone.next_chunk() else {
        return;
    };
    messages.push(json!({
        "type": "chunk",
        "context_id": context_id,
        "data": BASE64.encode(&audio),
        "done": false,
        "status_code": STREAM_STATUS,
        "step_time": (step_ms * 1000.0).round() / 1000.0,
        "flush_id": flush_id,
    }));
    let finished = speech.tone.produced_secs() >= speech.tone.total_secs();
    let spoken_until = speech.start_secs + speech.tone.produced_secs();
    let remaining = &speech.words[speech.next_word..];
    let spoken = if finished {
        remaining.len()
    } else {
        remaining
            .iter()
            .take_while(|word| word.end <= spoken_until + 1e-9)
            .count()
    };
    if spoken > 0 {
        messages.push(json!({
            "type": "timestamps",
            "context_id": context_id,
            "done": false,
            "status_code": STREAM_STATUS,
            "word_timestamps": tts_word_timestamps(&remaining[..spoken]),
            "flush_id": flush_id,
        }));
        speech.next_word += spoken;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(context_id: &str, transcript: &str, extra: Value) -> String {
        let mut message = json!({
            "context_id": context_id,
            "model_id": "sonic-3",
            "transcript": transcript,
            "voice": {"mode": "id", "id": "voice"},
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 8000},
        });
        for (key, value) in extra.as_object().expect("object") {
            message[key] = value.clone();
        }
        message.to_string()
    }

    fn drain(session: &mut Session) -> Vec<Value> {
        let mut all = Vec::new();
        while session.has_work() {
            all.extend(session.step());
        }
        all
    }

    fn types(messages: &[Value]) -> Vec<&str> {
        messages
            .iter()
            .map(|m| m["type"].as_str().unwrap_or("?"))
            .collect()
    }

    #[test]
    fn context_streams_chunks_flush_and_done() {
        let mut session = Session::default();
        // 5 characters at 60 ms = 300 ms = three chunks.
        assert!(
            session
                .accept(
                    &request("c1", "hello", json!({"continue": true, "flush": true})),
                    "r"
                )
                .is_empty()
        );
        assert!(
            session
                .accept(&request("c1", "", json!({"continue": false})), "r")
                .is_empty()
        );
        let messages = drain(&mut session);
        assert_eq!(
            types(&messages),
            ["chunk", "chunk", "chunk", "flush_done", "done"]
        );
        assert_eq!(messages[0]["flush_id"], 1);
        assert_eq!(messages[3]["flush_id"], 1);
        assert_eq!(messages[4]["context_id"], "c1");
        let audio = BASE64
            .decode(messages[0]["data"].as_str().expect("data"))
            .expect("base64");
        assert_eq!(audio.len(), 1600);
        assert!(session.contexts.is_empty());
    }

    #[test]
    fn timestamps_follow_audio() {
        let mut session = Session::default();
        session.accept(
            &request("c1", "hi there", json!({"add_timestamps": true})),
            "r",
        );
        let messages = drain(&mut session);
        let words: Vec<Value> = messages
            .iter()
            .filter(|m| m["type"] == "timestamps")
            .flat_map(|m| {
                m["word_timestamps"]["words"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(words, vec![json!("hi"), json!("there")]);
        assert_eq!(types(&messages).last(), Some(&"done"));
    }

    #[test]
    fn contexts_take_turns() {
        let mut session = Session::default();
        session.accept(&request("a", "hello", json!({})), "r");
        session.accept(&request("b", "hello", json!({})), "r");
        let order: Vec<String> = drain(&mut session)
            .iter()
            .filter(|m| m["type"] == "chunk")
            .map(|m| m["context_id"].as_str().unwrap_or("?").to_owned())
            .collect();
        assert_eq!(order, ["a", "b", "a", "b", "a", "b"]);
    }

    #[test]
    fn cancel_drops_queued_work_without_done() {
        let mut session = Session::default();
        session.accept(&request("c1", "hello", json!({"continue": true})), "r");
        session.accept(&request("c1", "world", json!({"continue": false})), "r");
        let first = session.step();
        assert_eq!(types(&first), ["chunk"]);
        session.accept(
            &json!({"context_id": "c1", "cancel": true}).to_string(),
            "r",
        );
        let rest = drain(&mut session);
        assert_eq!(
            types(&rest),
            ["chunk", "chunk"],
            "only the started request finishes"
        );
        assert!(session.contexts.is_empty());
    }

    #[test]
    fn invalid_messages_get_error_replies() {
        let mut session = Session::default();
        let replies = session.accept("not json", "req-1");
        assert_eq!(replies[0]["type"], "error");
        assert_eq!(replies[0]["status_code"], 400);
        assert_eq!(replies[0]["request_id"], "req-1");

        let wav = json!({"output_format": {"container": "wav", "encoding": "pcm_s16le", "sample_rate": 8000}});
        let replies = session.accept(&request("c9", "hello", wav), "req-1");
        assert_eq!(replies[0]["context_id"], "c9");
        assert!(
            replies[0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("raw"))
        );

        session.accept(&request("c2", "hello", json!({"continue": false})), "req-1");
        let replies = session.accept(&request("c2", "again", json!({})), "req-1");
        assert_eq!(replies[0]["type"], "error");
    }
}
