//! ember: the stage-1 storage agent. Pure logic (config, kernel command line,
//! module manifest, planning) lives in modules that never touch the system;
//! everything that does lives behind `sys`, compiled only with the `agent`
//! feature, and `boot` drives a plan through it.

pub mod cmdline;
pub mod config;
pub mod diff;
pub mod modules;
pub mod plan;
pub mod rollback;
pub mod status;
#[cfg(feature = "agent")]
pub mod unlock;
pub mod volumes;

#[cfg(feature = "agent")]
pub mod boot;
#[cfg(feature = "agent")]
pub mod sys;
