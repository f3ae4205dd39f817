//! The `kafkafs` binary: parse the command line, set up logging, run.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use kafkafs::cli::{Cli, Command};
use kafkafs::journal::kafka::KafkaSource;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    match cli.command {
        Command::Slave(args) => {
            let config = args.config();
            std::fs::create_dir_all(&config.root)
                .with_context(|| format!("creating {}", config.root.display()))?;
            let kafka = args.kafka.config()?;
            let source = KafkaSource::new(&kafka).with_context(|| {
                format!(
                    "reading topic `{}` from {}",
                    kafka.topic,
                    kafka.broker_list()
                )
            })?;
            let report = kafkafs::slave::run(&config, Box::new(source), stop)?;
            tracing::info!(
                applied = report.applied,
                errno_outcomes = report.errno_outcomes,
                duplicates = report.duplicates,
                skipped_bad = report.skipped_bad,
                "slave stopped; checkpoint written"
            );
        }
    }
    Ok(())
}
