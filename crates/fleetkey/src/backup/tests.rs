use super::*;

fn labels(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("custodian{i}")).collect()
}

fn master(byte: u8) -> MasterKey {
    MasterKey::from_bytes([byte; 32])
}

fn reparse(share: &Share) -> Share {
    let text = share.to_json();
    Share::parse(std::str::from_utf8(&text).unwrap(), share.origin()).unwrap()
}

/// Every subset of `items` of size `k`, as index lists.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    (0u32..1 << n)
        .filter(|m| m.count_ones() as usize == k)
        .map(|m| (0..n).filter(|i| m & (1 << i) != 0).collect())
        .collect()
}

fn pick(shares: &[Share], which: &[usize]) -> Vec<Share> {
    which.iter().map(|&i| reparse(&shares[i])).collect()
}

#[test]
fn round_trip_for_several_splits_with_any_m_of_n() {
    for (m, n) in [(1u8, 1u8), (1, 3), (2, 2), (2, 3), (3, 5), (5, 5), (4, 7)] {
        let secret = random_master().unwrap();
        let shares = split(&secret, "tractors", 7, m, &labels(n.into()), 1_000).unwrap();
        assert_eq!(shares.len(), usize::from(n));
        for (i, s) in shares.iter().enumerate() {
            assert_eq!(usize::from(s.info().index), i + 1);
            assert_eq!(s.info().custodian, format!("custodian{}", i + 1));
            assert!(s.check_kcv());
            assert_eq!(s.info().master_kcv, master_kcv(&secret));
        }
        for k in usize::from(m)..=usize::from(n) {
            for which in subsets(n.into(), k) {
                let got = combine(&pick(&shares, &which)).unwrap();
                assert!(got == secret, "{m}-of-{n} with {which:?}");
            }
        }
        if m > 1 {
            for which in subsets(n.into(), usize::from(m) - 1) {
                let err = combine(&pick(&shares, &which)).unwrap_err();
                assert!(
                    matches!(err, BackupError::NotEnough { have, need } if have == usize::from(m) - 1 && need == m),
                    "{err}"
                );
                let report = verify(&pick(&shares, &which)).unwrap();
                assert!(!report.master_checked);
            }
        }
    }
}

#[test]
fn one_of_n_shares_are_the_master_itself() {
    // Documented: a 1-of-N split is N copies of the master.
    let secret = master(0x42);
    let shares = split(&secret, "f", 1, 1, &labels(2), 0).unwrap();
    for s in &shares {
        assert_eq!(&s.value[..], secret.expose_secret());
    }
}

#[test]
fn the_file_format_round_trips_and_reads_back() {
    let secret = master(7);
    let shares = split(&secret, "tractors", 3, 2, &labels(3), 1_700_000_000_000).unwrap();
    let text = shares[1].to_json();
    let text = std::str::from_utf8(&text).unwrap();
    let doc: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(doc["format"], "fleetkey-master-share");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["fleet"], "tractors");
    assert_eq!(doc["generation"], 3);
    assert_eq!(doc["threshold"], 2);
    assert_eq!(doc["count"], 3);
    assert_eq!(doc["index"], 2);
    assert_eq!(doc["custodian"], "custodian2");
    assert_eq!(doc["share"].as_str().unwrap().len(), 64);
    assert_eq!(doc["share_kcv"], shares[1].info().share_kcv.to_string());
    assert_eq!(doc["master_kcv"], master_kcv(&secret).to_string());
    assert_eq!(doc["created_at"], 1_700_000_000_000_i64);
    let back = Share::parse(text, "x").unwrap();
    assert_eq!(back.info(), shares[1].info());
    assert_eq!(&back.value[..], &shares[1].value[..]);
    assert!(back.check_kcv());
    // Debug shows no share bytes.
    let debug = format!("{back:?}");
    assert!(!debug.contains(doc["share"].as_str().unwrap()));
}

#[test]
fn master_kcv_is_the_documented_hmac() {
    // HMAC-SHA256(key = 32 x 0x00, "FK1K master KCV v1")[0..3], also checked by
    // tests/crosscheck/check_backup_kcv.py with Python's hmac.
    let kcv = master_kcv(&MasterKey::from_bytes([0; 32]));
    let mut mac = <Hmac<Sha256>>::new_from_slice(&[0; 32]).unwrap();
    mac.update(b"FK1K master KCV v1");
    let tag = mac.finalize().into_bytes();
    assert_eq!(kcv.0, tag[..3]);
    assert_eq!(Kcv::parse(&kcv.to_string()), Some(kcv));
}

fn edit(share: &Share, f: impl FnOnce(&mut serde_json::Value)) -> Result<Share, BackupError> {
    let text = share.to_json();
    let mut doc: serde_json::Value = serde_json::from_slice(&text).unwrap();
    f(&mut doc);
    Share::parse(&doc.to_string(), "edited.json")
}

#[test]
fn a_share_changed_in_one_byte_or_one_field_is_refused_by_its_kcv() {
    let shares = split(&master(9), "tractors", 1, 2, &labels(3), 0).unwrap();
    let hex_value = hex::encode(&shares[0].value[..]);
    for pos in [0, 17, 63] {
        let mut tampered = hex_value.clone().into_bytes();
        tampered[pos] = if tampered[pos] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        let share = edit(&shares[0], |d| d["share"] = tampered.into()).unwrap();
        assert!(!share.check_kcv());
        let err = combine(&[share, reparse(&shares[1])]).unwrap_err();
        assert!(
            matches!(&err, BackupError::ShareKcv { file } if file == "edited.json"),
            "{err}"
        );
        assert!(err.is_check_failure());
    }
    for (field, value) in [
        ("generation", serde_json::json!(2)),
        ("fleet", "buses".into()),
        ("custodian", "mallory".into()),
        ("index", 3.into()),
    ] {
        let share = edit(&shares[0], |d| d[field] = value).unwrap();
        let err = combine(&[share, reparse(&shares[1])]).unwrap_err();
        assert!(
            matches!(err, BackupError::ShareKcv { .. }),
            "{field}: {err}"
        );
    }
}

#[test]
fn shares_of_two_generations_or_fleets_are_refused_naming_the_file() {
    let a = split(&master(1), "tractors", 1, 2, &labels(3), 0).unwrap();
    let b = split(&master(1), "tractors", 2, 2, &labels(3), 0).unwrap();
    let c = split(&master(1), "buses", 1, 2, &labels(3), 0).unwrap();
    let d = split(&master(1), "tractors", 1, 3, &labels(3), 0).unwrap();
    let mut other = reparse(&b[1]);
    other.origin = "g2.json".into();
    let err = combine(&[reparse(&a[0]), other]).unwrap_err();
    assert!(
        matches!(&err, BackupError::Mismatch { file, field: "generation", .. } if file == "g2.json"),
        "{err}"
    );
    assert!(err.to_string().contains("g2.json"));
    let err = combine(&[reparse(&a[0]), reparse(&c[1])]).unwrap_err();
    assert!(
        matches!(err, BackupError::Mismatch { field: "fleet", .. }),
        "{err}"
    );
    let err = combine(&[reparse(&a[0]), reparse(&d[1]), reparse(&d[2])]).unwrap_err();
    assert!(
        matches!(
            err,
            BackupError::Mismatch {
                field: "threshold/count",
                ..
            }
        ),
        "{err}"
    );
    // Two splits of different masters with the same parameters: the whole KCVs differ.
    let e = split(&master(2), "tractors", 1, 2, &labels(3), 0).unwrap();
    let err = combine(&[reparse(&a[0]), reparse(&e[1])]).unwrap_err();
    assert!(
        matches!(
            err,
            BackupError::Mismatch {
                field: "master_kcv",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn duplicate_shares_are_refused_naming_both_files() {
    let a = split(&master(3), "tractors", 1, 2, &labels(3), 0).unwrap();
    let mut one = reparse(&a[0]);
    one.origin = "first.json".into();
    let mut again = reparse(&a[0]);
    again.origin = "copy.json".into();
    let err = combine(&[one, again]).unwrap_err();
    assert!(
        matches!(&err, BackupError::Duplicate { file, other, index: 1 } if file == "copy.json" && other == "first.json"),
        "{err}"
    );
}

#[test]
fn a_wrong_whole_master_kcv_is_refused() {
    // Shares whose own KCVs are consistent (recomputed), but whose whole KCV is not the
    // master's: the rebuilt master fails the whole check.
    let mut shares = split(&master(4), "tractors", 1, 2, &labels(2), 0).unwrap();
    for s in &mut shares {
        s.info.master_kcv = Kcv([1, 2, 3]);
        s.info.share_kcv = share_kcv(&s.info, &s.value);
    }
    let err = combine(&shares).unwrap_err();
    assert!(
        matches!(
            err,
            BackupError::MasterKcv {
                expected: Kcv([1, 2, 3])
            }
        ),
        "{err}"
    );
    assert!(err.is_check_failure());
    assert!(verify(&shares).is_err());
}

#[test]
fn malformed_files_are_refused_without_echoing_values() {
    let shares = split(&master(5), "tractors", 1, 2, &labels(2), 0).unwrap();
    let secret_hex = hex::encode(&shares[0].value[..]);
    for (field, value) in [
        ("format", serde_json::json!("other")),
        ("version", 2.into()),
        ("threshold", 3.into()),
        ("index", 0.into()),
        ("share", "00".into()),
        ("share_kcv", "xyz".into()),
        ("custodian", "../etc".into()),
        ("extra", 1.into()),
    ] {
        let err = edit(&shares[0], |d| d[field] = value).unwrap_err();
        assert!(
            matches!(err, BackupError::Malformed { .. }),
            "{field}: {err}"
        );
    }
    // A share with an escape cannot be borrowed: the error must not quote it.
    let escaped = format!("\\u0030{}", &secret_hex[1..]);
    let text = String::from_utf8(shares[0].to_json().to_vec())
        .unwrap()
        .replace(&secret_hex, &escaped);
    let err = Share::parse(&text, "e.json").unwrap_err();
    assert!(!err.to_string().contains(&secret_hex[1..]), "{err}");
}

#[test]
fn split_parameters_are_checked() {
    let m = master(6);
    assert!(split(&m, "f", 1, 0, &labels(3), 0).is_err());
    assert!(split(&m, "f", 1, 4, &labels(3), 0).is_err());
    assert!(split(&m, "f", 1, 1, &[], 0).is_err());
    assert!(split(&m, "f", 1, 1, &["a".into(), "a".into()], 0).is_err());
    assert!(split(&m, "f", 1, 1, &["a/b".into()], 0).is_err());
    assert!(split(&m, "f", 1, 1, &[".hidden".into()], 0).is_err());
    assert!(split(&m, "f", 1, 2, &labels(256), 0).is_err());
    assert_eq!(split(&m, "f", 1, 200, &labels(255), 0).unwrap().len(), 255);
}

#[test]
fn files_are_written_0600_never_overwritten_and_removed_unless_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shares");
    let shares = split(&master(8), "tractors", 1, 2, &labels(3), 0).unwrap();
    let written = write_shares(&out, &shares).unwrap();
    assert_eq!(written.paths().len(), 3);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for p in written.paths() {
            assert_eq!(
                std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    let paths = written.keep();
    assert_eq!(
        paths[0].file_name().unwrap(),
        "tractors-g1-share-1-of-3-custodian1.json"
    );
    let back: Vec<Share> = paths.iter().map(|p| Share::read(p).unwrap()).collect();
    assert!(combine(&back[1..]).unwrap() == master(8));
    let err = write_shares(&out, &shares).unwrap_err();
    assert!(matches!(err, BackupError::Exists { .. }), "{err}");
    // Not kept: removed on drop.
    let other = dir.path().join("other");
    let written = write_shares(&other, &shares).unwrap();
    let paths = written.paths().to_vec();
    drop(written);
    assert!(paths.iter().all(|p| !p.exists()));
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

fn seed(byte: u8) -> SigningSeed {
    SigningSeed::from_bytes(Zeroizing::new([byte; 32]))
}

#[test]
fn root_shares_have_their_own_format_name_and_kcvs() {
    let shares = split_root(&seed(9), "tractors", 2, 2, &labels(3), 5).unwrap();
    let info = shares[0].info();
    assert_eq!(info.secret, Secret::GovernanceRoot);
    assert_eq!(info.generation, 2);
    assert_eq!(
        share_file_name(info),
        "tractors-root2-share-1-of-3-custodian1.json"
    );
    assert_eq!(info.master_kcv, root_kcv(&seed(9)));
    // The root KCV is the documented HMAC under its own label, unlike a master's.
    assert_eq!(
        info.master_kcv,
        hmac_kcv(&[9; 32], &[b"FK1K root KCV v1".as_slice()])
    );
    assert_ne!(info.master_kcv, master_kcv(&master(9)));
    let doc: serde_json::Value = serde_json::from_slice(&shares[0].to_json()).unwrap();
    assert_eq!(doc["format"], "fleetkey-root-share");
    assert_eq!(doc["root"], 2);
    assert_eq!(doc["root_kcv"], info.master_kcv.to_string());
    assert!(doc.get("generation").is_none() && doc.get("master_kcv").is_none());
    let back = reparse(&shares[0]);
    assert_eq!(back.info(), info);
    assert!(back.check_kcv());
    let rebuilt = combine_root(&[reparse(&shares[2]), reparse(&shares[0])]).unwrap();
    assert_eq!(rebuilt.expose_secret(), &[9; 32]);
    let report = verify(&[reparse(&shares[1]), reparse(&shares[2])]).unwrap();
    assert!(report.master_checked);
    assert_eq!(report.secret, Secret::GovernanceRoot);

    // The same bytes split as a master give other share KCVs: a file cannot change kind.
    let as_master = split(&master(9), "tractors", 2, 2, &labels(3), 5).unwrap();
    assert!(matches!(
        combine(&[reparse(&shares[0]), reparse(&as_master[1])]),
        Err(BackupError::WrongSecret { .. })
    ));
    for field in ["root", "root_kcv"] {
        // A root file must carry its own fields, and not a master's.
        let err = edit(&shares[0], |d| {
            d.as_object_mut().unwrap().remove(field);
        })
        .unwrap_err();
        assert!(matches!(err, BackupError::Malformed { .. }), "{err}");
    }
    let err = edit(&shares[0], |d| d["generation"] = 2.into()).unwrap_err();
    assert!(matches!(err, BackupError::Malformed { .. }), "{err}");
    let err = edit(&as_master[0], |d| d["root_kcv"] = "000000".into()).unwrap_err();
    assert!(matches!(err, BackupError::Malformed { .. }), "{err}");
    let err = edit(&as_master[0], |d| {
        d["format"] = "fleetkey-root-share".into()
    })
    .unwrap_err();
    assert!(matches!(err, BackupError::Malformed { .. }), "{err}");
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_threshold_of_root_shares_restores_the_root_through_its_files(
            bytes in any::<[u8; 32]>(),
            n in 1usize..=6,
            m_seed in any::<u8>(),
            root in 1u32..=u32::MAX,
        ) {
            let m = u8::try_from(usize::from(m_seed) % n + 1).unwrap();
            let seed = SigningSeed::from_bytes(Zeroizing::new(bytes));
            let shares = split_root(&seed, "p", root, m, &labels(n), 0).unwrap();
            let chosen: Vec<Share> = shares.iter().rev().take(usize::from(m)).map(reparse).collect();
            let rebuilt = combine_root(&chosen).unwrap();
            prop_assert_eq!(rebuilt.public_key(), seed.public_key());
            prop_assert_eq!(chosen[0].info().generation, root);
            if m > 1 {
                let too_few = combine_root(&chosen[1..]);
                prop_assert!(
                    matches!(too_few, Err(BackupError::NotEnough { .. })),
                    "too few shares must be NotEnough"
                );
            }
        }

        #[test]
        fn any_threshold_of_shares_restores_any_master(
            bytes in any::<[u8; 32]>(),
            n in 1usize..=8,
            m_seed in any::<u8>(),
            order in any::<u64>(),
        ) {
            let m = u8::try_from(usize::from(m_seed) % n + 1).unwrap();
            let secret = MasterKey::from_bytes(bytes);
            let shares = split(&secret, "p", 1, m, &labels(n), 0).unwrap();
            // A pseudo-random choice of M shares in a pseudo-random order.
            let mut idx: Vec<usize> = (0..n).collect();
            let mut o = order;
            for i in (1..n).rev() {
                idx.swap(i, (o % (i as u64 + 1)) as usize);
                o /= i as u64 + 1;
            }
            idx.truncate(usize::from(m));
            let chosen = pick(&shares, &idx);
            prop_assert!(combine(&chosen).unwrap() == secret);
        }
    }
}

/// Shares made by an independent implementation (tests/crosscheck/check_backup.py).
#[test]
fn shares_made_by_the_python_crosscheck_restore_its_master() {
    let vector: serde_json::Value = serde_json::from_str(include_str!(
        "../../../../tests/vectors/backup-shares-v1.json"
    ))
    .unwrap();
    let master =
        MasterKey::from_slice(&hex::decode(vector["master"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(master_kcv(&master).to_string(), vector["master_kcv"]);
    let shares: Vec<Share> = vector["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|doc| Share::parse(&doc.to_string(), "vector").unwrap())
        .collect();
    assert!(shares.iter().all(Share::check_kcv));
    for which in subsets(5, 3) {
        assert!(combine(&pick(&shares, &which)).unwrap() == master);
    }
}
