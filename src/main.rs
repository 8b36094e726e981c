//! The `ultra-gateway` command line: `run` (the default) and `check-config`.

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use ultra_gateway::{config, embedded, runtime::Runtime, server, signals};

const DEFAULT_CONFIG: &str = "conf/ultra.yaml";

#[derive(Parser)]
#[command(
    name = "ultra-gateway",
    version,
    about = "An OpenAI-compatible LLM API gateway on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run(RunArgs),
    /// Validate a configuration like `nginx -t`: exit 0 with a summary, or 1 with every problem.
    CheckConfig {
        /// Configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Configuration file. Without it, conf/ultra.yaml if it exists, else the embedded
    /// development default.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Listen address (IP:PORT), overriding server.listen. Port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { config }) => check_config(&config),
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
    }
}

fn load(path: Option<&Path>) -> Result<config::Config, config::ConfigErrors> {
    match path {
        Some(p) => config::load(p, &env),
        None if Path::new(DEFAULT_CONFIG).exists() => config::load(Path::new(DEFAULT_CONFIG), &env),
        None => {
            eprintln!("ultra-gateway: {DEFAULT_CONFIG} not found; using the embedded development configuration");
            embedded::load(&env)
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    if let Err(e) = signals::install() {
        eprintln!("ultra-gateway: cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    let config = match load(args.config.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            report(&errors);
            return ExitCode::from(1);
        }
    };
    match server::run(config, args.listen.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("ultra-gateway: {msg}");
            ExitCode::from(1)
        }
    }
}

fn check_config(path: &Path) -> ExitCode {
    let result = config::load(path, &env).and_then(|c| {
        let (rt, warnings) = Runtime::compile(&c)?;
        Ok((c, rt, warnings))
    });
    match result {
        Ok((c, rt, warnings)) => {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            let plural =
                |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
            println!(
                "{}: OK ({} mode, {}, {})",
                path.display(),
                c.mode.as_str(),
                plural(rt.registry.models().len(), "model"),
                plural(rt.providers.len(), "provider")
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            report(&errors);
            ExitCode::from(1)
        }
    }
}

fn report(errors: &config::ConfigErrors) {
    for e in errors.iter() {
        eprintln!("{e}");
    }
    let n = errors.len();
    eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
}
