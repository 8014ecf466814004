// Drives cartesia-gateway in front of the Cartesia stand-in with the official
// JS SDK (@cartesia/cartesia-js 4.2.0) in Node.js.
//
//   SESSION=JWT NODE_EXTRA_CA_CERTS=ca.pem node --experimental-websocket \
//     stand_in_smoke.mjs --base-url https://127.0.0.1:PORT --token-env SESSION
//
// The token is a gateway session JWT, passed as the SDK's `token` with only
// `baseURL` changed. The script must sit next to a `node_modules` that
// contains the packages of tests/sdk/package.json.
//
// The SDK opens WebSockets in one of two ways, and the script uses both:
// - Its CommonJS build loads the `ws` package when it is installed and sends
//   the token in an `Authorization` header on the handshake ("ws" below).
// - Its ES module build cannot call `require`, so it never loads `ws` and uses
//   the global WebSocket, as in a browser: the token, `cartesia_version` and
//   `cartesia_client` travel in the query ("native" below). Node.js 20 and 21
//   have that global only with --experimental-websocket.
//
// With --without-grant stt the session must lack the `stt` grant. The script
// then checks that TTS still works and that every STT call fails with a clear
// error.
//
// Each check prints `ok   NAME` or `FAIL NAME: message`. The last line of
// stdout is a JSON report, {"node", "checks": [{"name", "ok", "detail" | "error"}]},
// and the exit status is 0 only when every check passed. Nothing prints the
// token.

import { createReadStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import NativeCartesia from '@cartesia/cartesia-js';

const require = createRequire(import.meta.url);
const NodeCartesia = require('@cartesia/cartesia-js');
const NodeWebSocketClass = require('ws').WebSocket;

const VOICE = 'a0e99841-438c-4a64-b679-ae501e7d6091';
const MODEL = 'sonic-3';
const TRANSCRIPT = 'Hello from the Cartesia stand-in.';
const RATE = 16_000;
const RAW_S16 = { container: 'raw', encoding: 'pcm_s16le', sample_rate: RATE };
const WAV_S16 = { container: 'wav', encoding: 'pcm_s16le', sample_rate: RATE };
// The stand-in synthesizes 60 ms of audio per transcript character.
const MS_PER_CHAR = 60;
// Limit for one check, in milliseconds. A check takes well under a second.
const CHECK_TIMEOUT_MS = 30_000;

function expect(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

function expectedSamples(text) {
  return Math.round((text.length * MS_PER_CHAR * RATE) / 1000);
}

/** Returns `seconds` of a 440 Hz sine at `level` of full scale as 16-bit little-endian PCM. */
function toneS16(seconds, level = 0.3) {
  const count = Math.floor(seconds * RATE);
  const pcm = Buffer.alloc(count * 2);
  for (let i = 0; i < count; i++) {
    pcm.writeInt16LE(Math.trunc(level * 32767 * Math.sin((2 * Math.PI * 440 * i) / RATE)), i * 2);
  }
  return pcm;
}

/** Returns a mono 16-bit WAV file of `seconds` of tone at RATE. */
function toneWav(seconds) {
  const pcm = toneS16(seconds);
  const header = Buffer.alloc(44);
  header.write('RIFF', 0, 'ascii');
  header.writeUInt32LE(36 + pcm.length, 4);
  header.write('WAVEfmt ', 8, 'ascii');
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20);
  header.writeUInt16LE(1, 22);
  header.writeUInt32LE(RATE, 24);
  header.writeUInt32LE(RATE * 2, 28);
  header.writeUInt16LE(2, 32);
  header.writeUInt16LE(16, 34);
  header.write('data', 36, 'ascii');
  header.writeUInt32LE(pcm.length, 40);
  return Buffer.concat([header, pcm]);
}

/** Rejects with a message naming `label` when `promise` takes longer than `ms`. */
function withTimeout(promise, ms, label) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${label} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

class Checks {
  constructor() {
    this.results = [];
  }

  /** Runs `check`, which returns the check's detail object, and records the outcome. */
  async run(name, check) {
    try {
      const detail = await withTimeout(Promise.resolve().then(check), CHECK_TIMEOUT_MS, name);
      this.results.push({ name, ok: true, detail: detail ?? {} });
      console.log(`ok   ${name}`);
    } catch (error) {
      const message = error?.stack ?? String(error);
      this.results.push({ name, ok: false, error: message });
      console.log(`FAIL ${name}: ${message}`);
    }
  }

  get allPassed() {
    return this.results.every((result) => result.ok);
  }
}

/**
 * Parses a RIFF/WAVE file and checks that its chunk sizes match its length.
 * Returns the format fields and the PCM data.
 */
function parseWav(bytes) {
  expect(bytes.length >= 44, `WAV is only ${bytes.length} bytes`);
  expect(bytes.toString('ascii', 0, 4) === 'RIFF', 'WAV does not start with RIFF');
  expect(bytes.toString('ascii', 8, 12) === 'WAVE', 'RIFF form type is not WAVE');
  expect(bytes.readUInt32LE(4) === bytes.length - 8, `RIFF size ${bytes.readUInt32LE(4)} for ${bytes.length} bytes`);
  let format = null;
  let data = null;
  let offset = 12;
  while (offset + 8 <= bytes.length) {
    const id = bytes.toString('ascii', offset, offset + 4);
    const size = bytes.readUInt32LE(offset + 4);
    const body = offset + 8;
    expect(body + size <= bytes.length, `WAV chunk ${id} of ${size} bytes runs past the end`);
    if (id === 'fmt ') {
      format = {
        audio_format: bytes.readUInt16LE(body),
        channels: bytes.readUInt16LE(body + 2),
        sample_rate: bytes.readUInt32LE(body + 4),
        bits_per_sample: bytes.readUInt16LE(body + 14),
      };
    } else if (id === 'data') {
      data = bytes.subarray(body, body + size);
    }
    offset = body + size + (size % 2);
  }
  expect(format !== null, 'WAV has no fmt chunk');
  expect(data !== null, 'WAV has no data chunk');
  return { ...format, data };
}

function chunkAudio(events) {
  return Buffer.concat(events.filter((event) => event.type === 'chunk').map((event) => Buffer.from(event.audio)));
}

/** Runs a TTS bytes request and writes the WAV to `path`. */
async function checkTtsBytes(client, path) {
  const response = await client.tts.generate({
    model_id: MODEL,
    transcript: TRANSCRIPT,
    voice: { mode: 'id', id: VOICE },
    output_format: WAV_S16,
  });
  expect(response.status === 200, `status ${response.status}`);
  const bytes = Buffer.from(await response.arrayBuffer());
  await writeFile(path, bytes);
  const wav = parseWav(bytes);
  expect(wav.audio_format === 1, `WAV audio format ${wav.audio_format}, expected 1 (PCM)`);
  expect(wav.channels === 1, `WAV channels ${wav.channels}`);
  expect(wav.sample_rate === RATE, `WAV sample rate ${wav.sample_rate}`);
  expect(wav.bits_per_sample === 16, `WAV bits per sample ${wav.bits_per_sample}`);
  const frames = wav.data.length / 2;
  expect(frames === expectedSamples(TRANSCRIPT), `WAV frames ${frames}, expected ${expectedSamples(TRANSCRIPT)}`);
  const peak = Math.max(...Array.from({ length: frames }, (_, i) => Math.abs(wav.data.readInt16LE(i * 2))));
  expect(peak > 1000, `WAV audio is silent (peak ${peak})`);
  return {
    content_type: response.headers.get('content-type'),
    bytes: bytes.length,
    channels: wav.channels,
    sample_rate: wav.sample_rate,
    bits_per_sample: wav.bits_per_sample,
    frames,
  };
}

async function checkTtsSse(client) {
  const stream = await client.tts.generateSSE({
    model_id: MODEL,
    transcript: TRANSCRIPT,
    voice: VOICE,
    output_format: RAW_S16,
    add_timestamps: true,
    context_id: 'sse-ctx',
  });
  const events = [];
  for await (const event of stream) {
    events.push(event);
  }
  const kinds = events.map((event) => event.type);
  expect(kinds.at(-1) === 'done', `last SSE event ${kinds.at(-1)}`);
  const chunks = events.filter((event) => event.type === 'chunk');
  expect(chunks.length > 1, `${chunks.length} SSE chunk events`);
  const audio = Buffer.concat(chunks.map((event) => Buffer.from(event.data, 'base64')));
  expect(
    audio.length === expectedSamples(TRANSCRIPT) * 2,
    `SSE audio ${audio.length} bytes, expected ${expectedSamples(TRANSCRIPT) * 2}`,
  );
  const words = events.filter((event) => event.type === 'timestamps').flatMap((event) => event.word_timestamps.words);
  expect(words.join(' ') === TRANSCRIPT, `SSE timestamp words ${JSON.stringify(words)}`);
  expect(
    events.every((event) => event.context_id === 'sse-ctx'),
    'an SSE event did not echo context_id',
  );
  return { events: events.length, chunks: chunks.length, audio_bytes: audio.length, words };
}

/** Names the WebSocket implementation behind `socket`, or throws for an unknown one. */
function socketKind(socket) {
  if (socket instanceof NodeWebSocketClass) {
    return 'ws';
  }
  if (typeof globalThis.WebSocket === 'function' && socket instanceof globalThis.WebSocket) {
    return 'native';
  }
  throw new Error(`unexpected WebSocket class ${socket?.constructor?.name}`);
}

/**
 * Checks that a native handshake URL carried the token and version in its
 * query. The URL contains the token, so it is compared, never printed.
 */
function checkNativeQuery(url, token) {
  const query = new URL(url).searchParams;
  expect(query.get('access_token') === token, 'the native handshake did not carry the token as access_token');
  expect(query.get('cartesia_version') === '2026-08-14', `cartesia_version ${query.get('cartesia_version')}`);
  expect(query.get('cartesia_client') === 'cartesia-js/4.2.0', `cartesia_client ${query.get('cartesia_client')}`);
}

/** Opens a TTS WebSocket whose errors are collected instead of becoming unhandled rejections. */
async function openTts(client, expectedKind) {
  const connection = await client.tts.websocket();
  const errors = [];
  connection.on('error', (error) => errors.push(error));
  expect(socketKind(connection.socket) === expectedKind, `TTS socket is ${socketKind(connection.socket)}`);
  return { connection, errors };
}

async function receiveAll(context) {
  const responses = [];
  for await (const response of context.receive({ timeout: CHECK_TIMEOUT_MS })) {
    responses.push(response);
  }
  return responses;
}

/** Streams two pieces and a flush into one context, cancels a second one and finishes a third. */
async function checkTtsWebsocketContexts(client) {
  const { connection, errors } = await openTts(client, 'ws');
  try {
    const first = connection.context({ model_id: MODEL, voice: VOICE, output_format: RAW_S16, add_timestamps: true });
    await first.push({ transcript: 'Hello ' });
    await first.push({ transcript: 'world. ', flush: true });
    await first.push({ transcript: 'Second part.' });
    await first.no_more_inputs();
    const responses = await receiveAll(first);
    const kinds = responses.map((response) => response.type);
    expect(kinds.at(-1) === 'done', `first context ended with ${kinds.at(-1)}`);
    const flush = responses.find((response) => response.type === 'flush_done');
    expect(flush !== undefined, `no flush_done in ${JSON.stringify(kinds)}`);
    expect(flush.flush_id === 1, `first flush_id ${flush.flush_id}`);
    const audio = chunkAudio(responses);
    const spoken = 'Hello world. Second part.';
    expect(audio.length === expectedSamples(spoken) * 2, `first context audio ${audio.length} bytes`);
    const words = responses.filter((r) => r.type === 'timestamps').flatMap((r) => r.word_timestamps.words);
    expect(words.join(' ') === spoken, `first context words ${JSON.stringify(words)}`);

    const second = connection.context({ model_id: MODEL, voice: VOICE, output_format: RAW_S16 });
    await second.push({ transcript: 'This context is cancelled before it finishes speaking.' });
    const pending = second.receive({ timeout: CHECK_TIMEOUT_MS });
    const firstMessage = await pending.next();
    expect(firstMessage.value?.type === 'chunk', `second context first message ${firstMessage.value?.type}`);
    await second.cancel();
    await pending.return();

    const third = connection.context({ model_id: MODEL, voice: VOICE, output_format: RAW_S16 });
    await third.push({ transcript: 'Still here.' });
    await third.no_more_inputs();
    const thirdResponses = await receiveAll(third);
    expect(thirdResponses.at(-1)?.type === 'done', `third context ended with ${thirdResponses.at(-1)?.type}`);
    const thirdAudio = chunkAudio(thirdResponses);
    expect(thirdAudio.length === expectedSamples('Still here.') * 2, `third context audio ${thirdAudio.length} bytes`);

    expect(errors.length === 0, `TTS WebSocket errors: ${errors.map((e) => e.message).join('; ')}`);
    return { socket: 'ws', kinds, flush_id: flush.flush_id, audio_bytes: audio.length, words };
  } finally {
    connection.close();
  }
}

async function checkTtsWebsocketNative(client, token) {
  const { connection, errors } = await openTts(client, 'native');
  try {
    checkNativeQuery(connection.socket.url, token);
    const context = connection.context({ model_id: MODEL, voice: VOICE, output_format: RAW_S16, add_timestamps: true });
    await context.push({ transcript: TRANSCRIPT });
    await context.no_more_inputs();
    const responses = await receiveAll(context);
    const kinds = responses.map((response) => response.type);
    expect(kinds.at(-1) === 'done', `context ended with ${kinds.at(-1)}`);
    const audio = chunkAudio(responses);
    expect(audio.length === expectedSamples(TRANSCRIPT) * 2, `native TTS audio ${audio.length} bytes`);
    const words = responses.filter((r) => r.type === 'timestamps').flatMap((r) => r.word_timestamps.words);
    expect(words.join(' ') === TRANSCRIPT, `native TTS words ${JSON.stringify(words)}`);
    expect(errors.length === 0, `TTS WebSocket errors: ${errors.map((e) => e.message).join('; ')}`);
    return { socket: 'native', audio_bytes: audio.length, words };
  } finally {
    connection.close();
  }
}

/**
 * Returns the next message event of an STT stream iterator, skipping
 * lifecycle events. Returns null when the socket closes and throws on an
 * error event.
 */
async function nextMessage(iterator) {
  for (;;) {
    const { value, done } = await iterator.next();
    if (done || value.type === 'close') {
      return null;
    }
    if (value.type === 'error') {
      throw value.error;
    }
    if (value.type === 'message') {
      return value.message;
    }
  }
}

/** Returns every message until the socket closes, and the close event. */
async function messagesUntilClose(iterator) {
  const messages = [];
  for (;;) {
    const { value, done } = await iterator.next();
    if (done) {
      return { messages, close: null };
    }
    if (value.type === 'close') {
      return { messages, close: { code: value.code, reason: value.reason } };
    }
    if (value.type === 'error') {
      throw value.error;
    }
    if (value.type === 'message') {
      messages.push(value.message);
    }
  }
}

function sendInChunks(socket, pcm) {
  for (let start = 0; start < pcm.length; start += 3200) {
    socket.sendRaw(pcm.subarray(start, start + 3200));
  }
}

/** Sends 1 s of audio and `finalize`, then 0.5 s more and `close`. */
async function checkSttManual(client, expectedKind, token) {
  const socket = client.stt.manualFinalize.websocket({ model: 'ink-whisper', encoding: 'pcm_s16le', sample_rate: RATE });
  const kind = socketKind(socket.socket.platformSocket);
  expect(kind === expectedKind, `STT socket is ${kind}`);
  if (kind === 'native') {
    checkNativeQuery(socket.socket.platformSocket.url, token);
  }
  const iterator = socket.stream();
  try {
    const pcm = toneS16(1.0);
    sendInChunks(socket, pcm);
    socket.send('finalize');
    const events = [];
    for (;;) {
      const message = await nextMessage(iterator);
      expect(message !== null, `the socket closed after ${JSON.stringify(events.map((e) => e.type))}`);
      events.push(message);
      if (message.type === 'flush_done') {
        break;
      }
    }
    sendInChunks(socket, pcm.subarray(0, 16000));
    socket.send('close');
    const { messages, close } = await messagesUntilClose(iterator);
    events.push(...messages);

    const kinds = events.map((event) => event.type);
    expect(
      JSON.stringify(kinds) === JSON.stringify(['transcript', 'flush_done', 'transcript', 'done']),
      `STT events ${JSON.stringify(kinds)}`,
    );
    expect(close?.code === 1000, `close ${JSON.stringify(close)}`);
    const finals = events.filter((event) => event.type === 'transcript');
    expect(finals.every((event) => event.is_final === true), 'a transcript was not final');
    expect(
      finals[0].text === 'received 32000 bytes, 1.00 seconds of audio',
      `first transcript ${JSON.stringify(finals[0].text)}`,
    );
    expect(finals[1].text.startsWith(' received 16000 bytes'), `second transcript ${JSON.stringify(finals[1].text)}`);
    expect(finals[0].words?.[0]?.word === 'received', `first transcript words ${JSON.stringify(finals[0].words)}`);
    return { socket: kind, kinds, texts: finals.map((event) => event.text), close_code: close.code };
  } finally {
    await iterator.return();
    socket.close();
  }
}

/** Sends 0.6 s of tone and 0.7 s of silence, a `config` and a `close`. */
async function checkSttTurns(client, expectedKind, token) {
  const socket = client.stt.autoFinalize.websocket({ model: 'ink-2', encoding: 'pcm_s16le', sample_rate: RATE });
  const kind = socketKind(socket.socket.platformSocket);
  expect(kind === expectedKind, `STT socket is ${kind}`);
  if (kind === 'native') {
    checkNativeQuery(socket.socket.platformSocket.url, token);
  }
  const iterator = socket.stream();
  try {
    sendInChunks(socket, toneS16(0.6));
    sendInChunks(socket, Buffer.alloc(7 * 3200));
    socket.send({ type: 'config', turn: { end_threshold: 0.1 } });
    socket.send({ type: 'close' });
    const { messages, close } = await messagesUntilClose(iterator);
    const kinds = messages.map((message) => message.type);
    expect(
      JSON.stringify(kinds) === JSON.stringify(['connected', 'turn.start', 'turn.update', 'turn.eager_end', 'turn.end']),
      `turn events ${JSON.stringify(kinds)}`,
    );
    expect(close !== null, 'the socket did not report its close');
    return { socket: kind, kinds, close_code: close.code };
  } finally {
    await iterator.return();
    socket.close();
  }
}

async function checkSttBatch(client, wavPath, wavBytes) {
  const result = await client.stt.transcribe({
    file: createReadStream(wavPath),
    model: 'ink-whisper',
    language: 'en',
    timestamp_granularities: ['word'],
  });
  expect(result.type === 'transcript', `type ${result.type}`);
  expect(result.text.startsWith(`received ${wavBytes} bytes`), `text ${JSON.stringify(result.text)}`);
  const seconds = expectedSamples(TRANSCRIPT) / RATE;
  expect(Math.abs((result.duration ?? 0) - seconds) < 0.002, `duration ${result.duration}, expected ${seconds}`);
  expect(result.words?.[0]?.word === 'received', `words ${JSON.stringify(result.words)}`);
  return { text: result.text, duration: result.duration, words: result.words.length };
}

/** Describes `error` and the chain of its causes, such as a socket error under an APIConnectionError. */
function describeError(error) {
  const parts = [];
  for (let current = error; current !== undefined && current !== null && parts.length < 5; current = current.cause) {
    const code = current.code ? ` (${current.code})` : '';
    parts.push(`${current.constructor?.name ?? typeof current}: ${current.message ?? String(current)}${code}`);
  }
  return parts.join(' <- caused by ');
}

/** Runs `call`, which must fail with the SDK's APIError subclass `errorClass`. */
async function expectApiError(call, errorClass, status) {
  try {
    await call();
  } catch (error) {
    expect(error instanceof errorClass, `${describeError(error)}, expected ${errorClass.name}`);
    expect(error.status === status, `status ${error.status}`);
    return { class: error.constructor.name, status: error.status, error_code: error.error?.error, message: error.message };
  }
  throw new Error(`the call succeeded, expected ${errorClass.name}`);
}

/**
 * Opens an STT WebSocket that the gateway must reject and returns the
 * error the SDK reported. No message may arrive.
 */
async function expectSttRejected(openSocket, expectedKind) {
  const socket = openSocket();
  const kind = socketKind(socket.socket.platformSocket);
  expect(kind === expectedKind, `STT socket is ${kind}`);
  const messages = [];
  socket.on('event', (event) => messages.push(event));
  const closed = new Promise((resolve) => socket.once('close', resolve));
  const error = await new Promise((resolve) => socket.once('error', resolve));
  // NOTE: The global WebSocket of Node.js 20.20 reports a rejected handshake
  // with an error event only. It never fires close and stays CONNECTING,
  // where a browser fires close with 1006, so only the `ws` path waits for it.
  const closeCode = kind === 'ws' ? await closed : null;
  expect(messages.length === 0, `messages arrived: ${JSON.stringify(messages.map((m) => m.type))}`);
  return { socket: kind, close_code: closeCode, error: error.message };
}

async function runAll(checks, baseURL, token, outDir) {
  const node = new NodeCartesia({ token, baseURL });
  const native = new NativeCartesia({ token, baseURL });
  const wavPath = join(outDir, 'speech.wav');
  let wavBytes = 0;

  await checks.run('tts.generate returns a valid WAV', async () => {
    const detail = await checkTtsBytes(node, wavPath);
    wavBytes = detail.bytes;
    return detail;
  });
  await checks.run('tts.generateSSE streams audio and timestamps', () => checkTtsSse(node));
  await checks.run('tts.websocket contexts over ws', () => checkTtsWebsocketContexts(node));
  await checks.run('tts.websocket over native WebSocket', () => checkTtsWebsocketNative(native, token));
  await checks.run('stt.manualFinalize over ws', () => checkSttManual(node, 'ws', token));
  await checks.run('stt.manualFinalize over native WebSocket', () => checkSttManual(native, 'native', token));
  await checks.run('stt.autoFinalize over ws', () => checkSttTurns(node, 'ws', token));
  await checks.run('stt.autoFinalize over native WebSocket', () => checkSttTurns(native, 'native', token));
  await checks.run('stt.transcribe', () => checkSttBatch(node, wavPath, wavBytes));
  await checks.run('tampered token gets 401', async () => {
    const tampered = new NodeCartesia({ token: `${token}x`, baseURL, maxRetries: 0 });
    const detail = await expectApiError(
      () => tampered.tts.generate({ model_id: MODEL, transcript: 'x', voice: VOICE, output_format: WAV_S16 }),
      NodeCartesia.AuthenticationError,
      401,
    );
    expect(detail.error_code === 'invalid_session', `error code ${detail.error_code}`);
    return detail;
  });
}

async function runWithoutStt(checks, baseURL, token, outDir) {
  const node = new NodeCartesia({ token, baseURL });
  const native = new NativeCartesia({ token, baseURL });
  // The SDK never retries a 403, but it retries connection errors, which
  // would hide a rejection that reached it as a broken connection.
  const noRetries = new NodeCartesia({ token, baseURL, maxRetries: 0 });
  const wavPath = join(outDir, 'speech.wav');

  await checks.run('tts.generate returns a valid WAV', () => checkTtsBytes(node, wavPath));
  await checks.run('tts.websocket over native WebSocket', () => checkTtsWebsocketNative(native, token));
  await checks.run('stt.manualFinalize over ws gets 403', async () => {
    const detail = await expectSttRejected(
      () => node.stt.manualFinalize.websocket({ model: 'ink-whisper', encoding: 'pcm_s16le', sample_rate: RATE }),
      'ws',
    );
    expect(detail.error === 'Unexpected server response: 403', `error ${JSON.stringify(detail.error)}`);
    return detail;
  });
  await checks.run('stt.autoFinalize over ws gets 403', async () => {
    const detail = await expectSttRejected(
      () => node.stt.autoFinalize.websocket({ model: 'ink-2', encoding: 'pcm_s16le', sample_rate: RATE }),
      'ws',
    );
    expect(detail.error === 'Unexpected server response: 403', `error ${JSON.stringify(detail.error)}`);
    return detail;
  });
  // A browser's WebSocket API hides the handshake status, so the native path
  // can only show that the handshake failed.
  await checks.run('stt.manualFinalize over native WebSocket is rejected', () =>
    expectSttRejected(
      () => native.stt.manualFinalize.websocket({ model: 'ink-whisper', encoding: 'pcm_s16le', sample_rate: RATE }),
      'native',
    ),
  );
  await checks.run('stt.transcribe gets 403', async () => {
    const detail = await expectApiError(
      () => noRetries.stt.transcribe({ file: createReadStream(wavPath), model: 'ink-whisper' }),
      NodeCartesia.PermissionDeniedError,
      403,
    );
    expect(detail.error_code === 'grant_missing', `error code ${detail.error_code}`);
    return detail;
  });
  // The gateway rejects before reading the upload, so a body larger than the
  // socket buffers is still being sent when the 403 arrives.
  await checks.run('stt.transcribe of 32 s gets 403', async () => {
    const longPath = join(outDir, 'long.wav');
    await writeFile(longPath, toneWav(32));
    const detail = await expectApiError(
      () => noRetries.stt.transcribe({ file: createReadStream(longPath), model: 'ink-whisper' }),
      NodeCartesia.PermissionDeniedError,
      403,
    );
    expect(detail.error_code === 'grant_missing', `error code ${detail.error_code}`);
    return detail;
  });
}

async function main() {
  const { values } = parseArgs({
    options: {
      'base-url': { type: 'string' },
      'token-env': { type: 'string' },
      'without-grant': { type: 'string' },
    },
  });
  const baseURL = values['base-url'];
  const tokenEnv = values['token-env'];
  if (!baseURL || !tokenEnv) {
    throw new Error('usage: stand_in_smoke.mjs --base-url URL --token-env NAME [--without-grant stt]');
  }
  const token = process.env[tokenEnv];
  if (!token) {
    throw new Error(`environment variable ${tokenEnv} is not set`);
  }
  const missing = values['without-grant'];
  if (missing !== undefined && missing !== 'stt') {
    throw new Error(`--without-grant ${missing} is not supported; the only value is stt`);
  }
  if (typeof globalThis.WebSocket !== 'function') {
    throw new Error('Node.js has no global WebSocket; run Node.js 22 or newer, or 20.10+ with --experimental-websocket');
  }

  // An SDK error without a listener becomes an unhandled rejection, which
  // would end the process before the report is printed.
  const unhandled = [];
  process.on('unhandledRejection', (reason) => unhandled.push(reason?.message ?? String(reason)));

  const checks = new Checks();
  const outDir = await mkdtemp(join(tmpdir(), 'cartesia-js-sdk-'));
  try {
    if (missing === 'stt') {
      await runWithoutStt(checks, baseURL, token, outDir);
    } else {
      await runAll(checks, baseURL, token, outDir);
    }
  } finally {
    await rm(outDir, { recursive: true, force: true });
  }
  await checks.run('no unhandled rejections', () => {
    expect(unhandled.length === 0, `unhandled rejections: ${unhandled.join('; ')}`);
  });

  console.log(JSON.stringify({ node: process.version, checks: checks.results }));
  return checks.allPassed ? 0 : 1;
}

main().then(
  (status) => process.exit(status),
  (error) => {
    console.error(error?.stack ?? String(error));
    process.exit(2);
  },
);
