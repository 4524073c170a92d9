//! `cargo xtask soak --mins N`: mixed traffic against the release server for N minutes,
//! sampling its memory, descriptors, threads and queue each second. The traffic, and the
//! rules for a lost request and for growth without bound, are in the server's `soak`
//! example.

use crate::bench::{build_release_server, run_example};
use anyhow::{Result, ensure};
use std::path::PathBuf;

/// Fewer seconds leave a quarter of the run without samples to compare.
const MIN_SECS: f64 = 8.0;

#[derive(Debug, clap::Args)]
pub(crate) struct SoakArgs {
    /// Minutes of traffic; fractions are allowed (`--mins 0.5`).
    #[arg(long)]
    pub(crate) mins: f64,
    /// Folder to write the samples to, as `soak.csv`.
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
}

impl SoakArgs {
    /// The example's command line.
    fn forwarded(&self) -> Result<Vec<String>> {
        let secs = self.mins * 60.0;
        ensure!(
            secs >= MIN_SECS,
            "--mins {} is too short: a soak needs at least {MIN_SECS} seconds",
            self.mins
        );
        let mut args = vec!["--secs".to_owned(), secs.to_string()];
        if let Some(dir) = &self.out {
            // The example runs from the workspace root, not from where xtask was called.
            let dir = std::path::absolute(dir)?;
            args.extend(["--out".to_owned(), dir.display().to_string()]);
        }
        Ok(args)
    }
}

pub(crate) fn run(args: &SoakArgs) -> Result<()> {
    let forwarded = args.forwarded()?;
    build_release_server("soak")?;
    run_example("soak", &forwarded, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_become_seconds_and_the_out_dir_absolute() {
        let args = SoakArgs {
            mins: 0.5,
            out: Some("soak-results".into()),
        };
        let forwarded = args.forwarded().unwrap();
        assert_eq!(forwarded[..3], ["--secs", "30", "--out"]);
        assert!(
            std::path::Path::new(&forwarded[3]).is_absolute(),
            "{forwarded:?}"
        );
    }

    #[test]
    fn a_run_too_short_to_judge_is_refused() {
        let args = SoakArgs {
            mins: 0.1,
            out: None,
        };
        assert!(args.forwarded().is_err());
    }
}
