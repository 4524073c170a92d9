//! Shared application state: the effective configuration and the model repository, each
//! model behind its own batching scheduler and in one of the states `loading`, `ready`,
//! `failed` or `unloading`.

use crate::backends;
use crate::config::Config;
use crate::error::ApiError;
use crate::probe::Probe;
use crate::processing::Processing;
use crate::repository::{self, Discovered};
use inference_core::scheduler::{InferenceRequest, InferenceResponse, Scheduler};
use inference_core::{Batch, EngineError, EngineInfo, InferenceEngine, ModelManifest, Sample};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A served model: its engine behind a scheduler, and what it does around the forward pass.
#[derive(Debug)]
pub struct ModelHandle {
    pub scheduler: Scheduler,
    pub processing: Processing,
    pub version: String,
    pub description: String,
    /// The cached forward-pass probe `/health` reports.
    pub probe: Arc<Probe>,
    /// Made on first use: see [`ModelHandle::constant_parts`].
    pub constant: std::sync::OnceLock<ConstantParts>,
}

/// The parts of a single prediction's answer that are the same for every one of a model,
/// serialized once.
#[derive(Debug)]
pub struct ConstantParts {
    pub model_info: Box<serde_json::value::RawValue>,
    pub metadata: Box<serde_json::value::RawValue>,
}

impl ConstantParts {
    pub fn of(info: &EngineInfo) -> Self {
        let model_info = crate::routes::model_info_of(info);
        let metadata = crate::routes::metadata_of(info, None);
        Self {
            model_info: serde_json::value::to_raw_value(&model_info).expect("strings serialize"),
            metadata: serde_json::value::to_raw_value(&metadata)
                .expect("strings and numbers serialize"),
        }
    }
}

impl ModelHandle {
    pub fn info(&self) -> &EngineInfo {
        self.scheduler.engine().info()
    }

    /// Runs a request through the model's scheduler. Its batch runs at once on the
    /// handler's task when an engine slot is free and nothing is queued, wherever that
    /// loses no batching: the scheduler waits for no batch to fill, or this is the only
    /// request in progress (see [`Scheduler::submit_inline`]).
    pub async fn submit(
        &self,
        request: InferenceRequest,
    ) -> Result<InferenceResponse, EngineError> {
        if self.scheduler.config().max_queue_delay.is_zero() || crate::edge::handling_one_request()
        {
            self.scheduler.submit_inline(request).await
        } else {
            self.scheduler.submit(request).await
        }
    }

    /// `model_info` and `metadata` of a single prediction.
    pub fn constant_parts(&self) -> &ConstantParts {
        self.constant.get_or_init(|| ConstantParts::of(self.info()))
    }

    /// Why this loaded model cannot serve now, if so: none of its instances is live and
    /// rebuilding one failed (during a first rebuild requests wait for it instead).
    pub fn outage(&self) -> Option<String> {
        let engine = self.scheduler.engine();
        if engine.live_instances() > 0 {
            return None;
        }
        engine.instance_failure()
    }
}

/// Where a model is in its life.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelState {
    Loading,
    Ready,
    Failed,
    Unloading,
}

/// One model of the repository, served or not.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub name: String,
    /// The folder it was read from (`None` for engines handed in directly).
    pub dir: Option<PathBuf>,
    pub state: ModelState,
    /// Why it failed (or why its last reload failed while the old version kept serving).
    pub error: Option<String>,
    pub handle: Option<Arc<ModelHandle>>,
    /// How long loading and warmup took.
    pub load_time: Option<Duration>,
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
    /// KiB of request bodies held by inference requests (`server.max_in_flight_bytes`).
    body_kib: Arc<Semaphore>,
    config: Config,
    models: RwLock<BTreeMap<String, ModelEntry>>,
    default_model: String,
    /// Serializes loads, reloads and unloads, so two cannot race on one model.
    management: tokio::sync::Mutex<()>,
    started: Instant,
    /// Set once a shutdown signal arrived: readiness fails and new requests are refused.
    draining: AtomicBool,
}

/// Why the server could not start; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Repository(String),
}

impl AppState {
    /// Serves the given engines, ready at once, the first being the default model. Starts one
    /// scheduler per engine, so it must run inside a Tokio runtime.
    ///
    /// # Panics
    /// When `engines` is empty: a server always has a default model.
    pub fn new(config: Config, engines: Vec<Arc<dyn InferenceEngine>>) -> Self {
        // Before any scheduler starts: each takes its metric handles when it starts.
        crate::metrics::install();
        let default_model = engines
            .first()
            .map(|e| e.info().model.name.clone())
            .expect("at least one engine");
        let models = engines
            .into_iter()
            .map(|engine| {
                let name = engine.info().model.name.clone();
                let version = engine.info().model.version.clone();
                let scheduler =
                    Scheduler::start(engine, config.scheduler_config(&Default::default()));
                let handle = ModelHandle {
                    scheduler,
                    processing: Processing::default(),
                    version,
                    description: String::new(),
                    probe: Arc::default(),
                    constant: std::sync::OnceLock::new(),
                };
                let entry = ModelEntry {
                    name: name.clone(),
                    dir: None,
                    state: ModelState::Ready,
                    error: None,
                    handle: Some(Arc::new(handle)),
                    load_time: None,
                };
                (name, entry)
            })
            .collect();
        Self::with_models(config, models, default_model)
    }

    fn with_models(
        config: Config,
        models: BTreeMap<String, ModelEntry>,
        default_model: String,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                in_flight: Arc::new(Semaphore::new(config.server.max_concurrent_requests)),
                body_kib: Arc::new(Semaphore::new(
                    config.server.max_in_flight_bytes.div_ceil(1024),
                )),
                config,
                models: RwLock::new(models),
                default_model,
                management: tokio::sync::Mutex::new(()),
                started: Instant::now(),
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// Reads the repository and starts loading every model in the background, in folder
    /// order; returns at once so the server can listen while models load. A missing
    /// repository is an error; a broken model is only that model's `failed` state.
    pub fn start(config: Config) -> Result<Self, StartupError> {
        crate::metrics::install();
        let dir = config.model_dir();
        let discovered = repository::scan(&dir, config.models.name.as_deref(), &config.models.load)
            .map_err(StartupError::Repository)?;
        let default_model = match &config.models.default {
            Some(name) => name.clone(),
            None => discovered
                .first()
                .map(|d| d.name.clone())
                .unwrap_or_default(),
        };
        let mut pending = Vec::new();
        let models = discovered
            .into_iter()
            .map(|found| {
                let Discovered {
                    name,
                    dir,
                    manifest,
                } = found;
                let (state, error) = match manifest {
                    Ok(manifest) => {
                        pending.push((name.clone(), manifest));
                        (ModelState::Loading, None)
                    }
                    Err(error) => {
                        tracing::error!(model = %name, %error, "model cannot be loaded");
                        (ModelState::Failed, Some(error))
                    }
                };
                let entry = ModelEntry {
                    name: name.clone(),
                    dir: Some(dir),
                    state,
                    error,
                    handle: None,
                    load_time: None,
                };
                (name, entry)
            })
            .collect();
        let state = Self::with_models(config, models, default_model);
        let loader = state.clone();
        tokio::spawn(async move {
            for (name, manifest) in pending {
                let _ = loader.load_into(&name, manifest).await;
            }
        });
        Ok(state)
    }

    /// [`AppState::start`], then waits until every model is `ready` or `failed`.
    pub async fn from_config(config: Config) -> Result<Self, StartupError> {
        let state = Self::start(config)?;
        state.settled().await;
        Ok(state)
    }

    /// Resolves once no model is `loading`.
    pub async fn settled(&self) {
        while self
            .entries()
            .iter()
            .any(|e| e.state == ModelState::Loading)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Loads `manifest` and records the outcome under `name`.
    async fn load_into(&self, name: &str, manifest: ModelManifest) -> Result<(), String> {
        let started = Instant::now();
        let outcome = load_model(&self.inner.config, manifest).await;
        let mut models = self.write();
        let Some(entry) = models.get_mut(name) else {
            return Err(format!("model '{name}' was removed while it loaded"));
        };
        match outcome {
            Ok(handle) => {
                tracing::info!(
                    model = %name,
                    backend = %handle.info().backend,
                    device = %handle.info().device,
                    seconds = started.elapsed().as_secs_f64(),
                    "model ready"
                );
                entry.state = ModelState::Ready;
                entry.error = None;
                entry.load_time = Some(started.elapsed());
                entry.handle = Some(Arc::new(handle));
                Ok(())
            }
            Err(error) => {
                tracing::error!(model = %name, %error, "model failed to load");
                entry.state = ModelState::Failed;
                entry.error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Loads (or reloads from disk) the named model. A reload keeps the old version serving
    /// until the new one is ready, then lets the old one finish what it accepted.
    pub async fn load(&self, name: &str) -> Result<(), ApiError> {
        repository::check_name(name).map_err(ApiError::Unprocessable)?;
        let _serial = self.inner.management.lock().await;
        let known_dir = self.read().get(name).and_then(|e| e.dir.clone());
        let dir = match known_dir {
            Some(dir) => dir,
            None => repository::find(&self.inner.config.model_dir(), name).ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no model named {name:?} in the repository {}",
                    self.inner.config.model_dir().display()
                ))
            })?,
        };
        let manifest = repository::read_manifest(&dir, name).map_err(ApiError::Unprocessable)?;
        let started = Instant::now();
        let old = {
            let mut models = self.write();
            let entry = models
                .entry(name.to_string())
                .or_insert_with(|| ModelEntry {
                    name: name.to_string(),
                    dir: Some(dir.clone()),
                    state: ModelState::Loading,
                    error: None,
                    handle: None,
                    load_time: None,
                });
            if entry.handle.is_none() {
                entry.state = ModelState::Loading;
            }
            entry.handle.clone()
        };
        let outcome = load_model(&self.inner.config, manifest).await;
        let mut models = self.write();
        let entry = models
            .get_mut(name)
            .ok_or_else(|| ApiError::Unavailable(format!("model {name:?} was unloaded")))?;
        match outcome {
            Ok(handle) => {
                entry.handle = Some(Arc::new(handle));
                entry.state = ModelState::Ready;
                entry.error = None;
                entry.load_time = Some(started.elapsed());
                drop(models);
                if let Some(old) = old {
                    // Requests already holding the old version finish there.
                    tokio::spawn(retire(old, self.inner.config.drain_timeout()));
                }
                tracing::info!(model = %name, "model loaded");
                Ok(())
            }
            Err(error) => {
                if entry.handle.is_none() {
                    entry.state = ModelState::Failed;
                }
                entry.error = Some(error.clone());
                Err(ApiError::Unprocessable(format!(
                    "model {name:?} cannot be loaded: {error}"
                )))
            }
        }
    }

    /// Stops serving the named model; what it already accepted is answered first.
    pub async fn unload(&self, name: &str) -> Result<(), ApiError> {
        repository::check_name(name).map_err(ApiError::Unprocessable)?;
        let _serial = self.inner.management.lock().await;
        let handle = {
            let mut models = self.write();
            let entry = models
                .get_mut(name)
                .ok_or_else(|| ApiError::NotFound(format!("model {name:?} is not loaded")))?;
            entry.state = ModelState::Unloading;
            entry.handle.take()
        };
        if let Some(handle) = handle {
            retire(handle, self.inner.config.drain_timeout()).await;
        }
        self.write().remove(name);
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    }

    /// Reserves `kib` more KiB of request body, or `None` when `server.max_in_flight_bytes`
    /// would be passed. The reservation lasts as long as the permit.
    pub fn try_reserve_body(&self, kib: u32) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.inner.body_kib)
            .try_acquire_many_owned(kib)
            .ok()
    }

    /// A permit for one inference request, or `None` when the limit is reached.
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.inner.in_flight).try_acquire_owned().ok()
    }

    /// A permit for one inference request, waiting for one (first come, first served) at
    /// most `wait`; `None` when none freed up in time.
    pub async fn admit_within(&self, wait: Duration) -> Option<OwnedSemaphorePermit> {
        if let Some(permit) = self.try_admit() {
            return Some(permit);
        }
        let waiting = Arc::clone(&self.inner.in_flight).acquire_owned();
        tokio::time::timeout(wait, waiting).await.ok()?.ok()
    }

    /// Marks the server as shutting down: from now on `/health` answers 503 and new
    /// inference requests are refused with 503, while those already admitted finish.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn started(&self) -> Instant {
        self.inner.started
    }

    pub fn default_model_name(&self) -> &str {
        &self.inner.default_model
    }

    /// The default model, when it is ready.
    pub fn default_model(&self) -> Result<Arc<ModelHandle>, ApiError> {
        self.model(None)
    }

    /// The named model, or the default one, when it is ready: an unknown name is a 404, a
    /// model that is not ready a 503 saying why.
    pub fn model(&self, name: Option<&str>) -> Result<Arc<ModelHandle>, ApiError> {
        let name = name.unwrap_or(&self.inner.default_model);
        repository::check_name(name).map_err(ApiError::Unprocessable)?;
        let models = self.read();
        let entry = models.get(name).ok_or_else(|| {
            ApiError::NotFound(format!(
                "model {name:?} is not loaded (loaded: {})",
                models.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        // Only a name of the repository: a label per name a client makes up would grow
        // without bound.
        crate::metrics::note_model(name);
        entry.handle.clone().ok_or_else(|| {
            let why = entry
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            let state = serde_json::to_value(&entry.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            ApiError::Unavailable(format!("model {name:?} is {state}{why}"))
        })
    }

    /// Every model of the repository, with its state: a loaded model none of whose
    /// instances is live reads as `failed`, with the reason, until one comes back.
    pub fn entries(&self) -> Vec<ModelEntry> {
        self.read()
            .values()
            .cloned()
            .map(|mut entry| {
                if let Some(outage) = entry.handle.as_ref().and_then(|h| h.outage()) {
                    entry.state = ModelState::Failed;
                    entry.error = Some(outage);
                }
                entry
            })
            .collect()
    }

    /// The ready models.
    pub fn models(&self) -> Vec<Arc<ModelHandle>> {
        self.read()
            .values()
            .filter_map(|e| e.handle.clone())
            .collect()
    }

    pub fn model_names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Stops every scheduler from accepting work and lets what is queued finish.
    pub async fn shutdown(&self) {
        for model in self.models() {
            model.scheduler.shutdown().await;
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, ModelEntry>> {
        self.inner
            .models
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, ModelEntry>> {
        self.inner
            .models
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Stops a model version that no longer takes new requests: waits until every request that
/// already holds it has let go (each holds the handle from resolving the model to its
/// answer, so none of them meets a closed queue), at most `limit`, then drains its queue.
async fn retire(handle: Arc<ModelHandle>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Arc::strong_count(&handle) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.scheduler.shutdown().await;
}

/// Loads one model: backend, processing tables, warmup batches checked against its outputs,
/// and a scheduler with its own batching. The error is one sentence.
async fn load_model(config: &Config, manifest: ModelManifest) -> Result<ModelHandle, String> {
    let backend = manifest
        .backend
        .clone()
        .unwrap_or_else(|| config.model.backend.clone());
    let mut options = config.engine_options();
    if let Some(device) = &manifest.device {
        options.device.clone_from(device);
    }
    if let Some(instances) = manifest.instances {
        options.instances = instances.max(1);
    }
    let batching = manifest.batching.clone();
    let warmup_sizes = manifest
        .warmup_batch_sizes
        .clone()
        .unwrap_or_else(|| vec![1]);
    let version = manifest.version.clone();
    let description = manifest.description.clone();
    // Loading blocks (weights are read, sessions built): keep it off the async workers.
    let (engine, manifest) = tokio::task::spawn_blocking(move || {
        backends::load(&backend, &manifest, &options).map(|engine| (engine, manifest))
    })
    .await
    .unwrap_or_else(|join| Err(EngineError::Load(join.to_string())))
    .map_err(|e| e.to_string())?;
    // The engine's spec is the complete one (an ONNX graph may have filled it in).
    let spec = engine.info().model.clone();
    let processing = Processing::from_manifest(&manifest, &spec, config.server.max_image_pixels)?;
    let mut probe = Probe::default();
    if config.model.warmup {
        for size in warmup_sizes {
            let started = Instant::now();
            warm_up(engine.as_ref(), size.max(1)).await?;
            if size <= 1 {
                probe = Probe::seeded(started.elapsed());
            }
        }
    }
    let scheduler = Scheduler::start(engine, config.scheduler_config(&batching));
    Ok(ModelHandle {
        scheduler,
        processing,
        version,
        description,
        probe: Arc::new(probe),
        constant: std::sync::OnceLock::new(),
    })
}

/// Runs one zero batch of `size` rows and checks every output against the model's spec.
async fn warm_up(engine: &dyn InferenceEngine, size: usize) -> Result<(), String> {
    let spec = &engine.info().model;
    let rows: Vec<Sample> = (0..size).map(|_| spec.zero_sample()).collect();
    let batch = Batch::stack(&rows).map_err(|e| format!("warmup batch: {e}"))?;
    let output = engine
        .infer(batch)
        .await
        .map_err(|e| format!("warmup at batch size {size} failed: {e}"))?;
    if output.tensors.len() != spec.outputs.len() {
        return Err(format!(
            "warmup returned {} output(s), the model declares {}",
            output.tensors.len(),
            spec.outputs.len()
        ));
    }
    for (tensor, output_spec) in output.tensors.iter().zip(&spec.outputs) {
        let fits = tensor.shape().first() == Some(&size)
            && output_spec
                .check_parts(tensor.dtype(), &tensor.shape()[1..])
                .is_ok();
        if !fits {
            return Err(format!(
                "warmup output '{}' has type {} and shape {:?}, the model declares {} [{size}] + {:?}",
                output_spec.name,
                tensor.dtype(),
                tensor.shape(),
                output_spec.dtype,
                output_spec.shape
            ));
        }
    }
    Ok(())
}
