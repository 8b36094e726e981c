//! SIGHUP and SIGUSR1: Pingora 0.9 handles neither, and their default action terminates the
//! process. The handlers are installed first thing in `run`, before anything else can receive
//! one: SIGHUP asks for a configuration reload (as nginx does), SIGUSR1 reopens the log files.

use crate::line_sink::LineSink;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

/// Log files to reopen on SIGUSR1 (after log rotation moved them away), and the reload requests
/// of SIGHUP.
#[derive(Clone, Default)]
pub struct Signals {
    sinks: Arc<parking_lot::Mutex<Vec<LineSink>>>,
    hangups: Arc<Notify>,
}

impl Signals {
    pub fn reopen_on_usr1(&self, sink: LineSink) {
        self.sinks.lock().push(sink);
    }

    /// Notified on each SIGHUP (a SIGHUP while nobody waits is kept for the next wait).
    pub fn hangups(&self) -> Arc<Notify> {
        self.hangups.clone()
    }
}

/// Installs the handlers; they live on their own thread for the life of the process.
pub fn install() -> std::io::Result<Signals> {
    let signals = Signals::default();
    let sinks = signals.sinks.clone();
    let hangups = signals.hangups.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut hup, mut usr1) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::hangup())?,
            signal(SignalKind::user_defined1())?,
        ))
    })?;
    std::thread::Builder::new()
        .name("ultra-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                loop {
                    tokio::select! {
                        Some(()) = hup.recv() => {
                            tracing::info!("SIGHUP received: reloading the configuration");
                            hangups.notify_one();
                        }
                        Some(()) = usr1.recv() => {
                            let sinks = sinks.lock();
                            tracing::info!(files = sinks.len(), "SIGUSR1 received: reopening log files");
                            for s in sinks.iter() {
                                s.request_reopen();
                            }
                        }
                        else => return,
                    }
                }
            })
        })?;
    Ok(signals)
}
