//! Encrypted format 2 repositories end to end: backups, restores, check and prune
//! byte-exact; a wrong passphrase refused naming the repository; no plaintext of a volume
//! or of its names in any file; a flipped byte in any file detected and named, never
//! wrong data; key slots added and removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::keyslot::Cost;
use super::tests::{backup, local, opts, read_all, restored, volume};
use super::*;
use crate::chain::ErrorChain;
use crate::repo::backend::Kind;
use crate::repo::error::Error;
use crate::repo::passphrase::Passphrase;
use crate::repo::retention::Policy;

/// Cheap argon2id costs, so a test opens in milliseconds.
const FAST: Cost = Cost {
    m_cost_kib: 256,
    t_cost: 1,
    p_cost: 1,
};

fn key(pass: &str) -> NewKey {
    NewKey {
        passphrase: Arc::new(Passphrase::new(pass.as_bytes())),
        cost: FAST,
        label: "test".into(),
    }
}

fn encrypted(dir: &Path, pass: &str) -> Repository {
    Repository::init(
        local(dir),
        &InitOptions {
            encryption: Some(key(pass)),
            ..opts()
        },
    )
    .unwrap()
}

fn reopen(repo: &Repository, pass: &str) -> crate::repo::Result<Repository> {
    Repository::open_with_passphrase(repo.backend().clone(), &Passphrase::new(pass.as_bytes()))
}

/// Every file under `dir`, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn encrypted_backups_restore_check_and_prune_byte_exact_and_a_wrong_passphrase_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = encrypted(dir.path(), "correct horse");
    assert!(repo.is_encrypted());
    assert_eq!(repo.config().encryption, config::Encryption::Aes256Gcm);
    let b1 = backup(&repo, 1, None);
    let b2 = backup(&repo, 2, Some(&b1));
    let b3 = backup(&repo, 3, Some(&b2));
    let fresh = reopen(&repo, "correct horse").unwrap();
    for (b, g) in [(&b1, 1), (&b2, 2), (&b3, 3)] {
        assert_eq!(read_all(&fresh, b), volume(g));
        let dest = dir.path().join(format!("out{g}"));
        assert_eq!(restored(&fresh, b, &dest), volume(g));
    }
    let report = fresh.check(true, &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.chunks_read > 0);
    // The incremental stored only what changed: dedup works through keyed ids.
    assert!(
        b1.stats.new_chunks > 300 && b2.stats.new_chunks < 45,
        "{:?} {:?}",
        b1.stats,
        b2.stats
    );

    let policy = Policy {
        keep_last: 1,
        ..Policy::default()
    };
    let r = gc::prune(&fresh, &policy, false).unwrap();
    assert!(r.gc.unwrap().packs_removed > 0);
    assert_eq!(fresh.backup_ids().unwrap(), vec![b3.id.clone()]);
    assert_eq!(read_all(&fresh, &b3), volume(3));
    let report = fresh.check(true, &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.unreferenced_packs.is_empty());

    for wrong in ["correct horsf", "", "correct horse "] {
        let e = reopen(&repo, wrong).expect_err("a wrong passphrase opened it");
        assert!(matches!(e, Error::WrongPassphrase { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&repo.location()) && msg.contains("keys/"),
            "{msg}"
        );
    }
}

#[test]
fn nothing_of_a_volume_or_its_names_is_in_clear_in_any_file() {
    const TEXT: &[u8] = b"KNOWN PLAINTEXT OF THE VOLUME 7f3a";
    let names = [
        "secret-volume-name.img",
        "secret-snapshot-name",
        "secret-host-name",
        "secret-pin-name",
    ];
    let data: Vec<u8> = TEXT.iter().cycle().take(256 << 10).copied().collect();
    let run = |repo: &Repository| {
        let mut new = NewBackup::new(names[1], serde_json::json!({ "host": names[2] }));
        new.host = Some(names[2].into());
        let w = repo.begin_backup(new).unwrap();
        let slot = w
            .add_volume(names[0], data.len() as u64, 4096, None)
            .unwrap();
        for (i, c) in data.chunks(4096).enumerate() {
            w.put(slot, i as u64, c).unwrap();
        }
        let id = w.commit().unwrap();
        let packs: Vec<_> = repo
            .backend()
            .list(Kind::Pack)
            .unwrap()
            .into_iter()
            .filter_map(|(k, _)| match k {
                crate::repo::backend::Key::Pack(p) => Some(p),
                _ => None,
            })
            .collect();
        repo.pin(names[3], &packs).unwrap();
        assert_eq!(repo.pinned(names[3]).unwrap().len(), packs.len());
        let b = repo.backup(id.as_str()).unwrap();
        let r = repo.volume_reader(id.as_str(), names[0]).unwrap();
        let mut back = vec![0; data.len()];
        let mut at = 0;
        while at < back.len() {
            at += r.read_at(at as u64, &mut back[at..]).unwrap();
        }
        assert_eq!(back, data);
        b
    };
    // Each needle, and the plain blake3 id of a chunk (which would reveal the contents).
    let mut needles: Vec<Vec<u8>> = names.iter().map(|n| n.as_bytes().to_vec()).collect();
    needles.push(TEXT[..16].to_vec());
    needles.push(crate::repo::ids::ChunkId::of(&data[..4096]).0.to_vec());
    needles.push(
        crate::repo::ids::ChunkId::of(&data[..4096])
            .to_string()
            .into_bytes(),
    );
    let found = |root: &Path| -> Vec<String> {
        let mut hits = Vec::new();
        for f in files(root) {
            // The file's name is searched as well as its bytes.
            let mut bytes = f
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_encoded_bytes()
                .to_vec();
            bytes.extend(std::fs::read(&f).unwrap());
            for n in &needles {
                if bytes.windows(n.len()).any(|w| w == &n[..]) {
                    hits.push(format!(
                        "{} holds {:?}",
                        f.display(),
                        String::from_utf8_lossy(n)
                    ));
                }
            }
        }
        hits
    };
    // The check can fail: a plain repository shows them.
    let dir = tempfile::tempdir().unwrap();
    let plain = Repository::init(local(&dir.path().join("plain")), &opts()).unwrap();
    run(&plain);
    let hits = found(&dir.path().join("plain"));
    for n in [names[0], names[3], "KNOWN PLAINTEXT"] {
        assert!(
            hits.iter().any(|h| h.contains(n)),
            "{n} not in the plain repo: {hits:?}"
        );
    }
    let secret = encrypted(&dir.path().join("enc"), "pw");
    run(&secret);
    let hits = found(&dir.path().join("enc"));
    assert!(hits.is_empty(), "{hits:#?}");
}

/// What names `file` in a message: its name under the repository, or for a pack its id.
fn named(root: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(root)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    match rel.strip_prefix("packs/") {
        Some(p) => p.rsplit('/').next().unwrap().to_string(),
        None => rel,
    }
}

#[test]
fn a_flipped_byte_in_any_file_of_an_encrypted_repository_is_found_and_named_never_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let repo = Repository::init(
        local(&root),
        &InitOptions {
            encryption: Some(key("pw")),
            pack_target: 16 << 10,
            ..opts()
        },
    )
    .unwrap();
    let b1 = backup(&repo, 1, None);
    let b2 = backup(&repo, 2, Some(&b1));
    repo.pin("snap", &[b2.volumes[0].root_ref().unwrap().pack])
        .unwrap();
    let want = [(b1, volume(1)), (b2, volume(2))];
    let all = files(&root);
    for kind in ["config", "keys/", "packs/", "index/", "backups/", "pins/"] {
        assert!(
            all.iter()
                .any(|f| f.strip_prefix(&root).unwrap().starts_with(kind)),
            "no {kind} file"
        );
    }
    let mut flips = 0;
    // The objects (the lock file is the lock's, not the repository's contents).
    let objects = ["config", "keys", "packs", "index", "backups", "pins"];
    let mut per_kind = std::collections::HashMap::new();
    for file in &all {
        let rel = file.strip_prefix(&root).unwrap();
        let Some(kind) = objects.iter().find(|o| rel.starts_with(o)) else {
            continue;
        };
        // Two files of each kind keep the test quick; every kind is covered.
        let n = per_kind.entry(*kind).or_insert(0);
        *n += 1;
        if *n > 2 {
            continue;
        }
        let good = std::fs::read(file).unwrap();
        let name = named(&root, file);
        // The first and last 24 bytes (headers, footers, tags) and 24 places between.
        let mut at: Vec<usize> = (0..good.len().min(24)).collect();
        at.extend(good.len().saturating_sub(24)..good.len());
        at.extend((0..24).map(|i| i * good.len() / 24));
        at.sort();
        at.dedup();
        for i in at {
            let mut bad = good.clone();
            bad[i] ^= 0x04;
            std::fs::write(file, &bad).unwrap();
            flips += 1;
            let problems = match reopen(&repo, "pw") {
                Err(e) => vec![e.chain().to_string()],
                Ok(r) => {
                    // Never wrong data: a read either fails or is exact.
                    for (b, data) in &want {
                        if let Ok(v) = r.volume_reader(b.id.as_str(), "vm1") {
                            let mut out = vec![0u8; data.len()];
                            let mut got = 0;
                            while got < out.len() {
                                match v.read_at(got as u64, &mut out[got..]) {
                                    Ok(n) => got += n,
                                    Err(_) => break,
                                }
                            }
                            if got == out.len() {
                                assert!(out == *data, "{name} byte {i}: wrong data read");
                            }
                        }
                    }
                    let report = r.check(true, &mut |_| {});
                    match report {
                        Err(e) => vec![e.chain().to_string()],
                        Ok(rep) => rep.problems.iter().map(|p| p.to_string()).collect(),
                    }
                }
            };
            // A `format` changed to another version is refused as that version.
            let refused_format = name == "config" && problems[0].contains("of format version");
            assert!(
                refused_format || problems.iter().any(|p| p.contains(&name)),
                "{name} byte {i} flipped: not named in {problems:?}"
            );
        }
        std::fs::write(file, &good).unwrap();
    }
    assert!(flips > 300, "{flips}");
    let report = reopen(&repo, "pw")
        .unwrap()
        .check(true, &mut |_| {})
        .unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn key_slots_are_added_listed_and_removed_but_never_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let repo = encrypted(dir.path(), "first");
    let b1 = backup(&repo, 1, None);
    let slots = repo.key_slots().unwrap();
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].label, "test");
    let first = slots[0].id.clone();
    let e = repo.remove_key(&first, None).unwrap_err().to_string();
    assert!(e.contains("last"), "{e}");
    let second = repo.add_key(&key("second")).unwrap();
    assert_eq!(repo.key_slots().unwrap().len(), 2);
    // Either passphrase opens it, to the same data.
    for pass in ["first", "second"] {
        assert_eq!(read_all(&reopen(&repo, pass).unwrap(), &b1), volume(1));
    }
    repo.remove_key(&first, None).unwrap();
    assert!(matches!(
        reopen(&repo, "first"),
        Err(Error::WrongPassphrase { .. })
    ));
    let by_second = reopen(&repo, "second").unwrap();
    assert_eq!(read_all(&by_second, &b1), volume(1));
    assert!(by_second.remove_key(&second, None).is_err());
    assert!(by_second.remove_key(&first, None).is_err(), "removed twice");
    assert!(by_second.remove_key("../config", None).is_err());
    // A plain repository has no keys, and a plain `config` beside key slots is refused.
    let plain = Repository::init(local(&dir.path().join("p")), &opts()).unwrap();
    assert!(plain.key_slots().is_err());
    let cfg = dir.path().join("config");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let mut c: config::Config = serde_json::from_str(&text).unwrap();
    c.encryption = config::Encryption::None;
    c.auth = None;
    std::fs::write(&cfg, serde_json::to_vec(&c).unwrap()).unwrap();
    let e = Repository::open(repo.backend().clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("config") && e.contains("key slots"), "{e}");
}
