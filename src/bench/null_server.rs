//! The null server of `--baseline`: an actix-web server in the bench process, on a port of its
//! own, that accepts `POST /v1/ingest`, reads and parses the batch exactly as Tollgate does
//! ([`read_body`], [`parse_batch`]) and answers 200, nothing else. Its rate under the same load
//! is this machine's HTTP + JSON ceiling; Tollgate's rate divided by it is the ratio the
//! performance goals name.

use std::net::TcpListener;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

use super::sink::spawn_server;
use crate::http::error::ApiResult;
use crate::http::ingest::{parse_batch, read_body};

/// Tollgate's default `http.body_limit_bytes`.
const BODY_LIMIT_BYTES: usize = 1 << 20;

async fn ingest(request: HttpRequest, payload: web::Payload) -> ApiResult<HttpResponse> {
    let body = read_body(&request, payload, BODY_LIMIT_BYTES).await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    parse_batch(&body, now_ms)?;
    Ok(HttpResponse::Ok().finish())
}

/// Starts the null server on 127.0.0.1:`port` (0 = an ephemeral port) with `workers` HTTP
/// workers (as many as the server under test has); returns its base URL. It runs until the
/// process exits.
///
/// # Errors
/// When the port cannot be bound.
pub fn start(workers: usize, port: u16) -> Result<String, String> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("null server cannot bind 127.0.0.1:{port}: {e}"))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("null server: {e}"))?;
    spawn_server("bench-null-server", move || {
        HttpServer::new(|| {
            App::new()
                .app_data(web::PayloadConfig::new(BODY_LIMIT_BYTES))
                .route("/v1/ingest", web::post().to(ingest))
        })
        .workers(workers.max(1))
        .disable_signals()
        .listen(listener)
        .map(|server| server.run())
    })?;
    Ok(format!("http://{address}"))
}
