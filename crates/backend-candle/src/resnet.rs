//! torchvision's ResNet-18, -34 and -50 on candle, from a safetensors file of a torchvision
//! `state_dict`.
//!
//! The layers come from `candle_transformers::models::resnet`, whose parameter names are
//! torchvision's (`conv1.weight`, `bn1.running_mean`, `layer2.0.downsample.0.weight`,
//! `fc.bias`, ...), so a torchvision checkpoint saved as safetensors loads without renaming.
//! Its batch norms run in inference mode (running statistics, eps 1e-5) and its stem max-pool
//! pads by repeating the border, which after the ReLU gives the same maxima as torchvision's
//! padding with -inf, because every window that covers a padded cell also covers the cell it
//! copies.
//!
//! Weights are read through a small [`SimpleBackend`] of our own rather than
//! `VarBuilder::from_tensors` so that every problem is one sentence naming the file and the
//! tensor, so that non-float tensors are refused instead of cast, and so that a file with
//! tensors the chosen depth never reads (a ResNet-34 file loaded as depth 18) is refused
//! instead of silently running with part of its weights.

use candle_core::{DType, Device, Module, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Func, Init, VarBuilder};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// The `[candle]` table of a model.toml for this architecture: `architecture = "resnet"`,
/// `depth = 18 | 34 | 50`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResNetSettings {
    /// 18, 34 or 50, as in torchvision's `resnet18`, `resnet34` and `resnet50`.
    pub(crate) depth: usize,
    /// The width of `fc`, and so of the logits.
    #[serde(default = "default_num_classes")]
    pub(crate) num_classes: usize,
}

/// ImageNet's class count, which torchvision's pretrained ResNets are trained for.
fn default_num_classes() -> usize {
    1000
}

/// The depths candle-transformers builds, with its builder for each.
type Builder = fn(usize, VarBuilder<'static>) -> candle_core::Result<Func<'static>>;
const DEPTHS: [(usize, Builder); 3] = [
    (18, candle_transformers::models::resnet::resnet18),
    (34, candle_transformers::models::resnet::resnet34),
    (50, candle_transformers::models::resnet::resnet50),
];

/// A loaded ResNet on one device; shareable between threads, as forward passes take `&self`.
#[derive(Debug)]
pub(crate) struct ResNet {
    model: Func<'static>,
    device: Device,
}

impl ResNet {
    /// Reads the weights (f32; other float types converted to f32) onto `device`. Errors are
    /// one sentence naming the file and the missing/mis-shaped tensor.
    pub(crate) fn load(
        settings: &ResNetSettings,
        weights: &Path,
        device: &Device,
    ) -> Result<Self, String> {
        let depth = settings.depth;
        let Some(&(_, build)) = DEPTHS.iter().find(|(d, _)| *d == depth) else {
            return Err(format!(
                "ResNet depth {depth} is not supported; use 18, 34 or 50"
            ));
        };
        if settings.num_classes == 0 {
            return Err("a ResNet needs num_classes of at least 1".into());
        }
        if !weights.is_file() {
            return Err(format!("weights file {} does not exist", weights.display()));
        }
        let tensors = candle_core::safetensors::load(weights, device)
            .map_err(|e| format!("cannot read weights file {}: {e}", weights.display()))?;
        let file_names: Vec<String> = tensors.keys().cloned().collect();
        let read = Arc::new(Mutex::new(HashSet::new()));
        let backend = WeightFile {
            tensors,
            num_classes: settings.num_classes,
            read: Arc::clone(&read),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let model = build(settings.num_classes, vb).map_err(|e| {
            format!(
                "cannot load a ResNet-{depth} from {}: {e}",
                weights.display()
            )
        })?;

        // torchvision state dicts carry a `num_batches_tracked` counter per batch norm, which
        // inference never needs; any other tensor left unread means the file is for another
        // architecture, most often another depth.
        let read = read.lock().unwrap_or_else(PoisonError::into_inner);
        let mut unread: Vec<&String> = file_names
            .iter()
            .filter(|name| !read.contains(*name) && !name.ends_with(".num_batches_tracked"))
            .collect();
        unread.sort();
        if let Some(first) = unread.first() {
            return Err(format!(
                "cannot load a ResNet-{depth} from {}: it has {} tensor(s) that a ResNet-{depth} \
                 does not use, such as '{first}', so check depth",
                weights.display(),
                unread.len()
            ));
        }
        Ok(Self {
            model,
            device: device.clone(),
        })
    }

    /// input: [N, 3, H, W] f32 (NCHW); returns logits [N, num_classes].
    pub(crate) fn forward(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        let (_, channels, _, _) = input.dims4()?;
        if channels != 3 || input.dtype() != DType::F32 {
            return Err(candle_core::Error::Msg(format!(
                "a ResNet takes f32 images of shape [N, 3, H, W], got {:?} {:?}",
                input.dtype(),
                input.dims()
            )));
        }
        // Moving is free when the input is already on the model's device, and saves callers
        // that build inputs on the CPU from a device mismatch error.
        let input = input.to_device(&self.device)?;
        self.model.forward(&input)
    }
}

/// The tensors of one safetensors file, handed out by name to candle's layer constructors.
struct WeightFile {
    tensors: HashMap<String, Tensor>,
    /// Only used to say, when `fc` has the wrong shape, which setting decides it.
    num_classes: usize,
    /// The names handed out, so that unused tensors can be found once the model is built.
    read: Arc<Mutex<HashSet<String>>>,
}

impl WeightFile {
    fn take(
        &self,
        name: &str,
        expected: Option<&Shape>,
        dtype: DType,
    ) -> candle_core::Result<Tensor> {
        // Plain `Msg` errors, not `bail!`, because `bail!` appends a backtrace to the message
        // whenever RUST_BACKTRACE is set, and these messages end up in load errors.
        let fail = |reason: String| candle_core::Error::Msg(reason);
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| fail(format!("it has no tensor '{name}'")))?;
        if let Some(expected) = expected
            && tensor.shape() != expected
        {
            let hint = if name.starts_with("fc.") {
                format!(" (num_classes is {})", self.num_classes)
            } else {
                String::new()
            };
            return Err(fail(format!(
                "tensor '{name}' has shape {:?}, expected {:?}{hint}",
                tensor.dims(),
                expected.dims()
            )));
        }
        if !matches!(
            tensor.dtype(),
            DType::F16 | DType::BF16 | DType::F32 | DType::F64
        ) {
            return Err(fail(format!(
                "tensor '{name}' is {:?}, expected a float type (f32, f16, bf16 or f64)",
                tensor.dtype()
            )));
        }
        let tensor = tensor.to_dtype(dtype).map_err(|e| {
            fail(format!(
                "tensor '{name}' cannot be converted to {dtype:?}: {e}"
            ))
        })?;
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string());
        Ok(tensor)
    }
}

impl SimpleBackend for WeightFile {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        // The file was read onto `device` already, so this move is a no-op in practice.
        self.take(name, Some(&shape), dtype)?.to_device(device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.take(name, None, dtype)?.to_device(device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;
    use std::path::PathBuf;

    /// A fresh directory of the test's own, removed on drop.
    struct Scratch {
        dir: PathBuf,
    }

    impl Scratch {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("candle-resnet-{}-{test}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self { dir }
        }

        fn save(&self, file: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
            let path = self.dir.join(file);
            candle_core::safetensors::save(tensors, &path).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Randomly initialised weights of every tensor a ResNet of `depth` reads, under the names
    /// candle-transformers asks for.
    fn synthetic_weights(depth: usize, num_classes: usize) -> HashMap<String, Tensor> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let build = DEPTHS.iter().find(|(d, _)| *d == depth).unwrap().1;
        build(num_classes, vb).unwrap();
        let vars = varmap.data().lock().unwrap();
        vars.iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect()
    }

    fn settings(depth: usize, num_classes: usize) -> ResNetSettings {
        ResNetSettings { depth, num_classes }
    }

    fn load_error(settings: &ResNetSettings, weights: &Path) -> String {
        match ResNet::load(settings, weights, &Device::Cpu) {
            Ok(model) => panic!("loaded unexpectedly: {model:?}"),
            Err(message) => message,
        }
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn settings_default_to_imagenet_classes_and_refuse_unknown_keys() {
        let parsed: ResNetSettings = toml::from_str("depth = 34").unwrap();
        assert_eq!((parsed.depth, parsed.num_classes), (34, 1000));
        let parsed: ResNetSettings = toml::from_str("depth = 50\nnum_classes = 10").unwrap();
        assert_eq!((parsed.depth, parsed.num_classes), (50, 10));
        let err = toml::from_str::<ResNetSettings>("depth = 18\nlayers = 4").unwrap_err();
        assert!(err.to_string().contains("unknown field `layers`"), "{err}");
    }

    /// The `architecture` key of the `[candle]` table is meant to be a serde tag chosen by the
    /// caller; this checks that `deny_unknown_fields` does not trip over it.
    #[test]
    fn settings_work_as_a_tagged_variant() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(tag = "architecture", rename_all = "lowercase")]
        enum Candle {
            Resnet(ResNetSettings),
        }
        let Candle::Resnet(parsed) =
            toml::from_str("architecture = \"resnet\"\ndepth = 18").unwrap();
        assert_eq!((parsed.depth, parsed.num_classes), (18, 1000));
        let err = toml::from_str::<Candle>("architecture = \"resnet\"\ndepth = 18\nwidth = 2")
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `width`"), "{err}");
    }

    #[test]
    fn unknown_depth_is_refused() {
        for depth in [0, 20, 101, 152] {
            let message = load_error(&settings(depth, 1000), Path::new("unused.safetensors"));
            assert_eq!(
                message,
                format!("ResNet depth {depth} is not supported; use 18, 34 or 50")
            );
        }
    }

    #[test]
    fn zero_classes_are_refused() {
        let message = load_error(&settings(18, 0), Path::new("unused.safetensors"));
        assert!(message.contains("num_classes"), "{message}");
    }

    #[test]
    fn missing_file_is_named() {
        let message = load_error(&settings(18, 1000), Path::new("/nonexistent/r.safetensors"));
        assert_eq!(
            message,
            "weights file /nonexistent/r.safetensors does not exist"
        );
    }

    #[test]
    fn unreadable_file_is_named() {
        let scratch = Scratch::new("unreadable");
        let path = scratch.dir.join("junk.safetensors");
        std::fs::write(&path, b"not a safetensors file").unwrap();
        let message = load_error(&settings(18, 1000), &path);
        assert!(
            message.starts_with(&format!("cannot read weights file {}: ", path.display())),
            "{message}"
        );
    }

    #[test]
    fn synthetic_weights_load_and_give_logits() {
        let scratch = Scratch::new("synthetic");
        let path = scratch.save("r18.safetensors", &synthetic_weights(18, 10));
        let model = ResNet::load(&settings(18, 10), &path, &Device::Cpu).unwrap();
        let input = Tensor::randn(0f32, 1., (2, 3, 64, 48), &Device::Cpu).unwrap();
        assert_eq!(model.forward(&input).unwrap().dims(), [2, 10]);
    }

    #[test]
    fn missing_tensor_is_named_with_the_file() {
        let scratch = Scratch::new("missing-tensor");
        let mut weights = synthetic_weights(18, 10);
        weights.remove("layer2.0.downsample.1.running_var").unwrap();
        let path = scratch.save("r18.safetensors", &weights);
        assert_eq!(
            load_error(&settings(18, 10), &path),
            format!(
                "cannot load a ResNet-18 from {}: it has no tensor \
                 'layer2.0.downsample.1.running_var'",
                path.display()
            )
        );
    }

    #[test]
    fn misshaped_tensor_is_named_with_the_file() {
        let scratch = Scratch::new("misshaped");
        let path = scratch.save("r18.safetensors", &synthetic_weights(18, 10));
        assert_eq!(
            load_error(&settings(18, 1000), &path),
            format!(
                "cannot load a ResNet-18 from {}: tensor 'fc.weight' has shape [10, 512], \
                 expected [1000, 512] (num_classes is 1000)",
                path.display()
            )
        );
    }

    #[test]
    fn file_of_another_depth_is_refused() {
        let scratch = Scratch::new("other-depth");
        let r18 = scratch.save("r18.safetensors", &synthetic_weights(18, 10));
        let r34 = scratch.save("r34.safetensors", &synthetic_weights(34, 10));

        let message = load_error(&settings(34, 10), &r18);
        assert!(
            message.contains("no tensor 'layer1.2.conv1.weight'"),
            "{message}"
        );
        let message = load_error(&settings(50, 10), &r18);
        assert!(
            message.contains("'layer1.0.conv1.weight' has shape [64, 64, 3, 3]"),
            "{message}"
        );
        let message = load_error(&settings(18, 10), &r34);
        assert_eq!(
            message,
            format!(
                "cannot load a ResNet-18 from {}: it has 80 tensor(s) that a ResNet-18 does \
                 not use, such as 'layer1.2.bn1.bias', so check depth",
                r34.display()
            )
        );
    }

    #[test]
    fn num_batches_tracked_is_ignored() {
        let scratch = Scratch::new("num-batches-tracked");
        let mut weights = synthetic_weights(18, 10);
        let counter = Tensor::new(&[7i64], &Device::Cpu)
            .unwrap()
            .squeeze(0)
            .unwrap();
        weights.insert("bn1.num_batches_tracked".into(), counter.clone());
        weights.insert("layer1.0.bn2.num_batches_tracked".into(), counter);
        let path = scratch.save("r18.safetensors", &weights);
        assert!(ResNet::load(&settings(18, 10), &path, &Device::Cpu).is_ok());
    }

    #[test]
    fn integer_tensor_is_refused() {
        let scratch = Scratch::new("integer");
        let mut weights = synthetic_weights(18, 10);
        let bias = Tensor::zeros(10, DType::I64, &Device::Cpu).unwrap();
        weights.insert("fc.bias".into(), bias);
        let path = scratch.save("r18.safetensors", &weights);
        let message = load_error(&settings(18, 10), &path);
        assert!(
            message.contains(&path.display().to_string())
                && message.contains("tensor 'fc.bias' is I64"),
            "{message}"
        );
    }

    /// Half-precision weights are widened to f32 on load, so they must give exactly what the
    /// same (already rounded) values stored as f32 give.
    #[test]
    fn half_precision_weights_are_widened() {
        let scratch = Scratch::new("half");
        let convert = |dtype: DType, weights: &HashMap<String, Tensor>| {
            weights
                .iter()
                .map(|(name, t)| (name.clone(), t.to_dtype(dtype).unwrap()))
                .collect::<HashMap<_, _>>()
        };
        let half = convert(DType::F16, &synthetic_weights(18, 10));
        let f16_path = scratch.save("f16.safetensors", &half);
        let f32_path = scratch.save("f32.safetensors", &convert(DType::F32, &half));
        let input = Tensor::randn(0f32, 1., (1, 3, 40, 40), &Device::Cpu).unwrap();
        let run = |path: &Path| {
            ResNet::load(&settings(18, 10), path, &Device::Cpu)
                .unwrap()
                .forward(&input)
                .unwrap()
        };
        assert_eq!(max_abs_diff(&run(&f16_path), &run(&f32_path)), 0.0);
    }

    #[test]
    fn forward_refuses_inputs_that_are_not_rgb_f32_images() {
        let scratch = Scratch::new("bad-input");
        let path = scratch.save("r18.safetensors", &synthetic_weights(18, 10));
        let model = ResNet::load(&settings(18, 10), &path, &Device::Cpu).unwrap();
        let cases = [
            Tensor::zeros((1, 3, 32), DType::F32, &Device::Cpu).unwrap(),
            Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu).unwrap(),
            Tensor::zeros((1, 3, 32, 32), DType::F16, &Device::Cpu).unwrap(),
        ];
        for input in cases {
            assert!(model.forward(&input).is_err(), "{:?}", input.shape());
        }
    }
}
