//! ember: the stage-1 storage agent. Pure logic (config, kernel command line,
//! planning) lives in modules that never touch the system; everything that
//! does lives behind `sys`, compiled only with the `agent` feature.

pub mod cmdline;
pub mod config;
pub mod plan;
