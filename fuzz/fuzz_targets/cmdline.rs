//! The kernel command line: `split` and `KernelCmdline::parse`, and the plan
//! of the reference config under the parsed options (see `ember_fuzz::cmdline`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ember_fuzz::cmdline(data));
