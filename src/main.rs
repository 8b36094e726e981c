//! The `ultra-gateway` command line: `run` (the default), `check-config`, `token`, `hash-key`,
//! `healthcheck`.

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use ultra_gateway::reload::Source;
use ultra_gateway::{auth, config, embedded, runtime::Runtime, server, signals};

// jemalloc instead of glibc's malloc: per request the gateway makes many small allocations on
// one worker thread and frees some on another, which contended glibc's arena locks (futex
// waits in a profile). `cargo bench --bench load`, glibc / mimalloc / jemalloc builds side by
// side: 18.1k / 21.4k / 22.1k req/s, streamed 4.2k / 4.5k / 4.9k streams/s, RSS 24 / 36 / 22
// MiB (docs/performance.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Starts jemalloc's background thread, which returns freed pages to the system after its decay
/// time (10 s). Without it jemalloc purges only while the process allocates: after 3,000 slow
/// connections were cut, an idle gateway kept 128 MiB resident instead of going back to about
/// 20 MiB (issue 13; Redis enables the same thread by default).
fn return_freed_memory() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("ultra-gateway: cannot start jemalloc's background thread ({e}); freed memory is returned to the system only while the gateway allocates");
    }
}

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
    /// Mint an HS256 JWT the configuration accepts (its hmac_secret, or with test_tokens the
    /// development secret). Prints the token only.
    Token {
        /// Subject (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime: 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Configuration file (as for `run`).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Generate a service API key (printed once) and its `auth.api_keys` entry; with --stdin,
    /// hash a key you already have.
    HashKey {
        /// Read the key from standard input instead of generating one.
        #[arg(long)]
        stdin: bool,
        /// The entry's id.
        #[arg(long, default_value = "my-service")]
        id: String,
        /// Role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// GET the gateway's /health and exit 0 on a 200, 1 otherwise: a container HEALTHCHECK that
    /// needs no shell tool.
    Healthcheck {
        /// What to GET (plain http://).
        #[arg(long, default_value = ultra_gateway::healthcheck::DEFAULT_URL)]
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout_seconds: u64,
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
    /// Take the listening sockets over from the running gateway (send it SIGQUIT once this one
    /// waits for them): a binary upgrade without a refused connection.
    #[arg(short, long)]
    upgrade: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { config }) => check_config(&config),
        Some(Command::Run(args)) => run(args),
        Some(Command::Token {
            sub,
            roles,
            ttl,
            config,
        }) => token(&sub, &roles, &ttl, config.as_deref()),
        Some(Command::HashKey { stdin, id, roles }) => hash_key(stdin, &id, &roles),
        Some(Command::Healthcheck {
            url,
            timeout_seconds,
        }) => healthcheck(&url, timeout_seconds),
        None => run(cli.run),
    }
}

fn healthcheck(url: &str, timeout_seconds: u64) -> ExitCode {
    let timeout = std::time::Duration::from_secs(timeout_seconds.max(1));
    match ultra_gateway::healthcheck::check(url, timeout) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("ultra-gateway healthcheck: {url}: status {status}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("ultra-gateway healthcheck: {e}");
            ExitCode::from(1)
        }
    }
}

/// Where the configuration comes from: the file given, `conf/ultra.yaml`, or the embedded
/// development default.
fn source(path: Option<&Path>) -> Source {
    match path {
        Some(p) => Source::File(p.to_path_buf()),
        None if Path::new(DEFAULT_CONFIG).exists() => Source::File(PathBuf::from(DEFAULT_CONFIG)),
        None => Source::Embedded,
    }
}

fn load(source: &Source) -> Result<config::Config, config::ConfigErrors> {
    match source {
        Source::File(p) => config::load(p, &env),
        Source::Embedded => {
            eprintln!("ultra-gateway: {DEFAULT_CONFIG} not found; using the embedded development configuration");
            embedded::load(&env)
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    return_freed_memory();
    let signals = match signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ultra-gateway: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let source = source(args.config.as_deref());
    let config = match load(&source) {
        Ok(c) => c,
        Err(errors) => {
            report(&errors);
            return ExitCode::from(1);
        }
    };
    let opts = server::RunOptions {
        listen: args.listen.clone(),
        upgrade: args.upgrade,
    };
    match server::run(config, source, opts, &signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("ultra-gateway: {msg}");
            ExitCode::from(1)
        }
    }
}

fn check_config(path: &Path) -> ExitCode {
    let result = config::load(path, &env).and_then(|c| {
        let (rt, warnings) = Runtime::compile(&c, &Default::default())?;
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
                plural(c.providers.len(), "provider")
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

fn token(sub: &str, roles: &[String], ttl: &str, config: Option<&Path>) -> ExitCode {
    let Some(ttl_seconds) = auth::dev_token::parse_ttl(ttl) else {
        eprintln!("ultra-gateway: invalid --ttl `{ttl}`: expected e.g. 90s, 15m, 1h, 7d");
        return ExitCode::from(2);
    };
    let config = match load(&source(config)) {
        Ok(c) => c,
        Err(errors) => {
            report(&errors);
            return ExitCode::from(1);
        }
    };
    let auth = config.auth.clone().unwrap_or_default();
    let jwt = auth.jwt.as_ref();
    let configured = jwt
        .and_then(|j| j.hmac_secret.clone())
        .filter(|s| !s.is_empty());
    let secret = match (configured, auth.test_tokens) {
        (Some(s), _) => s,
        (None, true) => auth::dev_token::DEV_SECRET.to_string(),
        (None, false) => {
            eprintln!("ultra-gateway: this configuration accepts no token the CLI can sign: set auth.jwt.hmac_secret, or auth.test_tokens: true (development)");
            return ExitCode::from(1);
        }
    };
    let first = |v: Option<&config::OneOrMany>| v.and_then(|o| o.0.first().cloned());
    let issuer = first(jwt.and_then(|j| j.issuer.as_ref()))
        .unwrap_or_else(|| auth::dev_token::DEV_ISSUER.to_string());
    let audience = first(jwt.and_then(|j| j.audience.as_ref()));
    let roles_claim = jwt
        .map(|j| j.roles_claim.clone())
        .unwrap_or_else(|| "roles".into());
    let subject_claim = jwt
        .map(|j| j.subject_claim.clone())
        .unwrap_or_else(|| "sub".into());
    let request = auth::dev_token::TokenRequest {
        subject: sub,
        roles,
        ttl_seconds,
        secret: &secret,
        issuer: Some(&issuer),
        audience: audience.as_deref(),
        roles_claim: &roles_claim,
        subject_claim: &subject_claim,
    };
    match auth::dev_token::mint(&request) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ultra-gateway: {e}");
            ExitCode::from(1)
        }
    }
}

fn hash_key(stdin: bool, id: &str, roles: &[String]) -> ExitCode {
    let key = if stdin {
        let mut s = String::new();
        if std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).is_err()
            || s.trim().is_empty()
        {
            eprintln!("ultra-gateway: no key on standard input");
            return ExitCode::from(2);
        }
        s.trim().to_string()
    } else {
        auth::api_key::generate()
    };
    let digest = auth::api_key::to_hex(&auth::api_key::sha256(key.as_bytes()));
    if !key.starts_with(auth::api_key::KEY_PREFIX) {
        eprintln!(
            "warning: this key does not start with `{}`: it will only be accepted in `x-api-key`, not as `Authorization: Bearer` (what the OpenAI SDKs send)",
            auth::api_key::KEY_PREFIX
        );
    }
    let roles = if roles.is_empty() {
        vec!["service".to_string()]
    } else {
        roles.to_vec()
    };
    if !stdin {
        println!("API key (shown once; store it now, the gateway keeps only its digest):");
        println!("{key}");
        println!();
    }
    println!("auth.api_keys entry:");
    println!(
        "  - {{ id: {id}, sha256: \"{digest}\", roles: [{}] }}",
        roles.join(", ")
    );
    ExitCode::SUCCESS
}
