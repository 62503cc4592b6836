//! Building and running the server from a [`Config`]: engine first (recovery), then the HTTP
//! server bound to its listener; SIGTERM stops accepting, finishes in-flight requests, writes a
//! checkpoint and exits 0.

use std::net::TcpListener;
use std::sync::Arc;

use tracing_subscriber::EnvFilter;

use crate::actors::Engine;
use crate::actors::clock::SystemClock;
use crate::actors::payment::Payments;
use crate::config::{Config, LogFormat};
use crate::http::stripe::StripeWebhook;
use crate::http::{ApiOptions, Application};
use crate::payments::stripe::{StripeProvider, StripeSettings};

/// Installs the tracing subscriber (text or JSON, filter from config or `RUST_LOG`).
pub fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.logging.level.clone()));
    // Colours only for a terminal: a file or a log collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let _ = match config.logging.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs the server until it is stopped, then ends the process: exit 0 after SIGTERM, 1 with the
/// message on stderr after a start-up failure (unusable data directory, port in use) or a
/// storage failure (fail-stop).
///
/// # Errors
/// Never returns; the type keeps `main`'s match simple.
pub fn serve(config: Config) -> Result<std::convert::Infallible, String> {
    crate::actors::quarantine::install_fatal_panic_hook();
    let system = actix_rt::System::new();
    let outcome = system.block_on(async move {
        let listener = TcpListener::bind(config.listen_addr()?)
            .map_err(|e| format!("cannot listen on {}: {e}", config.http.listen))?;
        let stripe = config.payments.stripe.as_ref().map(|s| StripeWebhook {
            webhook_secret: s.webhook_secret.clone(),
            webhook_path: s.webhook_path.clone(),
        });
        // The Stripe REST implementation of the provider seam.
        let payments = match &config.payments.stripe {
            Some(s) => Some(Payments {
                provider: Arc::new(StripeProvider::new(StripeSettings {
                    secret_key: s.secret_key.clone(),
                    api_base: s.api_base.clone(),
                    timeout_ms: s.timeout_ms,
                })?),
                settings: config.payment_settings(),
            }),
            None => None,
        };
        let engine = Engine::start(config.engine_config(), Arc::new(SystemClock), payments)
            .await
            .map_err(|e| format!("cannot start the engine: {e}"))?;
        if config
            .auth
            .tokens
            .iter()
            .any(|t| t.secret() == crate::config::DEVELOPMENT_TOKEN)
        {
            tracing::warn!("using the development token `tollgate-dev-token`; set auth.tokens for production");
        }
        let app = Application::build_with(
            listener,
            engine.clone(),
            ApiOptions {
                tokens: config.auth.tokens.clone(),
                body_limit: config.http.body_limit_bytes,
                workers: config.http.workers,
                stripe,
            },
        )
        .map_err(|e| format!("cannot start the HTTP server: {e}"))?;
        tracing::info!(port = app.port(), data_dir = %config.storage.data_dir.display(), "tollgate is serving");
        let address = format!("http://{}:{}", config.listen_addr()?.ip(), app.port());
        match config.logging.format {
            // Tools read this line to find the port.
            LogFormat::Text => println!("tollgate listening on {address}"),
            // The JSON stream holds JSON lines only: the same words as a JSON line, written
            // whatever the log level (tools read it to find the port).
            LogFormat::Json => println!(
                "{}",
                serde_json::json!({
                    "timestamp": crate::domain::Timestamp(engine.now_ms()).to_rfc3339(),
                    "level": "INFO",
                    "fields": {
                        "event": "listening",
                        "address": address,
                        "message": format!("tollgate listening on {address}"),
                    },
                    "target": "tollgate::startup",
                })
            ),
        }
        let handle = app.server_handle();
        let server = actix_rt::spawn(app.run_until_stopped());
        tokio::select! {
            () = wait_for_signal() => tracing::info!("signal received: stopping"),
            () = engine.failed() => return Err(fail_stop(handle, engine).await),
        }
        // Stop accepting and let in-flight requests finish.
        handle.stop(true).await;
        if let Ok(Err(error)) = server.await {
            tracing::error!(%error, "server error while stopping");
        }
        // Checkpoint so the next start replays little.
        match engine.checkpoint().await {
            Ok(()) => tracing::info!("final checkpoint written; stopped"),
            Err(error) => {
                tracing::error!(%error, "final checkpoint failed; the next start replays the log")
            }
        }
        Ok::<(), String>(())
    });
    // Everything acknowledged is durable (log, checkpoint). Leave without running destructors:
    // RocksDB's must not race the engine threads that still hold the database.
    use std::io::Write;
    let code = match outcome {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("tollgate: {message}");
            1
        }
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process at once; no Rust state is observed afterwards.
    unsafe { libc::_exit(code) }
}

/// After a storage failure: stop accepting, give in-flight requests a bounded time to get their
/// answers (503s by now), write no checkpoint, and report the failure so that `main` exits
/// non-zero; the supervisor restarts the server and recovery replays the log.
async fn fail_stop(handle: actix_web::dev::ServerHandle, engine: Engine) -> String {
    let drained = tokio::time::timeout(FAIL_STOP_DRAIN, handle.stop(true)).await;
    if drained.is_err() {
        tracing::error!("in-flight requests did not finish within the drain time");
    }
    let reason = engine.failure().unwrap_or_default();
    format!("stopped after a storage failure ({reason}); restart to recover from the log")
}

/// How long in-flight requests may take to finish after a storage failure.
const FAIL_STOP_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; use SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `tollgate backup`: asks the server at `url` for a backup to `to` (on its host) and answers
/// the server's receipt (JSON), or why it was not written.
///
/// # Errors
/// The server's `message` with its status, or why the server could not be reached.
pub fn backup(url: &str, token: &str, to: &str) -> Result<String, String> {
    let endpoint = format!("{}/v1/tollgate/backup", url.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(&endpoint)
            .bearer_auth(token)
            .json(&serde_json::json!({ "to": to }))
            .send()
            .await
            .map_err(|e| format!("{endpoint}: {e}"))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| format!("{endpoint} answered {status} without JSON: {e}"))?;
        if status.is_success() {
            Ok(body["data"].to_string())
        } else {
            Err(format!(
                "{endpoint} answered {status}: {}",
                body["message"].as_str().unwrap_or("(no message)")
            ))
        }
    })
}
