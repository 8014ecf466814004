//! `POST /stt` and `POST /audio/transcriptions`: a multipart upload in, a JSON transcript out.
//!
//! The body is parsed as it arrives and the file is only counted, never kept whole: the stand-in
//! keeps at most the first 4 KiB of it, enough to read a WAV header. Form fields: `file`
//! (required), `model` (required), `language` (default `en`) and `timestamp_granularities[]` (only
//! `word`). Other fields, such as those OpenAI clients send, are read and ignored. The optional
//! `encoding` and `sample_rate` query parameters describe headerless audio.
//!
//! The audio duration comes from the WAV header when the file is a WAV file, else from `encoding`
//! and `sample_rate`. Without either it is estimated as 16 kHz 16-bit mono.

use futures_util::StreamExt;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body_util::BodyDataStream;
use hyper::body::Incoming;
use serde_json::json;

use super::audio::InputEncoding;
use super::params::query_param;
use super::respond::{ApiError, ResponseBody, json_response};
use super::router::RequestContext;
use super::transcript::{describe_audio, stt_words, word_spans};

const MODELS: [&str; 2] = ["ink-whisper", "ink-whisper-2025-06-04"];
/// Largest upload Cartesia accepts.
const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Largest text field accepted.
const MAX_TEXT_FIELD: usize = 1024;
/// Bytes of the file kept for reading its header.
const HEAD_BYTES: usize = 4096;
/// Bytes per second assumed for audio of unknown format: 16 kHz, 16-bit, mono.
const FALLBACK_BYTES_PER_SEC: f64 = 32_000.0;

#[derive(Default)]
struct Upload {
    file_bytes: Option<u64>,
    head: Vec<u8>,
    model: Option<String>,
    language: Option<String>,
    granularities: Vec<String>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message)
}

pub(crate) async fn handle(
    context: RequestContext,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let boundary = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| multer::parse_boundary(value).ok());
    let Some(boundary) = boundary else {
        return context.error(invalid(
            "send the audio as multipart/form-data with a boundary",
        ));
    };
    let bytes_per_sec = match query_audio_rate(parts.uri.query()) {
        Ok(rate) => rate,
        Err(error) => return context.error(error),
    };

    let shared = context.shared.clone();
    let record_index = context.record_index;
    let counted = BodyDataStream::new(body).inspect(move |chunk| {
        if let Ok(data) = chunk {
            shared
                .recorder
                .add_body_len(record_index, data.len() as u64);
        }
    });
    let mut multipart = multer::Multipart::new(counted, boundary);
    let upload = match read_upload(&mut multipart).await {
        Ok(upload) => upload,
        Err(error) => return context.error(error),
    };
    match transcribe(&upload, bytes_per_sec, &context.request_id) {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(error) => context.error(error),
    }
}

/// Reads `encoding` and `sample_rate` from the query, returning bytes per second when both are
/// given.
fn query_audio_rate(query: Option<&str>) -> Result<Option<f64>, ApiError> {
    let encoding = match query_param(query, "encoding") {
        None => None,
        Some(name) => Some(
            InputEncoding::parse(&name)
                .ok_or_else(|| invalid(format!("unknown encoding {name:?}")))?,
        ),
    };
    let sample_rate = match query_param(query, "sample_rate") {
        None => None,
        Some(rate) => Some(
            rate.parse::<u32>()
                .ok()
                .filter(|rate| *rate > 0)
                .ok_or_else(|| invalid("sample_rate must be a positive integer"))?,
        ),
    };
    Ok(encoding
        .zip(sample_rate)
        .map(|(encoding, rate)| encoding.bytes_per_sample() as f64 * f64::from(rate)))
}

async fn read_upload(multipart: &mut multer::Multipart<'_>) -> Result<Upload, ApiError> {
    let malformed =
        |error: multer::Error| invalid(format!("the multipart body is malformed: {error}"));
    let mut upload = Upload::default();
    while let Some(mut field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            let mut total = 0u64;
            while let Some(chunk) = field.chunk().await.map_err(malformed)? {
                total += chunk.len() as u64;
                if total > MAX_FILE_BYTES {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "the file must be at most 2 GiB",
                    ));
                }
                let room = HEAD_BYTES.saturating_sub(upload.head.len());
                upload
                    .head
                    .extend_from_slice(&chunk[..room.min(chunk.len())]);
            }
            upload.file_bytes = Some(total);
            continue;
        }
        // Unknown fields are drained without keeping their content.
        let keep = is_known_text_field(&name);
        let mut text = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(malformed)? {
            if !keep {
                continue;
            }
            text.extend_from_slice(&chunk);
            if text.len() > MAX_TEXT_FIELD {
                return Err(invalid(format!("the form field {name} is too long")));
            }
        }
        let value = String::from_utf8_lossy(&text).trim().to_owned();
        match name.as_str() {
            "model" => upload.model = Some(value),
            "language" => upload.language = Some(value),
            "timestamp_granularities[]" | "timestamp_granularities" => {
                upload.granularities.push(value)
            }
            _ => {}
        }
    }
    Ok(upload)
}

fn is_known_text_field(name: &str) -> bool {
    matches!(
        name,
        "model" | "language" | "timestamp_granularities[]" | "timestamp_granularities"
    )
}

fn transcribe(
    upload: &Upload,
    query_rate: Option<f64>,
    request_id: &str,
) -> Result<serde_json::Value, ApiError> {
    let file_bytes = upload
        .file_bytes
        .ok_or_else(|| invalid("the form field file is required"))?;
    let model = upload
        .model
        .as_deref()
        .filter(|model| !model.is_empty())
        .ok_or_else(|| invalid("the form field model is required, for example ink-whisper"))?;
    if !MODELS.contains(&model) {
        return Err(ApiError::bad_request(
            "model_not_found",
            format!(
                "model {model:?} is not available for batch transcription; use one of {MODELS:?}"
            ),
        ));
    }
    let mut word_timestamps = false;
    for granularity in &upload.granularities {
        if granularity != "word" {
            return Err(invalid(format!(
                "timestamp granularity {granularity:?} is not supported; use word"
            )));
        }
        word_timestamps = true;
    }

    let duration = wav_duration(&upload.head, file_bytes)
        .unwrap_or_else(|| file_bytes as f64 / query_rate.unwrap_or(FALLBACK_BYTES_PER_SEC));
    let text = describe_audio(file_bytes, duration);
    let mut body = json!({
        "type": "transcript",
        "text": text,
        "language": upload.language.as_deref().filter(|l| !l.is_empty()).unwrap_or("en"),
        "duration": (duration * 1000.0).round() / 1000.0,
        "request_id": request_id,
    });
    if word_timestamps {
        body["words"] = stt_words(&word_spans(&text, 0.0, duration));
    }
    Ok(body)
}

/// Returns the duration of a WAV file from its header, or `None` when `head` is not a readable WAV
/// header. A data size larger than the file (as streaming writers leave it) is cut to what the file
/// holds.
fn wav_duration(head: &[u8], file_bytes: u64) -> Option<f64> {
    if head.len() < 12 || &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return None;
    }
    let read_u32 = |at: usize| Some(u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?));
    let mut byte_rate = None;
    let mut offset = 12;
    while offset + 8 <= head.len() {
        let id = &head[offset..offset + 4];
        let size = read_u32(offset + 4)?;
        let content = offset + 8;
        if id == b"fmt " {
            byte_rate = read_u32(content + 8).filter(|rate| *rate > 0);
        } else if id == b"data" {
            let available = file_bytes.saturating_sub(content as u64);
            let data_bytes = u64::from(size).min(available);
            return byte_rate.map(|rate| data_bytes as f64 / f64::from(rate));
        }
        // Chunks are padded to an even size.
        offset = content + size as usize + (size as usize & 1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stand_in::audio::{Encoding, wav_header};

    fn upload(file_bytes: u64, model: &str) -> Upload {
        Upload {
            file_bytes: Some(file_bytes),
            model: Some(model.to_owned()),
            ..Upload::default()
        }
    }

    #[test]
    fn wav_duration_reads_header() {
        let header = wav_header(Encoding::PcmS16le, 16_000, 16_000);
        assert_eq!(wav_duration(&header, 44 + 32_000), Some(1.0));
        assert_eq!(
            wav_duration(&header, 44 + 16_000),
            Some(0.5),
            "cut to the file size"
        );
        let float_header = wav_header(Encoding::PcmF32le, 8000, 4000);
        assert_eq!(wav_duration(&float_header, 58 + 16_000), Some(0.5));
        assert_eq!(wav_duration(b"ID3\x03not a wav file", 100), None);
    }

    #[test]
    fn transcript_describes_the_file() {
        let mut request = upload(64_000, "ink-whisper");
        request.granularities.push("word".to_owned());
        let body = transcribe(&request, None, "req-1").expect("valid");
        assert_eq!(body["type"], "transcript");
        assert_eq!(body["text"], "received 64000 bytes, 2.00 seconds of audio");
        assert_eq!(body["duration"], 2.0);
        assert_eq!(body["language"], "en");
        assert_eq!(body["request_id"], "req-1");
        assert_eq!(body["words"][0]["word"], "received");
    }

    #[test]
    fn query_rate_sets_duration_and_words_are_optional() {
        let rate = query_audio_rate(Some("encoding=pcm_mulaw&sample_rate=8000")).expect("valid");
        assert_eq!(rate, Some(8000.0));
        let body = transcribe(&upload(8000, "ink-whisper"), rate, "r").expect("valid");
        assert_eq!(body["duration"], 1.0);
        assert!(body.get("words").is_none());
        assert!(query_audio_rate(Some("encoding=opus")).is_err());
        assert!(query_audio_rate(Some("sample_rate=-1")).is_err());
    }

    #[test]
    fn invalid_uploads_are_rejected() {
        let no_file = Upload {
            model: Some("ink-whisper".to_owned()),
            ..Upload::default()
        };
        assert!(transcribe(&no_file, None, "r").is_err());
        assert!(transcribe(&upload(10, ""), None, "r").is_err());
        let error = transcribe(&upload(10, "whisper-1"), None, "r").expect_err("unknown model");
        assert_eq!(error.code, "model_not_found");
        let mut segment = upload(10, "ink-whisper");
        segment.granularities.push("segment".to_owned());
        assert!(transcribe(&segment, None, "r").is_err());
    }
}
