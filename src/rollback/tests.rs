use super::*;
use crate::config::GuardPolicy;

fn rb(strategy: RollbackStrategy) -> Rollback {
    Rollback {
        subvolume: "root".into(),
        strategy,
        blank_snapshot: match strategy {
            RollbackStrategy::Empty => None,
            _ => Some("root-blank".into()),
        },
        filesystem: Some(DeviceSpec::Uuid("F10A-UUID".into())),
        archive_dir: "old_roots".into(),
        keep_days: None,
        keep_count: None,
        on_guard_failure: GuardPolicy::Continue,
    }
}

fn device() -> DeviceSpec {
    DeviceSpec::Path("/dev/mapper/cryptroot".into())
}

fn healthy() -> Observed {
    Observed {
        fs_uuid: Some("f10a-uuid".into()),
        fs_label: Some("nixos".into()),
        target: Entry::Subvolume { read_only: false },
        new_tmp: Entry::Missing,
        old_tmp: Entry::Missing,
        blank: Entry::Subvolume { read_only: true },
        target_changed: Some(1_795_000_000),
        archived: None,
    }
}

fn show(actions: &[Action]) -> Vec<String> {
    actions.iter().map(|a| a.to_string()).collect()
}

#[test]
fn blank_strategy_in_crash_safe_order() {
    let actions = plan(&rb(RollbackStrategy::Blank), &device(), &healthy()).expect("plans");
    assert_eq!(
        show(&actions),
        [
            "snapshot root-blank as writable root.ember-new",
            "rename root to root.ember-old",
            "rename root.ember-new to root",
            "delete subvolume root.ember-old and everything nested in it (the old root)",
        ]
    );
}

#[test]
fn empty_strategy_creates_a_subvolume() {
    let actions = plan(&rb(RollbackStrategy::Empty), &device(), &healthy()).expect("plans");
    assert_eq!(show(&actions)[0], "create empty subvolume root.ember-new");
    assert_eq!(actions.len(), 4);
}

#[test]
fn nested_target_names_stay_in_their_directory() {
    let mut config = rb(RollbackStrategy::Blank);
    config.subvolume = "/nested/@root/".into();
    let actions = plan(&config, &device(), &healthy()).expect("plans");
    assert_eq!(
        show(&actions)[1],
        "rename nested/@root to nested/@root.ember-old"
    );
}

#[test]
fn archive_names_by_last_change_and_prunes() {
    let mut config = rb(RollbackStrategy::Archive);
    config.keep_count = Some(2);
    let mut observed = healthy();
    let t = 1_795_000_000;
    observed.target_changed = Some(t);
    observed.archived = Some(vec![
        archive_name(t - 3 * 86_400),
        archive_name(t - 86_400),
        "hand-made-backup".into(),
    ]);
    let actions = plan(&config, &device(), &observed).expect("plans");
    let name = archive_name(t);
    assert_eq!(name, "2026-11-18_11-06-40");
    assert_eq!(
        show(&actions),
        vec![
            "snapshot root-blank as writable root.ember-new".to_string(),
            format!("rename root to old_roots/{name}"),
            "rename root.ember-new to root".into(),
            format!(
                "delete subvolume old_roots/{} and everything nested in it (pruned archived root)",
                archive_name(t - 3 * 86_400)
            ),
        ]
    );
}

#[test]
fn archive_creates_its_directory_and_avoids_collisions() {
    let config = rb(RollbackStrategy::Archive);
    let actions = plan(&config, &device(), &healthy()).expect("plans");
    assert_eq!(show(&actions)[1], "create directory old_roots");
    let mut observed = healthy();
    let name = archive_name(1_795_000_000);
    observed.archived = Some(vec![name.clone()]);
    let actions = plan(&config, &device(), &observed).expect("plans");
    assert!(show(&actions).contains(&format!("rename root to old_roots/{name}.1")));
}

#[test]
fn prune_by_age_against_the_newest_archive() {
    let day = 86_400;
    let archived = vec![
        ("a".to_string(), 100 * day),
        ("b".into(), 95 * day),
        ("c".into(), 80 * day),
    ];
    assert_eq!(prune(&archived, Some(10), None), vec!["c".to_string()]);
    assert_eq!(
        prune(&archived, None, Some(1)),
        vec!["b".to_string(), "c".into()]
    );
    assert_eq!(prune(&archived, None, None), Vec::<String>::new());
}

#[test]
fn archive_names_round_trip_and_reject_foreign_names() {
    for t in [0, 951_782_400, 1_795_000_000, 4_102_444_799] {
        assert_eq!(parse_archive_name(&archive_name(t)), Some(t));
    }
    assert_eq!(archive_name(951_782_400), "2000-02-29_00-00-00");
    assert_eq!(
        parse_archive_name("2026-11-18_11-06-40.3"),
        Some(1_795_000_000)
    );
    for bad in [
        "2026-11-18",
        "2026-13-01_00-00-00",
        "2026-02-30_00-00-00",
        "x.1",
        "2026-11-18_11-06-40.x",
    ] {
        assert_eq!(parse_archive_name(bad), None, "{bad}");
    }
}

#[test]
fn guards_refuse_without_actions() {
    let config = rb(RollbackStrategy::Blank);
    let mut o = healthy();
    o.fs_uuid = Some("0000".into());
    assert!(matches!(
        plan(&config, &device(), &o),
        Err(Refusal::WrongFilesystem { .. })
    ));
    let mut o = healthy();
    o.blank = Entry::Missing;
    assert_eq!(
        plan(&config, &device(), &o),
        Err(Refusal::BlankMissing("root-blank".into()))
    );
    let mut o = healthy();
    o.blank = Entry::Subvolume { read_only: false };
    assert_eq!(
        plan(&config, &device(), &o),
        Err(Refusal::BlankWritable("root-blank".into()))
    );
    let mut o = healthy();
    o.blank = Entry::NotSubvolume;
    assert_eq!(
        plan(&config, &device(), &o),
        Err(Refusal::BlankNotSubvolume("root-blank".into()))
    );
    let mut o = healthy();
    o.target = Entry::NotSubvolume;
    assert_eq!(
        plan(&config, &device(), &o),
        Err(Refusal::TargetNotSubvolume("root".into()))
    );
    let mut o = healthy();
    o.target = Entry::Missing;
    assert_eq!(
        plan(&config, &device(), &o),
        Err(Refusal::TargetMissing("root".into()))
    );
}

#[test]
fn label_identity_from_the_device() {
    let mut config = rb(RollbackStrategy::Blank);
    config.filesystem = None;
    let by_label = DeviceSpec::Label("nixos".into());
    assert!(plan(&config, &by_label, &healthy()).is_ok());
    assert!(matches!(
        plan(&config, &DeviceSpec::Label("other".into()), &healthy()),
        Err(Refusal::WrongFilesystem { .. })
    ));
    // No identity at all: refuse rather than guess.
    assert!(matches!(
        plan(&config, &device(), &healthy()),
        Err(Refusal::WrongFilesystem { .. })
    ));
}

/// Every state a cut between two actions can leave must plan to a
/// finished rollback whose last state has the target in place and no
/// temporary names left.
#[test]
fn every_cut_point_recovers() {
    let config = rb(RollbackStrategy::Blank);
    let full = plan(&config, &device(), &healthy()).expect("plans");
    for cut in 0..=full.len() {
        let mut state = healthy();
        for action in &full[..cut] {
            apply(&mut state, action);
        }
        let next = plan(&config, &device(), &state)
            .unwrap_or_else(|e| panic!("cut after {cut}: refused: {e}"));
        for action in &next {
            apply(&mut state, action);
        }
        assert!(
            matches!(state.target, Entry::Subvolume { read_only: false }),
            "cut {cut}: {state:?}"
        );
        assert_eq!(state.new_tmp, Entry::Missing, "cut {cut}");
        assert_eq!(state.old_tmp, Entry::Missing, "cut {cut}");
    }
}

/// A crash keeps what was committed: every step up to the last one that
/// needs a commit (a deletion after it may be lost). Whatever that leaves,
/// the next boot's plan finishes the rollback.
#[test]
fn uncommitted_deletions_lost_in_a_crash_are_repaired() {
    for strategy in [RollbackStrategy::Blank, RollbackStrategy::Empty] {
        let config = rb(strategy);
        let full = plan(&config, &device(), &healthy()).expect("plans");
        assert!(
            full.last().is_some_and(|a| !a.needs_commit()),
            "{strategy:?}: the old root's deletion is the last step: {full:?}"
        );
        for cut in 0..=full.len() {
            let durable = full[..cut]
                .iter()
                .rposition(Action::needs_commit)
                .map_or(0, |i| i + 1);
            let mut state = healthy();
            for action in &full[..durable] {
                apply(&mut state, action);
            }
            let next = plan(&config, &device(), &state)
                .unwrap_or_else(|e| panic!("{strategy:?} cut after {cut}: refused: {e}"));
            for action in &next {
                apply(&mut state, action);
            }
            assert!(
                matches!(state.target, Entry::Subvolume { read_only: false }),
                "{strategy:?} cut {cut}: {state:?}"
            );
            assert_eq!(state.new_tmp, Entry::Missing, "cut {cut}");
            assert_eq!(state.old_tmp, Entry::Missing, "cut {cut}");
        }
    }
}

/// A model of the filesystem for the three names the blank strategy uses.
fn apply(state: &mut Observed, action: &Action) {
    let slot = |s: &mut Observed, name: &str| -> *mut Entry {
        if name.ends_with(NEW_SUFFIX) {
            &mut s.new_tmp
        } else if name.ends_with(OLD_SUFFIX) {
            &mut s.old_tmp
        } else {
            &mut s.target
        }
    };
    // SAFETY (test model): the pointers are to distinct fields of `state`, used one at a time.
    unsafe {
        match action {
            Action::Snapshot { dest, .. } | Action::CreateEmpty { dest } => {
                *slot(state, dest) = Entry::Subvolume { read_only: false }
            }
            Action::Delete { path, .. } => *slot(state, path) = Entry::Missing,
            Action::Rename { from, to } => {
                let v = *slot(state, from);
                *slot(state, from) = Entry::Missing;
                *slot(state, to) = v;
            }
            Action::CreateDir { .. } => {}
        }
    }
}
