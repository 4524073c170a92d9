//! `cargo xtask images`: builds the container images of `deploy/docker/` with buildah and
//! runs each one under podman: ready, one prediction, the healthcheck, a non-root user, and
//! a table of image size, build time, start-to-ready time and idle RSS.
//!
//! Podman and buildah (Debian's, installed when missing) keep their images and settings in
//! `target/images/`, apart from the machine's own. When the base images can be neither found
//! there nor pulled, local equivalents are built: `debian:bookworm-slim` with debootstrap and
//! `rust:<version>-bookworm` from it and this machine's Rust toolchain.

use crate::process::{Steps, capture, ensure_debian_packages, run_streamed, workspace_root};
use anyhow::{Context, Result, ensure};
use indicatif::ProgressBar;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

const DEBIAN: &str = "docker.io/library/debian:bookworm-slim";
const MIRROR: &str = "http://deb.debian.org/debian";
/// The stand-in build image: roughly what the official `rust:*-bookworm` holds on top of
/// Debian (buildpack-deps: compilers, headers, curl, git), then the copied toolchain.
const RUST_CONTAINERFILE: &str = r#"FROM docker.io/library/debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates curl wget gnupg netbase git openssh-client procps \
      autoconf automake bzip2 dpkg-dev file g++ gcc libc6-dev libssl-dev libtool \
      make patch pkg-config unzip xz-utils zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
RUN chmod -R a+w /usr/local/rustup /usr/local/cargo && cargo --version
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Flavour {
    Candle,
    Ort,
    Tch,
}

impl Flavour {
    fn name(self) -> &'static str {
        match self {
            Flavour::Candle => "candle",
            Flavour::Ort => "ort",
            Flavour::Tch => "tch",
        }
    }

    fn dockerfile(self) -> &'static str {
        match self {
            Flavour::Candle => "deploy/docker/Dockerfile",
            Flavour::Ort => "deploy/docker/Dockerfile.ort",
            Flavour::Tch => "deploy/docker/Dockerfile.tch",
        }
    }

    fn tag(self) -> String {
        format!("localhost/inference-server:{}", self.name())
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct ImagesArgs {
    /// Comma-separated flavours: candle (Dockerfile), ort, tch (several GB of CUDA wheels).
    #[arg(long, value_delimiter = ',', default_value = "candle,ort,tch")]
    flavours: Vec<Flavour>,
    /// Leaves the containers running after the checks instead of removing them.
    #[arg(long)]
    keep: bool,
    /// Checks the images built before instead of building them again.
    #[arg(long)]
    skip_build: bool,
}

#[derive(Debug)]
struct Row {
    flavour: &'static str,
    image_mb: f64,
    build_s: Option<f64>,
    ready_ms: u128,
    rss_mib: f64,
    uid: String,
}

pub(crate) fn run(args: &ImagesArgs) -> Result<()> {
    let root = workspace_root();
    let dir = root.join("target/images");
    let builds = if args.skip_build {
        0
    } else {
        args.flavours.len()
    };
    let mut steps = Steps::new(2 + builds + args.flavours.len());
    steps.run(
        "install Debian's podman, buildah, runc, debootstrap if missing",
        |bar| {
            ensure_debian_packages(
                &[
                    "/usr/bin/podman",
                    "/usr/bin/buildah",
                    "/usr/sbin/runc",
                    "/usr/sbin/debootstrap",
                ],
                &["podman", "buildah", "runc", "debootstrap"],
                bar,
            )
        },
    )?;
    let engine = Engine::new(&dir)?;
    steps.run("find, pull or build the base images", |bar| {
        ensure_bases(&engine, &root, &dir, bar)
    })?;
    let mut rows = Vec::new();
    for &flavour in &args.flavours {
        let mut build_s = None;
        if !args.skip_build {
            let title = format!("build {} ({})", flavour.tag(), flavour.dockerfile());
            build_s = Some(steps.run(&title, |bar| {
                let started = Instant::now();
                let mut command = engine.buildah();
                command
                    .args(["bud", "--pull=never", "--layers", "--format", "docker"])
                    .args(["--network", "host", "-t", &flavour.tag(), "-f"])
                    .arg(root.join(flavour.dockerfile()))
                    .arg(&root);
                run_streamed(&mut command, bar)?;
                Ok(started.elapsed().as_secs_f64())
            })?);
        }
        let title = format!("run and check {}", flavour.tag());
        let row = steps.run(&title, |_| check(&engine, flavour, args.keep))?;
        rows.push(Row { build_s, ..row });
    }
    println!("flavour  image MB  build s  ready ms  idle RSS MiB  uid");
    for row in rows {
        let build = row
            .build_s
            .map_or("-".to_owned(), |secs| format!("{secs:.0}"));
        println!(
            "{:<7}  {:>8.0}  {:>7}  {:>8}  {:>12.1}  {}",
            row.flavour, row.image_mb, build, row.ready_ms, row.rss_mib, row.uid
        );
    }
    Ok(())
}

/// Podman and buildah pointed at the storage and settings under `target/images/`.
#[derive(Debug)]
struct Engine {
    storage_conf: PathBuf,
    containers_conf: PathBuf,
}

impl Engine {
    fn new(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let storage_conf = dir.join("storage.conf");
        let storage = format!(
            "[storage]\ndriver = \"overlay\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
            dir.join("run").display(),
            dir.join("storage").display()
        );
        fs::write(&storage_conf, storage)?;
        let (files, processes) = hard_limits()?;
        // crun refuses hosts with hybrid cgroups (v1 and v2 at once); runc runs everywhere.
        // Podman's default rlimits exceed the hard limits of a host without CAP_SYS_RESOURCE,
        // and the container then fails to start ("error setting rlimit"): stay within them.
        let containers = format!(
            "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             [containers]\ndefault_ulimits = [\"nofile={files}:{files}\", \"nproc={processes}:{processes}\"]\n"
        );
        let containers_conf = dir.join("containers.conf");
        fs::write(&containers_conf, containers)?;
        Ok(Self {
            storage_conf,
            containers_conf,
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .env("CONTAINERS_CONF", &self.containers_conf);
        command
    }

    fn podman(&self) -> Command {
        self.command("podman")
    }

    fn buildah(&self) -> Command {
        self.command("buildah")
    }

    fn has_image(&self, tag: &str) -> bool {
        self.podman()
            .args(["image", "exists", tag])
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Whether `tag` is here now, pulled if it was not.
    fn find_or_pull(&self, tag: &str, bar: &ProgressBar) -> bool {
        if self.has_image(tag) {
            return true;
        }
        // `timeout`: without a registry in reach podman retries for minutes.
        let mut pull = self.command("timeout");
        pull.args(["120", "podman", "pull", tag]);
        run_streamed(&mut pull, bar).is_ok()
    }
}

/// This process's hard limits of open files and processes; nproc at most podman's 32768.
fn hard_limits() -> Result<(u64, u64)> {
    let limits = fs::read_to_string("/proc/self/limits")?;
    let hard = |name: &str| -> Result<u64> {
        let line = limits
            .lines()
            .find(|line| line.starts_with(name))
            .with_context(|| format!("no `{name}` in /proc/self/limits"))?;
        let value = line[name.len()..].split_whitespace().nth(1).unwrap_or("");
        Ok(value.parse().unwrap_or(u64::MAX))
    };
    Ok((
        hard("Max open files")?.min(1 << 20),
        hard("Max processes")?.min(32768),
    ))
}

/// The `rust:<version>-bookworm` tag that the candle Dockerfile builds from.
fn rust_base(root: &Path) -> Result<(String, String)> {
    let dockerfile = fs::read_to_string(root.join(Flavour::Candle.dockerfile()))?;
    let image = dockerfile
        .lines()
        .find_map(|line| line.strip_prefix("FROM rust:"))
        .and_then(|rest| rest.split_whitespace().next())
        .context("the Dockerfile has no `FROM rust:<version>-bookworm` line")?;
    let version = image
        .strip_suffix("-bookworm")
        .context("the Rust base image is not a bookworm one")?;
    Ok((
        format!("docker.io/library/rust:{image}"),
        version.to_owned(),
    ))
}

fn ensure_bases(engine: &Engine, root: &Path, dir: &Path, bar: &ProgressBar) -> Result<()> {
    let (rust_tag, rust_version) = rust_base(root)?;
    if !engine.find_or_pull(DEBIAN, bar) {
        note(
            bar,
            "no debian:bookworm-slim to pull: building it with debootstrap",
        );
        build_debian(engine, dir, bar)?;
    }
    if !engine.find_or_pull(&rust_tag, bar) {
        note(
            bar,
            &format!("no {rust_tag} to pull: building it from this machine's Rust"),
        );
        build_rust(engine, dir, &rust_tag, &rust_version, bar)?;
    }
    Ok(())
}

/// A line above the spinner, or on stderr when there is no terminal to draw it on.
fn note(bar: &ProgressBar, line: &str) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(format!("  {line}"));
    }
}

/// A minimal bookworm, slimmed as the official `-slim` images are (no docs, manuals or
/// locales; apt keeps no package files).
fn build_debian(engine: &Engine, dir: &Path, bar: &ProgressBar) -> Result<()> {
    let rootfs = dir.join("rootfs");
    if rootfs.exists() {
        fs::remove_dir_all(&rootfs)?;
    }
    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .args(["--variant=minbase", "bookworm"])
        .arg(&rootfs)
        .arg(MIRROR);
    run_streamed(&mut debootstrap, bar)?;
    let etc = rootfs.join("etc");
    fs::write(
        etc.join("dpkg/dpkg.cfg.d/docker"),
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n\
         path-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\n\
         path-exclude /usr/share/man/*\n",
    )?;
    fs::write(
        etc.join("apt/apt.conf.d/docker-clean"),
        "DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb || true\"; };\n\
         Dir::Cache::pkgcache \"\"; Dir::Cache::srcpkgcache \"\";\n",
    )?;
    fs::write(
        etc.join("apt/apt.conf.d/docker-no-languages"),
        "Acquire::Languages \"none\";\n",
    )?;
    fs::write(
        etc.join("apt/sources.list"),
        format!(
            "deb {MIRROR} bookworm main\ndeb {MIRROR} bookworm-updates main\n\
             deb {MIRROR}-security bookworm-security main\n"
        ),
    )?;
    // debootstrap leaves the packages it downloaded in apt's cache: a third of the image.
    for path in [
        "usr/share/info",
        "usr/share/locale",
        "usr/share/man",
        "var/lib/apt/lists",
        "var/cache/apt",
    ] {
        let path = rootfs.join(path);
        fs::remove_dir_all(&path)?;
        fs::create_dir_all(&path)?;
    }
    let mut docs = Command::new("find");
    docs.arg(rootfs.join("usr/share/doc"))
        .args([
            "-mindepth",
            "1",
            "-not",
            "-name",
            "copyright",
            "-not",
            "-type",
            "d",
        ])
        .arg("-delete");
    run_streamed(&mut docs, bar)?;
    // Behind a TLS-inspecting proxy the builds' downloads (apt over https, crates, wheels)
    // need its CA: `ca-certificates`, once installed in a build, picks these up.
    let cas = rootfs.join("usr/local/share/ca-certificates");
    fs::create_dir_all(&cas)?;
    if let Ok(entries) = fs::read_dir("/usr/local/share/ca-certificates") {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|ext| ext == "crt") {
                fs::copy(entry.path(), cas.join(entry.file_name()))?;
            }
        }
    }
    let tarball = dir.join("rootfs.tar");
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "-cf"])
        .arg(&tarball)
        .arg(".");
    run_streamed(&mut tar, bar)?;
    let mut import = engine.podman();
    import
        .args(["import", "--change", "CMD [\"bash\"]"])
        .arg(&tarball)
        .arg(DEBIAN);
    run_streamed(&mut import, bar)?;
    fs::remove_file(&tarball)?;
    fs::remove_dir_all(&rootfs)?;
    Ok(())
}

/// The Rust build image, from this machine's toolchain, which must be the Dockerfile's version.
fn build_rust(
    engine: &Engine,
    dir: &Path,
    tag: &str,
    version: &str,
    bar: &ProgressBar,
) -> Result<()> {
    let info = capture(Command::new("rustc").arg("-vV"))?;
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or("")
            .to_owned()
    };
    let (release, host) = (field("release: "), field("host: "));
    ensure!(
        release == version || release.starts_with(&format!("{version}.")),
        "the Dockerfiles build with Rust {version} ({tag}), which cannot be pulled here, and \
         this machine's rustc is {release}: install Rust {version} (`rustup default {version}`) \
         or make the image available, then run this again"
    );
    let sysroot =
        PathBuf::from(capture(Command::new("rustc").args(["--print", "sysroot"]))?.trim());
    let rustup = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|path| path.join("rustup"))
                .find(|path| path.is_file())
        })
        .context("rustup is not on PATH: the Rust base image is built from a rustup toolchain")?;

    let context = dir.join("rust-context");
    if context.exists() {
        fs::remove_dir_all(&context)?;
    }
    let toolchain = context.join(format!("rustup/toolchains/{release}-{host}"));
    let bin = context.join("cargo/bin");
    fs::create_dir_all(toolchain.parent().expect("a toolchain path has a parent"))?;
    fs::create_dir_all(&bin)?;
    // Hard links when the toolchain is on the same disk: it is over a gigabyte.
    let linked = Command::new("cp")
        .arg("-al")
        .arg(&sysroot)
        .arg(&toolchain)
        .status()
        .is_ok_and(|status| status.success());
    if !linked {
        let mut copy = Command::new("cp");
        copy.arg("-a").arg(&sysroot).arg(&toolchain);
        run_streamed(&mut copy, bar)?;
    }
    let docs = toolchain.join("share/doc");
    if docs.exists() {
        fs::remove_dir_all(docs)?;
    }
    fs::copy(&rustup, bin.join("rustup"))?;
    for proxy in [
        "cargo",
        "rustc",
        "rustdoc",
        "cargo-clippy",
        "clippy-driver",
        "cargo-fmt",
        "rustfmt",
    ] {
        std::os::unix::fs::symlink("rustup", bin.join(proxy))?;
    }
    fs::write(
        context.join("rustup/settings.toml"),
        format!(
            "version = \"12\"\ndefault_toolchain = \"{release}-{host}\"\nprofile = \"minimal\"\n\
             auto_self_update = \"disable\"\n\n[overrides]\n"
        ),
    )?;
    fs::write(context.join("Containerfile"), RUST_CONTAINERFILE)?;
    let mut build = engine.buildah();
    build
        .args([
            "bud",
            "--pull=never",
            "--format",
            "docker",
            "--network",
            "host",
        ])
        .args(["-t", tag, "-f"])
        .arg(context.join("Containerfile"))
        .arg(&context);
    run_streamed(&mut build, bar)?;
    fs::remove_dir_all(&context)?;
    Ok(())
}

/// A container removed when dropped, so that a failed check leaves none behind.
#[derive(Debug)]
struct Container<'a> {
    engine: &'a Engine,
    name: String,
    keep: bool,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if !self.keep {
            let _ = self
                .engine
                .podman()
                .args(["rm", "-f", "-t", "2", &self.name])
                .output();
        }
    }
}

impl Container<'_> {
    fn logs(&self) -> String {
        self.engine
            .podman()
            .args(["logs", "--tail", "20", &self.name])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr)
            })
            .unwrap_or_default()
    }
}

fn check(engine: &Engine, flavour: Flavour, keep: bool) -> Result<Row> {
    let tag = flavour.tag();
    let inspect =
        capture(
            engine
                .podman()
                .args(["image", "inspect", "--format", "{{.Size}}", &tag]),
        )
        .with_context(|| format!("no image {tag}: build it first (without --skip-build)"))?;
    let image_mb = inspect.trim().parse::<f64>()? / 1e6;
    // Both listeners held at once, so that the two ports differ.
    let listeners = [
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
    ];
    let (port, grpc_port) = (
        listeners[0].local_addr()?.port(),
        listeners[1].local_addr()?.port(),
    );
    drop(listeners);
    let container = Container {
        engine,
        name: format!("inference-server-{}", flavour.name()),
        keep,
    };
    let _ = engine.podman().args(["rm", "-f", &container.name]).output();
    let started = Instant::now();
    // Host networking: the machine's loopback, no network setup needed. The port goes in
    // the environment, where the image's healthcheck reads it too.
    capture(
        engine
            .podman()
            .args(["run", "-d", "--network", "host", "--name", &container.name])
            .args(["-e", &format!("INFERENCE_SERVER__PORT={port}")])
            .args(["-e", &format!("INFERENCE_SERVER__GRPC_PORT={grpc_port}")])
            .arg(&tag)
            .args(["--host", "127.0.0.1", "--model-dir", "/models"])
            .args(["--backend", flavour.name()]),
    )?;
    let result = check_running(&container, port, started);
    if keep {
        println!("left running: {} on 127.0.0.1:{port}", container.name);
    }
    let (ready_ms, rss_mib, uid) = result.with_context(|| {
        format!(
            "{} failed; its last lines:\n{}",
            container.name,
            container.logs()
        )
    })?;
    Ok(Row {
        flavour: flavour.name(),
        image_mb,
        build_s: None,
        ready_ms,
        rss_mib,
        uid,
    })
}

/// Start-to-ready milliseconds, the server's idle resident memory and its user id.
fn check_running(
    container: &Container<'_>,
    port: u16,
    started: Instant,
) -> Result<(u128, f64, String)> {
    let podman = || container.engine.podman();
    let name = container.name.as_str();
    loop {
        if matches!(http(port, "GET", "/health/ready", ""), Ok((200, _))) {
            break;
        }
        let state = capture(podman().args(["inspect", "--format", "{{.State.Status}}", name]))?;
        ensure!(
            state.trim() == "running",
            "the container is {}",
            state.trim()
        );
        ensure!(
            started.elapsed() < Duration::from_secs(180),
            "not ready after 180 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let ready_ms = started.elapsed().as_millis();
    let (status, body) = http(port, "POST", "/predict", r#"{"inputs": [1.0]}"#)?;
    ensure!(status == 200, "POST /predict answered {status}: {body}");
    let health = podman().args(["healthcheck", "run", name]).output()?;
    ensure!(
        health.status.success(),
        "the healthcheck failed: {}",
        String::from_utf8_lossy(&health.stdout).trim()
    );
    // Idle: a moment after the last request, so that memory freed by it is gone.
    thread::sleep(Duration::from_secs(2));
    // The server is the container's first process; without a user namespace its ids and
    // memory read the same from here.
    let pid = capture(podman().args(["inspect", "--format", "{{.State.Pid}}", name]))?;
    let status = fs::read_to_string(format!("/proc/{}/status", pid.trim()))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.split_whitespace().next())
            .with_context(|| format!("no {name} for the server process"))
    };
    let uid = field("Uid:")?.to_owned();
    ensure!(uid != "0", "the server runs as root");
    let rss_kib: f64 = field("VmRSS:")?.parse()?;
    Ok((ready_ms, rss_kib / 1024.0, uid))
}

/// One HTTP/1.1 request on a fresh connection: the status code and the raw body.
fn http(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("no HTTP status line")?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rust_base_is_read_from_the_dockerfile() {
        let (tag, version) = rust_base(&workspace_root()).unwrap();
        assert_eq!(tag, format!("docker.io/library/rust:{version}-bookworm"));
        assert!(version.starts_with("1."), "{version}");
    }

    #[test]
    fn every_flavour_has_its_dockerfile() {
        for flavour in [Flavour::Candle, Flavour::Ort, Flavour::Tch] {
            assert!(workspace_root().join(flavour.dockerfile()).is_file());
        }
    }
}
