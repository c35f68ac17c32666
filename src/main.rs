//! `m365bk`: back up and restore Microsoft 365 through the permission gate.

mod cli;
mod commands;
mod config;
mod exit;
#[cfg(test)]
mod repo_checks;

use clap::Parser;

use crate::cli::{LogFormat, Opts};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("M365BK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> std::process::ExitCode {
    // object_store's cloud clients bring rustls with aws-lc-rs, graph-rs-sdk brings ring: with
    // both compiled in, rustls has no default provider and would panic at the first TLS
    // connection. Pick aws-lc-rs once, before any client is built (Err: already installed).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Repository objects, the catalog (item paths, mail subjects) and restore scratch files are
    // for the backup operator only, whatever umask the shell had (the systemd unit sets the
    // same with UMask=0077).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // Before any thread starts: one malloc arena per core, not glibc's eight, which each keep
    // the store's freed buffers (see the function's docs for what it saves).
    m365bk_store::limit_malloc_arenas();
    let opts = Opts::parse();
    init_logging(opts.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("m365bk: cannot start the async runtime: {e}");
            return exit::ExitCode::Failure.into();
        }
    };
    let code = runtime.block_on(commands::run(opts));
    code.into()
}
