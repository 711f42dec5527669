//! Panics of user code the bus catches (handlers, factories, projections): the panic hook
//! stays quiet for them, and they are reported through `log` and the counters instead.

thread_local! {
    /// Set while user code runs whose panics the bus catches and reports itself.
    static CAUGHT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Once per process: the panic hook (whatever the application installed) stays quiet for
/// panics the bus catches in handlers, factories and projections; it reports those through
/// `log`, counted. Every other panic is printed as before.
pub(crate) fn quiet_caught_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CAUGHT.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `f` (which catches the panics of the user code it calls) with the panic hook quiet.
pub(crate) fn caught<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            CAUGHT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CAUGHT.with(|c| c.replace(true)));
    f()
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
