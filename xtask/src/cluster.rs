//! `cargo xtask cluster`: replicas of the release server behind HAProxy (Debian's, installed
//! when missing) through a rolling restart and a crash, under oha's load; the server's
//! `cluster` example runs it and prints the table.

use crate::bench::{build_release_server, ensure_oha, run_example};
use crate::process::{Steps, ensure_debian_packages};
use anyhow::Result;

const HAPROXY: &str = "/usr/sbin/haproxy";

#[derive(Debug, clap::Args)]
pub(crate) struct ClusterArgs {
    /// Replicas behind the load balancer.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Connections of the load.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

impl ClusterArgs {
    fn forwarded(&self, oha: &std::path::Path) -> Vec<String> {
        vec![
            "--replicas".into(),
            self.replicas.to_string(),
            "--concurrency".into(),
            self.concurrency.to_string(),
            "--oha".into(),
            oha.display().to_string(),
            "--haproxy".into(),
            HAPROXY.into(),
        ]
    }
}

pub(crate) fn run(args: &ClusterArgs) -> Result<()> {
    let mut steps = Steps::new(2);
    steps.run("install Debian's haproxy if missing", |bar| {
        ensure_debian_packages(&[HAPROXY], &["haproxy"], bar)
    })?;
    let oha = steps.run("install oha if missing", |_| ensure_oha())?;
    build_release_server("cluster")?;
    run_example("cluster", &args.forwarded(&oha), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_gets_every_setting_and_both_tools() {
        let args = ClusterArgs {
            replicas: 4,
            concurrency: 8,
        };
        let forwarded = args.forwarded(std::path::Path::new("/bin/oha"));
        assert_eq!(
            forwarded,
            [
                "--replicas",
                "4",
                "--concurrency",
                "8",
                "--oha",
                "/bin/oha",
                "--haproxy",
                HAPROXY
            ]
        );
    }
}
