"""Drive a Cartesia-compatible server with the official Python SDK (cartesia 4.2.0).

Run it against the stand-in, or against the gateway in front of it:

    SSL_CERT_FILE=ca.pem python stand_in_smoke.py --base-url https://127.0.0.1:PORT --api-key KEY
    SSL_CERT_FILE=ca.pem python stand_in_smoke.py --base-url https://127.0.0.1:PORT --token TOKEN
    SESSION=JWT SSL_CERT_FILE=ca.pem python stand_in_smoke.py --base-url URL --token-env SESSION --gateway

With --api-key the script runs every check with the key, then mints an access token with
`client.access_token.create` and runs them again with `token=`. With --token (or --token-env, which
reads the token from an environment variable and keeps it out of process listings) it only uses the
given token, for example a gateway session JWT, and skips minting. The token runs also make the
browser-style handshakes, which carry `access_token` and `cartesia_version` in the query instead of
headers.

In its default mode the script also checks the stand-in's exact output: audio sizes, transcript texts
("received N bytes, ...") and the Cartesia-shaped 401 body. A gateway in front of the stand-in passes
the audio and transcripts through unchanged but rejects a tampered token itself, so pass --gateway to
expect the gateway's JSON error bodies (`{"error": "<code>", "message": ...}`) instead. Pass
--any-transcript to check only the shapes of the responses.

With --without-grant GRANT the token must lack GRANT ("tts" or "stt"). The script then checks that
every SDK call of that grant fails with 403, over HTTP and in the WebSocket handshake, and that the
calls of the other grant work.

Exit status 0 means every check passed; a failed check raises with a message naming it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import tempfile
import wave
from collections.abc import Callable
from typing import Any

import cartesia
from cartesia import Cartesia
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

VOICE = "a0e99841-438c-4a64-b679-ae501e7d6091"
MODEL = "sonic-3"
VERSION = "2026-08-14"
TRANSCRIPT = "Hello from the Cartesia stand-in."
RATE = 16_000
RAW_S16 = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": RATE}
WAV_S16 = {"container": "wav", "encoding": "pcm_s16le", "sample_rate": RATE}
MS_PER_CHAR = 60


class Checks:
    def __init__(self, exact: bool) -> None:
        self.exact = exact
        self.passed: list[str] = []

    def run(self, name: str, check: Callable[[], None]) -> None:
        check()
        self.passed.append(name)
        print(f"ok   {name}", flush=True)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def expected_samples(text: str) -> int:
    return round(len(text) * MS_PER_CHAR * RATE / 1000)


def tone_s16(duration_s: float, level: float = 0.3) -> bytes:
    count = int(duration_s * RATE)
    return b"".join(
        struct.pack("<h", int(level * 32767 * math.sin(2 * math.pi * 440 * i / RATE))) for i in range(count)
    )


def check_tts_bytes(client: Cartesia, out_dir: str, exact: bool) -> str:
    path = os.path.join(out_dir, "speech.wav")
    response = client.tts.generate(model_id=MODEL, transcript=TRANSCRIPT, voice=VOICE, output_format=WAV_S16)
    response.write_to_file(path)
    with wave.open(path, "rb") as wav:
        expect(wav.getnchannels() == 1, f"WAV channels {wav.getnchannels()}")
        expect(wav.getsampwidth() == 2, f"WAV sample width {wav.getsampwidth()}")
        expect(wav.getframerate() == RATE, f"WAV rate {wav.getframerate()}")
        frames = wav.getnframes()
        data = wav.readframes(frames)
    expect(len(data) == frames * 2, "WAV data shorter than its header says")
    if exact:
        expect(frames == expected_samples(TRANSCRIPT), f"WAV frames {frames}")
    else:
        expect(frames > 0, "WAV has no frames")
    return path


def check_tts_sse(client: Cartesia, exact: bool) -> None:
    events = list(
        client.tts.generate_sse(
            model_id=MODEL,
            transcript=TRANSCRIPT,
            voice=VOICE,
            output_format=RAW_S16,
            add_timestamps=True,
            context_id="sse-ctx",
        )
    )
    kinds = [event.type for event in events]
    expect(kinds[-1] == "done", f"SSE last event {kinds[-1]}")
    audio = b"".join(event.audio or b"" for event in events if event.type == "chunk")
    expect(len(audio) > 0, "SSE sent no audio")
    words = [w for event in events if event.type == "timestamps" for w in event.word_timestamps.words]
    expect(words == TRANSCRIPT.split(), f"SSE words {words}")
    if exact:
        expect(len(audio) == expected_samples(TRANSCRIPT) * 2, f"SSE audio bytes {len(audio)}")
        expect(all(event.context_id == "sse-ctx" for event in events), "SSE context_id not echoed")


def check_tts_websocket(client: Cartesia, exact: bool) -> None:
    with client.tts.websocket_connect() as connection:
        context = connection.context(model_id=MODEL, voice=VOICE, output_format=RAW_S16, add_timestamps=True)
        context.push("Hello ")
        context.send(transcript="world. ", voice=VOICE, flush=True)
        context.push("Second part.")
        context.no_more_inputs()
        responses = list(context.receive())
        kinds = [response.type for response in responses]
        expect(kinds[-1] == "done", f"TTS WS last message {kinds[-1]}")
        expect("flush_done" in kinds, f"TTS WS sent no flush_done: {kinds}")
        flush = next(r for r in responses if r.type == "flush_done")
        expect(flush.flush_id == 1, f"first flush_id {flush.flush_id}")
        audio = b"".join(r.audio or b"" for r in responses if r.type == "chunk")
        if exact:
            text = "Hello " + "world. " + "Second part."
            expect(len(audio) == expected_samples(text) * 2, f"TTS WS audio bytes {len(audio)}")
        else:
            expect(len(audio) > 0, "TTS WS sent no audio")

        # A second context on the same connection, cancelled after its first chunk.
        second = connection.context(model_id=MODEL, voice=VOICE, output_format=RAW_S16)
        second.push("This context is cancelled before it finishes speaking.")
        first = connection.recv()
        expect(first.type == "chunk", f"second context first message {first.type}")
        second.cancel()

        # The connection still works after a cancel.
        third = connection.context(model_id=MODEL, voice=VOICE, output_format=RAW_S16)
        third.push("Still here.")
        third.no_more_inputs()
        kinds = [r.type for r in third.receive()]
        expect(kinds[-1] == "done", f"third context ended with {kinds[-1]}")


def check_stt_manual(client: Cartesia, exact: bool) -> None:
    pcm = tone_s16(1.0)
    events: list[Any] = []
    with client.stt.manual_finalize.websocket(
        model="ink-whisper", encoding="pcm_s16le", sample_rate=RATE
    ) as ws:
        for start in range(0, len(pcm), 3200):
            ws.send_raw(pcm[start : start + 3200])
        ws.send("finalize")
        for event in ws:
            events.append(event)
            if event.type == "flush_done":
                break
        ws.send_raw(pcm[:16000])
        ws.send("close")
        events.extend(ws)
    kinds = [event.type for event in events]
    expect(kinds == ["transcript", "flush_done", "transcript", "done"], f"STT WS events {kinds}")
    finals = [event for event in events if event.type == "transcript"]
    expect(all(event.is_final for event in finals), "STT WS transcripts not final")
    if exact:
        expect(
            finals[0].text == "received 32000 bytes, 1.00 seconds of audio", f"first text {finals[0].text!r}"
        )
        expect(finals[1].text.startswith(" received 16000 bytes"), f"second text {finals[1].text!r}")
        expect(finals[0].words and finals[0].words[0].word == "received", "STT WS words missing")


def check_stt_turns(client: Cartesia, exact: bool) -> None:
    events: list[Any] = []
    with client.stt.auto_finalize.websocket(model="ink-2", encoding="pcm_s16le", sample_rate=RATE) as ws:
        speech = tone_s16(0.6)
        silence = bytes(3200)
        for start in range(0, len(speech), 3200):
            ws.send_raw(speech[start : start + 3200])
        for _ in range(7):
            ws.send_raw(silence)
        ws.send({"type": "config", "turn": {"end_threshold": 0.1}})
        ws.send({"type": "close"})
        events.extend(ws)
    kinds = [event.type for event in events]
    expect(kinds[0] == "connected", f"turns first event {kinds[0]}")
    expect("turn.start" in kinds and kinds[-1] == "turn.end", f"turn events {kinds}")
    if exact:
        expect(kinds == ["connected", "turn.start", "turn.update", "turn.eager_end", "turn.end"], f"{kinds}")


def check_stt_batch(client: Cartesia, wav_path: str, exact: bool) -> None:
    with open(wav_path, "rb") as audio:
        result = client.stt.transcribe(
            file=audio, model="ink-whisper", language="en", timestamp_granularities=["word"]
        )
    expect(result.type == "transcript", f"batch type {result.type}")
    expect(bool(result.text), "batch text empty")
    expect(bool(result.words), "batch words missing")
    if exact:
        seconds = expected_samples(TRANSCRIPT) / RATE
        expect(abs((result.duration or 0) - seconds) < 0.002, f"batch duration {result.duration}")
        expect(
            result.text.startswith(f"received {os.path.getsize(wav_path)} bytes"),
            f"batch text {result.text!r}",
        )


def ws_url(base_url: str, path: str, query: str) -> str:
    return base_url.replace("https://", "wss://").rstrip("/") + path + "?" + query


def check_browser_handshakes(base_url: str, token: str) -> None:
    """Browser clients cannot set headers: the token and version travel in the query."""
    stt_query = (
        f"model=ink-whisper&encoding=pcm_s16le&sample_rate={RATE}"
        f"&cartesia_version={VERSION}&access_token={token}"
    )
    with connect(ws_url(base_url, "/stt/websocket", stt_query)) as ws:
        ws.send(tone_s16(0.5))
        ws.send("close")
        messages = [json.loads(message) for message in ws]
    expect([m["type"] for m in messages] == ["transcript", "done"], f"browser STT messages {messages}")

    tts_query = f"cartesia_version={VERSION}&access_token={token}"
    with connect(ws_url(base_url, "/tts/websocket", tts_query)) as ws:
        request = {
            "context_id": "browser",
            "model_id": MODEL,
            "transcript": "Hi.",
            "voice": {"mode": "id", "id": VOICE},
            "output_format": RAW_S16,
            "continue": False,
        }
        ws.send(json.dumps(request))
        kinds = []
        for message in ws:
            kinds.append(json.loads(message)["type"])
            if kinds[-1] in ("done", "error"):
                break
    expect(kinds[-1] == "done", f"browser TTS messages {kinds}")


def run_all(client: Cartesia, checks: Checks, label: str, out_dir: str) -> None:
    exact = checks.exact
    wav_path = ""

    def tts_bytes() -> None:
        nonlocal wav_path
        wav_path = check_tts_bytes(client, out_dir, exact)

    checks.run(f"{label}: tts.generate WAV is valid", tts_bytes)
    checks.run(f"{label}: tts.generate_sse", lambda: check_tts_sse(client, exact))
    checks.run(f"{label}: tts websocket contexts", lambda: check_tts_websocket(client, exact))
    checks.run(f"{label}: stt manual_finalize websocket", lambda: check_stt_manual(client, exact))
    checks.run(f"{label}: stt auto_finalize websocket", lambda: check_stt_turns(client, exact))
    checks.run(f"{label}: stt.transcribe", lambda: check_stt_batch(client, wav_path, exact))


def check_rejections(base_url: str, token: str, exact: bool, gateway: bool) -> None:
    bad = Cartesia(token=token + "x", base_url=base_url, max_retries=0)
    try:
        bad.tts.generate(model_id=MODEL, transcript="x", voice=VOICE, output_format=WAV_S16)
    except cartesia.AuthenticationError as error:
        body = error.body if isinstance(error.body, dict) else {}
        if gateway:
            expect(body.get("error") == "invalid_session", f"gateway 401 body {error.body}")
        elif exact:
            expect({"title", "message", "request_id"} <= set(body), f"401 body {error.body}")
    else:
        raise AssertionError("a tampered token was accepted")


def expect_gateway_403(body: Any) -> None:
    expect(isinstance(body, dict) and body.get("error") == "grant_missing", f"gateway 403 body {body!r}")


def expect_http_403(call: Callable[[], Any], gateway: bool) -> None:
    try:
        call()
    except cartesia.PermissionDeniedError as error:
        if gateway:
            expect_gateway_403(error.body)
        return
    raise AssertionError("the call succeeded without its grant")


def expect_websocket_403(open_websocket: Callable[[], Any], gateway: bool) -> None:
    """Entering the SDK connection manager that `open_websocket` returns makes the handshake."""
    try:
        with open_websocket():
            pass
    except InvalidStatus as error:
        status = error.response.status_code
        expect(status == 403, f"handshake status {status}")
        if gateway:
            expect_gateway_403(json.loads(error.response.body or b"null"))
        return
    raise AssertionError("the WebSocket opened without its grant")


def write_tone_wav(out_dir: str) -> str:
    """Writes a WAV of the length the stand-in would synthesize for TRANSCRIPT."""
    path = os.path.join(out_dir, "tone.wav")
    with wave.open(path, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(tone_s16(expected_samples(TRANSCRIPT) / RATE))
    return path


def run_without_grant(client: Cartesia, checks: Checks, missing: str, out_dir: str, gateway: bool) -> None:
    exact = checks.exact
    if missing == "stt":
        wav_path = ""

        def tts_bytes() -> None:
            nonlocal wav_path
            wav_path = check_tts_bytes(client, out_dir, exact)

        checks.run("token: tts.generate WAV is valid", tts_bytes)
        checks.run("token: tts websocket contexts", lambda: check_tts_websocket(client, exact))

        def transcribe() -> None:
            with open(wav_path, "rb") as audio:
                client.stt.transcribe(file=audio, model="ink-whisper")

        checks.run(
            "stt manual_finalize websocket gets 403",
            lambda: expect_websocket_403(
                lambda: client.stt.manual_finalize.websocket(
                    model="ink-whisper", encoding="pcm_s16le", sample_rate=RATE
                ),
                gateway,
            ),
        )
        checks.run(
            "stt auto_finalize websocket gets 403",
            lambda: expect_websocket_403(
                lambda: client.stt.auto_finalize.websocket(model="ink-2", encoding="pcm_s16le", sample_rate=RATE),
                gateway,
            ),
        )
        checks.run("stt.transcribe gets 403", lambda: expect_http_403(transcribe, gateway))
    else:
        checks.run(
            "tts.generate gets 403",
            lambda: expect_http_403(
                lambda: client.tts.generate(model_id=MODEL, transcript="x", voice=VOICE, output_format=WAV_S16),
                gateway,
            ),
        )
        checks.run(
            "tts.generate_sse gets 403",
            lambda: expect_http_403(
                lambda: list(
                    client.tts.generate_sse(model_id=MODEL, transcript="x", voice=VOICE, output_format=RAW_S16)
                ),
                gateway,
            ),
        )
        checks.run(
            "tts websocket gets 403",
            lambda: expect_websocket_403(client.tts.websocket_connect, gateway),
        )
        wav_path = write_tone_wav(out_dir)
        checks.run("token: stt manual_finalize websocket", lambda: check_stt_manual(client, exact))
        checks.run("token: stt auto_finalize websocket", lambda: check_stt_turns(client, exact))
        checks.run("token: stt.transcribe", lambda: check_stt_batch(client, wav_path, exact))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", required=True)
    credential = parser.add_mutually_exclusive_group(required=True)
    credential.add_argument("--api-key")
    credential.add_argument("--token")
    credential.add_argument("--token-env", metavar="NAME", help="read the token from environment variable NAME")
    parser.add_argument("--any-transcript", action="store_true", help="check shapes only, not stand-in texts")
    parser.add_argument("--gateway", action="store_true", help="expect cartesia-gateway's JSON error bodies")
    parser.add_argument(
        "--without-grant", choices=["tts", "stt"], help="the token lacks this grant; expect 403 on its routes"
    )
    args = parser.parse_args()

    token = args.token
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            parser.error(f"environment variable {args.token_env} is not set")
    if args.without_grant and not token:
        parser.error("--without-grant needs --token or --token-env")

    checks = Checks(exact=not args.any_transcript)
    with tempfile.TemporaryDirectory() as out_dir:
        if args.without_grant:
            limited = Cartesia(token=token, base_url=args.base_url, max_retries=0)
            run_without_grant(limited, checks, args.without_grant, out_dir, args.gateway)
            print(f"{len(checks.passed)} checks passed", flush=True)
            return 0
        if args.api_key:
            key_client = Cartesia(api_key=args.api_key, base_url=args.base_url)
            run_all(key_client, checks, "api_key", out_dir)
            token = key_client.access_token.create(grants={"tts": True, "stt": True}, expires_in=300).token
            checks.run(
                "access_token.create returns a JWT", lambda: expect(token.count(".") == 2, "not a JWT")
            )

            stt_only = key_client.access_token.create(grants={"stt": True}, expires_in=60).token
            limited = Cartesia(token=stt_only, base_url=args.base_url, max_retries=0)

            def missing_grant() -> None:
                try:
                    limited.tts.generate(model_id=MODEL, transcript="x", voice=VOICE, output_format=WAV_S16)
                except cartesia.PermissionDeniedError:
                    return
                raise AssertionError("a token without the tts grant was accepted")

            checks.run("token without tts grant gets 403", missing_grant)
        token_client = Cartesia(token=token, base_url=args.base_url)
        run_all(token_client, checks, "token", out_dir)
        checks.run(
            "browser-style query handshakes",
            lambda: check_browser_handshakes(args.base_url, token),
        )
        checks.run(
            "tampered token gets 401",
            lambda: check_rejections(args.base_url, token, checks.exact, args.gateway),
        )
    print(f"{len(checks.passed)} checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
