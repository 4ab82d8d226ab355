//! The fuzz targets (`fuzz/targets/`) over every committed seed (`fuzz/seeds/TARGET/`) and
//! every input the fuzzer found a bug with (`fuzz/regressions/TARGET/`), so what was found
//! once stays fixed. `make fuzz` runs the same targets under AFL++ for new inputs.

#[path = "../fuzz/targets/mod.rs"]
mod targets;

use std::path::Path;

#[test]
fn every_seed_and_every_input_that_once_failed_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    let mut count = 0;
    for (target, run) in targets::TARGETS {
        let mut seen = 0;
        for folder in ["seeds", "regressions"] {
            let dir = root.join(folder).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            files.sort();
            for file in files.into_iter().filter(|f| f.is_file()) {
                let data = std::fs::read(&file).expect("readable");
                seen += 1;
                if std::panic::catch_unwind(|| run(&data)).is_err() {
                    failures.push(file.display().to_string());
                }
            }
        }
        assert!(seen > 0, "no seeds for the {target} target");
        count += seen;
    }
    assert!(
        failures.is_empty(),
        "{} of {count} inputs failed: {failures:#?}",
        failures.len()
    );
}
