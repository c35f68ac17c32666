//! Shared by the benches: the test corpus's files.

use std::path::{Path, PathBuf};

/// Every file under the test corpus's `users/` (`$M365BK_TEST_CORPUS`, else `corpus/` in the
/// checkout) that `keep` accepts, sorted by path; empty if the corpus is not built.
pub fn corpus_files(keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let root = std::env::var_os("M365BK_TEST_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let mut files = Vec::new();
    let mut stack = vec![root.join("users")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if keep(&p) {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}
