//! A local stand-in for the Cartesia TTS and STT API, for tests and the `demo` command only.
//!
//! Nothing in the gateway's request path uses this module. It exists so that the integration tests
//! and the demo have an upstream that behaves like `https://api.cartesia.ai` without network access
//! or an account. It is compiled only with the `stand-in` feature.
//!
//! # What it serves
//!
//! HTTPS (ALPN `h2` and `http/1.1`) and WebSockets over TLS (HTTP/1.1 upgrade) on one listener:
//!
//! | route | method | credential |
//! |---|---|---|
//! | `/access-token` | POST | API key only |
//! | `/tts/bytes`, `/tts/sse` | POST | API key or access token with the `tts` grant |
//! | `/tts/websocket` | GET (upgrade) | API key or access token with the `tts` grant |
//! | `/stt`, `/audio/transcriptions` | POST | API key or access token with the `stt` grant |
//! | `/stt/websocket`, `/stt/turns/websocket` | GET (upgrade) | API key or access token with the `stt` grant |
//!
//! Any other path gets 404 and a wrong method gets 405 (with `Allow`), both as Cartesia-shaped JSON
//! errors (`error_code`, `title`, `message`, `request_id`).
//!
//! Synthesized audio is a 440 Hz sine tone, 60 ms per transcript character (divided by
//! `generation_config.speed`), capped at 30 s, encoded as requested and streamed in 100 ms chunks
//! with a 10 ms pause between chunks. Transcripts are deterministic descriptions of the audio
//! received, such as `received 32000 bytes, 1.00 seconds of audio`, with word timings spread over
//! the audio's duration.
//!
//! # Checks, in order
//!
//! 1. Every request is recorded (see [`StandIn::requests`]), including ones rejected later.
//! 2. Path (404) and method (405).
//! 3. Credential. HTTP requests present it as `Authorization: Bearer` or `X-API-Key`. WebSocket
//!    handshakes may also use the `access_token` or `api_key` query parameter. When several are
//!    present, the first of `Authorization`, `X-API-Key`, `access_token`, `api_key` is used. The
//!    API key is accepted everywhere. An access token must carry a valid signature from this
//!    stand-in, must not be expired (no leeway) and must grant the route's capability. A missing,
//!    unknown or expired credential gets 401, and a valid token without the grant gets 403. A
//!    token listed with [`Faults::reject_token`] gets 401 before any of these checks.
//! 4. API version: the `cartesia_version` query parameter, else the `Cartesia-Version` header, must
//!    be a `YYYY-MM-DD` date. A missing version is rejected with 400 on every route except
//!    `/audio/transcriptions`, which OpenAI clients call without one.
//! 5. Injected faults (see [`Faults`]).
//! 6. The route's own validation, then the response. Bad request bodies and bad WebSocket query
//!    parameters get 400. A WebSocket request that is not an HTTP/1.1 upgrade gets 426.
//!
//! `POST /access-token` has its own order after step 2: the mint delay, the mint faults, then the
//! API key (401), the version (400) and the body (400).
//!
//! On WebSocket routes every failure before the upgrade is an ordinary HTTP response to the
//! handshake.
//!
//! # Assumptions where Cartesia's documentation is silent
//!
//! - `expires_in` on `/access-token` defaults to 300 s and must be within 1..=3600.
//! - A token without the route's grant gets 403, not 401.
//! - `/tts/bytes` sends `Content-Type: audio/wav` for WAV and `application/octet-stream` for raw
//!   audio, with chunked transfer encoding and no `Content-Length`.
//! - SSE events carry `event:` names equal to their `type`, and chunk, timestamps and done events
//!   all use `status_code` 206, as in Cartesia's examples.
//! - TTS WebSocket chunks and timestamps carry `flush_id`, which starts at 1 and numbers the flush
//!   segment they belong to. A `cancel` drops the context's queued requests but lets the one whose
//!   audio has started finish streaming, and sends no `done`.
//! - STT WebSocket: `finalize` produces a final transcript for the audio since the last one (only
//!   when audio arrived) followed by `flush_done`. `close` and the older `done` command do the same
//!   and then send `done` and close with 1000. No interim (`is_final: false`) transcripts are sent.
//! - Turn detection treats a binary message as speech when its RMS level is at least 0.02 of full
//!   scale. After 300 ms of silence it sends `turn.eager_end` and after 600 ms `turn.end`. Speech
//!   after an eager end sends `turn.resume`. The turn thresholds from the query or a `config`
//!   command are range-checked like Cartesia's and otherwise unused, because an energy detector has
//!   no probabilities to compare them with.
//! - WebSockets that see no message in either direction for 5 minutes are closed with 1000.
//!
//! # Limitations
//!
//! - `mp3` output is rejected with 400 because the stand-in has no MP3 encoder.
//! - `add_phoneme_timestamps` is accepted and ignored.
//! - WebSockets over HTTP/2 (RFC 8441) are not supported, so such handshakes get 426.

mod access_token;
mod audio;
mod auth;
mod body;
mod faults;
mod params;
mod record;
mod respond;
mod router;
mod server;
mod stt_batch;
mod stt_ws;
mod transcript;
mod tts_http;
mod tts_request;
mod tts_ws;
mod turns;
mod websocket;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

pub use faults::Faults;
pub use record::RecordedRequest;

/// A fake Cartesia API server. It is cheap to clone, and all clones share state.
#[derive(Clone)]
pub struct StandIn {
    shared: Arc<Shared>,
}

/// State shared by every connection of one stand-in.
struct Shared {
    signer: auth::TokenSigner,
    recorder: record::Recorder,
    faults: Faults,
    mint_count: AtomicUsize,
    issued_tokens: Mutex<Vec<String>>,
    idle_closes: AtomicUsize,
}

impl StandIn {
    /// Creates a stand-in whose only API key is `api_key`.
    ///
    /// The key is the only credential accepted on `POST /access-token` and, like on Cartesia, it is
    /// also accepted on the TTS and STT routes. Access tokens are signed with a random secret made
    /// here, so a token from one stand-in is rejected by another.
    pub fn new(api_key: impl Into<String>) -> Self {
        let shared = Shared {
            signer: auth::TokenSigner::new(api_key.into()),
            recorder: record::Recorder::default(),
            faults: Faults::default(),
            mint_count: AtomicUsize::new(0),
            issued_tokens: Mutex::new(Vec::new()),
            idle_closes: AtomicUsize::new(0),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Serves HTTPS and WSS on an already bound listener until `shutdown` completes.
    ///
    /// ALPN is set to `h2` and `http/1.1` on a clone of `tls`. On shutdown the stand-in stops
    /// accepting, lets every connection finish its current requests, closes WebSockets with 1001,
    /// and waits up to 5 s for them before returning.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        server::serve(self.shared, listener, tls, shutdown).await
    }

    /// Returns every request received so far, in arrival order, including `/access-token` requests
    /// and WebSocket handshakes.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.recorder.snapshot()
    }

    /// Returns the number of successful `/access-token` responses.
    pub fn mint_count(&self) -> usize {
        self.shared.mint_count.load(Ordering::SeqCst)
    }

    /// Returns every access token this stand-in has issued, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared
            .issued_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Returns the number of connections dropped by
    /// [`Faults::close_idle_connections_after`].
    pub fn idle_connections_closed(&self) -> usize {
        self.shared.idle_closes.load(Ordering::SeqCst)
    }

    /// Returns the fault injection switches, which tests flip while the stand-in runs.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }
}

impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandIn")
            .field("mint_count", &self.mint_count())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn record_mint(&self, token: &str) {
        self.issued_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(token.to_owned());
        self.mint_count.fetch_add(1, Ordering::SeqCst);
    }
}
