//! OS signals: the first SIGINT/SIGTERM (Ctrl+C/Ctrl+Break on Windows)
//! starts the ordered shutdown; a second one exits at once.

use tokio::sync::mpsc;

use crate::control::{Control, ShutdownReason};

/// Waits for SIGINT/SIGTERM (Ctrl+C/Ctrl+Break on Windows) and starts the
/// ordered shutdown; a second signal exits the process at once with 130.
pub fn spawn_signal_handler(control: mpsc::UnboundedSender<Control>) {
    tokio::spawn(async move {
        let first = next_signal().await;
        tracing::info!(signal = %first, "signal received: shutting down (send it again to exit at once)");
        let _ = control.send(Control::Shutdown(ShutdownReason::Signal(first.to_string())));
        let second = next_signal().await;
        eprintln!("second {second}: exiting at once");
        std::process::exit(130);
    });
}

#[cfg(unix)]
async fn next_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

#[cfg(windows)]
async fn next_signal() -> &'static str {
    let mut ctrl_break = tokio::signal::windows::ctrl_break().expect("Ctrl+Break handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl+C",
        _ = ctrl_break.recv() => "Ctrl+Break",
    }
}
