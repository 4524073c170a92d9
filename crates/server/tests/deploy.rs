//! The deployment files (`deploy/k8s`, `deploy/kserve`, `deploy/docker`) against the binary
//! itself: every probe path answers on the router, every port and argument is one the server
//! takes, the drain fits the grace period, the metrics the autoscaler reads exist in
//! `/metrics`, and the KServe runtime's exact arguments start a real server on both layouts
//! KServe's storage initializer produces.

mod common;

use axum::http::StatusCode;
use clap::Parser;
use common::{ServerProcess, blocking_status, example_dir, example_state, get, post_json, send};
use inference_server::{Cli, app};
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};
use tower::ServiceExt;

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every document of a YAML file.
fn documents(relative: &str) -> Vec<Value> {
    let path = repository_root().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{relative}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document).unwrap_or_else(|e| panic!("{relative}: not YAML: {e}"))
        })
        .collect()
}

fn one(relative: &str) -> Value {
    let mut all = documents(relative);
    assert_eq!(all.len(), 1, "{relative}: one document");
    all.remove(0)
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("not a list: {value:?}"))
        .iter()
        .map(text)
        .collect()
}

/// The value after `flag` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|arg| arg == flag)
        .unwrap_or_else(|| panic!("{flag} not in {args:?}"));
    &args[at + 1]
}

/// The configuration the arguments give, as the binary parses them.
fn parsed(args: &[String]) -> Cli {
    let argv = std::iter::once("inference-server".to_owned()).chain(args.iter().cloned());
    Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("the binary refuses {args:?}: {e}"))
}

/// The drain timeout a container's environment sets (the default otherwise).
fn drain_secs(container: &Value) -> f64 {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|var| var["name"] == "INFERENCE_SERVER__DRAIN_TIMEOUT_SECS")
        .map_or(
            inference_server::Config::default()
                .server
                .drain_timeout_secs,
            |var| text(&var["value"]).parse().unwrap(),
        )
}

/// The number of a container port, named or numbered.
fn port_number(container: &Value, port: &Value) -> u16 {
    if let Value::Number(number) = port {
        return u16::try_from(number.as_u64().unwrap()).unwrap();
    }
    let name = text(port);
    let found = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name.as_str()))
        .unwrap_or_else(|| panic!("no container port named {name}"));
    u16::try_from(found["containerPort"].as_u64().unwrap()).unwrap()
}

/// The series names a PromQL expression reads (`name{...}` or `name[...]`).
fn series_in(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = query.as_bytes();
    let mut start = None;
    for (i, &b) in bytes.iter().enumerate() {
        let word = b.is_ascii_alphanumeric() || b == b'_';
        match (word, start) {
            (true, None) => start = Some(i),
            (false, Some(from)) => {
                if b == b'{' && query[from..i].contains('_') {
                    names.push(query[from..i].to_owned());
                }
                start = None;
            }
            _ => {}
        }
    }
    names
}

#[tokio::test]
async fn the_deployment_fits_the_binary_probes_ports_grace_and_autoscaling_metric() {
    let deployment = one("deploy/k8s/deployment.yaml");
    assert_eq!(deployment["kind"], "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = strings(&container["args"]);
    let cli = parsed(&args);
    assert_eq!(
        cli.host.as_deref(),
        Some("0.0.0.0"),
        "reachable from outside the pod"
    );

    let http = cli.port.expect("--port");
    assert_eq!(port_number(container, &Value::from("http")), http);
    assert_eq!(
        port_number(container, &Value::from("grpc")),
        cli.grpc_port.expect("--grpc-port")
    );
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(text(&annotations["prometheus.io/port"]), http.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // Every probe on the HTTP port, at a path the router answers 200 when ready.
    let state = example_state().await;
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let check = &container[probe]["httpGet"];
        assert_eq!(port_number(container, &check["port"]), http, "{probe}");
        let path = text(&check["path"]);
        let reply = send(&state, get(&path)).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{probe} {path}: {:?}",
            reply.body
        );
    }
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"],
        "/health/live"
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"],
        "/health/ready"
    );

    // The grace period covers the preStop pause and the whole drain.
    let grace = pod["terminationGracePeriodSeconds"].as_f64().unwrap();
    let pause: f64 = strings(&container["lifecycle"]["preStop"]["exec"]["command"])
        .last()
        .unwrap()
        .parse()
        .unwrap();
    let drain = drain_secs(container);
    assert!(
        grace > pause + drain,
        "terminationGracePeriodSeconds {grace} <= preStop {pause} s + drain {drain} s"
    );

    // The Service targets the container's ports by name.
    let service = one("deploy/k8s/service.yaml");
    for port in service["spec"]["ports"].as_sequence().unwrap() {
        port_number(container, &port["targetPort"]);
    }

    // The HPA's metric is the adapter rule's, computed from series /metrics has.
    let hpa = one("deploy/k8s/hpa.yaml");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let metric = text(&hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]);
    let rules = one("deploy/k8s/prometheus-adapter-rules.yaml");
    let rule = rules["rules"]["custom"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|rule| rule["name"]["as"].as_str() == Some(metric.as_str()))
        .unwrap_or_else(|| panic!("no adapter rule exposes {metric}"));
    let reply = send(&state, post_json("/predict", r#"{"inputs": 1.0}"#)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let response = app(state.clone()).oneshot(get("/metrics")).await.unwrap();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let exposition = String::from_utf8(bytes.to_vec()).unwrap();
    let mut read = series_in(&text(&rule["seriesQuery"]));
    read.extend(series_in(&text(&rule["metricsQuery"])));
    assert!(read.len() >= 3, "{read:?}");
    for series in read {
        assert!(
            exposition.contains(&format!("\n{series}{{")),
            "the autoscaler reads {series}, which /metrics does not have"
        );
    }
}

#[test]
fn the_kserve_runtime_is_what_kserve_accepts() {
    let runtime = one("deploy/kserve/cluster-serving-runtime.yaml");
    assert_eq!(runtime["apiVersion"], "serving.kserve.io/v1alpha1");
    assert_eq!(runtime["kind"], "ClusterServingRuntime");
    let spec = &runtime["spec"];
    assert_eq!(strings(&spec["protocolVersions"]), ["v2", "grpc-v2"]);
    let formats: Vec<&Value> = spec["supportedModelFormats"]
        .as_sequence()
        .unwrap()
        .iter()
        .collect();
    for name in ["onnx", "pytorch"] {
        let format = formats
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not a supported format"));
        // Auto-selected formats need a priority no built-in runtime holds (onnx: 1 and 2,
        // pytorch: 2).
        if format["autoSelect"].as_bool() == Some(true) {
            assert!(
                format["priority"].as_u64().unwrap() >= 3,
                "{name}: {format:?}"
            );
        }
    }
    let container = &spec["containers"][0];
    assert_eq!(container["name"], "kserve-container");
    let args = strings(&container["args"]);
    let cli = parsed(&args);
    assert_eq!(cli.port, Some(8080));
    assert_eq!(cli.grpc_port, Some(9000));
    assert_eq!(flag(&args, "--model-dir"), "/mnt/models");
    assert_eq!(flag(&args, "--model-name"), "{{.Name}}");
    let h2c = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "h2c")
        .expect("a port named h2c");
    assert_eq!(h2c["containerPort"].as_u64(), Some(9000));
    assert_eq!(
        text(&spec["annotations"]["prometheus.kserve.io/port"]),
        "8080"
    );
    assert_eq!(spec["annotations"]["prometheus.kserve.io/path"], "/metrics");

    let name = &runtime["metadata"]["name"];
    for service in [
        "deploy/kserve/example-model.yaml",
        "deploy/kserve/resnet18.yaml",
    ] {
        let service = one(service);
        assert_eq!(service["kind"], "InferenceService");
        let model = &service["spec"]["predictor"]["model"];
        assert_eq!(&model["runtime"], name);
        assert!(
            formats
                .iter()
                .any(|f| f["name"] == model["modelFormat"]["name"])
        );
        let protocol = text(&model["protocolVersion"]);
        assert!(strings(&spec["protocolVersions"]).contains(&protocol));
    }
}

/// The runtime's arguments with the model folder, the model's name and the two ports (fixed
/// ports may be taken here) replaced.
fn runtime_args(model_dir: &Path, http: u16, grpc: u16) -> Vec<String> {
    let runtime = one("deploy/kserve/cluster-serving-runtime.yaml");
    strings(&runtime["spec"]["containers"][0]["args"])
        .into_iter()
        .map(|arg| match arg.as_str() {
            "/mnt/models" => model_dir.display().to_string(),
            "{{.Name}}" => "example-model".to_owned(),
            "8080" => http.to_string(),
            "9000" => grpc.to_string(),
            _ => arg,
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn copy_example(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(example_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn the_runtime_arguments_serve_both_layouts_of_the_storage_initializer() {
    // /mnt/models/model.toml: one model, named by --model-name.
    let single = tempfile::tempdir().unwrap();
    copy_example(single.path());
    // /mnt/models/*/model.toml: a repository.
    let repository = tempfile::tempdir().unwrap();
    copy_example(&repository.path().join("example"));

    for (layout, dir, model) in [
        ("one model", single.path(), "example-model"),
        ("a repository", repository.path(), "example_model"),
    ] {
        let grpc = free_port();
        let args = runtime_args(dir, 0, grpc);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = ServerProcess::start_with(&args, &[]);
        let ready = format!("/v2/models/{model}/ready");
        assert_eq!(
            blocking_status(server.addr, &ready),
            200,
            "{layout}: {ready}"
        );
        assert_eq!(blocking_status(server.addr, "/metrics"), 200, "{layout}");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok(),
            "{layout}: gRPC on the h2c port"
        );
    }
}

#[test]
fn the_images_start_the_binary_with_arguments_it_takes_and_check_liveness() {
    for file in ["Dockerfile", "Dockerfile.ort", "Dockerfile.tch"] {
        let text =
            std::fs::read_to_string(repository_root().join("deploy/docker").join(file)).unwrap();
        let line = |keyword: &str| {
            text.lines()
                .find(|line| line.starts_with(keyword))
                .unwrap_or_else(|| panic!("{file}: no {keyword}"))
                .trim_start_matches(keyword)
                .trim()
                .to_owned()
        };
        let cmd: Vec<String> = serde_json::from_str(&line("CMD")).unwrap();
        let cli = parsed(&cmd);
        assert_eq!(cli.host.as_deref(), Some("0.0.0.0"), "{file}");
        assert_eq!(line("ENTRYPOINT"), r#"["inference-server"]"#, "{file}");
        assert_eq!(line("USER"), "10001", "{file}: not root");
        let defaults = inference_server::Config::default().server;
        assert_eq!(
            line("EXPOSE"),
            format!("{} {}", defaults.port, defaults.grpc_port),
            "{file}"
        );
        // The port the server was told through its environment, else the default.
        let probe = format!(
            "http://127.0.0.1:${{INFERENCE_SERVER__PORT:-${{PORT:-{}}}}}/health/live",
            defaults.port
        );
        assert!(
            text.contains(&probe),
            "{file}: the healthcheck asks {probe}"
        );
    }
}
