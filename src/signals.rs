//! SIGHUP and SIGUSR1: Pingora 0.9 handles neither, and their default action terminates the
//! process, so a stray `kill -HUP` (what nginx operators send to reload) would stop the gateway.
//! The handlers are installed first thing in `run`, before anything else can receive one.

use tokio::signal::unix::{signal, SignalKind};

/// Installs the handlers; they live on their own thread for the life of the process.
pub fn install() -> std::io::Result<()> {
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
                        Some(()) = hup.recv() => tracing::warn!(
                            "SIGHUP received: configuration reload is not available yet; ignored (restart to apply a new configuration)"
                        ),
                        Some(()) = usr1.recv() => tracing::info!("SIGUSR1 received: no log file to reopen"),
                        else => return,
                    }
                }
            })
        })?;
    Ok(())
}
