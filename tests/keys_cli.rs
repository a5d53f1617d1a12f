//! `topsmile keys rotate`, run as the operator runs it: the new key is published at once
//! and signs only after `--sign-after`, so in a cluster every identity replica (and every
//! verifier) has it before any replica signs with it.

use std::process::Command;

use topsmile_kit::auth::KeyRing;

fn rotate(key_file: &std::path::Path, sign_after: Option<&str>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_topsmile"));
    command.args(["keys", "rotate", "--key-file"]).arg(key_file);
    if let Some(secs) = sign_after {
        command.args(["--sign-after", secs]);
    }
    let out = command.output().expect("the topsmile binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_rotation_publishes_at_once_and_signs_after_the_hand_over() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("signing-keys.json");
    let first = KeyRing::load_or_create(&key_file).unwrap();
    let old_kid = first.issuer().unwrap().kid().to_owned();

    let printed = rotate(&key_file, Some("300"));
    assert!(printed.contains("signing in 300 s"), "{printed}");
    let ring = KeyRing::load(&key_file).unwrap();
    let published: Vec<String> = ring.public_keys().iter().map(|k| k.kid.clone()).collect();
    assert_eq!(
        published.len(),
        2,
        "old and new are both published: {published:?}"
    );
    assert_eq!(
        ring.issuer().unwrap().kid(),
        old_kid,
        "the old key signs for the next five minutes"
    );

    // With no hand-over the new key signs at once.
    rotate(&key_file, Some("0"));
    let ring = KeyRing::load(&key_file).unwrap();
    let newest = ring.public_keys().last().map(|k| k.kid.clone()).unwrap();
    assert_eq!(ring.issuer().unwrap().kid(), newest);
}
