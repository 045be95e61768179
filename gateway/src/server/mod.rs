//! The HTTP server: shared state, the router, request tracing, model loading
//! in the background, and the one shutdown path.
//!
//! Shutdown: SIGTERM, Ctrl-C, a failed model load or (for supervisors and
//! tests) stdin closing all cancel one [`CancellationToken`]. The listener
//! then stops accepting, `/ready` answers 503, in-flight requests and streams
//! run to their end, and after `shutdown_grace_seconds` whatever is left is
//! dropped (which cancels its engine sequences).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Authenticator, KeyStore};
use crate::cache::Cache;
use crate::chain::Chain;
use crate::config::Config;
use crate::encoders::EncoderRegistry;
use crate::guard::screen::{InputGuard, InputGuardSettings};
use crate::registry::Registry;
use crate::router::Router as ModelRouter;
use crate::state::{AppParts, AppState, BodyLimit};
use crate::telemetry::Telemetry;

mod routes;

pub use routes::router;

/// How `serve` failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot load {0}")]
    Load(String),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cache: {0}")]
    Cache(String),
    #[error("limits: {0}")]
    Limits(String),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("virtual keys: {0}")]
    Keys(#[from] crate::keys::KeysError),
    #[error("audit: {0}")]
    Audit(String),
    #[error("defence: {0}")]
    Defence(String),
    #[error("telemetry: {0}")]
    Telemetry(String),
}

/// Knobs of `serve` that are not configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Shut down when stdin reaches end of file: a supervisor (or a test
    /// harness) that dies closes the pipe, and the server follows it.
    pub shutdown_on_stdin_eof: bool,
}

/// What `/metrics` runs before it renders: the state gauges that change
/// without an event.
fn refresh_gauges(router: Arc<ModelRouter>) -> crate::metrics::Refresh {
    Arc::new(move || router.refresh_gauges())
}

/// Binds, loads the models in the background, serves until shutdown.
pub async fn run(config: Config, options: RunOptions) -> Result<(), ServeError> {
    let shutdown = CancellationToken::new();
    let registry = Arc::new(Registry::new(&config.models));
    // Before the router: it registers its metric handles as it is built.
    let metrics = crate::metrics::install();
    // After the recorder (its drop counters are metrics).
    let (telemetry, span_exporter) =
        Telemetry::start(&config.telemetry).map_err(ServeError::Telemetry)?;
    let model_router = Arc::new(ModelRouter::new(
        &config.routes,
        &config.providers,
        registry.clone(),
        config.server.request_timeout,
    )?);
    let encoders = Arc::new(EncoderRegistry::new(&config.encoders));
    let guard = crate::guard::registry::serving_guard(&config.guard, &config.encoders)
        .map_err(ServeError::Load)?;
    // The semantic cache embeds through the same pool as /v1/embeddings.
    let embedder = crate::encoders::EncoderEmbedder::for_default(&encoders)
        .map(|e| Arc::new(e) as Arc<dyn crate::cache::Embedder>);
    let store = crate::store::Store::open(&config.store).await?;
    // The audit log's and the spend log's writers run until after the last
    // request, then flush (below, after the server stops).
    let (audit_log, audit_writers) =
        crate::audit::AuditLog::start(&config.audit, &store).map_err(ServeError::Audit)?;
    let audit = crate::audit::Audit::new(audit_log);
    let virtual_keys = Arc::new(crate::keys::open_configured(&config, store.clone()).await?);
    let mut keys = Authenticator::new(
        KeyStore::new(&config.keys),
        config.admin_key.clone().map(Arc::new),
        audit.clone(),
    )
    .with_check(virtual_keys.clone())
    .with_role_models(&config.role_models)
    .with_regulated(&config.regulated);
    if let Some(oidc) = &config.oidc {
        let client = auth::oidc_http_client().map_err(ServeError::Load)?;
        let verifier = auth::JwtVerifier::new(oidc.clone(), client, audit.clone());
        verifier.start();
        keys = keys.with_check(Arc::new(verifier));
    }
    let keys = Arc::new(keys);
    let (budgets, budget_worker) = crate::budget::Budgets::start(&config.budgets, &store, &audit)
        .map_err(|e| ServeError::Load(format!("budgets: {e}")))?;
    let cipher = open_cipher(&config, &store)?;
    let sessions = Arc::new(open_sessions(&config.sessions, &store, cipher.clone())?);
    // Background responses outlive their requests: stopped after them.
    let background_runs = sessions.runs().clone();
    let (spend_log, spend_writer) = crate::spend::SpendLog::new(&config.spend, audit.clone());
    let spend_writer = spend_writer.start(store.clone());
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr()?;
    if keys.is_open() {
        tracing::warn!(
            "no API key is configured: the server is unauthenticated{}",
            if local.ip().is_loopback() {
                " (loopback only)"
            } else {
                ", and allow_unauthenticated lets it listen beyond loopback"
            }
        );
    } else {
        tracing::info!(tenants = config.keys.len(), "API keys required");
    }
    // The test harness reads this line to learn the port when it asked for port 0.
    tracing::info!("listening on http://{local}");

    let mut tasks = JoinSet::new();
    let load_failure: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    for slot in registry.slots() {
        let slot = slot.clone();
        let shutdown = shutdown.clone();
        let failure = load_failure.clone();
        tasks.spawn_blocking(move || {
            if let Err(e) = slot.load_blocking() {
                tracing::error!(error = %e, "model load failed; shutting down");
                let _ = failure.set(e);
                shutdown.cancel();
            }
        });
    }
    for slot in encoders.slots() {
        let slot = slot.clone();
        let shutdown = shutdown.clone();
        let failure = load_failure.clone();
        tasks.spawn_blocking(move || {
            if let Err(e) = slot.load_blocking() {
                tracing::error!(error = %e, "encoder load failed; shutting down");
                let _ = failure.set(e);
                shutdown.cancel();
            }
        });
    }
    virtual_keys.spawn_upkeep(shutdown.clone());
    if let Some(keep) = config.sessions.retention {
        tasks.spawn(crate::sessions::retention::run(
            sessions.clone(),
            keep,
            config.sessions.purge_interval,
            shutdown.clone(),
        ));
    }
    tasks.spawn(watch_signals(shutdown.clone()));
    if options.shutdown_on_stdin_eof {
        tasks.spawn(watch_stdin(shutdown.clone()));
    }
    if let Some(handle) = metrics.clone() {
        tasks.spawn(crate::metrics::upkeep(handle, shutdown.clone()));
    }
    // GPU gauges only where this build can read cards and a card is present.
    if let (Some(_), Some(cards)) = (&metrics, crate::gpu_metrics::detect()) {
        tasks.spawn(crate::gpu_metrics::poll(
            cards,
            crate::gpu_metrics::POLL_EVERY,
            shutdown.clone(),
        ));
    }
    let metrics_exposure = crate::metrics::Exposure::decide(
        config.server.metrics_listen,
        config.admin_key.is_some(),
        keys.is_open(),
    );
    match metrics_exposure {
        crate::metrics::Exposure::OwnListener(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?;
            // Not "listening on": the test harness takes that line for the API's address.
            tracing::info!(
                "metrics served on http://{}/metrics",
                listener.local_addr()?
            );
            let (handle, shutdown) = (metrics.clone(), shutdown.clone());
            let refresh = refresh_gauges(model_router.clone());
            tasks.spawn(async move {
                if let Err(e) =
                    crate::metrics::serve_own_listener(listener, handle, Some(refresh), shutdown)
                        .await
                {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            });
        }
        crate::metrics::Exposure::Hidden => tracing::warn!(
            "/metrics is not served: API keys are configured but no [admin] key and no \
             server.metrics_listen"
        ),
        crate::metrics::Exposure::AdminKey | crate::metrics::Exposure::Open => {}
    }

    let cache = Cache::with_cipher(config.cache.clone(), embedder.clone(), cipher)
        .map_err(ServeError::Cache)?;
    let (limits, settle_limits) = crate::limits::Limits::new(crate::limits::LimitsSetup {
        settings: config.limits.clone(),
        // A lease outlives a crashed instance by at most its longest request.
        lease_ttl: config.server.request_timeout + std::time::Duration::from_secs(60),
        audit: audit.clone(),
        counter: Some(crate::limits::TokenCounter::new(
            model_router.clone(),
            registry.clone(),
            config.limits.provider_token_estimate,
        )),
    })
    .map_err(ServeError::Limits)?;
    // Ends with the process (aborted with the other tasks).
    tasks.spawn(settle_limits.run());
    let defence = crate::defence::InputDefence::from_config(&config.defence)
        .map_err(|e| ServeError::Defence(e.to_string()))?;
    // L3 reads what the guard calls uncertain: without a guard there is
    // no band, and the section is only warned about.
    let moderation = match (&config.moderation, &guard) {
        (Some(m), Some(_)) => {
            let moderation = crate::moderation::Moderation::new(m).map_err(ServeError::Load)?;
            moderation.register_series();
            tracing::info!(
                provider = moderation.provider(),
                "external moderation reviews the guard's uncertain band"
            );
            Some(moderation)
        }
        (Some(_), None) => {
            tracing::warn!("[moderation] is set but the guard is off: no request is uncertain");
            None
        }
        (None, _) => None,
    };
    let pii = crate::pii::Pii::new(&config.pii)
        .map_err(|e| ServeError::Load(format!("the PII detector: {e}")))?
        .map(Arc::new);
    // Built even when `[stream] guard` is off: a key may turn it on for
    // its own answers.
    let stream_guard = guard
        .as_ref()
        .map(|g| crate::guard::answer::stream_guard(g, &config.stream.guard_head))
        .transpose()
        .map_err(ServeError::Load)?;
    let stream = Arc::new(crate::analyse::StreamAnalysers::new(
        &config.stream,
        pii.clone(),
        defence.as_ref(),
        stream_guard.map(|guard| crate::analyse::StreamGuard {
            guard,
            encoders: encoders.clone(),
            action: config.guard.action,
        }),
    ));
    let chain = Arc::new(Chain {
        defence,
        guard: guard.clone().map(|guard| {
            // The cache's vector serves the guard only when both read the
            // same encoder (the head's is the default embedding encoder
            // unless `[guard] encoder` names another).
            let same_encoder = match (&config.guard.encoder, &embedder) {
                (None, _) => true,
                (Some(id), Some(e)) => e.model_id() == id,
                (Some(_), None) => false,
            };
            InputGuard::new(
                guard,
                encoders.clone(),
                InputGuardSettings {
                    action: config.guard.action,
                    scoring: config.guard.score,
                    route_scoring: config
                        .routes
                        .iter()
                        .filter_map(|r| Some((r.model.clone(), r.guard?)))
                        .collect(),
                    share_embedding: same_encoder && embedder.is_some(),
                },
            )
        }),
        moderation,
        cache: cache.clone(),
        router: model_router.clone(),
        limits: Arc::new(limits),
        budgets: Some(budgets.clone()),
        audit: audit.clone(),
        spend: Some(spend_log),
        pii,
        stream: Some(stream),
    });
    // Derived from the pepper: every instance sharing it accepts the others' sessions.
    let console = crate::console::SessionKeys::new(
        &virtual_keys.derived_secret(crate::console::session::KEY_LABEL),
    )
    .ok_or_else(|| ServeError::Load("the console's session key".into()))?;
    let state = AppState::new(AppParts {
        chain,
        registry,
        router: model_router,
        metrics,
        metrics_exposure,
        encoders,
        guard,
        auth: keys,
        store,
        audit,
        keys: virtual_keys,
        cache,
        admin_key: config.admin_key.clone().map(Arc::new),
        body_limit: BodyLimit(config.server.max_body_bytes),
        request_timeout: config.server.request_timeout,
        shutdown: shutdown.clone(),
        in_flight: crate::inflight::InFlightLimit::new(config.server.max_in_flight),
        budgets,
        sessions,
        console,
        telemetry: telemetry.clone(),
    });
    if let Some(redis) = state.cache.redis() {
        let search = redis.detect_search_module().await;
        tracing::info!(
            redisearch = search,
            "cache on Redis; semantic neighbours ranked in process"
        );
    }
    let grace = config.server.shutdown_grace;
    let serve = axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let deadline = async {
        shutdown.cancelled().await;
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutting down: no new connections; in-flight requests may finish"
        );
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = std::future::IntoFuture::into_future(serve) => result?,
        () = deadline => tracing::warn!("shutdown grace elapsed; dropping the requests still in flight"),
    }
    // Before the budget worker's last settle: a run's answer holds budget
    // and spend senders. Each stores itself as failed and drops its answer.
    background_runs
        .shut_down(std::time::Duration::from_secs(10))
        .await;
    // The requests are gone, and with them every budget sender: the
    // worker settles what they left and ends.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), budget_worker).await;
    // Spend first: a full queue reports to the audit log.
    spend_writer
        .finish(std::time::Duration::from_secs(10))
        .await;
    audit_writers
        .finish(std::time::Duration::from_secs(10))
        .await;
    // Last: the spans of the requests that just ended.
    if let Some(exporter) = span_exporter {
        exporter.finish(std::time::Duration::from_secs(5)).await;
    }
    // Model loads still running are blocking threads that cannot be
    // aborted; the caller's runtime shutdown stops waiting for them.
    tasks.abort_all();
    if let Some(e) = load_failure.get() {
        return Err(ServeError::Load(e.clone()));
    }
    tracing::info!("stopped");
    Ok(())
}

/// Encryption at rest (`[regulated]`'s master key, else `[sessions]
/// encryption_key_env`): the tenants' data keys live wrapped in the store.
fn open_cipher(
    config: &Config,
    store: &crate::store::Store,
) -> Result<Option<crate::sealing::Cipher>, ServeError> {
    // The config refuses regulated keys, tenants and teams without one; a
    // virtual key marked regulated then gets no cache (`cache::policy`).
    let Some((_, master)) = &config.regulated.master_key else {
        return Ok(None);
    };
    let keys = crate::sealing::DataKeys::new(master.clone(), store.clone())
        .map_err(|e| ServeError::Load(format!("regulated.master_key: {e}")))?;
    Ok(Some(crate::sealing::Cipher::new(Arc::new(keys))))
}

/// The session store on the durable store, with Redis in front when
/// `[sessions] redis_url` names one.
fn open_sessions(
    settings: &crate::config::SessionSettings,
    store: &crate::store::Store,
    cipher: Option<crate::sealing::Cipher>,
) -> Result<crate::sessions::Sessions, ServeError> {
    let hot = match &settings.redis {
        Some(redis) => Some(
            crate::sessions::Hot::new(&redis.url, &redis.prefix, redis.ttl)
                .map_err(ServeError::Load)?,
        ),
        None => None,
    };
    tracing::info!(
        redis = hot.is_some(),
        retention_days = settings.retention.map(|d| d.as_secs() / 86_400),
        encrypted = cipher.is_some(),
        "session store ready"
    );
    Ok(crate::sessions::Sessions::new(
        crate::sessions::Durable::new(store.clone()),
        hot,
        cipher,
    ))
}

async fn watch_signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    // Cancel first, then log: shutting down must not depend on the log.
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            shutdown.cancel();
            tracing::info!("SIGINT received");
        }
        () = terminate => {
            shutdown.cancel();
            tracing::info!("SIGTERM received");
        }
        () = shutdown.cancelled() => {}
    }
}

async fn watch_stdin(shutdown: CancellationToken) {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            read = stdin.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            () = shutdown.cancelled() => return,
        }
    }
    shutdown.cancel();
    tracing::info!("stdin closed");
}
