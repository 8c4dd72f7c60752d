//! Damage in the middle of the log: the writer refuses, readers skip it,
//! `repair` keeps every record that checks; a torn tail is still cut.

use std::path::Path;
use std::sync::Arc;

use uctx::pool::storage::{Dir, Fault, FaultyDir, MemDir};
use uctx::pool::{Pool, Scope, DAMAGED_PREFIX, LOG_FILE};
use uctx::Error;

use super::pool::{ids, opts, ro, segment_files, slice, small_index, text_of, unit};

/// (offset, length) of each record in a log, from its frames.
fn records(log: &[u8]) -> Vec<(usize, usize)> {
    let mut at = u32::from_le_bytes(log[12..16].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    while at + 9 <= log.len() {
        let n = 9 + u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
        out.push((at, n));
        at += n;
    }
    out
}

/// Six slices appended one by one into `dir`; their ids.
fn six(dir: &Path) -> Vec<u64> {
    let pool = Pool::open(dir, opts()).unwrap();
    (0..6)
        .map(|n| pool.append(&[slice("t", n)]).unwrap()[0])
        .collect()
}

/// Flip a byte in the middle of record `i` of the log; returns its offset.
fn flip(dir: &Path, i: usize) -> u64 {
    let path = dir.join(LOG_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let (at, n) = records(&bytes)[i];
    bytes[at + n / 2] ^= 0x5A;
    std::fs::write(&path, &bytes).unwrap();
    at as u64
}

#[test]
fn damage_mid_log_refuses_the_writer_and_repair_keeps_every_other_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ids_written = six(dir);
    // Record 0 is the budget; record 3 is the third slice.
    let offset = flip(dir, 3);
    let damaged = std::fs::read(dir.join(LOG_FILE)).unwrap();

    // The writer refuses, naming the place, what follows and the fix.
    let err = Pool::open(dir, opts()).unwrap_err();
    let msg = err.to_string();
    match &err {
        Error::Damaged {
            offset: at,
            records_after,
            more,
            ..
        } => {
            assert_eq!(*at, offset);
            assert_eq!(*records_after, 3, "{msg}");
            assert_eq!(*more, 0);
        }
        e => panic!("expected Damaged, got {e}"),
    }
    assert!(msg.contains(&format!("at byte {offset}")), "{msg}");
    assert!(msg.contains("3 records that do follow"), "{msg}");
    assert!(msg.contains(LOG_FILE), "{msg}");
    assert!(
        msg.ends_with("(the damaged file is kept beside it)"),
        "{msg}"
    );
    assert!(msg.contains("run `uctx repair --pool"), "{msg}");
    assert_eq!(
        std::fs::read(dir.join(LOG_FILE)).unwrap(),
        damaged,
        "nothing cut"
    );

    // A reader reads every other slice, and says where the damage is.
    let lost = ids_written[2];
    let reader = Pool::open(dir, ro()).unwrap();
    for (n, id) in ids_written.iter().enumerate() {
        let got = reader.get(*id).unwrap();
        if *id == lost {
            assert!(got.is_none());
        } else {
            assert_eq!(got.unwrap().text, text_of(n as u64));
        }
    }
    assert_eq!(reader.stats().slices, 5);
    let damage = reader.damage();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!(damage[0].offset, offset);
    assert_eq!(damage[0].records_after, 3);
    assert_eq!(damage[0].ids, vec![lost]);
    assert_eq!(
        (damage[0].ids_from, damage[0].ids_before),
        (lost, Some(lost + 1))
    );
    assert_eq!(reader.torn_tail(), None);
    let hit = reader.search(&unit(4), 1, Scope::All).unwrap();
    assert_eq!(hit[0].meta.id, ids_written[4]);
    drop(reader);

    // Repair keeps the five, reports the one, and keeps the damaged file.
    let r = Pool::repair(dir).unwrap();
    assert!(r.rewritten);
    assert_eq!(r.lost, damage);
    assert_eq!((r.kept_records, r.kept_slices), (6, 5));
    assert_eq!(r.torn_tail, None);
    let copy = r.damaged_copy.clone().unwrap();
    assert!(copy.starts_with(DAMAGED_PREFIX), "{copy}");
    assert_eq!(std::fs::read(dir.join(&copy)).unwrap(), damaged);
    let repaired = std::fs::read(dir.join(LOG_FILE)).unwrap();
    assert_eq!(repaired.len() as u64, r.kept_bytes);
    let gone = records(&damaged)[3];
    assert_eq!(
        repaired,
        [&damaged[..gone.0], &damaged[gone.0 + gone.1..]].concat(),
        "the other records, byte for byte"
    );

    // The writer opens; search and get find the kept slices.
    let pool = Pool::open(dir, opts()).unwrap();
    assert_eq!(pool.stats().slices, 5);
    assert!(pool.damage().is_empty());
    assert_eq!(pool.damaged_logs(), vec![copy]);
    for (n, id) in ids_written
        .iter()
        .enumerate()
        .filter(|(_, id)| **id != lost)
    {
        assert_eq!(pool.get(*id).unwrap().unwrap().text, text_of(n as u64));
        let hit = pool.search(&unit(n as u64), 1, Scope::All).unwrap();
        assert_eq!(hit[0].meta.id, *id);
    }
    assert_eq!(pool.get(lost).unwrap(), None);
    let next = pool.append(&[slice("t", 6)]).unwrap()[0];
    assert!(next > ids_written[5], "ids are never reused");
    drop(pool);

    // A whole log is left alone.
    let again = Pool::repair(dir).unwrap();
    assert!(!again.rewritten && again.lost.is_empty() && again.damaged_copy.is_none());
    assert_eq!(again.kept_slices, 6);
}

#[test]
fn two_damaged_stretches_and_a_torn_tail_are_all_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ids_written = six(dir);
    let first = flip(dir, 2);
    let second = flip(dir, 5);
    // And the end of a write that never completed.
    let path = dir.join(LOG_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let end = bytes.len() as u64;
    bytes.extend_from_slice(&[0xC3; 40]);
    std::fs::write(&path, &bytes).unwrap();

    let err = Pool::open(dir, opts()).unwrap_err();
    assert!(
        matches!(err, Error::Damaged { offset, records_after: 3, more: 1, .. } if offset == first)
    );
    assert!(
        err.to_string().contains("one more damaged stretch"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "not even the tail is cut"
    );

    let reader = Pool::open(dir, ro()).unwrap();
    let offsets: Vec<u64> = reader.damage().iter().map(|d| d.offset).collect();
    assert_eq!(offsets, vec![first, second]);
    // s3, s4, s6 after the first; s6 after the second.
    assert_eq!(reader.damage()[0].records_after, 3);
    assert_eq!(reader.damage()[1].records_after, 1);
    assert_eq!(reader.stats().slices, 4);
    let tail = reader.torn_tail().unwrap();
    assert_eq!((tail.offset, tail.bytes), (end, 40));
    drop(reader);

    let r = Pool::repair(dir).unwrap();
    assert_eq!(r.lost.len(), 2);
    assert_eq!(r.lost[0].ids, vec![ids_written[1]]);
    assert_eq!(r.lost[1].ids, vec![ids_written[4]]);
    assert_eq!(r.torn_tail, Some(tail));
    let pool = Pool::open(dir, opts()).unwrap();
    assert_eq!(pool.tail_cut(), None);
    assert_eq!(pool.stats().slices, 4);
}

#[test]
fn a_torn_tail_is_still_cut_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ids_written = six(dir);
    let path = dir.join(LOG_FILE);
    let full = std::fs::read(&path).unwrap();
    let last = *records(&full).last().unwrap();
    // The last record cut part-way, then zeros and garbage after it.
    let mut torn = full[..last.0 + last.1 / 2].to_vec();
    torn.extend_from_slice(&[0; 300]);
    torn.extend_from_slice(&[0xAB; 37]);
    std::fs::write(&path, &torn).unwrap();

    let reader = Pool::open(dir, ro()).unwrap();
    let want = (last.0 as u64, (torn.len() - last.0) as u64);
    let tail = reader.torn_tail().unwrap();
    assert_eq!((tail.offset, tail.bytes), want);
    assert!(reader.damage().is_empty());
    assert_eq!(std::fs::read(&path).unwrap(), torn, "a reader cuts nothing");

    let pool = Pool::open(dir, opts()).unwrap();
    let cut = pool.tail_cut().unwrap();
    assert_eq!((cut.offset, cut.bytes), want);
    assert_eq!(
        cut.to_string(),
        format!("a torn tail of {} bytes at byte {}", want.1, want.0)
    );
    assert_eq!(std::fs::read(&path).unwrap(), full[..last.0]);
    assert_eq!(pool.stats().slices, 5);
    assert_eq!(pool.get(ids_written[5]).unwrap(), None);
    // The reader notices the cut, and the writer's next records.
    let id = pool.append(&[slice("t", 7)]).unwrap()[0];
    assert_eq!(reader.torn_tail(), None);
    assert_eq!(reader.get(id).unwrap().unwrap().text, text_of(7));
    drop(pool);
    let pool = Pool::open(dir, opts()).unwrap();
    assert_eq!(pool.tail_cut(), None);
}

#[test]
fn a_lost_delete_brings_its_slices_back_searchable_after_repair() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pool = Pool::open(dir, opts()).unwrap();
    pool.set_index_tuning(small_index());
    let batch: Vec<_> = (0..600)
        .map(|n| slice(if n % 3 == 0 { "a" } else { "b" }, n))
        .collect();
    let written = pool.append(&batch).unwrap();
    pool.settle();
    assert!(pool.index_stats().segments >= 1);
    assert_eq!(pool.delete_namespace("b").unwrap(), 400);
    // The segment, mostly deleted, is rewritten without the deleted rows.
    pool.append(&[slice("a", 1000)]).unwrap();
    pool.settle();
    assert!(!segment_files(dir).is_empty());
    drop(pool);
    // Damage the delete: the last record but one.
    let bytes = std::fs::read(dir.join(LOG_FILE)).unwrap();
    let n = records(&bytes).len();
    flip(dir, n - 2);

    let r = Pool::repair(dir).unwrap();
    assert_eq!(r.lost.len(), 1);
    assert!(r.lost[0].ids.is_empty(), "{:?}", r.lost);
    assert!(r.segments_removed >= 1);
    assert!(segment_files(dir).is_empty());
    assert!(r.lost[0].to_string().contains("no slice id is missing"));

    // Every "b" slice is back, and found by its own vector.
    let pool = Pool::open(dir, opts()).unwrap();
    assert_eq!(pool.stats().slices, 601);
    for (n, id) in written.iter().enumerate().filter(|(n, _)| n % 3 != 0) {
        let hit = pool.search(&unit(n as u64), 1, Scope::All).unwrap();
        assert_eq!(ids(&hit), vec![*id], "slice {n}");
    }
    // And the writer seals the index again.
    pool.set_index_tuning(small_index());
    pool.append(&[slice("a", 1001)]).unwrap();
    pool.settle();
    assert!(pool.index_stats().segments >= 1);
}

#[test]
fn a_repair_that_cannot_write_leaves_the_damaged_log_untouched() {
    let mem = MemDir::new();
    let dir: Arc<dyn Dir> = Arc::new(mem.clone());
    let path = Path::new("mem-pool");
    {
        let pool = Pool::open_with(dir.clone(), path, opts()).unwrap();
        for n in 0..4 {
            pool.append(&[slice("t", n)]).unwrap();
        }
    }
    let mut bytes = mem.bytes(LOG_FILE).unwrap();
    let (at, n) = records(&bytes)[2];
    bytes[at + n / 2] ^= 1;
    mem.set_bytes(LOG_FILE, bytes.clone());
    let mut before = dir.list().unwrap();
    before.sort();

    let full = FaultyDir::new(dir.clone(), 200, Fault::DiskFull);
    let err = Pool::repair_with(Arc::new(full), path).unwrap_err();
    assert!(err.to_string().contains("while repairing"), "{err}");
    assert_eq!(mem.bytes(LOG_FILE).unwrap(), bytes);
    let mut names = dir.list().unwrap();
    names.sort();
    assert_eq!(names, before, "nothing left behind");

    let r = Pool::repair_with(dir.clone(), path).unwrap();
    assert_eq!(r.kept_slices, 3);
    let pool = Pool::open_with(dir, path, opts()).unwrap();
    assert_eq!(pool.stats().slices, 3);
}
