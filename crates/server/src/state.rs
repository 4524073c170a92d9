//! Shared application state: the effective configuration and the served models, each behind
//! its own batching scheduler.

use crate::backends;
use crate::config::Config;
use crate::error::ApiError;
use inference_core::scheduler::Scheduler;
use inference_core::{EngineError, EngineInfo, InferenceEngine, ModelManifest};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A served model: its engine behind a scheduler.
#[derive(Debug, Clone)]
pub struct ModelHandle {
    pub scheduler: Scheduler,
}

impl ModelHandle {
    pub fn info(&self) -> &EngineInfo {
        self.scheduler.engine().info()
    }
}

/// Cheap to clone: everything lives behind one `Arc`.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Permits for inference requests in progress (`server.max_concurrent_requests`).
    in_flight: Arc<Semaphore>,
    config: Config,
    models: BTreeMap<String, ModelHandle>,
    default_model: String,
    started: Instant,
}

/// Why the server could not start; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot load model from {dir}: {source}")]
    Manifest {
        dir: String,
        source: inference_core::ManifestError,
    },
    #[error("cannot load model '{model}' with backend {backend}: {source}")]
    Engine {
        model: String,
        backend: String,
        source: EngineError,
    },
    #[error("warmup of model '{model}' failed: {source}")]
    Warmup { model: String, source: EngineError },
}

impl AppState {
    /// Serves the given engines, the first being the default model. Starts one scheduler per
    /// engine, so it must run inside a Tokio runtime.
    ///
    /// # Panics
    /// When `engines` is empty: a server always has a default model.
    pub fn new(config: Config, engines: Vec<Arc<dyn InferenceEngine>>) -> Self {
        let default_model = engines
            .first()
            .map(|e| e.info().model.name.clone())
            .expect("at least one engine");
        let scheduler_config = config.scheduler_config();
        let models = engines
            .into_iter()
            .map(|engine| {
                let name = engine.info().model.name.clone();
                let scheduler = Scheduler::start(engine, scheduler_config.clone());
                (name, ModelHandle { scheduler })
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                in_flight: Arc::new(Semaphore::new(config.server.max_concurrent_requests)),
                config,
                models,
                default_model,
                started: Instant::now(),
            }),
        }
    }

    /// Loads the configured model with the configured backend, warms it up, and serves it.
    pub async fn from_config(config: Config) -> Result<Self, StartupError> {
        let dir = config.model_dir();
        let manifest = ModelManifest::load(&dir).map_err(|source| StartupError::Manifest {
            dir: dir.display().to_string(),
            source,
        })?;
        let backend = config.model.backend.clone();
        let options = config.engine_options();
        let model = manifest.name.clone();
        // Loading blocks (worker threads read weights): keep it off the async workers.
        let loaded = {
            let backend = backend.clone();
            tokio::task::spawn_blocking(move || backends::load(&backend, &manifest, &options))
                .await
                .unwrap_or_else(|join| Err(EngineError::Load(join.to_string())))
        };
        let engine = loaded.map_err(|source| StartupError::Engine {
            model: model.clone(),
            backend,
            source,
        })?;
        if config.model.warmup {
            let took = engine
                .warmup()
                .await
                .map_err(|source| StartupError::Warmup {
                    model: model.clone(),
                    source,
                })?;
            tracing::info!(
                model,
                warmup_ms = took.as_secs_f64() * 1000.0,
                "model warmed up"
            );
        }
        Ok(Self::new(config, vec![engine]))
    }

    /// A permit for one inference request, or `None` when the limit is reached.
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.inner.in_flight).try_acquire_owned().ok()
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn started(&self) -> Instant {
        self.inner.started
    }

    pub fn default_model(&self) -> &ModelHandle {
        &self.inner.models[&self.inner.default_model]
    }

    /// The named model, or the default one; an unknown name is a 404.
    pub fn model(&self, name: Option<&str>) -> Result<&ModelHandle, ApiError> {
        match name {
            None => Ok(self.default_model()),
            Some(name) => self.inner.models.get(name).ok_or_else(|| {
                ApiError::NotFound(format!(
                    "model {name:?} is not loaded (loaded: {})",
                    self.model_names().join(", ")
                ))
            }),
        }
    }

    pub fn models(&self) -> impl Iterator<Item = &ModelHandle> {
        self.inner.models.values()
    }

    pub fn model_names(&self) -> Vec<String> {
        self.inner.models.keys().cloned().collect()
    }

    /// Stops every scheduler from accepting work and lets what is queued finish.
    pub async fn shutdown(&self) {
        for model in self.models() {
            model.scheduler.shutdown().await;
        }
    }
}
