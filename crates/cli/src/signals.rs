//! The signals that end a command, in one place: which ones count for a
//! command in the foreground (`run`, `exec`, `follow`) and for a long-lived
//! process (`serve`, `worker`), and the Ctrl-C fallback where they cannot be
//! listened for.

use opsconductor::Error;

/// Signals a command listens for, each received any number of times.
pub(crate) struct Interrupts {
    #[cfg(unix)]
    signals: Vec<tokio::signal::unix::Signal>,
}

impl Interrupts {
    /// Ctrl-C, and the signals that end a command when its terminal or its
    /// supervisor goes away (SIGTERM, SIGHUP): each of them cancels the run,
    /// so its processes are killed rather than left behind.
    pub(crate) fn listen() -> Result<Self, Error> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::SignalKind;
            Self::on(&[
                SignalKind::interrupt(),
                SignalKind::terminate(),
                SignalKind::hangup(),
            ])
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// SIGTERM and Ctrl-C: what a service manager or an operator sends a
    /// server or worker to stop it.
    fn stop() -> Result<Self, Error> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::SignalKind;
            Self::on(&[SignalKind::terminate(), SignalKind::interrupt()])
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    #[cfg(unix)]
    fn on(kinds: &[tokio::signal::unix::SignalKind]) -> Result<Self, Error> {
        let signals = kinds
            .iter()
            .map(|&kind| {
                tokio::signal::unix::signal(kind)
                    .map_err(|e| Error::Internal(format!("cannot listen for signals: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { signals })
    }

    /// Waits for the next signal; `false` if no more can come.
    #[cfg(unix)]
    pub(crate) async fn next(&mut self) -> bool {
        let waits = self.signals.iter_mut().map(|s| Box::pin(s.recv()));
        futures::future::select_all(waits).await.0.is_some()
    }

    /// Waits for the next Ctrl-C; `false` if none can come.
    #[cfg(not(unix))]
    pub(crate) async fn next(&mut self) -> bool {
        tokio::signal::ctrl_c().await.is_ok()
    }
}

/// Waits for SIGTERM or SIGINT (once); for Ctrl-C alone if those cannot be
/// listened for. `serve` and `worker` stop on it.
pub(crate) async fn wait_for_signal() {
    match Interrupts::stop() {
        Ok(mut signals) => {
            signals.next().await;
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
