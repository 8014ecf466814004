//! `WS /stt/turns/websocket`: binary audio in, turn events out (`connected`, `turn.start`,
//! `turn.update`, `turn.eager_end`, `turn.resume`, `turn.end`), with JSON `{"type": "close"}` and
//! `{"type": "config"}` commands.
//!
//! Turns are found by level: a binary message whose RMS level is at least [`SPEECH_LEVEL`] is
//! speech. Each message is judged as a whole, so clients should send audio in short pieces
//! (Cartesia suggests 100 ms).

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::audio::rms_level;
use super::params::query_param;
use super::respond::ApiError;
use super::stt_ws::AudioParams;
use super::transcript::describe_audio;
use super::websocket::{Event, Socket};

const MODELS: [&str; 1] = ["ink-2"];
/// RMS level, relative to full scale, from which a message counts as speech (about -34 dBFS).
const SPEECH_LEVEL: f64 = 0.02;
/// Silence after speech before `turn.eager_end`.
const EAGER_END_SILENCE_SECS: f64 = 0.3;
/// Silence after speech before `turn.end`.
const END_SILENCE_SECS: f64 = 0.6;
/// Speech within a turn between two `turn.update` events.
const UPDATE_INTERVAL_SECS: f64 = 0.5;

/// Turn detection settings, range-checked like Cartesia's. The detector does not use them (see the
/// module documentation of the stand-in).
#[derive(Clone, Copy, Debug, PartialEq)]
struct TurnConfig {
    start_threshold: f64,
    eager_end_threshold: f64,
    end_threshold: f64,
    end_timeout_ms: f64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            start_threshold: 0.8,
            eager_end_threshold: 0.4,
            end_threshold: 0.2,
            end_timeout_ms: 5600.0,
        }
    }
}

impl TurnConfig {
    /// Overrides the fields present in `lookup`, which maps a field name to its raw value.
    fn merged(
        mut self,
        lookup: impl Fn(&str) -> Option<Value>,
        prefix: &str,
    ) -> Result<Self, ApiError> {
        let fields: [(&str, &mut f64, f64, f64); 4] = [
            ("start_threshold", &mut self.start_threshold, 0.5, 0.9),
            (
                "eager_end_threshold",
                &mut self.eager_end_threshold,
                0.3,
                0.6,
            ),
            ("end_threshold", &mut self.end_threshold, 0.05, 0.5),
            ("end_timeout_ms", &mut self.end_timeout_ms, 640.0, 11200.0),
        ];
        for (name, slot, min, max) in fields {
            let Some(raw) = lookup(name) else { continue };
            let value = raw
                .as_f64()
                .or_else(|| raw.as_str().and_then(|text| text.parse().ok()))
                .filter(|value| (min..=max).contains(value))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_parameter",
                        format!("{prefix}{name} must be a number from {min} to {max}"),
                    )
                })?;
            *slot = value;
        }
        let ordered = self.end_threshold < self.eager_end_threshold
            && self.eager_end_threshold < self.start_threshold;
        if !ordered {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "turn thresholds must satisfy end < eager end < start",
            ));
        }
        Ok(self)
    }
}

/// Handshake settings of one connection.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Settings {
    audio: AudioParams,
    config: TurnConfig,
}

impl Settings {
    pub(crate) fn from_query(query: Option<&str>) -> Result<Self, ApiError> {
        let audio = AudioParams::from_query(query, &MODELS)?;
        let lookup = |name: &str| query_param(query, &format!("turn_{name}")).map(Value::String);
        let config = TurnConfig::default().merged(lookup, "turn_")?;
        Ok(Self { audio, config })
    }
}

/// Audio of the turn in progress.
struct Turn {
    bytes: u64,
    secs: f64,
    silence_secs: f64,
    since_update_secs: f64,
    eager_ended: bool,
}

impl Turn {
    fn transcript(&self) -> String {
        describe_audio(self.bytes, self.secs)
    }
}

struct Detector {
    audio: AudioParams,
    turn: Option<Turn>,
}

impl Detector {
    /// Takes one binary message and returns the events it causes.
    fn push_audio(&mut self, audio: &[u8], request_id: &str) -> Vec<Value> {
        let secs = self.audio.seconds(audio.len() as u64);
        let speech = rms_level(self.audio.encoding, audio) >= SPEECH_LEVEL;
        let mut events = Vec::new();
        let turn = match &mut self.turn {
            Some(turn) => turn,
            None if speech => {
                events.push(json!({"type": "turn.start", "request_id": request_id}));
                self.turn.insert(Turn {
                    bytes: 0,
                    secs: 0.0,
                    silence_secs: 0.0,
                    since_update_secs: 0.0,
                    eager_ended: false,
                })
            }
            None => return events,
        };
        turn.bytes += audio.len() as u64;
        turn.secs += secs;
        if speech {
            // Only speech changes the transcript, so only speech counts towards the next update.
            turn.since_update_secs += secs;
            turn.silence_secs = 0.0;
            if turn.eager_ended {
                turn.eager_ended = false;
                events.push(json!({"type": "turn.resume", "request_id": request_id}));
            }
        } else {
            turn.silence_secs += secs;
        }
        if turn.since_update_secs >= UPDATE_INTERVAL_SECS {
            turn.since_update_secs = 0.0;
            events.push(turn_event("turn.update", request_id, turn));
        }
        if !turn.eager_ended && turn.silence_secs >= EAGER_END_SILENCE_SECS {
            turn.eager_ended = true;
            events.push(turn_event("turn.eager_end", request_id, turn));
        }
        if turn.silence_secs >= END_SILENCE_SECS {
            events.extend(self.end_turn(request_id));
        }
        events
    }

    /// Ends the turn in progress, if any.
    fn end_turn(&mut self, request_id: &str) -> Option<Value> {
        let turn = self.turn.take()?;
        Some(turn_event("turn.end", request_id, &turn))
    }
}

fn turn_event(kind: &str, request_id: &str, turn: &Turn) -> Value {
    json!({"type": kind, "request_id": request_id, "transcript": turn.transcript()})
}

/// Runs one turn-taking session until the client closes it or sends `{"type": "close"}`.
pub(crate) async fn run(mut socket: Socket, settings: Settings) {
    let request_id = socket.request_id.clone();
    let mut config = settings.config;
    let mut detector = Detector {
        audio: settings.audio,
        turn: None,
    };
    if !socket
        .send_json(&json!({"type": "connected", "request_id": request_id}))
        .await
    {
        return;
    }
    loop {
        let (replies, closing) = match socket.next_event(None).await {
            Event::Binary(audio) => (detector.push_audio(&audio, &request_id), false),
            Event::Text(text) => match command(&text, config) {
                Ok(Command::Close) => (detector.end_turn(&request_id).into_iter().collect(), true),
                Ok(Command::Config(updated)) => {
                    config = updated;
                    (Vec::new(), false)
                }
                Err(error) => (vec![error.to_ws_message(&request_id, None)], false),
            },
            Event::Tick => continue,
            Event::Ended => return,
        };
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

enum Command {
    Close,
    Config(TurnConfig),
}

fn command(text: &str, config: TurnConfig) -> Result<Command, ApiError> {
    let invalid = |message: &str| ApiError::bad_request("invalid_command", message);
    let message: Value = serde_json::from_str(text)
        .map_err(|_| invalid("commands are JSON text messages such as {\"type\": \"close\"}"))?;
    match message.get("type").and_then(Value::as_str) {
        Some("close") => Ok(Command::Close),
        Some("config") => {
            let turn = message.get("turn").cloned().unwrap_or(Value::Null);
            if !(turn.is_object() || turn.is_null()) {
                return Err(invalid("config.turn must be an object"));
            }
            let lookup = |name: &str| turn.get(name).filter(|value| !value.is_null()).cloned();
            config.merged(lookup, "turn.").map(Command::Config)
        }
        _ => Err(invalid(
            "unknown command; send {\"type\": \"close\"} or {\"type\": \"config\"}",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stand_in::audio::{Encoding, Tone};

    const QUERY: &str = "model=ink-2&encoding=pcm_s16le&sample_rate=16000";

    fn detector() -> Detector {
        let settings = Settings::from_query(Some(QUERY)).expect("valid query");
        Detector {
            audio: settings.audio,
            turn: None,
        }
    }

    fn tone_100ms() -> Vec<u8> {
        Tone::new(Encoding::PcmS16le, 16_000, 100.0)
            .next_chunk()
            .expect("chunk")
            .to_vec()
    }

    fn kinds(events: &[Value]) -> Vec<String> {
        events
            .iter()
            .map(|event| event["type"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    #[test]
    fn speech_then_silence_makes_a_turn() {
        let mut detector = detector();
        let mut events = detector.push_audio(&[0u8; 3200], "r");
        assert!(events.is_empty(), "silence before speech starts no turn");
        for _ in 0..5 {
            events.extend(detector.push_audio(&tone_100ms(), "r"));
        }
        for _ in 0..6 {
            events.extend(detector.push_audio(&[0u8; 3200], "r"));
        }
        assert_eq!(
            kinds(&events),
            ["turn.start", "turn.update", "turn.eager_end", "turn.end"]
        );
        assert_eq!(
            events[3]["transcript"],
            "received 35200 bytes, 1.10 seconds of audio"
        );
        assert!(detector.turn.is_none());
    }

    #[test]
    fn speech_after_eager_end_resumes() {
        let mut detector = detector();
        let mut events = detector.push_audio(&tone_100ms(), "r");
        for _ in 0..3 {
            events.extend(detector.push_audio(&[0u8; 3200], "r"));
        }
        events.extend(detector.push_audio(&tone_100ms(), "r"));
        events.extend(detector.end_turn("r"));
        assert_eq!(
            kinds(&events),
            ["turn.start", "turn.eager_end", "turn.resume", "turn.end"]
        );
    }

    #[test]
    fn query_thresholds_are_range_checked() {
        let ok = format!("{QUERY}&turn_end_timeout_ms=640&turn_start_threshold=0.9");
        assert!(Settings::from_query(Some(&ok)).is_ok());
        for extra in [
            "turn_end_timeout_ms=100",
            "turn_start_threshold=0.95",
            "turn_end_threshold=x",
        ] {
            let query = format!("{QUERY}&{extra}");
            assert!(Settings::from_query(Some(&query)).is_err(), "{extra}");
        }
        let ink_whisper = "model=ink-whisper&encoding=pcm_s16le&sample_rate=16000";
        assert!(
            Settings::from_query(Some(ink_whisper)).is_err(),
            "turns need ink-2"
        );
    }

    #[test]
    fn commands_parse_and_validate() {
        let config = TurnConfig::default();
        assert!(matches!(
            command(r#"{"type":"close"}"#, config),
            Ok(Command::Close)
        ));
        let Ok(Command::Config(updated)) =
            command(r#"{"type":"config","turn":{"end_threshold":0.1}}"#, config)
        else {
            panic!("expected a config command");
        };
        assert_eq!(updated.end_threshold, 0.1);
        assert!(command(r#"{"type":"config","turn":{"end_threshold":0.7}}"#, config).is_err());
        assert!(
            command(
                r#"{"type":"config","turn":{"start_threshold":0.35}}"#,
                config
            )
            .is_err()
        );
        assert!(command("close", config).is_err());
        assert!(command(r#"{"type":"finalize"}"#, config).is_err());
    }
}
