//! Prometheus metrics of one gateway, served on the admin listener.
//!
//! Every metric lives in the gateway's own registry, so several gateways in
//! one process (as in the tests) never share counts. Names start with
//! `cartesia_gateway_`, except the conventional `process_*` metrics;
//! durations are in seconds and byte counts in bytes.
//! Labels take values from fixed sets (routes, status classes, reasons,
//! directions); nothing carries a user id, a token or a client address.
//!
//! The exposition is the OpenMetrics text format, which Prometheus reads
//! natively; `prometheus-client` writes it.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::routes::Route;

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds, in seconds, of request duration buckets: streamed TTS runs
/// for seconds, batch transcription of long files for minutes.
const DURATION_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Upper bounds, in seconds, of time-to-first-byte and mint buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The `result` labels of `token_mints_total`.
pub(crate) const MINT_RESULTS: [&str; 7] = [
    "success",
    "rejected",
    "server_error",
    "transport_error",
    "timeout",
    "invalid_response",
    "throttled",
];

/// The `kind` labels of `upstream_errors_total`.
const UPSTREAM_ERROR_KINDS: [&str; 5] = [
    "connect",
    "timeout",
    "websocket_handshake",
    "status_5xx",
    "response_body",
];

/// The `route` label of requests whose path matches no route.
pub const UNKNOWN_ROUTE: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedByLabels {
    closed_by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The direction of WebSocket messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ClientToUpstream,
    UpstreamToClient,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::ClientToUpstream => "client_to_upstream",
            Direction::UpstreamToClient => "upstream_to_client",
        }
    }
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// The gateway's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteLabels>,
    time_to_first_byte: HistogramFamily<RouteLabels>,
    token_cache_hits: Counter,
    token_cache_misses: Counter,
    token_mints: Family<ResultLabels, Counter>,
    token_mint_duration: Histogram,
    websockets_open: Family<RouteLabels, Gauge>,
    websocket_messages: Family<DirectionLabels, Counter>,
    websocket_bytes: Family<DirectionLabels, Counter>,
    websocket_closes: Family<ClosedByLabels, Counter>,
    session_rejections: Family<ReasonLabels, Counter>,
    upstream_errors: Family<KindLabels, Counter>,
    connections_open: Gauge,
    ready: Gauge,
    certificate_expiry: Gauge,
    process: Process,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Metrics {
    /// Creates and registers every metric, at zero.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let process = Process::register(&mut root);
        let registry = root.sub_registry_with_prefix("cartesia_gateway");
        let metrics = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            time_to_first_byte: Family::new_with_constructor(latency_histogram),
            token_cache_hits: Counter::default(),
            token_cache_misses: Counter::default(),
            token_mints: Family::default(),
            token_mint_duration: latency_histogram(),
            websockets_open: Family::default(),
            websocket_messages: Family::default(),
            websocket_bytes: Family::default(),
            websocket_closes: Family::default(),
            session_rejections: Family::default(),
            upstream_errors: Family::default(),
            connections_open: Gauge::default(),
            ready: Gauge::default(),
            certificate_expiry: Gauge::default(),
            registry: Registry::default(),
            process: Process::default(),
        };

        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1. The version label is the gateway's version",
            build,
        );

        registry.register(
            "requests",
            "Requests with a response, by route and status class (a WebSocket counts once, at its 101)",
            metrics.requests.clone(),
        );

        registry.register_with_unit(
            "request_duration",
            "Time from the request to the end of the response body; for WebSockets, to the 101",
            Unit::Seconds,
            metrics.request_duration.clone(),
        );

        registry.register_with_unit(
            "time_to_first_byte",
            "Time from the request to the first byte of the response body",
            Unit::Seconds,
            metrics.time_to_first_byte.clone(),
        );

        registry.register(
            "token_cache_hits",
            "Requests served with a cached Cartesia access token",
            metrics.token_cache_hits.clone(),
        );

        registry.register(
            "token_cache_misses",
            "Requests that found no cached Cartesia access token and waited for a mint, failed ones included",
            metrics.token_cache_misses.clone(),
        );

        registry.register(
            "token_mints",
            "Calls to Cartesia's POST /access-token, by result (throttled: no call was made)",
            metrics.token_mints.clone(),
        );

        registry.register_with_unit(
            "token_mint_duration",
            "Duration of each call to Cartesia's POST /access-token",
            Unit::Seconds,
            metrics.token_mint_duration.clone(),
        );

        registry.register(
            "websockets_open",
            "WebSockets being relayed, by route",
            metrics.websockets_open.clone(),
        );

        registry.register(
            "websocket_messages",
            "WebSocket messages relayed (text, binary, ping, pong), by direction",
            metrics.websocket_messages.clone(),
        );

        registry.register_with_unit(
            "websocket",
            "WebSocket message payload relayed, by direction",
            Unit::Bytes,
            metrics.websocket_bytes.clone(),
        );

        registry.register(
            "websocket_closes",
            "WebSockets ended, by the party that closed them",
            metrics.websocket_closes.clone(),
        );

        registry.register(
            "session_rejections",
            "Requests refused for their session: missing, invalid or expired, or without the route's grant",
            metrics.session_rejections.clone(),
        );

        registry.register(
            "upstream_errors",
            "Failures of forwarded requests to the Cartesia API, by kind; failed mints count in token_mints",
            metrics.upstream_errors.clone(),
        );

        registry.register(
            "connections_open",
            "Client connections served as HTTP on the HTTPS listener; upgraded WebSockets count in websockets_open",
            metrics.connections_open.clone(),
        );

        registry.register(
            "ready",
            "1 while /readyz reports ready, else 0",
            metrics.ready.clone(),
        );

        registry.register_with_unit(
            "certificate_expiry_timestamp",
            "Unix time at which the served certificate expires",
            Unit::Seconds,
            metrics.certificate_expiry.clone(),
        );

        metrics.create_fixed_series();
        Metrics {
            registry: root,
            process,
            ..metrics
        }
    }

    /// Creates at zero every series whose labels come from a short fixed
    /// set, so dashboards show 0 rather than no data before the first event.
    fn create_fixed_series(&self) {
        for result in MINT_RESULTS {
            self.token_mints
                .get_or_create_owned(&ResultLabels { result });
        }
        for direction in [Direction::ClientToUpstream, Direction::UpstreamToClient] {
            self.websocket_traffic(direction);
        }
        for closed_by in ["client", "upstream", "gateway"] {
            self.websocket_closes
                .get_or_create_owned(&ClosedByLabels { closed_by });
        }
        for reason in [
            "missing",
            "ambiguous",
            "malformed",
            "expired",
            "grant_missing",
        ] {
            self.session_rejections
                .get_or_create_owned(&ReasonLabels { reason });
        }
        for kind in UPSTREAM_ERROR_KINDS {
            self.upstream_errors
                .get_or_create_owned(&KindLabels { kind });
        }
        for route in Route::ALL {
            if route.kind() == crate::routes::RouteKind::WebSocket {
                self.websockets_open.get_or_create_owned(&RouteLabels {
                    route: route.path(),
                });
            }
        }
    }

    /// Writes every metric in the OpenMetrics text format, with the process
    /// metrics read just before.
    pub fn render(&self) -> String {
        self.process.update();
        let mut out = String::new();
        // `fmt::Write` for `String` never returns an error.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a response head sent for `route` (`None`: no route matched).
    pub fn request_answered(&self, route: Option<Route>, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route_label(route),
                status_class: status_class(status),
            })
            .inc();
    }

    /// Records the duration and time to first byte of a finished request.
    pub fn request_finished(
        &self,
        route: Option<Route>,
        duration: Duration,
        first_byte: Option<Duration>,
    ) {
        let labels = RouteLabels {
            route: route_label(route),
        };
        self.request_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        if let Some(first_byte) = first_byte {
            self.time_to_first_byte
                .get_or_create(&labels)
                .observe(first_byte.as_secs_f64());
        }
    }

    pub fn token_lookup(&self, hit: bool) {
        if hit {
            self.token_cache_hits.inc();
        } else {
            self.token_cache_misses.inc();
        }
    }

    /// Counts one mint call by `result` and records its duration; a
    /// throttled mint made no call and has no duration.
    pub fn token_mint(&self, result: &'static str, duration: Option<Duration>) {
        self.token_mints
            .get_or_create(&ResultLabels { result })
            .inc();
        if let Some(duration) = duration {
            self.token_mint_duration.observe(duration.as_secs_f64());
        }
    }

    pub fn session_rejected(&self, reason: &'static str) {
        self.session_rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Returns the counter of upstream errors of `kind`, for code that
    /// counts without access to the gateway.
    pub fn upstream_error_counter(&self, kind: &'static str) -> Counter {
        self.upstream_errors
            .get_or_create_owned(&KindLabels { kind })
    }

    /// Counts a WebSocket as open until the returned guard is dropped.
    pub fn websocket_opened(&self, route: Route) -> OpenGuard {
        let gauge = self.websockets_open.get_or_create_owned(&RouteLabels {
            route: route.path(),
        });
        gauge.inc();
        OpenGuard(gauge)
    }

    /// Counts a client connection as open until the guard is dropped.
    pub fn connection_opened(&self) -> OpenGuard {
        self.connections_open.inc();
        OpenGuard(self.connections_open.clone())
    }

    /// Returns the message and byte counters of one direction.
    pub fn websocket_traffic(&self, direction: Direction) -> Traffic {
        let labels = DirectionLabels {
            direction: direction.as_str(),
        };
        Traffic {
            messages: self.websocket_messages.get_or_create_owned(&labels),
            bytes: self.websocket_bytes.get_or_create_owned(&labels),
        }
    }

    pub fn websocket_closed(&self, closed_by: &'static str) {
        self.websocket_closes
            .get_or_create(&ClosedByLabels { closed_by })
            .inc();
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Sets the served certificate's expiry, in seconds since the Unix epoch.
    pub fn set_certificate_expiry(&self, unix_secs: i64) {
        self.certificate_expiry.set(unix_secs);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The conventional `process_*` metrics, read from `/proc/self` on Linux
/// at each scrape. Elsewhere they stay at 0.
#[derive(Default)]
struct Process {
    cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// CPU seconds already added to `cpu_seconds`, as `f64` bits.
    cpu_seconds_seen: std::sync::atomic::AtomicU64,
    resident_memory_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time_seconds: Gauge,
}

/// Clock ticks per second in `/proc/self/stat`, which Linux fixes at 100
/// for user space (`USER_HZ`).
const USER_HZ: f64 = 100.0;

impl Process {
    fn register(root: &mut Registry) -> Process {
        let process = Process::default();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        process
            .start_time_seconds
            .set(i64::try_from(started).unwrap_or(i64::MAX));
        root.register_with_unit(
            "process_cpu",
            "User and system CPU time of the gateway process",
            Unit::Seconds,
            process.cpu_seconds.clone(),
        );
        root.register_with_unit(
            "process_resident_memory",
            "Resident memory of the gateway process",
            Unit::Bytes,
            process.resident_memory_bytes.clone(),
        );
        root.register(
            "process_open_fds",
            "Open file descriptors",
            process.open_fds.clone(),
        );
        root.register(
            "process_max_fds",
            "Soft limit on open file descriptors",
            process.max_fds.clone(),
        );
        root.register_with_unit(
            "process_start_time",
            "Unix time at which the gateway's metrics were created, close to the process start",
            Unit::Seconds,
            process.start_time_seconds.clone(),
        );
        process
    }

    fn update(&self) {
        if let Some(cpu) = read_cpu_seconds() {
            let seen = f64::from_bits(
                self.cpu_seconds_seen
                    .swap(cpu.to_bits(), std::sync::atomic::Ordering::Relaxed),
            );
            if cpu > seen {
                self.cpu_seconds.inc_by(cpu - seen);
            }
        }
        if let Some(kib) = read_status_kib("VmRSS:") {
            self.resident_memory_bytes
                .set(i64::try_from(kib.saturating_mul(1024)).unwrap_or(i64::MAX));
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds
                .set(i64::try_from(entries.count()).unwrap_or(i64::MAX));
        }
        if let Some(limit) = read_open_files_limit() {
            self.max_fds.set(limit);
        }
    }
}

/// User plus system CPU seconds from `/proc/self/stat`.
fn read_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name in parentheses may contain spaces; fields after it
    // are space-separated, utime and stime being the 12th and 13th.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / USER_HZ)
}

/// Reads the value in KiB of a `/proc/self/status` line such as `VmRSS:`.
fn read_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Reads the soft limit of "Max open files" in `/proc/self/limits`.
fn read_open_files_limit() -> Option<i64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    soft.parse().ok()
}

/// Message and byte counters of one WebSocket direction.
#[derive(Clone, Default)]
pub struct Traffic {
    messages: Counter,
    bytes: Counter,
}

impl Traffic {
    pub fn message(&self, bytes: u64) {
        self.messages.inc();
        self.bytes.inc_by(bytes);
    }
}

/// Decrements a gauge when dropped.
pub struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Shared handle to a gateway's metrics.
pub type SharedMetrics = Arc<Metrics>;

fn route_label(route: Option<Route>) -> &'static str {
    route.map_or(UNKNOWN_ROUTE, Route::path)
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn counters_render_with_conventional_names() {
        let metrics = Metrics::new();
        metrics.request_answered(Some(Route::TtsBytes), 200);
        metrics.request_answered(Some(Route::TtsBytes), 204);
        metrics.request_answered(None, 404);
        metrics.token_lookup(true);
        metrics.token_mint("success", Some(Duration::from_millis(20)));
        metrics
            .websocket_traffic(Direction::ClientToUpstream)
            .message(10);

        let text = metrics.render();
        let two_xx = r#"cartesia_gateway_requests_total{route="/tts/bytes",status_class="2xx"}"#;
        assert_eq!(sample(&text, two_xx), Some(2.0), "{text}");
        let unknown = r#"cartesia_gateway_requests_total{route="unknown",status_class="4xx"}"#;
        assert_eq!(sample(&text, unknown), Some(1.0), "{text}");
        assert_eq!(
            sample(&text, "cartesia_gateway_token_cache_hits_total"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "cartesia_gateway_token_mint_duration_seconds_count"),
            Some(1.0)
        );
        let bytes = r#"cartesia_gateway_websocket_bytes_total{direction="client_to_upstream"}"#;
        assert_eq!(sample(&text, bytes), Some(10.0), "{text}");
        let build = format!(
            r#"cartesia_gateway_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&text, &build), Some(1.0), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn process_metrics_are_read_on_linux() {
        let metrics = Metrics::new();
        let text = metrics.render();
        assert!(
            sample(&text, "process_resident_memory_bytes") > Some(1.0e6),
            "{text}"
        );
        assert!(sample(&text, "process_open_fds") >= Some(3.0), "{text}");
        assert!(sample(&text, "process_max_fds") >= Some(64.0), "{text}");
        assert!(
            sample(&text, "process_cpu_seconds_total") >= Some(0.0),
            "{text}"
        );
        assert!(
            sample(&text, "process_start_time_seconds") > Some(1.7e9),
            "{text}"
        );
    }

    #[test]
    fn open_guards_return_gauges_to_zero() {
        let metrics = Metrics::new();
        let first = metrics.websocket_opened(Route::SttWebSocket);
        let second = metrics.websocket_opened(Route::SttWebSocket);
        let open = r#"cartesia_gateway_websockets_open{route="/stt/websocket"}"#;
        assert_eq!(sample(&metrics.render(), open), Some(2.0));
        drop(first);
        drop(second);
        assert_eq!(sample(&metrics.render(), open), Some(0.0));
    }

    #[test]
    fn status_classes_cover_every_status() {
        assert_eq!(status_class(101), "1xx");
        assert_eq!(status_class(308), "3xx");
        assert_eq!(status_class(499), "4xx");
        assert_eq!(status_class(503), "5xx");
    }
}
