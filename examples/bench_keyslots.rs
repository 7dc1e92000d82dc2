//! Times checking one key against a LUKS2 image file three ways: as
//! libcryptsetup does by itself (every keyslot in order), in ember's order
//! without a hint (token-bound keyslots last), and with a `keyslot` hint.
//! Only the key is checked (`crypt_activate_by_passphrase` with no name): no
//! device-mapper, no root. Driven by `scripts/bench-keyslots`.
//!
//! usage: bench_keyslots IMAGE KEYFILE HINT_SLOT [RUNS]

use std::time::{Duration, Instant};

use ember::sys::luks::Volume;
use ember::volumes::SlotHint;
use libcryptsetup_rs::CryptInit;
use libcryptsetup_rs::consts::flags::CryptActivate;
use libcryptsetup_rs::consts::vals::EncryptionFormat;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn fmt(v: &[Duration]) -> String {
    v.iter()
        .map(|d| d.as_millis().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: bench_keyslots IMAGE KEYFILE HINT_SLOT [RUNS]");
        std::process::exit(2);
    }
    let (image, keyfile) = (&args[1], &args[2]);
    let hint: u32 = args[3].parse().expect("HINT_SLOT is a number");
    let runs: usize = args.get(4).map(|r| r.parse().expect("RUNS")).unwrap_or(5);
    let key = std::fs::read(keyfile).expect("read KEYFILE");

    // libcryptsetup alone: CRYPT_ANY_SLOT.
    let mut any = Vec::new();
    for _ in 0..runs {
        let mut dev = CryptInit::init(std::path::Path::new(image)).expect("init");
        dev.context_handle()
            .load::<()>(Some(EncryptionFormat::Luks2), None)
            .expect("load");
        let t = Instant::now();
        let slot = dev
            .activate_handle()
            .activate_by_passphrase(None, None, &key, CryptActivate::empty())
            .expect("the key fits");
        any.push(t.elapsed());
        assert_eq!(slot, hint, "the key is in keyslot {hint}");
    }

    let ember = |h: SlotHint| {
        let mut times = Vec::new();
        let mut tried = 0;
        for _ in 0..runs {
            let mut v = Volume::load(image).expect("load");
            let o = v
                .open(None, &key, &CryptActivate::empty(), h, None)
                .expect("the key fits");
            assert_eq!(o.keyslot, hint);
            times.push(o.took);
            tried = o.tried;
        }
        (times, tried)
    };
    let (plain, plain_tried) = ember(SlotHint::None);
    let (hinted, hinted_tried) = ember(SlotHint::Keyslot(hint));

    let slots = Volume::load(image).expect("load").slots().to_vec();
    let bound = slots.iter().filter(|s| !s.tokens.is_empty()).count();
    println!(
        "{} active keyslots ({bound} bound to tokens); the key is in keyslot {hint}; {runs} runs each",
        slots.len()
    );
    println!("{:<34} {:>8}  {:>6}  runs (ms)", "", "median", "tried");
    let row = |name: &str, v: &[Duration], tried: usize| {
        println!(
            "{name:<34} {:>6}ms  {tried:>6}  {}",
            median(v.to_vec()).as_millis(),
            fmt(v)
        )
    };
    row(
        "libcryptsetup, any keyslot",
        &any,
        slots.len().min(hint as usize + 1),
    );
    row("ember, no hint", &plain, plain_tried);
    row(&format!("ember, keyslot = {hint}"), &hinted, hinted_tried);
    let base = median(any).as_secs_f64();
    println!(
        "ratio any/hint: {:.1}x; any/ember-no-hint: {:.1}x",
        base / median(hinted).as_secs_f64(),
        base / median(plain).as_secs_f64()
    );
}
