//! Integration tests: the simulator over real HTTP on 127.0.0.1, driven with reqwest.

#[path = "integration/common.rs"]
mod common;

#[path = "integration/token.rs"]
mod token;

#[path = "integration/authz.rs"]
mod authz;

#[path = "integration/mail.rs"]
mod mail;

#[path = "integration/pim.rs"]
mod pim;

#[path = "integration/drive.rs"]
mod drive;

#[path = "integration/sim.rs"]
mod sim;

#[path = "integration/faults.rs"]
mod faults;

#[path = "integration/attachments.rs"]
mod attachments;

#[path = "integration/credentials.rs"]
mod credentials;

#[path = "integration/limits.rs"]
mod limits;
