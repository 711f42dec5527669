//! A thread with an actix system of its own, for the writer and the handler actors. The
//! application's system stopping (a web server's signal handling stops its arbiters) does not
//! stop it, so `shutdown` after that still drains the handlers and writes the last
//! checkpoints. `shutdown` stops and joins it; dropped without that, it is told to stop.

/// One such thread.
#[derive(Debug)]
pub(crate) struct ActorThread {
    system: actix_rt::System,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ActorThread {
    /// Starts the thread `name` and its system; actors are started on it through the
    /// returned arbiter handle.
    pub(crate) fn spawn(name: &str) -> std::io::Result<(actix_rt::ArbiterHandle, Self)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(async move {
                    let _ = tx.send((actix_rt::Arbiter::current(), actix_rt::System::current()));
                });
                // Until stopped (shutdown, drop, or an actor that stops its system).
                let _ = system.run();
            })?;
        let (arbiter, system) = rx
            .recv()
            .map_err(|_| std::io::Error::other(format!("the thread {name} did not start")))?;
        Ok((
            arbiter,
            Self {
                system,
                thread: Some(thread),
            },
        ))
    }

    /// Stops its system (its actors are dropped) and waits for the thread.
    pub(crate) fn stop_and_join(mut self) {
        self.system.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ActorThread {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.system.stop();
        }
    }
}
