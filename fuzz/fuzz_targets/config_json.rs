//! The config parser on JSON text: `check_str`, then, for configs that
//! validate, the JSON round trip and the plan (see `ember_fuzz::config`).
#![no_main]

use ember::config::Syntax;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ember_fuzz::config(data, Syntax::Json));
