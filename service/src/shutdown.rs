//! Graceful shutdown: the signal long-running calls watch to end before the server stops.
//!
//! After SIGTERM the server takes no new calls and lets running ones finish. Unary calls
//! (ingest included) end by themselves within a commit; an export may take much longer,
//! so exports watch an [`Ending`] that fires halfway through the grace period and then
//! end with UNAVAILABLE (retryable), leaving the other half for that status to reach the
//! client and for the writer to answer what it still holds.

use tokio::sync::watch;

/// Fires the [`Ending`]s made with it.
#[derive(Debug)]
pub struct EndTrigger(watch::Sender<bool>);

impl EndTrigger {
    /// Tells every watcher to end now.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

/// What a long-running call watches to learn it must end; cheap to clone.
#[derive(Debug, Clone)]
pub struct Ending(watch::Receiver<bool>);

impl Ending {
    /// A trigger and the signal it fires.
    pub fn new() -> (EndTrigger, Self) {
        let (sender, receiver) = watch::channel(false);
        (EndTrigger(sender), Self(receiver))
    }

    /// Whether the trigger has fired.
    pub fn has_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the trigger fires; never, if it is dropped unfired.
    pub async fn fired(&mut self) {
        loop {
            if *self.0.borrow_and_update() {
                return;
            }
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_see_the_trigger_fire() {
        let (trigger, ending) = Ending::new();
        let mut watcher = ending.clone();
        assert!(!ending.has_fired());
        let waiting = tokio::spawn(async move { watcher.fired().await });
        trigger.fire();
        waiting.await.expect("the watcher should return once fired");
        assert!(ending.has_fired());
    }

    #[tokio::test]
    async fn a_dropped_trigger_never_fires() {
        let (trigger, mut ending) = Ending::new();
        drop(trigger);
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), ending.fired()).await;
        assert!(waited.is_err(), "an unfired trigger must not end anything");
    }
}
