//! The Metronome-compatible HTTP API (actix-web). Wire shapes (Metronome's, as the official SDK
//! sends and expects them) are converted to domain types here; the only place status codes
//! exist is `error.rs`. Handlers talk to the engine through [`Engine`] only.

pub mod alerts;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod balances;
pub mod body;
pub mod catalog;
pub mod contract_bodies;
pub mod contracts;
pub mod customer_commits;
pub mod customers;
pub mod edge;
pub mod error;
pub mod idempotency;
pub mod ingest;
pub mod openapi;
pub mod ops;
pub mod quarantine;
pub mod render;
pub mod request;
pub mod search;
pub mod strict;
pub mod stripe;
pub mod summary;
pub mod views;
pub mod webhooks;
pub mod wire;
pub mod workflows;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpServer, web};

use crate::actors::Engine;
use error::ApiError;

/// What every handler shares.
pub struct AppState {
    pub engine: Engine,
    pub body_limit: usize,
    pub in_flight_keys: idempotency::InFlight,
    /// The Stripe account, when `[payments.stripe]` is configured (STRIPE gates need it).
    pub stripe: Option<stripe::StripeWebhook>,
    pub audit: audit::AuditLog,
    tokens: auth::Tokens,
    /// Every token's identity, worked out at the first call that needs one.
    identities: std::sync::Mutex<Option<Vec<String>>>,
    /// The storage gauges `/metrics` shows, read at most once a second.
    pub metrics_gauges: ops::GaugeCache,
}

/// Everything the API needs besides the engine.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    pub tokens: Vec<auth::TokenConfig>,
    pub body_limit: usize,
    pub workers: usize,
    pub stripe: Option<stripe::StripeWebhook>,
}

impl AppState {
    pub fn new(engine: Engine, tokens: &[auth::TokenConfig], body_limit: usize) -> AppState {
        AppState {
            engine,
            body_limit,
            in_flight_keys: idempotency::InFlight::default(),
            stripe: None,
            audit: audit::AuditLog::default(),
            tokens: auth::Tokens::new(tokens),
            identities: std::sync::Mutex::new(None),
            metrics_gauges: ops::GaugeCache::default(),
        }
    }

    /// The identity `caller`'s token is recorded under (its name or fingerprint).
    ///
    /// # Errors
    /// Storage errors reading or making the fingerprint key (the engine stops).
    pub fn identity(&self, caller: &auth::Caller) -> Result<String, crate::actors::EngineError> {
        let mut identities = self
            .identities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if identities.is_none() {
            let key = if self.tokens.any_unnamed() {
                self.engine
                    .with_store("token fingerprint key", auth::fingerprint_key)?
            } else {
                Vec::new()
            };
            *identities = Some(self.tokens.identities(&key));
        }
        Ok(identities
            .as_ref()
            .and_then(|ids| ids.get(caller.index).cloned())
            .unwrap_or_default())
    }
}

/// Full-access token entries for plain token strings.
pub fn full_access(tokens: &[String]) -> Vec<auth::TokenConfig> {
    tokens
        .iter()
        .map(|t| auth::TokenConfig::Full(t.as_str().into()))
        .collect()
}

pub use auth::constant_time_eq;

/// Paths served without a token.
const PUBLIC_PATHS: [&str; 4] = ["/health", "/ready", "/metrics", "/openapi.json"];

/// Authenticates the bearer token, checks its scope for the request (403 otherwise) and runs
/// mutating calls through the audit log.
async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or(ApiError::Engine(crate::actors::EngineError::NotReady))?;
    // Decisions are made on the path the router matches (percent-decoded but for `%2F`, `%25`
    // and `%2B`), so an encoded path cannot look like another scope's.
    let path = req.match_info().as_str().to_owned();
    // Stripe authenticates its webhook with a signature, not our bearer token.
    let stripe_path = state
        .stripe
        .as_ref()
        .is_some_and(|s| s.webhook_path == path);
    if PUBLIC_PATHS.contains(&path.as_str()) || stripe_path {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .unwrap_or("");
    let Some(caller) = state.tokens.authenticate(token.trim().as_bytes()) else {
        return Err(ApiError::Unauthorized.into());
    };
    let needed = auth::required_scope(req.method(), &path);
    if !caller.may(needed) {
        if needed.mutates() {
            audit::record_refusal(&state, &caller, req.method(), &path)?;
        }
        return Err(ApiError::Forbidden(format!(
            "this token (scopes: {}) may not call {} {}: it needs the {} scope",
            caller.scope_names(),
            req.method(),
            path,
            needed.name()
        ))
        .into());
    }
    if needed.mutates() {
        audit::around(state, caller, path, req, next).await
    } else {
        Ok(next.call(req).await?.map_into_boxed_body())
    }
}

/// JSON body errors become 400 (or 413) with a `{"message"}` body.
fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |error, _| {
            use actix_web::error::JsonPayloadError;
            let api = match &error {
                JsonPayloadError::OverflowKnownLength { .. }
                | JsonPayloadError::Overflow { .. } => {
                    ApiError::PayloadTooLarge(format!("request body is over {limit} bytes"))
                }
                JsonPayloadError::ContentType => {
                    ApiError::BadRequest("Content-Type must be application/json".into())
                }
                other => ApiError::BadRequest(format!("invalid JSON body: {other}")),
            };
            api.into()
        })
}

/// Every route, registered on the app (or only recorded, for the OpenAPI document) together with
/// its documentation.
pub fn register(routes: &mut openapi::Routes<'_>, stripe_webhook_path: Option<&str>) {
    ops::routes(routes);
    ingest::routes(routes);
    catalog::routes(routes);
    alerts::routes(routes);
    customers::routes(routes);
    contracts::routes(routes);
    balances::routes(routes);
    customer_commits::routes(routes);
    quarantine::routes(routes);
    audit::routes(routes);
    search::routes(routes);
    webhooks::routes(routes);
    workflows::routes(routes);
    summary::routes(routes);
    backup::routes(routes);
    openapi::routes(routes);
    if let Some(path) = stripe_webhook_path {
        stripe::routes(routes, path);
    }
}

/// Routes a test adds to the app, behind the same middleware as the API's own (a seam for
/// tests that need a handler answering a chosen status or waiting on a signal).
pub type ExtraRoutes = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// The API as an actix-web `App` on `state`: what the server runs on every worker, and what the
/// simulation calls in-process (`actix_web::test::init_service`, no socket).
pub fn app(
    state: web::Data<AppState>,
    stripe: Option<stripe::StripeWebhook>,
    extra: ExtraRoutes,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let body_limit = state.body_limit;
    App::new()
        .app_data(state)
        .app_data(json_config(body_limit))
        .app_data(web::PayloadConfig::new(body_limit))
        .configure(edge::extractor_configs)
        // Innermost first: handler errors become JSON before they are stored for replay.
        .wrap(from_fn(edge::json_error_bodies))
        .wrap(from_fn(idempotency::idempotency))
        .wrap(from_fn(require_token))
        .wrap(from_fn(edge::edge))
        // Every request but the probes, which monitoring makes every few seconds.
        .wrap(
            actix_web::middleware::Logger::new("%r %s %Dms")
                .log_target("tollgate::http")
                .exclude("/health")
                .exclude("/ready")
                .exclude("/metrics"),
        )
        .configure(move |cfg| {
            let stripe_path = stripe.as_ref().map(|s| s.webhook_path.as_str());
            register(&mut openapi::Routes::new(Some(cfg)), stripe_path);
        })
        .configure(move |cfg| extra(cfg))
        .default_service(web::to(|| async {
            Err::<actix_web::HttpResponse, _>(ApiError::NotFound("no such endpoint".into()))
        }))
}

/// A bound, not yet running API server (binding first lets tests use port 0).
pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    /// Binds `listener` and builds the server.
    ///
    /// # Errors
    /// I/O errors from binding.
    pub fn build(
        listener: TcpListener,
        engine: Engine,
        tokens: &[String],
        body_limit: usize,
        workers: usize,
    ) -> std::io::Result<Application> {
        Application::build_with(
            listener,
            engine,
            ApiOptions {
                tokens: full_access(tokens),
                body_limit,
                workers,
                stripe: None,
            },
        )
    }

    /// Binds `listener` with every option.
    ///
    /// # Errors
    /// I/O errors from binding.
    pub fn build_with(
        listener: TcpListener,
        engine: Engine,
        options: ApiOptions,
    ) -> std::io::Result<Application> {
        Application::build_with_routes(listener, engine, options, Arc::new(|_| {}))
    }

    /// Binds `listener` with every option and `extra` routes (tests).
    ///
    /// # Errors
    /// I/O errors from binding.
    pub fn build_with_routes(
        listener: TcpListener,
        engine: Engine,
        options: ApiOptions,
        extra: ExtraRoutes,
    ) -> std::io::Result<Application> {
        let port = listener.local_addr()?.port();
        let (body_limit, workers) = (options.body_limit, options.workers);
        let mut app_state = AppState::new(engine, &options.tokens, body_limit);
        app_state.stripe = options.stripe.clone();
        let stripe = options.stripe;
        let state = web::Data::from(Arc::new(app_state));
        let sweep_state = state.clone();
        let mut server = HttpServer::new(move || app(state.clone(), stripe.clone(), extra.clone()))
            .on_connect(|_, extensions| {
                extensions.insert(edge::ConnectionState::default());
            })
            .shutdown_timeout(30)
            // Signals are handled by the caller, which must checkpoint after the server stops.
            .disable_signals()
            .listen(listener)?;
        if workers > 0 {
            server = server.workers(workers);
        }
        actix_rt::spawn(idempotency::sweep_periodically(sweep_state));
        Ok(Application {
            port,
            server: server.run(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs until the server stops (SIGTERM / SIGINT: stop accepting, finish in-flight
    /// requests).
    ///
    /// # Errors
    /// I/O errors from the server.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }
}
