//! End-to-end tests: the real `m365bk` binary against the real tenant simulator binary over
//! HTTP on 127.0.0.1, with a real repository and a real SQLite catalog in a temp directory.
//!
//! The corpus is built by `scripts/build-corpus.py` (`scripts/test.sh` does it first).

mod integration {
    mod attachments;
    mod auth;
    mod auth_certificate_only;
    mod bad_input;
    mod batch;
    mod crash;
    mod e2e;
    mod encryption;
    mod faults;
    mod gate;
    pub mod harness;
    mod maintenance;
    mod resume;
    mod s3;
    mod throttling;
}
