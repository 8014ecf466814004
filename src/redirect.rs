//! The optional plain-HTTP listener. It only redirects: every request gets
//! a 308 to `https://` on the configured public host and port, with the
//! request's path and query kept byte for byte.
//!
//! The `Host` header never chooses the target, so the listener cannot be
//! used as an open redirect. No handler, session check or upstream call runs
//! here, and responses carry no `Strict-Transport-Security`, which browsers
//! ignore on plain HTTP anyway (RFC 6797 section 8.1).

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, LOCATION};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::config::RedirectConfig;
use crate::shutdown::ShutdownController;

/// Time the redirect listener waits for open connections at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Time a client has to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

const BODY: &str = "Use HTTPS.\n";

/// Serves redirects on `listener` until `shutdown` completes.
pub async fn serve_redirects(
    listener: TcpListener,
    config: RedirectConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let base = https_base(&config);
    let controller = ShutdownController::new();
    tracing::info!(address = %listener.local_addr()?, target = %base, "redirect listener started");
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a plain-HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(mut handle) = controller.handle() else {
            break;
        };
        let base = base.clone();
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let response = redirect(&base, &request);
            async move { Ok::<_, Infallible>(response) }
        });
        let task = async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = handle.signalled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "plain-HTTP connection ended with an error");
            }
        };
        let span = tracing::debug_span!("redirect_conn", client.addr = %peer);
        tokio::spawn(task.instrument(span));
    }
    drop(listener);
    controller.shutdown(SHUTDOWN_TIMEOUT).await;
    Ok(())
}

/// `https://host` with `:port` unless it is 443.
fn https_base(config: &RedirectConfig) -> String {
    if config.public_port == 443 {
        format!("https://{}", config.public_host)
    } else {
        format!("https://{}:{}", config.public_host, config.public_port)
    }
}

/// Builds the 308 for `request`. Only the path and query of the request
/// target are used, so an absolute-form target cannot change the host.
fn redirect<B>(base: &str, request: &Request<B>) -> Response<Full<Bytes>> {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    let path_and_query = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    let mut response = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match HeaderValue::from_str(&format!("{base}{path_and_query}")) {
        Ok(location) => {
            headers.insert(LOCATION, location);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(port: u16) -> RedirectConfig {
        RedirectConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            public_host: "voice.example.com".to_owned(),
            public_port: port,
        }
    }

    fn location(base: &str, target: &str, host: &str) -> String {
        let request = Request::get(target).header("host", host).body(()).unwrap();
        let response = redirect(base, &request);
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        response.headers()[LOCATION].to_str().unwrap().to_owned()
    }

    #[test]
    fn default_port_is_omitted() {
        assert_eq!(https_base(&config(443)), "https://voice.example.com");
        assert_eq!(https_base(&config(8443)), "https://voice.example.com:8443");
    }

    #[test]
    fn path_and_query_are_kept_and_host_ignored() {
        let base = https_base(&config(8443));
        assert_eq!(
            location(&base, "/tts/bytes?a=1&b=%2F+x", "evil.example"),
            "https://voice.example.com:8443/tts/bytes?a=1&b=%2F+x"
        );
        assert_eq!(
            location(&base, "http://evil.example/x?y", "evil.example"),
            "https://voice.example.com:8443/x?y"
        );
        assert_eq!(
            location(&base, "*", "evil.example"),
            "https://voice.example.com:8443/"
        );
    }
}
