//! torchvision's ResNet-18 as TorchScript through tch against eager PyTorch's logits
//! (batches of 1, 8 and 32, and real images), on the device that `CONFORMANCE_DEVICE`
//! names (default `cpu`). Skips when `cargo xtask export-models --resnet18` has not been
//! run, unless `REQUIRE_RESNET18=1`.

inference_core::resnet18_suite!(inference_backend_tch::load);
