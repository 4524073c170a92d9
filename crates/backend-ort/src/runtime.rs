//! Finding and loading the ONNX Runtime shared library, once per process.
//!
//! ONNX Runtime allows one environment per process and `ort` keeps the first library it
//! loads for the life of the process, so the loaded runtime is recorded here and a later
//! request for a different library is refused with a clear error instead of being ignored.

use inference_core::EngineError;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The ONNX Runtime version that `cargo xtask setup` installs (PyPI `onnxruntime`).
pub const RUNTIME_VERSION: &str = "1.31.1";

/// Environment variable naming the ONNX Runtime shared library (also read by `ort` itself).
pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";

/// Environment variable naming the directory `cargo xtask setup` installs runtimes into.
pub const RUNTIME_DIR_ENV: &str = "INFERENCE_RUNTIME_DIR";

const SETUP_HINT: &str = "run `cargo xtask setup` or set ORT_DYLIB_PATH";

/// Where the library path came from, so error messages can say which setting to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LibrarySource {
    Options,
    Environment,
    Default,
}

impl fmt::Display for LibrarySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LibrarySource::Options => "the engine options",
            LibrarySource::Environment => LIBRARY_ENV,
            LibrarySource::Default => "the `cargo xtask setup` default",
        })
    }
}

/// The loaded runtime: its library path and the process-wide ONNX Runtime environment.
#[derive(Clone)]
pub(crate) struct Runtime {
    pub(crate) library: PathBuf,
    pub(crate) environment: ort::environment::Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Serialises initialisation so two engines loading at once do not race to build the
/// environment (ONNX Runtime refuses a second one).
static INIT: Mutex<()> = Mutex::new(());

/// The directory `cargo xtask setup` installs runtimes into:
/// `$INFERENCE_RUNTIME_DIR`, else `~/.cache/inference-server`.
pub fn runtime_dir() -> Option<PathBuf> {
    runtime_dir_with(&process_env)
}

/// The ONNX Runtime library that `cargo xtask setup` installs, if it is there:
/// `<runtime dir>/venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1`.
pub fn default_library_path() -> Option<PathBuf> {
    default_library_path_with(&process_env)
}

/// Reads an environment variable, treating an empty value as unset.
type EnvLookup = dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn runtime_dir_with(env: &EnvLookup) -> Option<PathBuf> {
    env(RUNTIME_DIR_ENV)
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".cache/inference-server")))
}

fn default_library_path_with(env: &EnvLookup) -> Option<PathBuf> {
    let lib_dir = runtime_dir_with(env)?.join("venv/lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("python3"))
        .map(|entry| entry.path())
        .collect();
    // Several interpreters are unusual; prefer a stable choice over directory order.
    pythons.sort();
    pythons
        .into_iter()
        .map(|python| python.join(library_suffix()))
        .find(|candidate| candidate.is_file())
}

fn library_suffix() -> String {
    format!("site-packages/onnxruntime/capi/libonnxruntime.so.{RUNTIME_VERSION}")
}

/// The library to load: the option, else `ORT_DYLIB_PATH`, else the setup default.
fn resolve_library(
    configured: Option<&Path>,
    env: &EnvLookup,
) -> Result<(PathBuf, LibrarySource), EngineError> {
    if let Some(path) = configured {
        return Ok((path.to_path_buf(), LibrarySource::Options));
    }
    if let Some(path) = env(LIBRARY_ENV) {
        return Ok((PathBuf::from(path), LibrarySource::Environment));
    }
    default_library_path_with(env)
        .map(|path| (path, LibrarySource::Default))
        .ok_or_else(|| {
            let tried = runtime_dir_with(env).map_or_else(
                || "$HOME/.cache/inference-server".to_string(),
                |dir| dir.display().to_string(),
            );
            EngineError::Load(format!(
                "ONNX Runtime library not found at {tried}/venv/lib/python3*/{}: {SETUP_HINT}",
                library_suffix()
            ))
        })
}

/// Loads the runtime library (first call) or checks that `configured` resolves to the one
/// already loaded, and returns the process-wide runtime.
pub(crate) fn runtime(configured: Option<&Path>) -> Result<Runtime, EngineError> {
    let (path, source) = resolve_library(configured, &process_env)?;
    // Checked before `ort` sees the path: a missing file must be a plain error.
    if !path.is_file() {
        return Err(EngineError::Load(format!(
            "ONNX Runtime library {} (from {source}) does not exist: {SETUP_HINT}",
            path.display()
        )));
    }
    let path = std::path::absolute(&path).unwrap_or(path);
    let _guard = INIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(loaded) = RUNTIME.get() {
        return if same_file(&loaded.library, &path) {
            Ok(loaded.clone())
        } else {
            Err(EngineError::Load(format!(
                "ONNX Runtime is already loaded from {} in this process; cannot also load {} (from {source}): use one runtime library per process",
                loaded.library.display(),
                path.display()
            )))
        };
    }
    let environment = load_environment(&path, source)?;
    let runtime = Runtime {
        library: path,
        environment,
    };
    Ok(RUNTIME.get_or_init(|| runtime).clone())
}

fn load_environment(
    path: &Path,
    source: LibrarySource,
) -> Result<ort::environment::Environment, EngineError> {
    let fail = |why: String| {
        EngineError::Load(format!(
            "cannot load ONNX Runtime library {} (from {source}): {why}; {SETUP_HINT}",
            path.display()
        ))
    };
    // `ort` panics on some malformed libraries instead of returning an error.
    let built = catch_unwind(AssertUnwindSafe(|| {
        ort::init_from(path)
            .map_err(|e| e.to_string())?
            .with_name("inference-server")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())
    }));
    match built {
        Ok(Ok(environment)) => {
            tracing::info!(library = %path.display(), "loaded ONNX Runtime");
            Ok(environment)
        }
        Ok(Err(why)) => Err(fail(one_line(&why))),
        Err(_) => Err(fail("the library panicked while loading".into())),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Collapses a multi-line library message so every error stays on one line.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    /// A fresh directory under the target's temp area, laid out as `cargo xtask setup` does.
    fn fake_runtime_dir(name: &str, python: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "inference-backend-ort-{name}-{}",
            std::process::id()
        ));
        let capi = dir.join(format!("venv/lib/{python}/site-packages/onnxruntime/capi"));
        std::fs::create_dir_all(&capi).unwrap();
        std::fs::write(
            capi.join(format!("libonnxruntime.so.{RUNTIME_VERSION}")),
            b"",
        )
        .unwrap();
        dir
    }

    #[test]
    fn options_win_over_the_environment_which_wins_over_the_default() {
        let dir = fake_runtime_dir("precedence", "python3.11");
        let env = env_of(&[
            (RUNTIME_DIR_ENV, dir.to_str().unwrap()),
            (LIBRARY_ENV, "/from/env/libonnxruntime.so"),
        ]);
        let (path, source) = resolve_library(Some(Path::new("/from/options.so")), &env).unwrap();
        assert_eq!(
            (path.as_path(), source),
            (Path::new("/from/options.so"), LibrarySource::Options)
        );
        let (path, source) = resolve_library(None, &env).unwrap();
        assert_eq!(
            (path.as_path(), source),
            (
                Path::new("/from/env/libonnxruntime.so"),
                LibrarySource::Environment
            )
        );
        let env = env_of(&[(RUNTIME_DIR_ENV, dir.to_str().unwrap())]);
        let (path, source) = resolve_library(None, &env).unwrap();
        assert_eq!(source, LibrarySource::Default);
        assert_eq!(
            path,
            dir.join("venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn default_path_globs_the_python_directory_under_home() {
        let home = fake_runtime_dir("home", "python3.12");
        // Without INFERENCE_RUNTIME_DIR the default lives under $HOME/.cache/inference-server.
        let cache = home.join(".cache/inference-server");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::rename(home.join("venv"), cache.join("venv")).unwrap();
        let env = env_of(&[("HOME", home.to_str().unwrap())]);
        let found = default_library_path_with(&env).unwrap();
        assert!(
            found.starts_with(cache.join("venv/lib/python3.12")),
            "{found:?}"
        );
        std::fs::remove_dir_all(home).unwrap();
    }

    #[test]
    fn no_library_anywhere_names_the_place_tried_and_the_fix() {
        let env = env_of(&[(RUNTIME_DIR_ENV, "/nonexistent/runtimes")]);
        let message = resolve_library(None, &env).unwrap_err().to_string();
        assert!(!message.contains('\n'), "{message}");
        assert!(
            message.contains("/nonexistent/runtimes/venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1"),
            "{message}"
        );
        assert!(
            message.contains("run `cargo xtask setup` or set ORT_DYLIB_PATH"),
            "{message}"
        );
    }

    #[test]
    fn messages_are_collapsed_to_one_line() {
        assert_eq!(one_line("a\n  b\tc \n"), "a b c");
    }
}
