//! Command output on stdout. A reader that goes away (`tradehost backtest …
//! | head -1`) ends the command quietly with exit code 0 instead of a panic.

use std::io::Write;

/// Writes formatted text to stdout; on a closed pipe exits quietly, on any
/// other write error exits with code 1 and a message.
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {error}");
        std::process::exit(1);
    }
}

/// `println!` for command output: see [`write`].
macro_rules! outln {
    () => { $crate::cli::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}
