//! `WS /stt/websocket`: binary audio in, plain-text `finalize` and `close` (or the older `done`)
//! commands, JSON `transcript`, `flush_done`, `done` and `error` messages out.
//!
//! The audio itself is only counted. Each final transcript describes the bytes and seconds received
//! since the previous one, and texts after the first start with a space, so concatenating them
//! verbatim reads well. Cartesia's documentation describes joining final texts that way.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::audio::InputEncoding;
use super::params::query_param;
use super::respond::ApiError;
use super::transcript::{describe_audio, stt_words, word_spans};
use super::websocket::{Event, Socket};

/// Models of the manual-finalize endpoint.
const MODELS: [&str; 3] = ["ink-2", "ink-whisper", "ink-whisper-2025-06-04"];
/// Highest input sample rate accepted.
const MAX_SAMPLE_RATE: u32 = 192_000;

/// The audio parameters every STT WebSocket requires in its query.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AudioParams {
    pub(crate) encoding: InputEncoding,
    pub(crate) sample_rate: u32,
}

impl AudioParams {
    /// Reads `model`, `encoding` and `sample_rate` from the handshake query. A missing or invalid
    /// value makes the handshake fail with 400.
    pub(crate) fn from_query(query: Option<&str>, models: &[&str]) -> Result<Self, ApiError> {
        let example = "connect with ?model=ink-whisper&encoding=pcm_s16le&sample_rate=16000";
        let required = |name: &str| {
            query_param(query, name)
                .filter(|value| !value.is_empty())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "missing_parameter",
                        format!("the query parameter {name} is required; {example}"),
                    )
                })
        };
        let model = required("model")?;
        if !models.contains(&model.as_str()) {
            return Err(ApiError::bad_request(
                "model_not_found",
                format!("model {model:?} is not available here; use one of {models:?}"),
            ));
        }
        let encoding_name = required("encoding")?;
        let encoding = InputEncoding::parse(&encoding_name).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_parameter",
                format!(
                    "unknown encoding {encoding_name:?}; use pcm_s16le, pcm_s32le, pcm_f16le, pcm_f32le, pcm_mulaw or pcm_alaw"
                ),
            )
        })?;
        let sample_rate = required("sample_rate")?
            .parse::<u32>()
            .ok()
            .filter(|rate| (1..=MAX_SAMPLE_RATE).contains(rate))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_parameter",
                    format!("sample_rate must be an integer from 1 to {MAX_SAMPLE_RATE}"),
                )
            })?;
        Ok(Self {
            encoding,
            sample_rate,
        })
    }

    /// Returns the seconds of audio in `bytes` bytes.
    pub(crate) fn seconds(&self, bytes: u64) -> f64 {
        let bytes_per_second =
            self.encoding.bytes_per_sample() as f64 * f64::from(self.sample_rate);
        bytes as f64 / bytes_per_second
    }
}

/// Handshake settings of one connection.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Settings {
    audio: AudioParams,
    language: String,
}

impl Settings {
    pub(crate) fn from_query(query: Option<&str>) -> Result<Self, ApiError> {
        let audio = AudioParams::from_query(query, &MODELS)?;
        let language = query_param(query, "language").unwrap_or_else(|| "en".to_owned());
        Ok(Self { audio, language })
    }
}

/// Audio received and transcripts sent so far.
struct Transcriber {
    settings: Settings,
    pending_bytes: u64,
    finalized_secs: f64,
    finals_sent: usize,
}

impl Transcriber {
    /// Returns the final transcript of the audio received since the last one, if any arrived.
    fn finalize(&mut self, request_id: &str) -> Option<Value> {
        if self.pending_bytes == 0 {
            return None;
        }
        let seconds = self.settings.audio.seconds(self.pending_bytes);
        let description = describe_audio(self.pending_bytes, seconds);
        let words = word_spans(&description, self.finalized_secs, seconds);
        let text = if self.finals_sent == 0 {
            description
        } else {
            format!(" {description}")
        };
        self.pending_bytes = 0;
        self.finalized_secs += seconds;
        self.finals_sent += 1;
        Some(json!({
            "type": "transcript",
            "request_id": request_id,
            "text": text,
            "is_final": true,
            "duration": (seconds * 1000.0).round() / 1000.0,
            "language": self.settings.language,
            "words": stt_words(&words),
        }))
    }
}

/// Runs one STT WebSocket session until the client closes it or sends `close`.
pub(crate) async fn run(mut socket: Socket, settings: Settings) {
    let mut transcriber = Transcriber {
        settings,
        pending_bytes: 0,
        finalized_secs: 0.0,
        finals_sent: 0,
    };
    loop {
        let text = match socket.next_event(None).await {
            Event::Binary(audio) => {
                transcriber.pending_bytes += audio.len() as u64;
                continue;
            }
            Event::Text(text) => text,
            Event::Tick => continue,
            Event::Ended => return,
        };
        let request_id = socket.request_id.clone();
        let closing = match text.trim() {
            "finalize" => false,
            "close" | "done" => true,
            _ => {
                let error = ApiError::bad_request(
                    "invalid_command",
                    "unknown command; send finalize or close as plain text, and audio as binary messages",
                );
                if !socket
                    .send_json(&error.to_ws_message(&request_id, None))
                    .await
                {
                    return;
                }
                continue;
            }
        };
        let mut replies: Vec<Value> = transcriber.finalize(&request_id).into_iter().collect();
        let acknowledgement = if closing { "done" } else { "flush_done" };
        replies.push(json!({"type": acknowledgement, "request_id": request_id}));
        for reply in &replies {
            if !socket.send_json(reply).await {
                return;
            }
        }
        if closing {
            socket.close(CloseCode::Normal, "").await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::from_query(Some(
            "model=ink-whisper&encoding=pcm_s16le&sample_rate=16000",
        ))
        .expect("valid query")
    }

    #[test]
    fn query_requires_model_encoding_and_rate() {
        assert_eq!(settings().audio.sample_rate, 16_000);
        assert_eq!(settings().language, "en");
        let cases = [
            ("encoding=pcm_s16le&sample_rate=16000", "missing_parameter"),
            ("model=ink-whisper&sample_rate=16000", "missing_parameter"),
            ("model=ink-whisper&encoding=pcm_s16le", "missing_parameter"),
            (
                "model=ink-9&encoding=pcm_s16le&sample_rate=16000",
                "model_not_found",
            ),
            (
                "model=ink-whisper&encoding=mp3&sample_rate=16000",
                "invalid_parameter",
            ),
            (
                "model=ink-whisper&encoding=pcm_s16le&sample_rate=0",
                "invalid_parameter",
            ),
            (
                "model=ink-whisper&encoding=pcm_s16le&sample_rate=fast",
                "invalid_parameter",
            ),
        ];
        for (query, code) in cases {
            let error = Settings::from_query(Some(query)).expect_err(query);
            assert_eq!(error.code, code, "{query}");
            assert_eq!(error.status, http::StatusCode::BAD_REQUEST);
        }
        assert!(Settings::from_query(None).is_err());
    }

    #[test]
    fn finals_describe_audio_since_last_final() {
        let mut transcriber = Transcriber {
            settings: settings(),
            pending_bytes: 0,
            finalized_secs: 0.0,
            finals_sent: 0,
        };
        assert!(
            transcriber.finalize("r").is_none(),
            "no audio, no transcript"
        );

        transcriber.pending_bytes = 32_000;
        let first = transcriber.finalize("r").expect("transcript");
        assert_eq!(first["text"], "received 32000 bytes, 1.00 seconds of audio");
        assert_eq!(first["is_final"], true);
        assert_eq!(first["duration"], 1.0);
        assert_eq!(first["words"][0]["word"], "received");
        assert_eq!(first["words"][0]["start"], 0.0);

        transcriber.pending_bytes = 16_000;
        let second = transcriber.finalize("r").expect("transcript");
        assert_eq!(
            second["text"],
            " received 16000 bytes, 0.50 seconds of audio"
        );
        assert_eq!(
            second["words"][0]["start"], 1.0,
            "timings continue after the first final"
        );
    }
}
