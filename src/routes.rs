//! The fixed table of Cartesia endpoints the gateway forwards, with the
//! method and grant each one needs.
//!
//! Matching compares the request path byte for byte with the table. Nothing is
//! decoded or normalized first, so `/tts/%62ytes`, `/tts/./bytes`,
//! `//tts/bytes` and `/tts/bytes/` all miss and get a 404 from the gateway.
//! The upstream request always uses the table's path, never the client's.

use http::Method;

/// A Cartesia access-token grant, as named in `POST /access-token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Grant {
    Tts,
    Stt,
}

impl Grant {
    /// The grant's name in JWT claims and in the Cartesia API.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Tts => "tts",
            Grant::Stt => "stt",
        }
    }

    pub fn from_name(name: &str) -> Option<Grant> {
        match name {
            "tts" => Some(Grant::Tts),
            "stt" => Some(Grant::Stt),
            _ => None,
        }
    }
}

/// A set of grants, stored as bits so it is `Copy` and cheap to hash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Grants(u8);

impl Grants {
    pub const NONE: Grants = Grants(0);

    pub fn of(grant: Grant) -> Grants {
        Grants(Self::bit(grant))
    }

    pub fn with(self, grant: Grant) -> Grants {
        Grants(self.0 | Self::bit(grant))
    }

    pub fn contains(self, grant: Grant) -> bool {
        self.0 & Self::bit(grant) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Grant> {
        [Grant::Tts, Grant::Stt]
            .into_iter()
            .filter(move |grant| self.contains(*grant))
    }

    fn bit(grant: Grant) -> u8 {
        match grant {
            Grant::Tts => 1,
            Grant::Stt => 2,
        }
    }
}

/// How a route is used by clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// A `POST` whose request and response bodies are streamed.
    Http,
    /// A `GET` that upgrades to a WebSocket (RFC 6455).
    WebSocket,
}

/// One forwarded Cartesia endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    TtsBytes,
    TtsSse,
    TtsWebSocket,
    SttBatch,
    AudioTranscriptions,
    SttWebSocket,
    SttTurnsWebSocket,
}

impl Route {
    pub const ALL: [Route; 7] = [
        Route::TtsBytes,
        Route::TtsSse,
        Route::TtsWebSocket,
        Route::SttBatch,
        Route::AudioTranscriptions,
        Route::SttWebSocket,
        Route::SttTurnsWebSocket,
    ];

    /// Looks up the route whose path equals `path` exactly.
    pub fn from_path(path: &str) -> Option<Route> {
        match path {
            "/tts/bytes" => Some(Route::TtsBytes),
            "/tts/sse" => Some(Route::TtsSse),
            "/tts/websocket" => Some(Route::TtsWebSocket),
            "/stt" => Some(Route::SttBatch),
            "/audio/transcriptions" => Some(Route::AudioTranscriptions),
            "/stt/websocket" => Some(Route::SttWebSocket),
            "/stt/turns/websocket" => Some(Route::SttTurnsWebSocket),
            _ => None,
        }
    }

    /// The path sent upstream, which is also the route's name in logs.
    pub fn path(self) -> &'static str {
        match self {
            Route::TtsBytes => "/tts/bytes",
            Route::TtsSse => "/tts/sse",
            Route::TtsWebSocket => "/tts/websocket",
            Route::SttBatch => "/stt",
            Route::AudioTranscriptions => "/audio/transcriptions",
            Route::SttWebSocket => "/stt/websocket",
            Route::SttTurnsWebSocket => "/stt/turns/websocket",
        }
    }

    pub fn grant(self) -> Grant {
        match self {
            Route::TtsBytes | Route::TtsSse | Route::TtsWebSocket => Grant::Tts,
            Route::SttBatch
            | Route::AudioTranscriptions
            | Route::SttWebSocket
            | Route::SttTurnsWebSocket => Grant::Stt,
        }
    }

    pub fn kind(self) -> RouteKind {
        match self {
            Route::TtsWebSocket | Route::SttWebSocket | Route::SttTurnsWebSocket => {
                RouteKind::WebSocket
            }
            Route::TtsBytes | Route::TtsSse | Route::SttBatch | Route::AudioTranscriptions => {
                RouteKind::Http
            }
        }
    }

    /// The only method the route accepts.
    pub fn method(self) -> Method {
        match self.kind() {
            RouteKind::Http => Method::POST,
            RouteKind::WebSocket => Method::GET,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_matches_its_own_path() {
        for route in Route::ALL {
            assert_eq!(Route::from_path(route.path()), Some(route));
        }
    }

    #[test]
    fn near_miss_paths_do_not_match() {
        let near_misses = [
            "/tts/bytes/",
            "//tts/bytes",
            "/tts/./bytes",
            "/tts/../tts/bytes",
            "/tts/%62ytes",
            "/TTS/bytes",
            "/tts/bytes%00",
            "/tts/bytes;x",
            "/stt/",
            "/access-token",
            "/voices",
            "",
            "*",
        ];
        for path in near_misses {
            assert_eq!(Route::from_path(path), None, "{path} must not match");
        }
    }

    #[test]
    fn routes_need_expected_grants_and_methods() {
        assert_eq!(Route::TtsBytes.grant(), Grant::Tts);
        assert_eq!(Route::TtsWebSocket.method(), Method::GET);
        assert_eq!(Route::SttBatch.method(), Method::POST);
        assert_eq!(Route::AudioTranscriptions.grant(), Grant::Stt);
        assert_eq!(Route::SttTurnsWebSocket.kind(), RouteKind::WebSocket);
    }

    #[test]
    fn grants_set_operations() {
        let grants = Grants::NONE.with(Grant::Stt);
        assert!(grants.contains(Grant::Stt));
        assert!(!grants.contains(Grant::Tts));
        assert_eq!(grants.iter().collect::<Vec<_>>(), vec![Grant::Stt]);
        assert_eq!(Grants::of(Grant::Tts).with(Grant::Stt).iter().count(), 2);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Generates route paths changed at one position: a byte inserted,
    /// removed, percent-encoded or flipped in case.
    fn near_miss() -> impl Strategy<Value = String> {
        (
            prop::sample::select(Route::ALL.to_vec()),
            any::<prop::sample::Index>(),
            0u8..4,
            prop::sample::select(vec!['/', '.', '%', ';', '\0', 'a', 'é', '?', '#']),
        )
            .prop_map(|(route, position, edit, extra)| {
                let path = route.path();
                let at = position.index(path.len() + 1);
                let (head, tail) = path.split_at(at);
                match edit {
                    0 => format!("{head}{extra}{tail}"),
                    1 if !tail.is_empty() => format!("{head}{}", &tail[1..]),
                    2 if !tail.is_empty() => {
                        format!("{head}%{:02X}{}", tail.as_bytes()[0], &tail[1..])
                    }
                    _ => format!("{head}{}", tail.to_ascii_uppercase()),
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn only_exact_table_paths_match(path in prop_oneof![near_miss(), any::<String>()]) {
            let expected = Route::ALL.into_iter().find(|route| route.path() == path);
            prop_assert_eq!(Route::from_path(&path), expected);
        }
    }
}
