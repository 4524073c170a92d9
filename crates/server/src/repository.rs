//! The model repository on disk: which folders are models, under which names.
//!
//! A repository is a folder whose every subfolder holding a `model.toml` (or just a
//! `model.onnx`) is a model; the folder may also be one model's own folder, as KServe's
//! storage initializer lays out `/mnt/models`. Names never leave the repository: a name with
//! a path separator, `..` or a NUL is refused before any file is touched.

use inference_core::ModelManifest;
use std::path::{Path, PathBuf};

/// The ONNX file that makes a folder a model on its own (served by `ort`).
pub const ONNX_FILE: &str = "model.onnx";

/// A model found in the repository: its name, folder, and manifest or why it cannot load.
#[derive(Debug)]
pub struct Discovered {
    pub name: String,
    pub dir: PathBuf,
    pub manifest: Result<ModelManifest, String>,
}

/// Refuses names that could reach outside the repository or confuse a URL.
pub fn check_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.contains(['/', '\\', '\0'])
        || name.contains("..")
        || name.starts_with('.');
    if bad {
        Err(format!(
            "invalid model name {name:?}: a name has no '/', '\\\\', '..' or NUL and does not start with '.'"
        ))
    } else {
        Ok(())
    }
}

/// Whether `dir` is itself a model's folder.
fn is_model_dir(dir: &Path) -> bool {
    dir.join(ModelManifest::FILE_NAME).is_file() || dir.join(ONNX_FILE).is_file()
}

/// Reads a model folder's manifest; a folder with only `model.onnx` gets a bare one served
/// by `ort` whose inputs and outputs come from the graph. `fallback_name` names it then.
pub fn read_manifest(dir: &Path, fallback_name: &str) -> Result<ModelManifest, String> {
    if dir.join(ModelManifest::FILE_NAME).is_file() {
        return ModelManifest::load(dir).map_err(|e| e.to_string());
    }
    if dir.join(ONNX_FILE).is_file() {
        let mut manifest = ModelManifest::bare(fallback_name, dir);
        manifest.files.insert("ort".into(), ONNX_FILE.into());
        manifest.backend = Some("ort".into());
        return Ok(manifest);
    }
    Err(format!(
        "{} has neither {} nor {ONNX_FILE}",
        dir.display(),
        ModelManifest::FILE_NAME
    ))
}

fn folder_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

fn discover(dir: &Path, name_override: Option<&str>) -> Discovered {
    let folder = folder_name(dir);
    let manifest = read_manifest(dir, name_override.unwrap_or(&folder));
    let name = match (&manifest, name_override) {
        (_, Some(name)) => name.to_string(),
        (Ok(manifest), None) => manifest.name.clone(),
        (Err(_), None) => folder,
    };
    let manifest = manifest.and_then(|mut m| {
        m.name.clone_from(&name);
        check_name(&name).map(|()| m)
    });
    Discovered {
        name,
        dir: dir.to_path_buf(),
        manifest,
    }
}

/// Every model of the repository at `dir`, ordered by folder name (or the one model when
/// `dir` is a model's folder), restricted to `only` when it is not empty.
pub fn scan(
    dir: &Path,
    name_override: Option<&str>,
    only: &[String],
) -> Result<Vec<Discovered>, String> {
    if !dir.is_dir() {
        return Err(format!(
            "model directory {} does not exist (set models.dir or --model-dir)",
            dir.display()
        ));
    }
    let mut found = if is_model_dir(dir) {
        vec![discover(dir, name_override)]
    } else {
        let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read model directory {}: {e}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.is_dir() && is_model_dir(path))
            .collect();
        folders.sort();
        folders
            .iter()
            .map(|folder| discover(folder, None))
            .collect()
    };
    // Two folders claiming one name: the first keeps it, the second fails saying so.
    let mut seen: Vec<(String, PathBuf)> = Vec::new();
    for model in &mut found {
        if let Some((_, first)) = seen.iter().find(|(name, _)| *name == model.name) {
            model.manifest = Err(format!(
                "the name {:?} is already used by {}",
                model.name,
                first.display()
            ));
            model.name = format!("{}@{}", model.name, folder_name(&model.dir));
        } else {
            seen.push((model.name.clone(), model.dir.clone()));
        }
    }
    if !only.is_empty() {
        found.retain(|model| only.contains(&model.name));
        for name in only {
            if !found.iter().any(|m| &m.name == name) {
                found.push(Discovered {
                    name: name.clone(),
                    dir: dir.join(name),
                    manifest: Err(format!(
                        "models.load names {name:?}, which is not in {}",
                        dir.display()
                    )),
                });
            }
        }
    }
    if found.is_empty() {
        return Err(format!(
            "no models in {}: put each model in a subfolder with its {} (or a {ONNX_FILE})",
            dir.display(),
            ModelManifest::FILE_NAME
        ));
    }
    Ok(found)
}

/// The folder of the model named `name` in the repository, by manifest name or folder name.
pub fn find(repository: &Path, name: &str) -> Option<PathBuf> {
    check_name(name).ok()?;
    scan(repository, None, &[])
        .ok()?
        .into_iter()
        .find(|m| m.name == name)
        .map(|m| m.dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_the_repository_are_refused() {
        for bad in ["", "..", "../etc", "a/b", "a\\b", "x\0y", ".hidden", "a..b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["resnet18", "example_model", "bert-base.v2"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn a_repository_lists_good_and_broken_models_in_folder_order() {
        let root = tempfile::tempdir().unwrap();
        let make = |folder: &str, file: &str, text: &str| {
            let dir = root.path().join(folder);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), text).unwrap();
        };
        make("a_good", "model.toml", "name = \"good\"\n");
        make("b_bad", "model.toml", "name = \n");
        make("c_onnx", "model.onnx", "not really onnx");
        make("d_dupe", "model.toml", "name = \"good\"\n");
        std::fs::create_dir_all(root.path().join("e_not_a_model")).unwrap();
        let found = scan(root.path(), None, &[]).unwrap();
        let names: Vec<&str> = found.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["good", "b_bad", "c_onnx", "good@d_dupe"]);
        assert!(found[0].manifest.is_ok());
        assert!(
            found[1]
                .manifest
                .as_ref()
                .unwrap_err()
                .contains("model.toml")
        );
        assert_eq!(
            found[2].manifest.as_ref().unwrap().backend.as_deref(),
            Some("ort")
        );
        assert!(
            found[3]
                .manifest
                .as_ref()
                .unwrap_err()
                .contains("already used")
        );
        let only = scan(root.path(), None, &["c_onnx".into(), "missing".into()]).unwrap();
        assert_eq!(only.len(), 2);
        assert!(only[1].manifest.as_ref().unwrap_err().contains("missing"));
        assert_eq!(
            find(root.path(), "c_onnx"),
            Some(root.path().join("c_onnx"))
        );
        assert_eq!(find(root.path(), "../a_good"), None);
    }

    #[test]
    fn one_models_folder_is_served_under_its_name_or_the_given_one() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("model.toml"), "name = \"solo\"\n").unwrap();
        assert_eq!(scan(root.path(), None, &[]).unwrap()[0].name, "solo");
        let renamed = scan(root.path(), Some("kserve-name"), &[]).unwrap();
        assert_eq!(renamed[0].name, "kserve-name");
        assert_eq!(renamed[0].manifest.as_ref().unwrap().name, "kserve-name");
        assert!(scan(&root.path().join("nope"), None, &[]).is_err());
    }
}
