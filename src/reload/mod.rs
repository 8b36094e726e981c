//! Live configuration: what triggers a reload (SIGHUP, a watched file, `POST /api/admin/reload`)
//! and the pipeline every trigger runs: load and validate everything (errors with file and field
//! path, as `check-config` prints them) → compile off the request threads, adopting the carried
//! state (`state::State`) → warm up (new backends resolved and checked, a new JWKS URL
//! fetched) → one atomic swap. A reload that fails at any step changes nothing. Reloads run one
//! at a time.

pub mod changes;
pub mod service;
pub mod watch;

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::state::State;
use arc_swap::ArcSwap;
use changes::Changes;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    /// The development default compiled into the binary (nothing to watch; a reload reads the
    /// same text again).
    Embedded,
}

/// What asked for a reload (for the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    FileChange,
    Admin,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file change",
            Trigger::Admin => "admin request",
        }
    }
}

/// A reload that was applied.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub generation: u64,
    pub changes: Changes,
    /// Settings changed in the file that only a restart applies (the running values stay).
    pub needs_restart: Vec<&'static str>,
    pub warnings: Vec<String>,
}

/// One problem of a refused configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub file: String,
    pub path: String,
    pub message: String,
}

impl From<&ConfigError> for Problem {
    fn from(e: &ConfigError) -> Problem {
        Problem {
            file: e.file.display().to_string(),
            path: e.field.clone(),
            message: e.message.clone(),
        }
    }
}

/// The configuration of a running gateway, and how to load it again.
pub struct Reloader {
    source: Source,
    /// `--listen` given on the command line: `server.listen` is not what the process uses.
    listen_fixed: bool,
    runtime: Arc<ArcSwap<Runtime>>,
    state: Arc<State>,
    metrics: Arc<Metrics>,
    /// The configuration the process started with: restart-only settings compare to it.
    started: Config,
    /// The configuration serving now (reloads report their changes against it). Held by the
    /// reload lock's guard, so that reloads run one at a time.
    current: tokio::sync::Mutex<Config>,
}

impl Reloader {
    pub fn new(
        source: Source,
        listen_fixed: bool,
        config: Config,
        runtime: Arc<ArcSwap<Runtime>>,
        state: Arc<State>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        metrics.config_generation.set(1);
        metrics
            .config_last_success
            .set(crate::time::unix_now() as i64);
        Reloader {
            source,
            listen_fixed,
            runtime,
            state,
            metrics,
            started: config.clone(),
            current: tokio::sync::Mutex::new(config),
        }
    }

    /// The files the serving configuration came from (for the watch).
    pub async fn sources(&self) -> Vec<PathBuf> {
        match self.source {
            Source::File(_) => self.current.lock().await.sources.clone(),
            Source::Embedded => Vec::new(),
        }
    }

    /// The serving configuration's `reload` settings.
    pub async fn watch_settings(&self) -> crate::config::ReloadSection {
        self.current.lock().await.reload.clone()
    }

    /// The generation serving now.
    pub fn generation(&self) -> u64 {
        self.runtime.load().generation
    }

    /// Loads, compiles, warms up and swaps in the configuration on disk; or changes nothing and
    /// says why.
    pub async fn reload(&self, trigger: Trigger) -> Result<Applied, Vec<Problem>> {
        let mut current = self.current.lock().await;
        let result = self.try_reload(&current).await;
        match result {
            Ok((config, applied)) => {
                *current = config;
                drop(current);
                self.metrics
                    .config_reloads
                    .with_label_values(&["applied"])
                    .inc();
                self.metrics
                    .config_generation
                    .set(applied.generation as i64);
                self.metrics
                    .config_last_success
                    .set(crate::time::unix_now() as i64);
                tracing::info!(
                    trigger = trigger.as_str(),
                    generation = applied.generation,
                    changes = %serde_json::to_string(&applied.changes).unwrap_or_default(),
                    needs_restart = ?applied.needs_restart,
                    "configuration reloaded"
                );
                for w in &applied.warnings {
                    tracing::warn!("{w}");
                }
                for f in &applied.needs_restart {
                    tracing::warn!(field = f, "changed in the configuration, but only a restart applies it; the running value stays");
                }
                // Entries only the old runtime held go when its last request ends; the ones
                // already gone are forgotten now.
                self.state.prune();
                Ok(applied)
            }
            Err(problems) => {
                drop(current);
                self.metrics
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::error!(
                    trigger = trigger.as_str(),
                    problems = problems.len(),
                    "configuration reload refused; the running configuration stays"
                );
                for p in &problems {
                    tracing::error!("{}: {}: {}", p.file, p.path, p.message);
                }
                Err(problems)
            }
        }
    }

    async fn try_reload(&self, current: &Config) -> Result<(Config, Applied), Vec<Problem>> {
        let problems = |e: ConfigErrors| e.iter().map(Problem::from).collect::<Vec<_>>();
        // File reads (configuration, env files, key files, CA files) are blocking I/O: off the
        // runtime's workers.
        let config = self.load_blocking().await.map_err(problems)?;
        if config.mode != self.started.mode {
            return Err(vec![Problem {
                file: config.file.display().to_string(),
                path: "mode".into(),
                message: format!(
                    "cannot change on reload (running in {} mode): restart the gateway to change it",
                    self.started.mode.as_str()
                ),
            }]);
        }
        let (mut runtime, warnings) = self.compile_blocking(&config).await.map_err(problems)?;
        // Restart-only settings keep their running values.
        runtime.metrics_on_main = self.runtime.load().metrics_on_main;
        runtime.warm_up().await;
        let before = self.runtime.load_full();
        runtime.generation = before.generation + 1;
        let warnings = warnings
            .into_iter()
            .chain(newly_unservable(&before, &runtime))
            .collect();
        let applied = Applied {
            generation: runtime.generation,
            changes: Changes::between(current, &config),
            needs_restart: changes::needs_restart(&self.started, &config, self.listen_fixed),
            warnings,
        };
        self.runtime.store(Arc::new(runtime));
        Ok((config, applied))
    }

    async fn load_blocking(&self) -> Result<Config, ConfigErrors> {
        let source = self.source.clone();
        tokio::task::spawn_blocking(move || {
            // `${VAR}` reads the process environment, as at start (env files are read again).
            let lookup = |k: &str| std::env::var(k).ok();
            match &source {
                Source::File(p) => crate::config::load(p, &lookup),
                Source::Embedded => crate::embedded::load(&lookup),
            }
        })
        .await
        .unwrap_or_else(|e| Err(join_failed(e)))
    }

    async fn compile_blocking(
        &self,
        config: &Config,
    ) -> Result<(Runtime, Vec<String>), ConfigErrors> {
        let config = config.clone();
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || Runtime::compile(&config, &state))
            .await
            .unwrap_or_else(|e| Err(join_failed(e)))
    }
}

fn join_failed(e: tokio::task::JoinError) -> ConfigErrors {
    let mut errors = ConfigErrors::default();
    errors.push(ConfigError::new(
        std::path::Path::new(""),
        "",
        format!("the reload task failed: {e}"),
    ));
    errors
}

/// Warnings for models that could be served before and cannot be after warming up (their
/// providers changed to endpoints that are down or do not resolve).
fn newly_unservable(before: &Runtime, after: &Runtime) -> Vec<String> {
    let was: std::collections::HashSet<&str> = before
        .registry
        .models()
        .iter()
        .zip(before.servable())
        .filter(|(_, ok)| *ok)
        .map(|(m, _)| &*m.id)
        .collect();
    after
        .registry
        .models()
        .iter()
        .zip(after.servable())
        .filter(|(m, ok)| !ok && was.contains(&*m.id))
        .map(|(m, _)| format!("model `{}` was servable and is not with the new configuration: its providers are not reachable", m.id))
        .collect()
}
