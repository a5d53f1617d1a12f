//! Logging set-up: `tracing` everywhere, JSON lines by default so log collectors can index
//! them, a human format for a terminal. The filter comes from `RUST_LOG` (default `info`).

use serde::{Deserialize, Serialize};
use tracing_subscriber::{EnvFilter, fmt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, with span fields: for machines.
    #[default]
    Json,
    /// Coloured, multi-field lines: for people at a terminal.
    Pretty,
}

/// Installs the global subscriber. Calling it again (tests start many servers in one
/// process) keeps the first one.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr, so a program's own output on stdout stays clean; colours only
    // when a person is watching.
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(std::io::stderr)
        .with_ansi(on_terminal);
    let _already_set = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
