//! Exit codes: restic's where administrators' scripts already know them, sysexits otherwise;
//! 2 for usage errors, as clap exits for the ones it finds (restic's 2 is a Go runtime error).

/// How `m365bk` ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything asked for was done.
    Success = 0,
    /// A failure not covered below.
    Failure = 1,
    /// The command line asks for something that cannot be done as asked (bad arguments found by
    /// the parser exit 2 too), e.g. `forget` without a retention rule.
    Usage = 2,
    /// The job finished, but some items could not be read or written (listed in its report).
    Incomplete = 3,
    /// No repository at the configured location.
    RepositoryMissing = 10,
    /// Another process holds a conflicting repository lock (e.g. a prune runs, or a backup
    /// runs while prune was asked for); the message names it.
    Locked = 11,
    /// The repository is encrypted and the passphrase given opens none of its key slots, or
    /// none was given.
    WrongPassphrase = 12,
    /// A service or endpoint could not be reached; trying again later may work.
    TempFail = 75,
    /// The gate refused the job: a permission is missing, or the credentials were rejected.
    NoPermission = 77,
    /// The configuration is invalid.
    Config = 78,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}
