//! Property tests: `parse` never panics on any input, every rejection explains itself, and
//! every command the grammar can express survives printing and parsing back; the table
//! renderers keep field counts on arbitrary values.

use proptest::prelude::*;

use super::table::tests::{assert_well_formed, awk_fields};
use super::*;
use crate::jobs::{BackupRequest, Mode};

fn any_file() -> impl Strategy<Value = ControlFile> {
    proptest::sample::select(ControlFile::ALL.to_vec())
}

/// Lines built from the grammar's own pieces, so the fuzzing reaches the deep rejections
/// and not only "not UTF-8".
fn grammar_soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just("create".to_string()),
        Just("release".to_string()),
        Just("backup".to_string()),
        Just("cancel".to_string()),
        Just("repo=".to_string()),
        Just("volumes=".to_string()),
        Just("mode=".to_string()),
        Just("full".to_string()),
        Just("/".to_string()),
        Just(",".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("\\".to_string()),
        Just(" ".to_string()),
        Just("\t".to_string()),
        Just("\n".to_string()),
        Just("\r".to_string()),
        Just("\0".to_string()),
        Just("..".to_string()),
        "[a-z0-9.=_-]{0,6}",
        any::<char>().prop_map(String::from),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat().into_bytes())
}

fn check(file: ControlFile, input: &[u8]) -> Result<(), TestCaseError> {
    match parse(file, input) {
        Ok(cmd) => {
            prop_assert!(file.takes_commands());
            // Whatever was accepted prints back to an equivalent command.
            prop_assert_eq!(parse(file, cmd.to_string().as_bytes()), Ok(cmd));
        }
        Err(r) => {
            prop_assert_eq!(r.file, file);
            prop_assert!(!r.reason.trim().is_empty(), "empty reason for {:?}", input);
            prop_assert!(!r.reason.contains('\n'), "multi-line reason {:?}", r.reason);
            prop_assert!(r.message().contains(&r.reason));
            if file.takes_commands() {
                prop_assert!(r
                    .message()
                    .contains(file.usage().lines().next().unwrap_or("")));
            }
        }
    }
    Ok(())
}

fn name() -> impl Strategy<Value = String> {
    // Names the store accepts, including spaces, quotes, '=' and ','-free unicode.
    "[a-zA-Z0-9 ._=\"'\\\\ü-]{1,20}".prop_filter("valid name", |n| {
        crate::store::validate_name("snapshot", n).is_ok()
    })
}

fn command() -> impl Strategy<Value = Command> {
    let backup = (
        name(),
        proptest::option::of("/[a-z0-9 /._-]{0,20}"),
        proptest::option::of(proptest::collection::btree_set(
            name().prop_filter("no comma", |n| !n.contains(',')),
            1..4,
        )),
        proptest::sample::select(Mode::ALL.to_vec()),
        proptest::sample::select(crate::pids::ProcType::ALL.to_vec()),
        proptest::bool::ANY,
    )
        .prop_map(|(snapshot, repo, volumes, mode, kind, converge)| {
            Command::Backup(BackupRequest {
                // A converge backup names no snapshot; its label stands in.
                snapshot: if converge {
                    crate::jobs::CONVERGE_LABEL.to_string()
                } else {
                    snapshot
                },
                converge,
                repo: repo.map(Into::into),
                volumes: volumes.map(|v| v.into_iter().collect()),
                mode,
                kind,
                keep: None,
            })
        });
    prop_oneof![
        (name(), proptest::option::of(proptest::bool::ANY)).prop_map(|(name, v)| {
            Command::CreateSnapshot {
                name,
                durability: v.map(|v| {
                    if v {
                        crate::store::Durability::Volatile
                    } else {
                        crate::store::Durability::Persistent
                    }
                }),
            }
        }),
        name().prop_map(|name| Command::ReleaseSnapshot { name }),
        "[a-zA-Z0-9_.:-]{1,64}".prop_map(|job| Command::Cancel { job }),
        backup,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(
        file in any_file(),
        input in proptest::collection::vec(any::<u8>(), 0..5000),
    ) {
        check(file, &input)?;
    }

    #[test]
    fn parse_never_panics_on_grammar_soup(file in any_file(), input in grammar_soup()) {
        check(file, &input)?;
    }

    #[test]
    fn every_command_round_trips(cmd in command(), newline in any::<bool>()) {
        let file = match cmd {
            Command::CreateSnapshot { .. } | Command::ReleaseSnapshot { .. } => ControlFile::Snapshot,
            _ => ControlFile::Jobs,
        };
        let mut text = cmd.to_string();
        if newline {
            text.push('\n');
        }
        prop_assert_eq!(parse(file, text.as_bytes()), Ok(cmd));
    }

    #[test]
    fn tables_keep_field_counts_on_arbitrary_values(
        values in proptest::collection::vec(proptest::collection::vec(".{0,12}", 4), 0..8),
    ) {
        let mut t = table::Table::new(&["A", "B", "C", "LAST"]);
        for row in &values {
            t.push(row.clone());
        }
        let text = t.render();
        prop_assert_eq!(text.lines().count(), values.len() + 1);
        assert_well_formed(&text);
        for line in text.lines() {
            prop_assert!(awk_fields(line).len() >= 4);
        }
    }
}
