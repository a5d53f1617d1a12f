//! One shutdown signal fanned out to every server of a process.
//!
//! `topsmile dev` runs five servers in one process; Ctrl-C or SIGTERM must drain all of
//! them. A [`Trigger`] fires once; every [`Shutdown`] cloned from it resolves then.

use tokio::sync::watch;

/// Fires the shutdown. Dropping it fires it too, so a launcher that returns early never
/// leaves servers running.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Resolves when the [`Trigger`] fires.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        self.fire();
    }
}

impl Shutdown {
    pub async fn wait(mut self) {
        // An error means the trigger is gone, which also means "stop".
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what Kubernetes sends before killing a pod).
pub async fn os_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, draining"),
        () = terminate => tracing::info!("SIGTERM received, draining"),
    }
}
