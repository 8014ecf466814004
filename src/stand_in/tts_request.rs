//! Validation of TTS generation requests, shared by `/tts/bytes`, `/tts/sse` and `/tts/websocket`.
//!
//! Fields follow Cartesia's API: `model_id`, `transcript`, `voice` (a voice ID string, `{"id"}` or
//! the older `{"mode": "id", "id"}`), `output_format`, `language` or `locale` (not both),
//! `generation_config`, the deprecated `speed`, and per endpoint `save`, `add_timestamps`,
//! `context_id`, `continue`, `flush` and `max_buffer_delay_ms`. A `null` counts as absent. Unknown
//! fields are ignored.

use serde_json::{Map, Value};

use super::audio::{Encoding, SAMPLE_RATES};
use super::respond::ApiError;

const INVALID: &str = "invalid_request";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Bytes,
    Sse,
    WebSocket,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Container {
    Raw,
    Wav,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutputFormat {
    pub(crate) container: Container,
    pub(crate) encoding: Encoding,
    pub(crate) sample_rate: u32,
}

/// A validated generation request. The model and voice are checked but not kept, because the tone
/// does not depend on them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TtsRequest {
    pub(crate) transcript: String,
    pub(crate) output: OutputFormat,
    /// `generation_config.speed`, 1.0 when absent.
    pub(crate) speed: f64,
    pub(crate) save: bool,
    pub(crate) add_timestamps: bool,
    pub(crate) context_id: Option<String>,
    pub(crate) continue_: bool,
    pub(crate) flush: bool,
}

/// A client message on the TTS WebSocket.
#[derive(Debug, PartialEq)]
pub(crate) enum WsInput {
    Generate(TtsRequest),
    Cancel { context_id: String },
}

/// Reads typed optional fields of a JSON object with errors that name the field.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|value| !value.is_null())
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(invalid(format!("{name} must be a string"))),
        }
    }

    fn required_string(&self, name: &str) -> Result<&'a str, ApiError> {
        self.string(name)?
            .ok_or_else(|| invalid(format!("{name} is required")))
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(_) => Err(invalid(format!("{name} must be true or false"))),
        }
    }

    fn number_in(&self, name: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(value) => match value.as_f64() {
                Some(number) if (min..=max).contains(&number) => Ok(Some(number)),
                _ => Err(invalid(format!(
                    "{name} must be a number from {min} to {max}"
                ))),
            },
        }
    }

    fn object(&self, name: &str) -> Result<Option<Fields<'a>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(object)) => Ok(Some(Fields(object))),
            Some(_) => Err(invalid(format!("{name} must be an object"))),
        }
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::bad_request(INVALID, message)
}

/// Parses a WebSocket message: a cancel request or a generation request.
pub(crate) fn parse_ws_input(message: &Value) -> Result<WsInput, ApiError> {
    let object = message
        .as_object()
        .ok_or_else(|| invalid("each message must be a JSON object".to_owned()))?;
    let fields = Fields(object);
    if fields.boolean("cancel")? == Some(true) {
        let context_id = fields.required_string("context_id")?.to_owned();
        return Ok(WsInput::Cancel { context_id });
    }
    parse_request(message, Endpoint::WebSocket).map(WsInput::Generate)
}

/// Validates a generation request for `endpoint`.
pub(crate) fn parse_request(body: &Value, endpoint: Endpoint) -> Result<TtsRequest, ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| invalid("the request body must be a JSON object".to_owned()))?;
    let fields = Fields(object);

    let context_id = fields.string("context_id")?.map(str::to_owned);
    if endpoint == Endpoint::WebSocket && context_id.as_deref().is_none_or(str::is_empty) {
        return Err(invalid(
            "context_id is required on the WebSocket".to_owned(),
        ));
    }
    if fields.required_string("model_id")?.is_empty() {
        return Err(invalid("model_id must not be empty".to_owned()));
    }
    let transcript = fields.required_string("transcript")?;
    if endpoint != Endpoint::WebSocket && transcript.trim().is_empty() {
        return Err(invalid("transcript must not be empty".to_owned()));
    }
    check_voice(fields.get("voice"))?;
    let output = parse_output_format(fields.get("output_format"), endpoint)?;
    if fields.string("language")?.is_some() && fields.string("locale")?.is_some() {
        return Err(invalid("set language or locale, not both".to_owned()));
    }
    if let Some(speed) = fields.string("speed")?
        && !matches!(speed, "slow" | "normal" | "fast")
    {
        return Err(invalid("speed must be slow, normal or fast".to_owned()));
    }
    let mut speed = 1.0;
    if let Some(config) = fields.object("generation_config")? {
        speed = config.number_in("speed", 0.6, 1.5)?.unwrap_or(1.0);
        config.number_in("volume", 0.5, 2.0)?;
    }
    fields.number_in("max_buffer_delay_ms", 0.0, 5000.0)?;
    // NOTE: phoneme timestamps are accepted for compatibility but never produced.
    fields.boolean("add_phoneme_timestamps")?;
    fields.boolean("use_normalized_timestamps")?;

    Ok(TtsRequest {
        transcript: transcript.to_owned(),
        output,
        speed,
        save: fields.boolean("save")?.unwrap_or(false),
        add_timestamps: fields.boolean("add_timestamps")?.unwrap_or(false),
        context_id,
        continue_: fields.boolean("continue")?.unwrap_or(false),
        flush: fields.boolean("flush")?.unwrap_or(false),
    })
}

fn check_voice(voice: Option<&Value>) -> Result<(), ApiError> {
    let id = match voice {
        None => return Err(invalid("voice is required".to_owned())),
        Some(Value::String(id)) => id.as_str(),
        Some(Value::Object(object)) => {
            let fields = Fields(object);
            if fields.get("embedding").is_some() {
                return Err(invalid(
                    "voice embeddings are not accepted; pass a voice ID".to_owned(),
                ));
            }
            if let Some(mode) = fields.string("mode")?
                && mode != "id"
            {
                return Err(invalid(format!(
                    "voice mode {mode:?} is not supported; use \"id\""
                )));
            }
            fields
                .required_string("id")
                .map_err(|_| invalid("voice.id is required".to_owned()))?
        }
        Some(_) => {
            return Err(invalid(
                "voice must be a voice ID or an object with an id".to_owned(),
            ));
        }
    };
    if id.is_empty() {
        return Err(invalid("the voice ID must not be empty".to_owned()));
    }
    Ok(())
}

fn parse_output_format(
    value: Option<&Value>,
    endpoint: Endpoint,
) -> Result<OutputFormat, ApiError> {
    let Some(Value::Object(object)) = value else {
        return Err(invalid(
            "output_format is required and must be an object".to_owned(),
        ));
    };
    let fields = Fields(object);
    let container = match fields.required_string("container")? {
        "raw" => Container::Raw,
        "wav" if endpoint == Endpoint::Bytes => Container::Wav,
        "mp3" if endpoint == Endpoint::Bytes => {
            return Err(ApiError::bad_request(
                "unsupported_output_format",
                "the Cartesia stand-in cannot encode mp3; use container raw or wav",
            ));
        }
        "wav" | "mp3" => {
            return Err(invalid(
                "this endpoint only supports container raw".to_owned(),
            ));
        }
        other => {
            return Err(invalid(format!(
                "unknown container {other:?}; use raw, wav or mp3"
            )));
        }
    };
    let encoding_name = fields.required_string("encoding")?;
    let encoding = Encoding::parse(encoding_name).ok_or_else(|| {
        invalid(format!(
            "unknown encoding {encoding_name:?}; use pcm_f32le, pcm_s16le, pcm_mulaw or pcm_alaw"
        ))
    })?;
    let sample_rate = fields
        .get("sample_rate")
        .and_then(Value::as_u64)
        .and_then(|rate| u32::try_from(rate).ok())
        .filter(|rate| SAMPLE_RATES.contains(rate))
        .ok_or_else(|| invalid(format!("sample_rate must be one of {SAMPLE_RATES:?}")))?;
    Ok(OutputFormat {
        container,
        encoding,
        sample_rate,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn base() -> Value {
        json!({
            "model_id": "sonic-3",
            "transcript": "Hello there",
            "voice": "a0e99841-438c-4a64-b679-ae501e7d6091",
            "output_format": {"container": "wav", "encoding": "pcm_s16le", "sample_rate": 44100},
        })
    }

    fn with(changes: Value) -> Value {
        let mut body = base();
        for (key, value) in changes.as_object().expect("object") {
            body[key] = value.clone();
        }
        body
    }

    fn error_message(body: &Value, endpoint: Endpoint) -> String {
        parse_request(body, endpoint)
            .expect_err("invalid request")
            .message
    }

    #[test]
    fn valid_bytes_request_parses() {
        let request = parse_request(&with(json!({"save": true})), Endpoint::Bytes).expect("valid");
        assert_eq!(request.transcript, "Hello there");
        assert_eq!(request.output.container, Container::Wav);
        assert_eq!(request.output.encoding, Encoding::PcmS16le);
        assert_eq!(request.output.sample_rate, 44100);
        assert!(request.save);
        assert_eq!(request.speed, 1.0);
    }

    #[test]
    fn voice_forms_are_accepted() {
        for voice in [
            json!("v1"),
            json!({"id": "v1"}),
            json!({"mode": "id", "id": "v1"}),
        ] {
            assert!(parse_request(&with(json!({"voice": voice})), Endpoint::Bytes).is_ok());
        }
        for voice in [
            json!({"mode": "embedding", "embedding": [0.1]}),
            json!({}),
            json!(""),
            json!(3),
        ] {
            assert!(parse_request(&with(json!({"voice": voice})), Endpoint::Bytes).is_err());
        }
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let mut missing = base();
        missing
            .as_object_mut()
            .expect("object")
            .remove("transcript");
        assert_eq!(
            error_message(&missing, Endpoint::Bytes),
            "transcript is required"
        );
        assert_eq!(
            error_message(&with(json!({"transcript": "  "})), Endpoint::Bytes),
            "transcript must not be empty"
        );
        let unknown = json!({"output_format": {"container": "raw", "encoding": "pcm_u8", "sample_rate": 8000}});
        assert!(error_message(&with(unknown), Endpoint::Bytes).contains("unknown encoding"));
        let odd_rate = json!({"output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 1234}});
        assert!(error_message(&with(odd_rate), Endpoint::Bytes).contains("sample_rate"));
        let both = json!({"language": "en", "locale": "en-GB"});
        assert_eq!(
            error_message(&with(both), Endpoint::Bytes),
            "set language or locale, not both"
        );
        let fast = json!({"generation_config": {"speed": 3.0}});
        assert!(error_message(&with(fast), Endpoint::Bytes).contains("speed"));
        assert!(parse_request(&json!([1, 2]), Endpoint::Bytes).is_err());
    }

    #[test]
    fn mp3_is_rejected_with_clear_code() {
        let mp3 = json!({"output_format": {"container": "mp3", "sample_rate": 44100, "bit_rate": 128000}});
        let error = parse_request(&with(mp3), Endpoint::Bytes).expect_err("mp3");
        assert_eq!(error.code, "unsupported_output_format");
        assert!(error.message.contains("mp3"));
    }

    #[test]
    fn sse_and_websocket_accept_raw_only() {
        assert!(error_message(&base(), Endpoint::Sse).contains("only supports container raw"));
        let raw = json!({
            "output_format": {"container": "raw", "encoding": "pcm_f32le", "sample_rate": 44100},
            "context_id": "ctx",
            "add_timestamps": true,
        });
        let request = parse_request(&with(raw), Endpoint::Sse).expect("raw SSE");
        assert!(request.add_timestamps);
        assert_eq!(request.context_id.as_deref(), Some("ctx"));
    }

    #[test]
    fn websocket_messages_parse() {
        let cancel = parse_ws_input(&json!({"context_id": "c1", "cancel": true})).expect("cancel");
        assert_eq!(
            cancel,
            WsInput::Cancel {
                context_id: "c1".to_owned()
            }
        );

        let raw = json!({
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
            "context_id": "c1",
            "transcript": "",
            "continue": false,
            "flush": true,
        });
        let WsInput::Generate(request) = parse_ws_input(&with(raw)).expect("generate") else {
            panic!("expected a generation request");
        };
        assert!(request.transcript.is_empty());
        assert!(request.flush);
        assert!(!request.continue_);

        let no_context = json!({"output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000}});
        assert!(parse_ws_input(&with(no_context)).is_err());
    }
}
