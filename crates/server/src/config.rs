//! Configuration: built-in defaults ← `inference.toml` (or `--config PATH`) ← `INFERENCE_…`
//! environment variables (nested keys joined by `__`) ← command-line flags.

use crate::backends;
use clap::Parser;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use inference_core::scheduler::SchedulerConfig;
use inference_core::{EngineOptions, ModelBatching};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The configuration file read when `--config` is not given (if it exists).
pub const DEFAULT_CONFIG_FILE: &str = "inference.toml";

/// Command-line flags; each one given overrides every other source.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "inference-server",
    version,
    about = "Serve PyTorch and ONNX models over HTTP"
)]
pub struct Cli {
    /// Configuration file (TOML). Default: ./inference.toml when it exists.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on (0 picks a free port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Port of the KServe v2 gRPC service (0 turns it off).
    #[arg(long)]
    pub grpc_port: Option<u16>,
    /// Inference backend: one of the backends compiled into this binary.
    #[arg(long)]
    pub backend: Option<String>,
    /// The model repository (a folder of model folders), or one model's folder.
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// The name to serve a single model's folder under (default: its manifest's name).
    #[arg(long, value_name = "NAME")]
    pub model_name: Option<String>,
    /// Log line format: `text` or `json`.
    #[arg(long)]
    pub log_format: Option<String>,
}

/// The whole effective configuration, as `GET /config` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub models: ModelsConfig,
    pub model: ModelConfig,
    pub batching: BatchingConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Port of the KServe v2 gRPC service, on `host`; 0 turns it off.
    pub grpc_port: u16,
    /// Largest request body accepted, in bytes (413 past it).
    pub max_body_bytes: usize,
    /// Most samples in one `/predict/batch` request (413 past it).
    pub max_batch_inputs: usize,
    /// Most inference requests in progress at once; more wait for a slot, first come first
    /// served, up to `max_admission_wait_ms`, then get 429.
    pub max_concurrent_requests: usize,
    /// How long a request may wait for a slot before it is refused with 429, in
    /// milliseconds. Waiting costs nothing and holds the client's connection, which slows
    /// an overloading client down; refusing at once would spend the CPU on 429s that the
    /// admitted requests need.
    pub max_admission_wait_ms: f64,
    /// How long in-flight requests may take to finish after a shutdown signal, in seconds.
    pub drain_timeout_secs: f64,
    /// Largest picture accepted, in pixels (width × height), checked before decoding.
    pub max_image_pixels: u64,
    /// How long a client may take to send a request's headers, in seconds.
    pub header_read_timeout_secs: f64,
    /// How long a client may take to send a request's body, in seconds (408 past it).
    pub body_read_timeout_secs: f64,
    /// How long an idle keep-alive connection stays open, in seconds.
    pub keep_alive_timeout_secs: f64,
    /// Most open client connections; more wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// Most bytes of request bodies held at once by inference requests, read or queued;
    /// more get 429, so memory is bounded in bytes and not only in requests.
    pub max_in_flight_bytes: usize,
    /// With any key set, every route but health, metrics and docs needs
    /// `Authorization: Bearer <key>` (gRPC: the same `authorization` metadata). A list, or
    /// in `INFERENCE_SERVER__API_KEYS` one string of comma-separated keys.
    #[serde(deserialize_with = "keys_from_list_or_string")]
    pub api_keys: Vec<String>,
    /// Origins browsers may call from (CORS); empty: no CORS headers; `["*"]`: any origin.
    pub cors_allowed_origins: Vec<String>,
}

/// A list of strings, or one string of comma-separated items (as an environment variable
/// gives it); blank items are dropped.
fn keys_from_list_or_string<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    let items = match ListOrString::deserialize(deserializer)? {
        ListOrString::List(items) => items,
        ListOrString::String(text) => text.split(',').map(str::to_owned).collect(),
    };
    Ok(items
        .into_iter()
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect())
}

/// 40 megapixels: larger than any camera photo a classifier needs, far below a bomb.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 40_000_000;

/// The model repository: which folder, which models, which one the seed endpoints use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// A folder whose every subfolder is a model (`model.toml`, or just a `model.onnx`), or
    /// one model's folder itself (as KServe's storage initializer lays out `/mnt/models`).
    pub dir: PathBuf,
    /// Load only these models (by name); empty: every model in the repository.
    pub load: Vec<String>,
    /// The model the seed endpoints use when a body names none; unset: the only model, else
    /// the first by folder name.
    pub default: Option<String>,
    /// The name of the model when `dir` is one model's folder (default: its manifest's name).
    pub name: Option<String>,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("models"),
            load: Vec::new(),
            default: None,
            name: None,
        }
    }
}

/// What a model gets when its `model.toml` does not say: backend, device, workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `candle`, `ort` or `tch`: must be compiled into this binary.
    pub backend: String,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// Engine workers, each with its own model instance.
    pub instances: usize,
    /// Threads one forward pass may use (unset: the library's default).
    pub intra_op_threads: Option<usize>,
    /// Path of `libonnxruntime.so` (else `ORT_DYLIB_PATH`, else what `cargo xtask setup` installed).
    pub ort_library: Option<PathBuf>,
    /// Run zero batches through each model before it is ready.
    pub warmup: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Most rows merged into one forward pass.
    pub max_batch_size: usize,
    /// How long a forward pass may wait for more rows, in milliseconds (0: never wait).
    pub max_queue_delay_ms: f64,
    /// Most rows waiting; more are refused with 429.
    pub max_queue_size: usize,
    /// Deadline of requests that set no `timeout`, in seconds (default 60).
    pub default_timeout_secs: Option<f64>,
    /// Seconds a waiting row takes to gain one priority level, so low priorities never starve.
    pub priority_aging_secs: f64,
    /// Requests may ask for priority 0 (the default) up to `priority_levels - 1`.
    pub priority_levels: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A `RUST_LOG`-style filter; the `RUST_LOG` variable overrides it when set.
    pub filter: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            grpc_port: 8001,
            max_body_bytes: 2 * 1024 * 1024,
            max_batch_inputs: 1024,
            max_concurrent_requests: 1024,
            max_admission_wait_ms: 500.0,
            drain_timeout_secs: 30.0,
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            header_read_timeout_secs: 10.0,
            body_read_timeout_secs: 30.0,
            keep_alive_timeout_secs: 60.0,
            max_connections: 8192,
            max_in_flight_bytes: 256 * 1024 * 1024,
            api_keys: Vec::new(),
            cors_allowed_origins: Vec::new(),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        let engine = EngineOptions::default();
        Self {
            backend: "candle".into(),
            device: engine.device,
            instances: engine.instances,
            intra_op_threads: engine.intra_op_threads,
            ort_library: None,
            warmup: true,
        }
    }
}

impl Default for BatchingConfig {
    fn default() -> Self {
        let scheduler = SchedulerConfig::default();
        Self {
            max_batch_size: scheduler.max_batch_size,
            max_queue_delay_ms: scheduler.max_queue_delay.as_secs_f64() * 1000.0,
            max_queue_size: scheduler.max_queue_size,
            // A hung backend must not hold a request for ever.
            default_timeout_secs: Some(60.0),
            priority_aging_secs: scheduler.priority_aging.as_secs_f64(),
            priority_levels: 3,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            filter: "info".into(),
        }
    }
}

/// A configuration that cannot be used; the message names the key, the value and what is
/// allowed, on one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn invalid(key: &str, value: impl std::fmt::Display, allowed: &str) -> Self {
        Self(format!("invalid configuration: {key} = {value}: {allowed}"))
    }
}

impl Config {
    /// Reads every source in order of precedence and validates the result.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        Self::load_from(cli, environment())
    }

    fn load_from(cli: &Cli, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match &cli.config {
            Some(path) if !path.is_file() => {
                return Err(ConfigError(format!(
                    "invalid configuration: --config {}: no such file",
                    path.display()
                )));
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE)),
        }
        // Knative (and so KServe) tells a container its port in `PORT`; the server's own
        // variables and flags still win.
        if let Ok(port) = std::env::var("PORT") {
            let port: u16 = port.trim().parse().map_err(|_| {
                ConfigError::invalid("PORT", quoted(&port), "a port number, 0 to 65535")
            })?;
            figment = figment.merge(Serialized::default("server.port", port));
        }
        let config: Config = figment
            .merge(env)
            .merge(Serialized::defaults(CliOverrides::from(cli)))
            .extract()
            .map_err(|err| ConfigError(one_line_figment_error(err)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let backend = &self.model.backend;
        if !backends::COMPILED.contains(&backend.as_str()) {
            let hint = if backends::KNOWN.contains(&backend.as_str()) {
                format!(
                    "this binary was built without it (rebuild with `--features {backend}`); compiled in: {}",
                    backends::COMPILED.join(", ")
                )
            } else {
                format!("allowed: {}", backends::COMPILED.join(", "))
            };
            return Err(ConfigError::invalid(
                "model.backend",
                quoted(backend),
                &hint,
            ));
        }
        if !is_valid_device(&self.model.device) {
            return Err(ConfigError::invalid(
                "model.device",
                quoted(&self.model.device),
                "allowed: cpu, cuda, cuda:N, auto",
            ));
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return Err(ConfigError::invalid(
                "log.format",
                quoted(&self.log.format),
                "allowed: text, json",
            ));
        }
        let origins = &self.server.cors_allowed_origins;
        if let Some(origin) = origins.iter().find(|origin| {
            axum::http::HeaderValue::from_str(origin).is_err()
                || (origin.as_str() == "*" && origins.len() > 1)
        }) {
            return Err(ConfigError::invalid(
                "server.cors_allowed_origins",
                quoted(origin),
                "each an origin such as \"https://app.example.com\", or \"*\" alone",
            ));
        }
        let positive = [
            ("model.instances", self.model.instances),
            ("batching.max_batch_size", self.batching.max_batch_size),
            ("batching.max_queue_size", self.batching.max_queue_size),
            ("server.max_batch_inputs", self.server.max_batch_inputs),
            (
                "server.max_concurrent_requests",
                self.server.max_concurrent_requests,
            ),
            ("server.max_body_bytes", self.server.max_body_bytes),
            ("server.max_connections", self.server.max_connections),
            (
                "server.max_in_flight_bytes",
                self.server.max_in_flight_bytes,
            ),
            (
                "batching.priority_levels",
                self.batching.priority_levels as usize,
            ),
        ];
        if let Some((key, value)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::invalid(key, value, "must be at least 1"));
        }
        let seconds = [
            (
                "batching.max_queue_delay_ms",
                Some(self.batching.max_queue_delay_ms),
            ),
            (
                "batching.default_timeout_secs",
                self.batching.default_timeout_secs,
            ),
            (
                "batching.priority_aging_secs",
                Some(self.batching.priority_aging_secs),
            ),
            (
                "server.drain_timeout_secs",
                Some(self.server.drain_timeout_secs),
            ),
            (
                "server.header_read_timeout_secs",
                Some(self.server.header_read_timeout_secs),
            ),
            (
                "server.max_admission_wait_ms",
                Some(self.server.max_admission_wait_ms),
            ),
            (
                "server.body_read_timeout_secs",
                Some(self.server.body_read_timeout_secs),
            ),
            (
                "server.keep_alive_timeout_secs",
                Some(self.server.keep_alive_timeout_secs),
            ),
        ];
        for (key, value) in seconds {
            if let Some(v) = value
                && !(0.0..1e9).contains(&v)
            {
                return Err(ConfigError::invalid(
                    key,
                    v,
                    "must be a finite number of at least 0",
                ));
            }
        }
        Ok(())
    }

    /// The model directory, relative to the working directory when not absolute.
    pub fn model_dir(&self) -> PathBuf {
        self.models.dir.clone()
    }

    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            device: self.model.device.clone(),
            instances: self.model.instances,
            intra_op_threads: self.model.intra_op_threads,
            runtime_library: self.model.ort_library.clone(),
        }
    }

    /// The scheduler of a model: its own `[batching]` table over the server's defaults.
    pub fn scheduler_config(&self, model: &ModelBatching) -> SchedulerConfig {
        let batching = &self.batching;
        let delay_ms = model
            .max_queue_delay_ms
            .unwrap_or(batching.max_queue_delay_ms);
        SchedulerConfig {
            max_batch_size: model.max_batch_size.unwrap_or(batching.max_batch_size),
            max_queue_delay: Duration::try_from_secs_f64(delay_ms / 1000.0).unwrap_or_default(),
            max_queue_size: model.max_queue_size.unwrap_or(batching.max_queue_size),
            default_timeout: batching.default_timeout_secs.map(Duration::from_secs_f64),
            priority_aging: Duration::from_secs_f64(batching.priority_aging_secs),
            ..SchedulerConfig::default()
        }
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.server.drain_timeout_secs)
    }

    pub fn max_admission_wait(&self) -> Duration {
        Duration::from_secs_f64(self.server.max_admission_wait_ms / 1000.0)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.server.header_read_timeout_secs)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.server.body_read_timeout_secs)
    }

    pub fn keep_alive_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.server.keep_alive_timeout_secs)
    }
}

/// `INFERENCE_<SECTION>__<KEY>` variables. Every key lives in a section, so a variable
/// without `__` cannot be configuration (`INFERENCE_RUNTIME_DIR` is the runtime setup's) and
/// is left alone; [`ignored_environment`] names them for a warning.
fn environment() -> Env {
    Env::prefixed("INFERENCE_")
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

/// The `INFERENCE_…` variables of this process that are not read as configuration.
pub fn ignored_environment() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| {
            name.strip_prefix("INFERENCE_")
                .is_some_and(|key| !key.contains("__"))
        })
        .collect()
}

fn quoted(value: &str) -> String {
    format!("{value:?}")
}

fn is_valid_device(device: &str) -> bool {
    match device {
        "cpu" | "cuda" | "auto" => true,
        other => other
            .strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.parse::<u32>().is_ok()),
    }
}

/// figment's errors can span lines and carry the full source chain; the startup contract is
/// one line naming the key.
fn one_line_figment_error(err: figment::Error) -> String {
    let key = err.path.join(".");
    let source = err
        .metadata
        .as_ref()
        .map(|m| format!(" (from {})", m.name))
        .unwrap_or_default();
    let what = err.kind.to_string().replace('\n', " ");
    if key.is_empty() {
        format!("invalid configuration{source}: {what}")
    } else {
        format!("invalid configuration: {key}{source}: {what}")
    }
}

/// Only the flags that were given, nested like the configuration so they merge on top.
#[derive(Debug, Default, Serialize)]
struct CliOverrides {
    #[serde(skip_serializing_if = "ServerOverrides::is_empty")]
    server: ServerOverrides,
    #[serde(skip_serializing_if = "ModelsOverrides::is_empty")]
    models: ModelsOverrides,
    #[serde(skip_serializing_if = "ModelOverrides::is_empty")]
    model: ModelOverrides,
    #[serde(skip_serializing_if = "LogOverrides::is_empty")]
    log: LogOverrides,
}

#[derive(Debug, Default, Serialize)]
struct ServerOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_port: Option<u16>,
}

#[derive(Debug, Default, Serialize)]
struct ModelsOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct ModelOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct LogOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<String>,
}

impl ServerOverrides {
    fn is_empty(&self) -> bool {
        self.host.is_none() && self.port.is_none() && self.grpc_port.is_none()
    }
}

impl ModelsOverrides {
    fn is_empty(&self) -> bool {
        self.dir.is_none() && self.name.is_none()
    }
}

impl ModelOverrides {
    fn is_empty(&self) -> bool {
        self.backend.is_none()
    }
}

impl LogOverrides {
    fn is_empty(&self) -> bool {
        self.format.is_none()
    }
}

impl From<&Cli> for CliOverrides {
    fn from(cli: &Cli) -> Self {
        Self {
            server: ServerOverrides {
                host: cli.host.clone(),
                port: cli.port,
                grpc_port: cli.grpc_port,
            },
            models: ModelsOverrides {
                dir: cli.model_dir.clone(),
                name: cli.model_name.clone(),
            },
            model: ModelOverrides {
                backend: cli.backend.clone(),
            },
            log: LogOverrides {
                format: cli.log_format.clone(),
            },
        }
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load(cli: &Cli) -> Result<Config, ConfigError> {
        Config::load_from(cli, environment())
    }

    #[test]
    fn defaults_serve_the_example_model_with_candle_on_port_8000() {
        Jail::expect_with(|_jail| {
            let config = load(&Cli::default()).unwrap();
            assert_eq!(config.server.port, 8000);
            assert_eq!(config.server.grpc_port, 8001);
            assert_eq!(config.server.host, "127.0.0.1");
            assert_eq!(config.model.backend, "candle");
            assert_eq!(config.models.dir, PathBuf::from("models"));
            Ok(())
        });
    }

    #[test]
    fn api_keys_come_as_a_list_in_the_file_or_comma_separated_in_the_environment() {
        Jail::expect_with(|jail| {
            assert!(load(&Cli::default()).unwrap().server.api_keys.is_empty());
            jail.create_file(
                "inference.toml",
                "[server]\napi_keys = [\"alpha\", \"beta\"]\n",
            )?;
            assert_eq!(
                load(&Cli::default()).unwrap().server.api_keys,
                ["alpha", "beta"]
            );
            jail.set_env("INFERENCE_SERVER__API_KEYS", "gamma, delta,");
            assert_eq!(
                load(&Cli::default()).unwrap().server.api_keys,
                ["gamma", "delta"]
            );
            Ok(())
        });
    }

    #[test]
    fn knatives_port_variable_sets_the_port_below_the_servers_own_variables() {
        Jail::expect_with(|jail| {
            jail.set_env("PORT", "8080");
            assert_eq!(load(&Cli::default()).unwrap().server.port, 8080);
            jail.set_env("INFERENCE_SERVER__PORT", "9000");
            assert_eq!(load(&Cli::default()).unwrap().server.port, 9000);
            jail.set_env("PORT", "eighty");
            let error = load(&Cli::default()).unwrap_err().to_string();
            assert!(error.contains("PORT"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn a_wildcard_origin_must_stand_alone() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "inference.toml",
                "[server]\ncors_allowed_origins = [\"*\", \"https://a.example\"]\n",
            )?;
            let error = load(&Cli::default()).unwrap_err().to_string();
            assert!(error.contains("server.cors_allowed_origins"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn precedence_is_defaults_then_file_then_env_then_cli() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "inference.toml",
                "[server]\nport = 7000\nhost = \"0.0.0.0\"\n[log]\nformat = \"json\"\n",
            )?;
            let from_file = load(&Cli::default()).unwrap();
            assert_eq!(from_file.server.port, 7000);
            assert_eq!(from_file.log.format, "json");

            jail.set_env("INFERENCE_SERVER__PORT", "9000");
            jail.set_env("INFERENCE_RUNTIME_DIR", "/elsewhere");
            let from_env = load(&Cli::default()).unwrap();
            assert_eq!(from_env.server.port, 9000);
            assert_eq!(from_env.server.host, "0.0.0.0", "file value kept");

            let cli = Cli {
                port: Some(9100),
                grpc_port: Some(0),
                log_format: Some("text".into()),
                ..Cli::default()
            };
            let from_cli = load(&cli).unwrap();
            assert_eq!(from_cli.server.port, 9100);
            assert_eq!(
                from_cli.server.grpc_port, 0,
                "gRPC off from the command line"
            );
            assert_eq!(from_cli.log.format, "text");
            Ok(())
        });
    }

    #[test]
    fn explicit_config_path_is_read_and_a_missing_one_is_an_error() {
        Jail::expect_with(|jail| {
            jail.create_file("other.toml", "[batching]\nmax_batch_size = 4\n")?;
            let cli = Cli {
                config: Some("other.toml".into()),
                ..Cli::default()
            };
            assert_eq!(load(&cli).unwrap().batching.max_batch_size, 4);
            let missing = Cli {
                config: Some("nope.toml".into()),
                ..Cli::default()
            };
            let err = load(&missing).unwrap_err().to_string();
            assert!(err.contains("nope.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_backend_not_compiled_in_names_the_compiled_list() {
        Jail::expect_with(|_jail| {
            let cli = Cli {
                backend: Some("tensorflow".into()),
                ..Cli::default()
            };
            let err = load(&cli).unwrap_err().to_string();
            assert!(err.contains("model.backend"), "{err}");
            assert!(err.contains("\"tensorflow\""), "{err}");
            assert!(err.contains(&backends::COMPILED.join(", ")), "{err}");
            assert!(!err.contains('\n'));
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_the_key_on_one_line() {
        Jail::expect_with(|jail| {
            jail.set_env("INFERENCE_SERVER__PORT", "eighty");
            let err = load(&Cli::default()).unwrap_err().to_string();
            assert!(err.contains("server.port"), "{err}");
            assert!(!err.contains('\n'), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("INFERENCE_MODEL__DEVICE", "tpu");
            let err = load(&Cli::default()).unwrap_err().to_string();
            assert!(
                err.contains("model.device") && err.contains("cuda:N"),
                "{err}"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file("inference.toml", "[server]\nprot = 1\n")?;
            let err = load(&Cli::default()).unwrap_err().to_string();
            assert!(err.contains("prot"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("INFERENCE_BATCHING__MAX_BATCH_SIZE", "0");
            let err = load(&Cli::default()).unwrap_err().to_string();
            assert!(err.contains("batching.max_batch_size"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn variables_outside_a_section_are_not_configuration() {
        Jail::expect_with(|jail| {
            jail.set_env("INFERENCE_TEST_DEVICE", "cuda");
            jail.set_env("INFERENCE_RUNTIME_DIR", "/elsewhere");
            jail.set_env("INFERENCE_SERVER__PORT", "9000");
            let config = load(&Cli::default()).unwrap();
            assert_eq!(config.server.port, 9000);
            let ignored = ignored_environment();
            assert!(
                ignored.contains(&"INFERENCE_TEST_DEVICE".to_string()),
                "{ignored:?}"
            );
            assert!(
                !ignored.iter().any(|name| name.contains("__")),
                "{ignored:?}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_relative_model_dir_is_relative_to_the_working_directory_only() {
        Jail::expect_with(|jail| {
            // `models` exists in the source checkout this test was built from, not here.
            let config = load(&Cli::default()).unwrap();
            assert_eq!(config.model_dir(), PathBuf::from("models"));
            assert!(!jail.directory().join("models").exists());
            assert!(!config.model_dir().exists());
            Ok(())
        });
    }
}
