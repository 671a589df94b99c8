//! Graceful shutdown: one cancellation token for the whole process and a tracker that
//! owns every spawned task, so shutdown waits for each of them to finish.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The token every task watches and the tracker that owns the tasks.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    /// A shutdown not yet triggered, with no tasks.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// The token, cancelled by [`Shutdown::trigger`]: a task selects on `cancelled()` to
    /// stop.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Ask every task to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Resolves once shutdown was triggered.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// A shutdown of its own, triggered with this one (or alone), whose tasks are drained
    /// apart: for a part that runs on a runtime of its own and must finish its tasks there.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
            tasks: TaskTracker::new(),
        }
    }

    /// Spawn a task owned by this shutdown.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Wait (at most `grace`) for every task to finish; returns whether all did.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

/// Installs SIGTERM and SIGINT handlers now (so a signal that arrives early is not lost)
/// and returns a future that resolves with the name of the first one received.
pub fn signal_listener() -> std::io::Result<impl Future<Output = &'static str> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
