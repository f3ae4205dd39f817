//! The `kafkafs` binary: parse the command line, set up logging, run.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use kafkafs::cli::{
    Cli, Command, KafkaArgs, LogArgs, MasterArgs, PropertyArgs, SlaveArgs, SnapshotStoreArgs,
};
use kafkafs::journal::kafka::{KafkaConfig, KafkaSource};

/// Errors end the process with one line: the error and its causes, each
/// said once (a layer that repeats its cause's text adds nothing), exit 1.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run() -> anyhow::Result<()> {
    init_logging();
    let mut cli = Cli::parse();
    match &mut cli.command {
        Command::Master(a) => a.resolve_topic(),
        Command::Slave(a) => a.resolve_topic(),
        _ => {}
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    match cli.command {
        Command::Master(args) => run_master(&args, stop),
        Command::Slave(args) => run_slave(&args, stop),
        Command::Status {
            broker,
            properties,
            data,
        } => run_status(broker, &properties, &data),
        Command::Completions { shell } => {
            kafkafs::cli::completions(shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Man => Ok(kafkafs::cli::man_page(&mut std::io::stdout())?),
        Command::Compare { first, second } => run_compare(&first, &second),
        Command::Snapshots { kafka, store } => run_snapshots(&kafka, &store),
        Command::Log(args) => run_log(&args, &stop),
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(|| kafkafs::progress::LogWriter)
        // Colour only on a terminal, and never with NO_COLOR set.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}

fn run_status(
    broker: Option<String>,
    properties: &PropertyArgs,
    data: &Path,
) -> anyhow::Result<()> {
    let mut status = kafkafs::status::read(data)?;
    if let Some(b) = broker {
        let mut kafka = kafkafs::journal::kafka::KafkaConfig::new(b, &status.topic);
        kafka.properties = properties.parse()?;
        let source = KafkaSource::new(&kafka)?;
        status = kafkafs::status::with_ends(status, &source)?;
    }
    print!("{status}");
    Ok(())
}

/// Like diff: exit 0 equal, 1 different, 2 trouble.
fn run_compare(first: &Path, second: &Path) -> anyhow::Result<()> {
    match kafkafs::tree::compare(first, second) {
        Ok(Ok(())) => {
            println!("equal");
            Ok(())
        }
        Ok(Err(diffs)) => {
            for d in diffs {
                println!("{d}");
            }
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!(
                "kafkafs compare: reading {} and {}: {e}",
                first.display(),
                second.display()
            );
            std::process::exit(2);
        }
    }
}

fn run_snapshots(kafka: &KafkaArgs, store: &SnapshotStoreArgs) -> anyhow::Result<()> {
    let kafka = kafka.config()?;
    let mut store = store.open(&kafka);
    let all = store
        .list()
        .with_context(|| format!("listing the snapshots in {}", store.describe()))?;
    print!("{}", kafkafs::snapshot::listing(&all));
    Ok(())
}

fn run_log(args: &LogArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    let options = args.options().map_err(anyhow::Error::msg)?;
    let kafka = args.kafka.config()?;
    let mut source = KafkaSource::new(&kafka)
        .with_context(|| format!("reading topic `{}` on {}", kafka.topic, kafka.broker_list()))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    kafkafs::log::run(&mut source, &options, &mut out, stop)?;
    Ok(())
}

fn run_slave(args: &SlaveArgs, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let config = args.config()?;
    kafkafs::slave::check_config(&config)?;
    let kafka = args.kafka.config()?;
    // A daemon: wait for the broker and for the topic to exist.
    let what = format!("topic `{}` on {}", kafka.topic, kafka.broker_list());
    let source = match kafkafs::slave::retry_transient(&stop, &what, || KafkaSource::new(&kafka)) {
        Ok(s) => s,
        Err(_) if stop.load(Ordering::SeqCst) => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {what}")),
    };
    // Only once the topic answers: a refused start leaves nothing.
    std::fs::create_dir_all(&config.root)
        .with_context(|| format!("creating {}", config.root.display()))?;
    // Informative only, and slow on brokers that do not answer config
    // requests: never in the way of the start.
    let (k, mut s) = (kafka.clone(), args.store.open(&kafka));
    let warning = std::thread::spawn(move || kafkafs::snapshot::warn_if_uncovered(&k, s.as_mut()));
    let store = args.store.open(&kafka);
    let report = kafkafs::slave::run_with_snapshots(&config, Box::new(source), Some(store), stop)?;
    tracing::info!(
        applied = report.applied,
        errno_outcomes = report.errno_outcomes,
        duplicates = report.duplicates,
        skipped_bad = report.skipped_bad,
        "slave stopped; checkpoint written"
    );
    // A short run still says what it found (bounded wait).
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while !warning.is_finished() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn run_master(args: &MasterArgs, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let config = args.config();
    // Everything that can refuse, before a broker or topic is touched.
    kafkafs::master::preflight(&config, args.topic())
        .with_context(|| format!("starting the master on {}", config.data.display()))?;
    let embedded;
    let brokers = match &args.broker {
        Some(b) => b.clone(),
        None => {
            embedded = kafkafs::embedded::EmbeddedBroker::start(args.topic(), args.partitions)
                .context("starting the embedded broker")?;
            embedded.bootstrap_servers()
        }
    };
    let kafka = args.kafka(&brokers)?;
    if args.broker.is_some() {
        prepare_topic(args, &kafka, &brokers)?;
    }
    let master = kafkafs::master::Master::start(&config, Arc::new(kafka), stop.clone())
        .with_context(|| format!("starting the master on {}", config.data.display()))?;
    if stop.load(Ordering::SeqCst) {
        master.shutdown()?;
        return Ok(());
    }
    let session = kafkafs::master::mount(&master, &args.mnt, args.dispatchers)
        .with_context(|| format!("mounting {}", args.mnt.display()))?;
    let data = std::fs::canonicalize(&args.data).unwrap_or_else(|_| args.data.clone());
    print_started(args, &data, &brokers);
    serve(args, &master, &session, &data, &stop);
    kafkafs::notify::stopping();
    tracing::info!("unmounting {}", args.mnt.display());
    if let Err(e) = session.unmount() {
        tracing::warn!("unmounting: {e}");
    }
    master.shutdown()?;
    tracing::info!("master stopped; checkpoint written");
    Ok(())
}

/// A real cluster: the topic exists with the asked partitions, and a
/// warning (in the background) when retention outruns the snapshots.
fn prepare_topic(args: &MasterArgs, kafka: &KafkaConfig, brokers: &str) -> anyhow::Result<()> {
    kafka
        .ensure_topic(args.partitions, args.replication_factor)
        .with_context(|| format!("topic `{}` on {brokers}", args.topic()))?;
    let (k, mut store) = (
        kafka.clone(),
        kafkafs::snapshot::kafka_store::KafkaStore::new(kafka),
    );
    std::thread::spawn(move || kafkafs::snapshot::warn_if_uncovered(&k, &mut store));
    Ok(())
}

/// What is mounted where, and the command that follows this master.
fn print_started(args: &MasterArgs, data: &Path, brokers: &str) {
    println!(
        "kafkafs master: {} is mounted at {}, journaling to topic `{}` ({} partition{}) on {}",
        data.display(),
        args.mnt.display(),
        args.topic(),
        args.partitions,
        if args.partitions == 1 { "" } else { "s" },
        brokers
    );
    if args.broker.is_none() {
        println!(
            "kafkafs master: the broker at {brokers} is EMBEDDED in this process (librdkafka's \
             mock cluster): it keeps nothing after this master exits, and only the newest 5 MB (or \
             100 000 records) of each partition meanwhile. Use --broker for a real Kafka."
        );
    }
    println!("Follow this master from another terminal with:");
    // The path of this binary, so the command runs as printed.
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "kafkafs".into());
    // The embedded broker keeps only the newest records of each partition
    // (librdkafka's mock: 5 MB or 100 000 records): the slave it prints
    // keeps snapshots in a directory, so a replica can still be built.
    let snapshots = if args.broker.is_none() {
        format!(
            " --snapshot-every 1m --snapshot-dir {}.snapshots",
            data.display()
        )
    } else {
        String::new()
    };
    println!(
        "  {exe} slave --broker {brokers} --topic {} --threads {}{snapshots} /path/to/replica",
        args.topic(),
        args.partitions.max(1)
    );
    println!("Stop with Ctrl-C (unmounts cleanly).");
}

/// Serves until a stop is requested or the mount goes away; tells systemd
/// how the master stands.
fn serve(
    args: &MasterArgs,
    master: &kafkafs::master::Master,
    session: &kafkafs::master::fuse::Mount,
    data: &Path,
    stop: &AtomicBool,
) {
    kafkafs::notify::ready(&format!(
        "serving {} at {}, topic `{}`",
        data.display(),
        args.mnt.display(),
        args.topic()
    ));
    let watchdog = kafkafs::notify::Watchdog::from_env();
    let mut said = String::new();
    while !stop.load(Ordering::SeqCst) && !session.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        let pipeline = master.pipeline();
        let now = match (pipeline.fenced(), pipeline.recovering()) {
            (Some(why), _) => format!("fenced, read-only: {why}"),
            (None, true) => "journal unavailable: calls fail with EIO until it recovers".into(),
            (None, false) => format!("serving {}", args.mnt.display()),
        };
        if now != said {
            kafkafs::notify::status(&now);
            said = now;
        }
        watchdog.tick();
    }
}
