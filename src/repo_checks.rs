//! Checks that files shipped beside the code agree with it.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// DESIGN §4: the README's permission table is generated from the gate's compiled matrix.
#[test]
fn readme_permission_table_is_the_compiled_matrix() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let table = m365bk_gate::PermissionMatrix::builtin().markdown_table();
    assert!(
        readme.contains(&table),
        "README.md's permission table differs from the matrix; replace it with:\n{table}"
    );
}

/// The systemd units load without warnings (`systemd-analyze verify`), where systemd's tools
/// are installed. The unit's `ExecStart` binary is pointed at this build.
#[test]
fn systemd_units_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: skipping");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(ROOT).join("target/debug/m365bk");
    let exe = if exe.exists() {
        exe
    } else {
        std::env::current_exe().unwrap()
    };
    for name in ["m365bk-backup@.service", "m365bk-backup@.timer"] {
        let text = std::fs::read_to_string(Path::new(ROOT).join("systemd").join(name)).unwrap();
        let text = text.replace("/usr/bin/m365bk", exe.to_str().unwrap());
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    for unit in [
        "m365bk-backup@exchange.service",
        "m365bk-backup@exchange.timer",
    ] {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(dir.path().join(unit))
            .env("SYSTEMD_LOG_LEVEL", "warning")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let relevant: Vec<&str> = stderr.lines().filter(|l| l.contains("m365bk")).collect();
        assert!(
            out.status.success() && relevant.is_empty(),
            "{unit}: {stderr}"
        );
    }
}

/// The workspace denies `unsafe_code` rather than forbidding it for one call (`mallopt` in
/// crates/store/src/malloc.rs): no other source file may opt back in.
#[test]
fn unsafe_code_stays_in_the_one_audited_module() {
    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    rust_files(&path, out);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for dir in ["src", "crates", "tests", "benches"] {
        rust_files(&Path::new(ROOT).join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} Rust files", files.len());
    let allowed = Path::new(ROOT).join("crates/store/src/malloc.rs");
    let needle = ["allow(", "unsafe_code)"].concat();
    let opted_in: Vec<String> = files
        .iter()
        .filter(|f| **f != allowed)
        .filter(|f| std::fs::read_to_string(f).unwrap().contains(&needle))
        .map(|f| f.display().to_string())
        .collect();
    assert!(opted_in.is_empty(), "unsafe code allowed in {opted_in:?}");
    assert!(
        std::fs::read_to_string(&allowed).unwrap().contains(&needle),
        "the audited module moved: update this check"
    );
}
