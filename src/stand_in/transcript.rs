//! Deterministic transcript text and word timings.

use serde_json::{Value, json};

/// A word and where it sits in the audio, in seconds.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct WordSpan {
    pub(crate) word: String,
    pub(crate) start: f64,
    pub(crate) end: f64,
}

/// Splits `text` at whitespace and places each word in `start..start + duration` by character
/// position, so a word's share of time matches its share of the text (spaces included). Times are
/// rounded to milliseconds.
pub(crate) fn word_spans(text: &str, start: f64, duration: f64) -> Vec<WordSpan> {
    let total_chars = text.chars().count();
    if total_chars == 0 {
        return Vec::new();
    }
    let secs_per_char = duration / total_chars as f64;
    let mut spans = Vec::new();
    let mut word_start: Option<usize> = None;
    let mut word = String::new();
    for (position, character) in text.chars().chain(std::iter::once(' ')).enumerate() {
        if character.is_whitespace() {
            if let Some(first) = word_start.take() {
                spans.push(WordSpan {
                    word: std::mem::take(&mut word),
                    start: round_ms(start + first as f64 * secs_per_char),
                    end: round_ms(start + position as f64 * secs_per_char),
                });
            }
        } else {
            word_start.get_or_insert(position);
            word.push(character);
        }
    }
    spans
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// Describes received audio, which is what the stand-in "transcribes".
pub(crate) fn describe_audio(bytes: u64, seconds: f64) -> String {
    format!("received {bytes} bytes, {seconds:.2} seconds of audio")
}

/// Formats spans as STT `words`: `[{"word", "start", "end"}]`.
pub(crate) fn stt_words(spans: &[WordSpan]) -> Value {
    spans
        .iter()
        .map(|span| json!({"word": span.word, "start": span.start, "end": span.end}))
        .collect()
}

/// Formats spans as TTS `word_timestamps`: `{"words": [..], "start": [..], "end": [..]}`.
pub(crate) fn tts_word_timestamps(spans: &[WordSpan]) -> Value {
    let words: Vec<&str> = spans.iter().map(|span| span.word.as_str()).collect();
    let starts: Vec<f64> = spans.iter().map(|span| span.start).collect();
    let ends: Vec<f64> = spans.iter().map(|span| span.end).collect();
    json!({"words": words, "start": starts, "end": ends})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_spread_by_character_position() {
        let spans = word_spans("ab  cd", 1.0, 0.6);
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].word, "ab");
        assert_eq!((spans[0].start, spans[0].end), (1.0, 1.2));
        assert_eq!(spans[1].word, "cd");
        assert_eq!((spans[1].start, spans[1].end), (1.4, 1.6));
    }

    #[test]
    fn empty_and_blank_text_have_no_words() {
        assert!(word_spans("", 0.0, 1.0).is_empty());
        assert!(word_spans("   ", 0.0, 1.0).is_empty());
    }

    #[test]
    fn formats_match_cartesia_shapes() {
        let spans = word_spans("hi there", 0.0, 0.8);
        assert_eq!(
            stt_words(&spans),
            json!([{"word": "hi", "start": 0.0, "end": 0.2}, {"word": "there", "start": 0.3, "end": 0.8}])
        );
        assert_eq!(
            tts_word_timestamps(&spans),
            json!({"words": ["hi", "there"], "start": [0.0, 0.3], "end": [0.2, 0.8]})
        );
        assert_eq!(
            describe_audio(32000, 1.0),
            "received 32000 bytes, 1.00 seconds of audio"
        );
    }
}
