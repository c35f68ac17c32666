//! `m365bk-tenant-sim --corpus DIR --tenant-config FILE [--listen 127.0.0.1:0]`: serves the
//! simulated tenant until interrupted; prints `listening on http://127.0.0.1:PORT` on stdout
//! once bound, logs to stderr.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use m365bk_tenant_sim::{serve, SimOptions, TenantConfig};

#[derive(Debug, Parser)]
#[command(
    name = "m365bk-tenant-sim",
    version,
    about = "A local Microsoft 365 tenant for m365bk's tests"
)]
struct Opts {
    /// Corpus directory: DIR/users/<upn>/{user.json,mail/,drive/,calendar/}.
    #[arg(long, value_name = "DIR")]
    corpus: PathBuf,
    /// Tenant config (TOML): tenant_id, token_lifetime_secs, [[apps]].
    #[arg(long, value_name = "FILE")]
    tenant_config: PathBuf,
    /// Lifetime of issued access tokens in seconds, overriding the config's
    /// `token_lifetime_secs` (a few seconds make clients cross token expiry mid-job).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    token_lifetime_secs: Option<u64>,
    /// Loopback address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// sysexits: 78 = configuration error, 1 = anything else.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let opts = Opts::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(opts))
}

async fn run(opts: Opts) -> ExitCode {
    let tenant = match TenantConfig::load(&opts.tenant_config) {
        Ok(mut t) => {
            if let Some(secs) = opts.token_lifetime_secs {
                t.token_lifetime_secs = secs;
            }
            t
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let sim = match serve(SimOptions {
        corpus_dir: opts.corpus,
        tenant,
        listen: opts.listen,
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "listening on {}", sim.base_url)
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(out);
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("error: cannot wait for Ctrl-C: {e}");
    }
    sim.stop().await;
    ExitCode::SUCCESS
}
