//! Audio: the synthesized tone, Cartesia's raw encodings, WAV headers, and decoding of received
//! audio for level measurement.
//!
//! Audio is mono. Companding follows ITU-T G.711 (μ-law with bias 0x84, A-law with the even-bit
//! inversion).

use bytes::{BufMut, Bytes, BytesMut};

/// Frequency of the synthesized tone.
const TONE_HZ: f64 = 440.0;
/// Peak level of the tone relative to full scale.
const TONE_AMPLITUDE: f64 = 0.3;
/// Audio length per transcript character at speed 1.0.
const MS_PER_CHARACTER: f64 = 60.0;
/// Maximum audio length of one request or one WebSocket input.
const MAX_AUDIO_MS: f64 = 30_000.0;
/// Audio per streamed chunk.
pub(crate) const CHUNK_MS: u64 = 100;
/// Output sample rates Cartesia offers.
pub(crate) const SAMPLE_RATES: [u32; 6] = [8000, 16000, 22050, 24000, 44100, 48000];

/// A TTS output encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    PcmF32le,
    PcmS16le,
    PcmMulaw,
    PcmAlaw,
}

impl Encoding {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "pcm_f32le" => Some(Self::PcmF32le),
            "pcm_s16le" => Some(Self::PcmS16le),
            "pcm_mulaw" => Some(Self::PcmMulaw),
            "pcm_alaw" => Some(Self::PcmAlaw),
            _ => None,
        }
    }

    pub(crate) fn bytes_per_sample(self) -> usize {
        match self {
            Self::PcmF32le => 4,
            Self::PcmS16le => 2,
            Self::PcmMulaw | Self::PcmAlaw => 1,
        }
    }

    /// WAVE `wFormatTag`: PCM, IEEE float, A-law or μ-law.
    fn wav_format_tag(self) -> u16 {
        match self {
            Self::PcmS16le => 1,
            Self::PcmF32le => 3,
            Self::PcmAlaw => 6,
            Self::PcmMulaw => 7,
        }
    }
}

/// Returns the audio length for a transcript, in milliseconds: 60 ms per character divided by
/// `speed`, capped at 30 s.
pub(crate) fn duration_ms(transcript: &str, speed: f64) -> f64 {
    let characters = transcript.chars().count() as f64;
    (characters * MS_PER_CHARACTER / speed).min(MAX_AUDIO_MS)
}

/// A sine tone of known length, produced chunk by chunk.
pub(crate) struct Tone {
    encoding: Encoding,
    sample_rate: u32,
    next_sample: u64,
    total_samples: u64,
}

impl Tone {
    pub(crate) fn new(encoding: Encoding, sample_rate: u32, duration_ms: f64) -> Self {
        let total_samples = (duration_ms * f64::from(sample_rate) / 1000.0).round() as u64;
        Self {
            encoding,
            sample_rate,
            next_sample: 0,
            total_samples,
        }
    }

    pub(crate) fn total_samples(&self) -> u64 {
        self.total_samples
    }

    /// Seconds of audio produced so far.
    pub(crate) fn produced_secs(&self) -> f64 {
        self.next_sample as f64 / f64::from(self.sample_rate)
    }

    pub(crate) fn total_secs(&self) -> f64 {
        self.total_samples as f64 / f64::from(self.sample_rate)
    }

    /// Returns the next 100 ms (or what is left), or `None` when the tone is complete.
    pub(crate) fn next_chunk(&mut self) -> Option<Bytes> {
        let remaining = self.total_samples - self.next_sample;
        if remaining == 0 {
            return None;
        }
        let per_chunk = u64::from(self.sample_rate) * CHUNK_MS / 1000;
        let count = remaining.min(per_chunk);
        let mut out = BytesMut::with_capacity(count as usize * self.encoding.bytes_per_sample());
        for index in self.next_sample..self.next_sample + count {
            let phase =
                2.0 * std::f64::consts::PI * TONE_HZ * index as f64 / f64::from(self.sample_rate);
            encode_sample(self.encoding, TONE_AMPLITUDE * phase.sin(), &mut out);
        }
        self.next_sample += count;
        Some(out.freeze())
    }
}

/// Appends one sample in `-1.0..=1.0` in the given encoding.
fn encode_sample(encoding: Encoding, value: f64, out: &mut BytesMut) {
    let value = value.clamp(-1.0, 1.0);
    let linear = (value * f64::from(i16::MAX)).round() as i16;
    match encoding {
        Encoding::PcmF32le => out.put_f32_le(value as f32),
        Encoding::PcmS16le => out.put_i16_le(linear),
        Encoding::PcmMulaw => out.put_u8(linear_to_mulaw(linear)),
        Encoding::PcmAlaw => out.put_u8(linear_to_alaw(linear)),
    }
}

const MULAW_BIAS: i32 = 0x84;
const MULAW_CLIP: i32 = 32_635;

pub(crate) fn linear_to_mulaw(sample: i16) -> u8 {
    let mut magnitude = i32::from(sample);
    let sign = if magnitude < 0 {
        magnitude = -magnitude;
        0x80
    } else {
        0
    };
    magnitude = magnitude.min(MULAW_CLIP) + MULAW_BIAS;
    let mut exponent = 7;
    while exponent > 0 && magnitude & (0x80 << exponent) == 0 {
        exponent -= 1;
    }
    let mantissa = (magnitude >> (exponent + 3)) & 0x0f;
    !((sign | (exponent << 4) | mantissa) as u8)
}

pub(crate) fn mulaw_to_linear(byte: u8) -> i16 {
    let code = !byte;
    let exponent = (code >> 4) & 0x07;
    let mantissa = i32::from(code & 0x0f);
    let magnitude = (((mantissa << 3) + MULAW_BIAS) << exponent) - MULAW_BIAS;
    let value = if code & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    };
    value as i16
}

/// Upper bounds of the eight A-law segments, on the 13-bit magnitude.
const ALAW_SEGMENT_ENDS: [i32; 8] = [0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff];

pub(crate) fn linear_to_alaw(sample: i16) -> u8 {
    let mut magnitude = i32::from(sample) >> 3;
    let mask: i32 = if magnitude >= 0 {
        0xd5
    } else {
        magnitude = -magnitude - 1;
        0x55
    };
    let Some(segment) = ALAW_SEGMENT_ENDS.iter().position(|&end| magnitude <= end) else {
        return (0x7f ^ mask) as u8;
    };
    let shift = if segment < 2 { 1 } else { segment };
    let code = ((segment as i32) << 4) | ((magnitude >> shift) & 0x0f);
    (code ^ mask) as u8
}

pub(crate) fn alaw_to_linear(byte: u8) -> i16 {
    let code = i32::from(byte ^ 0x55);
    let segment = (code & 0x70) >> 4;
    let mut magnitude = (code & 0x0f) << 4;
    magnitude += match segment {
        0 => 8,
        _ => 0x108,
    };
    if segment > 1 {
        magnitude <<= segment - 1;
    }
    let value = if code & 0x80 != 0 {
        magnitude
    } else {
        -magnitude
    };
    value as i16
}

/// Builds the RIFF/WAVE header for mono audio of `total_samples` samples.
///
/// Integer PCM gets the 44-byte canonical header. Float, A-law and μ-law get an 18-byte `fmt `
/// chunk and the `fact` chunk that the WAVE format requires for non-PCM data, 58 bytes in all.
pub(crate) fn wav_header(encoding: Encoding, sample_rate: u32, total_samples: u64) -> Bytes {
    let block_align = encoding.bytes_per_sample() as u16;
    let bits_per_sample = block_align * 8;
    let data_len = u32::try_from(total_samples * u64::from(block_align)).unwrap_or(u32::MAX);
    let is_pcm = encoding == Encoding::PcmS16le;
    let fmt_len: u32 = if is_pcm { 16 } else { 18 };
    let fact_len: u32 = if is_pcm { 0 } else { 12 };
    let riff_len = 4 + (8 + fmt_len) + fact_len + 8 + data_len;

    let mut out = BytesMut::with_capacity(58);
    out.put_slice(b"RIFF");
    out.put_u32_le(riff_len);
    out.put_slice(b"WAVE");
    out.put_slice(b"fmt ");
    out.put_u32_le(fmt_len);
    out.put_u16_le(encoding.wav_format_tag());
    out.put_u16_le(1);
    out.put_u32_le(sample_rate);
    out.put_u32_le(sample_rate * u32::from(block_align));
    out.put_u16_le(block_align);
    out.put_u16_le(bits_per_sample);
    if !is_pcm {
        out.put_u16_le(0);
        out.put_slice(b"fact");
        out.put_u32_le(4);
        out.put_u32_le(u32::try_from(total_samples).unwrap_or(u32::MAX));
    }
    out.put_slice(b"data");
    out.put_u32_le(data_len);
    out.freeze()
}

/// An encoding that clients may send to the STT endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InputEncoding {
    PcmS16le,
    PcmS32le,
    PcmF16le,
    PcmF32le,
    PcmMulaw,
    PcmAlaw,
}

impl InputEncoding {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "pcm_s16le" => Some(Self::PcmS16le),
            "pcm_s32le" => Some(Self::PcmS32le),
            "pcm_f16le" => Some(Self::PcmF16le),
            "pcm_f32le" => Some(Self::PcmF32le),
            "pcm_mulaw" => Some(Self::PcmMulaw),
            "pcm_alaw" => Some(Self::PcmAlaw),
            _ => None,
        }
    }

    pub(crate) fn bytes_per_sample(self) -> usize {
        match self {
            Self::PcmS32le | Self::PcmF32le => 4,
            Self::PcmS16le | Self::PcmF16le => 2,
            Self::PcmMulaw | Self::PcmAlaw => 1,
        }
    }

    /// Decodes one sample to `-1.0..=1.0`. `bytes` has exactly [`Self::bytes_per_sample`] bytes.
    fn decode(self, bytes: &[u8]) -> f64 {
        let full_scale_16 = f64::from(i16::MAX);
        match (self, bytes) {
            (Self::PcmS16le, &[a, b]) => f64::from(i16::from_le_bytes([a, b])) / full_scale_16,
            (Self::PcmS32le, &[a, b, c, d]) => {
                f64::from(i32::from_le_bytes([a, b, c, d])) / f64::from(i32::MAX)
            }
            (Self::PcmF16le, &[a, b]) => f16_to_f64(u16::from_le_bytes([a, b])),
            (Self::PcmF32le, &[a, b, c, d]) => f64::from(f32::from_le_bytes([a, b, c, d])),
            (Self::PcmMulaw, &[a]) => f64::from(mulaw_to_linear(a)) / full_scale_16,
            (Self::PcmAlaw, &[a]) => f64::from(alaw_to_linear(a)) / full_scale_16,
            _ => 0.0,
        }
    }
}

/// Converts an IEEE 754 half-precision value.
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x03ff);
    let magnitude = match exponent {
        0 => fraction * 2f64.powi(-24),
        0x1f if fraction == 0.0 => f64::INFINITY,
        0x1f => f64::NAN,
        _ => (1.0 + fraction / 1024.0) * 2f64.powi(exponent - 15),
    };
    sign * magnitude
}

/// Returns the root-mean-square level of `audio` relative to full scale, ignoring a trailing
/// partial sample. Values that are not finite count as silence.
pub(crate) fn rms_level(encoding: InputEncoding, audio: &[u8]) -> f64 {
    let mut sum = 0.0;
    let mut count = 0usize;
    for sample in audio.chunks_exact(encoding.bytes_per_sample()) {
        let value = encoding.decode(sample);
        if value.is_finite() {
            sum += value * value;
        }
        count += 1;
    }
    if count == 0 {
        0.0
    } else {
        (sum / count as f64).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_follows_transcript_and_speed() {
        assert_eq!(duration_ms("hello", 1.0), 300.0);
        assert_eq!(duration_ms("hello", 1.5), 200.0);
        assert_eq!(duration_ms(&"a".repeat(10_000), 1.0), MAX_AUDIO_MS);
    }

    #[test]
    fn tone_chunks_cover_the_duration() {
        let mut tone = Tone::new(Encoding::PcmS16le, 16_000, 250.0);
        let sizes: Vec<usize> = std::iter::from_fn(|| tone.next_chunk())
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, vec![3200, 3200, 1600]);
        assert_eq!(tone.total_samples(), 4000);
        assert_eq!(tone.produced_secs(), 0.25);
    }

    #[test]
    fn tone_level_matches_amplitude_in_every_encoding() {
        let pairs = [
            (Encoding::PcmS16le, InputEncoding::PcmS16le),
            (Encoding::PcmF32le, InputEncoding::PcmF32le),
            (Encoding::PcmMulaw, InputEncoding::PcmMulaw),
            (Encoding::PcmAlaw, InputEncoding::PcmAlaw),
        ];
        for (output, input) in pairs {
            let mut tone = Tone::new(output, 8000, 100.0);
            let chunk = tone.next_chunk().expect("one chunk");
            assert_eq!(chunk.len(), 800 * output.bytes_per_sample());
            let level = rms_level(input, &chunk);
            let expected = TONE_AMPLITUDE / 2f64.sqrt();
            assert!((level - expected).abs() < 0.01, "{output:?}: {level}");
        }
    }

    #[test]
    fn g711_known_values() {
        assert_eq!(linear_to_mulaw(0), 0xff);
        assert_eq!(linear_to_mulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_mulaw(i16::MIN), 0x00);
        assert_eq!(mulaw_to_linear(0xff), 0);
        assert_eq!(mulaw_to_linear(0x80), 32_124);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(alaw_to_linear(0xaa), 32_256);
    }

    #[test]
    fn g711_round_trip_error_is_bounded() {
        for sample in (i16::MIN..=i16::MAX).step_by(7) {
            let value = f64::from(sample);
            let tolerance = value.abs() / 16.0 + 16.0;
            let mulaw = f64::from(mulaw_to_linear(linear_to_mulaw(sample)));
            let alaw = f64::from(alaw_to_linear(linear_to_alaw(sample)));
            let clipped = value.clamp(-32_124.0, 32_124.0);
            assert!(
                (mulaw - clipped).abs() <= tolerance,
                "mulaw {sample} -> {mulaw}"
            );
            assert!((alaw - value).abs() <= tolerance, "alaw {sample} -> {alaw}");
        }
    }

    #[test]
    fn pcm_wav_header_is_canonical() {
        let header = wav_header(Encoding::PcmS16le, 44_100, 1000);
        assert_eq!(header.len(), 44);
        assert_eq!(&header[0..4], b"RIFF");
        assert_eq!(
            u32::from_le_bytes([header[4], header[5], header[6], header[7]]),
            36 + 2000
        );
        assert_eq!(&header[8..16], b"WAVEfmt ");
        assert_eq!(u16::from_le_bytes([header[20], header[21]]), 1);
        assert_eq!(
            u32::from_le_bytes([header[24], header[25], header[26], header[27]]),
            44_100
        );
        assert_eq!(
            u32::from_le_bytes([header[28], header[29], header[30], header[31]]),
            88_200
        );
        assert_eq!(u16::from_le_bytes([header[34], header[35]]), 16);
        assert_eq!(&header[36..40], b"data");
        assert_eq!(
            u32::from_le_bytes([header[40], header[41], header[42], header[43]]),
            2000
        );
    }

    #[test]
    fn float_wav_header_has_fact_chunk() {
        let header = wav_header(Encoding::PcmF32le, 24_000, 10);
        assert_eq!(header.len(), 58);
        assert_eq!(
            u32::from_le_bytes([header[4], header[5], header[6], header[7]]),
            50 + 40
        );
        assert_eq!(
            u32::from_le_bytes([header[16], header[17], header[18], header[19]]),
            18
        );
        assert_eq!(u16::from_le_bytes([header[20], header[21]]), 3);
        assert_eq!(&header[38..42], b"fact");
        assert_eq!(
            u32::from_le_bytes([header[46], header[47], header[48], header[49]]),
            10
        );
        assert_eq!(&header[50..54], b"data");
        assert_eq!(
            u32::from_le_bytes([header[54], header[55], header[56], header[57]]),
            40
        );
    }

    #[test]
    fn half_floats_decode() {
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x3800), 0.5);
        assert_eq!(f16_to_f64(0x0000), 0.0);
        assert!(f16_to_f64(0x7c00).is_infinite());
    }

    #[test]
    fn silence_has_zero_level() {
        assert_eq!(rms_level(InputEncoding::PcmS16le, &[0u8; 320]), 0.0);
        assert_eq!(rms_level(InputEncoding::PcmMulaw, &[0xffu8; 160]), 0.0);
        assert_eq!(rms_level(InputEncoding::PcmS16le, &[]), 0.0);
    }
}
