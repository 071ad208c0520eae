use super::module::tests::{SECRET, manifest, public, wasm};
use super::*;

const MAX: u64 = 1 << 20;

/// A signed module for `protocol`, distinct per `n`.
fn module(protocol: &str, n: u32) -> Module {
    let file = sign(&wasm(n), &manifest(protocol, &format!("1.0.{n}")), &SECRET).unwrap();
    Module::parse(&file, protocol).unwrap()
}

fn stage(protocol: &'static str, n: u32) -> Op {
    Op::Stage(protocol, Box::new(module(protocol, n)))
}

fn trust() -> Trust {
    Trust::Signed {
        key: public(&SECRET),
    }
}

/// One store operation, for replaying sequences.
#[derive(Debug, Clone)]
enum Op {
    Stage(&'static str, Box<Module>),
    Activate(&'static str),
    Discard(&'static str),
    Rollback(&'static str),
    ClearActive(&'static str),
}

fn apply(store: &mut Store<MemFlash>, op: &Op, now: u64) -> Result<(), StoreError> {
    match op {
        Op::Stage(p, m) => store.stage(p, m, &trust(), now),
        Op::Activate(p) => store.activate(p, now),
        Op::Discard(p) => store.discard_trial(p),
        Op::Rollback(p) => store.rollback(p, "trial failed", now),
        Op::ClearActive(p) => store.clear_active(p, "back to factory", now),
    }
}

/// Applies `ops` until one fails; returns how many succeeded.
fn run(store: &mut Store<MemFlash>, ops: &[Op]) -> usize {
    for (i, op) in ops.iter().enumerate() {
        if apply(store, op, 1000 + i as u64).is_err() {
            return i;
        }
    }
    ops.len()
}

fn store_with(ops: &[Op]) -> Store<MemFlash> {
    let mut store = Store::open(MemFlash::default(), MAX).unwrap();
    assert_eq!(run(&mut store, ops), ops.len());
    store
}

/// Everything observable: slots and the bytes of every slot's module.
type Snapshot = Vec<(String, ProtocolSlots, [Option<Vec<u8>>; 3])>;

fn snapshot(store: &Store<MemFlash>) -> Snapshot {
    store
        .protocols()
        .map(|(p, slots)| {
            let files = [
                store.active_module(p).unwrap(),
                store.previous_module(p).unwrap(),
                store.trial_module(p).unwrap(),
            ];
            (p.to_string(), slots.clone(), files)
        })
        .collect()
}

fn blobs(flash: &MemFlash) -> BTreeSet<String> {
    flash
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| is_blob_name(n))
        .collect()
}

/// Runs `ops` after `base` with the power cut after every possible number of
/// bytes (every `stride`-th one, and every one within 2 bytes of an operation's
/// end); after each cut the reopened store must equal a store that ran
/// exactly the operations that reported success, and hold no stray blobs.
/// Returns, per cut point checked, how many operations succeeded.
fn assert_survives_a_cut_anywhere(base: &[Op], ops: &[Op], stride: usize) -> Vec<usize> {
    let base_flash = store_with(base).into_flash();
    let models: Vec<Snapshot> = (0..=ops.len())
        .map(|k| {
            let mut model = Store::open(base_flash.clone(), MAX).unwrap();
            assert_eq!(run(&mut model, &ops[..k]), k);
            snapshot(&model)
        })
        .collect();
    // Bytes written by the end of each operation, without a cut.
    let mut ends = Vec::new();
    let mut store = Store::open(base_flash.clone(), MAX).unwrap();
    let start = base_flash.bytes_written();
    for (i, op) in ops.iter().enumerate() {
        apply(&mut store, op, 1000 + i as u64).unwrap();
        ends.push(store.flash.bytes_written() - start);
    }
    let total = *ends.last().unwrap();
    let near_an_end = |n: usize| ends.iter().any(|&e| n.abs_diff(e) <= 2);
    let mut done_at = Vec::new();
    for n in (0..=total + 1).filter(|&n| n % stride == 0 || near_an_end(n)) {
        let mut flash = base_flash.clone();
        flash.cut_after(Some(n));
        let mut store = Store::open(flash, MAX).unwrap();
        let done = run(&mut store, ops);
        let mut flash = store.into_flash();
        flash.restore_power();
        let reopened = Store::open(flash, MAX)
            .unwrap_or_else(|e| panic!("cut after {n} bytes: store does not open: {e}"));
        assert_eq!(
            snapshot(&reopened),
            models[done],
            "cut after {n} of {total} bytes, {done} operations reported success"
        );
        // Write ordering, not the repair at open, must be what keeps it whole.
        if let Some(name) = reopened.state_name {
            let on_flash = Record::decode(&reopened.flash.read(name).unwrap().unwrap()).unwrap();
            assert_eq!(on_flash, reopened.state, "open had to repair a cut at {n}");
        }
        let mut referenced = reopened.state.blob_names();
        referenced.extend(reopened.older_blobs.iter().cloned());
        let flash = reopened.into_flash();
        assert_eq!(
            blobs(&flash),
            referenced,
            "stray or missing blobs after a cut at {n}"
        );
        done_at.push(done);
    }
    assert_eq!(
        done_at.last(),
        Some(&ops.len()),
        "without a cut everything succeeds"
    );
    for k in 0..=ops.len() {
        assert!(done_at.contains(&k), "no cut stops after {k} operations");
    }
    done_at
}

#[test]
fn power_cut_anywhere_in_stage_and_activate_leaves_the_old_or_the_new_module() {
    let (a, b) = (module("http", 1), module("http", 2));
    let base = [Op::Stage("http", Box::new(a.clone())), Op::Activate("http")];
    let ops = [Op::Stage("http", Box::new(b.clone())), Op::Activate("http")];
    let done_at = assert_survives_a_cut_anywhere(&base, &ops, 1);
    // Spelled out for this case: active is A, or B only once activate succeeded.
    let base_flash = store_with(&base).into_flash();
    for (n, done) in done_at.into_iter().enumerate() {
        let mut flash = base_flash.clone();
        flash.cut_after(Some(n));
        let mut store = Store::open(flash, MAX).unwrap();
        assert_eq!(run(&mut store, &ops), done);
        let mut flash = store.into_flash();
        flash.restore_power();
        let store = Store::open(flash, MAX).unwrap();
        let active = store.active_module("http").unwrap().unwrap();
        let expected = if done == 2 { &b } else { &a };
        assert_eq!(active, expected.to_bytes(), "cut after {n} bytes");
        let trial = store.slots("http").unwrap().trial.as_ref();
        assert_eq!(trial.is_some(), done == 1, "cut after {n} bytes");
    }
}

#[test]
fn power_cut_anywhere_in_rollback_leaves_the_failed_or_the_previous_module() {
    let (a, b) = (module("http", 1), module("http", 2));
    let base = [
        Op::Stage("http", Box::new(a)),
        Op::Activate("http"),
        Op::Stage("http", Box::new(b)),
        Op::Activate("http"),
    ];
    assert_survives_a_cut_anywhere(&base, &[Op::Rollback("http")], 1);
}

#[test]
fn power_cut_anywhere_in_a_long_update_history_matches_the_model() {
    let base = [
        stage("http", 1),
        Op::Activate("http"),
        stage("echo", 9),
        Op::Activate("echo"),
    ];
    let ops = [
        stage("http", 2),
        Op::Discard("http"),
        stage("http", 3),
        Op::Activate("http"),
        stage("http", 4),
        Op::Activate("http"),
        Op::Rollback("http"),
        stage("echo", 9), // the same file again
        Op::Activate("echo"),
        Op::ClearActive("http"),
        stage("http", 5),
        Op::Activate("http"),
    ];
    // Every byte would be 15 000 cuts, half a minute in a debug build.
    assert_survives_a_cut_anywhere(&base, &ops, 4);
}

#[test]
fn reopening_after_a_clean_sequence_keeps_everything() {
    let (a, b, c) = (module("http", 1), module("http", 2), module("http", 3));
    let store = store_with(&[
        Op::Stage("http", Box::new(a.clone())),
        Op::Activate("http"),
        Op::Stage("http", Box::new(b.clone())),
        Op::Activate("http"),
        Op::Stage("http", Box::new(c.clone())),
    ]);
    let before = snapshot(&store);
    let reopened = Store::open(store.into_flash(), MAX).unwrap();
    assert_eq!(snapshot(&reopened), before);
    let slots = reopened.slots("http").unwrap();
    assert_eq!(slots.active.as_ref().unwrap().version, "1.0.2");
    assert_eq!(slots.active.as_ref().unwrap().activated_at, 1003);
    assert_eq!(slots.active.as_ref().unwrap().sha256, b.sha256);
    assert_eq!(
        slots.active.as_ref().unwrap().signed_by,
        Some(public(&SECRET))
    );
    assert_eq!(slots.previous.as_ref().unwrap().version, "1.0.1");
    assert_eq!(slots.trial.as_ref().unwrap().version, "1.0.3");
    assert_eq!(
        reopened.active_module("http").unwrap().unwrap(),
        b.to_bytes()
    );
    assert_eq!(
        reopened.previous_module("http").unwrap().unwrap(),
        a.to_bytes()
    );
    assert_eq!(
        reopened.trial_module("http").unwrap().unwrap(),
        c.to_bytes()
    );
    let files: u64 = [&a, &b, &c].iter().map(|m| m.to_bytes().len() as u64).sum();
    assert_eq!(reopened.used_bytes(), files);
}

#[test]
fn fresh_flash_is_an_empty_store() {
    let store = Store::open(MemFlash::default(), MAX).unwrap();
    assert_eq!(store.protocols().count(), 0);
    assert_eq!(store.active_module("http"), Ok(None));
    assert_eq!(store.into_flash().list().unwrap(), Vec::<String>::new());
}

#[test]
fn full_store_refuses_the_upload_and_keeps_the_active_module() {
    let (a, b) = (module("http", 1), module("http", 2));
    let size = |m: &Module| m.to_bytes().len() as u64;
    let limit = size(&a) + size(&b) - 1;
    let mut store = Store::open(MemFlash::default(), limit).unwrap();
    store.stage("http", &a, &trust(), 1).unwrap();
    store.activate("http", 1).unwrap();
    let err = store.stage("http", &b, &trust(), 2).unwrap_err();
    assert_eq!(
        err,
        StoreError::Full {
            needed: size(&a) + size(&b),
            limit
        }
    );
    assert!(err.to_string().contains("may hold"), "{err}");
    // The same file again counts once.
    store.stage("http", &a, &trust(), 3).unwrap();
    store.discard_trial("http").unwrap();
    let flash = store.into_flash();
    assert_eq!(blobs(&flash).len(), 1, "nothing of B was written");
    let store = Store::open(flash, limit).unwrap();
    assert_eq!(store.active_module("http").unwrap().unwrap(), a.to_bytes());
}

#[test]
fn activate_rollback_and_discard_without_their_slot_fail_and_change_nothing() {
    let mut store = store_with(&[stage("http", 1), Op::Activate("http")]);
    let before = snapshot(&store);
    let written = store.flash.bytes_written();
    assert_eq!(store.activate("http", 5), Err(StoreError::NoTrial));
    assert_eq!(store.discard_trial("http"), Err(StoreError::NoTrial));
    assert_eq!(store.activate("echo", 5), Err(StoreError::NoTrial));
    assert_eq!(
        store.rollback("http", "x", 5),
        Err(StoreError::NothingToRollBack)
    );
    assert_eq!(
        store.rollback("echo", "x", 5),
        Err(StoreError::NothingToRollBack)
    );
    assert_eq!(snapshot(&store), before);
    assert_eq!(store.flash.bytes_written(), written);
}

#[test]
fn rollback_makes_previous_active_and_remembers_why() {
    let (a, b) = (module("http", 1), module("http", 2));
    let mut store = store_with(&[
        Op::Stage("http", Box::new(a.clone())),
        Op::Activate("http"),
        Op::Stage("http", Box::new(b)),
        Op::Activate("http"),
    ]);
    store
        .rollback("http", "3 faults in 10 callbacks", 77)
        .unwrap();
    let slots = store.slots("http").unwrap();
    assert_eq!(slots.active.as_ref().unwrap().sha256, a.sha256);
    assert_eq!(slots.active.as_ref().unwrap().activated_at, 77);
    assert_eq!(slots.previous, None);
    assert_eq!(
        slots.last_rollback.as_deref(),
        Some("3 faults in 10 callbacks")
    );
    assert_eq!(slots.last_rollback_at, Some(77));
    assert_eq!(store.active_module("http").unwrap().unwrap(), a.to_bytes());
}

#[test]
fn clear_active_goes_back_to_the_factory_module() {
    let mut store = store_with(&[stage("http", 1), Op::Activate("http")]);
    store.clear_active("http", "trial failed", 9).unwrap();
    let slots = store.slots("http").unwrap();
    assert_eq!(slots.active, None);
    assert_eq!(slots.last_rollback.as_deref(), Some("trial failed"));
    assert_eq!(store.active_module("http"), Ok(None));
}

#[test]
fn stage_refuses_a_module_for_another_protocol() {
    let mut store = Store::open(MemFlash::default(), MAX).unwrap();
    let err = store
        .stage("echo", &module("http", 1), &trust(), 1)
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::WrongProtocol {
            module: "http".into(),
            slot: "echo".into()
        }
    );
}

#[test]
fn unsigned_module_is_stored_as_unsigned() {
    let m = Module::parse(&wasm(4), "http").unwrap();
    let mut store = Store::open(MemFlash::default(), MAX).unwrap();
    store.stage("http", &m, &Trust::Unsigned, 1).unwrap();
    store.activate("http", 1).unwrap();
    let active = store.slots("http").unwrap().active.clone().unwrap();
    assert_eq!(active.signed_by, None);
    assert_eq!(active.version, "unsigned");
    assert_eq!(store.active_module("http").unwrap().unwrap(), wasm(4));
}

#[test]
fn restaging_a_stored_file_does_not_rewrite_it() {
    let a = module("http", 1);
    let mut store = store_with(&[Op::Stage("http", Box::new(a.clone())), Op::Activate("http")]);
    let written = store.flash.bytes_written();
    store.stage("http", &a, &trust(), 5).unwrap();
    let record = store
        .flash
        .read(store.state_name.unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(store.flash.bytes_written() - written, record.len());
}

#[test]
fn records_alternate_and_unreferenced_blobs_are_freed() {
    let mut store = store_with(&[stage("http", 1), Op::Activate("http")]);
    assert_eq!(store.state_name, Some("state-b"));
    for n in 2..6 {
        store
            .stage("http", &module("http", n), &trust(), 0)
            .unwrap();
        store.activate("http", 0).unwrap();
    }
    let names = store.flash.list().unwrap();
    assert!(names.contains(&"state-a".to_string()) && names.contains(&"state-b".to_string()));
    // Active 5, previous 4; the older record (staging 5) also references 3.
    let flash = store.into_flash();
    let expected: BTreeSet<String> = [3, 4, 5]
        .iter()
        .map(|&n| blob_name(&sha256(&module("http", n).to_bytes())))
        .collect();
    assert_eq!(blobs(&flash), expected);
}

#[test]
fn damaged_newest_record_falls_back_to_the_older_one() {
    let (a, b) = (module("http", 1), module("http", 2));
    let store = store_with(&[
        Op::Stage("http", Box::new(a.clone())),
        Op::Activate("http"),
        Op::Stage("http", Box::new(b)),
    ]);
    let newest = store.state_name.unwrap();
    let mut flash = store.into_flash();
    let mut record = flash.read(newest).unwrap().unwrap();
    record[10] ^= 1;
    flash.write(newest, &record).unwrap();
    let store = Store::open(flash, MAX).unwrap();
    let slots = store.slots("http").unwrap();
    assert_eq!(slots.trial, None);
    assert_eq!(store.active_module("http").unwrap().unwrap(), a.to_bytes());
}

#[test]
fn damaged_active_file_falls_back_to_previous_at_open() {
    let (a, b) = (module("http", 1), module("http", 2));
    let store = store_with(&[
        Op::Stage("http", Box::new(a.clone())),
        Op::Activate("http"),
        Op::Stage("http", Box::new(b.clone())),
        Op::Activate("http"),
    ]);
    let mut flash = store.into_flash();
    let name = blob_name(&sha256(&b.to_bytes()));
    flash.write(&name, b"garbage").unwrap();
    let store = Store::open(flash, MAX).unwrap();
    let slots = store.slots("http").unwrap();
    assert_eq!(slots.active.as_ref().unwrap().sha256, a.sha256);
    assert_eq!(slots.previous, None);
    assert!(slots.last_rollback.as_ref().unwrap().contains(&name));
    assert_eq!(store.active_module("http").unwrap().unwrap(), a.to_bytes());
}

#[test]
fn active_module_reports_a_file_damaged_after_open() {
    let a = module("http", 1);
    let mut store = store_with(&[Op::Stage("http", Box::new(a.clone())), Op::Activate("http")]);
    let name = blob_name(&sha256(&a.to_bytes()));
    store.flash.write(&name, b"x").unwrap();
    let err = store.active_module("http").unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains(&name)),
        "{err}"
    );
}

#[test]
fn every_prefix_of_a_record_is_rejected() {
    let store = store_with(&[stage("http", 1)]);
    let bytes = store.state.encode();
    assert_eq!(Record::decode(&bytes).unwrap(), store.state);
    for n in 0..bytes.len() {
        assert!(Record::decode(&bytes[..n]).is_err(), "prefix of {n} bytes");
    }
}

#[test]
fn store_works_through_a_boxed_flash() {
    let flash: Box<dyn Flash> = Box::new(MemFlash::default());
    let mut store = Store::open(flash, MAX).unwrap();
    store
        .stage("http", &module("http", 1), &trust(), 1)
        .unwrap();
    assert!(format!("{store:?}").contains("http"));
}

#[test]
fn store_errors_stay_small() {
    assert!(std::mem::size_of::<StoreError>() <= 56);
}
