//! A real application on a live volume: Debian's sqlite3 inserting steadily into a
//! database on `live/`. Copies of snapshots taken during the load (the database and its
//! rollback journal, both volumes of the same snapshot) open cleanly and pass
//! `PRAGMA integrity_check`, and never lose committed rows between snapshots.

mod mounted;

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mounted::{have_tool, Mounted};

fn sqlite(db: &std::path::Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("running sqlite3");
    assert!(
        out.status.success(),
        "sqlite3 {} {sql:?}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn sqlite_database_under_insert_load_snapshots_cleanly() {
    if !have_tool("sqlite3") {
        return;
    }
    let Some(m) = Mounted::new(&[], &[]) else {
        return;
    };
    let db = m.path("live/app.db");
    sqlite(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, v BLOB); CREATE INDEX t_n ON t(n);",
    );

    // A steady load: thousands of small transactions, each inserting rows and updating one.
    let mut script = String::from(".bail on\nPRAGMA synchronous=FULL;\n");
    for i in 0..4000 {
        script.push_str(&format!(
            "BEGIN; INSERT INTO t(n, v) VALUES ({i}, randomblob(700)), ({i}, randomblob(300)); UPDATE t SET v = randomblob(200) WHERE id = {}; COMMIT;\n",
            i / 2 + 1
        ));
    }
    let mut load = Command::new("sqlite3")
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sqlite3");
    let mut stdin = load.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(script.as_bytes());
    });

    let copies = m.dir.path().join("copies");
    fs::create_dir(&copies).unwrap();
    let mut counts = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while counts.len() < 4 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(300));
        let name = format!("s{i}");
        i += 1;
        fs::create_dir(m.path(&format!("snapshots/{name}"))).unwrap();
        let dir = copies.join(&name);
        fs::create_dir(&dir).unwrap();
        // The database and, if the snapshot caught a transaction, its hot journal.
        for file in ["app.db", "app.db-journal"] {
            let src = m.path(&format!("snapshots/{name}/{file}"));
            if src.exists() {
                mounted::sh(&format!(
                    "cp {} {}",
                    src.display(),
                    dir.join(file).display()
                ));
            }
        }
        fs::remove_dir(m.path(&format!("snapshots/{name}"))).unwrap();
        let copy = dir.join("app.db");
        assert_eq!(
            sqlite(&copy, "PRAGMA integrity_check;"),
            "ok",
            "snapshot {name}"
        );
        let count: u64 = sqlite(&copy, "SELECT count(*) FROM t;").parse().unwrap();
        assert_eq!(
            count % 2,
            0,
            "snapshot {name} shows half a transaction ({count} rows)"
        );
        counts.push(count);
    }
    feeder.join().unwrap();
    let status = load.wait().unwrap();
    let mut err = String::new();
    if let Some(mut e) = load.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        status.success(),
        "the sqlite3 load failed on the live volume: {err}"
    );
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "rows went missing between snapshots: {counts:?}"
    );
    assert!(
        counts.iter().any(|&c| c > 0 && c < 8000),
        "no snapshot landed during the load ({counts:?}); nothing was tested"
    );
    assert_eq!(sqlite(&db, "SELECT count(*) FROM t;"), "8000");
    assert_eq!(sqlite(&db, "PRAGMA integrity_check;"), "ok");
}
