//! Building and running the server from a [`Config`]: engine first (recovery), then the HTTP
//! server bound to its listener; SIGTERM stops accepting, finishes in-flight requests, writes a
//! checkpoint and exits 0.

use std::net::TcpListener;
use std::sync::Arc;

use tracing_subscriber::EnvFilter;

use crate::actors::Engine;
use crate::actors::clock::SystemClock;
use crate::config::{Config, LogFormat};
use crate::http::Application;

/// Installs the tracing subscriber (text or JSON, filter from config or `RUST_LOG`).
pub fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.logging.level.clone()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match config.logging.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs the server until it is stopped.
///
/// # Errors
/// A message for start-up failures (unusable data directory, port in use).
pub fn serve(config: Config) -> Result<(), String> {
    let system = actix_rt::System::new();
    system.block_on(async move {
        let listener = TcpListener::bind(config.listen_addr()?)
            .map_err(|e| format!("cannot listen on {}: {e}", config.http.listen))?;
        let engine = Engine::start(config.engine_config(), Arc::new(SystemClock), None)
            .await
            .map_err(|e| format!("cannot start the engine: {e}"))?;
        if config.auth.tokens.iter().any(|t| t == "tollgate-dev-token") {
            tracing::warn!("using the development token `tollgate-dev-token`; set auth.tokens for production");
        }
        let app = Application::build(
            listener,
            engine.clone(),
            &config.auth.tokens,
            config.http.body_limit_bytes,
            config.http.workers,
        )
        .map_err(|e| format!("cannot start the HTTP server: {e}"))?;
        tracing::info!(port = app.port(), data_dir = %config.storage.data_dir.display(), "tollgate is serving");
        println!("tollgate listening on http://{}:{}", config.listen_addr()?.ip(), app.port());
        app.run_until_stopped()
            .await
            .map_err(|e| format!("server error: {e}"))?;
        // Stopped by a signal: in-flight requests are done; checkpoint so the next start is fast.
        if let Err(error) = engine.checkpoint().await {
            tracing::error!(%error, "final checkpoint failed; the next start replays the log");
        }
        tracing::info!("stopped");
        Ok(())
    })
}
